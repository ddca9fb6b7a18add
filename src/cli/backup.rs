//! `sitegate backup --to FILE` and `sitegate restore --from FILE`: one tar archive (mode 0600)
//! holding the config, a consistent copy of the database (SQLite's online backup API, so a
//! running daemon's database is copied as of one transaction), the device key and the
//! self-made TLS certificate and key. Restore writes them back with the modes the daemon uses
//! (state dir 0700; database and keys 0600) and refuses to overwrite a state dir that already
//! holds a database unless `--force`.

use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::shared::DEFAULT_CONFIG;

const A_CONFIG: &str = "sitegate.toml";
const A_DB: &str = "state/sitegate.db";
const A_DEVICE_KEY: &str = "state/device.pk8";
const A_CERT: &str = "state/tls/cert.pem";
const A_KEY: &str = "state/tls/key.pem";

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The archive to write (mode 0600; it holds private keys).
    #[arg(long)]
    pub to: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Where to write the restored config.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The archive made by `sitegate backup`.
    #[arg(long)]
    pub from: PathBuf,
    /// Replace an existing database in the state dir.
    #[arg(long)]
    pub force: bool,
}

/// `sitegate backup`; returns the exit code.
pub fn run_backup(args: &BackupArgs) -> i32 {
    match backup(&args.config, &args.to) {
        Ok(n) => {
            println!("wrote `{}` ({n} files, mode 0600)", args.to.display());
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// `sitegate restore`; returns the exit code.
pub fn run_restore(args: &RestoreArgs) -> i32 {
    match restore(&args.from, &args.config, args.force) {
        Ok(state) => {
            println!(
                "restored `{}` and the state dir `{}`",
                args.config.display(),
                state.display()
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn backup(config: &Path, to: &Path) -> anyhow::Result<usize> {
    use anyhow::Context;
    let cfg = crate::config_load::load(config)
        .map_err(|t| anyhow::anyhow!("the config is not valid:\n{t}"))?;
    let state = &cfg.state_dir;
    let db = state.join(crate::store::DB_FILE);
    anyhow::ensure!(db.exists(), "no database at `{}`", db.display());
    // The database copy is made next to the archive (mode 0600), archived, then removed.
    let copy = to.with_extension("db-copy");
    let _ = std::fs::remove_file(&copy);
    let _guard = Remove(copy.clone());
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&copy)
        .context("cannot create the database copy")?;
    let src =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("cannot open `{}`", db.display()))?;
    src.busy_timeout(std::time::Duration::from_secs(5))?;
    src.backup(rusqlite::MAIN_DB, &copy, None)
        .context("the SQLite online backup failed")?;
    drop(src);

    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(to)
        .with_context(|| format!("cannot write `{}`", to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600))?;
    let mut tar = tar::Builder::new(file);
    let mut n = 0;
    let source = cfg.source.clone().unwrap_or_else(|| config.to_path_buf());
    let mut add = |path: &Path, name: &str, required: bool| -> anyhow::Result<()> {
        if !path.exists() && !required {
            return Ok(());
        }
        let mut f = std::fs::File::open(path)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        tar.append_file(name, &mut f)
            .with_context(|| format!("cannot archive `{}`", path.display()))?;
        n += 1;
        Ok(())
    };
    add(&source, A_CONFIG, true)?;
    add(&copy, A_DB, true)?;
    add(
        &state.join(crate::delegation::DEVICE_KEY_FILE),
        A_DEVICE_KEY,
        false,
    )?;
    let tls = state.join(crate::tls::TLS_DIR);
    add(&tls.join(crate::tls::CERT_FILE), A_CERT, false)?;
    add(&tls.join(crate::tls::KEY_FILE), A_KEY, false)?;
    tar.into_inner()?.sync_all()?;
    Ok(n)
}

fn restore(from: &Path, config: &Path, force: bool) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    let file =
        std::fs::File::open(from).with_context(|| format!("cannot read `{}`", from.display()))?;
    let mut archive = tar::Archive::new(file);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        anyhow::ensure!(
            [A_CONFIG, A_DB, A_DEVICE_KEY, A_CERT, A_KEY].contains(&name.as_str()),
            "unexpected entry `{name}` in the archive; not a sitegate backup"
        );
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        files.push((name, data));
    }
    let get = |n: &str| {
        files
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_slice())
    };
    let cfg_text = get(A_CONFIG).context("the archive has no config")?;
    let db = get(A_DB).context("the archive has no database")?;

    // Validate the config before writing anything.
    if let Some(dir) = config.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let probe = config.with_extension("restore-check");
    let _guard = Remove(probe.clone());
    write_mode(&probe, cfg_text, 0o600)?;
    let cfg = crate::config_load::load(&probe)
        .map_err(|t| anyhow::anyhow!("the archived config is not valid:\n{t}"))?;
    let state = cfg.state_dir.clone();
    let db_path = state.join(crate::store::DB_FILE);
    anyhow::ensure!(
        force || !db_path.exists(),
        "`{}` exists; stop the service and pass --force to replace it",
        db_path.display()
    );

    write_mode(config, cfg_text, 0o640)?;
    std::fs::create_dir_all(&state)?;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700))?;
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(state.join(format!("{}{suffix}", crate::store::DB_FILE)));
    }
    write_mode(&db_path, db, 0o600)?;
    if let Some(k) = get(A_DEVICE_KEY) {
        write_mode(&state.join(crate::delegation::DEVICE_KEY_FILE), k, 0o600)?;
    }
    let tls = state.join(crate::tls::TLS_DIR);
    if get(A_CERT).is_some() || get(A_KEY).is_some() {
        std::fs::create_dir_all(&tls)?;
        std::fs::set_permissions(&tls, std::fs::Permissions::from_mode(0o700))?;
    }
    if let Some(k) = get(A_KEY) {
        write_mode(&tls.join(crate::tls::KEY_FILE), k, 0o600)?;
    }
    if let Some(c) = get(A_CERT) {
        write_mode(&tls.join(crate::tls::CERT_FILE), c, 0o644)?;
    }
    Ok(state)
}

/// Writes `data` atomically (temp file + rename) with `mode`.
fn write_mode(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("restore-tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Removes a temporary file when dropped.
struct Remove(PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
