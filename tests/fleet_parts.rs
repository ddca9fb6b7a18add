//! Bundles in parts through a real mosquitto: a site with 10,000 grants (a bundle envelope of
//! megabytes) reaches the box under a 128 KiB message limit, published by `sitegate fleet
//! publish`; and the attacks on the parts fail, each audited and reported on `…/grants/state`:
//! a part from another bundle, a tampered part, a missing part, a replayed older set, a part for
//! another site. Nothing of a refused set is ever applied.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed step should fail the test loudly"
)]

mod common;
mod e2e_support;

use std::time::Duration;

use common::broker::Broker;
use common::mqtt::{Collector, publish_all};
use e2e_support::*;
use serde_json::{Value, json};
use sitegate::grants::fleet::{self, SplitBundle};

const ROOT: &str = "sitegate/v1/s-1/gw-1";
const LIMIT: usize = 128 * 1024;
const USERS: usize = 1000;
const GRANTS_PER_USER: usize = 10;

/// The PKCS#8 v2 document of the fleet test key (ring writes this layout for Ed25519; loading it
/// back checks that the public key belongs to the seed).
fn write_fleet_key(path: &std::path::Path) {
    let key = fleet_key();
    let seed = [42u8; 32];
    let mut doc = vec![
        0x30, 0x53, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    doc.extend_from_slice(&seed);
    doc.extend_from_slice(&[0xa1, 0x23, 0x03, 0x21, 0x00]);
    doc.extend_from_slice(ring::signature::KeyPair::public_key(&key).as_ref());
    std::fs::write(path, &doc).unwrap();
    let back = fleet::load_pkcs8(path).unwrap();
    assert_eq!(fleet::public_key_b64(&back), fleet::public_key_b64(&key));
}

/// A signed bundle of `USERS` users with `GRANTS_PER_USER` grants each, minus `revoked`.
fn big_bundle(seq: u64, revoked: &[&str]) -> Vec<u8> {
    let verifier =
        sitegate::grants::password::hash_password_with_salt(PASSWORD.as_bytes(), 1_000, &[5; 16])
            .unwrap();
    let issued = time::OffsetDateTime::now_utc() - time::Duration::minutes(10)
        + time::Duration::seconds(seq as i64);
    let mut users = Vec::with_capacity(USERS);
    let mut grants = Vec::with_capacity(USERS * GRANTS_PER_USER);
    for u in 0..USERS {
        let id = format!("user-{u:04}");
        users.push(
            json!({"id": id, "email": email(&id), "name": format!("User {u}"),
            "active": true, "password": verifier}),
        );
        for g in 0..GRANTS_PER_USER {
            let gid = format!("g-{u:04}-{g}");
            if revoked.contains(&gid.as_str()) {
                continue;
            }
            let unit = ["gen-1", "hvac-1", "hvac-2", "hvac-3"][g % 4];
            grants.push(json!({"id": gid, "user": id, "role": "control-only",
                "scope": {"unit": unit},
                "not_before": "2026-01-01T00:00:00Z", "expires_at": "2036-01-01T00:00:00Z"}));
        }
    }
    let desc = json!({"site": SITE, "seq": seq, "issued_at": sitegate::clock::rfc3339(issued),
        "policy": {"management": "independent",
                   "features": ["view", "control", "diagnose", "configure", "manage_users"]},
        "users": users, "grants": grants, "revoked": revoked});
    fleet::sign_bundle_description(&fleet_key(), KID, &serde_json::to_vec(&desc).unwrap()).unwrap()
}

fn split(envelope: &[u8]) -> SplitBundle {
    fleet::split_bundle(&fleet_key(), KID, envelope, LIMIT).unwrap()
}

/// The messages a cloud publishes for `s`: parts, then the manifest.
fn messages(s: &SplitBundle) -> Vec<(String, Vec<u8>)> {
    let mut m: Vec<(String, Vec<u8>)> = s
        .parts
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("{ROOT}/grants/parts/{i}"), p.clone()))
        .collect();
    m.push((format!("{ROOT}/grants"), s.manifest.clone()));
    m
}

/// A part with one byte of its data changed (still valid JSON and base64url).
fn tampered(part: &[u8]) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(part).unwrap();
    let mut data = sitegate::util_b64::decode(v["data"].as_str().unwrap()).unwrap();
    data[100] ^= 0x01;
    v["data"] = json!(sitegate::util_b64::encode(&data));
    serde_json::to_vec(&v).unwrap()
}

/// Waits for a state document satisfying `pred`.
async fn state(cloud: &Collector, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    state_after(cloud, 0, what, pred).await
}

/// Waits for a state document satisfying `pred` among those after the first `from`.
async fn state_after(
    cloud: &Collector,
    from: usize,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let topic = format!("{ROOT}/grants/state");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let docs: Vec<Value> = cloud
            .on(&topic)
            .iter()
            .skip(from)
            .map(|m| m.json())
            .collect();
        if let Some(j) = docs.iter().find(|j| pred(j)) {
            return j.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; last state: {:?}",
            docs.last()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The newest rejection (what the cloud reads) is `reason` for `seq`.
fn rejected_with(j: &Value, reason: &str, seq: u64) -> bool {
    j["status"] == "rejected" && j["rejection"]["reason"] == reason && j["rejection"]["seq"] == seq
}

/// `(reason, seq)` of every `grant_rejected` audit record with `kind` `manifest` or `part`.
fn part_rejections(site: &Site) -> Vec<(String, String, i64)> {
    site.daemon
        .store
        .with_conn(|c| {
            let mut st = c.prepare(
                "SELECT json_extract(detail, '$.kind'), json_extract(detail, '$.reason'),
                        json_extract(detail, '$.seq')
                 FROM audit WHERE kind = 'grant_rejected'
                   AND json_extract(detail, '$.kind') IN ('manifest', 'part') ORDER BY id",
            )?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_thousand_grant_bundle_arrives_in_parts_under_128_kib_and_attacks_on_parts_fail() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let cloud = Collector::start(
        broker.port,
        "parts-observer",
        &format!("{ROOT}/#"),
        false,
        None,
    );
    cloud.wait_subscribed().await;
    let site = Site::start(
        "plain",
        &format!(
            "\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nclient_id = \"sitegate-parts\"\n",
            broker.port
        ),
    )
    .await;
    let grants = || site.daemon.site.as_ref().unwrap().grants.snapshot();

    // 1. seq 1, 10,000 grants, published by the fleet tool with a 128 KiB limit.
    let one = big_bundle(1, &[]);
    assert!(one.len() > 2_000_000, "envelope is {} bytes", one.len());
    let env_path = dir.path().join("bundle-1.env");
    std::fs::write(&env_path, &one).unwrap();
    let key_path = dir.path().join("fleet.pk8");
    write_fleet_key(&key_path);
    let out = common::daemon::sitegate_ok(&[
        "fleet",
        "publish",
        "--broker",
        &format!("mqtt://127.0.0.1:{}", broker.port),
        "--site",
        SITE,
        "--gateway",
        "gw-1",
        "--in",
        env_path.to_str().unwrap(),
        "--max-message-size",
        "128KiB",
        "--key",
        key_path.to_str().unwrap(),
        "--kid",
        KID,
    ]);
    let expected_parts = split(&one).parts.len();
    assert!(
        out.contains(&format!("published bundle seq 1 in {expected_parts} parts")),
        "{out}"
    );
    let j = state(&cloud, "seq 1 applied", |j| {
        j["seq"] == 1 && j["last_message"]["outcome"] == "applied"
    })
    .await;
    assert_eq!(j["grants"], USERS * GRANTS_PER_USER);
    assert_eq!(j["parts"], Value::Null);
    assert_eq!(grants().grants.len(), USERS * GRANTS_PER_USER);
    // Every message the cloud sent fits the limit.
    let sent: Vec<_> = cloud
        .all()
        .into_iter()
        .filter(|m| m.topic.starts_with(&format!("{ROOT}/grants/parts/")))
        .collect();
    assert_eq!(sent.len(), expected_parts);
    assert!(sent.iter().all(|m| m.payload.len() <= LIMIT));
    let manifest = cloud.on(&format!("{ROOT}/grants"));
    assert_eq!(manifest.len(), 1);
    assert!(manifest[0].payload.len() <= LIMIT);
    // A user of the big bundle logs in.
    site.login("user-0999").await;

    // 2. A part from another bundle: seq 2 revokes one grant; an equivocating seq 2 (another
    //    revocation) lends its part 0. The box refuses that part and waits; the right part 0
    //    completes the set.
    let two = split(&big_bundle(2, &["g-0000-0"]));
    let other_two = split(&big_bundle(2, &["g-0000-1"]));
    let mut msgs = messages(&two);
    msgs[0].1 = other_two.parts[0].clone();
    publish_all(broker.port, msgs, true).await;
    let j = state(&cloud, "the foreign part is refused", |j| {
        rejected_with(j, "part_mismatch", 2)
    })
    .await;
    assert_eq!(j["seq"], 1, "{j}");
    state(&cloud, "seq 2 waits for part 0", |j| {
        j["parts"]["seq"] == 2 && j["parts"]["missing"] == json!([0])
    })
    .await;
    assert_eq!(grants().seq, 1);
    publish_all(
        broker.port,
        vec![(format!("{ROOT}/grants/parts/0"), two.parts[0].clone())],
        true,
    )
    .await;
    state(&cloud, "seq 2 applied", |j| {
        j["seq"] == 2 && j["last_message"]["outcome"] == "applied"
    })
    .await;
    assert_eq!(grants().grants.len(), USERS * GRANTS_PER_USER - 1);

    // 3. A tampered part (one byte of seq 3's part 1): refused; seq 3 never completes.
    let three = split(&big_bundle(3, &["g-0000-0", "g-0001-0"]));
    let mut msgs = messages(&three);
    msgs[1].1 = tampered(&three.parts[1]);
    publish_all(broker.port, msgs, true).await;
    state(&cloud, "the tampered part is refused", |j| {
        rejected_with(j, "part_mismatch", 3)
    })
    .await;
    let j = state(&cloud, "seq 3 waits for part 1", |j| {
        j["parts"]["seq"] == 3 && j["parts"]["missing"] == json!([1])
    })
    .await;
    assert_eq!(j["seq"], 2);
    assert_eq!(grants().seq, 2);

    // 4. A missing part: seq 3 still lacks part 1 when seq 4 comes (with its part 5 held back
    //    at first). Seq 3 is dropped as incomplete; seq 4 applies once part 5 arrives.
    let four = split(&big_bundle(4, &["g-0000-0", "g-0002-0"]));
    let mut msgs = messages(&four);
    let held_back = msgs.remove(5);
    publish_all(broker.port, msgs, true).await;
    state(&cloud, "seq 3 dropped as incomplete", |j| {
        rejected_with(j, "incomplete", 3)
    })
    .await;
    state(&cloud, "seq 4 waits for part 5", |j| {
        j["parts"]["seq"] == 4 && j["parts"]["missing"] == json!([5])
    })
    .await;
    assert_eq!(grants().seq, 2);
    publish_all(broker.port, vec![held_back], true).await;
    state(&cloud, "seq 4 applied", |j| {
        j["seq"] == 4 && j["last_message"]["outcome"] == "applied"
    })
    .await;
    assert!(grants().revoked.len() >= 2);

    // 5. A replayed older set (seq 2, exactly as the cloud once sent it): refused as a replay.
    publish_all(broker.port, messages(&two), true).await;
    state(&cloud, "the replayed manifest is refused", |j| {
        j["seq"] == 4 && rejected_with(j, "replay", 2) && j["last_message"]["kind"] == "grants"
    })
    .await;

    // 6. A part for another site.
    let mut foreign: Value = serde_json::from_slice(&four.parts[0]).unwrap();
    foreign["site"] = json!("s-2");
    foreign["seq"] = json!(9);
    publish_all(
        broker.port,
        vec![(
            format!("{ROOT}/grants/parts/0"),
            serde_json::to_vec(&foreign).unwrap(),
        )],
        true,
    )
    .await;
    state(&cloud, "the foreign site's part is refused", |j| {
        rejected_with(j, "wrong_site", 9)
    })
    .await;
    assert_eq!(grants().seq, 4);

    // Every refusal is in the audit trail, in order.
    let audited = part_rejections(&site);
    let want = |kind: &str, reason: &str, seq: i64| (kind.to_string(), reason.to_string(), seq);
    assert!(
        audited.contains(&want("part", "part_mismatch", 2)),
        "{audited:?}"
    );
    assert!(
        audited.contains(&want("part", "part_mismatch", 3)),
        "{audited:?}"
    );
    assert!(
        audited.contains(&want("manifest", "incomplete", 3)),
        "{audited:?}"
    );
    assert!(
        audited.contains(&want("manifest", "replay", 2)),
        "{audited:?}"
    );
    assert!(
        audited.contains(&want("part", "wrong_site", 9)),
        "{audited:?}"
    );
    // The replayed set's parts are refused too (seq 2 is older than the applied seq 4).
    let replayed_parts = audited
        .iter()
        .filter(|a| **a == want("part", "replay", 2))
        .count();
    assert_eq!(replayed_parts, two.parts.len(), "{audited:?}");

    // 7. The cloud puts seq 4 back in the retained slots (a duplicate for the box); after a
    //    restart the box gets the retained set again: a duplicate, nothing rejected.
    let seen = cloud.on(&format!("{ROOT}/grants/state")).len();
    publish_all(broker.port, messages(&four), true).await;
    state_after(&cloud, seen, "seq 4 again is a duplicate", |j| {
        j["seq"] == 4 && j["last_message"]["outcome"] == "duplicate"
    })
    .await;
    let before = part_rejections(&site).len();
    let seen = cloud.on(&format!("{ROOT}/grants/state")).len();
    let site = site.restart().await;
    state_after(
        &cloud,
        seen,
        "the retained set is a duplicate after the restart",
        |j| j["seq"] == 4 && j["last_message"]["outcome"] == "duplicate",
    )
    .await;
    assert_eq!(part_rejections(&site).len(), before);
    site.stop().await;
}
