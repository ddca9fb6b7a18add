//! The access-state owner across two runs of the real daemon: an installer token used at the LAN
//! login is kept as the signed envelope received; when its row is tampered with in the SQLite
//! file, the next start drops it (audited as `token_dropped`, reason `bad_signature`), the
//! session opened with it gets `401`, and only the genuine token gets the installer back in.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed step should fail the test loudly"
)]

mod common;
mod e2e_support;

use e2e_support::*;
use serde_json::{Value, json};

fn ivo_token() -> Vec<u8> {
    let user =
        json!({"id": "ivo", "email": "ivo@installer.example", "name": "Ivo", "active": true});
    installer_token(user, "t-ivo", time::Duration::days(2))
}

/// The same envelope with its payload raised to `admin`; the signature is left as it was.
fn raised_to_admin(env: &[u8]) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(env).unwrap();
    let payload = sitegate::util_b64::decode(v["payload"].as_str().unwrap()).unwrap();
    let mut p: Value = serde_json::from_slice(&payload).unwrap();
    p["grant"]["role"] = json!("admin");
    v["payload"] = json!(sitegate::util_b64::encode(serde_json::to_vec(&p).unwrap()));
    serde_json::to_vec(&v).unwrap()
}

fn token_rows(s: &Site) -> Vec<(String, Vec<u8>)> {
    s.daemon
        .store
        .with_conn(|c| {
            let mut stmt = c.prepare("SELECT grant_id, envelope FROM grant_tokens")?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .unwrap()
}

async fn session_with(s: &Site, envelope: &[u8]) -> (u16, Value) {
    session(
        s,
        &json!({ "token": std::str::from_utf8(envelope).unwrap() }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_row_tampered_between_two_runs_of_the_daemon_is_dropped_and_its_session_ends() {
    let s = Site::start_with_members(&role_members()).await;
    let genuine = ivo_token();
    let ivo = token_login(&s, &genuine).await;
    assert_eq!(get(&s, "/units/gen-1", &ivo).await.status, 200);
    // Kept as the bytes received.
    assert_eq!(token_rows(&s), vec![("t-ivo".to_string(), genuine.clone())]);

    // Someone with write access to the database file raises the installer to admin.
    let tampered = raised_to_admin(&genuine);
    s.daemon
        .store
        .with_conn(|c| {
            c.execute(
                "UPDATE grant_tokens SET envelope = ?1 WHERE grant_id = 't-ivo'",
                [&tampered],
            )?;
            Ok(())
        })
        .unwrap();
    let s = s.restart().await;

    // The session opened with the token ends: its user is unknown to the index.
    let r = get(&s, "/units/gen-1", &ivo).await;
    assert_eq!(
        (r.status, r.body["error"].clone()),
        (401, json!("unauthenticated"))
    );
    let r = get(&s, "/me", &ivo).await;
    assert_eq!(r.status, 401);
    // The row is gone and the drop is audited with its reason.
    assert!(token_rows(&s).is_empty());
    let dropped = audit_of_kind(&s.daemon.store, "token_dropped");
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].detail["grant"], json!("t-ivo"));
    assert_eq!(dropped[0].detail["reason"], json!("bad_signature"));
    // The tampered bytes do not log in either; the genuine token does, as the technician it is.
    let (st, body) = session_with(&s, &tampered).await;
    assert_eq!(
        (st, body["error"].clone()),
        (401, json!("invalid_credentials")),
        "{body}"
    );
    // (The refused attempt delays the next login from this address: wait it out.)
    s.clock.advance(time::Duration::seconds(10));
    let ivo = token_login(&s, &genuine).await;
    assert_eq!(get(&s, "/units/gen-1", &ivo).await.status, 200);
    let me = get(&s, "/me", &ivo).await;
    assert_eq!(me.status, 200);
    s.stop().await;
}
