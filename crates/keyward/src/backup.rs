//! `keyward backup` and `keyward restore`: a SQLite data folder and its KEK
//! in one file, on the server's host (never through the API: the KEK must
//! not cross HTTP).
//!
//! The backup is a tar archive encrypted with age under a passphrase
//! (scrypt; `KEYWARD_BACKUP_PASSPHRASE`, else asked twice on the terminal,
//! never a flag), holding:
//!
//! * `keyward.db`: a consistent copy taken while the server runs (`VACUUM
//!   INTO`: one read transaction, writers go on);
//! * `kek`: the key-encryption key (the data folder's file, or `KEYWARD_KEK`);
//! * the audit signing key and its public key, when in the data folder;
//! * `backup.json`: when it was taken, the release, the store's audit head.
//!
//! `restore` writes them into an empty data folder and says what a restore
//! cannot bring back: revocations made after the backup (the restored
//! server's CRL numbers stay above every published one: they are at least
//! the time in seconds).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use serde::{Deserialize, Serialize};

/// The files a backup may hold (a restore writes no other name).
const DB: &str = "keyward.db";
const KEK: &str = "kek";
const SIGNING_KEY: &str = "audit-signing-key.pem";
const SIGNING_KEY_PUB: &str = "audit-signing-key.pem.pub";
const MANIFEST: &str = "backup.json";

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The server's data folder (its SQLite store and KEK).
    #[arg(long, env = "KEYWARD_DATA_DIR", default_value = "./keyward-data")]
    pub data_dir: PathBuf,
    /// The backup file to write (refused if it exists).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup file.
    pub file: PathBuf,
    /// The data folder to restore into (empty, or absent).
    #[arg(long)]
    pub data_dir: PathBuf,
}

/// What a backup says of itself.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    #[serde(with = "time::serde::rfc3339")]
    taken_at: time::OffsetDateTime,
    release: String,
    /// Records in the audit trail, and the head's MAC (hex), at the backup.
    audit_records: i64,
    audit_head: String,
}

fn passphrase(confirm: bool) -> anyhow::Result<age::secrecy::SecretString> {
    if let Ok(p) = std::env::var("KEYWARD_BACKUP_PASSPHRASE") {
        if p.is_empty() {
            bail!("KEYWARD_BACKUP_PASSPHRASE is empty");
        }
        return Ok(p.into());
    }
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        bail!("no passphrase: set KEYWARD_BACKUP_PASSPHRASE or run on a terminal");
    }
    let p = rpassword::prompt_password("backup passphrase: ")?;
    if confirm && rpassword::prompt_password("backup passphrase again: ")? != p {
        bail!("the two passphrases differ");
    }
    if p.chars().count() < 12 {
        bail!("a backup passphrase has at least 12 characters");
    }
    Ok(p.into())
}

pub fn backup(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let db = args.data_dir.join(DB);
    if !db.exists() {
        bail!(
            "{} holds no SQLite store ({DB}); for PostgreSQL see docs/operations.md (pg_dump)",
            args.data_dir.display()
        );
    }
    if args.out.exists() {
        bail!("{} exists: choose another file", args.out.display());
    }
    let kek = match std::env::var("KEYWARD_KEK") {
        Ok(k) if !k.is_empty() => k,
        _ => std::fs::read_to_string(args.data_dir.join(KEK))
            .with_context(|| format!("reading the KEK in {}", args.data_dir.display()))?,
    };
    // Checked now: a backup with a KEK that opens nothing is no backup.
    keyward_server::secrets::Kek::from_base64(&kek)?;
    let pass = passphrase(true)?;

    let work = tempfile::tempdir()?;
    let copy = work.path().join(DB);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (audit_records, audit_head) = runtime.block_on(async {
        keyward_store::snapshot_sqlite(&db, &copy).await?;
        keyward_store::audit_head_of_sqlite(&copy).await
    })?;
    let manifest = Manifest {
        taken_at: time::OffsetDateTime::now_utc(),
        release: env!("CARGO_PKG_VERSION").into(),
        audit_records,
        audit_head,
    };

    let mut archive = tar::Builder::new(Vec::new());
    let mut add = |name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(manifest.taken_at.unix_timestamp().max(0) as u64);
        header.set_cksum();
        archive.append_data(&mut header, name, bytes)
    };
    add(MANIFEST, &serde_json::to_vec_pretty(&manifest)?)?;
    add(KEK, kek.trim().as_bytes())?;
    add(DB, &std::fs::read(&copy)?)?;
    for name in [SIGNING_KEY, SIGNING_KEY_PUB] {
        if let Ok(bytes) = std::fs::read(args.data_dir.join(name)) {
            add(name, &bytes)?;
        }
    }
    let tar = archive.into_inner()?;

    let mut out = create_private(&args.out)?;
    let mut writer = age::Encryptor::with_user_passphrase(pass)
        .wrap_output(&mut out)
        .context("encrypting the backup")?;
    writer.write_all(&tar)?;
    writer.finish()?;
    out.sync_all()?;
    eprintln!(
        "backup of {} written to {} ({} audit records, taken {})",
        args.data_dir.display(),
        args.out.display(),
        manifest.audit_records,
        manifest.taken_at
    );
    Ok(ExitCode::SUCCESS)
}

pub fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    if args.data_dir.exists() && std::fs::read_dir(&args.data_dir)?.next().is_some() {
        bail!(
            "{} is not empty: restore into an empty data folder (and point the server at it)",
            args.data_dir.display()
        );
    }
    let pass = passphrase(false)?;
    let encrypted = std::fs::File::open(&args.file)
        .with_context(|| format!("opening {}", args.file.display()))?;
    let decryptor = age::Decryptor::new(std::io::BufReader::new(encrypted))
        .context("not a Keyward backup (age)")?;
    let identity = age::scrypt::Identity::new(pass);
    let mut reader = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .context("the passphrase does not open this backup")?;
    let mut tar = Vec::new();
    reader.read_to_end(&mut tar)?;

    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in tar::Archive::new(&tar[..]).entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        if ![DB, KEK, SIGNING_KEY, SIGNING_KEY_PUB, MANIFEST].contains(&name.as_str()) {
            bail!("the backup holds an unexpected file '{name}': not restored");
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        files.push((name, bytes));
    }
    let get = |name: &str| files.iter().find(|(n, _)| n == name).map(|(_, b)| b);
    let manifest: Manifest = serde_json::from_slice(get(MANIFEST).context("no manifest")?)?;
    let (Some(_), Some(_)) = (get(DB), get(KEK)) else {
        bail!("the backup lacks the store or the KEK");
    };
    std::fs::create_dir_all(&args.data_dir)?;
    for (name, bytes) in &files {
        if name == MANIFEST {
            continue;
        }
        let mut f = create_private(&args.data_dir.join(name))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    println!(
        "restored into {}: the store as it was at {} ({} audit records, release {})",
        args.data_dir.display(),
        manifest.taken_at,
        manifest.audit_records,
        manifest.release
    );
    println!(
        "WARNING: revocations, holds and passkey deletions made after {} are not in this store.",
        manifest.taken_at
    );
    println!(
        "  Check them before relying on it: the audit checkpoints the server logged after that time"
    );
    println!(
        "  (audit-checkpoints.jsonl, 'audit signed checkpoint' lines) count the records since; revoke again"
    );
    println!(
        "  what was revoked after the backup. CRL numbers stay above every one published (at least the time in seconds)."
    );
    Ok(ExitCode::SUCCESS)
}

/// A new file only the owner reads (a backup holds the KEK).
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}
