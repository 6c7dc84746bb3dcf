//! APDUs over PC/SC (pcscd), with pcsc-lite's error codes turned into
//! [`TransportError`]s.
//!
//! A [`PcscTransport`] that saw the card leave stays disconnected (every
//! command fails with [`TransportError::DeviceRemoved`]) until
//! [`PcscTransport::reconnect`]: reconnecting silently would hide that the
//! card lost its security state (verified PIN, authenticated management key).
//!
//! **Disconnect dispositions.** `pcsc::Card`'s own `Drop` disconnects with
//! `SCARD_RESET_CARD`, which wipes every security state a device session
//! built and, on a card already removed, makes pcscd fail ("Error resetting
//! card"). A connection here is therefore always ended explicitly:
//! [`Disposition::Leave`] (`SCARD_LEAVE_CARD`) when the transport is dropped
//! or has lost its card, [`Disposition::Reset`] only through
//! [`PcscTransport::end`], where a caller asks for it (the end of a device
//! session, so that no verified PIN outlives it). docs/devices.md lists
//! every connect and disconnect in Keyward and why.

use crate::apdu::ApduTransport;
use crate::error::TransportError;
use keyward_domain::Transport;
use pcsc::{Card, Context, Protocols, ReaderState, Scope, ShareMode, State};
use std::ffi::CString;
use std::time::{Duration, Instant};

/// One reader and whether a card is in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderInfo {
    pub name: String,
    pub card_present: bool,
    /// The ATR pcscd reports for the card in the reader (empty without one).
    pub atr: Vec<u8>,
    /// Another program holds the card exclusively.
    pub exclusive: bool,
}

/// Maps a pcsc-lite error; `reader` names the reader in [`TransportError::ReaderGone`].
pub fn map_error(e: pcsc::Error, reader: &str) -> TransportError {
    use pcsc::Error as E;
    match e {
        E::RemovedCard | E::NoSmartcard => TransportError::DeviceRemoved,
        E::ResetCard => TransportError::CardReset,
        E::ReaderUnavailable | E::UnknownReader | E::NoReadersAvailable => {
            TransportError::ReaderGone(reader.to_string())
        }
        E::SharingViolation => TransportError::SharingViolation,
        E::Timeout => TransportError::Timeout(Duration::ZERO),
        E::NoService | E::ServiceStopped | E::Shutdown => {
            TransportError::ServiceUnavailable(format!("pcscd: {e}"))
        }
        E::Cancelled | E::SystemCancelled | E::CancelledByUser => TransportError::Cancelled,
        other => TransportError::protocol(format!("PC/SC: {other}")),
    }
}

/// How a connection to a card ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// `SCARD_LEAVE_CARD`: the card keeps its state (selected application,
    /// verified PIN, authenticated management key).
    Leave,
    /// `SCARD_RESET_CARD`: a warm reset; every security state is gone.
    Reset,
}

impl Disposition {
    fn pcsc(self) -> pcsc::Disposition {
        match self {
            Disposition::Leave => pcsc::Disposition::LeaveCard,
            Disposition::Reset => pcsc::Disposition::ResetCard,
        }
    }
}

/// Ends a connection with `disposition`. When pcscd refuses (the card or
/// the reader is gone), the handle is forgotten rather than dropped:
/// dropping it would send the `SCARD_RESET_CARD` nobody asked for; pcscd
/// releases it with the context.
///
/// A reset is only asked of a card that is still there (SCardStatus): the
/// card may have left without this connection noticing (a USB key pulled
/// out while its HID side was in use), and pcsc-lite asked to reset a
/// removed card fails ("Error resetting card") and then no longer sees a
/// card inserted in that reader.
fn disconnect(card: Card, disposition: Disposition) {
    let disposition = match disposition {
        Disposition::Reset if card.status2_owned().is_err() => Disposition::Leave,
        d => d,
    };
    if let Err((card, _)) = card.disconnect(disposition.pcsc()) {
        // A removed card: LEAVE_CARD has nothing to do and must not fail.
        if let Err((card, _)) = card.disconnect(pcsc::Disposition::LeaveCard) {
            std::mem::forget(card);
        }
    }
}

/// A PC/SC context (a connection to pcscd).
#[derive(Clone)]
pub struct Pcsc {
    ctx: Context,
}

impl Pcsc {
    /// Connects to pcscd.
    pub fn establish() -> Result<Pcsc, TransportError> {
        Context::establish(Scope::User)
            .map(|ctx| Pcsc { ctx })
            .map_err(|e| match e {
                pcsc::Error::NoService | pcsc::Error::ServiceStopped => {
                    TransportError::ServiceUnavailable(format!("pcscd is not running ({e})"))
                }
                other => map_error(other, ""),
            })
    }

    /// Every reader pcscd knows, with its card state. No readers is an
    /// empty list, not an error.
    pub fn readers(&self) -> Result<Vec<ReaderInfo>, TransportError> {
        let names = match self.ctx.list_readers_owned() {
            Ok(n) => n,
            Err(pcsc::Error::NoReadersAvailable) => return Ok(Vec::new()),
            Err(e) => return Err(map_error(e, "")),
        };
        let mut states: Vec<ReaderState> = names
            .into_iter()
            .map(|n| ReaderState::new(n, State::UNAWARE))
            .collect();
        if states.is_empty() {
            return Ok(Vec::new());
        }
        self.ctx
            .get_status_change(Duration::ZERO, &mut states)
            .map_err(|e| map_error(e, ""))?;
        Ok(states
            .iter()
            .map(|s| {
                let ev = s.event_state();
                let present = ev.contains(State::PRESENT) && !ev.contains(State::MUTE);
                ReaderInfo {
                    name: s.name().to_string_lossy().into_owned(),
                    card_present: present,
                    atr: if present {
                        s.atr().to_vec()
                    } else {
                        Vec::new()
                    },
                    exclusive: ev.contains(State::EXCLUSIVE),
                }
            })
            .collect())
    }

    /// Connects (shared) to the card in `reader`. The connection ends with
    /// [`Disposition::Leave`] when dropped.
    pub fn connect(&self, reader: &str) -> Result<PcscTransport, TransportError> {
        self.connect_with(reader, ShareMode::Shared)
    }

    /// Connects with exclusive access: until this transport is dropped,
    /// other programs' connections fail with a sharing violation.
    pub fn connect_exclusive(&self, reader: &str) -> Result<PcscTransport, TransportError> {
        self.connect_with(reader, ShareMode::Exclusive)
    }

    fn connect_with(
        &self,
        reader: &str,
        share_mode: ShareMode,
    ) -> Result<PcscTransport, TransportError> {
        let mut t = PcscTransport {
            ctx: self.ctx.clone(),
            reader: reader.to_string(),
            card: None,
            atr: Vec::new(),
            buf: vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED],
            share_mode,
        };
        t.connect()?;
        Ok(t)
    }

    /// Waits until `reader` has a card (or `timeout` passes); returns
    /// whether it has one. Polls pcscd's reader state: a card coming back
    /// is a person's action, so 100 ms resolution is plenty.
    pub fn wait_card(&self, reader: &str, timeout: Duration) -> Result<bool, TransportError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.card_state(reader)? {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether `reader` exists and has a card now.
    fn card_state(&self, reader: &str) -> Result<bool, TransportError> {
        Ok(self
            .readers()?
            .into_iter()
            .find(|r| r.name == reader)
            .ok_or_else(|| TransportError::ReaderGone(reader.to_string()))?
            .card_present)
    }
}

/// The card in one PC/SC reader.
pub struct PcscTransport {
    ctx: Context,
    reader: String,
    card: Option<Card>,
    atr: Vec<u8>,
    /// Receive buffer, kept: an extended response can be 64 KiB.
    buf: Vec<u8>,
    share_mode: ShareMode,
}

impl PcscTransport {
    fn connect(&mut self) -> Result<(), TransportError> {
        let name = CString::new(self.reader.as_str())
            .map_err(|_| TransportError::ReaderGone(self.reader.clone()))?;
        let card = self
            .ctx
            .connect(&name, self.share_mode, Protocols::ANY)
            .map_err(|e| map_error(e, &self.reader))?;
        self.atr = card
            .status2_owned()
            .map(|s| s.atr().to_vec())
            .map_err(|e| map_error(e, &self.reader))?;
        self.card = Some(card);
        Ok(())
    }

    /// After a removal (or reset): waits up to `timeout` for a card in the
    /// same reader and connects to it. The caller starts over (SELECT,
    /// VERIFY...): nothing of the old session survives.
    pub fn reconnect(&mut self, timeout: Duration) -> Result<(), TransportError> {
        self.release(Disposition::Leave);
        let pcsc = Pcsc {
            ctx: self.ctx.clone(),
        };
        if !pcsc.wait_card(&self.reader, timeout)? {
            return Err(TransportError::Timeout(timeout));
        }
        self.connect()
    }

    pub fn is_connected(&self) -> bool {
        self.card.is_some()
    }

    /// Connects again now if this transport lost its card (no waiting):
    /// the caller knows the card was taken out and put back on purpose.
    pub fn connect_if_lost(&mut self) -> Result<(), TransportError> {
        if self.card.is_none() {
            self.connect()?;
        }
        Ok(())
    }

    /// The reader this transport talks to.
    pub fn reader(&self) -> &str {
        &self.reader
    }

    /// Ends the connection with `disposition` (dropping the transport ends
    /// it with [`Disposition::Leave`]).
    pub fn end(mut self, disposition: Disposition) {
        self.release(disposition);
    }

    fn release(&mut self, disposition: Disposition) {
        if let Some(card) = self.card.take() {
            disconnect(card, disposition);
        }
    }

    /// Runs `f` inside a PC/SC transaction (SCardBeginTransaction): no
    /// other program's command reaches the card until `f` returns, e.g.
    /// between a VERIFY and the GENERATE it authorises. Errors inside are
    /// typed as outside; a removal leaves this transport disconnected.
    pub fn with_transaction<R>(
        &mut self,
        f: impl FnOnce(&mut dyn ApduTransport) -> R,
    ) -> Result<R, TransportError> {
        let PcscTransport {
            ctx,
            reader,
            card,
            atr,
            buf,
            ..
        } = self;
        let Some(connected) = card.as_mut() else {
            return Err(TransportError::DeviceRemoved);
        };
        let outcome = in_transaction(connected, ctx, reader, atr, buf, f);
        let lost = match &outcome {
            Ok((_, lost)) => *lost,
            // Beginning failed: removed or reset since the last command.
            Err(e) => e.loses_security_state(),
        };
        if lost {
            // This connection is over.
            if let Some(c) = card.take() {
                disconnect(c, Disposition::Leave);
            }
        }
        outcome.map(|(r, _)| r)
    }
}

/// Runs `f` between SCardBeginTransaction and SCardEndTransaction (leaving
/// the card); whether the card was lost on the way.
fn in_transaction<R>(
    card: &mut Card,
    ctx: &Context,
    reader: &str,
    atr: &[u8],
    buf: &mut Vec<u8>,
    f: impl FnOnce(&mut dyn ApduTransport) -> R,
) -> Result<(R, bool), TransportError> {
    let tx = card.transaction().map_err(|e| classify(ctx, reader, e))?;
    let mut inner = InTransaction {
        card: &tx,
        ctx,
        reader,
        atr,
        buf,
        lost: false,
    };
    let result = f(&mut inner);
    let lost = inner.lost;
    // Ending fails only when the card is gone, which `lost` tells.
    let _ = tx.end(pcsc::Disposition::LeaveCard);
    Ok((result, lost))
}

/// A failure whose pcsc-lite code does not say what happened (a
/// communication error, an unresponsive card): ask pcscd whether the card
/// or the reader is still there.
fn classify(ctx: &Context, reader: &str, e: pcsc::Error) -> TransportError {
    let mapped = map_error(e, reader);
    if !matches!(mapped, TransportError::Protocol(_)) {
        return mapped;
    }
    let pcsc = Pcsc { ctx: ctx.clone() };
    match pcsc.card_state(reader) {
        Ok(false) => TransportError::DeviceRemoved,
        Err(gone @ TransportError::ReaderGone(_)) => gone,
        _ => mapped,
    }
}

fn transmit_on(
    card: &Card,
    ctx: &Context,
    reader: &str,
    buf: &mut [u8],
    command: &[u8],
) -> Result<Vec<u8>, TransportError> {
    card.transmit(command, buf)
        .map(|r| r.to_vec())
        .map_err(|e| classify(ctx, reader, e))
}

/// The transport inside [`PcscTransport::with_transaction`].
struct InTransaction<'a> {
    card: &'a Card,
    ctx: &'a Context,
    reader: &'a str,
    atr: &'a [u8],
    buf: &'a mut Vec<u8>,
    lost: bool,
}

impl ApduTransport for InTransaction<'_> {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        if self.lost {
            return Err(TransportError::DeviceRemoved);
        }
        let r = transmit_on(self.card, self.ctx, self.reader, self.buf, command);
        if let Err(e) = &r {
            self.lost = e.loses_security_state();
        }
        r
    }

    fn transport(&self) -> Transport {
        Transport::Pcsc
    }

    fn name(&self) -> String {
        self.reader.to_string()
    }

    fn atr(&self) -> Vec<u8> {
        self.atr.to_vec()
    }
}

impl Drop for PcscTransport {
    fn drop(&mut self) {
        self.release(Disposition::Leave);
    }
}

impl ApduTransport for PcscTransport {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let Some(card) = &self.card else {
            return Err(TransportError::DeviceRemoved);
        };
        let r = transmit_on(card, &self.ctx, &self.reader, &mut self.buf, command);
        if r.as_ref().is_err_and(|e| e.loses_security_state()) {
            // Stay disconnected until `reconnect`.
            self.release(Disposition::Leave);
        }
        r
    }

    fn transport(&self) -> Transport {
        Transport::Pcsc
    }

    fn name(&self) -> String {
        self.reader.clone()
    }

    fn atr(&self) -> Vec<u8> {
        self.atr.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcsc_errors_are_typed() {
        assert_eq!(
            map_error(pcsc::Error::RemovedCard, "r"),
            TransportError::DeviceRemoved
        );
        assert_eq!(
            map_error(pcsc::Error::NoSmartcard, "r"),
            TransportError::DeviceRemoved
        );
        assert_eq!(
            map_error(pcsc::Error::ResetCard, "r"),
            TransportError::CardReset
        );
        assert_eq!(
            map_error(pcsc::Error::ReaderUnavailable, "r"),
            TransportError::ReaderGone("r".into())
        );
        assert_eq!(
            map_error(pcsc::Error::SharingViolation, "r"),
            TransportError::SharingViolation
        );
        assert_eq!(map_error(pcsc::Error::Timeout, "r").code(), "timeout");
        assert_eq!(
            map_error(pcsc::Error::NoService, "r").code(),
            "service_unavailable"
        );
        assert_eq!(
            map_error(pcsc::Error::CommError, "r").code(),
            "protocol_error"
        );
    }
}
