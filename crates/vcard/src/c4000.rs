//! The HID Crescendo C4000 profile: a contact smart card with PIV, FIDO2
//! over ISO 7816 and GlobalPlatform CPLC data.
//!
//! The real card changes its management key, its PIN/PUK retry counts and
//! its PIN sharing between PIV and FIDO through HID's proprietary (and
//! undisclosed) commands, and unblocks a PIN offline by a challenge-response
//! with its administration key (as the Windows minidriver does). The virtual
//! card offers five documented VENDOR commands of its own instead, in the proprietary class `80`; they stand in
//! for HID's, and a real implementation replaces this profile's
//! [`Profile::extension`] (see docs/vcard.md).

use crate::config::{Firmware, ProfileKind};
use crate::piv::{ok, status, PivApplet};
use crate::profile::{t1_atr, Profile};
use crate::yubikey::parse_management_key;
use keyward_card::apdu::{sw, CommandApdu, ResponseApdu};
use keyward_card::piv::{self, alg, object};
use std::ops::RangeInclusive;

/// Vendor command: set the management key (`80 E1 00 00 Lc alg 9B len key`).
pub const VENDOR_SET_MANAGEMENT_KEY: u8 = 0xE1;
/// Vendor command: set PIN and PUK retry counts (`80 E2 <pin> <puk>`).
pub const VENDOR_SET_RETRY_COUNTS: u8 = 0xE2;
/// Vendor command: PIN sharing between PIV and FIDO (`80 E3 <01 shared|00 separate> 00`).
pub const VENDOR_SET_PIN_SHARING: u8 = 0xE3;
/// Vendor command: an offline-unblock challenge (`80 E5 00 00 00`): one
/// block of the management key's cipher (8 bytes 3DES, 16 AES), random.
pub const VENDOR_UNBLOCK_CHALLENGE: u8 = 0xE5;
/// Vendor command: offline unblock (`80 E6 00 00 Lc response ‖ new PIN`):
/// the response is the challenge encrypted (ECB, one block) with the
/// management key; the new PIN is padded to 8 bytes with FF. The challenge
/// is used by the first try, right or wrong.
pub const VENDOR_UNBLOCK_RESPONSE: u8 = 0xE6;
/// Most tries a retry counter may be set to.
pub const MAX_TRIES: u8 = 15;

pub struct C4000 {
    pub firmware: Firmware,
    pub serial: u32,
}

impl Profile for C4000 {
    fn kind(&self) -> ProfileKind {
        ProfileKind::C4000
    }
    fn firmware(&self) -> Firmware {
        self.firmware
    }
    fn serial(&self) -> u32 {
        self.serial
    }
    /// T=1 contact card; historical bytes say "KeywardvC4000" (a virtual card,
    /// not HID's ATR, which identifies by CPLC and PIV anyway).
    fn atr(&self) -> Vec<u8> {
        let mut hist = vec![0x80, 0x5D];
        hist.extend_from_slice(b"KeywardvC4000");
        t1_atr(&[0x3B, 0x8F, 0x80, 0x01], &hist)
    }
    fn key_algorithms(&self) -> Vec<u8> {
        vec![alg::RSA_2048, alg::RSA_3072, alg::ECC_P256, alg::ECC_P384]
    }
    fn management_algorithms(&self) -> Vec<u8> {
        vec![alg::TDES, alg::AES_128, alg::AES_192, alg::AES_256]
    }
    fn factory_management_algorithm(&self) -> u8 {
        alg::TDES
    }
    fn factory_objects(&self) -> Vec<(u32, Vec<u8>)> {
        vec![(object::DISCOVERY, piv::discovery_object([0x40, 0x00]))]
    }
    /// HID allows alphanumeric PINs of 4 to 8 characters on Crescendo cards.
    fn pin_length(&self) -> RangeInclusive<usize> {
        4..=8
    }
    fn extension(&self, piv: &mut PivApplet, apdu: &CommandApdu) -> Option<ResponseApdu> {
        if apdu.cla != 0x80 {
            return None;
        }
        Some(match apdu.ins {
            VENDOR_SET_MANAGEMENT_KEY => {
                if (apdu.p1, apdu.p2) != (0, 0) {
                    return Some(status(sw::INCORRECT_P1P2));
                }
                if !piv.session.management_authenticated {
                    return Some(status(sw::SECURITY_STATUS_NOT_SATISFIED));
                }
                match parse_management_key(&apdu.data, &self.management_algorithms()) {
                    Some(key) => {
                        piv.state.management_key = key;
                        piv.state.management_key_is_default = false;
                        piv.mark_dirty();
                        ok(Vec::new())
                    }
                    None => status(sw::INCORRECT_DATA),
                }
            }
            VENDOR_SET_RETRY_COUNTS => {
                if !(1..=MAX_TRIES).contains(&apdu.p1) || !(1..=MAX_TRIES).contains(&apdu.p2) {
                    return Some(status(sw::INCORRECT_P1P2));
                }
                if !piv.session.management_authenticated {
                    return Some(status(sw::SECURITY_STATUS_NOT_SATISFIED));
                }
                // Counts change; PIN and PUK values stay.
                piv.state.pin.tries_total = apdu.p1;
                piv.state.pin.tries_left = apdu.p1;
                piv.state.puk.tries_total = apdu.p2;
                piv.state.puk.tries_left = apdu.p2;
                piv.mark_dirty();
                ok(Vec::new())
            }
            VENDOR_SET_PIN_SHARING => {
                if apdu.p1 > 1 || apdu.p2 != 0 {
                    return Some(status(sw::INCORRECT_P1P2));
                }
                if !piv.session.management_authenticated {
                    return Some(status(sw::SECURITY_STATUS_NOT_SATISFIED));
                }
                piv.state.pin_shared_with_fido = apdu.p1 == 1;
                piv.mark_dirty();
                ok(Vec::new())
            }
            VENDOR_UNBLOCK_CHALLENGE => {
                if (apdu.p1, apdu.p2) != (0, 0) {
                    return Some(status(sw::INCORRECT_P1P2));
                }
                let mut challenge = vec![0u8; piv.state.management_key.block_size()];
                rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut challenge);
                piv.session.unblock_challenge = Some(challenge.clone());
                ok(challenge)
            }
            VENDOR_UNBLOCK_RESPONSE => {
                if (apdu.p1, apdu.p2) != (0, 0) {
                    return Some(status(sw::INCORRECT_P1P2));
                }
                // One answer per challenge: a replay finds none.
                let Some(challenge) = piv.session.unblock_challenge.take() else {
                    return Some(status(sw::CONDITIONS_NOT_SATISFIED));
                };
                let block = challenge.len();
                if apdu.data.len() != block + 8 {
                    return Some(status(sw::INCORRECT_DATA));
                }
                let expected = piv.state.management_key.encrypt_block(&challenge);
                if !crate::keys::ct_eq(&expected, &apdu.data[..block]) {
                    return Some(status(sw::SECURITY_STATUS_NOT_SATISFIED));
                }
                let Some(pin) = PivApplet::unpad_checked(self, &apdu.data[block..]) else {
                    return Some(status(sw::INCORRECT_DATA));
                };
                piv.state.pin.set(&pin, false);
                piv.mark_dirty();
                ok(Vec::new())
            }
            _ => return None,
        })
    }
    fn card_manager_data(&self, tag: u16) -> Option<Vec<u8>> {
        (tag == 0x9F7F).then(|| self.cplc())
    }
    fn has_attestation(&self) -> bool {
        false
    }
}

impl C4000 {
    /// GlobalPlatform CPLC data (42 bytes); the IC serial number (bytes
    /// 12..16) is the device serial.
    pub fn cplc(&self) -> Vec<u8> {
        let mut c = Vec::with_capacity(42);
        c.extend_from_slice(&[0x4B, 0x57]); // IC fabricator ("KW": virtual)
        c.extend_from_slice(&[0xC4, 0x00]); // IC type
        c.extend_from_slice(&[0x4B, 0x57]); // operating system identifier
        c.extend_from_slice(&[0x60, 0x01]); // OS release date (YDDD)
        c.extend_from_slice(&[self.firmware.0, self.firmware.1]); // OS release level
        c.extend_from_slice(&[0x60, 0x01]); // IC fabrication date
        c.extend_from_slice(&self.serial.to_be_bytes()); // IC serial number
        c.extend_from_slice(&[0x00, 0x01]); // IC batch identifier
        c.extend_from_slice(&[0; 24]); // module, embedding, pre-perso, perso data
        c
    }
}
