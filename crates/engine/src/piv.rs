//! PIV personalisation of one device, as a chain of states.
//!
//! ```text
//! PivIssuance::start(plan)            -> (AwaitWitness, batch 1)
//!   batch 1: [CPLC (c4000)] SELECT PIV, [GET SERIAL and GET VERSION (yubikey5)],
//!            GENERAL AUTHENTICATE: witness request (current management key)
//! AwaitWitness::on_responses          -> (AwaitKeys, batch 2)
//!   batch 2: GENERAL AUTHENTICATE: witness + challenge, VERIFY PIN,
//!            set retry counts, CHANGE PUK, CHANGE PIN, GENERATE each key
//! AwaitKeys::on_responses             -> AwaitCertificates (public keys out)
//! AwaitCertificates::with_certificates -> (AwaitWrites, batch 3)   (no round trip)
//!   batch 3: PUT DATA certificates, CHUID, CCC, new management key,
//!            GET DATA of each written object (read back)
//! AwaitWrites::on_responses           -> Personalised
//! ```
//!
//! Three client round trips for a PIV-only issuance. The order is the one the
//! devices require: on a YubiKey SET PIN RETRIES needs the management key and
//! a verified PIN and resets PIN and PUK to their defaults, so it comes before
//! the PIN and PUK are changed; the management key is replaced last, after
//! the writes that need it.

use der::Encode;
use keyward_card::apdu::CommandApdu;
use keyward_card::piv::{self, alg, dyn_auth, key_ref, object, PublicKeyTemplate};
use keyward_domain::DeviceType;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::batch::{check, Batch, Failure, Response};
use crate::failure::{FailureCode, Step};
use crate::mgmt_key::ManagementKey;

const OK: &[u16] = &[0x9000];
/// The step reading the device attestation certificate (5FFF01).
const READ_ATTESTATION_CERT: Step = Step::ReadAttestationCertificate;
/// YubiKey factory PIN and PUK: what SET PIN RETRIES resets them to.
pub const YUBIKEY_DEFAULT_PIN: &str = "123456";
pub const YUBIKEY_DEFAULT_PUK: &str = "12345678";

/// A PIN, PUK or similar: never printed.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(Zeroizing::new(s.into()))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A key to generate on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySpec {
    /// PIV slot (0x9A, 0x9C, 0x9D, 0x9E).
    pub slot: u8,
    /// PIV algorithm identifier (0x11 P-256, 0x14 P-384, 0x07 RSA 2048, …).
    pub algorithm: u8,
}

/// The CHUID to write (SP 800-73-4: FASC-N with agency code 9999 for
/// non-federal issuers, GUID, expiration date, issuer signature).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChuidPlan {
    pub guid: [u8; 16],
    pub credential_number: u32,
    /// YYYYMMDD
    pub expiration: String,
}

/// Everything the personalisation needs, decided by the server beforehand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PivPlan {
    pub device_type: DeviceType,
    pub serial: u64,
    /// The key the device has now (factory default on a new device).
    pub current_management_key: ManagementKey,
    /// The per-device key to install; None keeps the current one.
    pub new_management_key: Option<ManagementKey>,
    pub current_pin: Secret,
    pub current_puk: Secret,
    pub new_pin: Secret,
    pub new_puk: Secret,
    /// PIN and PUK retry counts to set, where the device can.
    pub retries: Option<(u8, u8)>,
    pub keys: Vec<KeySpec>,
    pub chuid: ChuidPlan,
    /// The firmware the inventory records (YubiKey: checked with GET VERSION,
    /// since management-key types and algorithms depend on it).
    #[serde(default)]
    pub firmware: Option<(u8, u8, u8)>,
    /// The PIN the person chose at the end of issuance ("Change PIN during
    /// issuance" with a generated initial PIN): the last batch changes
    /// `new_pin` to it.
    #[serde(default)]
    pub final_pin: Option<Secret>,
    /// A C4000 with a FIDO application: whether its FIDO application uses
    /// the PIV PIN ("Share the device PIN between PKI and Passkey
    /// applications"), set by the vendor command `80 E3` while the
    /// management key is authenticated. None: left as it is.
    #[serde(default)]
    pub fido_pin_sharing: Option<bool>,
}

/// The PIN and touch policies (YubiKey codes) a key generated here ends up
/// with: GENERATE sends PIN_DEFAULT and TOUCH_DEFAULT and the device applies
/// its slot's defaults. An attestation of the key must name these.
pub fn generated_key_policies(slot: u8) -> (u8, u8) {
    (
        piv::policy::default_pin_policy(slot),
        piv::policy::TOUCH_NEVER,
    )
}

/// A public key the device generated, for the CA to certify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeneratedKey {
    pub slot: u8,
    pub algorithm: u8,
    /// DER SubjectPublicKeyInfo.
    #[serde(with = "crate::b64")]
    pub spki_der: Vec<u8>,
    /// The device's ATTEST answer for the slot (an X.509 certificate, DER),
    /// on devices that attest; the server verifies it before certifying.
    #[serde(default, with = "crate::b64::opt")]
    pub attestation: Option<Vec<u8>>,
}

/// Counters of a personalisation, for reports and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub batches: u32,
    pub commands: u32,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

impl Counters {
    fn count(&mut self, batch: &Batch, responses: &[Response]) {
        self.batches += 1;
        self.commands += batch.len() as u32;
        self.bytes_out += batch.bytes_out() as u64;
        self.bytes_in += responses
            .iter()
            .map(|r| r.data.len() as u64 + 2)
            .sum::<u64>();
    }
}

fn apdu(c: CommandApdu) -> Vec<u8> {
    c.to_bytes()
}

fn pin_cmd(c: Option<CommandApdu>, step: Step) -> Result<Vec<u8>, Failure> {
    c.map(apdu).ok_or_else(|| {
        Failure::new(
            FailureCode::PinTooLong,
            step,
            "PINs and PUKs are at most 8 bytes",
        )
    })
}

/// The first state: nothing sent yet.
pub struct PivIssuance;

impl PivIssuance {
    pub fn start(plan: PivPlan) -> (AwaitWitness, Batch) {
        let mut b = Batch::default();
        if plan.device_type == DeviceType::C4000 {
            // GlobalPlatform CPLC: the IC serial number is the device serial.
            b.push(
                Step::IdentifyDevice,
                vec![0x80, 0xCA, 0x9F, 0x7F, 0x00],
                OK,
                false,
            );
        }
        b.push(Step::SelectPiv, apdu(piv::select_piv()), OK, false);
        if plan.device_type == DeviceType::Piv {
            // A device recorded as generic PIV must not be a YubiKey: the
            // type decides whether its keys are attested, so an importer
            // cannot pick one that skips attestation. Any answer but a
            // version is a generic card's.
            b.push(
                Step::IdentifyDevice,
                apdu(piv::yk_get_version()),
                GENERIC_PROBE,
                false,
            );
        }
        if plan.device_type == DeviceType::YubiKey5 {
            b.push(Step::IdentifyDevice, apdu(piv::yk_get_serial()), OK, false);
            b.push(Step::IdentifyDevice, apdu(piv::yk_get_version()), OK, false);
        }
        let m = &plan.current_management_key;
        b.push(
            Step::AuthenticateManagementKey,
            apdu(piv::general_authenticate(
                m.algorithm.id(),
                key_ref::MANAGEMENT,
                &[(dyn_auth::WITNESS, &[])],
            )),
            OK,
            false,
        );
        let state = AwaitWitness {
            plan,
            sent: b.clone(),
            counters: Counters::default(),
        };
        (state, b)
    }
}

/// What a generic PIV card may answer to a YubiKey's GET VERSION.
const GENERIC_PROBE: &[u16] = &[
    0x9000, 0x6D00, 0x6E00, 0x6A81, 0x6A82, 0x6A86, 0x6B00, 0x6700, 0x6985, 0x6982, 0x6F00,
];

/// Batch 1 is out: waiting for the device's identity and witness.
#[derive(Debug, Serialize, Deserialize)]
pub struct AwaitWitness {
    plan: PivPlan,
    sent: Batch,
    counters: Counters,
}

/// A device recorded as generic PIV that answers a YubiKey's GET VERSION
/// (the second command of its first batch) is a YubiKey: refused.
fn not_a_yubikey(plan: &PivPlan, responses: &[Response]) -> Result<(), Failure> {
    if plan.device_type != DeviceType::Piv {
        return Ok(());
    }
    let version = responses
        .get(1)
        .filter(|r| r.sw == 0x9000)
        .and_then(|r| r.data.get(..3));
    match version {
        Some(v) => Err(Failure::new(
            FailureCode::DeviceMismatch,
            Step::IdentifyDevice,
            format!(
                "the device identifies as a YubiKey (firmware {}.{}.{}), the inventory records a generic PIV device: correct the inventory record",
                v[0], v[1], v[2]
            ),
        )),
        None => Ok(()),
    }
}

fn serial_from(plan: &PivPlan, responses: &[Response]) -> Result<(), Failure> {
    let got = match plan.device_type {
        DeviceType::C4000 => {
            let cplc =
                keyward_card::tlv::find(&responses[0].data, 0x9F7F).unwrap_or(&responses[0].data);
            cplc.get(12..16)
                .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as u64)
        }
        DeviceType::YubiKey5 => responses
            .get(1)
            .and_then(|r| r.data.get(..4))
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as u64),
        DeviceType::Piv => return Ok(()),
    };
    if let (DeviceType::YubiKey5, Some(want)) = (plan.device_type, plan.firmware) {
        let have = responses
            .get(2)
            .and_then(|r| r.data.get(..3))
            .map(|v| (v[0], v[1], v[2]));
        if let Some(have) = have.filter(|h| *h != want) {
            return Err(Failure::new(FailureCode::DeviceMismatch,
                Step::IdentifyDevice,
                format!(
                    "the device runs firmware {}.{}.{}, the inventory records {}.{}.{}: correct the inventory record",
                    have.0, have.1, have.2, want.0, want.1, want.2
                ),
            ));
        }
    }
    match got {
        Some(s) if s == plan.serial => Ok(()),
        Some(s) => Err(Failure::new(
            FailureCode::DeviceMismatch,
            Step::IdentifyDevice,
            format!(
                "the device in the reader has serial {s}, not {}: was it swapped?",
                plan.serial
            ),
        )),
        None => Err(Failure::new(
            FailureCode::BadResponse,
            Step::IdentifyDevice,
            "the device did not return its serial number",
        )),
    }
}

impl AwaitWitness {
    pub fn plan(&self) -> &PivPlan {
        &self.plan
    }

    /// `rng`: the mutual authentication's challenge.
    pub fn on_responses(
        mut self,
        responses: &[Response],
        rng: &mut dyn RngCore,
    ) -> Result<(AwaitKeys, Batch), Failure> {
        // Before anything else: a YubiKey recorded as generic PIV fails
        // here, not at the (then wrong) management key.
        not_a_yubikey(&self.plan, responses)?;
        let responses = check(&self.sent, responses)?;
        self.counters.count(&self.sent, responses);
        serial_from(&self.plan, responses)?;
        let step = Step::AuthenticateManagementKey;
        let m = &self.plan.current_management_key;
        let witness_enc = piv::parse_general_authenticate_response(
            &responses[responses.len() - 1].data,
            dyn_auth::WITNESS,
        )
        .ok_or_else(|| {
            Failure::new(
                FailureCode::BadResponse,
                step,
                "no witness in the GENERAL AUTHENTICATE response",
            )
        })?;
        let witness = m.decrypt_block(witness_enc).ok_or_else(|| {
            Failure::new(
                FailureCode::BadResponse,
                step,
                "witness length does not match the management key algorithm",
            )
        })?;
        let mut challenge = vec![0u8; m.algorithm.block_len()];
        rng.fill_bytes(&mut challenge);

        let p = &self.plan;
        let mut b = Batch::default();
        b.push(
            step,
            apdu(piv::general_authenticate(
                m.algorithm.id(),
                key_ref::MANAGEMENT,
                &[
                    (dyn_auth::WITNESS, &witness),
                    (dyn_auth::CHALLENGE, &challenge),
                    (dyn_auth::RESPONSE, &[]),
                ],
            )),
            OK,
            true,
        );
        b.push(
            Step::VerifyPin,
            pin_cmd(
                piv::verify(key_ref::PIN, Some(p.current_pin.expose().as_bytes())),
                Step::VerifyPin,
            )?,
            OK,
            true,
        );
        // After a YubiKey's SET PIN RETRIES the PIN and PUK are the defaults.
        let (mut pin_now, mut puk_now) = (p.current_pin.clone(), p.current_puk.clone());
        if let Some((pin_tries, puk_tries)) = p.retries {
            match p.device_type {
                DeviceType::YubiKey5 => {
                    b.push(
                        Step::SetRetryCounts,
                        apdu(piv::yk_set_pin_retries(pin_tries, puk_tries)),
                        OK,
                        false,
                    );
                    pin_now = Secret::new(YUBIKEY_DEFAULT_PIN);
                    puk_now = Secret::new(YUBIKEY_DEFAULT_PUK);
                }
                DeviceType::C4000 => {
                    // Stand-in for HID's proprietary command (docs/vcard.md).
                    b.push(
                        Step::SetRetryCounts,
                        vec![0x80, 0xE2, pin_tries, puk_tries],
                        OK,
                        false,
                    );
                }
                DeviceType::Piv => {}
            }
        }
        b.push(
            Step::ChangePuk,
            pin_cmd(
                piv::change_reference_data(
                    key_ref::PUK,
                    puk_now.expose().as_bytes(),
                    p.new_puk.expose().as_bytes(),
                ),
                Step::ChangePuk,
            )?,
            OK,
            true,
        );
        b.push(
            Step::ChangePin,
            pin_cmd(
                piv::change_reference_data(
                    key_ref::PIN,
                    pin_now.expose().as_bytes(),
                    p.new_pin.expose().as_bytes(),
                ),
                Step::ChangePin,
            )?,
            OK,
            true,
        );
        for k in &p.keys {
            b.push(
                Step::GenerateKey(k.slot),
                apdu(piv::generate(
                    k.algorithm,
                    k.slot,
                    piv::policy::PIN_DEFAULT,
                    piv::policy::TOUCH_DEFAULT,
                )),
                OK,
                false,
            );
        }
        if p.device_type == DeviceType::YubiKey5 {
            // The device proves it generated each key (ATTEST, signed by its
            // F9 key); the server verifies before certifying. A device that
            // cannot attest answers an error the batch goes past.
            for k in &p.keys {
                b.push(
                    Step::AttestKey(k.slot),
                    apdu(piv::yk_attest(k.slot)),
                    &[0x9000, 0x6A80, 0x6A88, 0x6D00],
                    false,
                );
            }
            b.push(
                READ_ATTESTATION_CERT,
                apdu(
                    piv::get_data(object::YK_ATTESTATION_CERT)
                        .extended(true)
                        .with_le(65536),
                ),
                &[0x9000, 0x6A82],
                false,
            );
        }
        let state = AwaitKeys {
            plan: self.plan,
            sent: b.clone(),
            challenge,
            counters: self.counters,
        };
        Ok((state, b))
    }
}

/// Batch 2 is out: waiting for the card's authentication and the public keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AwaitKeys {
    plan: PivPlan,
    sent: Batch,
    challenge: Vec<u8>,
    counters: Counters,
}

impl AwaitKeys {
    pub fn on_responses(mut self, responses: &[Response]) -> Result<AwaitCertificates, Failure> {
        let responses = check(&self.sent, responses)?;
        self.counters.count(&self.sent, responses);
        let step = Step::AuthenticateManagementKey;
        let m = &self.plan.current_management_key;
        // Mutual authentication: the card proves it knows the key too.
        let card_answer =
            piv::parse_general_authenticate_response(&responses[0].data, dyn_auth::RESPONSE)
                .ok_or_else(|| {
                    Failure::new(
                        FailureCode::BadResponse,
                        step,
                        "no response to the challenge",
                    )
                })?;
        let expected = m
            .encrypt_block(&self.challenge)
            .ok_or_else(|| Failure::new(FailureCode::BadResponse, step, "challenge length"))?;
        if !bool::from(expected.ct_eq(card_answer)) {
            return Err(Failure::new(
                FailureCode::DeviceNotAuthentic,
                step,
                "the device failed mutual authentication",
            ));
        }
        // Responses by the step of their command: keys, attestations, and
        // the device attestation certificate.
        let by_step = |step: Step| {
            self.sent
                .commands
                .iter()
                .zip(responses)
                .find(|(c, _)| c.step == step)
                .map(|(_, r)| r)
        };
        let mut keys = Vec::with_capacity(self.plan.keys.len());
        for spec in &self.plan.keys {
            let step = Step::GenerateKey(spec.slot);
            let r = by_step(step)
                .ok_or_else(|| Failure::new(FailureCode::BadResponse, step, "no public key"))?;
            let template = PublicKeyTemplate::parse(&r.data).map_err(|e| {
                Failure::new(FailureCode::BadResponse, step, format!("public key: {e:?}"))
            })?;
            let spki_der = spki_der(spec.algorithm, &template)
                .map_err(|m| Failure::new(FailureCode::BadResponse, step, m))?;
            let attestation = by_step(Step::AttestKey(spec.slot))
                .filter(|r| r.sw == 0x9000 && !r.data.is_empty())
                .map(|r| r.data.clone());
            keys.push(GeneratedKey {
                slot: spec.slot,
                algorithm: spec.algorithm,
                spki_der,
                attestation,
            });
        }
        let device_attestation_certificate = by_step(READ_ATTESTATION_CERT)
            .filter(|r| r.sw == 0x9000)
            .and_then(|r| keyward_card::tlv::find(&r.data, 0x53).map(<[u8]>::to_vec));
        Ok(AwaitCertificates {
            plan: self.plan,
            keys,
            counters: self.counters,
            device_attestation_certificate,
        })
    }
}

/// A PIV public key template as a DER SubjectPublicKeyInfo.
pub fn spki_der(algorithm: u8, t: &PublicKeyTemplate) -> Result<Vec<u8>, String> {
    use p256::pkcs8::EncodePublicKey;
    match (algorithm, t) {
        (alg::ECC_P256, PublicKeyTemplate::Ec { point }) => p256::PublicKey::from_sec1_bytes(point)
            .map_err(|e| format!("not a P-256 point: {e}"))?
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .map_err(|e| e.to_string()),
        (alg::ECC_P384, PublicKeyTemplate::Ec { point }) => p384::PublicKey::from_sec1_bytes(point)
            .map_err(|e| format!("not a P-384 point: {e}"))?
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .map_err(|e| e.to_string()),
        (a, PublicKeyTemplate::Rsa { modulus, exponent }) if alg::rsa_bytes(a).is_some() => {
            if Some(modulus.len()) != alg::rsa_bytes(a) {
                return Err(format!(
                    "RSA modulus of {} bytes for algorithm {a:02X}",
                    modulus.len()
                ));
            }
            let key = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(modulus),
                rsa::BigUint::from_bytes_be(exponent),
            )
            .map_err(|e| format!("not an RSA key: {e}"))?;
            key.to_public_key_der()
                .map(|d| d.as_bytes().to_vec())
                .map_err(|e| e.to_string())
        }
        (a, _) => Err(format!("key of the wrong type for algorithm {a:02X}")),
    }
}

/// Keys generated; the server certifies them (no client round trip).
#[derive(Debug, Serialize, Deserialize)]
pub struct AwaitCertificates {
    plan: PivPlan,
    keys: Vec<GeneratedKey>,
    counters: Counters,
    /// The device attestation certificate object (5FFF01's value: 70 cert,
    /// 71 info), read with the keys on devices that attest.
    #[serde(default, with = "crate::b64::opt")]
    device_attestation_certificate: Option<Vec<u8>>,
}

/// What the server hands back: one certificate per generated key, and the
/// issuer's signature over the CHUID (the CMS SignedData of tag 3E).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certified {
    #[serde(with = "crate::b64::keyed")]
    pub certificates: Vec<(u8, Vec<u8>)>,
    #[serde(with = "crate::b64")]
    pub chuid_signature: Vec<u8>,
}

impl AwaitCertificates {
    pub fn keys(&self) -> &[GeneratedKey] {
        &self.keys
    }

    /// The device attestation certificate object (5FFF01), if read.
    pub fn device_attestation_certificate(&self) -> Option<&[u8]> {
        self.device_attestation_certificate.as_deref()
    }

    pub fn plan(&self) -> &PivPlan {
        &self.plan
    }

    /// The PIN the person chose to replace the generated one: the last batch
    /// changes the PIN to it.
    pub fn set_final_pin(&mut self, pin: Secret) {
        self.plan.final_pin = Some(pin);
    }

    /// The CHUID content the issuer signs: FASC-N, GUID and expiration
    /// (the signature tag 3E and the error detection code FE are not signed).
    pub fn chuid_to_sign(&self) -> Result<Vec<u8>, Failure> {
        let c = self.chuid(Vec::new())?;
        let mut out = keyward_card::tlv::encode(0x30, &c.fascn);
        keyward_card::tlv::push(&mut out, 0x34, &c.guid);
        keyward_card::tlv::push(&mut out, 0x35, &c.expiration);
        Ok(out)
    }

    fn chuid(&self, signature: Vec<u8>) -> Result<piv::Chuid, Failure> {
        let c = &self.plan.chuid;
        let expiration: [u8; 8] = c
            .expiration
            .as_bytes()
            .try_into()
            .ok()
            .filter(|e: &[u8; 8]| e.iter().all(u8::is_ascii_digit))
            .ok_or_else(|| {
                Failure::new(
                    FailureCode::BadPlan,
                    Step::WriteChuid,
                    "CHUID expiration must be YYYYMMDD",
                )
            })?;
        Ok(piv::Chuid {
            fascn: piv::non_federal_fascn(c.credential_number),
            guid: c.guid,
            expiration,
            signature,
        })
    }

    pub fn with_certificates(self, certified: Certified) -> Result<(AwaitWrites, Batch), Failure> {
        let mut b = Batch::default();
        let mut written = Vec::new();
        for k in &self.keys {
            let Some((_, der)) = certified
                .certificates
                .iter()
                .find(|(slot, _)| *slot == k.slot)
            else {
                return Err(Failure::new(
                    FailureCode::CertificateMissing,
                    Step::WriteCertificates,
                    format!("no certificate for slot {:02X}", k.slot),
                ));
            };
            let tag = object::cert_for_slot(k.slot).ok_or_else(|| {
                Failure::new(
                    FailureCode::BadSlot,
                    Step::WriteCertificates,
                    format!("slot {:02X} has no certificate object", k.slot),
                )
            })?;
            let container = piv::cert_container(der, false);
            b.push(
                Step::WriteCertificate(k.slot),
                apdu(piv::put_data(tag, &container).extended(container.len() > 255)),
                OK,
                false,
            );
            written.push((tag, container));
        }
        let chuid = self.chuid(certified.chuid_signature)?.encode();
        b.push(
            Step::WriteChuid,
            apdu(piv::put_data(object::CHUID, &chuid).extended(chuid.len() > 255)),
            OK,
            false,
        );
        written.push((object::CHUID, chuid));
        let mut card_id = [0u8; 21];
        card_id[..16].copy_from_slice(&self.plan.chuid.guid);
        let ccc = piv::ccc(&card_id);
        b.push(
            Step::WriteCcc,
            apdu(piv::put_data(object::CCC, &ccc)),
            OK,
            false,
        );
        written.push((object::CCC, ccc));
        if let (DeviceType::C4000, Some(shared)) =
            (self.plan.device_type, self.plan.fido_pin_sharing)
        {
            b.push(
                Step::SetFidoPinSharing,
                apdu(CommandApdu::new(0x80, 0xE3, u8::from(shared), 0)),
                OK,
                false,
            );
        }
        if let Some(new) = &self.plan.new_management_key {
            let step = Step::ReplaceManagementKey;
            match self.plan.device_type {
                DeviceType::YubiKey5 => b.push(
                    step,
                    apdu(piv::yk_set_management_key(
                        new.algorithm.id(),
                        new.bytes(),
                        false,
                    )),
                    OK,
                    true,
                ),
                DeviceType::C4000 => {
                    let mut data = vec![
                        new.algorithm.id(),
                        key_ref::MANAGEMENT,
                        new.bytes().len() as u8,
                    ];
                    data.extend_from_slice(new.bytes());
                    b.push(
                        step,
                        apdu(CommandApdu::new(0x80, 0xE1, 0, 0).with_data(data)),
                        OK,
                        true,
                    )
                }
                DeviceType::Piv => {
                    return Err(Failure::new(
                        FailureCode::NotSupported,
                        step,
                        "a generic PIV card keeps its management key",
                    ))
                }
            }
        }
        if let Some(final_pin) = &self.plan.final_pin {
            // The person's own PIN replaces the generated one, last of all
            // the changes (the read-back needs no PIN).
            b.push(
                Step::SetNewPin,
                pin_cmd(
                    piv::change_reference_data(
                        key_ref::PIN,
                        self.plan.new_pin.expose().as_bytes(),
                        final_pin.expose().as_bytes(),
                    ),
                    Step::SetNewPin,
                )?,
                OK,
                true,
            );
        }
        for (tag, _) in &written {
            b.push(
                Step::ReadBack,
                apdu(piv::get_data(*tag).extended(true).with_le(65536)),
                OK,
                false,
            );
        }
        let certificates = self
            .keys
            .iter()
            .filter_map(|k| {
                certified
                    .certificates
                    .iter()
                    .find(|(s, _)| *s == k.slot)
                    .cloned()
            })
            .collect();
        Ok((
            AwaitWrites {
                plan: self.plan,
                sent: b.clone(),
                written,
                certificates,
                counters: self.counters,
            },
            b,
        ))
    }
}

/// Batch 3 is out: writes, the new management key, read-back.
#[derive(Debug, Serialize, Deserialize)]
pub struct AwaitWrites {
    plan: PivPlan,
    sent: Batch,
    #[serde(with = "crate::b64::keyed")]
    written: Vec<(u32, Vec<u8>)>,
    #[serde(with = "crate::b64::keyed")]
    certificates: Vec<(u8, Vec<u8>)>,
    counters: Counters,
}

/// The device is personalised.
#[derive(Debug, Serialize, Deserialize)]
pub struct Personalised {
    #[serde(with = "crate::b64::keyed")]
    pub certificates: Vec<(u8, Vec<u8>)>,
    pub counters: Counters,
}

impl AwaitWrites {
    pub fn on_responses(mut self, responses: &[Response]) -> Result<Personalised, Failure> {
        let responses = check(&self.sent, responses)?;
        self.counters.count(&self.sent, responses);
        let reads = &responses[responses.len() - self.written.len()..];
        for ((tag, value), r) in self.written.iter().zip(reads) {
            let got = keyward_card::tlv::find(&r.data, 0x53).unwrap_or(&[]);
            if got != value.as_slice() {
                return Err(Failure::new(
                    FailureCode::ReadBackMismatch,
                    Step::ReadBack,
                    format!("object {tag:06X} reads back different from what was written"),
                ));
            }
        }
        Ok(Personalised {
            certificates: self.certificates,
            counters: self.counters,
        })
    }
}

/// The DER of a certificate, for callers that only have the parsed form.
pub fn der_of(cert: &impl Encode) -> Vec<u8> {
    cert.to_der().unwrap_or_default()
}
