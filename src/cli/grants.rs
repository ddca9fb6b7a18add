//! Command-line front ends of the grants module: `sitegate fleet …` (signing, for integrators),
//! `sitegate trust …` (the box's trust anchors) and `sitegate grants …` (apply a signed file,
//! show the state). Each returns the process exit code; messages go to stdout/stderr, never
//! secrets.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Subcommand;
use ring::signature::Ed25519KeyPair;

use crate::audit::Audit;
use crate::clock::{Clock, SystemClock, rfc3339};
use crate::grants::{GrantEngine, GrantError, fleet, trust};
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Make an Ed25519 key pair: PKCS#8 v2 private key file (mode 0600); prints kid and public key.
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// Key id (default `fleet-<8 hex of the public key hash>`).
        #[arg(long)]
        kid: Option<String>,
    },
    /// Print the public key of a private key file.
    Pubkey {
        #[arg(long)]
        key: PathBuf,
    },
    /// Sign a bundle description (JSON): checked, compacted, signed; prints or writes the envelope.
    SignBundle {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        kid: String,
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Sign a key-set description with a trusted key and every new key (repeat --key/--kid).
    SignKeys {
        #[arg(long, required = true)]
        key: Vec<PathBuf>,
        #[arg(long, required = true)]
        kid: Vec<String>,
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Sign an installer-token description (one user, one grant).
    IssueToken {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        kid: String,
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify an envelope against one public key (as a box trusting only that key would) and
    /// print its payload; exits 1 with the rejection reason otherwise.
    Verify {
        #[arg(long = "in")]
        input: PathBuf,
        /// Key id the public key is trusted under.
        #[arg(long)]
        kid: String,
        /// Raw Ed25519 public key, base64url.
        #[arg(long)]
        public_key: String,
    },
    /// Cut a signed bundle into parts of at most `--max-message-size` bytes and sign their
    /// manifest: writes `manifest.env` and `part-0000.json`, `part-0001.json`, … into `--out-dir`.
    Split {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        kid: String,
        /// The signed bundle envelope.
        #[arg(long = "in")]
        input: PathBuf,
        /// The broker's message limit: bytes, or with a unit (`128KiB`, `256KB`, `1MiB`).
        #[arg(long)]
        max_message_size: String,
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Publish a signed bundle to a site over MQTT (retained, QoS 1): as one message when it fits
    /// in `--max-message-size`, otherwise as parts on `…/grants/parts/{i}` then their signed
    /// manifest on `…/grants` (needs `--key`/`--kid`); clears parts a previous set left behind.
    Publish {
        /// `mqtt://host[:port]` or, over TLS, `mqtts://host[:port]`.
        #[arg(long)]
        broker: String,
        /// CA certificates (PEM) that sign the broker's certificate (`mqtts://`; the system
        /// trust store when absent).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Client certificate (PEM) for brokers that require one (`mqtts://`, with
        /// `--client-key`).
        #[arg(long)]
        client_cert: Option<PathBuf>,
        /// Private key (PEM) of `--client-cert`.
        #[arg(long)]
        client_key: Option<PathBuf>,
        /// User name, if the broker asks for one (with `--password-file`).
        #[arg(long)]
        username: Option<String>,
        /// File holding the password (first line), never on the command line.
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[arg(long)]
        site: String,
        #[arg(long)]
        gateway: String,
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long, default_value = "128KiB")]
        max_message_size: String,
        /// Key that signs the manifest (only needed when the bundle is cut into parts).
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long)]
        kid: Option<String>,
    },
    /// Hash a password read from stdin (first line) into the PBKDF2 verifier format.
    HashPassword {
        #[arg(long, default_value_t = crate::grants::password::DEFAULT_ITERATIONS)]
        iterations: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Add trust anchors from a JSON file: `{"keys":[{"kid","public_key","not_after"?}]}`.
    Import {
        file: PathBuf,
        #[arg(long, short, default_value = super::shared::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// List the trusted keys (active, expired, retired).
    List {
        #[arg(long, short, default_value = super::shared::DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum GrantsCommand {
    /// Apply a signed envelope (bundle, keys or token) from a file, e.g. before the box is online.
    Apply {
        file: PathBuf,
        #[arg(long, short, default_value = super::shared::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print the grants state (what the box publishes on `…/grants/state`).
    Status {
        #[arg(long, short, default_value = super::shared::DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

/// A signing function of [`fleet`]: the signers (kid, key) and the description file's bytes in,
/// the signed envelope out.
type SignFn = fn(&[(&str, &Ed25519KeyPair)], &[u8]) -> Result<Vec<u8>, GrantError>;

/// The signing subcommands and what each signs with. Bundles and installer tokens are signed by
/// one key (clap takes exactly one `--key`/`--kid`); a key set by every key given.
const SIGNING: [(&str, SignFn); 3] = [
    ("sign-bundle", |signers, d| {
        let (kid, key) = one_signer(signers)?;
        fleet::sign_bundle_description(key, kid, d)
    }),
    ("issue-token", |signers, d| {
        let (kid, key) = one_signer(signers)?;
        fleet::sign_token_description(key, kid, d)
    }),
    ("sign-keys", fleet::sign_keys_description),
];

fn one_signer<'a>(
    signers: &[(&'a str, &'a Ed25519KeyPair)],
) -> Result<(&'a str, &'a Ed25519KeyPair), GrantError> {
    match signers {
        [one] => Ok(*one),
        _ => Err(GrantError::Invalid(
            "give exactly one --key and --kid".into(),
        )),
    }
}

/// `sitegate fleet sign-bundle | issue-token | sign-keys`: loads the keys, signs the description
/// in `input` with the command's function from [`SIGNING`], prints or writes the envelope.
fn sign(
    command: &str,
    keys: &[PathBuf],
    kids: &[String],
    input: &Path,
    out: Option<&Path>,
) -> Result<(), GrantError> {
    let Some((_, sign)) = SIGNING.iter().find(|(c, _)| *c == command) else {
        return Err(GrantError::Invalid(format!(
            "`{command}` is not a signing command"
        )));
    };
    if keys.len() != kids.len() {
        return Err(GrantError::Invalid(
            "give one --kid for each --key, in the same order".into(),
        ));
    }
    let loaded = keys
        .iter()
        .map(|p| fleet::load_pkcs8(p))
        .collect::<Result<Vec<_>, _>>()?;
    let signers: Vec<(&str, &Ed25519KeyPair)> =
        kids.iter().map(String::as_str).zip(loaded.iter()).collect();
    let env = sign(&signers, &read(input)?)?;
    emit(out, &env)
}

fn read(path: &Path) -> Result<Vec<u8>, GrantError> {
    std::fs::read(path).map_err(|e| GrantError::Io {
        path: path.display().to_string(),
        source: e,
    })
}

fn emit(out: Option<&Path>, envelope: &[u8]) -> Result<(), GrantError> {
    match out {
        Some(p) => crate::util::write_public(p, envelope).map_err(|e| GrantError::Io {
            path: p.display().to_string(),
            source: e,
        }),
        None => {
            println!("{}", String::from_utf8_lossy(envelope));
            Ok(())
        }
    }
}

fn finish(r: Result<(), GrantError>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// Runs `sitegate fleet …`.
pub fn run_fleet(cmd: FleetCommand) -> i32 {
    finish(fleet_inner(cmd))
}

fn fleet_inner(cmd: FleetCommand) -> Result<(), GrantError> {
    match cmd {
        FleetCommand::Keygen { out, kid } => {
            if let Some(k) = &kid {
                crate::model::check_id(k)
                    .map_err(|e| GrantError::Invalid(format!("--kid: {e}")))?;
            }
            if out.exists() {
                return Err(GrantError::Invalid(format!(
                    "`{}` exists; refusing to overwrite a key",
                    out.display()
                )));
            }
            let doc = fleet::generate_pkcs8()?;
            crate::util::write_private(&out, &doc).map_err(|e| GrantError::Io {
                path: out.display().to_string(),
                source: e,
            })?;
            let key = fleet::load_pkcs8(&out)?;
            let kid = kid.unwrap_or_else(|| fleet::default_kid(&key));
            println!("kid: {kid}");
            println!("public_key: {}", fleet::public_key_b64(&key));
            println!();
            println!("# for the box's config:");
            println!("[[grants.trust]]");
            println!("kid = \"{kid}\"");
            println!("public_key = \"{}\"", fleet::public_key_b64(&key));
            Ok(())
        }
        FleetCommand::Pubkey { key } => {
            let key = fleet::load_pkcs8(&key)?;
            println!("{}", fleet::public_key_b64(&key));
            Ok(())
        }
        FleetCommand::SignBundle {
            key,
            kid,
            input,
            out,
        } => sign("sign-bundle", &[key], &[kid], &input, out.as_deref()),
        FleetCommand::IssueToken {
            key,
            kid,
            input,
            out,
        } => sign("issue-token", &[key], &[kid], &input, out.as_deref()),
        FleetCommand::SignKeys {
            key,
            kid,
            input,
            out,
        } => sign("sign-keys", &key, &kid, &input, out.as_deref()),
        FleetCommand::Verify {
            input,
            kid,
            public_key,
        } => {
            let pk = crate::grants::PublicKey::from_b64(&public_key).map_err(|e| {
                GrantError::Invalid(format!(
                    "{}: --public-key {e}; it must be a 32-byte Ed25519 key of prime order, \
                     canonically encoded, in base64url",
                    e.reason()
                ))
            })?;
            let provider = move |k: &str| {
                if k == kid {
                    Ok(pk)
                } else {
                    Err(crate::grants::KeyError::Unknown)
                }
            };
            let bytes = read(&input)?;
            let kind = crate::grants::envelope::peek_kind(&bytes)?;
            let summary = match kind {
                crate::grants::Kind::Bundle => {
                    let b = crate::grants::VerifiedBundle::verify(&bytes, &provider)?;
                    format!(
                        "bundle for site `{}`, seq {}, {} users, {} grants, {} revoked",
                        b.bundle().site,
                        b.bundle().seq,
                        b.bundle().users.len(),
                        b.bundle().grants.len(),
                        b.bundle().revoked.len()
                    )
                }
                crate::grants::Kind::Token => {
                    let t = crate::grants::VerifiedToken::verify(&bytes, &provider)?;
                    format!(
                        "token for site `{}`, user `{}`, grant `{}`",
                        t.site, t.user.id, t.grant.id
                    )
                }
                crate::grants::Kind::Manifest => {
                    let m = crate::grants::parts::VerifiedManifest::verify(&bytes, &provider)?;
                    format!(
                        "manifest for site `{}`, bundle seq {}, {} parts, {} bytes",
                        m.site,
                        m.manifest.seq,
                        m.manifest.parts.len(),
                        m.manifest.size
                    )
                }
                crate::grants::Kind::Part => {
                    return Err(GrantError::Invalid(
                        "a part is not signed: verify its manifest, then the reassembled bundle"
                            .into(),
                    ));
                }
                crate::grants::Kind::Keys => {
                    let k = crate::grants::VerifiedKeys::verify(&bytes, &provider)?;
                    format!(
                        "key set seq {}, keys {:?}, signed by {:?}",
                        k.seq,
                        k.keys.iter().map(|x| x.kid.as_str()).collect::<Vec<_>>(),
                        k.signed_by
                    )
                }
            };
            println!("valid: {summary}");
            Ok(())
        }
        FleetCommand::Split {
            key,
            kid,
            input,
            max_message_size,
            out_dir,
        } => {
            let max = crate::grants::parts::parse_size(&max_message_size)
                .map_err(|e| GrantError::Invalid(format!("--max-message-size: {e}")))?;
            let k = fleet::load_pkcs8(&key)?;
            let split = fleet::split_bundle(&k, &kid, &read(&input)?, max)?;
            let io = |p: PathBuf| {
                move |e| GrantError::Io {
                    path: p.display().to_string(),
                    source: e,
                }
            };
            std::fs::create_dir_all(&out_dir).map_err(io(out_dir.clone()))?;
            let path = out_dir.join("manifest.env");
            crate::util::write_public(&path, &split.manifest).map_err(io(path.clone()))?;
            for (i, part) in split.parts.iter().enumerate() {
                let path = out_dir.join(format!("part-{i:04}.json"));
                crate::util::write_public(&path, part).map_err(io(path.clone()))?;
            }
            println!(
                "bundle seq {} for site `{}`: {} parts and manifest.env in `{}`",
                split.seq,
                split.site,
                split.parts.len(),
                out_dir.display()
            );
            Ok(())
        }
        FleetCommand::Publish {
            broker,
            ca_file,
            client_cert,
            client_key,
            username,
            password_file,
            site,
            gateway,
            input,
            max_message_size,
            key,
            kid,
        } => {
            let max = crate::grants::parts::parse_size(&max_message_size)
                .map_err(|e| GrantError::Invalid(format!("--max-message-size: {e}")))?;
            let site = crate::model::SiteId::new(&site)
                .map_err(|e| GrantError::Invalid(format!("--site: {e}")))?;
            let gateway = crate::model::GatewayId::new(&gateway)
                .map_err(|e| GrantError::Invalid(format!("--gateway: {e}")))?;
            let envelope = read(&input)?;
            let messages = if envelope.len() <= max {
                crate::grants::publish::Messages::Whole(envelope)
            } else {
                let (Some(key), Some(kid)) = (key, kid) else {
                    return Err(GrantError::Invalid(format!(
                        "the bundle is {} bytes, above --max-message-size {max}: --key and --kid \
                         are needed to sign the manifest of its parts",
                        envelope.len()
                    )));
                };
                let k = fleet::load_pkcs8(&key)?;
                crate::grants::publish::Messages::Parts(fleet::split_bundle(
                    &k, &kid, &envelope, max,
                )?)
            };
            let access = publish_access(
                &broker,
                ca_file.as_deref(),
                client_cert.as_deref(),
                client_key.as_deref(),
                username,
                password_file.as_deref(),
            )?;
            let root = format!("sitegate/v1/{site}/{gateway}");
            let report = crate::grants::publish::publish(&broker, access, &root, messages)?;
            println!("{report}");
            Ok(())
        }
        FleetCommand::HashPassword { iterations } => {
            let mut pw = String::new();
            std::io::stdin()
                .take(4096)
                .read_to_string(&mut pw)
                .map_err(|e| GrantError::Io {
                    path: "stdin".into(),
                    source: e,
                })?;
            let line = pw.lines().next().unwrap_or("");
            if line.is_empty() {
                return Err(GrantError::Invalid(
                    "no password on stdin (the first line is the password)".into(),
                ));
            }
            println!("{}", fleet::hash_password(line, iterations)?);
            Ok(())
        }
    }
}

/// The TLS configuration and credentials of `sitegate fleet publish`, read from the files named
/// on the command line with the rules of the daemon's `[mqtt]` settings.
fn publish_access(
    broker: &str,
    ca_file: Option<&Path>,
    client_cert: Option<&Path>,
    client_key: Option<&Path>,
    username: Option<String>,
    password_file: Option<&Path>,
) -> Result<crate::grants::publish::Access, GrantError> {
    let invalid = |e: crate::mqtt::MqttError| GrantError::Invalid(e.to_string());
    let tls_flags = ca_file.is_some() || client_cert.is_some() || client_key.is_some();
    let tls = if crate::grants::publish::is_tls_url(broker) {
        if client_cert.is_some() != client_key.is_some() {
            return Err(GrantError::Invalid(
                "--client-cert and --client-key go together".into(),
            ));
        }
        let config =
            crate::mqtt::tls_client_config(ca_file, client_cert, client_key).map_err(invalid)?;
        Some(Arc::new(config))
    } else if tls_flags {
        return Err(GrantError::Invalid(format!(
            "--ca-file, --client-cert and --client-key need an `mqtts://` broker, not `{broker}`"
        )));
    } else {
        None
    };
    let credentials = match (username, password_file) {
        (Some(user), Some(path)) => {
            Some((user, crate::mqtt::read_password(path).map_err(invalid)?))
        }
        (Some(user), None) => Some((user, String::new())),
        (None, Some(_)) => {
            return Err(GrantError::Invalid(
                "--password-file needs --username".into(),
            ));
        }
        (None, None) => None,
    };
    Ok(crate::grants::publish::Access { tls, credentials })
}

fn open_store(config: &Path) -> Result<(crate::config::Config, Store), i32> {
    let cfg = super::shared::load_config(config)?;
    if let Err(e) = std::fs::create_dir_all(&cfg.state_dir) {
        eprintln!("error: cannot create `{}`: {e}", cfg.state_dir.display());
        return Err(1);
    }
    match Store::open_in(&cfg.state_dir) {
        Ok(s) => Ok((cfg, s)),
        Err(e) => {
            eprintln!("error: {e}");
            Err(1)
        }
    }
}

/// Runs `sitegate trust …`.
pub fn run_trust(cmd: TrustCommand) -> i32 {
    match cmd {
        TrustCommand::Import { file, config } => {
            let (_cfg, store) = match open_store(&config) {
                Ok(x) => x,
                Err(code) => return code,
            };
            finish((|| {
                let keys = trust::parse_import_file(&read(&file)?)?;
                let now = SystemClock.now();
                let added = store.with_conn(|c| {
                    trust::import(c, &keys, now).map_err(|e| match e {
                        GrantError::Store(s) => s,
                        other => crate::store::StoreError::Corrupt(other.to_string()),
                    })
                })?;
                println!(
                    "{added} key(s) added, {} already trusted",
                    keys.len() - added
                );
                if added > 0 {
                    println!("a running daemon picks them up at its next start");
                }
                Ok(())
            })())
        }
        TrustCommand::List { config } => {
            let (_cfg, store) = match open_store(&config) {
                Ok(x) => x,
                Err(code) => return code,
            };
            finish((|| {
                let set = store.with_conn(|c| trust::TrustSet::load(c))?;
                let now = SystemClock.now();
                println!("key set seq {}", set.seq);
                for k in set.keys.values() {
                    let status = if k.retired_at.is_some() {
                        "retired"
                    } else if k.not_after.is_some_and(|n| now >= n) {
                        "expired"
                    } else {
                        "active"
                    };
                    println!(
                        "{}  {}  {}  source={}{}",
                        k.kid,
                        k.public_key.to_b64(),
                        status,
                        k.source,
                        k.not_after
                            .map(|n| format!("  not_after={}", rfc3339(n)))
                            .unwrap_or_default()
                    );
                }
                for kid in &set.weak {
                    println!("{kid}  weak_key  retired (a weak key stored earlier is never used)");
                }
                Ok(())
            })())
        }
    }
}

fn open_engine(config: &Path) -> Result<GrantEngine, i32> {
    let (cfg, store) = open_store(config)?;
    let Some(site) = cfg.site.clone() else {
        eprintln!("error: the box is not provisioned (no `[site]` in the config)");
        return Err(1);
    };
    let clock: crate::clock::SharedClock = Arc::new(SystemClock);
    let audit = Audit::new(
        store.clone(),
        clock.clone(),
        Some(format!("{}/events", site.topic_root())),
    );
    GrantEngine::open(store, audit, clock, site.id, &cfg.grants).map_err(|e| {
        eprintln!("error: {e}");
        1
    })
}

/// Runs `sitegate grants …`.
pub fn run_grants(cmd: GrantsCommand) -> i32 {
    match cmd {
        GrantsCommand::Apply { file, config } => {
            let engine = match open_engine(&config) {
                Ok(e) => e,
                Err(code) => return code,
            };
            let bytes = match read(&file) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("error: {e}");
                    return 1;
                }
            };
            let source = format!("file:{}", file.display());
            match engine.apply(None, &bytes, &source) {
                Ok(outcome) => {
                    println!("{outcome:?}");
                    0
                }
                Err(r) => {
                    eprintln!("rejected ({}): {}", r.reason, r.message);
                    1
                }
            }
        }
        GrantsCommand::Status { config } => match open_engine(&config) {
            Ok(e) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&e.state_json()).unwrap_or_default()
                );
                0
            }
            Err(code) => code,
        },
    }
}
