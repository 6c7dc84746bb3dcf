//! Device profiles: what makes a virtual card behave like a given real
//! device. Everything that differs between devices sits behind [`Profile`]:
//! the ATR, algorithms, firmware gates, factory state, and the instructions
//! beyond SP 800-73-4 (YubiKey PIV extensions; C4000 vendor commands).

use crate::config::{Firmware, ProfileKind, VcardConfig};
use crate::piv::PivApplet;
use keyward_card::apdu::{CommandApdu, ResponseApdu};
use keyward_card::piv::{self, alg};
use std::ops::RangeInclusive;

pub use crate::c4000::C4000;
pub use crate::yubikey::YubiKey5;

/// One real device's behaviour.
pub trait Profile: Send + Sync {
    fn kind(&self) -> ProfileKind;
    fn firmware(&self) -> Firmware;
    fn serial(&self) -> u32;
    /// Answer to reset.
    fn atr(&self) -> Vec<u8>;
    /// Asymmetric algorithms GENERATE and IMPORT accept.
    fn key_algorithms(&self) -> Vec<u8>;
    /// Management key algorithms the card accepts.
    fn management_algorithms(&self) -> Vec<u8>;
    /// The algorithm of the factory management key.
    fn factory_management_algorithm(&self) -> u8;
    /// Data objects present on a factory-new card.
    fn factory_objects(&self) -> Vec<(u32, Vec<u8>)>;
    /// Allowed PIN/PUK lengths in bytes.
    fn pin_length(&self) -> RangeInclusive<usize> {
        6..=8
    }
    /// The SELECT answer of the PIV application.
    fn application_property_template(&self) -> Vec<u8> {
        let mut algs = self.key_algorithms();
        algs.extend(self.management_algorithms());
        piv::application_property_template(None, None, &algs)
    }
    /// Instructions beyond SP 800-73-4; `None` means "not an instruction of
    /// this device" (the applet answers 6D00, or 6E00 for a proprietary CLA).
    fn extension(&self, piv: &mut PivApplet, apdu: &CommandApdu) -> Option<ResponseApdu>;
    /// GlobalPlatform card-manager data (GET DATA `CA`, e.g. CPLC 9F7F),
    /// answered whichever application is selected; `None` if the device has none.
    fn card_manager_data(&self, tag: u16) -> Option<Vec<u8>>;
    /// Whether the PIV applet keeps an attestation key in slot F9.
    fn has_attestation(&self) -> bool;
}

/// Build the profile of a configuration.
pub fn for_config(config: &VcardConfig) -> Box<dyn Profile> {
    match config.profile {
        ProfileKind::Yubikey5 => Box::new(YubiKey5 {
            firmware: config.firmware,
            serial: config.serial,
        }),
        ProfileKind::C4000 => Box::new(C4000 {
            firmware: config.firmware,
            serial: config.serial,
        }),
    }
}

/// An ATR for T=1 with the given historical bytes, with its check byte.
pub(crate) fn t1_atr(prefix: &[u8], historical: &[u8]) -> Vec<u8> {
    let mut atr = prefix.to_vec();
    atr.extend_from_slice(historical);
    let tck = atr[1..].iter().fold(0u8, |acc, b| acc ^ b);
    atr.push(tck);
    atr
}

/// Management key algorithms available on a YubiKey by firmware.
pub(crate) fn yubikey_management_algorithms(fw: Firmware) -> Vec<u8> {
    if fw.at_least(5, 4, 2) {
        vec![alg::TDES, alg::AES_128, alg::AES_192, alg::AES_256]
    } else {
        vec![alg::TDES]
    }
}
