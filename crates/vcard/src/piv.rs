//! The PIV applet (NIST SP 800-73-4 part 2): state, security status and the
//! standard commands. Profile-specific instructions (YubiKey extensions,
//! C4000 vendor commands) are handed to the [`Profile`](crate::profile::Profile).

use crate::keys::{ct_eq, hex_bytes, KeyError, ManagementKey, SlotKey, StoredKeyMaterial};
use crate::profile::Profile;
use keyward_card::apdu::{sw, CommandApdu, ResponseApdu};
use keyward_card::piv::{self, alg, dyn_auth, ins, key_ref, object, policy, slot};
use keyward_card::tlv;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

pub const DEFAULT_PIN: &[u8] = b"123456";
pub const DEFAULT_PUK: &[u8] = b"12345678";
pub const DEFAULT_MANAGEMENT_KEY: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];
pub const DEFAULT_TRIES: u8 = 3;
/// Largest data object the card stores (YubiKey: about 3 KB per object).
pub const MAX_OBJECT_SIZE: usize = 3072 + 64;

/// A PIN or PUK with its retry counter.
#[derive(Clone, Serialize, Deserialize)]
pub struct ReferenceData {
    #[serde(with = "hex_bytes")]
    pub value: Vec<u8>,
    pub tries_total: u8,
    pub tries_left: u8,
    pub is_default: bool,
}

impl ReferenceData {
    pub fn new(value: &[u8], tries: u8) -> Self {
        ReferenceData {
            value: value.to_vec(),
            tries_total: tries,
            tries_left: tries,
            is_default: true,
        }
    }
    pub fn blocked(&self) -> bool {
        self.tries_left == 0
    }
    /// Compare, counting a failure; `Err(sw)` says why it failed.
    pub fn check(&mut self, candidate: &[u8]) -> Result<(), u16> {
        if self.blocked() {
            return Err(sw::AUTH_METHOD_BLOCKED);
        }
        if ct_eq(&self.value, candidate) {
            self.tries_left = self.tries_total;
            Ok(())
        } else {
            self.tries_left -= 1;
            Err(sw::verify_failed(self.tries_left))
        }
    }
    pub fn set(&mut self, value: &[u8], is_default: bool) {
        self.value = value.to_vec();
        self.tries_left = self.tries_total;
        self.is_default = is_default;
    }
}

/// A key in a slot and its policies.
#[derive(Clone, Serialize, Deserialize)]
pub struct SlotEntry {
    pub material: StoredKeyMaterial,
    pub algorithm: u8,
    pub pin_policy: u8,
    pub touch_policy: u8,
    /// 1 generated on the card, 2 imported (YubiKey metadata).
    pub origin: u8,
}

/// Everything the PIV applet keeps across power cycles (the `--state` file).
#[derive(Clone, Serialize, Deserialize)]
pub struct PivState {
    pub pin: ReferenceData,
    pub puk: ReferenceData,
    pub management_key: ManagementKey,
    pub management_key_is_default: bool,
    pub keys: BTreeMap<u8, SlotEntry>,
    /// Object content: the value of tag 53, or the whole TLV for 7E and 7F61.
    pub objects: BTreeMap<u32, ObjectValue>,
    /// C4000: one PIN for PIV and FIDO.
    #[serde(default)]
    pub pin_shared_with_fido: bool,
    /// YubiKey attestation key (slot F9); its certificate is object 5FFF01.
    pub attestation_key: Option<StoredKeyMaterial>,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct ObjectValue(#[serde(with = "hex_bytes")] pub Vec<u8>);

impl PivState {
    pub fn factory(profile: &dyn Profile) -> PivState {
        let mgmt_alg = profile.factory_management_algorithm();
        let mut objects = BTreeMap::new();
        for (tag, value) in profile.factory_objects() {
            objects.insert(tag, ObjectValue(value));
        }
        PivState {
            pin: ReferenceData::new(DEFAULT_PIN, DEFAULT_TRIES),
            puk: ReferenceData::new(DEFAULT_PUK, DEFAULT_TRIES),
            management_key: ManagementKey::new(mgmt_alg, &DEFAULT_MANAGEMENT_KEY)
                .expect("default key is 24 bytes"),
            management_key_is_default: true,
            keys: BTreeMap::new(),
            objects,
            pin_shared_with_fido: false,
            attestation_key: None,
        }
    }
}

/// Pending management-key authentication.
#[derive(Clone)]
enum MgmtPending {
    /// Mutual: the card sent this witness encrypted; the host must return it in clear.
    Witness(Vec<u8>),
    /// Single: the card sent this challenge; the host must return it encrypted.
    Challenge(Vec<u8>),
}

/// Security status: lost at power-off.
#[derive(Clone, Default)]
pub struct PivSession {
    pub pin_verified: bool,
    /// VERIFY succeeded and no PIN-always key has been used since.
    pub pin_fresh: bool,
    pub management_authenticated: bool,
    pending: Option<MgmtPending>,
    /// C4000 offline unblock: the challenge handed out (one answer, lost at
    /// power-off like the rest of the session).
    pub unblock_challenge: Option<Vec<u8>>,
}

/// The PIV applet.
pub struct PivApplet {
    pub state: PivState,
    pub session: PivSession,
    keys: HashMap<u8, SlotKey>,
    dirty: bool,
}

pub(crate) fn status(sw: u16) -> ResponseApdu {
    ResponseApdu::status(sw)
}

pub(crate) fn ok(data: Vec<u8>) -> ResponseApdu {
    ResponseApdu::success(data)
}

impl PivApplet {
    pub fn new(state: PivState) -> Self {
        PivApplet {
            state,
            session: PivSession::default(),
            keys: HashMap::new(),
            dirty: false,
        }
    }

    /// Whether persistent state changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    pub fn reset_security_status(&mut self) {
        self.session = PivSession::default();
    }

    /// The key in `slot`, loaded from state on first use.
    pub fn slot_key(&mut self, slot: u8) -> Option<&SlotKey> {
        if !self.keys.contains_key(&slot) {
            let entry = self.state.keys.get(&slot)?;
            let key = SlotKey::from_stored(&entry.material)?;
            self.keys.insert(slot, key);
        }
        self.keys.get(&slot)
    }

    pub fn store_key(
        &mut self,
        slot: u8,
        key: SlotKey,
        pin_policy: u8,
        touch_policy: u8,
        origin: u8,
    ) {
        let pin_policy = if pin_policy == policy::PIN_DEFAULT {
            policy::default_pin_policy(slot)
        } else {
            pin_policy
        };
        self.state.keys.insert(
            slot,
            SlotEntry {
                material: key.to_stored(),
                algorithm: key.algorithm(),
                pin_policy,
                touch_policy,
                origin,
            },
        );
        self.keys.insert(slot, key);
        self.dirty = true;
    }

    pub fn attestation_key(&self) -> Option<SlotKey> {
        self.state
            .attestation_key
            .as_ref()
            .and_then(SlotKey::from_stored)
    }

    /// Forget the cached parsed keys (after a reset).
    pub fn clear_key_cache(&mut self) {
        self.keys.clear();
    }

    /// Handle one (complete, de-chained) command APDU.
    pub fn process(&mut self, profile: &dyn Profile, apdu: &CommandApdu) -> ResponseApdu {
        if apdu.cla & 0x80 != 0 {
            // Proprietary class: only vendor commands of the profile.
            return profile
                .extension(self, apdu)
                .unwrap_or_else(|| status(sw::CLA_NOT_SUPPORTED));
        }
        match apdu.ins {
            ins::SELECT => ok(profile.application_property_template()),
            ins::GET_DATA => self.get_data(apdu),
            ins::PUT_DATA => self.put_data(apdu),
            ins::VERIFY => self.verify(profile, apdu),
            ins::CHANGE_REFERENCE_DATA => self.change_reference_data(profile, apdu),
            ins::RESET_RETRY_COUNTER => self.reset_retry_counter(profile, apdu),
            ins::GENERAL_AUTHENTICATE => self.general_authenticate(apdu),
            ins::GENERATE_ASYMMETRIC_KEY_PAIR => self.generate(profile, apdu),
            _ => profile
                .extension(self, apdu)
                .unwrap_or_else(|| status(sw::INS_NOT_SUPPORTED)),
        }
    }

    fn get_data(&mut self, apdu: &CommandApdu) -> ResponseApdu {
        if (apdu.p1, apdu.p2) != (0x3F, 0xFF) {
            return status(sw::INCORRECT_P1P2);
        }
        let tag = match tlv::parse_one(&apdu.data) {
            Ok((t, rest))
                if t.tag == 0x5C && rest.is_empty() && (1..=3).contains(&t.value.len()) =>
            {
                t.value
                    .iter()
                    .fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
            }
            _ => return status(sw::INCORRECT_DATA),
        };
        if !object::is_known(tag) {
            return status(sw::FILE_NOT_FOUND);
        }
        if needs_pin_to_read(tag) && !self.session.pin_verified {
            return status(sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        match self.state.objects.get(&tag) {
            None => status(sw::FILE_NOT_FOUND),
            Some(v) if is_self_tagged(tag) => ok(v.0.clone()),
            Some(v) => ok(tlv::encode(0x53, &v.0)),
        }
    }

    fn put_data(&mut self, apdu: &CommandApdu) -> ResponseApdu {
        if (apdu.p1, apdu.p2) != (0x3F, 0xFF) {
            return status(sw::INCORRECT_P1P2);
        }
        if !self.session.management_authenticated {
            return status(sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        let Ok((first, rest)) = tlv::parse_one(&apdu.data) else {
            return status(sw::INCORRECT_DATA);
        };
        let (tag, value) = match first.tag {
            0x5C if (1..=3).contains(&first.value.len()) => {
                let tag = first
                    .value
                    .iter()
                    .fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
                match tlv::parse_one(rest) {
                    Ok((v, tail)) if v.tag == 0x53 && tail.is_empty() => (tag, v.value.to_vec()),
                    _ => return status(sw::INCORRECT_DATA),
                }
            }
            t if is_self_tagged(t) && rest.is_empty() => (t, apdu.data.clone()),
            _ => return status(sw::INCORRECT_DATA),
        };
        if !object::is_known(tag) || is_self_tagged(tag) != is_self_tagged(first.tag) {
            return status(sw::INCORRECT_DATA);
        }
        if value.len() > MAX_OBJECT_SIZE {
            return status(sw::NOT_ENOUGH_MEMORY);
        }
        if value.is_empty() {
            // An empty 53 deletes the object (as YubiKeys do).
            self.state.objects.remove(&tag);
        } else {
            self.state.objects.insert(tag, ObjectValue(value));
        }
        self.dirty = true;
        ok(Vec::new())
    }

    /// Check a padded 8-byte reference data block: padding and length.
    /// A PIN block (8 bytes, FF-padded) the device's PIN limits allow.
    pub(crate) fn unpad_checked(profile: &dyn Profile, block: &[u8]) -> Option<Vec<u8>> {
        if block.len() != 8 {
            return None;
        }
        let value = piv::unpad_pin(block);
        if block[value.len()..].iter().any(|&b| b != 0xFF) {
            return None;
        }
        profile
            .pin_length()
            .contains(&value.len())
            .then(|| value.to_vec())
    }

    fn verify(&mut self, _profile: &dyn Profile, apdu: &CommandApdu) -> ResponseApdu {
        if apdu.p2 != key_ref::PIN {
            return status(sw::REFERENCE_DATA_NOT_FOUND);
        }
        match apdu.p1 {
            0xFF if apdu.data.is_empty() => {
                self.session.pin_verified = false;
                self.session.pin_fresh = false;
                return ok(Vec::new());
            }
            0x00 => {}
            _ => return status(sw::INCORRECT_P1P2),
        }
        if apdu.data.is_empty() {
            // Status query: no attempt is counted.
            return status(if self.state.pin.blocked() {
                sw::AUTH_METHOD_BLOCKED
            } else if self.session.pin_verified {
                sw::SUCCESS
            } else {
                sw::verify_failed(self.state.pin.tries_left)
            });
        }
        if apdu.data.len() != 8 {
            return status(sw::INCORRECT_DATA);
        }
        if self.state.pin.blocked() {
            return status(sw::AUTH_METHOD_BLOCKED);
        }
        let candidate = piv::unpad_pin(&apdu.data).to_vec();
        let before = self.state.pin.tries_left;
        let result = self.state.pin.check(&candidate);
        if self.state.pin.tries_left != before {
            self.dirty = true;
        }
        match result {
            Ok(()) => {
                if before != self.state.pin.tries_total {
                    self.dirty = true;
                }
                self.session.pin_verified = true;
                self.session.pin_fresh = true;
                ok(Vec::new())
            }
            Err(code) => {
                self.session.pin_verified = false;
                self.session.pin_fresh = false;
                status(code)
            }
        }
    }

    fn change_reference_data(&mut self, profile: &dyn Profile, apdu: &CommandApdu) -> ResponseApdu {
        if apdu.p1 != 0 {
            return status(sw::INCORRECT_P1P2);
        }
        if apdu.p2 != key_ref::PIN && apdu.p2 != key_ref::PUK {
            return status(sw::REFERENCE_DATA_NOT_FOUND);
        }
        if apdu.data.len() != 16 {
            return status(sw::INCORRECT_DATA);
        }
        let is_pin = apdu.p2 == key_ref::PIN;
        let reference = if is_pin {
            &mut self.state.pin
        } else {
            &mut self.state.puk
        };
        if reference.blocked() {
            return status(sw::AUTH_METHOD_BLOCKED);
        }
        let old = piv::unpad_pin(&apdu.data[..8]).to_vec();
        let Some(new) = Self::unpad_checked(profile, &apdu.data[8..]) else {
            return status(sw::INCORRECT_DATA);
        };
        self.dirty = true;
        if let Err(code) = reference.check(&old) {
            if is_pin {
                self.session.pin_verified = false;
                self.session.pin_fresh = false;
            }
            return status(code);
        }
        reference.set(&new, false);
        if is_pin {
            self.session.pin_verified = true;
            self.session.pin_fresh = true;
        }
        ok(Vec::new())
    }

    fn reset_retry_counter(&mut self, profile: &dyn Profile, apdu: &CommandApdu) -> ResponseApdu {
        if apdu.p1 != 0 {
            return status(sw::INCORRECT_P1P2);
        }
        if apdu.p2 != key_ref::PIN {
            return status(sw::REFERENCE_DATA_NOT_FOUND);
        }
        if apdu.data.len() != 16 {
            return status(sw::INCORRECT_DATA);
        }
        if self.state.puk.blocked() {
            return status(sw::AUTH_METHOD_BLOCKED);
        }
        let puk = piv::unpad_pin(&apdu.data[..8]).to_vec();
        let Some(new_pin) = Self::unpad_checked(profile, &apdu.data[8..]) else {
            return status(sw::INCORRECT_DATA);
        };
        self.dirty = true;
        if let Err(code) = self.state.puk.check(&puk) {
            return status(code);
        }
        self.state.pin.set(&new_pin, false);
        ok(Vec::new())
    }

    fn general_authenticate(&mut self, apdu: &CommandApdu) -> ResponseApdu {
        let Ok(inner) = tlv::expect(&apdu.data, dyn_auth::TEMPLATE) else {
            return status(sw::INCORRECT_DATA);
        };
        let Ok(items) = tlv::parse_all(inner) else {
            return status(sw::INCORRECT_DATA);
        };
        let get = |tag: u32| items.iter().find(|t| t.tag == tag).map(|t| t.value);
        let (witness, challenge, response, exponentiation) = (
            get(dyn_auth::WITNESS),
            get(dyn_auth::CHALLENGE),
            get(dyn_auth::RESPONSE),
            get(dyn_auth::EXPONENTIATION),
        );
        if apdu.p2 == key_ref::MANAGEMENT {
            return self.management_authenticate(apdu.p1, witness, challenge, response);
        }
        if !slot::is_asymmetric(apdu.p2) {
            return status(sw::INCORRECT_P1P2);
        }
        let slot = apdu.p2;
        let Some(entry) = self.state.keys.get(&slot) else {
            return status(sw::INCORRECT_DATA);
        };
        if entry.algorithm != apdu.p1 {
            return status(sw::INCORRECT_P1P2);
        }
        let pin_ok = match entry.pin_policy {
            policy::PIN_NEVER => true,
            policy::PIN_ALWAYS => self.session.pin_fresh,
            _ => self.session.pin_verified,
        };
        if !pin_ok {
            return status(sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        let always = entry.pin_policy == policy::PIN_ALWAYS;
        if response != Some(&[][..]) {
            return status(sw::INCORRECT_DATA);
        }
        let Some(key) = self.slot_key(slot) else {
            return status(sw::MEMORY_FAILURE);
        };
        let result = match (challenge, exponentiation) {
            (Some(input), None) => key.sign_or_decrypt(input),
            (None, Some(point)) => key.ecdh(point),
            _ => return status(sw::INCORRECT_DATA),
        };
        if always {
            self.session.pin_fresh = false;
        }
        match result {
            Ok(out) => ok(tlv::encode(
                dyn_auth::TEMPLATE,
                &tlv::encode(dyn_auth::RESPONSE, &out),
            )),
            Err(KeyError::BadInput) => status(sw::INCORRECT_DATA),
            Err(KeyError::Unsupported) => status(sw::CONDITIONS_NOT_SATISFIED),
        }
    }

    fn management_authenticate(
        &mut self,
        algorithm: u8,
        witness: Option<&[u8]>,
        challenge: Option<&[u8]>,
        response: Option<&[u8]>,
    ) -> ResponseApdu {
        let key = self.state.management_key.clone();
        if algorithm != key.algorithm {
            return status(sw::INCORRECT_P1P2);
        }
        let block = key.block_size();
        let pending = self.session.pending.take();
        self.session.management_authenticated = false;
        match (witness, challenge, response) {
            // Mutual authentication, step 1: the card's witness.
            (Some([]), None, None) => {
                let mut w = vec![0u8; block];
                OsRng.fill_bytes(&mut w);
                let encrypted = key.encrypt_block(&w);
                self.session.pending = Some(MgmtPending::Witness(w));
                ok(tlv::encode(
                    dyn_auth::TEMPLATE,
                    &tlv::encode(dyn_auth::WITNESS, &encrypted),
                ))
            }
            // Mutual authentication, step 2: decrypted witness and the host's challenge.
            (Some(w), Some(c), None | Some([])) if !w.is_empty() => {
                let Some(MgmtPending::Witness(expected)) = pending else {
                    return status(sw::CONDITIONS_NOT_SATISFIED);
                };
                if c.len() != block || !ct_eq(w, &expected) {
                    return status(sw::SECURITY_STATUS_NOT_SATISFIED);
                }
                self.session.management_authenticated = true;
                ok(tlv::encode(
                    dyn_auth::TEMPLATE,
                    &tlv::encode(dyn_auth::RESPONSE, &key.encrypt_block(c)),
                ))
            }
            // Single authentication, step 1: the card's challenge.
            (None, Some([]), None) => {
                let mut c = vec![0u8; block];
                OsRng.fill_bytes(&mut c);
                self.session.pending = Some(MgmtPending::Challenge(c.clone()));
                ok(tlv::encode(
                    dyn_auth::TEMPLATE,
                    &tlv::encode(dyn_auth::CHALLENGE, &c),
                ))
            }
            // Single authentication, step 2: the host's encryption of it.
            (None, None, Some(r)) if !r.is_empty() => {
                let Some(MgmtPending::Challenge(c)) = pending else {
                    return status(sw::CONDITIONS_NOT_SATISFIED);
                };
                if !ct_eq(r, &key.encrypt_block(&c)) {
                    return status(sw::SECURITY_STATUS_NOT_SATISFIED);
                }
                self.session.management_authenticated = true;
                ok(Vec::new())
            }
            _ => status(sw::INCORRECT_DATA),
        }
    }

    fn generate(&mut self, profile: &dyn Profile, apdu: &CommandApdu) -> ResponseApdu {
        if apdu.p1 != 0 {
            return status(sw::INCORRECT_P1P2);
        }
        if !slot::is_asymmetric(apdu.p2) {
            return status(sw::INCORRECT_P1P2);
        }
        if !self.session.management_authenticated {
            return status(sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        let Ok(template) = tlv::expect(&apdu.data, 0xAC) else {
            return status(sw::INCORRECT_DATA);
        };
        let Some(&[algorithm]) = tlv::find(template, 0x80) else {
            return status(sw::INCORRECT_DATA);
        };
        let Some((pin_policy, touch_policy)) = parse_policies(template) else {
            return status(sw::INCORRECT_DATA);
        };
        if !profile.key_algorithms().contains(&algorithm) {
            return status(sw::INCORRECT_DATA);
        }
        let Ok(key) = SlotKey::generate(algorithm) else {
            return status(sw::INCORRECT_DATA);
        };
        let public = key.public_template().encode();
        self.store_key(apdu.p2, key, pin_policy, touch_policy, 1);
        ok(public)
    }
}

/// PIN and touch policies (tags AA, AB) of GENERATE / IMPORT.
pub(crate) fn parse_policies(template: &[u8]) -> Option<(u8, u8)> {
    let pin = match tlv::find(template, 0xAA) {
        None => policy::PIN_DEFAULT,
        Some(&[p]) if p <= policy::PIN_ALWAYS => p,
        _ => return None,
    };
    let touch = match tlv::find(template, 0xAB) {
        None => policy::TOUCH_DEFAULT,
        Some(&[t]) if t <= policy::TOUCH_CACHED => t,
        _ => return None,
    };
    Some((pin, touch))
}

/// Objects the standard protects with the PIN (biometrics, printed information).
fn needs_pin_to_read(tag: u32) -> bool {
    matches!(
        tag,
        object::FINGERPRINTS
            | object::FACIAL_IMAGE
            | object::PRINTED_INFORMATION
            | object::IRIS_IMAGES
    )
}

/// Objects stored and returned as their own TLV rather than inside tag 53.
fn is_self_tagged(tag: u32) -> bool {
    tag == object::DISCOVERY || tag == object::BIOMETRIC_GROUP_TEMPLATE
}

/// Whether an algorithm is a symmetric management key algorithm.
pub fn is_management_algorithm(a: u8) -> bool {
    alg::symmetric_sizes(a).is_some()
}
