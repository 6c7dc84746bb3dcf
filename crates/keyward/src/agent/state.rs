//! The agent's state folder: its credential for a server, in a file only
//! its user can read (mode 0600, folder 0700). The credential is the only
//! secret the agent keeps; the server holds only its HMAC.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct Credential {
    pub server: String,
    pub agent_id: String,
    pub credential: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("server", &self.server)
            .field("agent_id", &self.agent_id)
            .finish_non_exhaustive()
    }
}

/// `$XDG_CONFIG_HOME/keyward/agent`, else `~/.config/keyward/agent`.
pub fn default_state_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("keyward").join("agent")
}

/// One credential file per server: `credential-<host_port>.json`.
pub fn credential_path(dir: &Path, server: &str) -> PathBuf {
    let host: String = server
        .trim_end_matches('/')
        .rsplit("://")
        .next()
        .unwrap_or(server)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    dir.join(format!("credential-{host}.json"))
}

pub fn load(path: &Path) -> anyhow::Result<Option<Credential>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("{}: not an agent credential file", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the credential with mode 0600 (replacing any earlier file).
pub fn save(path: &Path, c: &Credential) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(c)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub fn forget(path: &Path) {
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("agent");
        let path = credential_path(&state, "http://127.0.0.1:8080/");
        assert!(path.ends_with("credential-127_0_0_1_8080.json"));
        let c = Credential {
            server: "http://127.0.0.1:8080".into(),
            agent_id: "a".into(),
            credential: "kwa_secret".into(),
        };
        save(&path, &c).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        assert_eq!(load(&path).unwrap().unwrap().credential, "kwa_secret");
        assert!(!format!("{c:?}").contains("secret"));
    }
}
