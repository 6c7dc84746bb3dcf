//! The embedded CA's certificates and CRLs as a third party sees them:
//! `openssl verify` accepts the chain, `openssl x509` shows the UPN otherName,
//! the SID extension and the EKUs, and a revoked certificate fails
//! `openssl verify -crl_check`.

use std::path::Path;
use std::process::Command;

use der::{Decode, Encode, EncodePem};
use keyward_domain::{
    CertificateTemplate, ExtendedKeyUsage, KeyAlgorithm, KeyUsage, PivSlot, PkiApplication,
    SanSource, User, UserStatus,
};
use keyward_pki::{CertificateAuthority, EmbeddedCa, LeafRequest, Revoked};
use p256::pkcs8::EncodePublicKey;
use time::OffsetDateTime;

fn alice() -> User {
    User {
        id: uuid::Uuid::new_v4(),
        login: "alice".into(),
        upn: Some("alice@example.com".into()),
        display_name: "Alice Archer".into(),
        email: Some("alice.archer@example.com".into()),
        attributes: [(
            "objectSid".to_string(),
            "S-1-5-21-1004336348-1177238915-682003330-1001".to_string(),
        )]
        .into_iter()
        .collect(),
        status: UserStatus::Active,
    }
}

fn piv_auth() -> PkiApplication {
    PkiApplication {
        name: "PIV Authentication".into(),
        slot: PivSlot::Authentication,
        algorithm: KeyAlgorithm::EccP256,
        certificate_authority: "Keyward Issuing CA".into(),
        template: CertificateTemplate {
            subject_dn: "CN={display_name},UID={login}".into(),
            subject_alt_names: vec![SanSource::Upn, SanSource::Mail],
            validity_days: 365,
            key_usage: vec![KeyUsage::DigitalSignature],
            extended_key_usage: vec![
                ExtendedKeyUsage::ClientAuth,
                ExtendedKeyUsage::SmartcardLogon,
            ],
        },
        renewal_window_days: None,
        renewal: None,
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64ct::Encoding;
    let b64 = base64ct::Base64::encode_string(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).unwrap());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

fn openssl(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (.ci/deps)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn openssl_verifies_chain_shows_upn_and_sid_and_honours_the_crl() {
    let now = OffsetDateTime::now_utc();
    let ca = EmbeddedCa::generate(
        "Example Corp",
        Some("http://127.0.0.1:8080/pki/crl/issuing.crl".into()),
        now,
    )
    .unwrap();
    // Round trip through the storage form.
    let mut ca = EmbeddedCa::from_parts(&ca.to_parts().unwrap()).unwrap();
    ca.set_authority_info(
        "http://127.0.0.1:8080/pki/ocsp".into(),
        "http://127.0.0.1:8080/pki/ca/issuing.crt".into(),
    );

    let device_key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let spki = device_key.verifying_key().to_public_key_der().unwrap();
    let req = LeafRequest::from_template(&piv_auth(), &alice(), None, spki.as_bytes()).unwrap();
    let leaf = ca.issue(&req, now).unwrap();
    assert!(
        leaf.serial_hex.len() >= 16,
        "serials carry at least 64 bits"
    );
    assert!((leaf.not_after - leaf.not_before).whole_days() >= 365);

    let dir = tempfile::tempdir().unwrap();
    let chain = ca.chain_der();
    std::fs::write(dir.path().join("root.pem"), pem("CERTIFICATE", &chain[1])).unwrap();
    std::fs::write(
        dir.path().join("issuing.pem"),
        pem("CERTIFICATE", &chain[0]),
    )
    .unwrap();
    std::fs::write(dir.path().join("leaf.pem"), pem("CERTIFICATE", &leaf.der)).unwrap();

    let (ok, text) = openssl(
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "issuing.pem",
            "leaf.pem",
        ],
        dir.path(),
    );
    assert!(ok && text.contains("leaf.pem: OK"), "{text}");
    let (ok, text) = openssl(
        &[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "issuing.pem",
            "leaf.pem",
        ],
        dir.path(),
    );
    assert!(ok, "{text}");

    let (_, text) = openssl(&["x509", "-in", "leaf.pem", "-noout", "-text"], dir.path());
    assert!(
        text.contains("UPN") && text.contains("alice@example.com"),
        "{text}"
    );
    assert!(text.contains("email:alice.archer@example.com"), "{text}");
    assert!(
        text.contains("1.3.6.1.4.1.311.25.2"),
        "SID extension missing:\n{text}"
    );
    // Where relying parties check revocation and find the issuer.
    assert!(
        text.contains("URI:http://127.0.0.1:8080/pki/crl/issuing.crl"),
        "{text}"
    );
    assert!(
        text.contains("OCSP - URI:http://127.0.0.1:8080/pki/ocsp"),
        "{text}"
    );
    assert!(
        text.contains("CA Issuers - URI:http://127.0.0.1:8080/pki/ca/issuing.crt"),
        "{text}"
    );
    assert!(
        text.contains("S-1-5-21-1004336348-1177238915-682003330-1001"),
        "{text}"
    );
    assert!(
        text.contains("TLS Web Client Authentication")
            && text.contains("Microsoft Smartcard Login"),
        "{text}"
    );
    assert!(
        text.contains("CN = Alice Archer") || text.contains("CN=Alice Archer"),
        "{text}"
    );
    assert!(
        text.contains("http://127.0.0.1:8080/pki/crl/issuing.crl"),
        "{text}"
    );

    // Empty CRL: verification with CRL checking passes.
    let crl = ca.crl(&[], now, now + time::Duration::days(7), 1).unwrap();
    std::fs::write(dir.path().join("crl.pem"), pem("X509 CRL", &crl)).unwrap();
    let (ok, text) = openssl(
        &["crl", "-in", "crl.pem", "-noout", "-CAfile", "issuing.pem"],
        dir.path(),
    );
    assert!(ok && text.contains("verify OK"), "{text}");
    let (ok, text) = openssl(
        &[
            "verify",
            "-crl_check",
            "-CRLfile",
            "crl.pem",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "issuing.pem",
            "leaf.pem",
        ],
        dir.path(),
    );
    assert!(ok, "{text}");

    // Revoked: refused.
    let cert = x509_cert::Certificate::from_der(&leaf.der).unwrap();
    let serial = cert.tbs_certificate.serial_number.as_bytes().to_vec();
    let crl = ca
        .crl(
            &[Revoked {
                serial,
                at: now,
                reason: Some(5),
            }],
            now,
            now + time::Duration::days(7),
            2,
        )
        .unwrap();
    std::fs::write(dir.path().join("crl.pem"), pem("X509 CRL", &crl)).unwrap();
    let (ok, text) = openssl(
        &[
            "verify",
            "-crl_check",
            "-CRLfile",
            "crl.pem",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "issuing.pem",
            "leaf.pem",
        ],
        dir.path(),
    );
    assert!(!ok && text.contains("revoked"), "{text}");
    let (_, text) = openssl(&["crl", "-in", "crl.pem", "-noout", "-text"], dir.path());
    assert!(
        text.contains("Cessation Of Operation")
            && text.contains("X509v3 CRL Number: \n                2")
            || text.contains("CRL Number"),
        "{text}"
    );

    // The CHUID content signer chains to the issuing CA and carries id-PIV-content-signing.
    let (_, signer) = ca.content_signer();
    std::fs::write(
        dir.path().join("signer.pem"),
        signer.to_pem(der::pem::LineEnding::LF).unwrap(),
    )
    .unwrap();
    let (ok, text) = openssl(
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "issuing.pem",
            "signer.pem",
        ],
        dir.path(),
    );
    assert!(ok, "{text}");
    let _ = signer.to_der().unwrap();
}

#[test]
fn rsa_device_keys_are_certified_too_and_bad_keys_are_refused() {
    let now = OffsetDateTime::now_utc();
    let ca = EmbeddedCa::generate("Example Corp", None, now).unwrap();
    let rsa = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
    let spki = rsa::pkcs8::EncodePublicKey::to_public_key_der(&rsa.to_public_key()).unwrap();
    let req = LeafRequest::from_template(&piv_auth(), &alice(), None, spki.as_bytes()).unwrap();
    let leaf = ca.issue(&req, now).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let chain = ca.chain_der();
    std::fs::write(dir.path().join("root.pem"), pem("CERTIFICATE", &chain[1])).unwrap();
    std::fs::write(
        dir.path().join("issuing.pem"),
        pem("CERTIFICATE", &chain[0]),
    )
    .unwrap();
    std::fs::write(dir.path().join("leaf.pem"), pem("CERTIFICATE", &leaf.der)).unwrap();
    let (ok, text) = openssl(
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "issuing.pem",
            "leaf.pem",
        ],
        dir.path(),
    );
    assert!(ok, "{text}");

    assert!(matches!(
        LeafRequest::from_template(&piv_auth(), &alice(), None, b"\x30\x03\x02\x01\x00"),
        Err(keyward_pki::PkiError::PublicKey(_))
    ));
    let mut no_upn = alice();
    no_upn.upn = None;
    let err = LeafRequest::from_template(&piv_auth(), &no_upn, None, spki.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("UPN"), "{err}");
}

#[test]
fn the_chuid_signature_verifies_with_openssl_cms() {
    let now = OffsetDateTime::now_utc();
    let ca = EmbeddedCa::generate("Example Corp", None, now).unwrap();
    let content =
        b"\x30\x19fascn-bytes-here-25-bytes\x34\x10GUIDGUIDGUIDGUID\x35\x0820351231".to_vec();
    let sig = ca.sign_chuid(&content).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sig.der"), &sig).unwrap();
    std::fs::write(dir.path().join("content.bin"), &content).unwrap();
    let chain = ca.chain_der();
    std::fs::write(
        dir.path().join("chain.pem"),
        format!(
            "{}{}",
            pem("CERTIFICATE", &chain[0]),
            pem("CERTIFICATE", &chain[1])
        ),
    )
    .unwrap();
    let (ok, text) = openssl(
        &[
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            "sig.der",
            "-content",
            "content.bin",
            "-binary",
            "-CAfile",
            "chain.pem",
            "-purpose",
            "any",
            "-out",
            "/dev/null",
        ],
        dir.path(),
    );
    assert!(ok && text.contains("Verification successful"), "{text}");
    // A changed CHUID does not verify.
    std::fs::write(dir.path().join("content.bin"), b"tampered").unwrap();
    let (ok, text) = openssl(
        &[
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            "sig.der",
            "-content",
            "content.bin",
            "-binary",
            "-CAfile",
            "chain.pem",
            "-purpose",
            "any",
            "-out",
            "/dev/null",
        ],
        dir.path(),
    );
    assert!(!ok, "{text}");
}
