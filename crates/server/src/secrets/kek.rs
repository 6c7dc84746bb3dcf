//! The key-encryption key: created at first start in the data folder (mode
//! 0600) or given by configuration (so several server nodes can share it).

use std::fs;
use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Name of the KEK file inside the data folder.
pub const KEK_FILE: &str = "kek";

/// 256-bit key-encryption key. Never printed: `Debug` is redacted.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Kek([u8; 32]);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

/// Where the KEK came from, for `--print-config` and the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KekSource {
    Configured,
    CreatedFile(String),
    LoadedFile(String),
}

impl Kek {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Kek(bytes)
    }

    /// Parses a base64 (standard alphabet) encoding of 32 bytes, as given in
    /// the configuration file or `KEYWARD_KEK`.
    pub fn from_base64(text: &str) -> anyhow::Result<Self> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|_| anyhow::anyhow!("kek: not valid base64"))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("kek: must decode to exactly 32 bytes"))?;
        Ok(Kek(arr))
    }

    /// Loads `<data_dir>/kek`, creating it (0600, exclusive create so two
    /// processes starting together cannot both write one) if absent.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<(Self, KekSource)> {
        fs::create_dir_all(data_dir)?;
        let path = data_dir.join(KEK_FILE);
        let shown = path.display().to_string();
        if let Ok(text) = fs::read_to_string(&path) {
            return Ok((Self::from_base64(&text)?, KekSource::LoadedFile(shown)));
        }
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        let mut encoded = B64.encode(key);
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        match opts.open(&path) {
            Ok(mut file) => {
                file.write_all(encoded.as_bytes())?;
                file.sync_all()?;
                encoded.zeroize();
                Ok((Kek(key), KekSource::CreatedFile(shown)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                key.zeroize();
                let text = fs::read_to_string(&path)?;
                Ok((Self::from_base64(&text)?, KekSource::LoadedFile(shown)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A sub-key for one purpose (HKDF-SHA-256, the purpose as `info`), so
    /// the KEK itself is only ever used to derive.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(Some(b"keyward-kek-v1"), &self.0);
        let mut out = [0u8; 32];
        hk.expand(purpose.as_bytes(), &mut out)
            .expect("32 bytes is a valid HKDF-SHA-256 output length");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_mode_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let (a, src) = Kek::load_or_create(dir.path()).unwrap();
        assert!(matches!(src, KekSource::CreatedFile(_)));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(KEK_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (b, src) = Kek::load_or_create(dir.path()).unwrap();
        assert!(matches!(src, KekSource::LoadedFile(_)));
        assert_eq!(a.derive("x"), b.derive("x"));
        assert_ne!(a.derive("x"), a.derive("y"));
    }

    #[test]
    fn bad_configured_kek_is_refused() {
        assert!(Kek::from_base64("not base64!").is_err());
        assert!(Kek::from_base64(&B64.encode([1u8; 16])).is_err());
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", Kek::from_bytes([7; 32])), "Kek(<redacted>)");
    }
}
