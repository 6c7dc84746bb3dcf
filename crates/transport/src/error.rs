//! Typed transport errors: what the server and the person need to tell
//! apart (the card left the reader, the reader is gone, another program
//! holds the device, the device stopped answering, it answered nonsense).

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The card left the reader or the HID device was unplugged. Its
    /// security state (verified PIN, authenticated management key) is lost.
    #[error("the device was removed")]
    DeviceRemoved,
    /// Another program reset the card: still present, security state lost.
    #[error("the card was reset by another program")]
    CardReset,
    /// The reader itself disappeared (unplugged, or pcscd dropped it).
    #[error("the reader {0:?} is gone")]
    ReaderGone(String),
    /// No answer in time.
    #[error("the device did not answer within {0:?}")]
    Timeout(Duration),
    /// Another program holds the device (PC/SC exclusive access, a CTAPHID
    /// channel busy or locked by another client).
    #[error("the device is in use by another program")]
    SharingViolation,
    /// The device answered something the protocol does not allow.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// pcscd (or the HID subsystem) is not there.
    #[error("the device service is not available: {0}")]
    ServiceUnavailable(String),
    /// The caller cancelled the operation.
    #[error("cancelled")]
    Cancelled,
    /// Any other operating-system error.
    #[error("I/O error: {0}")]
    Io(String),
}

impl TransportError {
    /// A stable machine-readable name (relay protocol, JSON output).
    pub fn code(&self) -> &'static str {
        match self {
            TransportError::DeviceRemoved => "device_removed",
            TransportError::CardReset => "card_reset",
            TransportError::ReaderGone(_) => "reader_gone",
            TransportError::Timeout(_) => "timeout",
            TransportError::SharingViolation => "sharing_violation",
            TransportError::Protocol(_) => "protocol_error",
            TransportError::ServiceUnavailable(_) => "service_unavailable",
            TransportError::Cancelled => "cancelled",
            TransportError::Io(_) => "io_error",
        }
    }

    /// Whether a transport error named `code` (as in the relay protocol's
    /// `transport_error`) says the device left or was reset: its connection
    /// is then ended without a reset (there is nothing to reset; pcsc-lite
    /// asked to reset a card that left fails and stops seeing that reader).
    pub fn code_means_device_gone(code: &str) -> bool {
        matches!(code, "device_removed" | "card_reset" | "reader_gone")
    }

    /// Whether the device's volatile state (verified PINs, authenticated
    /// keys, selected application) must be assumed lost.
    pub fn loses_security_state(&self) -> bool {
        matches!(
            self,
            TransportError::DeviceRemoved
                | TransportError::CardReset
                | TransportError::ReaderGone(_)
        )
    }

    pub(crate) fn protocol(msg: impl Into<String>) -> Self {
        TransportError::Protocol(msg.into())
    }
}

impl From<std::io::Error> for TransportError {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind;
        match e.kind() {
            // The peer of a HID socket or a hidraw node went away.
            ErrorKind::UnexpectedEof
            | ErrorKind::BrokenPipe
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::NotConnected => TransportError::DeviceRemoved,
            _ => match e.raw_os_error() {
                // hidraw: ENODEV after unplug, EIO on a dying device.
                Some(libc::ENODEV) | Some(libc::EIO) | Some(libc::ENXIO) => {
                    TransportError::DeviceRemoved
                }
                Some(libc::EBUSY) => TransportError::SharingViolation,
                _ => TransportError::Io(e.to_string()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_removal() {
        let e: TransportError = std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into();
        assert_eq!(e, TransportError::DeviceRemoved);
        let e: TransportError = std::io::Error::from_raw_os_error(libc::ENODEV).into();
        assert_eq!(e, TransportError::DeviceRemoved);
        let e: TransportError = std::io::Error::from_raw_os_error(libc::EBUSY).into();
        assert_eq!(e, TransportError::SharingViolation);
        assert_eq!(TransportError::DeviceRemoved.code(), "device_removed");
        assert!(TransportError::CardReset.loses_security_state());
        assert!(!TransportError::Timeout(Duration::from_secs(1)).loses_security_state());
    }
}
