//! CTAP messages (command byte + CBOR in, status byte + CBOR out) over a
//! transport: [`CtapOverIso`] wraps them in ISO 7816 APDUs for cards and
//! NFC (`80 10 80 00 Lc <request> 00`; `9100` means "still working": poll
//! with `80 11`); CTAPHID is in [`crate::ctaphid`].

use crate::apdu::{self, ApduTransport};
use crate::error::TransportError;
use keyward_card::apdu::{sw, CommandApdu};
use keyward_card::ctap::{self, GetInfoResponse};
use keyward_card::piv::{self, ins};
use keyward_domain::Transport;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the authenticator says while it works (CTAPHID KEEPALIVE status,
/// or the first data byte of an ISO `9100` answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepaliveStatus {
    Processing,
    /// Waiting for the person to touch the device.
    UserPresenceNeeded,
    Other(u8),
}

impl KeepaliveStatus {
    pub fn from_byte(b: u8) -> Self {
        match b {
            1 => KeepaliveStatus::Processing,
            2 => KeepaliveStatus::UserPresenceNeeded,
            other => KeepaliveStatus::Other(other),
        }
    }
}

/// Set from another thread to cancel a running CTAP request (CTAPHID
/// CANCEL is sent; the authenticator answers CTAP2_ERR_KEEPALIVE_CANCEL).
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// How one CTAP request is run.
pub struct CtapControl<'a> {
    /// How long the device may stay silent. Keep-alives restart it: the
    /// authenticator itself bounds how long it waits for a touch.
    pub idle_timeout: Duration,
    pub cancel: CancelFlag,
    /// Told each keep-alive (e.g. to ask the person to touch the device).
    pub on_keepalive: Option<&'a mut dyn FnMut(KeepaliveStatus)>,
}

impl Default for CtapControl<'_> {
    fn default() -> Self {
        CtapControl {
            idle_timeout: Duration::from_secs(5),
            cancel: CancelFlag::new(),
            on_keepalive: None,
        }
    }
}

impl CtapControl<'_> {
    pub(crate) fn keepalive(&mut self, status: KeepaliveStatus) {
        if let Some(f) = self.on_keepalive.as_mut() {
            f(status);
        }
    }
}

/// Sends one CTAP request and returns the authenticator's response (status
/// byte first). A CTAP error status is a response, not a transport error.
pub trait CtapTransport: Send {
    fn ctap(
        &mut self,
        request: &[u8],
        control: &mut CtapControl,
    ) -> Result<Vec<u8>, TransportError>;
    /// Which canonical transport this is (`pcsc`, `hid`, `in_process`).
    fn transport(&self) -> Transport;
    /// A human-readable locator (reader name, hidraw path, socket path).
    fn name(&self) -> String;
}

impl<T: CtapTransport + ?Sized> CtapTransport for Box<T> {
    fn ctap(
        &mut self,
        request: &[u8],
        control: &mut CtapControl,
    ) -> Result<Vec<u8>, TransportError> {
        (**self).ctap(request, control)
    }
    fn transport(&self) -> Transport {
        (**self).transport()
    }
    fn name(&self) -> String {
        (**self).name()
    }
}

/// authenticatorGetInfo, decoded.
pub fn get_info<T: CtapTransport + ?Sized>(t: &mut T) -> Result<GetInfoResponse, TransportError> {
    let response = t.ctap(&[ctap::command::GET_INFO], &mut CtapControl::default())?;
    parse_get_info(&response)
}

/// Decodes a getInfo response (status byte + CBOR).
pub fn parse_get_info(response: &[u8]) -> Result<GetInfoResponse, TransportError> {
    let value = ctap::split_response(response)
        .map_err(|e| TransportError::protocol(format!("authenticatorGetInfo: {e}")))?
        .ok_or_else(|| TransportError::protocol("authenticatorGetInfo: empty response"))?;
    GetInfoResponse::from_value(&value)
        .map_err(|e| TransportError::protocol(format!("authenticatorGetInfo: {e}")))
}

/// The answers of SELECT of the FIDO application a platform accepts.
pub fn is_fido_select_answer(data: &[u8]) -> bool {
    data == b"FIDO_2_0" || data == b"U2F_V2"
}

/// CTAP over ISO 7816 (a card's or an NFC authenticator's FIDO application).
pub struct CtapOverIso<T: ApduTransport> {
    inner: T,
    selected: bool,
}

impl<T: ApduTransport> CtapOverIso<T> {
    pub fn new(inner: T) -> Self {
        CtapOverIso {
            inner,
            selected: false,
        }
    }

    pub fn into_inner(self) -> T {
        self.inner
    }

    pub fn inner_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// SELECT the FIDO AID (with Le, as python-fido2 1.x sends it).
    pub fn select(&mut self) -> Result<(), TransportError> {
        let r = apdu::transmit(
            &mut self.inner,
            &piv::select_aid(&piv::FIDO_AID).with_le(256),
        )?;
        if !r.is_success() || !is_fido_select_answer(&r.data) {
            self.selected = false;
            return Err(TransportError::protocol(format!(
                "the card has no FIDO application (SELECT answered {:04X})",
                r.sw
            )));
        }
        self.selected = true;
        Ok(())
    }
}

/// How often a `9100` (still working) answer is polled.
const ISO_POLL: Duration = Duration::from_millis(100);

impl<T: ApduTransport> CtapTransport for CtapOverIso<T> {
    fn ctap(
        &mut self,
        request: &[u8],
        control: &mut CtapControl,
    ) -> Result<Vec<u8>, TransportError> {
        if !self.selected {
            self.select()?;
        }
        let command = CommandApdu::new(0x80, ins::CTAP_MSG, 0x80, 0x00)
            .with_data(request.to_vec())
            .with_le(256);
        let mut r = match apdu::transmit(&mut self.inner, &command) {
            Ok(r) => r,
            Err(e) => {
                self.selected = false;
                return Err(e);
            }
        };
        let mut last_sign_of_life = Instant::now();
        while r.sw == sw::FIDO_KEEPALIVE {
            control.keepalive(KeepaliveStatus::from_byte(
                r.data.first().copied().unwrap_or(1),
            ));
            if control.cancel.is_cancelled() {
                // CTAP over ISO has no cancel message a card must honour;
                // stop polling and start over with a fresh SELECT.
                self.selected = false;
                return Err(TransportError::Cancelled);
            }
            if last_sign_of_life.elapsed() > control.idle_timeout {
                self.selected = false;
                return Err(TransportError::Timeout(control.idle_timeout));
            }
            std::thread::sleep(ISO_POLL);
            let poll = CommandApdu::new(0x80, ins::CTAP_GET_RESPONSE, 0x00, 0x00).with_le(256);
            r = apdu::transmit(&mut self.inner, &poll)?;
            last_sign_of_life = Instant::now();
        }
        if !r.is_success() {
            self.selected = false;
            return Err(TransportError::protocol(format!(
                "CTAP over ISO 7816: status word {:04X}",
                r.sw
            )));
        }
        Ok(r.data)
    }

    fn transport(&self) -> Transport {
        self.inner.transport()
    }

    fn name(&self) -> String {
        self.inner.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apdu::tests::Scripted;

    #[test]
    fn iso_wraps_selects_and_polls_keepalive() {
        let mut t = Scripted::new(&[
            b"FIDO_2_0\x90\x00",
            &[0x02, 0x91, 0x00],
            &[0x00, 0xA0, 0x90, 0x00],
        ]);
        let mut seen = Vec::new();
        let mut on = |s| seen.push(s);
        let mut ctl = CtapControl {
            on_keepalive: Some(&mut on),
            ..Default::default()
        };
        let r = CtapOverIso::new(&mut t).ctap(&[0x04], &mut ctl).unwrap();
        assert_eq!(r, vec![0x00, 0xA0]);
        assert_eq!(seen, vec![KeepaliveStatus::UserPresenceNeeded]);
        assert_eq!(
            t.sent[0],
            vec![
                0x00, 0xA4, 0x04, 0x00, 0x08, 0xA0, 0x00, 0x00, 0x06, 0x47, 0x2F, 0x00, 0x01, 0x00
            ]
        );
        assert_eq!(t.sent[1], vec![0x80, 0x10, 0x80, 0x00, 0x01, 0x04, 0x00]);
        assert_eq!(t.sent[2], vec![0x80, 0x11, 0x00, 0x00, 0x00]);
    }

    #[test]
    fn iso_without_fido_application_is_an_error() {
        let mut t = Scripted::new(&[&[0x6A, 0x82]]);
        let mut iso = CtapOverIso::new(&mut t);
        let e = iso.ctap(&[0x04], &mut CtapControl::default()).unwrap_err();
        assert!(e.to_string().contains("6A82"), "{e}");
    }

    #[test]
    fn iso_cancel_stops_polling() {
        let mut t = Scripted::new(&[b"FIDO_2_0\x90\x00", &[0x02, 0x91, 0x00]]);
        let ctl_cancel = CancelFlag::new();
        ctl_cancel.cancel();
        let mut ctl = CtapControl {
            cancel: ctl_cancel,
            ..Default::default()
        };
        let mut iso = CtapOverIso::new(&mut t);
        assert_eq!(
            iso.ctap(&[0x02], &mut ctl).unwrap_err(),
            TransportError::Cancelled
        );
    }
}
