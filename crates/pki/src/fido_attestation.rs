//! FIDO2 packed attestation (WebAuthn Level 2, section 8.2), verified by
//! the server before a passkey goes to Graph: the device, not the relay,
//! must vouch for the credential key.
//!
//! ```text
//! attestationObject = { "fmt": "packed", "attStmt": { alg, sig, x5c }, "authData" }
//! sig = ECDSA(attestation key, authData || SHA-256(clientDataJSON))
//! x5c[0] = attestation certificate: version 3, OU "Authenticator Attestation",
//!          CA false, id-fido-gen-ce-aaguid (if present) = authData's AAGUID
//! x5c[0] → x5c[1..] / configured intermediates → a configured FIDO root
//! ```
//!
//! Self attestation (no x5c) and the `none` format prove nothing about the
//! device and are refused. Which AAGUIDs a device type may present is the
//! caller's table (`keyward_domain::authenticators`).

use der::Decode;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::attestation::{chain_to_anchor, malformed, AttestationError, Parsed};
use ciborium::value::Value;
use keyward_card::ctap::{self, AuthenticatorData, MapView};

/// id-fido-gen-ce-aaguid.
pub const OID_FIDO_AAGUID: &str = "1.3.6.1.4.1.45724.1.1.4";
/// COSE ES256.
const ES256: i64 = -7;

/// What a verified statement says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FidoAttestation {
    /// The AAGUID of the authenticator data (and of the certificate).
    pub aaguid: [u8; 16],
    /// Subject of the attestation certificate.
    pub certificate_subject: String,
    /// Subject of the root the chain ends at.
    pub anchor_subject: String,
}

fn requirement(why: impl Into<String>) -> AttestationError {
    AttestationError::Requirement(why.into())
}

/// Verifies a WebAuthn attestationObject (text keys, as sent to Graph)
/// for `client_data_json` against the FIDO roots.
pub fn verify_packed(
    attestation_object: &[u8],
    client_data_json: &[u8],
    intermediates: &[Vec<u8>],
    roots: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<FidoAttestation, AttestationError> {
    let what = "attestation object";
    let object = ctap::decode(attestation_object).map_err(|e| malformed(what, e.detail))?;
    let map = MapView::new(&object, what).map_err(|e| malformed(what, e.detail))?;
    let fmt = map
        .text_text("fmt")
        .map_err(|e| malformed(what, e.detail))?;
    if fmt != "packed" {
        return Err(requirement(format!(
            "the attestation format is '{fmt}', not 'packed': it proves nothing about the device"
        )));
    }
    let auth_data = map
        .text_bytes("authData")
        .map_err(|e| malformed(what, e.detail))?;
    let stmt = map
        .get_text("attStmt")
        .ok_or_else(|| malformed(what, "no attStmt"))?;
    let stmt = MapView::new(stmt, "attStmt").map_err(|e| malformed("attStmt", e.detail))?;
    let alg = stmt
        .text_i64("alg")
        .map_err(|e| malformed("attStmt", e.detail))?;
    let sig = stmt
        .text_bytes("sig")
        .map_err(|e| malformed("attStmt", e.detail))?;
    let x5c: Vec<Vec<u8>> = match stmt.get_text("x5c") {
        None => {
            return Err(requirement(
                "self attestation (no certificate): it proves nothing about the device",
            ))
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::Bytes(b) => Ok(b.clone()),
                _ => Err(malformed("attStmt", "x5c holds a non-bytes item")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(malformed("attStmt", "x5c is not an array")),
    };
    if alg != ES256 {
        return Err(AttestationError::UnsupportedAlgorithm(format!(
            "COSE {alg} (only ES256)"
        )));
    }
    let data = AuthenticatorData::parse(&auth_data)
        .map_err(|e| malformed("authenticator data", e.detail))?;
    let aaguid = data
        .attested
        .as_ref()
        .map(|a| a.aaguid)
        .ok_or_else(|| malformed("authenticator data", "no attested credential"))?;

    let (leaf_der, chain) = x5c
        .split_first()
        .ok_or_else(|| malformed("attStmt", "x5c is empty"))?;
    let leaf = Parsed::new(leaf_der, "FIDO attestation certificate")?;
    check_certificate(&leaf, &aaguid)?;
    if !leaf.valid_at(now) {
        return Err(AttestationError::NotValidAt {
            certificate: "FIDO attestation",
        });
    }
    // The signature over authData || SHA-256(clientDataJSON).
    let mut signed = auth_data.clone();
    signed.extend_from_slice(&Sha256::digest(client_data_json));
    let spki = &leaf.cert.tbs_certificate.subject_public_key_info;
    let key = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| malformed("attestation public key", "not a whole number of bytes"))?;
    p256::PublicKey::from_sec1_bytes(key)
        .map_err(|_| requirement("the attestation key is not a P-256 key (ES256)"))?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, key)
        .verify(&signed, &sig)
        .map_err(|_| AttestationError::BadSignature {
            certificate: "FIDO attestation statement's",
        })?;

    let intermediates = chain
        .iter()
        .chain(intermediates)
        .map(|d| Parsed::new(d, "intermediate certificate"))
        .collect::<Result<Vec<_>, _>>()?;
    let anchors = roots
        .iter()
        .map(|d| Parsed::new(d, "FIDO attestation root"))
        .collect::<Result<Vec<_>, _>>()?;
    let anchor = chain_to_anchor(&leaf, &intermediates, &anchors, now)?;
    Ok(FidoAttestation {
        aaguid,
        certificate_subject: leaf.subject(),
        anchor_subject: anchor.subject(),
    })
}

/// WebAuthn 8.2.1: the attestation certificate's requirements.
fn check_certificate(leaf: &Parsed, aaguid: &[u8; 16]) -> Result<(), AttestationError> {
    let tbs = &leaf.cert.tbs_certificate;
    if tbs.version != x509_cert::certificate::Version::V3 {
        return Err(requirement("the attestation certificate is not version 3"));
    }
    let ou = tbs
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .any(|atv| {
            atv.oid == const_oid::db::rfc4519::OU
                && atv
                    .value
                    .decode_as::<der::asn1::Utf8StringRef<'_>>()
                    .map(|s| s.as_str() == "Authenticator Attestation")
                    .or_else(|_| {
                        atv.value
                            .decode_as::<der::asn1::PrintableStringRef<'_>>()
                            .map(|s| s.as_str() == "Authenticator Attestation")
                    })
                    .unwrap_or(false)
        });
    if !ou {
        return Err(requirement(
            "the attestation certificate's subject has no OU \"Authenticator Attestation\"",
        ));
    }
    for ext in tbs.extensions.iter().flatten() {
        match ext.extn_id.to_string().as_str() {
            "2.5.29.19" => {
                let bc =
                    x509_cert::ext::pkix::BasicConstraints::from_der(ext.extn_value.as_bytes())
                        .map_err(|e| malformed("basic constraints", e))?;
                if bc.ca {
                    return Err(requirement(
                        "the attestation certificate is a CA certificate",
                    ));
                }
            }
            OID_FIDO_AAGUID => {
                if ext.critical {
                    return Err(requirement("the AAGUID extension is marked critical"));
                }
                let inner = der::asn1::OctetString::from_der(ext.extn_value.as_bytes())
                    .map_err(|e| malformed("AAGUID extension", e))?;
                if inner.as_bytes() != aaguid {
                    return Err(requirement(
                        "the attestation certificate names another AAGUID than the authenticator data",
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_card::ctap::{AttestedCredentialData, CoseEc2Key};
    use keyward_vcard::ManufacturerCa;
    use p256::ecdsa::signature::Signer;

    const AAGUID: [u8; 16] = [0x42; 16];
    const CLIENT_DATA: &[u8] = br#"{"type":"webauthn.create","challenge":"AAAA"}"#;

    /// An attestation object signed by a virtual manufacturer's FIDO
    /// attestation key; `tweak` changes it before it is encoded.
    struct Made {
        object: Vec<u8>,
        root: Vec<u8>,
    }

    fn make(
        cert_aaguid: [u8; 16],
        tweak: impl FnOnce(&mut Vec<u8>, &mut Vec<(Value, Value)>),
    ) -> Made {
        let dir = tempfile::tempdir().unwrap();
        let ca = ManufacturerCa::load_or_create(dir.path()).unwrap();
        let att = ca.issue_fido_attestation(cert_aaguid, "YubiKey 5").unwrap();
        let credential = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let mut auth_data = AuthenticatorData {
            rp_id_hash: Sha256::digest(b"login.microsoft.com").into(),
            flags: 0x45,
            sign_count: 0,
            attested: Some(AttestedCredentialData {
                aaguid: AAGUID,
                credential_id: vec![7; 32],
                public_key: CoseEc2Key::from_public_key(&credential.public_key(), ES256),
            }),
            extensions: None,
        }
        .to_bytes();
        let mut signed = auth_data.clone();
        signed.extend_from_slice(&Sha256::digest(CLIENT_DATA));
        let sig: p256::ecdsa::DerSignature = att.key.sign(&signed);
        let mut stmt = vec![
            (Value::Text("alg".into()), Value::Integer(ES256.into())),
            (
                Value::Text("sig".into()),
                Value::Bytes(sig.as_bytes().to_vec()),
            ),
            (
                Value::Text("x5c".into()),
                Value::Array(vec![Value::Bytes(att.cert_der.clone())]),
            ),
        ];
        tweak(&mut auth_data, &mut stmt);
        let object = Value::Map(vec![
            (Value::Text("fmt".into()), Value::Text("packed".into())),
            (Value::Text("attStmt".into()), Value::Map(stmt)),
            (Value::Text("authData".into()), Value::Bytes(auth_data)),
        ]);
        Made {
            object: ctap::encode_canonical(&object),
            root: ca.root_der(),
        }
    }

    fn verify(m: &Made) -> Result<FidoAttestation, AttestationError> {
        verify_packed(
            &m.object,
            CLIENT_DATA,
            &[],
            std::slice::from_ref(&m.root),
            OffsetDateTime::now_utc(),
        )
    }

    #[test]
    fn a_packed_statement_chaining_to_the_root_verifies() {
        let m = make(AAGUID, |_, _| {});
        let v = verify(&m).unwrap();
        assert_eq!(v.aaguid, AAGUID);
        assert!(v.certificate_subject.contains("Authenticator Attestation"));
    }

    #[test]
    fn another_root_is_untrusted() {
        let m = make(AAGUID, |_, _| {});
        let other = make(AAGUID, |_, _| {});
        let e = verify_packed(
            &m.object,
            CLIENT_DATA,
            &[],
            std::slice::from_ref(&other.root),
            OffsetDateTime::now_utc(),
        )
        .unwrap_err();
        // The same name (every virtual CA has one), another key.
        assert!(
            matches!(
                e,
                AttestationError::UntrustedChain { .. } | AttestationError::BadSignature { .. }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_certificate_for_another_aaguid_is_refused() {
        let e = verify(&make([0x43; 16], |_, _| {})).unwrap_err();
        assert!(e.to_string().contains("another AAGUID"), "{e}");
    }

    #[test]
    fn changed_authenticator_data_breaks_the_signature() {
        // The relay swaps the credential key for one of its own.
        let e = verify(&make(AAGUID, |auth, _| {
            let n = auth.len();
            auth[n - 1] ^= 1;
        }))
        .unwrap_err();
        assert!(
            matches!(
                e,
                AttestationError::BadSignature { .. } | AttestationError::Malformed { .. }
            ),
            "{e}"
        );
        // Another client data (another challenge) too.
        let m = make(AAGUID, |_, _| {});
        let e = verify_packed(
            &m.object,
            b"{}",
            &[],
            std::slice::from_ref(&m.root),
            OffsetDateTime::now_utc(),
        )
        .unwrap_err();
        assert!(matches!(e, AttestationError::BadSignature { .. }), "{e}");
    }

    #[test]
    fn self_attestation_and_other_algorithms_are_refused() {
        let e = verify(&make(AAGUID, |_, stmt| {
            stmt.retain(|(k, _)| k.as_text() != Some("x5c"))
        }))
        .unwrap_err();
        assert!(e.to_string().contains("self attestation"), "{e}");
        let e = verify(&make(AAGUID, |_, stmt| {
            stmt[0].1 = Value::Integer((-257).into());
        }))
        .unwrap_err();
        assert!(
            matches!(e, AttestationError::UnsupportedAlgorithm(_)),
            "{e}"
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for bad in [&b""[..], b"\xa0", b"\xa1\x63fmt\x66packed", b"\xff\xff"] {
            assert!(verify_packed(bad, CLIENT_DATA, &[], &[], OffsetDateTime::now_utc()).is_err());
        }
    }
}
