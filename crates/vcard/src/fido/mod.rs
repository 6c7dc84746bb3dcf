//! The virtual FIDO2 authenticator (CTAP 2.1), shared by both framings of
//! the card: ISO 7816 (`80 10` APDUs, wired in the card layer) and CTAPHID
//! (`crate::ctaphid_device` over `crate::hid_socket`).
//!
//! Entry point: [`FidoAuthenticator::handle_cbor`], CTAP request (command
//! byte + CBOR) in, CTAP response (status byte + CBOR) out. Everything the
//! authenticator must remember across restarts is in [`FidoState`] (serde);
//! what a power cycle clears (key agreement key, pinUvAuthToken, the
//! consecutive-mismatch counter, enumeration cursors) lives beside it.
//!
//! The command-by-command access rules are in `docs/vcard-fido.md`.

pub mod attestation;
mod client_pin;
pub mod config;
mod cred_mgmt;
mod credentials;
pub mod fuzz;
pub mod pin_store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_card::ctap::{self, command, CtapError, KeyAgreementKey, StatusCode};
use serde::{Deserialize, Serialize};

pub use attestation::{AttestationSigner, SoftAttestationKey};
pub use config::{FidoConfig, FidoProfile};
pub use pin_store::{FidoPinStore, LocalPinStore, PinVerification};

/// What became of a request for user presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceOutcome {
    Confirmed,
    /// The user declined (control `decline`): CTAP2_ERR_OPERATION_DENIED.
    Declined,
    /// The platform cancelled (CTAPHID CANCEL): CTAP2_ERR_KEEPALIVE_CANCEL.
    Cancelled,
    /// Nobody touched in time: CTAP2_ERR_USER_ACTION_TIMEOUT.
    TimedOut,
}

impl PresenceOutcome {
    fn into_result(self) -> Result<(), CtapError> {
        match self {
            PresenceOutcome::Confirmed => Ok(()),
            PresenceOutcome::Declined => Err(StatusCode::ERR_OPERATION_DENIED.into()),
            PresenceOutcome::Cancelled => Err(StatusCode::ERR_KEEPALIVE_CANCEL.into()),
            PresenceOutcome::TimedOut => Err(StatusCode::ERR_USER_ACTION_TIMEOUT.into()),
        }
    }
}

/// Asks the user to touch the device. Blocking; see `crate::presence`.
pub trait UserPresence {
    fn request_user_presence(&mut self) -> PresenceOutcome;
}

/// Presence that is always confirmed (tests, `--presence auto`).
#[derive(Debug, Default, Clone, Copy)]
pub struct AlwaysPresent;

impl UserPresence for AlwaysPresent {
    fn request_user_presence(&mut self) -> PresenceOutcome {
        PresenceOutcome::Confirmed
    }
}

/// The time source, so the reset window and timers are testable.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// authenticatorReset is accepted this long after power-up (CTAP 2.1
/// section 6.6).
pub const RESET_WINDOW: Duration = Duration::from_secs(10);
/// getNextAssertion and enumeration cursors expire after this long.
const CURSOR_TIMEOUT: Duration = Duration::from_secs(30);
/// A pinUvAuthToken is usable this long (CTAP 2.1 section 6.5.2.1 allows
/// up to 10 minutes).
const TOKEN_LIFETIME: Duration = Duration::from_secs(600);
/// Stored credentials (discoverable or not) an authenticator keeps at most;
/// bounds the state file.
const MAX_STORED_CREDENTIALS: usize = 10_000;

/// A credential the authenticator made. Non-discoverable credentials are
/// stored too (rather than wrapped into the credential id), which keeps the
/// virtual device simple; only discoverable ones count against the
/// profile's slots and show up in credential management.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredCredential {
    pub id: Vec<u8>,
    pub rp_id: String,
    pub rp_name: Option<String>,
    pub user_id: Vec<u8>,
    pub user_name: Option<String>,
    pub user_display_name: Option<String>,
    /// P-256 private scalar (32 bytes).
    private_key: Vec<u8>,
    pub discoverable: bool,
    /// credProtect level 1..=3.
    pub cred_protect: u8,
    /// hmac-secret CredRandom with and without user verification.
    cred_random: Option<(Vec<u8>, Vec<u8>)>,
    /// Creation order, for "most recent first" (CTAP 2.1 section 6.2.2).
    pub created: u64,
}

impl std::fmt::Debug for StoredCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCredential")
            .field("rp_id", &self.rp_id)
            .field("discoverable", &self.discoverable)
            .field("cred_protect", &self.cred_protect)
            .finish_non_exhaustive()
    }
}

impl StoredCredential {
    fn signing_key(&self) -> p256::ecdsa::SigningKey {
        p256::ecdsa::SigningKey::from_slice(&self.private_key)
            .expect("stored keys are valid scalars")
    }

    pub fn public_key(&self) -> ctap::CoseEc2Key {
        ctap::CoseEc2Key::from_public_key(
            &self.signing_key().verifying_key().into(),
            ctap::cose::ES256,
        )
    }
}

/// Everything the authenticator persists (`--state FILE`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FidoState {
    pub credentials: Vec<StoredCredential>,
    /// Global signature counter.
    pub sign_count: u32,
    pub next_created: u64,
    /// The authenticator's own PIN (unused when the card shares the PIV PIN).
    pub pin: LocalPinStore,
}

/// A pinUvAuthToken and what it may do (CTAP 2.1 section 6.5.2).
struct PinToken {
    protocol: ctap::PinProtocol,
    token: Vec<u8>,
    permissions: u8,
    rp_id: Option<String>,
    issued: Instant,
}

/// Cursor of getNextAssertion.
struct AssertionCursor {
    remaining: Vec<Vec<u8>>,
    client_data_hash: Vec<u8>,
    flags: u8,
    uv: bool,
    started: Instant,
}

/// Cursors of credential management enumeration.
enum EnumerationCursor {
    Rps {
        remaining: Vec<String>,
        started: Instant,
    },
    Credentials {
        remaining: Vec<Vec<u8>>,
        started: Instant,
    },
}

/// Volatile state, cleared by a power cycle.
struct Volatile {
    powered_up: Instant,
    key_agreement: KeyAgreementKey,
    token: Option<PinToken>,
    consecutive_mismatches: u8,
    assertion: Option<AssertionCursor>,
    enumeration: Option<EnumerationCursor>,
}

/// The virtual CTAP 2.1 authenticator.
pub struct FidoAuthenticator {
    config: FidoConfig,
    state: FidoState,
    attestation: Box<dyn AttestationSigner>,
    clock: Arc<dyn Clock>,
    volatile: Volatile,
}

impl FidoAuthenticator {
    /// A powered-up authenticator (the reset window starts now).
    pub fn new(
        config: FidoConfig,
        state: FidoState,
        attestation: Box<dyn AttestationSigner>,
    ) -> Self {
        Self::with_clock(config, state, attestation, Arc::new(SystemClock))
    }

    pub fn with_clock(
        config: FidoConfig,
        state: FidoState,
        attestation: Box<dyn AttestationSigner>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let volatile = Volatile {
            powered_up: clock.now(),
            key_agreement: KeyAgreementKey::generate(&mut rand::rngs::OsRng),
            token: None,
            consecutive_mismatches: 0,
            assertion: None,
            enumeration: None,
        };
        Self {
            config,
            state,
            attestation,
            clock,
            volatile,
        }
    }

    pub fn config(&self) -> &FidoConfig {
        &self.config
    }

    /// The persistent state, to save after each command.
    pub fn state(&self) -> &FidoState {
        &self.state
    }

    /// Removal and reinsertion (or USB unplug): clears every volatile item
    /// and opens the 10-second reset window again.
    pub fn power_cycle(&mut self) {
        self.volatile = Volatile {
            powered_up: self.clock.now(),
            key_agreement: KeyAgreementKey::generate(&mut rand::rngs::OsRng),
            token: None,
            consecutive_mismatches: 0,
            assertion: None,
            enumeration: None,
        };
    }

    /// Handles one CTAP request with the authenticator's own PIN store.
    pub fn handle(&mut self, request: &[u8], presence: &mut dyn UserPresence) -> Vec<u8> {
        self.handle_cbor(request, None, presence)
    }

    /// Handles one CTAP request: `request` is the command byte followed by
    /// its CBOR parameters; the answer is the status byte followed by the
    /// CBOR response. `pins` is the PIN store to use (`None`: the
    /// authenticator's own; `Some`: e.g. the shared PIV PIN of a C4000).
    /// Never panics on malformed input.
    pub fn handle_cbor(
        &mut self,
        request: &[u8],
        pins: Option<&mut dyn FidoPinStore>,
        presence: &mut dyn UserPresence,
    ) -> Vec<u8> {
        let result = match pins {
            Some(pins) => self.dispatch(request, pins, presence),
            None => {
                let mut own = std::mem::take(&mut self.state.pin);
                let r = self.dispatch(request, &mut own, presence);
                self.state.pin = own;
                r
            }
        };
        match result {
            // Commands without response data (setPIN, changePIN,
            // deleteCredential, ...) answer the status byte alone.
            Ok(Some(ciborium::Value::Map(m))) if m.is_empty() => vec![StatusCode::OK.0],
            Ok(body) => ctap::encode_response(StatusCode::OK, body.as_ref()),
            Err(e) => {
                tracing::debug!(status = %e.status, "CTAP request refused");
                vec![e.status.0]
            }
        }
    }

    fn dispatch(
        &mut self,
        request: &[u8],
        pins: &mut dyn FidoPinStore,
        presence: &mut dyn UserPresence,
    ) -> Result<Option<ciborium::Value>, CtapError> {
        if request.len() as u64 > self.config.max_msg_size {
            return Err(StatusCode::ERR_REQUEST_TOO_LARGE.into());
        }
        let (cmd, params) = ctap::split_request(request)?;
        tracing::debug!(command = format_args!("0x{cmd:02X}"), "CTAP command");
        // Cursors only survive their own follow-up commands.
        if cmd != command::GET_NEXT_ASSERTION {
            self.volatile.assertion = None;
        }
        let cm_next = matches!(
            cmd,
            command::CREDENTIAL_MANAGEMENT | command::CREDENTIAL_MANAGEMENT_PREVIEW
        );
        if !cm_next {
            self.volatile.enumeration = None;
        }
        let need = |p: Option<ciborium::Value>| {
            p.ok_or_else(|| CtapError::new(StatusCode::ERR_MISSING_PARAMETER, "parameters missing"))
        };
        match cmd {
            command::GET_INFO => Ok(Some(self.get_info(pins).to_value())),
            command::MAKE_CREDENTIAL => {
                let req = ctap::MakeCredentialRequest::from_value(&need(params)?)?;
                self.make_credential(req, pins, presence)
                    .map(|r| Some(r.to_value()))
            }
            command::GET_ASSERTION => {
                let req = ctap::GetAssertionRequest::from_value(&need(params)?)?;
                self.get_assertion(req, pins, presence)
                    .map(|r| Some(r.to_value()))
            }
            command::GET_NEXT_ASSERTION => self.get_next_assertion().map(|r| Some(r.to_value())),
            command::CLIENT_PIN => {
                let req = ctap::ClientPinRequest::from_value(&need(params)?)?;
                self.client_pin(req, pins).map(|r| Some(r.to_value()))
            }
            command::RESET => self.reset(pins, presence).map(|()| None),
            command::CREDENTIAL_MANAGEMENT if self.config.ctap21() => {
                let req = ctap::CredentialManagementRequest::from_value(&need(params)?)?;
                self.credential_management(req).map(|r| Some(r.to_value()))
            }
            command::CREDENTIAL_MANAGEMENT_PREVIEW => {
                let req = ctap::CredentialManagementRequest::from_value(&need(params)?)?;
                self.credential_management(req).map(|r| Some(r.to_value()))
            }
            command::SELECTION if self.config.ctap21() => {
                self.user_presence(presence)?;
                Ok(None)
            }
            _ => Err(CtapError::new(
                StatusCode::ERR_INVALID_COMMAND,
                "command not supported",
            )),
        }
    }

    /// authenticatorGetInfo (0x04).
    pub fn get_info(&self, pins: &dyn FidoPinStore) -> ctap::GetInfoResponse {
        let c = &self.config;
        let mut options = vec![
            ("rk".to_string(), true),
            ("up".to_string(), true),
            ("plat".to_string(), false),
            ("clientPin".to_string(), pins.is_pin_set()),
        ];
        if c.ctap21() {
            options.push(("credMgmt".to_string(), true));
            options.push(("pinUvAuthToken".to_string(), true));
        } else {
            options.push(("credentialMgmtPreview".to_string(), true));
        }
        let discoverable = self
            .state
            .credentials
            .iter()
            .filter(|c| c.discoverable)
            .count();
        ctap::GetInfoResponse {
            versions: c.versions(),
            extensions: vec![
                ctap::extension::CRED_PROTECT.into(),
                ctap::extension::HMAC_SECRET.into(),
            ],
            aaguid: c.aaguid,
            options,
            max_msg_size: Some(c.max_msg_size),
            pin_uv_auth_protocols: vec![2, 1],
            max_credential_count_in_list: Some(8),
            max_credential_id_length: Some(128),
            transports: match c.profile {
                FidoProfile::YubiKey5 => vec!["nfc".into(), "usb".into()],
                FidoProfile::C4000 => vec!["smart-card".into()],
            },
            algorithms: vec![ctap::cose::ES256],
            min_pin_length: Some(self.min_pin_length(pins) as u64),
            firmware_version: Some(c.firmware_version_number()),
            remaining_discoverable_credentials: c
                .ctap21()
                .then(|| c.max_discoverable_credentials.saturating_sub(discoverable) as u64),
        }
    }

    fn min_pin_length(&self, pins: &dyn FidoPinStore) -> u8 {
        self.config
            .min_pin_length
            .max(pins.min_pin_length().unwrap_or(0))
    }

    /// Asks for user presence, unless the device has no touch sensor (a
    /// C4000: presence is implied by the card being in the reader).
    fn user_presence(&self, presence: &mut dyn UserPresence) -> Result<(), CtapError> {
        if !self.config.touch_sensor {
            return Ok(());
        }
        presence.request_user_presence().into_result()
    }

    /// authenticatorReset (0x07): only within 10 s of power-up, and only
    /// with user presence.
    fn reset(
        &mut self,
        pins: &mut dyn FidoPinStore,
        presence: &mut dyn UserPresence,
    ) -> Result<(), CtapError> {
        if self.clock.now().duration_since(self.volatile.powered_up) > RESET_WINDOW {
            return Err(CtapError::new(
                StatusCode::ERR_NOT_ALLOWED,
                "reset only within 10 s of power-up",
            ));
        }
        self.user_presence(presence)?;
        self.state.credentials.clear();
        self.state.sign_count = 0;
        pins.on_authenticator_reset();
        self.volatile.token = None;
        self.volatile.consecutive_mismatches = 0;
        self.volatile.key_agreement = KeyAgreementKey::generate(&mut rand::rngs::OsRng);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
