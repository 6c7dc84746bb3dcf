//! The virtual manufacturer CA. Real devices carry attestation keys whose
//! certificates chain to their vendor's CA (Yubico PIV CA, FIDO batch
//! certificates); virtual ones chain to this CA, whose name says plainly that
//! it is not a real vendor. It lives in a folder shared by every virtual card
//! on the machine, created atomically so cards started at once agree on it.

use der::{Decode, Encode, EncodePem};
use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rand_core::{OsRng, RngCore};
use spki::SubjectPublicKeyInfoOwned;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::ext::AsExtension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;
use x509_cert::Certificate;

/// Subject of the virtual manufacturer CA; each CA adds a random tag after
/// "CA" (see `generate`).
pub const CA_SUBJECT: &str =
    "CN=Keyward Virtual Manufacturer CA (NOT A REAL DEVICE VENDOR),O=Keyward Virtual Devices";
const KEY_FILE: &str = "ca-key.pem";
const CERT_FILE: &str = "ca-cert.pem";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("virtual manufacturer CA folder {0}: {1}")]
    Io(PathBuf, io::Error),
    #[error("virtual manufacturer CA files are unreadable: {0}")]
    Corrupt(String),
    #[error("building a certificate failed: {0}")]
    Build(String),
}

/// `$KEYWARD_VCARD_CA_DIR`, else `~/.local/share/keyward/vcard-ca`.
pub fn default_ca_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KEYWARD_VCARD_CA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".local/share/keyward/vcard-ca")
}

/// The loaded CA: its signing key and root certificate.
pub struct ManufacturerCa {
    key: SigningKey,
    cert: Certificate,
    cert_pem: String,
}

/// A FIDO packed-attestation key and its certificate (DER).
pub struct FidoAttestation {
    pub key: SigningKey,
    pub cert_der: Vec<u8>,
}

impl ManufacturerCa {
    /// Load the CA from `dir`, creating it first if absent. Creation writes a
    /// temporary sibling folder and renames it into place; if another process
    /// won the race, its CA is loaded instead.
    pub fn load_or_create(dir: &Path) -> Result<ManufacturerCa, CaError> {
        if dir.join(CERT_FILE).exists() {
            return Self::load(dir);
        }
        let io_err = |e| CaError::Io(dir.to_path_buf(), e);
        let parent = dir.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(io_err)?;
        let tmp = parent.join(format!(
            ".{}.tmp-{}-{:08x}",
            dir.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("vcard-ca"),
            std::process::id(),
            OsRng.next_u32()
        ));
        fs::create_dir(&tmp).map_err(io_err)?;
        let ca = Self::generate()?;
        let written = (|| -> io::Result<()> {
            let key_pem = ca
                .key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| io::Error::other(e.to_string()))?;
            write_private(&tmp.join(KEY_FILE), key_pem.as_bytes())?;
            fs::write(tmp.join(CERT_FILE), ca.cert_pem.as_bytes())?;
            Ok(())
        })();
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&tmp);
            return Err(io_err(e));
        }
        match fs::rename(&tmp, dir) {
            Ok(()) => Ok(ca),
            Err(_) if dir.join(CERT_FILE).exists() => {
                // Lost the race: the winner's CA is the one everybody uses.
                let _ = fs::remove_dir_all(&tmp);
                Self::load(dir)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                Err(io_err(e))
            }
        }
    }

    /// Load an existing CA.
    pub fn load(dir: &Path) -> Result<ManufacturerCa, CaError> {
        let io_err = |e| CaError::Io(dir.to_path_buf(), e);
        let key_pem = fs::read_to_string(dir.join(KEY_FILE)).map_err(io_err)?;
        let cert_pem = fs::read_to_string(dir.join(CERT_FILE)).map_err(io_err)?;
        let key =
            SigningKey::from_pkcs8_pem(&key_pem).map_err(|e| CaError::Corrupt(e.to_string()))?;
        let (_, der_bytes) = der::pem::decode_vec(cert_pem.as_bytes())
            .map_err(|e| CaError::Corrupt(e.to_string()))?;
        let cert =
            Certificate::from_der(&der_bytes).map_err(|e| CaError::Corrupt(e.to_string()))?;
        Ok(ManufacturerCa {
            key,
            cert,
            cert_pem,
        })
    }

    fn generate() -> Result<ManufacturerCa, CaError> {
        let key = SigningKey::random(&mut OsRng);
        // Each CA's name is its own (a short random tag): a verifier that
        // trusts two of them (the demo's and the machine's default) finds
        // the issuer by name, as it does for real manufacturers' CAs.
        let mut raw = [0u8; 4];
        rand_core::RngCore::fill_bytes(&mut OsRng, &mut raw);
        let tag = hex::encode(raw);
        let subject = Name::from_str(&CA_SUBJECT.replacen("CA (", &format!("CA {tag} ("), 1))
            .map_err(build_err)?;
        let spki = spki_of(key.verifying_key())?;
        let builder = CertificateBuilder::new(
            Profile::Root,
            random_serial(),
            validity(30)?,
            subject,
            spki,
            &key,
        )
        .map_err(build_err)?;
        let cert = builder.build::<DerSignature>().map_err(build_err)?;
        let cert_pem = cert.to_pem(LineEnding::LF).map_err(build_err)?;
        Ok(ManufacturerCa {
            key,
            cert,
            cert_pem,
        })
    }

    /// The root certificate in PEM.
    pub fn root_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn root_der(&self) -> Vec<u8> {
        self.cert.to_der().unwrap_or_default()
    }

    pub fn subject(&self) -> &Name {
        &self.cert.tbs_certificate.subject
    }

    /// Issue an intermediate CA certificate for a device's PIV attestation key
    /// (the YubiKey F9 slot), like Yubico's per-device "PIV Attestation" certificate.
    pub fn issue_piv_attestation_ca(
        &self,
        subject: &str,
        device_public_key_der: &[u8],
    ) -> Result<Vec<u8>, CaError> {
        let spki = SubjectPublicKeyInfoOwned::from_der(device_public_key_der).map_err(build_err)?;
        let builder = CertificateBuilder::new(
            Profile::SubCA {
                issuer: self.subject().clone(),
                path_len_constraint: Some(0),
            },
            random_serial(),
            validity(30)?,
            Name::from_str(subject).map_err(build_err)?,
            spki,
            &self.key,
        )
        .map_err(build_err)?;
        let cert = builder.build::<DerSignature>().map_err(build_err)?;
        cert.to_der().map_err(build_err)
    }

    /// A new FIDO attestation key with a certificate meeting WebAuthn's
    /// packed-attestation requirements (§8.2.1): version 3; subject C, O,
    /// OU "Authenticator Attestation", CN; basic constraints CA=false; the
    /// AAGUID in extension 1.3.6.1.4.1.45724.1.1.4 (not critical).
    pub fn issue_fido_attestation(
        &self,
        aaguid: [u8; 16],
        model: &str,
    ) -> Result<FidoAttestation, CaError> {
        let key = SigningKey::random(&mut OsRng);
        let spki = spki_of(key.verifying_key())?;
        let subject = Name::from_str(&format!(
            "CN=Keyward Virtual {} FIDO Attestation (NOT A REAL DEVICE),OU=Authenticator Attestation,O=Keyward Virtual Devices,C=US",
            model.replace([',', '=', '+'], " ")
        ))
        .map_err(build_err)?;
        let mut builder = CertificateBuilder::new(
            Profile::Leaf {
                issuer: self.subject().clone(),
                enable_key_agreement: false,
                enable_key_encipherment: false,
            },
            random_serial(),
            validity(20)?,
            subject,
            spki,
            &self.key,
        )
        .map_err(build_err)?;
        builder
            .add_extension(&FidoAaguid(aaguid))
            .map_err(build_err)?;
        let cert = builder.build::<DerSignature>().map_err(build_err)?;
        Ok(FidoAttestation {
            key,
            cert_der: cert.to_der().map_err(build_err)?,
        })
    }
}

/// Load-or-create the CA in `dir` and return a new FIDO attestation key and
/// certificate for `aaguid` (the FIDO side's entry point).
pub fn fido_attestation(
    dir: &Path,
    aaguid: [u8; 16],
    model: &str,
) -> Result<FidoAttestation, CaError> {
    ManufacturerCa::load_or_create(dir)?.issue_fido_attestation(aaguid, model)
}

pub(crate) fn build_err(e: impl std::fmt::Display) -> CaError {
    CaError::Build(e.to_string())
}

pub(crate) fn spki_of(
    vk: &p256::ecdsa::VerifyingKey,
) -> Result<SubjectPublicKeyInfoOwned, CaError> {
    use p256::pkcs8::EncodePublicKey;
    let der = vk.to_public_key_der().map_err(build_err)?;
    SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).map_err(build_err)
}

/// A positive 16-byte serial number.
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7F) | 0x01;
    SerialNumber::new(&bytes).expect("16 bytes is a valid serial")
}

/// From one day ago (clock skew between processes) for `years` years.
pub(crate) fn validity(years: u64) -> Result<Validity, CaError> {
    use x509_cert::time::Time;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(build_err)?;
    let not_before = now.saturating_sub(Duration::from_secs(86_400));
    let not_after = now + Duration::from_secs(years * 365 * 86_400);
    Ok(Validity {
        not_before: Time::try_from(std::time::UNIX_EPOCH + not_before).map_err(build_err)?,
        not_after: Time::try_from(std::time::UNIX_EPOCH + not_after).map_err(build_err)?,
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// id-fido-gen-ce-aaguid: the extension value is an OCTET STRING of the AAGUID.
struct FidoAaguid([u8; 16]);

impl der::oid::AssociatedOid for FidoAaguid {
    const OID: der::oid::ObjectIdentifier =
        der::oid::ObjectIdentifier::new_unwrap("1.3.6.1.4.1.45724.1.1.4");
}

impl Encode for FidoAaguid {
    fn encoded_len(&self) -> der::Result<der::Length> {
        der::asn1::OctetStringRef::new(&self.0)?.encoded_len()
    }
    fn encode(&self, writer: &mut impl der::Writer) -> der::Result<()> {
        der::asn1::OctetStringRef::new(&self.0)?.encode(writer)
    }
}

impl AsExtension for FidoAaguid {
    fn critical(&self, _: &Name, _: &[x509_cert::ext::Extension]) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;

    fn verify_signed_by(cert_der: &[u8], issuer: &Certificate) {
        let cert = Certificate::from_der(cert_der).unwrap();
        let tbs = cert.tbs_certificate.to_der().unwrap();
        let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(
            issuer
                .tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes(),
        )
        .unwrap();
        let sig = p256::ecdsa::DerSignature::from_bytes(cert.signature.raw_bytes()).unwrap();
        vk.verify(&tbs, &sig).unwrap();
        assert_eq!(cert.tbs_certificate.issuer, issuer.tbs_certificate.subject);
    }

    #[test]
    fn created_once_and_shared() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested/ca");
        let a = ManufacturerCa::load_or_create(&dir).unwrap();
        let b = ManufacturerCa::load_or_create(&dir).unwrap();
        assert_eq!(a.root_pem(), b.root_pem());
        assert!(a.root_pem().contains("BEGIN CERTIFICATE"));
        assert!(a.subject().to_string().contains("NOT A REAL DEVICE VENDOR"));
        // No temporary folders left behind.
        assert_eq!(fs::read_dir(tmp.path().join("nested")).unwrap().count(), 1);
    }

    #[test]
    fn concurrent_creation_agrees() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    ManufacturerCa::load_or_create(&dir)
                        .unwrap()
                        .root_pem()
                        .to_string()
                })
            })
            .collect();
        let pems: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(pems.iter().all(|p| p == &pems[0]));
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn fido_attestation_meets_packed_requirements() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = ManufacturerCa::load_or_create(tmp.path()).unwrap();
        let aaguid = [0xAB; 16];
        let att = ca.issue_fido_attestation(aaguid, "YubiKey 5").unwrap();
        verify_signed_by(&att.cert_der, &ca.cert);
        let cert = Certificate::from_der(&att.cert_der).unwrap();
        assert_eq!(cert.tbs_certificate.version, x509_cert::Version::V3);
        let subject = cert.tbs_certificate.subject.to_string();
        assert!(
            subject.contains("OU=Authenticator Attestation"),
            "{subject}"
        );
        assert!(subject.contains("C=US") && subject.contains("O=") && subject.contains("CN="));
        let exts = cert.tbs_certificate.extensions.unwrap();
        let aaguid_ext = exts
            .iter()
            .find(|e| e.extn_id.to_string() == "1.3.6.1.4.1.45724.1.1.4")
            .unwrap();
        assert!(!aaguid_ext.critical);
        let mut expect = vec![0x04, 16];
        expect.extend_from_slice(&aaguid);
        assert_eq!(aaguid_ext.extn_value.as_bytes(), &expect[..]);
        let bc = exts.iter().find(|e| e.extn_id == const_oid_bc()).unwrap();
        let bc =
            x509_cert::ext::pkix::BasicConstraints::from_der(bc.extn_value.as_bytes()).unwrap();
        assert!(!bc.ca);
        // The public key in the certificate is the returned key's.
        assert_eq!(
            cert.tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes(),
            att.key.verifying_key().to_encoded_point(false).as_bytes()
        );
    }

    fn const_oid_bc() -> der::oid::ObjectIdentifier {
        der::oid::ObjectIdentifier::new_unwrap("2.5.29.19")
    }

    #[test]
    fn piv_attestation_ca_chains_to_root() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = ManufacturerCa::load_or_create(tmp.path()).unwrap();
        let dev = SigningKey::random(&mut OsRng);
        let spki = spki_of(dev.verifying_key()).unwrap();
        let der = ca
            .issue_piv_attestation_ca(
                "CN=Keyward Virtual PIV Attestation",
                &spki.to_der().unwrap(),
            )
            .unwrap();
        verify_signed_by(&der, &ca.cert);
    }
}
