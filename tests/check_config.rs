//! `sitegate check-config` through the real binary: every problem with its key path (type errors
//! included, not just the first), the valid choices, a plain word on whether the box is
//! provisioned, and a warning for a config that would start a box nobody can log in to (keys
//! imported into the database count, read without ever creating or changing it).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test"
)]

mod common;

use std::path::Path;

use common::daemon::{Out, sitegate, sitegate_ok};
use sitegate::grants::fleet;

fn check(dir: &Path, text: &str) -> (Out, String) {
    let path = dir.join("sitegate.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap().to_string();
    (sitegate(&["check-config", "--config", &p]), p)
}

#[test]
fn every_type_error_is_listed_with_its_key_path_and_the_valid_choices() {
    let dir = tempfile::tempdir().unwrap();
    let (out, path) = check(
        dir.path(),
        r#"colour = "red"

[site]
id = "s-1"
gateway = 5

[api]
listen = "127.0.0.1:0"
mode = "plain"
listen_port = 3

[[links]]
name = "bus"
kind = "tcp"
address = "127.0.0.1:502"

[[links]]
name = "rs485"
kind = "rtu"
device = "/dev/ttyUSB0"
baud = "fast"
data_bits = 300

[[units]]
id = "gen-1"
link = "bus"
slave = "three"
profile = "dse-gencomm"
"#,
    );
    assert_eq!(out.code, 78, "{}", out.stderr);
    assert_eq!(out.stdout, "");
    let expected = [
        format!("invalid config `{path}` (6 problems):"),
        "  - api.listen_port: unknown field `listen_port`, expected one of `listen`, `mode`, `cert`, `key`, `max_body_bytes`, `request_timeout_ms`, `rate_limit_per_sec`, `rate_limit_burst`, `cors_origins`, `fresh_read_timeout_ms`, `console_socket`".into(),
        "  - colour: unknown field `colour`, expected one of `site`, `state`, `log`, `api`, `auth`, `grants`, `mqtt`, `profiles`, `links`, `units`, `modbus_server` (at line 1, column 1)".into(),
        "  - links[1].baud: expected an integer from 0 to 4294967295, found string \"fast\"".into(),
        "  - links[1].data_bits: expected an integer from 0 to 255, found integer `300`".into(),
        "  - site.gateway: expected a string, found integer `5`".into(),
        "  - units[0].slave: expected an integer, found string \"three\"".into(),
    ];
    assert_eq!(out.stderr, expected.join("\n") + "\n");
}

#[test]
fn a_syntax_error_names_its_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let (out, path) = check(dir.path(), "[site\nid = \"s-1\"\n");
    assert_eq!(out.code, 78);
    assert_eq!(
        out.stderr,
        format!(
            "invalid config `{path}` (1 problem):\n  - invalid table header: expected `.`, `]` (at line 1, column 6)\n"
        )
    );
}

#[test]
fn semantic_problems_are_all_listed_once_the_types_are_right() {
    let dir = tempfile::tempdir().unwrap();
    let (out, path) = check(
        dir.path(),
        "[[links]]\nname = \"bus\"\nkind = \"serial\"\n\n[[units]]\nid = \"gen-1\"\nlink = \"bus9\"\nslave = 0\nprofile = \"dse-gencomm\"\n",
    );
    assert_eq!(out.code, 78);
    let expected = [
        format!("invalid config `{path}` (3 problems):"),
        "  - links[0].kind: `serial` is not one of tcp, rtu, rtu-over-tcp".into(),
        "  - units[0].link: no link named `bus9` in [[links]]".into(),
        "  - units[0].slave: 0 is not a unicast Modbus slave id (1 to 247; 0 is broadcast)".into(),
    ];
    assert_eq!(out.stderr, expected.join("\n") + "\n");
}

#[test]
fn it_says_plainly_whether_the_box_is_provisioned_and_whether_anyone_can_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let api = "[api]\nlisten = \"127.0.0.1:0\"\n";
    let (out, path) = check(dir.path(), api);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
    assert_eq!(
        out.stdout,
        format!(
            "config `{path}` is valid: 0 link(s), 0 unit(s)\n\
             not provisioned (no [site]): the daemon serves only the first-boot setup; provision with the setup code over the LAN or `sitegate provision`\n"
        )
    );

    let site = "[site]\nid = \"s-1\"\ngateway = \"gw-1\"\n";
    let (out, path) = check(dir.path(), &format!("{site}{api}"));
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
    assert_eq!(
        out.stdout,
        format!(
            "config `{path}` is valid: 0 link(s), 0 unit(s)\n\
             provisioned: site s-1, gateway gw-1, 0 trust key(s), MQTT off\n\
             warning: no [[grants.trust]] key: nobody can log in (bundles and installer tokens are verified against trust keys) unless one was imported with `sitegate trust import` (see `sitegate trust list`)\n"
        )
    );

    let k = fleet::keypair_from_seed(&[42u8; 32]).unwrap();
    let trust = format!(
        "[[grants.trust]]\nkid = \"fleet-a\"\npublic_key = \"{}\"\n",
        fleet::public_key_b64(&k)
    );
    let (out, path) = check(dir.path(), &format!("{site}{api}{trust}"));
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
    assert_eq!(
        out.stdout,
        format!(
            "config `{path}` is valid: 0 link(s), 0 unit(s)\n\
             provisioned: site s-1, gateway gw-1, 1 trust key(s), MQTT off\n\
             note: no [mqtt]: user bundles reach this box only with `sitegate grants apply` on the box; installers can log in with an installer token\n"
        )
    );

    let mqtt = "[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n";
    let (out, path) = check(dir.path(), &format!("{site}{api}{trust}{mqtt}"));
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
    assert_eq!(
        out.stdout,
        format!(
            "config `{path}` is valid: 0 link(s), 0 unit(s)\n\
             provisioned: site s-1, gateway gw-1, 1 trust key(s), MQTT on\n"
        )
    );
}

/// Name, size and modification time of every file in `dir` (none when it does not exist).
fn files(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.modified().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn keys_imported_into_the_database_count_and_check_config_never_makes_or_changes_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let text = format!(
        "[state]\ndir = \"{}\"\n[site]\nid = \"s-1\"\ngateway = \"gw-1\"\n\
         [api]\nlisten = \"127.0.0.1:0\"\n",
        state.display()
    );
    // No database yet: the warning, and still no database (nor state directory) after.
    let (out, path) = check(dir.path(), &text);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
    assert_eq!(
        out.stdout,
        format!(
            "config `{path}` is valid: 0 link(s), 0 unit(s)\n\
             provisioned: site s-1, gateway gw-1, 0 trust key(s), MQTT off\n\
             warning: no [[grants.trust]] key: nobody can log in (bundles and installer tokens are verified against trust keys) unless one was imported with `sitegate trust import` (see `sitegate trust list`)\n"
        )
    );
    assert!(!state.exists());

    let k = fleet::keypair_from_seed(&[7u8; 32]).unwrap();
    let import = dir.path().join("key.json");
    std::fs::write(
        &import,
        format!(
            "{{\"kid\":\"fleet-b\",\"public_key\":\"{}\"}}",
            fleet::public_key_b64(&k)
        ),
    )
    .unwrap();
    let added = sitegate_ok(&["trust", "import", import.to_str().unwrap(), "-c", &path]);
    assert!(added.starts_with("1 key(s) added"), "{added}");
    let before = files(&state);
    let out = sitegate(&["check-config", "--config", &path]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
    assert_eq!(
        out.stdout,
        format!(
            "config `{path}` is valid: 0 link(s), 0 unit(s)\n\
             provisioned: site s-1, gateway gw-1, 0 trust key(s) (+1 in the database), MQTT off\n\
             note: no [mqtt]: user bundles reach this box only with `sitegate grants apply` on the box; installers can log in with an installer token\n"
        )
    );
    assert_eq!(
        files(&state),
        before,
        "check-config left the state directory as it was"
    );
}
