//! Signed checkpoints of the audit trail's unkeyed hash chain
//! (`keyward_domain::audit::chain_hash`). The MAC chain's key comes from
//! the KEK: whoever holds the KEK could rewrite history and every MAC, and
//! nobody without it can check them. So every `audit_checkpoint_seconds`
//! the server folds the records written since its last checkpoint into the
//! hash chain, signs the head with an ECDSA P-256 key of its own (a file
//! apart from the KEK, never derived from it), appends the checkpoint to a
//! file (one JSON line each) and writes it to the log. `keyward admin audit
//! verify --checkpoints FILE --public-key PEM` recomputes the chain from
//! the records and checks every checkpoint with the public key alone.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use keyward_domain::audit::{chain_hash, AuditEvent, Checkpoint};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{DerSignature, SigningKey, VerifyingKey};
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};

use crate::app::AppState;

/// The server's checkpoint signer.
pub struct Signer {
    key: SigningKey,
    /// The public key (PEM), for verifiers to pin.
    pub public_pem: String,
}

impl Signer {
    /// Reads the signing key at `path`, or creates it (mode 0600) with its
    /// public key beside it (`<path>.pub`).
    pub fn load_or_create(path: &Path) -> anyhow::Result<Signer> {
        let key = match std::fs::read_to_string(path) {
            Ok(pem) => SigningKey::from_pkcs8_pem(&pem)
                .map_err(|e| anyhow::anyhow!("audit signing key {}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::random(&mut rand::rngs::OsRng);
                let pem = key
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|e| anyhow::anyhow!("encoding the audit signing key: {e}"))?;
                write_private(path, pem.as_bytes())?;
                key
            }
            Err(e) => anyhow::bail!("audit signing key {}: {e}", path.display()),
        };
        let public_pem = VerifyingKey::from(&key)
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("encoding the audit public key: {e}"))?;
        let public_path = public_key_path(path);
        if std::fs::read_to_string(&public_path).ok().as_deref() != Some(public_pem.as_str()) {
            std::fs::write(&public_path, &public_pem)
                .map_err(|e| anyhow::anyhow!("{}: {e}", public_path.display()))?;
        }
        Ok(Signer { key, public_pem })
    }

    pub fn sign(&self, seq: i64, hash: &[u8; 32], at: time::OffsetDateTime) -> Checkpoint {
        let hash = hex::encode(hash);
        let sig: DerSignature = self.key.sign(&Checkpoint::message(seq, &hash, at));
        Checkpoint {
            seq,
            hash,
            at,
            signature: B64.encode(sig.as_bytes()),
        }
    }
}

/// Where the public key of the signing key at `path` is written.
pub fn public_key_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// Whether `c` is signed by `key`.
pub fn signed_by(key: &VerifyingKey, c: &Checkpoint) -> bool {
    let Ok(der) = B64.decode(&c.signature) else {
        return false;
    };
    let Ok(sig) = p256::ecdsa::Signature::from_der(&der) else {
        return false;
    };
    key.verify(&Checkpoint::message(c.seq, &c.hash, c.at), &sig)
        .is_ok()
}

/// The checkpoints of a file (one JSON object per line; blank lines skipped).
pub fn read_checkpoints(text: &str) -> Result<Vec<Checkpoint>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// What checking checkpoints against the records found.
#[derive(Debug, Default)]
pub struct Verified {
    /// Checkpoints whose signature and hash hold.
    pub good: Vec<i64>,
    /// What failed, each naming its checkpoint.
    pub problems: Vec<String>,
}

/// Checks each checkpoint: signed by `public_pem`, and the hash chain
/// recomputed from `records` (in order, from seq 1) has its hash at its seq.
pub fn verify(records: &[AuditEvent], checkpoints: &[Checkpoint], public_pem: &str) -> Verified {
    let mut out = Verified::default();
    let key = match VerifyingKey::from_public_key_pem(public_pem) {
        Ok(k) => k,
        Err(e) => {
            out.problems
                .push(format!("the public key is unreadable: {e}"));
            return out;
        }
    };
    let mut heads = Vec::with_capacity(records.len());
    let mut hash = [0u8; 32];
    for (i, r) in records.iter().enumerate() {
        if r.seq != i as i64 + 1 {
            out.problems.push(format!(
                "record {} is missing (the trail jumps to {})",
                i + 1,
                r.seq
            ));
            return out;
        }
        hash = chain_hash(&hash, r);
        heads.push(hash);
    }
    for c in checkpoints {
        if !signed_by(&key, c) {
            out.problems.push(format!(
                "checkpoint at record {} ({}): the signature does not verify with this public key",
                c.seq, c.at
            ));
            continue;
        }
        match usize::try_from(c.seq - 1).ok().and_then(|i| heads.get(i)) {
            _ if c.seq == 0 => out.good.push(0),
            None => out.problems.push(format!(
                "checkpoint at record {} ({}): the trail has only {} record(s): records were removed",
                c.seq,
                c.at,
                records.len()
            )),
            Some(h) if hex::encode(h) != c.hash => out.problems.push(format!(
                "checkpoint at record {} ({}): records 1 to {} changed since it was signed",
                c.seq, c.at, c.seq
            )),
            Some(_) => out.good.push(c.seq),
        }
    }
    out
}

/// Every `every_seconds`: the MAC chain's head in the log (as before), and
/// a signed checkpoint of the hash chain when records were added, appended
/// to `file` and logged. Resumes from the file's last checkpoint of this key.
pub fn spawn(state: AppState, signer: Signer, file: PathBuf, every_seconds: u64) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(every_seconds.max(1)));
        let key = VerifyingKey::from(&signer.key);
        let (mut seq, mut hash) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| read_checkpoints(&t).ok())
            .and_then(|cs| cs.into_iter().rev().find(|c| signed_by(&key, c)))
            .and_then(|c| {
                let h: [u8; 32] = hex::decode(&c.hash).ok()?.try_into().ok()?;
                Some((c.seq, h))
            })
            .unwrap_or((0, [0; 32]));
        let mut last_mac = None;
        loop {
            tick.tick().await;
            match state.store.audit_head().await {
                Ok(head) if last_mac.as_ref() != Some(&head) => {
                    tracing::info!(
                        audit_records = head.count,
                        audit_head_mac = %hex::encode(&head.last_mac),
                        "audit checkpoint"
                    );
                    last_mac = Some(head);
                }
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "audit checkpoint failed");
                    continue;
                }
            }
            let before = seq;
            loop {
                match state.store.list_audit(seq, 1000).await {
                    Ok(batch) if batch.is_empty() => break,
                    Ok(batch) => {
                        for e in &batch {
                            hash = chain_hash(&hash, e);
                            seq = e.seq;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the audit trail for a checkpoint failed");
                        break;
                    }
                }
            }
            if seq == before {
                continue;
            }
            let c = signer.sign(seq, &hash, time::OffsetDateTime::now_utc());
            let line = serde_json::to_string(&c).expect("a checkpoint serialises");
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file)
                .and_then(|mut f| writeln!(f, "{line}"));
            if let Err(e) = written {
                tracing::warn!(error = %e, file = %file.display(), "writing the audit checkpoint failed");
            }
            tracing::info!(seq = c.seq, hash = %c.hash, signature = %c.signature, "audit signed checkpoint");
        }
    });
}
