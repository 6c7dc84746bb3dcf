//! The YubiKey 5 profile: Yubico's PIV extensions (GET VERSION, GET SERIAL,
//! SET MANAGEMENT KEY, IMPORT KEY, RESET, SET PIN RETRIES, ATTEST, GET
//! METADATA), gated by firmware as Yubico documents.

use crate::ca::{build_err, random_serial, validity, CaError};
use crate::config::{Firmware, ProfileKind};
use crate::keys::{ManagementKey, SlotKey};
use crate::piv::{
    ok, parse_policies, status, ObjectValue, PivApplet, PivState, DEFAULT_PIN, DEFAULT_PUK,
};
use crate::profile::{t1_atr, yubikey_management_algorithms, Profile};
use der::{Decode, Encode};
use keyward_card::apdu::{sw, CommandApdu, ResponseApdu};
use keyward_card::piv::{self, alg, ins, key_ref, object, policy, slot};
use keyward_card::tlv;
use keyward_signer::{DerSignature, EcdsaSigner};
use spki::SubjectPublicKeyInfoOwned;
use std::str::FromStr;
use x509_cert::builder::{Builder, CertificateBuilder, Profile as CertProfile};
use x509_cert::ext::AsExtension;
use x509_cert::name::Name;
use x509_cert::Certificate;

/// YubiKey 5 with a firmware version and serial number.
pub struct YubiKey5 {
    pub firmware: Firmware,
    pub serial: u32,
}

/// Yubico's attestation extension OIDs (1.3.6.1.4.1.41482.3.x).
pub const OID_FIRMWARE: &str = "1.3.6.1.4.1.41482.3.3";
pub const OID_SERIAL: &str = "1.3.6.1.4.1.41482.3.7";
pub const OID_POLICY: &str = "1.3.6.1.4.1.41482.3.8";
pub const OID_FORM_FACTOR: &str = "1.3.6.1.4.1.41482.3.9";

impl Profile for YubiKey5 {
    fn kind(&self) -> ProfileKind {
        ProfileKind::Yubikey5
    }
    fn firmware(&self) -> Firmware {
        self.firmware
    }
    fn serial(&self) -> u32 {
        self.serial
    }
    /// The ATR of a YubiKey 5 NFC ("Yubikey" in the historical bytes), which
    /// OpenSC and yubico-piv-tool recognise.
    fn atr(&self) -> Vec<u8> {
        t1_atr(
            &[0x3B, 0xFD, 0x13, 0x00, 0x00, 0x81, 0x31, 0xFE, 0x15],
            &[
                0x80, 0x73, 0xC0, 0x21, 0xC0, 0x57, 0x59, 0x75, 0x62, 0x69, 0x4B, 0x65, 0x79,
            ],
        )
    }
    fn key_algorithms(&self) -> Vec<u8> {
        let mut algs = vec![alg::RSA_1024, alg::RSA_2048, alg::ECC_P256, alg::ECC_P384];
        if self.firmware.at_least(5, 7, 0) {
            algs.extend([alg::RSA_3072, alg::RSA_4096]);
        }
        algs
    }
    fn management_algorithms(&self) -> Vec<u8> {
        yubikey_management_algorithms(self.firmware)
    }
    fn factory_management_algorithm(&self) -> u8 {
        if self.firmware.at_least(5, 7, 0) {
            alg::AES_192
        } else {
            alg::TDES
        }
    }
    fn factory_objects(&self) -> Vec<(u32, Vec<u8>)> {
        vec![(object::DISCOVERY, piv::discovery_object([0x40, 0x00]))]
    }
    fn application_property_template(&self) -> Vec<u8> {
        // What a YubiKey answers: PIX and the RID in 79, no algorithm list.
        let mut inner = tlv::encode(0x4F, &piv::PIV_PIX);
        tlv::push(&mut inner, 0x79, &tlv::encode(0x4F, &piv::PIV_AID_PREFIX));
        tlv::encode(0x61, &inner)
    }
    fn extension(&self, piv: &mut PivApplet, apdu: &CommandApdu) -> Option<ResponseApdu> {
        if apdu.cla != 0 {
            return None;
        }
        Some(match apdu.ins {
            ins::YK_GET_VERSION => ok(self.firmware.bytes().to_vec()),
            ins::YK_GET_SERIAL => ok(self.serial.to_be_bytes().to_vec()),
            ins::YK_SET_MANAGEMENT_KEY => self.set_management_key(piv, apdu),
            ins::YK_IMPORT_KEY => self.import_key(piv, apdu),
            ins::YK_RESET => self.reset(piv, apdu),
            ins::YK_SET_PIN_RETRIES => self.set_pin_retries(piv, apdu),
            ins::YK_ATTEST => self.attest(piv, apdu),
            ins::YK_GET_METADATA if self.firmware.at_least(5, 3, 0) => self.metadata(piv, apdu),
            ins::YK_MOVE_KEY if self.firmware.at_least(5, 7, 0) => self.move_key(piv, apdu),
            _ => return None,
        })
    }
    fn card_manager_data(&self, _tag: u16) -> Option<Vec<u8>> {
        None
    }
    fn has_attestation(&self) -> bool {
        true
    }
}

impl YubiKey5 {
    fn set_management_key(&self, piv: &mut PivApplet, apdu: &CommandApdu) -> ResponseApdu {
        if apdu.p1 != 0xFF || !matches!(apdu.p2, 0xFE | 0xFF) {
            return status(sw::INCORRECT_P1P2);
        }
        if !piv.session.management_authenticated {
            return status(sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        match parse_management_key(&apdu.data, &self.management_algorithms()) {
            Some(mut key) => {
                key.touch = apdu.p2 == 0xFE;
                piv.state.management_key = key;
                piv.state.management_key_is_default = false;
                piv.mark_dirty();
                ok(Vec::new())
            }
            None => status(sw::INCORRECT_DATA),
        }
    }

    fn import_key(&self, piv: &mut PivApplet, apdu: &CommandApdu) -> ResponseApdu {
        if !slot::is_asymmetric(apdu.p2) {
            return status(sw::INCORRECT_P1P2);
        }
        if !piv.session.management_authenticated {
            return status(sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        if !self.key_algorithms().contains(&apdu.p1) {
            return status(sw::INCORRECT_P1P2);
        }
        if tlv::parse_all(&apdu.data).is_err() {
            return status(sw::INCORRECT_DATA);
        }
        let Some((pin_policy, touch_policy)) = parse_policies(&apdu.data) else {
            return status(sw::INCORRECT_DATA);
        };
        let key = if alg::rsa_bytes(apdu.p1).is_some() {
            match (tlv::find(&apdu.data, 0x01), tlv::find(&apdu.data, 0x02)) {
                (Some(p), Some(q)) => SlotKey::import_rsa(apdu.p1, p, q),
                _ => return status(sw::INCORRECT_DATA),
            }
        } else {
            match tlv::find(&apdu.data, 0x06) {
                Some(s) => SlotKey::import_ec(apdu.p1, s),
                None => return status(sw::INCORRECT_DATA),
            }
        };
        match key {
            Ok(key) => {
                piv.store_key(apdu.p2, key, pin_policy, touch_policy, 2);
                ok(Vec::new())
            }
            Err(_) => status(sw::INCORRECT_DATA),
        }
    }

    /// MOVE KEY (5.7): the key of slot P2 moves to slot P1, with its
    /// policies and origin (a key already in P1 is replaced); P1 = FF
    /// deletes it. Needs the management key. The attestation key stays.
    fn move_key(&self, piv: &mut PivApplet, apdu: &CommandApdu) -> ResponseApdu {
        let (to, from) = (apdu.p1, apdu.p2);
        if !slot::is_asymmetric(from) || !(to == 0xFF || slot::is_asymmetric(to)) || to == from {
            return status(sw::INCORRECT_P1P2);
        }
        if !piv.session.management_authenticated {
            return status(sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        let Some(entry) = piv.state.keys.remove(&from) else {
            return status(sw::REFERENCE_DATA_NOT_FOUND);
        };
        piv.clear_key_cache();
        if to != 0xFF {
            piv.state.keys.insert(to, entry);
        }
        piv.mark_dirty();
        ok(Vec::new())
    }

    /// RESET is only allowed once both PIN and PUK are blocked.
    fn reset(&self, piv: &mut PivApplet, apdu: &CommandApdu) -> ResponseApdu {
        if apdu.p1 != 0 || apdu.p2 != 0 {
            return status(sw::INCORRECT_P1P2);
        }
        if !(piv.state.pin.blocked() && piv.state.puk.blocked()) {
            return status(sw::CONDITIONS_NOT_SATISFIED);
        }
        let attestation_key = piv.state.attestation_key.clone();
        let attestation_cert = piv.state.objects.get(&object::YK_ATTESTATION_CERT).cloned();
        piv.state = PivState::factory(self);
        piv.state.attestation_key = attestation_key;
        if let Some(cert) = attestation_cert {
            piv.state.objects.insert(object::YK_ATTESTATION_CERT, cert);
        }
        piv.clear_key_cache();
        piv.reset_security_status();
        piv.mark_dirty();
        ok(Vec::new())
    }

    /// SET PIN RETRIES needs the management key and a verified PIN, and
    /// resets PIN and PUK to their defaults.
    fn set_pin_retries(&self, piv: &mut PivApplet, apdu: &CommandApdu) -> ResponseApdu {
        if apdu.p1 == 0 || apdu.p2 == 0 {
            return status(sw::INCORRECT_P1P2);
        }
        if !piv.session.management_authenticated || !piv.session.pin_verified {
            return status(sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        piv.state.pin.tries_total = apdu.p1;
        piv.state.puk.tries_total = apdu.p2;
        piv.state.pin.set(DEFAULT_PIN, true);
        piv.state.puk.set(DEFAULT_PUK, true);
        // The PIN changed: its verification no longer stands.
        piv.session.pin_verified = false;
        piv.session.pin_fresh = false;
        piv.mark_dirty();
        ok(Vec::new())
    }

    fn attest(&self, piv: &mut PivApplet, apdu: &CommandApdu) -> ResponseApdu {
        if apdu.p2 != 0 || !slot::is_asymmetric(apdu.p1) {
            return status(sw::INCORRECT_P1P2);
        }
        let slot = apdu.p1;
        let Some(entry) = piv.state.keys.get(&slot).cloned() else {
            return status(sw::REFERENCE_DATA_NOT_FOUND);
        };
        // Only keys generated on the card can be attested.
        if entry.origin != 1 {
            return status(sw::INCORRECT_DATA);
        }
        let (Some(att_key), Some(att_cert)) = (
            piv.attestation_key(),
            piv.state.objects.get(&object::YK_ATTESTATION_CERT).cloned(),
        ) else {
            return status(sw::REFERENCE_DATA_NOT_FOUND);
        };
        let Some(public_der) = piv.slot_key(slot).map(SlotKey::public_key_der) else {
            return status(sw::MEMORY_FAILURE);
        };
        let SlotKey::P256(att_key) = att_key else {
            return status(sw::MEMORY_FAILURE);
        };
        let Ok(signer) = att_key.signer() else {
            return status(sw::MEMORY_FAILURE);
        };
        match self.attestation_certificate(
            slot,
            &public_der,
            [
                entry.pin_policy,
                entry.touch_policy.max(policy::TOUCH_NEVER),
            ],
            &signer,
            &att_cert.0,
        ) {
            Ok(der) => ok(der),
            Err(_) => status(sw::NO_PRECISE_DIAGNOSIS),
        }
    }

    /// The X.509 certificate ATTEST returns: the slot's public key, issued by
    /// the F9 attestation key, with Yubico's firmware, serial, policy and
    /// form factor extensions.
    pub fn attestation_certificate(
        &self,
        slot: u8,
        public_key_der: &[u8],
        policies: [u8; 2],
        attestation_key: &EcdsaSigner,
        attestation_cert_container: &[u8],
    ) -> Result<Vec<u8>, CaError> {
        let issuer_cert_der = piv::parse_cert_container(attestation_cert_container)
            .map_err(build_err)?
            .certificate;
        let issuer = Certificate::from_der(&issuer_cert_der).map_err(build_err)?;
        let spki = SubjectPublicKeyInfoOwned::from_der(public_key_der).map_err(build_err)?;
        let subject =
            Name::from_str(&format!("CN=YubiKey PIV Attestation {slot:02x}")).map_err(build_err)?;
        let mut builder = CertificateBuilder::new(
            CertProfile::Leaf {
                issuer: issuer.tbs_certificate.subject.clone(),
                enable_key_agreement: false,
                enable_key_encipherment: false,
            },
            random_serial(),
            validity(20)?,
            subject,
            spki,
            attestation_key,
        )
        .map_err(build_err)?;
        builder
            .add_extension(&RawExt::<0>(self.firmware.bytes().to_vec()))
            .map_err(build_err)?;
        let serial_int = der::asn1::Uint::new(&self.serial.to_be_bytes()).map_err(build_err)?;
        builder
            .add_extension(&RawExt::<1>(serial_int.to_der().map_err(build_err)?))
            .map_err(build_err)?;
        builder
            .add_extension(&RawExt::<2>(policies.to_vec()))
            .map_err(build_err)?;
        // Form factor: USB-A keychain.
        builder
            .add_extension(&RawExt::<3>(vec![0x01]))
            .map_err(build_err)?;
        let cert = builder.build::<DerSignature>().map_err(build_err)?;
        cert.to_der().map_err(build_err)
    }

    fn metadata(&self, piv: &mut PivApplet, apdu: &CommandApdu) -> ResponseApdu {
        if apdu.p1 != 0 {
            return status(sw::INCORRECT_P1P2);
        }
        let mut out = Vec::new();
        match apdu.p2 {
            key_ref::PIN | key_ref::PUK => {
                let r = if apdu.p2 == key_ref::PIN {
                    &piv.state.pin
                } else {
                    &piv.state.puk
                };
                tlv::push(&mut out, 0x01, &[0xFF]);
                tlv::push(&mut out, 0x05, &[u8::from(r.is_default)]);
                tlv::push(&mut out, 0x06, &[r.tries_total, r.tries_left]);
            }
            key_ref::MANAGEMENT => {
                let k = &piv.state.management_key;
                tlv::push(&mut out, 0x01, &[k.algorithm]);
                tlv::push(
                    &mut out,
                    0x02,
                    &[
                        0x00,
                        if k.touch {
                            policy::TOUCH_ALWAYS
                        } else {
                            policy::TOUCH_NEVER
                        },
                    ],
                );
                tlv::push(
                    &mut out,
                    0x05,
                    &[u8::from(piv.state.management_key_is_default)],
                );
            }
            slot::ATTESTATION => {
                let Some(key) = piv.attestation_key() else {
                    return status(sw::REFERENCE_DATA_NOT_FOUND);
                };
                tlv::push(&mut out, 0x01, &[key.algorithm()]);
                tlv::push(&mut out, 0x02, &[policy::PIN_NEVER, policy::TOUCH_NEVER]);
                tlv::push(&mut out, 0x03, &[0x01]);
                tlv::push(&mut out, 0x04, &key.public_template().encode_inner());
            }
            s if slot::is_asymmetric(s) => {
                let Some(entry) = piv.state.keys.get(&s).cloned() else {
                    return status(sw::REFERENCE_DATA_NOT_FOUND);
                };
                let Some(key) = piv.slot_key(s) else {
                    return status(sw::MEMORY_FAILURE);
                };
                tlv::push(&mut out, 0x01, &[entry.algorithm]);
                tlv::push(
                    &mut out,
                    0x02,
                    &[
                        entry.pin_policy,
                        entry.touch_policy.max(policy::TOUCH_NEVER),
                    ],
                );
                tlv::push(&mut out, 0x03, &[entry.origin]);
                tlv::push(&mut out, 0x04, &key.public_template().encode_inner());
            }
            _ => return status(sw::REFERENCE_DATA_NOT_FOUND),
        }
        ok(out)
    }
}

/// `alg 9B len key` as SET MANAGEMENT KEY (and the C4000 vendor command) carry it.
pub(crate) fn parse_management_key(data: &[u8], allowed: &[u8]) -> Option<ManagementKey> {
    let (&algorithm, rest) = data.split_first()?;
    if !allowed.contains(&algorithm) {
        return None;
    }
    let (t, tail) = tlv::parse_one(rest).ok()?;
    if t.tag != u32::from(key_ref::MANAGEMENT) || !tail.is_empty() {
        return None;
    }
    ManagementKey::new(algorithm, t.value)
}

/// Install a fresh F9 attestation key and its certificate from the CA.
pub fn provision_attestation(
    state: &mut PivState,
    ca: &crate::ca::ManufacturerCa,
    serial: u32,
) -> Result<(), CaError> {
    let key = SlotKey::generate(alg::ECC_P256).map_err(|_| CaError::Build("key".into()))?;
    let subject = format!(
        "CN=Keyward Virtual PIV Attestation {serial} (NOT A REAL DEVICE),O=Keyward Virtual Devices"
    );
    let cert = ca.issue_piv_attestation_ca(&subject, &key.public_key_der())?;
    state.attestation_key = Some(key.to_stored());
    state.objects.insert(
        object::YK_ATTESTATION_CERT,
        ObjectValue(piv::cert_container(&cert, false)),
    );
    Ok(())
}

/// A certificate extension whose value is given bytes, for Yubico's
/// attestation extensions (index selects the OID).
struct RawExt<const N: usize>(Vec<u8>);

impl<const N: usize> der::oid::AssociatedOid for RawExt<N> {
    const OID: der::oid::ObjectIdentifier = match N {
        0 => der::oid::ObjectIdentifier::new_unwrap(OID_FIRMWARE),
        1 => der::oid::ObjectIdentifier::new_unwrap(OID_SERIAL),
        2 => der::oid::ObjectIdentifier::new_unwrap(OID_POLICY),
        _ => der::oid::ObjectIdentifier::new_unwrap(OID_FORM_FACTOR),
    };
}

impl<const N: usize> Encode for RawExt<N> {
    fn encoded_len(&self) -> der::Result<der::Length> {
        der::Length::try_from(self.0.len())
    }
    fn encode(&self, writer: &mut impl der::Writer) -> der::Result<()> {
        writer.write(&self.0)
    }
}

impl<const N: usize> AsExtension for RawExt<N> {
    fn critical(&self, _: &Name, _: &[x509_cert::ext::Extension]) -> bool {
        false
    }
}
