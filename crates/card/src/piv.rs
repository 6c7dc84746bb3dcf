//! PIV (NIST SP 800-73-4, SP 800-78-4) constants, data objects and command
//! builders, plus the YubiKey PIV extensions (Yubico's published PIV
//! reference). Used by the virtual card and by Keyward's clients alike.

use crate::apdu::CommandApdu;
use crate::tlv::{self, TlvError};

/// PIV application identifier (NIST RID A000000308, PIX 00001000 0100).
pub const PIV_AID: [u8; 11] = [
    0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00,
];
/// The AID prefix clients may SELECT with (partial AID selection).
pub const PIV_AID_PREFIX: [u8; 5] = [0xA0, 0x00, 0x00, 0x03, 0x08];
/// The PIX part returned in the application property template (tag 4F).
pub const PIV_PIX: [u8; 6] = [0x00, 0x00, 0x10, 0x00, 0x01, 0x00];
/// FIDO application (CTAP over ISO 7816).
pub const FIDO_AID: [u8; 8] = [0xA0, 0x00, 0x00, 0x06, 0x47, 0x2F, 0x00, 0x01];
/// GlobalPlatform issuer security domain (card manager) AIDs.
pub const GP_ISD_AID: [u8; 8] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];
pub const GP_CARD_MANAGER_AID: [u8; 7] = [0xA0, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00];

/// Instructions (SP 800-73-4 part 2, ISO 7816-4).
pub mod ins {
    pub const SELECT: u8 = 0xA4;
    pub const GET_DATA: u8 = 0xCB;
    /// ISO GET DATA with odd/even INS used by GlobalPlatform (CPLC 9F7F).
    pub const GET_DATA_ISO: u8 = 0xCA;
    pub const PUT_DATA: u8 = 0xDB;
    pub const VERIFY: u8 = 0x20;
    pub const CHANGE_REFERENCE_DATA: u8 = 0x24;
    pub const RESET_RETRY_COUNTER: u8 = 0x2C;
    pub const GENERAL_AUTHENTICATE: u8 = 0x87;
    pub const GENERATE_ASYMMETRIC_KEY_PAIR: u8 = 0x47;
    pub const GET_RESPONSE: u8 = 0xC0;
    // YubiKey PIV extensions.
    pub const YK_SET_MANAGEMENT_KEY: u8 = 0xFF;
    pub const YK_IMPORT_KEY: u8 = 0xFE;
    pub const YK_GET_VERSION: u8 = 0xFD;
    pub const YK_RESET: u8 = 0xFB;
    pub const YK_SET_PIN_RETRIES: u8 = 0xFA;
    pub const YK_ATTEST: u8 = 0xF9;
    pub const YK_GET_SERIAL: u8 = 0xF8;
    pub const YK_GET_METADATA: u8 = 0xF7;
    /// MOVE KEY (firmware 5.7): P1 the destination slot, P2 the source.
    pub const YK_MOVE_KEY: u8 = 0xF6;
    // CTAP over ISO 7816.
    pub const CTAP_MSG: u8 = 0x10;
    pub const CTAP_GET_RESPONSE: u8 = 0x11;
}

/// Key references (SP 800-73-4 part 1, table 4).
pub mod key_ref {
    pub const GLOBAL_PIN: u8 = 0x00;
    pub const PIN: u8 = 0x80;
    pub const PUK: u8 = 0x81;
    pub const MANAGEMENT: u8 = 0x9B;
}

/// Key slots.
pub mod slot {
    pub const AUTHENTICATION: u8 = 0x9A;
    pub const MANAGEMENT: u8 = 0x9B;
    pub const SIGNATURE: u8 = 0x9C;
    pub const KEY_MANAGEMENT: u8 = 0x9D;
    pub const CARD_AUTHENTICATION: u8 = 0x9E;
    /// YubiKey attestation key.
    pub const ATTESTATION: u8 = 0xF9;
    pub const RETIRED_FIRST: u8 = 0x82;
    pub const RETIRED_LAST: u8 = 0x95;

    /// Slots holding an asymmetric key (the four standard ones and 20 retired).
    pub fn is_asymmetric(slot: u8) -> bool {
        matches!(
            slot,
            0x9A | 0x9C | 0x9D | 0x9E | RETIRED_FIRST..=RETIRED_LAST
        )
    }
}

/// Cryptographic mechanism identifiers (SP 800-78-4 table 6-2; Yubico).
pub mod alg {
    pub const TDES: u8 = 0x03;
    pub const RSA_1024: u8 = 0x06;
    pub const RSA_2048: u8 = 0x07;
    /// Yubico's identifier (firmware 5.7).
    pub const RSA_3072: u8 = 0x05;
    /// Yubico's identifier (firmware 5.7).
    pub const RSA_4096: u8 = 0x16;
    pub const AES_128: u8 = 0x08;
    pub const AES_192: u8 = 0x0A;
    pub const AES_256: u8 = 0x0C;
    pub const ECC_P256: u8 = 0x11;
    pub const ECC_P384: u8 = 0x14;

    /// RSA modulus size in bytes for an RSA identifier.
    pub fn rsa_bytes(alg: u8) -> Option<usize> {
        match alg {
            RSA_1024 => Some(128),
            RSA_2048 => Some(256),
            RSA_3072 => Some(384),
            RSA_4096 => Some(512),
            _ => None,
        }
    }

    /// Key length and block size of a symmetric (management key) identifier.
    pub fn symmetric_sizes(alg: u8) -> Option<(usize, usize)> {
        match alg {
            TDES => Some((24, 8)),
            AES_128 => Some((16, 16)),
            AES_192 => Some((24, 16)),
            AES_256 => Some((32, 16)),
            _ => None,
        }
    }
}

/// Data object tags (SP 800-73-4 part 1, table 3; Yubico).
pub mod object {
    pub const CARD_AUTHENTICATION_CERT: u32 = 0x5FC101;
    pub const CHUID: u32 = 0x5FC102;
    pub const FINGERPRINTS: u32 = 0x5FC103;
    pub const AUTHENTICATION_CERT: u32 = 0x5FC105;
    pub const SECURITY_OBJECT: u32 = 0x5FC106;
    pub const CCC: u32 = 0x5FC107;
    pub const FACIAL_IMAGE: u32 = 0x5FC108;
    pub const PRINTED_INFORMATION: u32 = 0x5FC109;
    pub const SIGNATURE_CERT: u32 = 0x5FC10A;
    pub const KEY_MANAGEMENT_CERT: u32 = 0x5FC10B;
    pub const KEY_HISTORY: u32 = 0x5FC10C;
    pub const RETIRED_CERT_FIRST: u32 = 0x5FC10D;
    pub const RETIRED_CERT_LAST: u32 = 0x5FC120;
    pub const IRIS_IMAGES: u32 = 0x5FC121;
    pub const SM_CERT_SIGNER: u32 = 0x5FC122;
    pub const PAIRING_CODE_REFERENCE: u32 = 0x5FC123;
    pub const DISCOVERY: u32 = 0x7E;
    pub const BIOMETRIC_GROUP_TEMPLATE: u32 = 0x7F61;
    /// YubiKey: admin data (protected management key flags).
    pub const YK_ADMIN_DATA: u32 = 0x5FFF00;
    /// YubiKey: attestation certificate (slot F9).
    pub const YK_ATTESTATION_CERT: u32 = 0x5FFF01;

    /// Whether `tag` names an object a PIV card stores.
    pub fn is_known(tag: u32) -> bool {
        matches!(
            tag,
            0x5FC101..=0x5FC123 | DISCOVERY | BIOMETRIC_GROUP_TEMPLATE
        ) || (0x5FFF00..=0x5FFF15).contains(&tag)
    }

    /// The certificate object of a key slot.
    pub fn cert_for_slot(slot: u8) -> Option<u32> {
        match slot {
            0x9A => Some(AUTHENTICATION_CERT),
            0x9C => Some(SIGNATURE_CERT),
            0x9D => Some(KEY_MANAGEMENT_CERT),
            0x9E => Some(CARD_AUTHENTICATION_CERT),
            0x82..=0x95 => Some(RETIRED_CERT_FIRST + u32::from(slot - 0x82)),
            0xF9 => Some(YK_ATTESTATION_CERT),
            _ => None,
        }
    }
}

/// YubiKey PIN and touch policies (tags AA and AB of GENERATE / IMPORT).
pub mod policy {
    pub const PIN_DEFAULT: u8 = 0x00;
    pub const PIN_NEVER: u8 = 0x01;
    pub const PIN_ONCE: u8 = 0x02;
    pub const PIN_ALWAYS: u8 = 0x03;
    pub const TOUCH_DEFAULT: u8 = 0x00;
    pub const TOUCH_NEVER: u8 = 0x01;
    pub const TOUCH_ALWAYS: u8 = 0x02;
    pub const TOUCH_CACHED: u8 = 0x03;

    /// The PIN policy a YubiKey gives a key generated with PIN_DEFAULT:
    /// always for Digital Signature (9C), never for Card Authentication
    /// (9E), once elsewhere. (TOUCH_DEFAULT is never, on every slot.)
    pub fn default_pin_policy(slot: u8) -> u8 {
        match slot {
            super::slot::SIGNATURE => PIN_ALWAYS,
            super::slot::CARD_AUTHENTICATION => PIN_NEVER,
            _ => PIN_ONCE,
        }
    }
}

/// Tags of the dynamic authentication template (tag 7C) of GENERAL AUTHENTICATE.
pub mod dyn_auth {
    pub const TEMPLATE: u32 = 0x7C;
    pub const WITNESS: u32 = 0x80;
    pub const CHALLENGE: u32 = 0x81;
    pub const RESPONSE: u32 = 0x82;
    pub const EXPONENTIATION: u32 = 0x85;
}

/// Pad a PIN or PUK to 8 bytes with 0xFF (SP 800-73-4 part 2, 3.2.1).
/// Returns `None` if longer than 8 bytes.
pub fn pad_pin(pin: &[u8]) -> Option<[u8; 8]> {
    if pin.len() > 8 {
        return None;
    }
    let mut out = [0xFF; 8];
    out[..pin.len()].copy_from_slice(pin);
    Some(out)
}

/// Strip the 0xFF padding of a reference data block.
pub fn unpad_pin(padded: &[u8]) -> &[u8] {
    let end = padded
        .iter()
        .position(|&b| b == 0xFF)
        .unwrap_or(padded.len());
    &padded[..end]
}

// ---------------------------------------------------------------------------
// Command builders (client side)
// ---------------------------------------------------------------------------

/// SELECT the PIV application.
pub fn select_piv() -> CommandApdu {
    CommandApdu::new(0x00, ins::SELECT, 0x04, 0x00)
        .with_data(PIV_AID.to_vec())
        .with_le(256)
}

/// SELECT any application by AID.
pub fn select_aid(aid: &[u8]) -> CommandApdu {
    CommandApdu::new(0x00, ins::SELECT, 0x04, 0x00)
        .with_data(aid.to_vec())
        .with_le(256)
}

/// VERIFY with a PIN (`key_ref` 80) or the global PIN (00). `None` asks the status.
pub fn verify(key_ref: u8, pin: Option<&[u8]>) -> Option<CommandApdu> {
    let apdu = CommandApdu::new(0x00, ins::VERIFY, 0x00, key_ref);
    match pin {
        None => Some(apdu),
        Some(pin) => Some(apdu.with_data(pad_pin(pin)?.to_vec())),
    }
}

/// VERIFY P1=FF: reset the PIN's security status.
pub fn verify_reset(key_ref: u8) -> CommandApdu {
    CommandApdu::new(0x00, ins::VERIFY, 0xFF, key_ref)
}

/// CHANGE REFERENCE DATA for the PIN (80) or PUK (81).
pub fn change_reference_data(key_ref: u8, old: &[u8], new: &[u8]) -> Option<CommandApdu> {
    let mut data = pad_pin(old)?.to_vec();
    data.extend_from_slice(&pad_pin(new)?);
    Some(CommandApdu::new(0x00, ins::CHANGE_REFERENCE_DATA, 0x00, key_ref).with_data(data))
}

/// RESET RETRY COUNTER: unblock the PIN with the PUK and set a new PIN.
pub fn reset_retry_counter(puk: &[u8], new_pin: &[u8]) -> Option<CommandApdu> {
    let mut data = pad_pin(puk)?.to_vec();
    data.extend_from_slice(&pad_pin(new_pin)?);
    Some(CommandApdu::new(0x00, ins::RESET_RETRY_COUNTER, 0x00, key_ref::PIN).with_data(data))
}

/// GENERAL AUTHENTICATE with a dynamic authentication template built from
/// `(tag, value)` pairs (an empty value asks the card for that element).
pub fn general_authenticate(algorithm: u8, key: u8, items: &[(u32, &[u8])]) -> CommandApdu {
    let mut inner = Vec::new();
    for (tag, value) in items {
        tlv::push(&mut inner, *tag, value);
    }
    CommandApdu::new(0x00, ins::GENERAL_AUTHENTICATE, algorithm, key)
        .with_data(tlv::encode(dyn_auth::TEMPLATE, &inner))
        .with_le(256)
}

/// GENERAL AUTHENTICATE asking the card to sign (or decrypt) `input` with a slot key.
pub fn sign(algorithm: u8, slot: u8, input: &[u8]) -> CommandApdu {
    general_authenticate(
        algorithm,
        slot,
        &[(dyn_auth::RESPONSE, &[]), (dyn_auth::CHALLENGE, input)],
    )
}

/// GENERAL AUTHENTICATE asking for ECDH with the peer's public point.
pub fn ecdh(algorithm: u8, slot: u8, peer_point: &[u8]) -> CommandApdu {
    general_authenticate(
        algorithm,
        slot,
        &[
            (dyn_auth::RESPONSE, &[]),
            (dyn_auth::EXPONENTIATION, peer_point),
        ],
    )
}

/// GENERATE ASYMMETRIC KEY PAIR, with optional YubiKey PIN/touch policies.
pub fn generate(algorithm: u8, slot: u8, pin_policy: u8, touch_policy: u8) -> CommandApdu {
    let mut inner = tlv::encode(0x80, &[algorithm]);
    if pin_policy != policy::PIN_DEFAULT {
        tlv::push(&mut inner, 0xAA, &[pin_policy]);
    }
    if touch_policy != policy::TOUCH_DEFAULT {
        tlv::push(&mut inner, 0xAB, &[touch_policy]);
    }
    CommandApdu::new(0x00, ins::GENERATE_ASYMMETRIC_KEY_PAIR, 0x00, slot)
        .with_data(tlv::encode(0xAC, &inner))
        .with_le(256)
}

/// The tag list `5C` naming a data object.
pub fn tag_list(tag: u32) -> Vec<u8> {
    let mut t = Vec::new();
    tlv::push_tag(&mut t, tag);
    tlv::encode(0x5C, &t)
}

/// GET DATA for a data object.
pub fn get_data(tag: u32) -> CommandApdu {
    CommandApdu::new(0x00, ins::GET_DATA, 0x3F, 0xFF)
        .with_data(tag_list(tag))
        .with_le(256)
}

/// PUT DATA of `value` (the content of tag 53) into object `tag`.
/// The discovery object and BIT group template are written as themselves.
pub fn put_data(tag: u32, value: &[u8]) -> CommandApdu {
    let data = if tag == object::DISCOVERY || tag == object::BIOMETRIC_GROUP_TEMPLATE {
        tlv::encode(tag, value)
    } else {
        let mut d = tag_list(tag);
        tlv::push(&mut d, 0x53, value);
        d
    };
    CommandApdu::new(0x00, ins::PUT_DATA, 0x3F, 0xFF).with_data(data)
}

/// YubiKey GET VERSION.
pub fn yk_get_version() -> CommandApdu {
    CommandApdu::new(0x00, ins::YK_GET_VERSION, 0, 0).with_le(256)
}

/// YubiKey GET SERIAL.
pub fn yk_get_serial() -> CommandApdu {
    CommandApdu::new(0x00, ins::YK_GET_SERIAL, 0, 0).with_le(256)
}

/// YubiKey SET MANAGEMENT KEY.
pub fn yk_set_management_key(algorithm: u8, key: &[u8], require_touch: bool) -> CommandApdu {
    let mut data = vec![algorithm];
    tlv::push(&mut data, u32::from(key_ref::MANAGEMENT), key);
    CommandApdu::new(
        0x00,
        ins::YK_SET_MANAGEMENT_KEY,
        0xFF,
        if require_touch { 0xFE } else { 0xFF },
    )
    .with_data(data)
}

/// YubiKey SET PIN RETRIES.
pub fn yk_set_pin_retries(pin_tries: u8, puk_tries: u8) -> CommandApdu {
    CommandApdu::new(0x00, ins::YK_SET_PIN_RETRIES, pin_tries, puk_tries)
}

/// YubiKey RESET (PIV application).
pub fn yk_reset() -> CommandApdu {
    CommandApdu::new(0x00, ins::YK_RESET, 0, 0)
}

/// YubiKey ATTEST for a slot.
pub fn yk_attest(slot: u8) -> CommandApdu {
    CommandApdu::new(0x00, ins::YK_ATTEST, slot, 0).with_le(256)
}

/// YubiKey GET METADATA for a slot or a key reference (80, 81, 9B).
pub fn yk_get_metadata(key: u8) -> CommandApdu {
    CommandApdu::new(0x00, ins::YK_GET_METADATA, 0, key).with_le(256)
}

/// YubiKey MOVE KEY (firmware 5.7): the key in `from` moves to `to` (a
/// retired slot keeps an old Key Management key that still decrypts mail).
pub fn yk_move_key(to: u8, from: u8) -> CommandApdu {
    CommandApdu::new(0x00, ins::YK_MOVE_KEY, to, from)
}

/// YubiKey IMPORT KEY of an EC private scalar.
pub fn yk_import_ec_key(algorithm: u8, slot: u8, scalar: &[u8]) -> CommandApdu {
    CommandApdu::new(0x00, ins::YK_IMPORT_KEY, algorithm, slot).with_data(tlv::encode(0x06, scalar))
}

/// YubiKey IMPORT KEY of an RSA key from its CRT components.
pub fn yk_import_rsa_key(
    algorithm: u8,
    slot: u8,
    p: &[u8],
    q: &[u8],
    dp: &[u8],
    dq: &[u8],
    qinv: &[u8],
) -> CommandApdu {
    let mut data = Vec::new();
    for (tag, v) in [(1u32, p), (2, q), (3, dp), (4, dq), (5, qinv)] {
        tlv::push(&mut data, tag, v);
    }
    CommandApdu::new(0x00, ins::YK_IMPORT_KEY, algorithm, slot).with_data(data)
}

// ---------------------------------------------------------------------------
// Data objects
// ---------------------------------------------------------------------------

/// Application property template returned by SELECT (SP 800-73-4 part 2, 3.1.1).
pub fn application_property_template(
    label: Option<&str>,
    url: Option<&str>,
    algorithms: &[u8],
) -> Vec<u8> {
    let mut inner = tlv::encode(0x4F, &PIV_PIX);
    tlv::push(&mut inner, 0x79, &tlv::encode(0x4F, &PIV_AID));
    if let Some(label) = label {
        tlv::push(&mut inner, 0x50, label.as_bytes());
    }
    if let Some(url) = url {
        tlv::push(&mut inner, 0x5F50, url.as_bytes());
    }
    let mut algs = Vec::new();
    for a in algorithms {
        tlv::push(&mut algs, 0x80, &[*a]);
    }
    tlv::push(&mut algs, 0x06, &[]);
    tlv::push(&mut inner, 0xAC, &algs);
    tlv::encode(0x61, &inner)
}

/// Discovery object (tag 7E): PIV AID and PIN usage policy.
/// `pin_usage_policy` first byte: 0x40 PIV PIN only, 0x60 PIV PIN + global PIN.
pub fn discovery_object(pin_usage_policy: [u8; 2]) -> Vec<u8> {
    let mut inner = tlv::encode(0x4F, &PIV_AID);
    tlv::push(&mut inner, 0x5F2F, &pin_usage_policy);
    tlv::encode(object::DISCOVERY, &inner)
}

/// Parsed discovery object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    pub aid: Vec<u8>,
    pub pin_usage_policy: Vec<u8>,
}

pub fn parse_discovery_object(data: &[u8]) -> Result<Discovery, TlvError> {
    let inner = tlv::expect(data, object::DISCOVERY)?;
    Ok(Discovery {
        aid: tlv::find(inner, 0x4F).ok_or(TlvError::Truncated)?.to_vec(),
        pin_usage_policy: tlv::find(inner, 0x5F2F).unwrap_or_default().to_vec(),
    })
}

/// Card Holder Unique Identifier (content of tag 53).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chuid {
    /// FASC-N, 25 bytes (agency code 9999 for non-federal issuers).
    pub fascn: Vec<u8>,
    /// 16-byte GUID.
    pub guid: [u8; 16],
    /// Expiration date "YYYYMMDD".
    pub expiration: [u8; 8],
    /// Issuer asymmetric signature (CMS), may be empty.
    pub signature: Vec<u8>,
}

impl Chuid {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = tlv::encode(0x30, &self.fascn);
        tlv::push(&mut out, 0x34, &self.guid);
        tlv::push(&mut out, 0x35, &self.expiration);
        tlv::push(&mut out, 0x3E, &self.signature);
        tlv::push(&mut out, 0xFE, &[]);
        out
    }

    pub fn parse(data: &[u8]) -> Result<Chuid, TlvError> {
        let guid = tlv::find(data, 0x34).ok_or(TlvError::Truncated)?;
        let exp = tlv::find(data, 0x35).unwrap_or(b"99991231");
        Ok(Chuid {
            fascn: tlv::find(data, 0x30).unwrap_or_default().to_vec(),
            guid: guid.try_into().map_err(|_| TlvError::BadLength)?,
            expiration: exp.try_into().map_err(|_| TlvError::BadLength)?,
            signature: tlv::find(data, 0x3E).unwrap_or_default().to_vec(),
        })
    }
}

/// FASC-N for a non-federal issuer (agency code 9999), BCD-encoded per TIG SCEPACS:
/// agency 9999, system 9999, credential number from `credential` (6 digits).
pub fn non_federal_fascn(credential: u32) -> Vec<u8> {
    // 5-bit characters: 4 data bits (LSB first) + odd parity; SS=11010, FS=10110, ES=11111.
    fn digit(d: u8) -> u8 {
        let bits = d & 0x0F;
        let parity = if bits.count_ones() & 1 == 0 { 1 } else { 0 };
        let rev = (0..4).fold(0u8, |acc, i| acc | (((bits >> i) & 1) << (3 - i)));
        (rev << 1) | parity
    }
    const SS: u8 = 0b11010;
    const FS: u8 = 0b10110;
    const ES: u8 = 0b11111;
    let cred = format!("{:06}", credential % 1_000_000);
    let mut chars = vec![SS];
    let fields: [&str; 7] = ["9999", "9999", &cred, "1", "1", "0000000000", "1"];
    // agency, system, credential, CS, ICI, then PI (10 digits), OC/OI/POA.
    for (i, f) in fields.iter().enumerate() {
        for c in f.bytes() {
            chars.push(digit(c - b'0'));
        }
        if i < 4 {
            chars.push(FS);
        }
        if i == 4 {
            chars.push(FS);
        }
    }
    // Organisational category/identifier and association category.
    for c in b"99991" {
        chars.push(digit(c - b'0'));
    }
    chars.push(ES);
    // LRC: XOR of all characters' data bits, with its own parity.
    let lrc_bits = chars.iter().fold(0u8, |acc, c| acc ^ (c >> 1));
    let parity = if lrc_bits.count_ones() & 1 == 0 { 1 } else { 0 };
    chars.push((lrc_bits << 1) | parity);
    // Pack 5-bit characters into 25 bytes (40 chars x 5 bits = 200 bits).
    let mut bits: Vec<u8> = Vec::with_capacity(200);
    for c in &chars {
        for i in (0..5).rev() {
            bits.push((c >> i) & 1);
        }
    }
    bits.resize(200, 0);
    bits.chunks(8)
        .map(|b| b.iter().fold(0u8, |acc, bit| (acc << 1) | bit))
        .collect()
}

/// Card Capability Container (content of tag 53) with a 21-byte card identifier.
pub fn ccc(card_identifier: &[u8; 21]) -> Vec<u8> {
    let mut out = tlv::encode(0xF0, card_identifier);
    tlv::push(&mut out, 0xF1, &[0x21]); // container version
    tlv::push(&mut out, 0xF2, &[0x21]); // grammar version
    tlv::push(&mut out, 0xF3, &[]);
    tlv::push(&mut out, 0xF4, &[0x00]);
    tlv::push(&mut out, 0xF5, &[0x10]); // data model number (PIV)
    tlv::push(&mut out, 0xF6, &[]);
    tlv::push(&mut out, 0xF7, &[]);
    tlv::push(&mut out, 0xFA, &[]);
    tlv::push(&mut out, 0xFB, &[]);
    tlv::push(&mut out, 0xFC, &[]);
    tlv::push(&mut out, 0xFD, &[]);
    tlv::push(&mut out, 0xFE, &[]);
    out
}

/// The card identifier (tag F0) of a CCC.
pub fn parse_ccc_card_identifier(data: &[u8]) -> Option<&[u8]> {
    tlv::find(data, 0xF0)
}

/// Certificate container (content of tag 53): 70 certificate, 71 CertInfo, FE.
pub fn cert_container(cert_der: &[u8], gzip_compressed: bool) -> Vec<u8> {
    let mut out = tlv::encode(0x70, cert_der);
    tlv::push(&mut out, 0x71, &[u8::from(gzip_compressed)]);
    tlv::push(&mut out, 0xFE, &[]);
    out
}

/// Parsed certificate container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertContainer {
    pub certificate: Vec<u8>,
    pub gzip_compressed: bool,
}

pub fn parse_cert_container(data: &[u8]) -> Result<CertContainer, TlvError> {
    let cert = tlv::find(data, 0x70).ok_or(TlvError::Truncated)?;
    let info = tlv::find(data, 0x71).unwrap_or(&[0]);
    Ok(CertContainer {
        certificate: cert.to_vec(),
        gzip_compressed: info.first().is_some_and(|b| b & 1 == 1),
    })
}

/// Key history object (content of tag 53).
pub fn key_history(on_card: u8, off_card: u8, off_card_url: Option<&str>) -> Vec<u8> {
    let mut out = tlv::encode(0xC1, &[on_card]);
    tlv::push(&mut out, 0xC2, &[off_card]);
    if let Some(url) = off_card_url {
        tlv::push(&mut out, 0xF3, url.as_bytes());
    }
    tlv::push(&mut out, 0xFE, &[]);
    out
}

/// `(on_card, off_card, url)` of a key history object.
pub fn parse_key_history(data: &[u8]) -> Option<(u8, u8, Option<String>)> {
    let on = *tlv::find(data, 0xC1)?.first()?;
    let off = *tlv::find(data, 0xC2)?.first()?;
    let url = tlv::find(data, 0xF3).map(|u| String::from_utf8_lossy(u).into_owned());
    Some((on, off, url))
}

/// Printed information (content of tag 53).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrintedInformation {
    pub name: String,
    pub employee_affiliation: String,
    /// "YYYYMMMDD" as in the standard (e.g. 2030DEC31).
    pub expiration_date: String,
    pub agency_card_serial: String,
    pub issuer_identification: String,
    pub organization_affiliation_1: String,
    pub organization_affiliation_2: String,
}

impl PrintedInformation {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (tag, v) in [
            (0x01u32, &self.name),
            (0x02, &self.employee_affiliation),
            (0x04, &self.expiration_date),
            (0x05, &self.agency_card_serial),
            (0x06, &self.issuer_identification),
            (0x07, &self.organization_affiliation_1),
            (0x08, &self.organization_affiliation_2),
        ] {
            if !v.is_empty() || tag <= 0x06 {
                tlv::push(&mut out, tag, v.as_bytes());
            }
        }
        tlv::push(&mut out, 0xFE, &[]);
        out
    }

    pub fn parse(data: &[u8]) -> Result<PrintedInformation, TlvError> {
        let s = |tag| {
            tlv::find(data, tag)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        tlv::parse_all(data)?;
        Ok(PrintedInformation {
            name: s(0x01),
            employee_affiliation: s(0x02),
            expiration_date: s(0x04),
            agency_card_serial: s(0x05),
            issuer_identification: s(0x06),
            organization_affiliation_1: s(0x07),
            organization_affiliation_2: s(0x08),
        })
    }
}

/// Security object (content of tag 53): mapping of data group numbers to
/// container IDs (tag BA) and the signed LDS security object (tag BB).
pub fn security_object(mapping: &[u8], signed_lds: &[u8]) -> Vec<u8> {
    let mut out = tlv::encode(0xBA, mapping);
    tlv::push(&mut out, 0xBB, signed_lds);
    tlv::push(&mut out, 0xFE, &[]);
    out
}

/// `(mapping, signed LDS security object)` of a security object.
pub fn parse_security_object(data: &[u8]) -> Option<(&[u8], &[u8])> {
    Some((tlv::find(data, 0xBA)?, tlv::find(data, 0xBB)?))
}

/// A public key as returned by GENERATE (tag 7F49).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKeyTemplate {
    Rsa { modulus: Vec<u8>, exponent: Vec<u8> },
    Ec { point: Vec<u8> },
}

impl PublicKeyTemplate {
    /// The inner TLVs (81/82 or 86), as YubiKey metadata carries them.
    pub fn encode_inner(&self) -> Vec<u8> {
        match self {
            PublicKeyTemplate::Rsa { modulus, exponent } => {
                let mut inner = tlv::encode(0x81, modulus);
                tlv::push(&mut inner, 0x82, exponent);
                inner
            }
            PublicKeyTemplate::Ec { point } => tlv::encode(0x86, point),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        tlv::encode(0x7F49, &self.encode_inner())
    }

    /// Parse either the 7F49 template or its inner TLVs.
    pub fn parse(data: &[u8]) -> Result<PublicKeyTemplate, TlvError> {
        let inner = match tlv::parse_one(data)? {
            (t, _) if t.tag == 0x7F49 => t.value,
            _ => data,
        };
        if let Some(point) = tlv::find(inner, 0x86) {
            return Ok(PublicKeyTemplate::Ec {
                point: point.to_vec(),
            });
        }
        Ok(PublicKeyTemplate::Rsa {
            modulus: tlv::find(inner, 0x81).ok_or(TlvError::Truncated)?.to_vec(),
            exponent: tlv::find(inner, 0x82).ok_or(TlvError::Truncated)?.to_vec(),
        })
    }
}

/// Values of the response element (82) of a GENERAL AUTHENTICATE response.
pub fn parse_general_authenticate_response(data: &[u8], tag: u32) -> Option<&[u8]> {
    let inner = tlv::expect(data, dyn_auth::TEMPLATE).ok()?;
    tlv::find(inner, tag)
}

/// Firmware version from a YubiKey GET VERSION response.
pub fn parse_yk_version(data: &[u8]) -> Option<(u8, u8, u8)> {
    match data {
        [major, minor, patch] => Some((*major, *minor, *patch)),
        _ => None,
    }
}

/// Serial number from a YubiKey GET SERIAL response.
pub fn parse_yk_serial(data: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(data.try_into().ok()?))
}

/// A YubiKey GET METADATA response (firmware 5.3 and later).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct YkMetadata {
    /// Algorithm (tag 01); `FF` for PIN and PUK.
    pub algorithm: Option<u8>,
    /// PIN and touch policy (tag 02).
    pub policy: Option<(u8, u8)>,
    /// 1 generated on the device, 2 imported (tag 03).
    pub origin: Option<u8>,
    /// Public key, inner TLVs of 7F49 (tag 04).
    pub public_key: Option<PublicKeyTemplate>,
    /// Still the factory value (tag 05).
    pub is_default: Option<bool>,
    /// (total, remaining) tries (tag 06).
    pub retries: Option<(u8, u8)>,
}

impl YkMetadata {
    pub fn parse(data: &[u8]) -> Result<YkMetadata, TlvError> {
        let mut m = YkMetadata::default();
        for t in tlv::parse_all(data)? {
            match (t.tag, t.value) {
                (0x01, [a]) => m.algorithm = Some(*a),
                (0x02, [p, t]) => m.policy = Some((*p, *t)),
                (0x03, [o]) => m.origin = Some(*o),
                (0x04, v) => m.public_key = Some(PublicKeyTemplate::parse(v)?),
                (0x05, [d]) => m.is_default = Some(*d != 0),
                (0x06, [total, left]) => m.retries = Some((*total, *left)),
                _ => {}
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_pad_and_unpad() {
        assert_eq!(pad_pin(b"123456").unwrap(), *b"123456\xff\xff");
        assert_eq!(unpad_pin(b"123456\xff\xff"), b"123456");
        assert!(pad_pin(b"123456789").is_none());
    }

    #[test]
    fn builds_commands() {
        assert_eq!(
            get_data(object::CHUID).to_bytes(),
            vec![0, 0xCB, 0x3F, 0xFF, 5, 0x5C, 3, 0x5F, 0xC1, 0x02, 0]
        );
        assert_eq!(
            verify(key_ref::PIN, None).unwrap().to_bytes(),
            vec![0, 0x20, 0, 0x80]
        );
        let cr = change_reference_data(0x81, b"12345678", b"87654321").unwrap();
        assert_eq!(cr.data.len(), 16);
        let g = generate(alg::ECC_P256, slot::AUTHENTICATION, policy::PIN_ONCE, 0);
        assert_eq!(g.data, vec![0xAC, 6, 0x80, 1, 0x11, 0xAA, 1, 2]);
        let pd = put_data(object::DISCOVERY, &[1]);
        assert_eq!(pd.data, vec![0x7E, 1, 1]);
        let s = yk_set_management_key(alg::AES_192, &[0; 24], false);
        assert_eq!(&s.data[..3], &[0x0A, 0x9B, 24]);
        assert_eq!(
            sign(alg::ECC_P256, 0x9A, &[1; 32]).data[..4],
            [0x7C, 36, 0x82, 0]
        );
    }

    #[test]
    fn parses_yubikey_answers() {
        assert_eq!(parse_yk_version(&[5, 4, 3]), Some((5, 4, 3)));
        assert_eq!(parse_yk_version(&[5, 4]), None);
        assert_eq!(parse_yk_serial(&[0, 0x01, 0xE2, 0x40]), Some(123_456));
        assert_eq!(parse_yk_serial(&[1, 2, 3]), None);
        let mut data = tlv::encode(0x01, &[0xFF]);
        tlv::push(&mut data, 0x05, &[1]);
        tlv::push(&mut data, 0x06, &[3, 2]);
        tlv::push(&mut data, 0x04, &tlv::encode(0x86, &[4, 9]));
        let m = YkMetadata::parse(&data).unwrap();
        assert_eq!(m.algorithm, Some(0xFF));
        assert_eq!(m.is_default, Some(true));
        assert_eq!(m.retries, Some((3, 2)));
        assert_eq!(
            m.public_key,
            Some(PublicKeyTemplate::Ec { point: vec![4, 9] })
        );
        assert!(YkMetadata::parse(&[0x01, 5]).is_err());
    }

    #[test]
    fn objects_round_trip() {
        let c = Chuid {
            fascn: non_federal_fascn(42),
            guid: [7; 16],
            expiration: *b"20301231",
            signature: vec![],
        };
        assert_eq!(c.fascn.len(), 25);
        assert_eq!(Chuid::parse(&c.encode()).unwrap(), c);
        let cc = parse_cert_container(&cert_container(&[0x30, 0], false)).unwrap();
        assert_eq!(cc.certificate, vec![0x30, 0]);
        assert!(!cc.gzip_compressed);
        let d = parse_discovery_object(&discovery_object([0x40, 0x00])).unwrap();
        assert_eq!(d.aid, PIV_AID.to_vec());
        assert_eq!(
            parse_key_history(&key_history(1, 2, Some("http://x"))),
            Some((1, 2, Some("http://x".into())))
        );
        let p = PrintedInformation {
            name: "A B".into(),
            ..Default::default()
        };
        assert_eq!(PrintedInformation::parse(&p.encode()).unwrap(), p);
        assert_eq!(
            parse_security_object(&security_object(&[1], &[2])),
            Some((&[1u8][..], &[2u8][..]))
        );
        assert_eq!(
            parse_ccc_card_identifier(&ccc(&[3; 21])),
            Some(&[3u8; 21][..])
        );
        let k = PublicKeyTemplate::Ec { point: vec![4, 1] };
        assert_eq!(PublicKeyTemplate::parse(&k.encode()).unwrap(), k);
        let apt = application_property_template(Some("x"), None, &[alg::RSA_2048]);
        assert_eq!(apt[0], 0x61);
    }
}
