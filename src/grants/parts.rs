//! Bundles in parts: how a bundle larger than the broker's message limit reaches the box.
//!
//! Cloud brokers cap message size (AWS IoT Core 128 KB, Azure IoT Hub 256 KB), while a site with
//! thousands of grants makes a bundle envelope of megabytes. The cloud cuts the signed bundle
//! envelope into **parts** and signs a **manifest** (`kind: "manifest"`, an ordinary signed
//! envelope) that names the site, the bundle's `seq` and payload hash, the size and SHA-256 of the
//! whole envelope, and the SHA-256 of every part in order. A part is unsigned; it is bound to its
//! manifest by that list (and names the manifest's hash so the box can route it).
//!
//! This module owns the wire format of manifests and parts, the cutting (for `sitegate fleet`)
//! and the [`Assembler`]: bounded memory for sets being received. It never trusts a part before
//! the verified manifest lists its hash, never hands anything to the bundle path but the exact
//! bytes the manifest hashes, and that path then verifies the reassembled bundle envelope like any
//! other (signature, site, seq, strict JSON). See `docs/grants.md` ("Bundles in parts").

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::bundle::parse_json;
use super::envelope::{KeyProvider, open_and_verify_single};
use super::{MAX_ENVELOPE_BYTES, Reason, Rejection, reject, short};
use crate::model::SiteId;

/// Most parts in one set.
pub const MAX_PARTS: usize = 1024;
/// Largest part message (the box's MQTT inbound limit is larger; this one is the format's).
pub const MAX_PART_MESSAGE: usize = 1024 * 1024;
/// Smallest `--max-message-size` the fleet tool accepts (a part carries about 200 bytes besides
/// its data). Small limits also need many parts: a set has at most [`MAX_PARTS`].
pub const MIN_MESSAGE_SIZE: usize = 1024;
/// Bytes of parts held for sets whose manifest has not arrived yet (unverified), all sets
/// together. A verified set holds at most its manifest's `size` (≤ 4 MiB).
pub const MAX_UNVERIFIED_BYTES: usize = MAX_ENVELOPE_BYTES + 64 * 1024;
/// Sets whose manifest has not arrived yet, at most (the oldest is dropped for a new one).
pub const MAX_UNVERIFIED_SETS: usize = 2;
/// A set that is not complete this long after its manifest (or, unverified, after its first part)
/// is dropped.
pub const SET_TTL: Duration = Duration::from_secs(600);

/// The manifest payload, as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub site: String,
    /// The `seq` of the bundle the parts make up.
    pub seq: u64,
    /// SHA-256 (hex) of the bundle's payload bytes: what `…/grants/state` reports once applied.
    pub payload_sha256: String,
    /// SHA-256 (hex) of the whole bundle envelope, the parts' data concatenated.
    pub sha256: String,
    /// Length of the whole bundle envelope in bytes.
    pub size: usize,
    /// SHA-256 (hex) of each part's data, in order.
    pub parts: Vec<String>,
}

/// One part message, as published on `…/grants/parts/{index}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartWire {
    pub v: u8,
    pub kind: String,
    pub site: String,
    pub seq: u64,
    /// SHA-256 (hex) of the manifest's payload bytes.
    pub manifest: String,
    pub index: usize,
    /// The part's bytes of the bundle envelope, base64url without padding.
    pub data: String,
}

/// A part whose wrapper parsed (NOT trusted: only its hash in a verified manifest is).
#[derive(Debug, Clone)]
pub struct Part {
    pub site: SiteId,
    pub seq: u64,
    pub manifest: String,
    pub index: usize,
    pub data: Vec<u8>,
}

fn is_sha_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A manifest whose signature verified and whose payload is valid; with the SHA-256 of its
/// payload (the id its parts name). Only [`VerifiedManifest::verify`] makes one.
#[derive(Debug, Clone)]
pub struct VerifiedManifest {
    pub manifest: Manifest,
    pub site: SiteId,
    pub sha256: String,
}

impl VerifiedManifest {
    /// Verifies the envelope with the key `keys` chooses, then parses and checks the payload.
    pub fn verify(bytes: &[u8], keys: &dyn KeyProvider) -> Result<VerifiedManifest, Rejection> {
        let (_kid, payload) = open_and_verify_single(bytes, super::Kind::Manifest, keys)?;
        let manifest: Manifest = parse_json(&payload, "manifest")?;
        let site = check_manifest(&manifest)?;
        Ok(VerifiedManifest {
            manifest,
            site,
            sha256: crate::util::sha256_hex(&payload),
        })
    }
}

/// The checks of a manifest payload that need no state.
pub fn check_manifest(m: &Manifest) -> Result<SiteId, Rejection> {
    let site = SiteId::new(&m.site)
        .map_err(|e| Rejection::new(Reason::Malformed, format!("manifest site: {e}")))?;
    if m.seq == 0 {
        return reject(Reason::Malformed, "manifest seq must be at least 1");
    }
    if !is_sha_hex(&m.payload_sha256) || !is_sha_hex(&m.sha256) {
        return reject(
            Reason::Malformed,
            "manifest hashes are 64 lowercase hex digits",
        );
    }
    if m.size == 0 || m.size > MAX_ENVELOPE_BYTES {
        return reject(
            Reason::TooLarge,
            format!(
                "manifest size {} is not within 1..={MAX_ENVELOPE_BYTES} bytes",
                m.size
            ),
        );
    }
    if m.parts.is_empty() || m.parts.len() > MAX_PARTS {
        return reject(
            Reason::TooLarge,
            format!(
                "manifest lists {} parts (1..={MAX_PARTS} allowed)",
                m.parts.len()
            ),
        );
    }
    if let Some(bad) = m.parts.iter().find(|h| !is_sha_hex(h)) {
        return reject(
            Reason::Malformed,
            format!("manifest part hash `{}` is not 64 hex digits", short(bad)),
        );
    }
    Ok(site)
}

/// Parses a part message (strict JSON, as every signed payload). Nothing in it is trusted yet.
pub fn parse_part(bytes: &[u8]) -> Result<Part, Rejection> {
    if bytes.len() > MAX_PART_MESSAGE {
        return reject(
            Reason::TooLarge,
            format!(
                "part is {} bytes, more than the {MAX_PART_MESSAGE} allowed",
                bytes.len()
            ),
        );
    }
    let w: PartWire = parse_json(bytes, "part")?;
    if w.v != 1 {
        return reject(
            Reason::UnsupportedVersion,
            format!("part version {} is not supported (expected 1)", w.v),
        );
    }
    if w.kind != "part" {
        return reject(
            Reason::WrongKind,
            format!("expected a `part`, got `{}`", short(&w.kind)),
        );
    }
    let site = SiteId::new(&w.site)
        .map_err(|e| Rejection::new(Reason::Malformed, format!("part site: {e}")))?;
    if !is_sha_hex(&w.manifest) {
        return reject(
            Reason::Malformed,
            "part `manifest` is not 64 lowercase hex digits",
        );
    }
    if w.index >= MAX_PARTS {
        return reject(
            Reason::TooLarge,
            format!("part index {} is beyond the {MAX_PARTS} allowed", w.index),
        );
    }
    let data = crate::util_b64::decode(&w.data).map_err(|_| {
        Rejection::new(
            Reason::Malformed,
            "part data is not base64url without padding",
        )
    })?;
    if data.is_empty() {
        return reject(Reason::Malformed, "part data is empty");
    }
    Ok(Part {
        site,
        seq: w.seq,
        manifest: w.manifest,
        index: w.index,
        data,
    })
}

/// A set being received.
#[derive(Debug)]
struct Set {
    seq: u64,
    manifest_sha: String,
    /// `Some` once the verified manifest arrived.
    manifest: Option<Manifest>,
    parts: BTreeMap<usize, Vec<u8>>,
    bytes: usize,
    since: Instant,
}

impl Set {
    fn new(seq: u64, manifest_sha: String, now: Instant) -> Set {
        Set {
            seq,
            manifest_sha,
            manifest: None,
            parts: BTreeMap::new(),
            bytes: 0,
            since: now,
        }
    }
    fn missing(&self) -> Vec<usize> {
        let n = self.manifest.as_ref().map_or(0, |m| m.parts.len());
        (0..n).filter(|i| !self.parts.contains_key(i)).collect()
    }
}

/// A verified set dropped before it completed: the engine audits it as `incomplete`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub seq: u64,
    pub received: usize,
    pub count: usize,
    pub why: &'static str,
}

impl Dropped {
    pub fn rejection(&self) -> Rejection {
        Rejection::new(
            Reason::Incomplete,
            format!(
                "bundle seq {} in parts dropped with {} of {} parts: {}",
                self.seq, self.received, self.count, self.why
            ),
        )
    }
}

/// What a manifest or a part led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Kept; the set is not complete. `count` is `None` while the manifest has not arrived.
    Pending {
        seq: u64,
        received: usize,
        count: Option<usize>,
    },
    /// Every part arrived and matched: the whole bundle envelope, for the bundle path.
    Complete { manifest: Manifest, bytes: Vec<u8> },
}

/// Where a set being received stands, for `…/grants/state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub seq: u64,
    pub received: usize,
    pub count: usize,
    /// The first missing part indexes (at most 20).
    pub missing: Vec<usize>,
}

/// Sets being received. At most one verified set (the newest manifest) and
/// [`MAX_UNVERIFIED_SETS`] sets of parts whose manifest has not arrived, within
/// [`MAX_UNVERIFIED_BYTES`]; sets older than [`SET_TTL`] are dropped.
///
/// INVARIANT: a part is kept in a verified set only when its SHA-256 is the manifest's hash at
/// its index; `Complete` carries exactly the concatenation of such parts, of the manifest's size
/// and whole-envelope hash.
#[derive(Debug, Default)]
pub struct Assembler {
    verified: Option<Set>,
    unverified: Vec<Set>,
    /// The manifest (hash) of the bundle in force, when it came in parts: its redelivered parts
    /// are duplicates.
    applied_manifest: Option<String>,
}

impl Assembler {
    /// Drops sets older than [`SET_TTL`]; returns the verified one dropped, if any.
    pub fn expire(&mut self, now: Instant) -> Option<Dropped> {
        self.unverified
            .retain(|s| now.saturating_duration_since(s.since) < SET_TTL);
        let stale = self
            .verified
            .as_ref()
            .is_some_and(|s| now.saturating_duration_since(s.since) >= SET_TTL);
        if stale {
            return self.drop_verified("not complete within 10 minutes");
        }
        None
    }

    fn drop_verified(&mut self, why: &'static str) -> Option<Dropped> {
        let s = self.verified.take()?;
        Some(Dropped {
            seq: s.seq,
            received: s.parts.len(),
            count: s.manifest.as_ref().map_or(0, |m| m.parts.len()),
            why,
        })
    }

    /// The verified set being received.
    pub fn progress(&self) -> Option<Progress> {
        let s = self.verified.as_ref()?;
        let mut missing = s.missing();
        missing.truncate(20);
        Some(Progress {
            seq: s.seq,
            received: s.parts.len(),
            count: s.manifest.as_ref().map_or(0, |m| m.parts.len()),
            missing,
        })
    }

    /// Is `manifest_sha` the manifest of the bundle in force?
    pub fn is_applied(&self, manifest_sha: &str) -> bool {
        self.applied_manifest.as_deref() == Some(manifest_sha)
    }

    /// Records that the set of `manifest_sha` is the bundle in force (applied or a duplicate):
    /// forgets every set of that seq or older.
    pub fn applied(&mut self, manifest_sha: &str, seq: u64) {
        self.applied_manifest = Some(manifest_sha.to_string());
        if self.verified.as_ref().is_some_and(|s| s.seq <= seq) {
            self.verified = None;
        }
        self.unverified.retain(|s| s.seq > seq);
    }

    /// A new bundle in force that did not come in parts.
    pub fn bundle_applied(&mut self, seq: u64) {
        self.applied_manifest = None;
        if self.verified.as_ref().is_some_and(|s| s.seq <= seq) {
            self.verified = None;
        }
        self.unverified.retain(|s| s.seq > seq);
    }

    /// Takes a verified manifest of a seq above the bundle in force (the engine checked that).
    /// Adopts the parts that came before it (those that do not match are returned as
    /// rejections); a verified set of an older or other manifest is dropped (returned).
    pub fn on_manifest(
        &mut self,
        vm: &VerifiedManifest,
        now: Instant,
    ) -> Result<(Step, Option<Dropped>, Vec<Rejection>), Rejection> {
        let m = &vm.manifest;
        let mut dropped = None;
        if let Some(cur) = &self.verified {
            if cur.manifest_sha == vm.sha256 {
                // The same manifest again (a redelivery): keep what arrived.
                return Ok((self.pending_step(), None, Vec::new()));
            }
            if cur.seq > m.seq {
                return reject(
                    Reason::Replay,
                    format!(
                        "manifest for seq {} is older than the set of seq {} being received",
                        m.seq, cur.seq
                    ),
                );
            }
            dropped = self.drop_verified("replaced by a newer manifest");
        }
        let mut set = Set::new(m.seq, vm.sha256.clone(), now);
        set.manifest = Some(m.clone());
        let mut refused = Vec::new();
        if let Some(pos) = self
            .unverified
            .iter()
            .position(|s| s.manifest_sha == vm.sha256)
        {
            let early = self.unverified.remove(pos);
            for (index, data) in early.parts {
                match check_against(m, index, &data) {
                    Ok(()) => {
                        set.bytes += data.len();
                        set.parts.insert(index, data);
                    }
                    Err(r) => refused.push(r),
                }
            }
        }
        // Parts of this seq naming another manifest belong to another bundle (mixed sets):
        // refused, one rejection per set. Parts of older seqs can never complete now: dropped.
        for other in self.unverified.iter().filter(|s| s.seq == m.seq) {
            refused.push(Rejection::new(
                Reason::PartMismatch,
                format!(
                    "{} parts of seq {} name another manifest than the one in force",
                    other.parts.len(),
                    m.seq
                ),
            ));
        }
        self.unverified.retain(|s| s.seq > m.seq);
        self.verified = Some(set);
        let step = self.complete_or_pending();
        Ok((step, dropped, refused))
    }

    /// Takes a part of a seq at or above the bundle in force whose manifest is not the applied
    /// one (the engine checked both).
    pub fn on_part(&mut self, p: Part, now: Instant) -> Result<Step, Rejection> {
        if let Some(set) = self.verified.as_mut() {
            if set.manifest_sha == p.manifest {
                let Some(m) = set.manifest.as_ref() else {
                    return reject(Reason::Storage, "verified set without its manifest");
                };
                check_against(m, p.index, &p.data)?;
                if !set.parts.contains_key(&p.index) {
                    set.bytes += p.data.len();
                    set.parts.insert(p.index, p.data);
                }
                return Ok(self.complete_or_pending());
            }
            if p.seq == set.seq {
                return reject(
                    Reason::PartMismatch,
                    format!(
                        "part {} names another manifest than the one in force for seq {}",
                        p.index, p.seq
                    ),
                );
            }
            if p.seq < set.seq {
                return reject(
                    Reason::Replay,
                    format!(
                        "part {} of seq {} is older than the set of seq {} being received",
                        p.index, p.seq, set.seq
                    ),
                );
            }
        }
        // No verified manifest for it yet: hold it, bounded.
        let held: usize = self.unverified.iter().map(|s| s.bytes).sum();
        let pos = match self
            .unverified
            .iter()
            .position(|s| s.manifest_sha == p.manifest)
        {
            Some(pos) => pos,
            None => {
                if self.unverified.len() >= MAX_UNVERIFIED_SETS {
                    self.unverified.remove(0);
                }
                self.unverified
                    .push(Set::new(p.seq, p.manifest.clone(), now));
                self.unverified.len() - 1
            }
        };
        let Some(set) = self.unverified.get_mut(pos) else {
            return reject(Reason::Storage, "lost a set being received");
        };
        if set.seq != p.seq {
            return reject(
                Reason::PartMismatch,
                format!(
                    "part {} names seq {} but its manifest's other parts seq {}",
                    p.index, p.seq, set.seq
                ),
            );
        }
        if !set.parts.contains_key(&p.index) {
            let total = self.unverified.iter().map(|s| s.bytes).sum::<usize>();
            if total.max(held) + p.data.len() > MAX_UNVERIFIED_BYTES {
                return reject(
                    Reason::TooLarge,
                    format!(
                        "parts waiting for their manifest would exceed {MAX_UNVERIFIED_BYTES} bytes"
                    ),
                );
            }
            if let Some(set) = self.unverified.get_mut(pos) {
                set.bytes += p.data.len();
                set.parts.insert(p.index, p.data);
            }
        }
        let received = self.unverified.get(pos).map_or(0, |s| s.parts.len());
        Ok(Step::Pending {
            seq: p.seq,
            received,
            count: None,
        })
    }

    fn pending_step(&self) -> Step {
        match &self.verified {
            Some(s) => Step::Pending {
                seq: s.seq,
                received: s.parts.len(),
                count: s.manifest.as_ref().map(|m| m.parts.len()),
            },
            None => Step::Pending {
                seq: 0,
                received: 0,
                count: None,
            },
        }
    }

    /// Hands out the whole envelope when every part of the verified set is in.
    fn complete_or_pending(&mut self) -> Step {
        let done = self.verified.as_ref().is_some_and(|s| {
            s.manifest
                .as_ref()
                .is_some_and(|m| s.parts.len() == m.parts.len())
        });
        if !done {
            return self.pending_step();
        }
        let Some(set) = self.verified.take() else {
            return self.pending_step();
        };
        let Some(manifest) = set.manifest else {
            return self.pending_step();
        };
        let mut bytes = Vec::with_capacity(set.bytes);
        for data in set.parts.into_values() {
            bytes.extend_from_slice(&data);
        }
        Step::Complete { manifest, bytes }
    }
}

/// Checks one part's data against the verified manifest.
fn check_against(m: &Manifest, index: usize, data: &[u8]) -> Result<(), Rejection> {
    let Some(want) = m.parts.get(index) else {
        return reject(
            Reason::PartMismatch,
            format!(
                "part {index} is beyond the {} parts of the manifest for seq {}",
                m.parts.len(),
                m.seq
            ),
        );
    };
    if crate::util::sha256_hex(data) != *want {
        return reject(
            Reason::PartMismatch,
            format!(
                "part {index} does not match the manifest for seq {} (SHA-256 differs)",
                m.seq
            ),
        );
    }
    Ok(())
}

/// Checks the reassembled bytes against the manifest's size and whole-envelope hash.
pub fn check_whole(m: &Manifest, bytes: &[u8]) -> Result<(), Rejection> {
    if bytes.len() != m.size || crate::util::sha256_hex(bytes) != m.sha256 {
        return reject(
            Reason::PartMismatch,
            format!(
                "the parts of seq {} make {} bytes that do not match the manifest's size and SHA-256",
                m.seq,
                bytes.len()
            ),
        );
    }
    Ok(())
}

/// The fixed bytes of a part message around its data, for the largest index of a set.
fn part_overhead(site: &str, seq: u64, count: usize) -> usize {
    let w = PartWire {
        v: 1,
        kind: "part".into(),
        site: site.into(),
        seq,
        manifest: "0".repeat(64),
        index: count,
        data: String::new(),
    };
    serde_json::to_vec(&w).map_or(usize::MAX, |v| v.len())
}

/// Largest data chunk whose base64url (no padding) fits in `room` characters.
fn chunk_for(room: usize) -> usize {
    // base64url without padding of n bytes is ceil(4n/3) characters.
    room / 4 * 3 + (room % 4).saturating_sub(1)
}

/// The pieces `sitegate fleet` publishes for one bundle envelope.
#[derive(Debug, Clone)]
pub struct Split {
    /// The manifest payload (compact JSON, exactly as signed).
    pub manifest_payload: Vec<u8>,
    /// SHA-256 (hex) of `manifest_payload`: the id every part names.
    pub manifest_sha256: String,
    /// The part messages, in order (each at most the maximum message size).
    pub parts: Vec<Vec<u8>>,
}

/// Cuts a bundle envelope into parts of at most `max_message` bytes each (the part message, JSON
/// and base64url included). `site`, `seq` and `payload_sha256` come from the bundle itself (the
/// caller signed or checked it).
pub fn split(
    envelope: &[u8],
    site: &str,
    seq: u64,
    payload_sha256: &str,
    max_message: usize,
) -> Result<Split, String> {
    if max_message < MIN_MESSAGE_SIZE {
        return Err(format!(
            "a maximum message size below {MIN_MESSAGE_SIZE} bytes is not supported"
        ));
    }
    if envelope.is_empty() || envelope.len() > MAX_ENVELOPE_BYTES {
        return Err(format!(
            "the envelope is {} bytes (1..={MAX_ENVELOPE_BYTES} allowed)",
            envelope.len()
        ));
    }
    let max_message = max_message.min(MAX_PART_MESSAGE);
    // The overhead grows with the digits of the index: size it for the most parts possible.
    let overhead = part_overhead(site, seq, MAX_PARTS);
    let chunk = chunk_for(max_message.saturating_sub(overhead));
    if chunk == 0 {
        return Err("the maximum message size leaves no room for data".into());
    }
    let chunks: Vec<&[u8]> = envelope.chunks(chunk).collect();
    if chunks.len() > MAX_PARTS {
        return Err(format!(
            "{} parts would be needed; at most {MAX_PARTS} are allowed (raise --max-message-size)",
            chunks.len()
        ));
    }
    let manifest = Manifest {
        site: site.to_string(),
        seq,
        payload_sha256: payload_sha256.to_string(),
        sha256: crate::util::sha256_hex(envelope),
        size: envelope.len(),
        parts: chunks.iter().map(|c| crate::util::sha256_hex(c)).collect(),
    };
    let manifest_payload =
        serde_json::to_vec(&manifest).map_err(|e| format!("cannot serialize: {e}"))?;
    let manifest_sha256 = crate::util::sha256_hex(&manifest_payload);
    let mut parts = Vec::with_capacity(chunks.len());
    for (index, c) in chunks.iter().enumerate() {
        let w = PartWire {
            v: 1,
            kind: "part".into(),
            site: site.to_string(),
            seq,
            manifest: manifest_sha256.clone(),
            index,
            data: crate::util_b64::encode(c),
        };
        let bytes = serde_json::to_vec(&w).map_err(|e| format!("cannot serialize: {e}"))?;
        if bytes.len() > max_message {
            return Err(format!(
                "part {index} is {} bytes, above the maximum {max_message}",
                bytes.len()
            ));
        }
        parts.push(bytes);
    }
    Ok(Split {
        manifest_payload,
        manifest_sha256,
        parts,
    })
}

/// Parses a size such as `131072`, `128KiB`, `128K`, `1MiB`, `256KB` (KB = 1000).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("`{}` is not a size", short(s)))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1024,
        "kb" => 1000,
        "m" | "mib" => 1024 * 1024,
        "mb" => 1_000_000,
        _ => return Err(format!("`{}` has an unknown unit", short(s))),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{}` is too large", short(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(split: &Split) -> VerifiedManifest {
        let manifest: Manifest = serde_json::from_slice(&split.manifest_payload).unwrap();
        let site = check_manifest(&manifest).unwrap();
        VerifiedManifest {
            manifest,
            site,
            sha256: split.manifest_sha256.clone(),
        }
    }

    fn envelope(n: usize) -> Vec<u8> {
        (0..n).map(|i| b'a' + (i % 26) as u8).collect()
    }

    #[test]
    fn every_part_fits_the_limit_and_the_parts_make_the_envelope_again() {
        let env = envelope(300_000);
        let s = split(&env, "s-1", 7, &"0".repeat(64), 16 * 1024).unwrap();
        assert!(s.parts.iter().all(|p| p.len() <= 16 * 1024));
        let mut a = Assembler::default();
        let now = Instant::now();
        let (step, dropped, refused) = a.on_manifest(&vm(&s), now).unwrap();
        assert!(matches!(step, Step::Pending { count: Some(_), .. }));
        assert!(dropped.is_none() && refused.is_empty());
        let mut last = None;
        for p in s.parts.iter().rev() {
            last = Some(a.on_part(parse_part(p).unwrap(), now).unwrap());
        }
        match last.unwrap() {
            Step::Complete { bytes, manifest } => {
                assert_eq!(bytes, env);
                check_whole(&manifest, &bytes).unwrap();
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parts_before_their_manifest_are_held_and_a_tampered_one_is_refused() {
        let env = envelope(50_000);
        let s = split(&env, "s-1", 3, &"0".repeat(64), 8 * 1024).unwrap();
        let mut a = Assembler::default();
        let now = Instant::now();
        let mut bad = parse_part(&s.parts[1]).unwrap();
        bad.data[0] ^= 1;
        for (i, p) in s.parts.iter().enumerate() {
            let p = if i == 1 {
                bad.clone()
            } else {
                parse_part(p).unwrap()
            };
            assert!(matches!(
                a.on_part(p, now).unwrap(),
                Step::Pending { count: None, .. }
            ));
        }
        let (step, _, refused) = a.on_manifest(&vm(&s), now).unwrap();
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].reason, Reason::PartMismatch);
        assert_eq!(a.progress().unwrap().missing, vec![1]);
        assert!(matches!(step, Step::Pending { .. }));
        assert_eq!(
            a.on_part(bad, now).unwrap_err().reason,
            Reason::PartMismatch
        );
        match a.on_part(parse_part(&s.parts[1]).unwrap(), now).unwrap() {
            Step::Complete { bytes, .. } => assert_eq!(bytes, env),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_part_of_another_manifest_for_the_same_seq_is_refused_and_stale_sets_are_dropped() {
        let one = split(&envelope(20_000), "s-1", 5, &"0".repeat(64), 8 * 1024).unwrap();
        let two = split(&envelope(20_001), "s-1", 5, &"0".repeat(64), 8 * 1024).unwrap();
        let mut a = Assembler::default();
        let now = Instant::now();
        a.on_manifest(&vm(&one), now).unwrap();
        let e = a
            .on_part(parse_part(&two.parts[0]).unwrap(), now)
            .unwrap_err();
        assert_eq!(e.reason, Reason::PartMismatch);
        let older = split(&envelope(20_000), "s-1", 4, &"0".repeat(64), 8 * 1024).unwrap();
        let e = a
            .on_part(parse_part(&older.parts[0]).unwrap(), now)
            .unwrap_err();
        assert_eq!(e.reason, Reason::Replay);
        assert_eq!(a.expire(now + Duration::from_secs(1)), None);
        let d = a.expire(now + SET_TTL).unwrap();
        assert_eq!((d.seq, d.received), (5, 0));
        assert_eq!(d.rejection().reason, Reason::Incomplete);
        assert!(a.progress().is_none());
    }

    #[test]
    fn unverified_parts_are_bounded() {
        let mut a = Assembler::default();
        let now = Instant::now();
        let big = split(
            &envelope(MAX_ENVELOPE_BYTES),
            "s-1",
            9,
            &"0".repeat(64),
            512 * 1024,
        )
        .unwrap();
        let other = split(
            &envelope(MAX_ENVELOPE_BYTES - 1),
            "s-1",
            10,
            &"0".repeat(64),
            512 * 1024,
        )
        .unwrap();
        for p in &big.parts {
            a.on_part(parse_part(p).unwrap(), now).unwrap();
        }
        let e = a
            .on_part(parse_part(&other.parts[0]).unwrap(), now)
            .unwrap_err();
        assert_eq!(e.reason, Reason::TooLarge);
        assert!(a.unverified.iter().map(|s| s.bytes).sum::<usize>() <= MAX_UNVERIFIED_BYTES);
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("128KiB").unwrap(), 131_072);
        assert_eq!(parse_size("256KB").unwrap(), 256_000);
        assert_eq!(parse_size("1MiB").unwrap(), 1_048_576);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12 parsecs").is_err());
        assert_eq!(chunk_for(4), 3);
        assert_eq!(chunk_for(3), 2);
        assert_eq!(chunk_for(2), 1);
    }
}
