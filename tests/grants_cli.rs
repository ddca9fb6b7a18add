//! The grants command line as an integrator uses it: make keys, hash a password, sign a bundle,
//! a key rotation and a token, and apply them to a box with `sitegate grants apply`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed set-up step should fail the test"
)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn sitegate(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sitegate"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut pipe = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            pipe.write_all(s.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

fn ok(args: &[&str], stdin: Option<&str>) -> String {
    let out = sitegate(args, stdin);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn keygen(dir: &Path, name: &str) -> (String, String) {
    let key = dir.join(format!("{name}.pk8"));
    let out = ok(&["fleet", "keygen", "--out", p(&key), "--kid", name], None);
    let pk = out
        .lines()
        .find_map(|l| l.strip_prefix("public_key: "))
        .unwrap()
        .to_string();
    (key.to_str().unwrap().to_string(), pk)
}

#[test]
fn an_integrator_signs_and_a_box_applies_bundles_keys_and_tokens_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key_a, pk_a) = keygen(d, "fleet-a");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_a).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !sitegate(&["fleet", "keygen", "--out", &key_a], None)
            .status
            .success(),
        "never overwrites a key"
    );
    assert_eq!(ok(&["fleet", "pubkey", "--key", &key_a], None).trim(), pk_a);

    let cfg = d.join("sitegate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[site]\nid = \"s-1\"\ngateway = \"gw-1\"\n[state]\ndir = \"state\"\n\
             [[grants.trust]]\nkid = \"fleet-a\"\npublic_key = \"{pk_a}\"\n"
        ),
    )
    .unwrap();

    let verifier = ok(
        &["fleet", "hash-password", "--iterations", "1000"],
        Some("s3cret pass\n"),
    );
    let verifier = verifier.trim();
    assert!(verifier.starts_with("pbkdf2-sha256$1000$"));
    assert!(sitegate::grants::password::verify_password(
        verifier,
        b"s3cret pass"
    ));
    assert!(
        !sitegate(&["fleet", "hash-password"], Some(""))
            .status
            .success()
    );

    let now = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let now = sitegate::clock::rfc3339(now);
    let desc = serde_json::json!({
        "site": "s-1", "seq": 1, "issued_at": now,
        "policy": {"management": "independent", "features": ["view", "control"]},
        "users": [{"id": "u-1", "email": "ana@example.com", "name": "Ana", "active": true, "password": verifier}],
        "grants": [{"id": "g-1", "user": "u-1", "role": "admin", "scope": {"site": "s-1"}}]
    });
    let bundle_json = d.join("bundle.json");
    std::fs::write(&bundle_json, serde_json::to_string_pretty(&desc).unwrap()).unwrap();
    let env = d.join("bundle.env");
    ok(
        &[
            "fleet",
            "sign-bundle",
            "--key",
            &key_a,
            "--kid",
            "fleet-a",
            "--in",
            p(&bundle_json),
            "--out",
            p(&env),
        ],
        None,
    );
    let c = p(&cfg);
    assert!(
        ok(
            &[
                "fleet",
                "verify",
                "--in",
                p(&env),
                "--kid",
                "fleet-a",
                "--public-key",
                &pk_a
            ],
            None
        )
        .contains("seq 1, 1 users, 1 grants")
    );
    assert!(ok(&["grants", "apply", p(&env), "-c", c], None).contains("Applied"));
    assert!(ok(&["grants", "apply", p(&env), "-c", c], None).contains("Duplicate"));
    let status: serde_json::Value =
        serde_json::from_str(&ok(&["grants", "status", "-c", c], None)).unwrap();
    assert_eq!(status["seq"], serde_json::json!(1));
    assert_eq!(status["grants"], serde_json::json!(1));

    // A description the box would reject is refused before signing.
    let bad = d.join("bad.json");
    let mut bad_desc = desc.clone();
    bad_desc["grants"][0]["user"] = serde_json::json!("u-404");
    std::fs::write(&bad, bad_desc.to_string()).unwrap();
    let out = sitegate(
        &[
            "fleet",
            "sign-bundle",
            "--key",
            &key_a,
            "--kid",
            "fleet-a",
            "--in",
            p(&bad),
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_user"));

    // A tampered envelope is rejected with its reason. (Tampering only the signature of the
    // bundle in force would be a harmless duplicate: the payload is what counts.)
    let tampered = d.join("tampered.env");
    let mut bytes = std::fs::read(&env).unwrap();
    let i = 80; // inside the base64 payload
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    std::fs::write(&tampered, bytes).unwrap();
    let out = sitegate(&["grants", "apply", p(&tampered), "-c", c], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad_signature"));
    let out = sitegate(
        &[
            "fleet",
            "verify",
            "--in",
            p(&tampered),
            "--kid",
            "fleet-a",
            "--public-key",
            &pk_a,
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad_signature"));

    // Rotate to fleet-b, signed by the current key and the new one.
    let (key_b, pk_b) = keygen(d, "fleet-b");
    let keys_json = d.join("keys.json");
    std::fs::write(
        &keys_json,
        serde_json::json!({"seq": 1, "issued_at": now, "keys": [{"kid": "fleet-b", "public_key": pk_b}]}).to_string(),
    )
    .unwrap();
    let keys_env = d.join("keys.env");
    ok(
        &[
            "fleet",
            "sign-keys",
            "--key",
            &key_a,
            "--kid",
            "fleet-a",
            "--key",
            &key_b,
            "--kid",
            "fleet-b",
            "--in",
            p(&keys_json),
            "--out",
            p(&keys_env),
        ],
        None,
    );
    assert!(ok(&["grants", "apply", p(&keys_env), "-c", c], None).contains("KeysApplied"));
    let list = ok(&["trust", "list", "-c", c], None);
    assert!(
        list.lines()
            .any(|l| l.starts_with("fleet-a") && l.contains("retired")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("fleet-b") && l.contains("active")),
        "{list}"
    );

    // An installer token signed by the new key.
    let token_json = d.join("token.json");
    let expires =
        sitegate::clock::rfc3339(time::OffsetDateTime::now_utc() + time::Duration::days(1));
    std::fs::write(
        &token_json,
        serde_json::json!({"site": "s-1", "issued_at": now,
            "user": {"id": "u-9", "email": "inst@example.com", "active": true},
            "grant": {"id": "g-t1", "user": "u-9", "role": "technician", "scope": {"site": "s-1"}, "expires_at": expires}})
        .to_string(),
    )
    .unwrap();
    let token_env = d.join("token.env");
    ok(
        &[
            "fleet",
            "issue-token",
            "--key",
            &key_b,
            "--kid",
            "fleet-b",
            "--in",
            p(&token_json),
            "--out",
            p(&token_env),
        ],
        None,
    );
    assert!(ok(&["grants", "apply", p(&token_env), "-c", c], None).contains("TokenAdmitted"));

    // trust import: a new key is added, a retired one refused.
    let (_key_c, pk_c) = keygen(d, "fleet-c");
    let imp = d.join("import.json");
    std::fs::write(
        &imp,
        serde_json::json!({"kid": "fleet-c", "public_key": pk_c}).to_string(),
    )
    .unwrap();
    assert!(ok(&["trust", "import", p(&imp), "-c", c], None).contains("1 key(s) added"));
    std::fs::write(
        &imp,
        serde_json::json!({"kid": "fleet-a", "public_key": pk_a}).to_string(),
    )
    .unwrap();
    let out = sitegate(&["trust", "import", p(&imp), "-c", c], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("retired"));
}
