//! Small shared helpers: randomness, hashing, hex, file permissions.

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use ring::rand::{SecureRandom, SystemRandom};

/// The process-wide CSPRNG, created once (ring recommends one `SystemRandom` per process).
pub fn rng() -> &'static SystemRandom {
    static RNG: OnceLock<SystemRandom> = OnceLock::new();
    RNG.get_or_init(SystemRandom::new)
}

/// Fills `buf` with random bytes. ring's `SystemRandom` reads the kernel's getrandom and only
/// fails if the kernel has no entropy source at all, in which case nothing secure can run.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    if rng().fill(&mut buf).is_err() {
        // No entropy source: refuse to continue rather than use predictable bytes.
        tracing::error!("the kernel random source failed; exiting");
        std::process::exit(70);
    }
    buf
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut v = vec![0u8; n];
    if rng().fill(&mut v).is_err() {
        tracing::error!("the kernel random source failed; exiting");
        std::process::exit(70);
    }
    hex::encode(v)
}

/// SHA-256 of `data` as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// Writes `data` to `path` atomically (temp file + rename) with mode 0600, for secrets.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Writes `data` to `path` atomically (temp file + rename) with mode 0644.
pub fn write_public(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}
