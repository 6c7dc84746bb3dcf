//! The in-process transports over a virtual device
//! ([`keyward_vcard::VcardHandle`]): APDUs straight into the card core and
//! CTAP requests straight into its authenticator, no pcscd, no socket.
//!
//! Behind the cargo feature `vcard` so that keyward-transport depends on
//! keyward-vcard only where wanted (the binary: `keyward demo`'s agent,
//! tests); keyward-vcard never depends on keyward-transport.

use crate::apdu::ApduTransport;
use crate::ctap::{CtapControl, CtapTransport, KeepaliveStatus};
use crate::error::TransportError;
use keyward_domain::Transport;
use keyward_vcard::VcardHandle;

/// The virtual card as a smart card (its "reader" is `name`).
#[derive(Clone)]
pub struct InProcessCard {
    handle: VcardHandle,
    name: String,
}

impl InProcessCard {
    pub fn new(handle: VcardHandle, name: impl Into<String>) -> Self {
        InProcessCard {
            handle,
            name: name.into(),
        }
    }

    pub fn handle(&self) -> &VcardHandle {
        &self.handle
    }
}

impl ApduTransport for InProcessCard {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.handle
            .transmit(command)
            .map_err(|_| TransportError::DeviceRemoved)
    }

    fn transport(&self) -> Transport {
        Transport::InProcess
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn atr(&self) -> Vec<u8> {
        self.handle.atr()
    }
}

/// The virtual device's authenticator, as a HID device would reach it
/// (user presence asked, keep-alives reported, cancel honoured) but
/// without the CTAPHID framing.
#[derive(Clone)]
pub struct InProcessFido {
    handle: VcardHandle,
    name: String,
}

impl InProcessFido {
    pub fn new(handle: VcardHandle, name: impl Into<String>) -> Self {
        InProcessFido {
            handle,
            name: name.into(),
        }
    }
}

impl CtapTransport for InProcessFido {
    fn ctap(
        &mut self,
        request: &[u8],
        control: &mut CtapControl,
    ) -> Result<Vec<u8>, TransportError> {
        let presence = self.handle.presence().clone();
        let mut waiting = presence.with_tick(|| {
            control.keepalive(KeepaliveStatus::UserPresenceNeeded);
            !control.cancel.is_cancelled()
        });
        self.handle
            .fido_request(request, &mut waiting)
            .map_err(|_| TransportError::DeviceRemoved)
    }

    fn transport(&self) -> Transport {
        Transport::InProcess
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apdu;
    use crate::identify::identify_card;
    use keyward_card::piv;
    use keyward_domain::{Applet, DeviceType};
    use keyward_vcard::{ProfileKind, VcardConfig, VirtualCard};

    fn card(profile: ProfileKind, serial: u32) -> (VcardHandle, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = VcardConfig::new(profile)
            .with_serial(serial)
            .with_ca_dir(dir.path().join("ca"));
        (VcardHandle::new(VirtualCard::new(config).unwrap()), dir)
    }

    #[test]
    fn identifies_both_virtual_profiles_in_process() {
        let (yk, _d1) = card(ProfileKind::Yubikey5, 10_000_002);
        let mut t = InProcessCard::new(yk, "in-process yubikey");
        let id = identify_card(&crate::discover::probe_card(&mut t).unwrap());
        assert_eq!(id.device_type, Some(DeviceType::YubiKey5));
        assert_eq!(id.serial, Some(10_000_002));
        assert_eq!(id.firmware.unwrap().to_string(), "5.7.1");
        assert_eq!(id.applets, vec![Applet::Piv]);

        let (c4, _d2) = card(ProfileKind::C4000, 20_000_001);
        let mut t = InProcessCard::new(c4.clone(), "in-process c4000");
        let id = identify_card(&crate::discover::probe_card(&mut t).unwrap());
        assert_eq!(id.device_type, Some(DeviceType::C4000));
        assert_eq!(id.serial, Some(20_000_001));
        assert_eq!(id.firmware.unwrap().to_string(), "1.0.0");
        assert_eq!(id.applets, vec![Applet::Piv, Applet::Fido]);

        // CTAP over ISO 7816 through the APDU transport, and directly.
        let mut iso = crate::ctap::CtapOverIso::new(t.clone());
        let info = crate::ctap::get_info(&mut iso).unwrap();
        assert_eq!(info.aaguid, crate::identify::AAGUID_VIRTUAL_C4000);
        let mut direct = InProcessFido::new(c4, "c4000 fido");
        assert_eq!(crate::ctap::get_info(&mut direct).unwrap(), info);
    }

    #[test]
    fn in_process_entry_names_its_transport() {
        let (c4, _d) = card(ProfileKind::C4000, 20_000_009);
        let mut t = InProcessCard::new(c4.clone(), "demo c4000");
        let entry = crate::discover::identify_entry(&mut t);
        assert_eq!(entry.transports, vec![Transport::InProcess]);
        assert_eq!(entry.reader.as_deref(), Some("demo c4000"));
        assert_eq!(entry.identity.serial, Some(20_000_009));
        // A removed card is listed as unreadable, not an error.
        c4.remove();
        let entry = crate::discover::identify_entry(&mut t);
        assert!(!entry.identity.supported);
        assert!(entry.identity.reason.unwrap().contains("removed"));
    }

    #[test]
    fn long_responses_and_removal() {
        let (yk, _d) = card(ProfileKind::Yubikey5, 10_000_003);
        let mut t = InProcessCard::new(yk.clone(), "yk");
        assert!(apdu::transmit(&mut t, &piv::select_piv())
            .unwrap()
            .is_success());
        // The attestation certificate is longer than one short response:
        // it comes back whole through 61xx + GET RESPONSE.
        let cert =
            apdu::transmit(&mut t, &piv::get_data(piv::object::YK_ATTESTATION_CERT)).unwrap();
        assert!(cert.is_success(), "{:04X}", cert.sw);
        assert!(cert.data.len() > 256, "{}", cert.data.len());
        yk.remove();
        assert_eq!(
            apdu::transmit(&mut t, &piv::select_piv()).unwrap_err(),
            TransportError::DeviceRemoved
        );
        yk.insert();
        assert!(apdu::transmit(&mut t, &piv::select_piv())
            .unwrap()
            .is_success());
    }
}
