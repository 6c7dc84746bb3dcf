//! The virtual device: a PIV + FIDO2 card with HID Crescendo C4000 and
//! YubiKey 5 profiles. The card core ([`VirtualCard`]) is free of I/O; the
//! transports at the edge (vpcd client, control socket, in-process handle,
//! HID socket) drive it. See docs/vcard.md.

pub mod c4000;
pub mod ca;
pub mod card;
pub mod config;
pub mod ctaphid_device;
pub mod fido;
pub mod hid_socket;
pub mod keys;
pub mod piv;
pub mod presence;
pub mod profile;
pub mod yubikey;

pub use ca::{default_ca_dir, fido_attestation, FidoAttestation, ManufacturerCa};
pub use card::{CardState, VcardError, VirtualCard};
pub use config::{Firmware, ProfileKind, Transport, VcardConfig};

pub mod cli;
pub mod control;
pub mod handle;
pub mod vpcd;

pub use handle::{CardRemoved, VcardHandle};
