//! The card core: an ISO 7816-4 layer (short and extended APDUs, command
//! chaining, `61xx` + GET RESPONSE, SELECT by AID) over the PIV applet, the
//! FIDO applet (CTAP over ISO 7816) and the card manager. No I/O: the
//! transports (vpcd, in-process handle, HID socket) drive this value.

use crate::ca::{CaError, ManufacturerCa};
use crate::config::{Firmware, ProfileKind, Transport, VcardConfig};
use crate::fido::{
    AlwaysPresent, FidoAuthenticator, FidoConfig, FidoPinStore, FidoState, PinVerification,
    SoftAttestationKey, UserPresence,
};
use crate::piv::{PivApplet, PivState};
use crate::profile::{self, Profile};
use keyward_card::apdu::{sw, CommandApdu, ResponseApdu, CLA_CHAINING, INS_GET_RESPONSE};
use keyward_card::ctap::StatusCode;
use keyward_card::piv::{self as pivdef, ins};
use serde::{Deserialize, Serialize};

/// Longest command a chain may build up (extended APDU maximum).
const MAX_CHAINED_COMMAND: usize = 65_535;
/// The FIDO applet's SELECT answer (CTAP 2.x over ISO 7816).
const FIDO_VERSION: &[u8] = b"FIDO_2_0";

#[derive(Debug, thiserror::Error)]
pub enum VcardError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("state file: {0}")]
    State(String),
}

/// Everything a card keeps across restarts (the `--state` file).
#[derive(Clone, Serialize, Deserialize)]
pub struct CardState {
    pub profile: ProfileKind,
    pub firmware: Firmware,
    pub serial: u32,
    #[serde(default)]
    pub transport: Transport,
    pub piv: PivState,
    pub fido: FidoState,
    pub fido_attestation: SoftAttestationKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applet {
    Piv,
    Fido,
    CardManager,
}

/// A response too long for the host's Le, served by GET RESPONSE.
struct PendingResponse {
    data: Vec<u8>,
    offset: usize,
    sw: u16,
}

/// Data of a command chain received so far.
struct Chain {
    ins: u8,
    p1: u8,
    p2: u8,
    data: Vec<u8>,
}

/// A virtual PIV + FIDO2 card.
pub struct VirtualCard {
    config: VcardConfig,
    profile: Box<dyn Profile>,
    piv: PivApplet,
    fido: FidoAuthenticator,
    fido_attestation: SoftAttestationKey,
    selected: Applet,
    pending: Option<PendingResponse>,
    chain: Option<Chain>,
    fido_dirty: bool,
}

fn fido_config(config: &VcardConfig) -> FidoConfig {
    let fw = (config.firmware.0, config.firmware.1, config.firmware.2);
    match config.profile {
        ProfileKind::Yubikey5 => FidoConfig::yubikey5(fw),
        ProfileKind::C4000 => FidoConfig::c4000(fw),
    }
}

impl VirtualCard {
    /// A factory-new card; loads (or creates) the manufacturer CA in `config.ca_dir`.
    pub fn new(config: VcardConfig) -> Result<VirtualCard, VcardError> {
        let ca = ManufacturerCa::load_or_create(&config.ca_dir)?;
        Self::with_ca(config, &ca)
    }

    /// A factory-new card whose attestation keys are issued by `ca`.
    pub fn with_ca(config: VcardConfig, ca: &ManufacturerCa) -> Result<VirtualCard, VcardError> {
        let profile = profile::for_config(&config);
        let mut piv = PivState::factory(profile.as_ref());
        if profile.has_attestation() {
            crate::yubikey::provision_attestation(&mut piv, ca, config.serial)?;
        }
        let fconfig = fido_config(&config);
        let model = match config.profile {
            ProfileKind::Yubikey5 => "YubiKey 5",
            ProfileKind::C4000 => "Crescendo C4000",
        };
        let att = ca.issue_fido_attestation(fconfig.aaguid, model)?;
        let fido_attestation = SoftAttestationKey::new(&att.key.to_bytes(), vec![att.cert_der])
            .map_err(|e| VcardError::State(format!("attestation key: {e:?}")))?;
        let state = CardState {
            profile: config.profile,
            firmware: config.firmware,
            serial: config.serial,
            transport: config.transport,
            piv,
            fido: FidoState::default(),
            fido_attestation,
        };
        let mut card = Self::from_state(state, config);
        card.fido_dirty = true;
        Ok(card)
    }

    /// A card restored from its saved state. Identity (profile, firmware,
    /// serial, transport) comes from the state; `config` gives the rest.
    pub fn from_state(state: CardState, mut config: VcardConfig) -> VirtualCard {
        config.profile = state.profile;
        config.firmware = state.firmware;
        config.serial = state.serial;
        config.transport = state.transport;
        let profile = profile::for_config(&config);
        let fido = FidoAuthenticator::new(
            fido_config(&config),
            state.fido,
            Box::new(state.fido_attestation.clone()),
        );
        VirtualCard {
            config,
            profile,
            piv: PivApplet::new(state.piv),
            fido,
            fido_attestation: state.fido_attestation,
            selected: Applet::Piv,
            pending: None,
            chain: None,
            fido_dirty: false,
        }
    }

    /// Load a state file, or make a factory-new card if it does not exist.
    pub fn load_or_new(
        config: VcardConfig,
        path: &std::path::Path,
    ) -> Result<VirtualCard, VcardError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let state: CardState = serde_json::from_slice(&bytes)
                    .map_err(|e| VcardError::State(format!("{}: {e}", path.display())))?;
                Ok(Self::from_state(state, config))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::new(config),
            Err(e) => Err(VcardError::State(format!("{}: {e}", path.display()))),
        }
    }

    /// The persistent state.
    pub fn state(&self) -> CardState {
        CardState {
            profile: self.config.profile,
            firmware: self.config.firmware,
            serial: self.config.serial,
            transport: self.config.transport,
            piv: self.piv.state.clone(),
            fido: self.fido.state().clone(),
            fido_attestation: self.fido_attestation.clone(),
        }
    }

    /// Write the state to `path` atomically (temporary file + rename).
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let json = serde_json::to_vec(&self.state()).map_err(std::io::Error::other)?;
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&json)?;
        }
        std::fs::rename(&tmp, path)
    }

    /// Whether persistent state changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        let piv = self.piv.take_dirty();
        let fido = std::mem::take(&mut self.fido_dirty);
        piv || fido
    }

    pub fn config(&self) -> &VcardConfig {
        &self.config
    }

    pub fn profile(&self) -> &dyn Profile {
        self.profile.as_ref()
    }

    pub fn atr(&self) -> Vec<u8> {
        self.profile.atr()
    }

    /// Power-up (cold or warm reset): security status cleared, PIV selected,
    /// and the FIDO reset window opens.
    pub fn power_on(&mut self) {
        self.reset_volatile();
        self.fido.power_cycle();
    }

    /// Power-down: security status is lost.
    pub fn power_off(&mut self) {
        self.reset_volatile();
    }

    fn reset_volatile(&mut self) {
        self.piv.reset_security_status();
        self.selected = Applet::Piv;
        self.pending = None;
        self.chain = None;
    }

    /// Process one command APDU and return the response APDU.
    pub fn transmit(&mut self, command_apdu: &[u8]) -> Vec<u8> {
        let response = self.process(command_apdu);
        if tracing::enabled!(tracing::Level::DEBUG) {
            // Instruction and status word only: data may hold PINs or keys.
            tracing::debug!(
                ins = format_args!("{:02X}", command_apdu.get(1).copied().unwrap_or(0)),
                sw = format_args!("{:04X}", response.sw),
                "APDU"
            );
        }
        response.to_bytes()
    }

    fn process(&mut self, bytes: &[u8]) -> ResponseApdu {
        let apdu = match CommandApdu::parse(bytes) {
            Ok(a) => a,
            Err(_) => {
                self.pending = None;
                self.chain = None;
                return ResponseApdu::status(sw::WRONG_LENGTH);
            }
        };
        // Basic logical channel only; interindustry (00) or proprietary (80) class.
        let class = apdu.cla & !CLA_CHAINING;
        if class != 0x00 && class != 0x80 {
            return ResponseApdu::status(sw::CLA_NOT_SUPPORTED);
        }
        if apdu.ins == INS_GET_RESPONSE && class == 0x00 {
            return self.get_response(&apdu);
        }
        self.pending = None;

        if apdu.cla & CLA_CHAINING != 0 {
            let same = self
                .chain
                .as_ref()
                .is_some_and(|c| (c.ins, c.p1, c.p2) == (apdu.ins, apdu.p1, apdu.p2));
            if !same {
                self.chain = Some(Chain {
                    ins: apdu.ins,
                    p1: apdu.p1,
                    p2: apdu.p2,
                    data: Vec::new(),
                });
            }
            let chain = self.chain.as_mut().expect("just set");
            if chain.data.len() + apdu.data.len() > MAX_CHAINED_COMMAND {
                self.chain = None;
                return ResponseApdu::status(sw::WRONG_LENGTH);
            }
            chain.data.extend_from_slice(&apdu.data);
            return ResponseApdu::status(sw::SUCCESS);
        }
        let mut apdu = apdu;
        if let Some(chain) = self.chain.take() {
            if (chain.ins, chain.p1, chain.p2) != (apdu.ins, apdu.p1, apdu.p2) {
                return ResponseApdu::status(sw::LAST_COMMAND_OF_CHAIN_EXPECTED);
            }
            let mut data = chain.data;
            data.extend_from_slice(&apdu.data);
            apdu.data = data;
        }
        apdu.cla = class;
        let le = apdu.le.unwrap_or(if apdu.extended { 65_536 } else { 256 });
        let response = self.dispatch(&apdu);
        self.limit_to_le(response, le)
    }

    /// Serve at most `le` bytes now; keep the rest for GET RESPONSE (`61xx`).
    fn limit_to_le(&mut self, response: ResponseApdu, le: usize) -> ResponseApdu {
        if response.data.len() <= le {
            return response;
        }
        let first = response.data[..le].to_vec();
        let remaining = response.data.len() - le;
        self.pending = Some(PendingResponse {
            data: response.data,
            offset: le,
            sw: response.sw,
        });
        ResponseApdu::new(first, sw::bytes_remaining(remaining))
    }

    fn get_response(&mut self, apdu: &CommandApdu) -> ResponseApdu {
        if apdu.p1 != 0 || apdu.p2 != 0 {
            self.pending = None;
            return ResponseApdu::status(sw::INCORRECT_P1P2);
        }
        let Some(mut pending) = self.pending.take() else {
            return ResponseApdu::status(sw::CONDITIONS_NOT_SATISFIED);
        };
        let le = apdu.le.unwrap_or(256);
        let end = (pending.offset + le).min(pending.data.len());
        let chunk = pending.data[pending.offset..end].to_vec();
        pending.offset = end;
        let remaining = pending.data.len() - end;
        if remaining == 0 {
            return ResponseApdu::new(chunk, pending.sw);
        }
        self.pending = Some(pending);
        ResponseApdu::new(chunk, sw::bytes_remaining(remaining))
    }

    fn dispatch(&mut self, apdu: &CommandApdu) -> ResponseApdu {
        if apdu.ins == ins::SELECT && apdu.cla == 0 {
            return self.select(apdu);
        }
        // The card manager answers its data objects whatever is selected.
        if apdu.ins == ins::GET_DATA_ISO {
            let tag = u16::from_be_bytes([apdu.p1, apdu.p2]);
            if let Some(value) = self.profile.card_manager_data(tag) {
                let mut tag_bytes = Vec::new();
                keyward_card::tlv::push(&mut tag_bytes, u32::from(tag), &value);
                return ResponseApdu::success(tag_bytes);
            }
        }
        match self.selected {
            Applet::Piv => self.piv.process(self.profile.as_ref(), apdu),
            Applet::Fido => self.fido_apdu(apdu),
            Applet::CardManager => ResponseApdu::status(if apdu.ins == ins::GET_DATA_ISO {
                sw::REFERENCE_DATA_NOT_FOUND
            } else {
                sw::INS_NOT_SUPPORTED
            }),
        }
    }

    fn select(&mut self, apdu: &CommandApdu) -> ResponseApdu {
        if apdu.p1 != 0x04 {
            // No file system: selection by file identifier or path finds nothing.
            return ResponseApdu::status(sw::FILE_NOT_FOUND);
        }
        if apdu.p2 & 0xF3 != 0 {
            return ResponseApdu::status(sw::INCORRECT_P1P2);
        }
        let aid = apdu.data.as_slice();
        if aid.len() >= pivdef::PIV_AID_PREFIX.len() && pivdef::PIV_AID.starts_with(aid) {
            self.selected = Applet::Piv;
            return self.piv.process(self.profile.as_ref(), apdu);
        }
        if aid == pivdef::FIDO_AID && self.config.fido_over_iso() {
            self.leave_piv();
            self.selected = Applet::Fido;
            return ResponseApdu::success(FIDO_VERSION.to_vec());
        }
        if (aid == pivdef::GP_ISD_AID || aid == pivdef::GP_CARD_MANAGER_AID)
            && self.profile.card_manager_data(0x9F7F).is_some()
        {
            self.leave_piv();
            self.selected = Applet::CardManager;
            let mut fci = keyward_card::tlv::encode(0x84, aid);
            keyward_card::tlv::push(&mut fci, 0xA5, &keyward_card::tlv::encode(0x9F65, &[0xFF]));
            return ResponseApdu::success(keyward_card::tlv::encode(0x6F, &fci));
        }
        ResponseApdu::status(sw::FILE_NOT_FOUND)
    }

    /// Selecting another application ends the PIV application's security
    /// status (PIN and management key must be presented again), as on a
    /// YubiKey.
    fn leave_piv(&mut self) {
        if self.selected == Applet::Piv {
            self.piv.reset_security_status();
        }
    }

    /// CTAP over ISO 7816: `80 10` carries a CTAP request. Presence is
    /// implied (a C4000 has no touch sensor; an NFC tap is presence).
    fn fido_apdu(&mut self, apdu: &CommandApdu) -> ResponseApdu {
        match (apdu.cla, apdu.ins) {
            (0x80, ins::CTAP_MSG) => {
                if apdu.data.is_empty() {
                    return ResponseApdu::status(sw::WRONG_LENGTH);
                }
                ResponseApdu::success(self.fido_request(&apdu.data, &mut AlwaysPresent))
            }
            // Requests complete synchronously, so a keep-alive poll has nothing to wait for.
            (0x80, ins::CTAP_GET_RESPONSE) => ResponseApdu::status(sw::CONDITIONS_NOT_SATISFIED),
            (0x80, _) => ResponseApdu::status(sw::INS_NOT_SUPPORTED),
            (0x00, _) => ResponseApdu::status(sw::INS_NOT_SUPPORTED),
            _ => ResponseApdu::status(sw::CLA_NOT_SUPPORTED),
        }
    }

    /// One CTAP request (command byte + CBOR) to the authenticator, with the
    /// PIN store the card's configuration says (the PIV PIN when a C4000
    /// shares it). Used by both framings (ISO 7816 here, CTAPHID over the HID socket).
    pub fn fido_request(&mut self, request: &[u8], presence: &mut dyn UserPresence) -> Vec<u8> {
        self.fido_dirty = true;
        if self.piv.state.pin_shared_with_fido {
            let range = self.profile.pin_length();
            let mut shared = SharedPivPin {
                piv: &mut self.piv,
                min_len: *range.start(),
                max_len: *range.end(),
            };
            self.fido.handle_cbor(request, Some(&mut shared), presence)
        } else {
            self.fido.handle_cbor(request, None, presence)
        }
    }

    /// The FIDO authenticator (for the CTAPHID framing and tests).
    pub fn fido(&mut self) -> &mut FidoAuthenticator {
        &mut self.fido
    }

    /// The PIV applet (tests and diagnostics).
    pub fn piv(&mut self) -> &mut PivApplet {
        &mut self.piv
    }
}

/// The PIV PIN seen as a FIDO PIN store (C4000 shared-PIN mode): one PIN
/// and one retry counter for both applets.
struct SharedPivPin<'a> {
    piv: &'a mut PivApplet,
    min_len: usize,
    max_len: usize,
}

impl FidoPinStore for SharedPivPin<'_> {
    fn is_pin_set(&self) -> bool {
        true
    }

    fn pin_retries(&self) -> u8 {
        self.piv.state.pin.tries_left
    }

    fn verify_pin_hash(&mut self, pin_hash16: &[u8; 16]) -> PinVerification {
        let pin = &mut self.piv.state.pin;
        if pin.blocked() {
            return PinVerification::Blocked;
        }
        self.piv.mark_dirty();
        let pin = &mut self.piv.state.pin;
        let expected = keyward_card::ctap::pin_hash16(&pin.value);
        if crate::keys::ct_eq(&expected, pin_hash16) {
            pin.tries_left = pin.tries_total;
            PinVerification::Match
        } else {
            pin.tries_left -= 1;
            PinVerification::Mismatch {
                retries_left: pin.tries_left,
            }
        }
    }

    fn set_pin(&mut self, pin: &[u8]) -> Result<(), StatusCode> {
        if pin.len() < self.min_len || pin.len() > self.max_len {
            return Err(StatusCode::ERR_PIN_POLICY_VIOLATION);
        }
        self.piv.state.pin.set(pin, false);
        self.piv.mark_dirty();
        Ok(())
    }

    fn min_pin_length(&self) -> Option<u8> {
        Some(self.min_len as u8)
    }

    fn on_authenticator_reset(&mut self) {
        // A FIDO reset must not wipe the PIV PIN.
    }
}
