//! Offline unlock: the person has the device but no connection to the
//! server; they call the help desk.
//!
//! * A device with an administrative unblock (the C4000): the tool next to
//!   the device reads a challenge from it, the help desk computes the
//!   response from the device's management key (which only the server
//!   knows), the tool sends the response with the new PIN. What the
//!   challenge and response are is the device type's: [`OfflineUnlock`],
//!   one implementation per type, so a real card's (proprietary) command can
//!   replace the virtual C4000's documented one (docs/vcard.md).
//! * A YubiKey (PIV has no administrative unblock): no challenge; the help
//!   desk reads the PUK out (audited), the device's PUK is replaced at its
//!   next unlock.
//! * Generic PIV: online unlock only.

use keyward_card::piv;
use keyward_domain::DeviceType;

use crate::mgmt_key::ManagementKey;

/// A device type's challenge-response unblock.
pub trait OfflineUnlock: Sync {
    /// The command that asks the device for a challenge.
    fn challenge_command(&self) -> Vec<u8>;
    /// The response to `challenge`, from the device's management key; an
    /// error says why the challenge cannot be for this device.
    fn response(&self, key: &ManagementKey, challenge: &[u8]) -> Result<Vec<u8>, String>;
    /// The command that unblocks with `response` and sets `new_pin`.
    fn unblock_command(&self, response: &[u8], new_pin: &str) -> Option<Vec<u8>>;
}

/// The virtual C4000's vendor commands (`keyward vcard`): `80 E5` hands out
/// one block of the management key's cipher; `80 E6` takes the block
/// encrypted (ECB) with the key, then the new PIN padded with FF.
pub struct VirtualC4000;

impl OfflineUnlock for VirtualC4000 {
    fn challenge_command(&self) -> Vec<u8> {
        vec![0x80, 0xE5, 0x00, 0x00, 0x00]
    }

    fn response(&self, key: &ManagementKey, challenge: &[u8]) -> Result<Vec<u8>, String> {
        let block = key.algorithm.block_len();
        if challenge.len() != block {
            return Err(format!(
                "a challenge of this device is {} hexadecimal digits, not {}",
                block * 2,
                challenge.len() * 2
            ));
        }
        key.encrypt_block(challenge)
            .ok_or_else(|| "the management key cannot answer this challenge".to_string())
    }

    fn unblock_command(&self, response: &[u8], new_pin: &str) -> Option<Vec<u8>> {
        let pin = piv::pad_pin(new_pin.as_bytes())?;
        let mut data = response.to_vec();
        data.extend_from_slice(&pin);
        let mut apdu = vec![0x80, 0xE6, 0x00, 0x00, u8::try_from(data.len()).ok()?];
        apdu.extend_from_slice(&data);
        Some(apdu)
    }
}

/// The challenge-response of a device type, if it has one.
pub fn for_type(device_type: DeviceType) -> Option<&'static dyn OfflineUnlock> {
    match device_type {
        DeviceType::C4000 => Some(&VirtualC4000),
        DeviceType::YubiKey5 | DeviceType::Piv => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Response;
    use crate::mgmt_key::MgmtAlgorithm;
    use keyward_vcard::{Firmware, ProfileKind, VcardConfig, VirtualCard};

    fn sw(r: &[u8]) -> u16 {
        Response::from_apdu(r).sw
    }

    #[test]
    fn the_virtual_c4000_unblocks_with_the_response_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut card = VirtualCard::new(
            VcardConfig::new(ProfileKind::C4000)
                .with_serial(41_000_900)
                .with_firmware(Firmware(1, 0, 0))
                .with_ca_dir(dir.path()),
        )
        .unwrap();
        card.power_on();
        card.transmit(&piv::select_piv().to_bytes());
        for _ in 0..3 {
            card.transmit(&piv::verify(0x80, Some(b"000000")).unwrap().to_bytes());
        }
        let c4000 = for_type(DeviceType::C4000).unwrap();
        // The factory key (3DES): a challenge of one 8-byte block.
        let key = ManagementKey::factory_default(MgmtAlgorithm::Tdes);
        let r = card.transmit(&c4000.challenge_command());
        assert_eq!(sw(&r), 0x9000);
        let challenge = r[..r.len() - 2].to_vec();
        assert_eq!(challenge.len(), 8);
        // Another key's response: refused, and the challenge is gone.
        let other = ManagementKey::new(MgmtAlgorithm::Tdes, &[7u8; 24]).unwrap();
        let wrong = c4000.response(&other, &challenge).unwrap();
        let r = card.transmit(&c4000.unblock_command(&wrong, "246813").unwrap());
        assert_eq!(sw(&r), 0x6982);
        let right = c4000.response(&key, &challenge).unwrap();
        let r = card.transmit(&c4000.unblock_command(&right, "246813").unwrap());
        assert_eq!(sw(&r), 0x6985, "the challenge was used by the wrong try");
        // A new challenge, the right response: unblocked, once.
        let r = card.transmit(&c4000.challenge_command());
        let challenge = r[..r.len() - 2].to_vec();
        let right = c4000.response(&key, &challenge).unwrap();
        let r = card.transmit(&c4000.unblock_command(&right, "246813").unwrap());
        assert_eq!(sw(&r), 0x9000);
        let r = card.transmit(&c4000.unblock_command(&right, "246813").unwrap());
        assert_eq!(sw(&r), 0x6985, "a replayed response finds no challenge");
        let r = card.transmit(&piv::verify(0x80, Some(b"246813")).unwrap().to_bytes());
        assert_eq!(sw(&r), 0x9000, "the new PIN works");
        // A challenge of the wrong length is refused by the help desk's side.
        assert!(c4000.response(&key, &[0u8; 16]).is_err());
    }
}
