//! Device access for Keyward: the transports between Keyward and a device,
//! and how a connected device is found and recognised.
//!
//! * [`apdu`]: [`ApduTransport`] (one command APDU in, one response APDU
//!   out) and [`apdu::transmit`], which adds command chaining for long
//!   commands, `61xx` + GET RESPONSE and `6Cxx` (wrong Le) on top of any
//!   transport; [`apdu::transmit_batch`] stops at the first unexpected
//!   status word or transport error.
//! * [`pcsc`]: the APDU transport over PC/SC (pcscd), reader listing.
//! * [`ctap`]: [`CtapTransport`] (one CTAP request in, one response out),
//!   CTAP over ISO 7816 (`80 10`, `9100` keep-alive polled with `80 11`).
//! * [`ctaphid`] and [`hid`]: CTAPHID (INIT, fragmentation, KEEPALIVE,
//!   CANCEL, ERROR) over Linux hidraw devices and the virtual device's HID
//!   socket.
//! * `in_process` (cargo feature `vcard`): both transports over an
//!   in-process [`keyward_vcard::VcardHandle`].
//! * [`identify`]: pure functions from probe responses to a device
//!   identity; [`discover`]: the I/O that probes every connected device
//!   and merges what one device shows through several transports.
//!
//! Every transport failure is a typed [`TransportError`]. See docs/devices.md.

pub mod apdu;
pub mod ctap;
pub mod ctaphid;
pub mod discover;
pub mod error;
pub mod hid;
pub mod identify;
#[cfg(feature = "vcard")]
pub mod in_process;
pub mod pcsc;

pub use apdu::ApduTransport;
pub use ctap::{CtapControl, CtapTransport};
pub use error::TransportError;
/// The codecs the transports carry (APDU, PIV command builders, CTAP, CTAPHID).
pub use keyward_card as card;
