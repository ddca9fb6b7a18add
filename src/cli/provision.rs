//! `sitegate provision`: the installer's flags and prompts, and the summary it prints. The work
//! itself (config, state dir, keys, certificate) is [`crate::provision`], which the first-boot
//! setup endpoint calls too.

use std::path::PathBuf;

use crate::grants::trust::AnchorKey;
use crate::model::{GatewayId, SiteId};
use crate::provision::{
    ProvisionError, Provisioned, Request, parse_trust_arg, provision, read_trust_file,
};

/// `sitegate provision`: flags for scripted installs; prompts on a TTY for what is missing.
#[derive(Debug, Clone, clap::Args)]
pub struct ProvisionArgs {
    /// Config file to write (created when absent; comments, links and units are kept).
    #[arg(long, short, default_value = super::shared::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Site id (as the cloud knows it).
    #[arg(long)]
    pub site: Option<String>,
    /// Gateway id of this box within the site.
    #[arg(long)]
    pub gateway: Option<String>,
    /// Human-readable site name.
    #[arg(long)]
    pub name: Option<String>,
    /// State directory (database, keys, certificate); default: the config's, else
    /// `/var/lib/sitegate`.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// A cloud trust key `KID=PUBLIC_KEY` (raw Ed25519, base64url); repeatable.
    #[arg(long = "trust", value_name = "KID=PUBKEY")]
    pub trust: Vec<String>,
    /// Trust keys from a JSON file, the format `sitegate trust import` takes:
    /// `{"keys":[{"kid","public_key","not_after"?}]}` or one such key object.
    #[arg(long, value_name = "FILE")]
    pub trust_file: Option<PathBuf>,
    /// LAN API listen address (default: keep the config's, else `0.0.0.0:8443`).
    #[arg(long)]
    pub api_listen: Option<String>,
    /// MQTT broker url (`mqtt://host:port` or `mqtts://host:port`).
    #[arg(long)]
    pub mqtt_url: Option<String>,
    /// Extra subject name for the TLS certificate (the box's LAN address or DNS name);
    /// repeatable.
    #[arg(long = "tls-name", value_name = "NAME")]
    pub tls_names: Vec<String>,
    /// Replace an existing provisioning (the old config and database are backed up first).
    #[arg(long)]
    pub force: bool,
    /// Never prompt, even on a terminal: fail listing what is missing.
    #[arg(long)]
    pub non_interactive: bool,
}

/// Asks on the terminal; `None` when the answer is empty or stdin closed.
fn prompt(question: &str) -> Option<String> {
    use std::io::Write;
    eprint!("{question}: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    match std::io::stdin().read_line(&mut line) {
        Ok(n) if n > 0 => Some(line.trim().to_string()).filter(|s| !s.is_empty()),
        _ => None,
    }
}

/// Asks until the answer passes `check` (at most three times).
fn prompt_valid(question: &str, check: impl Fn(&str) -> Result<(), String>) -> Option<String> {
    for _ in 0..3 {
        let answer = prompt(question)?;
        match check(&answer) {
            Ok(()) => return Some(answer),
            Err(e) => eprintln!("`{answer}`: {e}"),
        }
    }
    None
}

/// Builds the request from the flags, prompting on a terminal for what is missing.
fn request_from_args(
    args: &ProvisionArgs,
    interactive: bool,
) -> Result<(Request, Vec<AnchorKey>), ProvisionError> {
    let mut trust = Vec::new();
    for t in &args.trust {
        trust.push(parse_trust_arg(t)?);
    }
    let mut anchors = Vec::new();
    if let Some(f) = &args.trust_file {
        let (raw, a) = read_trust_file(f)?;
        trust.extend(raw);
        anchors = a;
    }
    let mut site = args.site.clone();
    let mut gateway = args.gateway.clone();
    let mut name = args.name.clone();
    if interactive {
        if site.is_none() {
            site = prompt_valid("site id (e.g. s-1042)", |v| {
                SiteId::new(v.to_string())
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
        }
        if gateway.is_none() {
            gateway = prompt_valid("gateway id (e.g. gw-1)", |v| {
                GatewayId::new(v.to_string())
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
        }
        if name.is_none() && args.site.is_none() {
            name = prompt("site name (optional, Enter to skip)");
        }
        while trust.is_empty() {
            match prompt("cloud trust key as KID=PUBLIC_KEY (from `sitegate fleet keygen`)") {
                Some(t) => match parse_trust_arg(&t) {
                    Ok(k) => trust.push(k),
                    Err(e) => eprintln!("{e}"),
                },
                None => break,
            }
        }
    }
    let mut missing = Vec::new();
    if site.is_none() {
        missing.push("--site");
    }
    if gateway.is_none() {
        missing.push("--gateway");
    }
    if trust.is_empty() {
        missing.push("--trust KID=PUBLIC_KEY (or --trust-file FILE)");
    }
    if !missing.is_empty() {
        return Err(ProvisionError::Missing(missing.join(", ")));
    }
    Ok((
        Request {
            site: site.unwrap_or_default(),
            gateway: gateway.unwrap_or_default(),
            name,
            state_dir: args.state_dir.clone(),
            trust,
            api_listen: args.api_listen.clone(),
            mqtt_url: args.mqtt_url.clone(),
            force: args.force,
        },
        anchors,
    ))
}

/// Runs `sitegate provision`; returns the exit code.
pub fn run_cli(args: ProvisionArgs) -> i32 {
    use std::io::IsTerminal;
    let interactive = !args.non_interactive && std::io::stdin().is_terminal();
    let (req, anchors) = match request_from_args(&args, interactive) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return e.exit_code();
        }
    };
    match provision(&args.config, &req, &anchors, &args.tls_names) {
        Ok(p) => {
            print_summary(&p, &req);
            0
        }
        Err(e) => {
            // A config error carries its own multi-line report.
            match &e {
                ProvisionError::Config(c) => eprint!("{c}"),
                other => eprintln!("error: {other}"),
            }
            e.exit_code()
        }
    }
}

fn print_summary(p: &Provisioned, req: &Request) {
    let c = &p.written.config;
    let path = p.written.config_path.display();
    println!("provisioned");
    println!("  site:               {}", req.site);
    println!("  gateway:            {}", req.gateway);
    if let Some(n) = &req.name {
        println!("  name:               {n}");
    }
    println!("  config:             {path}");
    println!("  state dir:          {}", c.state_dir.display());
    println!(
        "  trusted keys:       {}",
        req.trust
            .iter()
            .map(|k| k.kid.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  device public key:  {}", p.device_public_key);
    if !p.tls_cert.as_os_str().is_empty() {
        println!("  TLS certificate:    {}", p.tls_cert.display());
    }
    println!("  TLS sha256:         {}", p.tls_fingerprint);
    if p.written.backups.is_empty() {
        println!("  backups:            none (nothing was replaced)");
    } else {
        for b in &p.written.backups {
            println!("  backup:             {}", b.display());
        }
    }
    println!();
    println!("next steps:");
    if c.links.is_empty() {
        println!("  add a [[links]] entry for the bus to {path}, then:");
    }
    println!("  sitegate scan --link LINK --config {path}");
    println!("  (add the proposed [[units]] to the config)");
    println!("  sitegate units test --config {path}");
    if p.written.backups.is_empty() {
        println!("  systemctl enable --now sitegate");
    } else {
        println!(
            "  systemctl restart sitegate   (a running daemon keeps the old config until then)"
        );
    }
    println!("  pin the TLS fingerprint above in the installer app");
}
