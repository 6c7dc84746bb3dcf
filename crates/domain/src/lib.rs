//! Keyward's domain model: users, devices and device types, device policies, settings,
//! Passkey-Enabled Services, roles, the device state machine and audit events.
//!
//! Pure: no I/O, no async, no clock reads (callers pass times and randomness in).
//! Every input type validates itself and reports errors as one [`ValidationError`]
//! with a stable `code`, the offending `field` path and a message without secrets.

pub mod audit;
pub mod authenticators;
pub mod device;
pub mod device_type;
pub mod error;
pub mod firmware;
pub mod lifecycle;
pub mod names;
pub mod passkey;
pub mod pin;
pub mod policy;
pub mod request;
pub mod role;
pub mod settings;
pub mod state;
pub mod update;
pub mod user;
pub mod validate;

pub use audit::{AuditDraft, AuditEvent};
pub use device::{Atr, Device, DeviceHistoryEntry, NewDevice, Replacement, Serial, StateChange};
pub use device_type::{DeviceCapabilities, EntraPasskeySupport};
pub use error::{ValidationError, ValidationResult};
pub use firmware::FirmwareVersion;
pub use lifecycle::{CertificateAction, CredentialEffects, RevocationReason};
pub use names::{
    Applet, ApprovalAction, AuditOutcome, CharacterSet, DeviceState, DeviceType, DisplayMode,
    ExtendedKeyUsage, KeyAlgorithm, KeyUsage, ManagementKeyMode, PivSlot, RenewalMode,
    RequestState, Role, SanSource, SessionAction, SessionStatus, StateReason, Transport,
    UserStatus, WhoCanBind,
};
pub use passkey::{PasskeyService, PasskeyServiceView, SealedSecret};
pub use pin::{PinApplication, PinRule, PinRuleCheck};
pub use policy::{CertificateTemplate, DevicePolicy, FidoApplication, PkiApplication};
pub use role::{Account, Permission};
pub use settings::{SettingKey, SettingValue, Settings};
pub use user::{NewUser, User};
