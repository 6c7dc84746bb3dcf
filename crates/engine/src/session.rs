//! A device session, read top to bottom: Issue (PIV, the person's own PIN,
//! the passkey), Recycle and Change PIN, as one machine without I/O.
//!
//! The server owns a [`DeviceSession`] between round trips (sealed under
//! the KEK: it holds PINs, the PUK and management keys). On each relay
//! result it calls [`DeviceSession::step`] with an [`Input`] and carries out
//! the [`Effect`] it gets back, feeding the outcome in as the next input,
//! until the effect is a batch for the device or the person ([`Effect::Send`])
//! or the end of the session ([`Effect::End`]):
//!
//! ```text
//! Issue      AwaitWitness ─relayed─► AwaitKeys ─relayed─► [VerifyAttestation ─attested─►]
//!            Certify ─certified─► [AwaitNewPin ─answers─►] AwaitWrites(+FIDO probe)
//!            ─relayed─► End(issued)                                 (no FIDO application)
//!                     └► Fido: Pin ─answers─► FetchCreationOptions ─options─► Token
//!                        ─relayed─► Credential ─relayed─► VerifyPasskeyAttestation
//!                        ─attested─► RegisterPasskey ─registered─►
//!                        [NewPin ─answers─► PinChanged ─relayed─►] End(issued)
//! Recycle    Recycle ─relayed─► … ─relayed─► End(recycled)
//! Change PIN ChangePin ─relayed─► prompts ─answers─► change ─relayed─► End(pin_changed)
//! ```
//!
//! Each state is a type of [`crate::piv`], [`crate::fido`], [`crate::recycle`]
//! or [`crate::change_pin`] that consumes its input and returns the next
//! state, so a move the flow does not have cannot be written here. The one
//! runtime refusal is the match on (state, input) in [`DeviceSession::step`]:
//! sealed state meeting an input from the wire it does not take.
//!
//! Any failure ends the attempt: [`Effect::End`] says what the server
//! records (certificates of the attempt revoked, a registered passkey
//! deleted again, the device back to Produced (Failed)); the session keeps
//! what Retry needs. The random source and the clock come in through
//! [`Context`], so a whole flow is reproducible in tests.

use std::collections::BTreeMap;

use keyward_domain::{
    Device, DevicePolicy, DeviceType, DisplayMode, FirmwareVersion, SessionStatus, User,
    ValidationError,
};
use rand_core::{CryptoRngCore, RngCore};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::batch::{Batch, Failure, Response};
use crate::change_pin::{self, PinChange};
use crate::failure::{FailureCode, Step};
use crate::fido::{
    self, AwaitCredential, AwaitInfo, AwaitPin, AwaitToken, CreationRequest, FidoPlan,
    FidoRegistration, PinSource, Registration,
};
use crate::knowledge::{DeviceSecrets, Known};
use crate::piv::{
    AwaitCertificates, AwaitKeys, AwaitWitness, AwaitWrites, Certified, GeneratedKey, PivIssuance,
    PivPlan, Secret,
};
use crate::plan::{
    factory_management_algorithm, initial_pin, piv_plan, random_puk, PlanSecrets, FACTORY_PUK,
};
use crate::prompt::{Prompt, PromptKind};
use crate::recycle::{self, RecyclePlan, Recycling};
use crate::unlock::{self, FidoOutcome, Unlock, UnlockPlan};
use crate::update::{self, Update, UpdatePlan};
use crate::ManagementKey;

/// The person's answers to a prompt batch, by prompt kind.
pub type Answers = BTreeMap<String, String>;

/// The format of the sealed session state this release writes. States
/// sealed before the field existed are format 1. A release reads every
/// format before its own (a session started before an upgrade finishes
/// after it) and refuses a newer one.
pub const SEALED_FORMAT: u32 = 1;

/// What a step needs besides the session: the policy and user of the
/// session, the clock and the random source.
pub struct Context<'a> {
    pub policy: &'a DevicePolicy,
    pub user: &'a User,
    pub now: OffsetDateTime,
    pub rng: &'a mut dyn CryptoRngCore,
}

/// What the machine is fed.
pub enum Input<'a> {
    /// The client's result for the batch out now: the device's responses
    /// (a prefix when it stopped), the person's answers to a prompt batch,
    /// and the transport's cause when the device went away mid-batch.
    Relayed {
        responses: &'a [Response],
        answers: &'a Answers,
        transport_error: Option<&'a str>,
    },
    /// The server verified the keys' attestations against its roots
    /// (one outcome per generated key, in order); `required`: "Require
    /// device attestation".
    Attested {
        outcomes: Vec<Result<(), String>>,
        required: bool,
    },
    /// The server verified the makeCredential's packed attestation against
    /// its FIDO roots and the device type's AAGUIDs; `required` as above.
    PasskeyAttested {
        outcome: Result<(), String>,
        required: bool,
    },
    /// The CA's certificates for the keys and its signature of the CHUID.
    Certified(Result<Certified, Failure>),
    /// Graph's creationOptions for the user as the service knows them.
    CreationOptions(Result<(String, CreationRequest), Failure>),
    /// Graph registered the passkey: the method's id and AAGUID.
    Registered(Result<RegisteredMethod, Failure>),
}

/// The fido2AuthenticationMethod Graph created.
pub struct RegisteredMethod {
    pub id: String,
    pub aaguid: Option<String>,
}

/// What the server must do next.
#[derive(Debug)]
pub enum Effect {
    /// Seal the session and send this batch (device commands, or prompts
    /// the person answers); the next input is its relayed result.
    Send(Batch),
    /// Verify each key's attestation (and the device attestation
    /// certificate's chain, and the serial it names) against the roots.
    VerifyAttestation {
        serial: u64,
        /// The firmware the plan was made for (the attestation must name it).
        firmware: Option<(u8, u8, u8)>,
        device_certificate: Option<Vec<u8>>,
        keys: Vec<GeneratedKey>,
    },
    /// Verify the passkey's attestation (packed, chain to the FIDO roots,
    /// an AAGUID of the device's type and firmware) before Graph sees it.
    VerifyPasskeyAttestation { registration: Registration },
    /// Certify each key with its PKI application's template, and sign the
    /// CHUID (the CMS SignedData of tag 3E).
    Certify {
        keys: Vec<GeneratedKey>,
        chuid_to_sign: Vec<u8>,
    },
    /// Fetch the creationOptions of the policy's Passkey-Enabled Service.
    FetchCreationOptions { service_id: Uuid },
    /// POST the registration to the Passkey-Enabled Service.
    RegisterPasskey {
        service_id: Uuid,
        entra_user: String,
        display_name: String,
        registration: Registration,
    },
    /// The session is over: record it.
    End(Ending),
}

/// How a session ends, and what the server records with it (one write).
#[derive(Debug)]
pub struct Ending {
    pub status: SessionStatus,
    /// The step the session ends at (`done` when it succeeded).
    pub step: String,
    pub failure: Option<Failure>,
    /// The device record's move.
    pub device: DeviceMove,
    /// Certificates put on the device (or, when `revoked`, issued by a
    /// failed attempt and revoked with it), by slot.
    pub certificates: Vec<(u8, Vec<u8>)>,
    /// The passkey registered (or, when `revoked`, registered by the failed
    /// attempt and deleted at its service again after the write).
    pub passkey: Option<PasskeyRecord>,
    /// The slots whose key the device proved it generated (attestation
    /// verified): their certificates are recorded "attested".
    pub attested_slots: Vec<u8>,
    /// The credentials above are recorded revoked at `at`.
    pub revoked: bool,
    /// An update kept the old key of a slot in a retired slot: (from, to);
    /// its certificate on record moves with it.
    pub retired: Option<(u8, u8)>,
    /// Not Displayed: the generated PIN, kept sealed for Get Initial PIN.
    pub initial_pin: Option<Secret>,
    /// A failed PIN change: the tries the device has left.
    pub tries_left: Option<u8>,
    /// The device's FIDO application was reset: the passkeys on record for
    /// it (before this session's) no longer exist on it and are deleted at
    /// their service.
    pub passkeys_erased: bool,
    /// The device's "passkey to register again" flag, when the session
    /// decided it (set: the reset erased a passkey that was not replaced;
    /// cleared: a new one was registered).
    pub passkey_reregistration: Option<bool>,
    pub at: OffsetDateTime,
}

/// What a session that succeeded wants the person to know besides its
/// status (shown with the session, kept in its sealed end state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// `fido_pin_needs_reinsert`, `fido_pin_still_blocked`,
    /// `passkey_registered_again`, `passkey_not_registered`,
    /// `fido_reset`.
    pub code: String,
    pub message: String,
}

/// How the device record moves when a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceMove {
    /// It stays as it is (a failed recycle, a PIN change).
    Stays,
    /// Issued to the session's user.
    Issued,
    /// Back to Produced (Failed): the attempt can be retried, cancelled or recycled.
    Failed,
    /// Available (Recycled); its credentials are revoked and its passkeys deleted.
    Recycled,
}

/// Why an input was refused: nothing moved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the session has ended")]
    Finished,
    /// The sealed state cannot take this input (a server defect).
    #[error("{0}")]
    OutOfOrder(&'static str),
}

/// What a passkey credential keeps on record: enough to find and delete it
/// at Graph again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasskeyRecord {
    pub passkey_service_id: Uuid,
    pub entra_user: String,
    pub graph_id: String,
    /// base64url.
    pub credential_id: String,
    pub aaguid: String,
    /// Whether the device's attestation of the credential verified (None:
    /// recorded before attestation was checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attested: Option<bool>,
}

/// A device session between round trips, as the server seals it.
#[derive(Serialize, Deserialize)]
pub struct DeviceSession {
    #[serde(default = "format_before_numbering")]
    pub format: u32,
    #[serde(rename = "engine")]
    state: State,
    /// The batch out now (sent again on request after a dropped connection).
    batch: Batch,
    pub user_login: String,
    pub policy_name: String,
    pub serial: u64,
    /// A PIN Keyward generated (Not Displayed): kept for Get Initial PIN.
    #[serde(default)]
    initial_pin: Option<Secret>,
    /// The attempt under way or failed (for Retry); dropped when the session ends.
    #[serde(default)]
    attempt: Option<Attempt>,
    /// Not Displayed with "Change PIN during issuance" = Yes: the person
    /// sets their own PIN at the end (a `set_new_pin` prompt).
    #[serde(default)]
    change_pin_at_end: bool,
    /// What the server keeps of the device's secrets after the session:
    /// the PUK and the management key, for Recycle.
    #[serde(default)]
    kept: Option<Kept>,
    /// What the ended session wants the person to know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    notice: Option<Notice>,
    /// An update under way: what it carries between its parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    update: Option<UpdateCarry>,
}

/// What an update carries from its PIV part to its end.
#[derive(Serialize, Deserialize)]
struct UpdateCarry {
    /// The policy adds a passkey: the FIDO step follows the PIV part.
    passkey: bool,
    /// The slots whose new key's attestation verified.
    #[serde(default)]
    attested: Vec<u8>,
    /// The old 9D key moved to a retired slot: (from, to).
    #[serde(default)]
    retired: Option<(u8, u8)>,
}

fn format_before_numbering() -> u32 {
    1
}

/// The states, by the names sealed sessions carry.
// One state at a time, sealed as JSON: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize)]
enum State {
    AwaitWitness(AwaitWitness),
    AwaitKeys(AwaitKeys),
    /// Keys generated and attested: the server certifies them.
    AwaitAttested(AwaitCertificates),
    AwaitCertified(AwaitCertificates),
    /// Keys certified; the person chooses their own PIN (prompt batch out).
    AwaitNewPin(AwaitCertificates, Certified),
    AwaitWrites(AwaitWrites),
    /// The PIV writes with the FIDO step's probe appended (the number of
    /// PIV commands first in the batch).
    AwaitWritesAndFido(AwaitWrites, usize, Box<FidoSession>),
    Fido(Box<FidoSession>),
    Recycle(Recycling),
    ChangePin(PinChange),
    Unlock(Unlock),
    /// An update's PIV part (batches, attestation, certification).
    Update(Update),
    /// An update's last PIV batch with the FIDO step's probe appended (the
    /// number of PIV commands first in the batch).
    UpdateWithFido(Update, usize, Box<FidoSession>),
    Finished,
}

/// What the server keeps of a device's secrets after a session (never the
/// PIN): the PUK (custody: Unlock spends it, Recycle needs it) and the
/// management key. Carried forward, sealed, by every later session.
#[derive(Clone, Serialize, Deserialize)]
pub struct Kept {
    pub puk: Known<Secret>,
    pub management_key: Known<ManagementKey>,
    /// The device blocked its PUK (an unlock spent its last try): only a
    /// recycle helps.
    #[serde(default)]
    pub puk_blocked: bool,
}

/// How sure the server is of a device's PUK (for the portal and the
/// unlock's refusals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PukCustody {
    /// Kept and sure.
    Known,
    /// Kept, but one of two values (a change whose outcome is unknown):
    /// "unlock after next update".
    Uncertain,
    /// Not kept (a device from before custody, or never personalised by
    /// Keyward): "unlock after next update".
    Unknown,
    /// The device blocked it: recycle and re-issue.
    Blocked,
}

/// Why an unlock is refused before the device is touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnlockRefused {
    pub code: &'static str,
    pub message: String,
}

impl Kept {
    fn from_known(k: &DeviceSecrets) -> Kept {
        Kept {
            puk: k.puk.clone(),
            management_key: k.management_key.clone(),
            puk_blocked: false,
        }
    }
}

/// What a retry needs: the plan, what the device's secrets are now, and the
/// certificates issued in this attempt that are not on record yet (revoked
/// if the attempt fails).
#[derive(Clone, Serialize, Deserialize)]
struct Attempt {
    plan: PivPlan,
    known: DeviceSecrets,
    #[serde(default, with = "crate::b64::keyed")]
    certificates: Vec<(u8, Vec<u8>)>,
    /// The slots whose attestation verified in this attempt.
    #[serde(default)]
    attested: Vec<u8>,
}

/// The FIDO step's state: its stage, and the passkey it registers.
#[derive(Serialize, Deserialize)]
struct FidoSession {
    stage: Stage,
    #[serde(flatten)]
    passkey: Passkey,
}

#[derive(Serialize, Deserialize)]
struct Passkey {
    service_id: Uuid,
    /// The user as Entra knows them (UPN, else the login, or the object ID).
    entra_user: String,
    /// The passkey's display name (from the FIDO application's template).
    display_name: String,
    /// The PIV certificates of this attempt, recorded with the passkey.
    certificates: Vec<(u8, Vec<u8>)>,
    /// The device's attestation of the credential verified.
    #[serde(default)]
    attested: bool,
    /// Shared PIN, Not Displayed, "Change PIN during issuance" = Yes: the
    /// initial PIN, which the person replaces after the registration.
    #[serde(default)]
    change_pin_after: Option<Secret>,
    /// The session the registration belongs to.
    #[serde(default)]
    after: AfterFido,
}

/// Which session a FIDO registration is part of: where it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum AfterFido {
    /// Issue: the registration is the last step; the device is issued.
    #[default]
    Issue,
    /// Unlock: the FIDO application was reset (blocked FIDO PIN); the
    /// passkey it erased is registered again, and the session ends
    /// `unlocked` whether or not that works (the PIV PIN is unlocked).
    Unlock,
    /// Update: the passkey the update adds; the PIV part is done.
    Update,
}

#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize)]
enum Stage {
    Info(AwaitInfo),
    Pin(AwaitPin),
    /// Answers in, creationOptions asked of Graph (within one relay step).
    Options(AwaitPin, Answers),
    Token(AwaitToken),
    Credential(AwaitCredential),
    /// makeCredential answered; its attestation is verified.
    Attesting(Registration),
    /// Attestation checked; the registration is POSTed to Graph.
    Registering(Registration),
    /// Registered; the person chooses their device PIN (prompt batch out).
    NewPin(PasskeyRecord),
    /// Registered; the PIN change batch is out.
    PinChanged(PasskeyRecord, Batch),
}

/// Where a step leads inside [`DeviceSession::step`] (one at a time, moved
/// at once: the size difference does not matter).
#[allow(clippy::large_enum_variant)]
enum Next {
    /// A new state and the effect to carry out.
    To(State, Effect),
    /// The session succeeded with these credentials.
    Issued(Vec<(u8, Vec<u8>)>, Option<PasskeyRecord>),
    /// The attempt failed (a passkey registered in it is deleted again).
    Failed(Failure, Option<PasskeyRecord>),
    /// An unlock's FIDO reset is followed by a registration: it registered
    /// this passkey, or failed (the passkey stays to be registered again).
    Unlocked(Result<PasskeyRecord, Failure>),
    /// The update is done: the certificates written (by slot), the passkey.
    Updated(Vec<(u8, Vec<u8>)>, Option<PasskeyRecord>),
    /// The update failed. `written`: the PIV part was done (its
    /// certificates are on the device and recorded); else `certificates`
    /// were certified in the attempt and are revoked.
    UpdateFailed {
        failure: Failure,
        certificates: Vec<(u8, Vec<u8>)>,
        written: bool,
    },
}

fn send(state: State, batch: Batch) -> Next {
    Next::To(state, Effect::Send(batch))
}

/// What Add Device asks of a new issuance (checked by the server before:
/// the device is available, the policy fits it).
pub struct NewIssuance<'a> {
    pub policy: &'a DevicePolicy,
    pub device: &'a Device,
    pub user_login: &'a str,
    /// "Device initial PIN display mode".
    pub display_mode: DisplayMode,
    /// "Change PIN during issuance".
    pub change_pin_during_issuance: bool,
    /// The PIN entered (Displayed, Disguised) and again (Disguised).
    pub pin: Option<&'a str>,
    pub confirm_pin: Option<&'a str>,
    /// The master key per-device management keys are derived from.
    pub master_key: &'a [u8],
}

impl DeviceSession {
    // ── Starting ─────────────────────────────────────────────────────────

    /// Add Device: decides the plan (the PIN by display mode, a random PUK,
    /// a CHUID valid five years from `now`), then the first batch. Not
    /// Displayed: with "Change PIN during issuance" the person sets their
    /// own PIN at the end (a prompt); without, the generated PIN is kept for
    /// Get Initial PIN.
    pub fn start_issue(
        req: NewIssuance<'_>,
        now: OffsetDateTime,
        rng: &mut dyn RngCore,
    ) -> Result<(DeviceSession, Batch), ValidationError> {
        let pin = initial_pin(
            req.display_mode,
            &req.policy.pin_application,
            req.pin,
            req.confirm_pin,
            rng,
        )?;
        let change_pin_at_end = pin.generated && req.change_pin_during_issuance;
        let kept_pin = (pin.generated && !change_pin_at_end).then(|| pin.pin.clone());
        let mut guid = [0u8; 16];
        rng.fill_bytes(&mut guid);
        let expiration = (now + time::Duration::days(5 * 365)).date();
        let plan = piv_plan(
            req.policy,
            req.device,
            PlanSecrets {
                pin: pin.pin,
                puk: random_puk(rng),
                master_key: req.master_key,
                chuid_guid: guid,
                credential_number: rng.next_u32() % 1_000_000,
                expiration: format!(
                    "{:04}{:02}{:02}",
                    expiration.year(),
                    expiration.month() as u8,
                    expiration.day()
                ),
            },
        )?;
        Ok(DeviceSession::issue(
            plan,
            req.user_login,
            &req.policy.name,
            kept_pin,
            change_pin_at_end,
        ))
    }

    /// Issue: the PIV personalisation of `plan`, then the FIDO step if the
    /// policy has a FIDO application.
    pub fn issue(
        plan: PivPlan,
        user_login: &str,
        policy_name: &str,
        initial_pin: Option<Secret>,
        change_pin_at_end: bool,
    ) -> (DeviceSession, Batch) {
        let attempt = Attempt {
            known: DeviceSecrets::from_plan(&plan),
            plan: plan.clone(),
            certificates: vec![],
            attested: vec![],
        };
        let serial = plan.serial;
        let (state, batch) = PivIssuance::start(plan);
        let session = DeviceSession {
            format: SEALED_FORMAT,
            state: State::AwaitWitness(state),
            batch: batch.clone(),
            user_login: user_login.into(),
            policy_name: policy_name.into(),
            serial,
            initial_pin,
            attempt: Some(attempt),
            change_pin_at_end,
            kept: None,
            notice: None,
            update: None,
        };
        (session, batch)
    }

    /// Recycle the device `last` (the device's latest session) left: from
    /// the secrets it kept, else the factory values.
    pub fn recycle(
        last: &DeviceSession,
        device_type: DeviceType,
        firmware: Option<FirmwareVersion>,
        fido_reset: bool,
    ) -> (DeviceSession, Batch) {
        let factory =
            ManagementKey::factory_default(factory_management_algorithm(device_type, firmware));
        let kept = last.kept.clone().unwrap_or_else(|| Kept {
            puk: Known::sure(Secret::new(FACTORY_PUK)),
            management_key: Known::sure(factory.clone()),
            puk_blocked: false,
        });
        let plan = RecyclePlan {
            device_type,
            serial: last.serial,
            firmware: firmware.map(|f| (f.major as u8, f.minor as u8, f.patch as u8)),
            management_key: kept.management_key.clone(),
            puk: kept.puk.clone(),
            factory_management_key: factory,
            fido_reset,
        };
        let (state, batch) = Recycling::start(plan);
        last.follow_up(State::Recycle(state), batch, Some(kept))
    }

    /// Change PIN of the device `last` (its latest session) issued.
    pub fn change_pin(last: &DeviceSession) -> (DeviceSession, Batch) {
        let (state, batch) = PinChange::start();
        // What a later Recycle needs stays with the latest session.
        last.follow_up(State::ChangePin(state), batch, last.kept.clone())
    }

    /// What the server keeps of the device's secrets after this session
    /// (offline unlock reads the management key or the PUK from it).
    pub fn kept(&self) -> Option<&Kept> {
        self.kept.as_ref()
    }

    /// How sure the server is of the PUK of the device `self` (its latest
    /// session) left.
    pub fn puk_custody(&self) -> PukCustody {
        match &self.kept {
            None => PukCustody::Unknown,
            Some(k) if k.puk_blocked => PukCustody::Blocked,
            Some(k) if k.puk.alternative.is_some() => PukCustody::Uncertain,
            Some(_) => PukCustody::Known,
        }
    }

    /// Unlock the device `last` (its latest session) left: its PIN reset
    /// with the PUK kept, the PUK replaced by `new_puk`. Refused before the
    /// device is touched when no PUK is kept or the device blocked it.
    pub fn unlock(
        last: &DeviceSession,
        device_type: DeviceType,
        firmware: Option<FirmwareVersion>,
        new_puk: Secret,
        fido: unlock::FidoPin,
    ) -> Result<(DeviceSession, Batch), UnlockRefused> {
        let kept = match (&last.kept, last.puk_custody()) {
            (_, PukCustody::Blocked) => {
                return Err(UnlockRefused {
                    code: "puk_blocked",
                    message: format!(
                        "device {} blocked its PUK: recycle and re-issue the device",
                        last.serial
                    ),
                })
            }
            (Some(k), _) => k.clone(),
            (None, _) => {
                return Err(UnlockRefused {
                    code: "puk_unknown",
                    message: format!(
                        "Keyward does not hold the PUK of device {}: unlock after its next update, or recycle it",
                        last.serial
                    ),
                })
            }
        };
        let plan = UnlockPlan {
            device_type,
            serial: last.serial,
            firmware: firmware.map(|f| (f.major as u8, f.minor as u8, f.patch as u8)),
            puk: kept.puk.clone(),
            new_puk,
            fido,
        };
        let (state, batch) = Unlock::start(plan);
        Ok(last.follow_up(State::Unlock(state), batch, Some(kept)))
    }

    /// Update the device `last` (its latest session) left to `cx.policy`
    /// (the request's target): the PIV part `plan`, then, with `passkey`,
    /// the policy's passkey registered. Refused before the device is
    /// touched when the plan cannot be built.
    pub fn update(
        last: &DeviceSession,
        plan: UpdatePlan,
        passkey: bool,
        cx: &mut Context<'_>,
    ) -> Result<(DeviceSession, Batch), Failure> {
        let device_type = plan.device_type;
        let (state, batch, last_piv) = Update::start(plan)?;
        let (mut session, _) = last.follow_up(State::Finished, Batch::default(), last.kept.clone());
        session.policy_name = cx.policy.name.clone();
        session.update = Some(UpdateCarry {
            passkey,
            attested: Vec::new(),
            retired: None,
        });
        let next = session.update_send(state, batch, last_piv, device_type, cx);
        match next {
            Next::To(state, Effect::Send(batch)) => {
                session.send(state, batch.clone());
                Ok((session, batch))
            }
            _ => Err(Failure::new(
                FailureCode::Internal,
                Step::IdentifyDevice,
                "the update's first batch could not be built",
            )),
        }
    }

    fn follow_up(&self, state: State, batch: Batch, kept: Option<Kept>) -> (DeviceSession, Batch) {
        let session = DeviceSession {
            format: SEALED_FORMAT,
            state,
            batch: batch.clone(),
            user_login: self.user_login.clone(),
            policy_name: self.policy_name.clone(),
            serial: self.serial,
            initial_pin: None,
            attempt: None,
            change_pin_at_end: false,
            kept,
            notice: None,
            update: None,
        };
        (session, batch)
    }

    // ── What the server reads ────────────────────────────────────────────

    /// The batch out now.
    pub fn batch(&self) -> &Batch {
        &self.batch
    }

    /// What the ended session wants the person to know.
    pub fn notice(&self) -> Option<&Notice> {
        self.notice.as_ref()
    }

    /// The session reset the device's FIDO application (an unlock of a
    /// blocked FIDO PIN) and has not ended: the passkeys on record are gone
    /// from the device, whatever happens next (Cancel deletes them at their
    /// service too).
    pub fn erased_passkeys(&self) -> bool {
        matches!(&self.state, State::Fido(f) if f.passkey.after == AfterFido::Unlock)
    }

    /// A passkey the FIDO step registered and has not yet put on record
    /// (the device PIN change after the registration is still to come).
    pub fn registered_passkey(&self) -> Option<&PasskeyRecord> {
        match &self.state {
            State::Fido(f) => match &f.stage {
                Stage::NewPin(r) | Stage::PinChanged(r, _) => Some(r),
                _ => None,
            },
            _ => None,
        }
    }

    /// The answers to the prompt batch out now, checked before anything
    /// moves (a refused answer leaves the same prompts out).
    pub fn check_answers(
        &self,
        answers: &Answers,
        policy: &DevicePolicy,
    ) -> Result<(), crate::answers::Refused> {
        if !self.batch.awaits_answers() {
            return Ok(());
        }
        crate::answers::check(&self.batch, answers, policy)?;
        match &self.state {
            State::Fido(f) => match &f.stage {
                Stage::Pin(p) => crate::answers::check_fido_pin(p, answers, policy),
                _ => Ok(()),
            },
            State::ChangePin(_) | State::Update(Update::Pins(_)) => {
                crate::answers::check_current_pin(answers)
            }
            _ => Ok(()),
        }
    }

    // ── One step ─────────────────────────────────────────────────────────

    /// Feeds one input; answers the effect to carry out. A refusal changes
    /// nothing.
    pub fn step(&mut self, input: Input<'_>, cx: &mut Context<'_>) -> Result<Effect, Refusal> {
        if let Input::Relayed {
            responses,
            answers,
            transport_error,
        } = &input
        {
            self.learn(responses, answers, transport_error.is_some());
        }
        let transport_error = match &input {
            Input::Relayed {
                transport_error, ..
            } => *transport_error,
            _ => None,
        };
        let state = std::mem::replace(&mut self.state, State::Finished);
        let next = match (state, input) {
            // Issue, PIV: batch 1 (identity, witness) answered.
            (State::AwaitWitness(s), Input::Relayed { responses, .. }) => {
                match s.on_responses(responses, cx.rng) {
                    Ok((s, batch)) => send(State::AwaitKeys(s), batch),
                    Err(f) => Next::Failed(f, None),
                }
            }
            // Batch 2 (keys generated) answered: attested keys are
            // verified, then the keys certified, with no round trip.
            (State::AwaitKeys(s), Input::Relayed { responses, .. }) => {
                match s.on_responses(responses) {
                    Err(f) => Next::Failed(f, None),
                    Ok(keys) if keys.plan().device_type == DeviceType::YubiKey5 => {
                        let effect = Effect::VerifyAttestation {
                            serial: keys.plan().serial,
                            firmware: keys.plan().firmware,
                            device_certificate: keys
                                .device_attestation_certificate()
                                .map(<[u8]>::to_vec),
                            keys: keys.keys().to_vec(),
                        };
                        Next::To(State::AwaitAttested(keys), effect)
                    }
                    Ok(keys) => certify(keys),
                }
            }
            (State::AwaitAttested(keys), Input::Attested { outcomes, required }) => {
                let unattested = keys
                    .keys()
                    .iter()
                    .zip(&outcomes)
                    .find_map(|(k, o)| o.as_ref().err().map(|why| (k.slot, why.clone())));
                if let Some(a) = &mut self.attempt {
                    a.attested = keys
                        .keys()
                        .iter()
                        .zip(&outcomes)
                        .filter(|(_, o)| o.is_ok())
                        .map(|(k, _)| k.slot)
                        .collect();
                }
                match unattested {
                    Some((slot, why)) if required => Next::Failed(
                        Failure::new(
                            FailureCode::AttestationFailed,
                            Step::AttestKey(slot),
                            format!("the device did not prove it generated the key: {why}"),
                        ),
                        None,
                    ),
                    _ => certify(keys),
                }
            }
            (State::AwaitCertified(keys), Input::Certified(certified)) => match certified {
                Err(f) => Next::Failed(f, None),
                Ok(certified) => self.after_certified(keys, certified, cx),
            },
            // The person chose their PIN: the writes set it.
            (State::AwaitNewPin(mut keys, certified), Input::Relayed { answers, .. }) => {
                match answers.get(PromptKind::SetNewPin.as_str()) {
                    None => Next::Failed(no_answer(PromptKind::SetNewPin, Step::SetNewPin), None),
                    Some(pin) => {
                        keys.set_final_pin(Secret::new(pin.as_str()));
                        self.writes(keys, certified, cx)
                    }
                }
            }
            // Batch 3 (writes, read-back) answered: done, or on to FIDO
            // (a session sealed before the probe rode along the writes).
            (State::AwaitWrites(s), Input::Relayed { responses, .. }) => {
                match s.on_responses(responses) {
                    Err(f) => Next::Failed(f, None),
                    Ok(done) => match self.fido_session(cx) {
                        None => Next::Issued(done.certificates, None),
                        Some((mut fido, probe)) => {
                            fido.passkey.certificates = done.certificates;
                            send(State::Fido(fido), probe)
                        }
                    },
                }
            }
            (
                State::AwaitWritesAndFido(s, piv_commands, mut fido),
                Input::Relayed { responses, .. },
            ) => {
                // The PIV writes' answers first, then the FIDO probe's.
                let (piv, probe) = responses.split_at(piv_commands.min(responses.len()));
                match s.on_responses(piv) {
                    Err(f) => Next::Failed(f, None),
                    Ok(done) => {
                        fido.passkey.certificates = done.certificates;
                        let probe = Input::Relayed {
                            responses: probe,
                            answers: &Answers::new(),
                            transport_error,
                        };
                        match self.fido_step(fido, probe, cx) {
                            Ok(next) => next,
                            Err(fido) => {
                                self.state = State::Fido(fido);
                                return Err(Refusal::OutOfOrder(
                                    "the FIDO step is not at its probe",
                                ));
                            }
                        }
                    }
                }
            }
            (State::Fido(fido), input) => match self.fido_step(fido, input, cx) {
                Ok(next) => next,
                Err(fido) => {
                    self.state = State::Fido(fido);
                    return Err(Refusal::OutOfOrder(
                        "the FIDO step does not take this input now",
                    ));
                }
            },
            (
                State::Recycle(s),
                Input::Relayed {
                    responses, answers, ..
                },
            ) => {
                let plan = s.plan().clone();
                return Ok(match s.on_result(responses, answers, cx.rng) {
                    Ok(recycle::Next::Batch(s, batch)) => self.send(State::Recycle(s), batch),
                    Ok(recycle::Next::Done(recycled)) => {
                        self.kept = Some(Kept {
                            puk: Known::sure(recycled.puk),
                            management_key: Known::sure(recycled.management_key),
                            puk_blocked: false,
                        });
                        Effect::End(self.end(
                            SessionStatus::Recycled,
                            None,
                            DeviceMove::Recycled,
                            cx,
                        ))
                    }
                    Err(f) => {
                        self.recycle_failed(&plan);
                        let f = with_transport_cause(f, transport_error);
                        Effect::End(self.end(SessionStatus::Failed, Some(f), DeviceMove::Stays, cx))
                    }
                });
            }
            (
                State::ChangePin(s),
                Input::Relayed {
                    responses, answers, ..
                },
            ) => {
                let at = self.batch.step();
                return Ok(match s.on_result(responses, answers) {
                    Ok(change_pin::Next::Batch(s, batch)) => self.send(State::ChangePin(s), batch),
                    Ok(change_pin::Next::Done) => Effect::End(self.end(
                        SessionStatus::PinChanged,
                        None,
                        DeviceMove::Stays,
                        cx,
                    )),
                    Err(f) => {
                        let tries_left = change_pin::tries_left(&f);
                        let f = with_transport_cause(f, transport_error);
                        let mut ending = self.end(
                            SessionStatus::PinChangeFailed,
                            Some(f),
                            DeviceMove::Stays,
                            cx,
                        );
                        // The session stays at the batch it failed in.
                        ending.step = at;
                        ending.tries_left = tries_left;
                        Effect::End(ending)
                    }
                });
            }
            (
                State::Unlock(s),
                Input::Relayed {
                    responses, answers, ..
                },
            ) => {
                let at = self.batch.step();
                let device_type = s.plan().device_type;
                return Ok(
                    match s.on_result(responses, answers, transport_error.is_some()) {
                        unlock::Next::Batch(s, batch) => self.send(State::Unlock(s), batch),
                        unlock::Next::End(end) => {
                            // What the device taught about its PUK stays.
                            if let Some(k) = &mut self.kept {
                                k.puk = end.puk;
                                k.puk_blocked |= end.puk_blocked;
                            }
                            match (end.result, end.fido) {
                                (Err(f), _) => {
                                    let f = with_transport_cause(f, transport_error);
                                    let mut ending = self.end(
                                        SessionStatus::UnlockFailed,
                                        Some(f),
                                        DeviceMove::Stays,
                                        cx,
                                    );
                                    ending.step = at;
                                    Effect::End(ending)
                                }
                                // The FIDO application was reset: its passkey
                                // is registered again in this session.
                                (Ok(()), FidoOutcome::Reset) => {
                                    match self.fido_session_after_reset(device_type, cx) {
                                        Some((fido, probe)) => self.send(State::Fido(fido), probe),
                                        None => self.unlocked(None, cx),
                                    }
                                }
                                (Ok(()), fido) => {
                                    self.notice = unlock_notice(&fido);
                                    Effect::End(self.end(
                                        SessionStatus::Unlocked,
                                        None,
                                        DeviceMove::Stays,
                                        cx,
                                    ))
                                }
                            }
                        }
                    },
                );
            }
            // Update: the PIV part, then (with the probe on its last batch)
            // the FIDO step.
            (
                State::Update(u),
                Input::Relayed {
                    responses, answers, ..
                },
            ) => {
                let device_type = u.plan().device_type;
                let next = u.on_relayed(responses, answers, cx.rng);
                self.update_next(next, device_type, cx)
            }
            (State::Update(u), Input::Attested { outcomes, required }) => {
                let device_type = u.plan().device_type;
                let next = u.on_attested(&outcomes, required);
                self.update_next(next, device_type, cx)
            }
            (State::Update(u), Input::Certified(certified)) => {
                let device_type = u.plan().device_type;
                let next = u.on_certified(certified);
                self.update_next(next, device_type, cx)
            }
            (
                State::UpdateWithFido(u, piv_commands, mut fido),
                Input::Relayed {
                    responses, answers, ..
                },
            ) => {
                let device_type = u.plan().device_type;
                let (piv, probe) = responses.split_at(piv_commands.min(responses.len()));
                match u.on_relayed(piv, answers, cx.rng) {
                    update::Next::Done(done) => {
                        if let Some(c) = &mut self.update {
                            c.attested.extend(done.attested);
                            c.retired = done.retired;
                        }
                        fido.passkey.certificates = done.certificates;
                        let probe = Input::Relayed {
                            responses: probe,
                            answers: &Answers::new(),
                            transport_error,
                        };
                        match self.fido_step(fido, probe, cx) {
                            Ok(next) => next,
                            Err(fido) => {
                                self.state = State::Fido(fido);
                                return Err(Refusal::OutOfOrder(
                                    "the FIDO step is not at its probe",
                                ));
                            }
                        }
                    }
                    other => self.update_next(other, device_type, cx),
                }
            }
            (State::Finished, _) => return Err(Refusal::Finished),
            (state, _) => {
                self.state = state;
                return Err(Refusal::OutOfOrder(
                    "the session's state does not take this input",
                ));
            }
        };
        Ok(match next {
            Next::To(state, Effect::Send(batch)) => self.send(state, batch),
            Next::To(state, effect) => {
                self.state = state;
                effect
            }
            Next::Issued(certificates, passkey) => self.issued(certificates, passkey, cx),
            Next::Failed(f, passkey) => {
                self.issue_failed(with_transport_cause(f, transport_error), passkey, cx)
            }
            Next::Updated(certificates, passkey) => self.updated(certificates, passkey, cx),
            Next::UpdateFailed {
                failure,
                certificates,
                written,
            } => self.update_failed(
                with_transport_cause(failure, transport_error),
                certificates,
                written,
                cx,
            ),
            Next::Unlocked(Ok(record)) => self.unlocked(Some(Ok(record)), cx),
            Next::Unlocked(Err(f)) => {
                let f = with_transport_cause(f, transport_error);
                self.unlocked(Some(Err(f)), cx)
            }
        })
    }

    /// What a relayed result teaches about the device's secrets (a change
    /// that may or may not have run when the device went away has an
    /// alternative), and the person's own PIN, which the writes set.
    fn learn(&mut self, responses: &[Response], answers: &Answers, transport_error: bool) {
        let Some(attempt) = &mut self.attempt else {
            return;
        };
        if let Some(pin) = answers.get(PromptKind::SetNewPin.as_str()) {
            if self
                .batch
                .prompts
                .iter()
                .any(|p| p.kind == PromptKind::SetNewPin)
            {
                attempt.plan.final_pin = Some(Secret::new(pin.as_str()));
            }
        }
        attempt
            .known
            .after_batch(&attempt.plan, &self.batch, responses, transport_error);
    }

    // ── Issue: after the keys are certified ──────────────────────────────

    fn after_certified(
        &mut self,
        keys: AwaitCertificates,
        certified: Certified,
        cx: &mut Context<'_>,
    ) -> Next {
        if let Some(a) = &mut self.attempt {
            a.certificates
                .extend(certified.certificates.iter().cloned());
        }
        // Not Displayed, "Change PIN during issuance" = Yes: the person
        // chooses their PIN now, and the writes set it. (A PIN shared with
        // the FIDO application changes after the passkey registration.)
        let shares_pin = cx
            .policy
            .fido_application
            .as_ref()
            .is_some_and(|a| a.share_device_pin);
        if self.change_pin_at_end && keys.plan().final_pin.is_none() && !shares_pin {
            let prompt = Batch::prompts(vec![Prompt::new(
                PromptKind::SetNewPin,
                Step::SetNewPin,
                "Choose the PIN of your device",
            )]);
            return send(State::AwaitNewPin(keys, certified), prompt);
        }
        self.writes(keys, certified, cx)
    }

    /// The writes batch; a FIDO application's probe (getInfo, key
    /// agreement: nothing secret, nothing changed) rides along it.
    fn writes(&self, keys: AwaitCertificates, certified: Certified, cx: &mut Context<'_>) -> Next {
        let plan = keys.plan().clone();
        let (writes, mut batch) = match keys.with_certificates(certified) {
            Ok(w) => w,
            Err(f) => return Next::Failed(f, None),
        };
        match self.fido_session_for(&plan, cx) {
            None => send(State::AwaitWrites(writes), batch),
            Some((fido, probe)) => {
                let piv_commands = batch.commands.len();
                batch.commands.extend(probe.commands);
                send(State::AwaitWritesAndFido(writes, piv_commands, fido), batch)
            }
        }
    }

    // ── Issue: the FIDO step ─────────────────────────────────────────────

    fn fido_session(&self, cx: &mut Context<'_>) -> Option<(Box<FidoSession>, Batch)> {
        let plan = self.attempt.as_ref()?.plan.clone();
        self.fido_session_for(&plan, cx)
    }

    /// The FIDO step of a policy with a FIDO application, and its probe.
    fn fido_session_for(
        &self,
        plan: &PivPlan,
        cx: &mut Context<'_>,
    ) -> Option<(Box<FidoSession>, Batch)> {
        let app = cx.policy.fido_application.as_ref()?;
        // Shared PIN, Not Displayed: the registration shows the initial PIN;
        // with "Change PIN during issuance" = Yes the person's own PIN
        // replaces it after the registration.
        let change_pin_after =
            (app.share_device_pin && self.change_pin_at_end && plan.final_pin.is_none())
                .then(|| plan.new_pin.clone());
        let pin_hidden = self.initial_pin.is_some() || change_pin_after.is_some();
        let pin = match (app.share_device_pin, pin_hidden) {
            (false, _) => PinSource::Unshared,
            // The device PIN after the writes: the person's own if they
            // chose one at the end, else the one set at the start.
            (true, hidden) => {
                let pin = plan
                    .final_pin
                    .clone()
                    .unwrap_or_else(|| plan.new_pin.clone());
                if hidden {
                    PinSource::SharedInitial(pin)
                } else {
                    PinSource::SharedKnown(pin)
                }
            }
        };
        let (stage, probe) = FidoRegistration::start(FidoPlan {
            pin,
            cred_protect: app.cred_protect,
            pin_rules: Some(cx.policy.pin_application.clone()),
            // A USB YubiKey waits for a touch; a C4000 in a reader is present.
            touch_sensor: plan.device_type == DeviceType::YubiKey5,
        });
        let passkey = Passkey {
            service_id: app.passkey_service_id,
            entra_user: cx.user.upn.clone().unwrap_or_else(|| cx.user.login.clone()),
            display_name: passkey_name(
                &app.display_name_template,
                cx.user,
                plan.device_type,
                plan.serial,
            ),
            certificates: Vec::new(),
            attested: false,
            change_pin_after,
            after: AfterFido::Issue,
        };
        Some((
            Box::new(FidoSession {
                stage: Stage::Info(stage),
                passkey,
            }),
            probe,
        ))
    }

    /// An unlock reset the FIDO application (its PIN was blocked): the
    /// policy's passkey is registered again, with a new FIDO PIN of the
    /// person's (a reset device has none). `None`: the policy has no FIDO
    /// application.
    fn fido_session_after_reset(
        &self,
        device_type: DeviceType,
        cx: &mut Context<'_>,
    ) -> Option<(Box<FidoSession>, Batch)> {
        self.fido_session_on_issued(device_type, AfterFido::Unlock, cx)
    }

    /// The FIDO step on an issued device (after a reset, or an update's
    /// passkey): the person enters the FIDO PIN, or sets one when the
    /// device has none (a C4000 sharing its PIN asks the device PIN).
    fn fido_session_on_issued(
        &self,
        device_type: DeviceType,
        after: AfterFido,
        cx: &mut Context<'_>,
    ) -> Option<(Box<FidoSession>, Batch)> {
        let app = cx.policy.fido_application.as_ref()?;
        let (stage, probe) = FidoRegistration::start(FidoPlan {
            pin: PinSource::Unshared,
            cred_protect: app.cred_protect,
            pin_rules: Some(cx.policy.pin_application.clone()),
            touch_sensor: device_type == DeviceType::YubiKey5,
        });
        let passkey = Passkey {
            service_id: app.passkey_service_id,
            entra_user: cx.user.upn.clone().unwrap_or_else(|| cx.user.login.clone()),
            display_name: passkey_name(
                &app.display_name_template,
                cx.user,
                device_type,
                self.serial,
            ),
            certificates: Vec::new(),
            attested: false,
            change_pin_after: None,
            after,
        };
        Some((
            Box::new(FidoSession {
                stage: Stage::Info(stage),
                passkey,
            }),
            probe,
        ))
    }

    /// One input of the FIDO step; an input the stage does not take gives
    /// the step back untouched.
    fn fido_step(
        &mut self,
        fido: Box<FidoSession>,
        input: Input<'_>,
        cx: &mut Context<'_>,
    ) -> Result<Next, Box<FidoSession>> {
        let after = fido.passkey.after;
        let written = fido.passkey.certificates.clone();
        let next = self.fido_stage(fido, input, cx)?;
        // The end of an unlock's or an update's registration is its end.
        Ok(match (after, next) {
            (AfterFido::Unlock, Next::Issued(_, Some(record))) => Next::Unlocked(Ok(record)),
            (AfterFido::Unlock, Next::Failed(f, _)) => Next::Unlocked(Err(f)),
            (AfterFido::Update, Next::Issued(certificates, record)) => {
                Next::Updated(certificates, record)
            }
            (AfterFido::Update, Next::Failed(failure, _)) => Next::UpdateFailed {
                failure,
                certificates: written,
                written: true,
            },
            (_, next) => next,
        })
    }

    /// One input of the FIDO stages.
    fn fido_stage(
        &mut self,
        fido: Box<FidoSession>,
        input: Input<'_>,
        cx: &mut Context<'_>,
    ) -> Result<Next, Box<FidoSession>> {
        let FidoSession { stage, mut passkey } = *fido;
        let to = |stage: Stage, passkey: Passkey, effect: Effect| {
            Next::To(
                State::Fido(Box::new(FidoSession { stage, passkey })),
                effect,
            )
        };
        Ok(match (stage, input) {
            // The probe answered: the PIN and confirmation prompts.
            (Stage::Info(s), Input::Relayed { responses, .. }) => {
                match s.on_responses(responses, cx.rng) {
                    Err(f) => Next::Failed(f, None),
                    Ok(s) => {
                        let prompts = Batch::prompts(s.prompts());
                        to(Stage::Pin(s), passkey, Effect::Send(prompts))
                    }
                }
            }
            (Stage::Pin(s), Input::Relayed { answers, .. }) => {
                if answers
                    .get(PromptKind::ConfirmTouch.as_str())
                    .is_some_and(|a| a == "false")
                {
                    return Ok(Next::Failed(
                        Failure::new(
                            FailureCode::DeclinedByPerson,
                            fido::STEP_REGISTER,
                            "the person declined the passkey registration",
                        ),
                        None,
                    ));
                }
                let effect = Effect::FetchCreationOptions {
                    service_id: passkey.service_id,
                };
                to(Stage::Options(s, answers.clone()), passkey, effect)
            }
            (Stage::Options(s, answers), Input::CreationOptions(options)) => {
                let step = options.and_then(|(entra_user, request)| {
                    passkey.entra_user = entra_user;
                    s.on_answers(&answers, &request, cx.rng)
                });
                match step {
                    Err(f) => Next::Failed(f, None),
                    Ok((s, batch)) => to(Stage::Token(s), passkey, Effect::Send(batch)),
                }
            }
            (Stage::Token(s), Input::Relayed { responses, .. }) => {
                match s.on_responses(responses) {
                    Err(f) => Next::Failed(f, None),
                    Ok((s, batch)) => to(Stage::Credential(s), passkey, Effect::Send(batch)),
                }
            }
            (Stage::Credential(s), Input::Relayed { responses, .. }) => {
                match s.on_responses(responses) {
                    Err(f) => Next::Failed(f, None),
                    Ok(registration) => {
                        let effect = Effect::VerifyPasskeyAttestation {
                            registration: registration.clone(),
                        };
                        to(Stage::Attesting(registration), passkey, effect)
                    }
                }
            }
            // Nothing reaches Graph that the device did not vouch for
            // (when the policy requires attestation).
            (Stage::Attesting(registration), Input::PasskeyAttested { outcome, required }) => {
                if let (Err(why), true) = (&outcome, required) {
                    return Ok(Next::Failed(
                        Failure::new(
                            FailureCode::AttestationFailed,
                            fido::STEP_REGISTER,
                            format!("the device did not prove it made the passkey: {why}"),
                        ),
                        None,
                    ));
                }
                passkey.attested = outcome.is_ok();
                let effect = Effect::RegisterPasskey {
                    service_id: passkey.service_id,
                    entra_user: passkey.entra_user.clone(),
                    display_name: passkey.display_name.clone(),
                    registration: registration.clone(),
                };
                to(Stage::Registering(registration), passkey, effect)
            }
            (Stage::Registering(reg), Input::Registered(method)) => {
                let method = match method {
                    Err(f) => return Ok(Next::Failed(f, None)),
                    Ok(m) => m,
                };
                let record = PasskeyRecord {
                    passkey_service_id: passkey.service_id,
                    entra_user: passkey.entra_user.clone(),
                    graph_id: method.id,
                    credential_id: fido::b64url(&reg.credential_id),
                    aaguid: method
                        .aaguid
                        .unwrap_or_else(|| Uuid::from_bytes(reg.aaguid).to_string()),
                    attested: Some(passkey.attested),
                };
                if passkey.change_pin_after.is_none() {
                    return Ok(Next::Issued(passkey.certificates, Some(record)));
                }
                // The person now chooses their device PIN; the last batch sets it.
                let prompts = Batch::prompts(vec![Prompt::new(
                    PromptKind::SetNewPin,
                    fido::STEP_SET_NEW_PIN,
                    "Choose the PIN of your device (it also unlocks the passkey)",
                )]);
                to(Stage::NewPin(record), passkey, Effect::Send(prompts))
            }
            (Stage::NewPin(record), Input::Relayed { answers, .. }) => {
                let (Some(initial), Some(pin)) = (
                    passkey.change_pin_after.as_ref(),
                    answers.get(PromptKind::SetNewPin.as_str()),
                ) else {
                    return Ok(Next::Failed(
                        no_answer(PromptKind::SetNewPin, fido::STEP_SET_NEW_PIN),
                        Some(record),
                    ));
                };
                match fido::change_shared_pin(initial, pin) {
                    Err(f) => Next::Failed(f, Some(record)),
                    Ok(batch) => to(
                        Stage::PinChanged(record, batch.clone()),
                        passkey,
                        Effect::Send(batch),
                    ),
                }
            }
            (Stage::PinChanged(record, sent), Input::Relayed { responses, .. }) => {
                match fido::on_pin_changed(&sent, responses) {
                    Err(f) => Next::Failed(f, Some(record)),
                    Ok(()) => Next::Issued(passkey.certificates, Some(record)),
                }
            }
            (stage, _) => return Err(Box::new(FidoSession { stage, passkey })),
        })
    }

    // ── Update ───────────────────────────────────────────────────────────

    /// A batch of the update's PIV part; its last carries the FIDO step's
    /// probe when the update adds a passkey.
    fn update_send(
        &mut self,
        state: Update,
        mut batch: Batch,
        last: bool,
        device_type: DeviceType,
        cx: &mut Context<'_>,
    ) -> Next {
        let passkey = self.update.as_ref().is_some_and(|c| c.passkey);
        if !(last && passkey) {
            return send(State::Update(state), batch);
        }
        match self.fido_session_on_issued(device_type, AfterFido::Update, cx) {
            None => send(State::Update(state), batch),
            Some((fido, probe)) => {
                let piv_commands = batch.commands.len();
                batch.commands.extend(probe.commands);
                send(State::UpdateWithFido(state, piv_commands, fido), batch)
            }
        }
    }

    /// Where an update's PIV step leads.
    fn update_next(
        &mut self,
        next: update::Next,
        device_type: DeviceType,
        cx: &mut Context<'_>,
    ) -> Next {
        match next {
            update::Next::Send(state, batch, last) => {
                self.update_send(state, batch, last, device_type, cx)
            }
            update::Next::Attest {
                state,
                keys,
                device_certificate,
            } => {
                let plan = state.plan();
                let effect = Effect::VerifyAttestation {
                    serial: plan.serial,
                    firmware: plan.firmware,
                    device_certificate,
                    keys,
                };
                Next::To(State::Update(state), effect)
            }
            update::Next::Certify(state, keys) => Next::To(
                State::Update(state),
                Effect::Certify {
                    keys,
                    chuid_to_sign: Vec::new(),
                },
            ),
            update::Next::Done(done) => {
                if let Some(c) = &mut self.update {
                    c.attested.extend(done.attested);
                    c.retired = done.retired;
                }
                let passkey = self.update.as_ref().is_some_and(|c| c.passkey);
                match passkey
                    .then(|| self.fido_session_on_issued(device_type, AfterFido::Update, cx))
                    .flatten()
                {
                    // (The probe normally rode on the last PIV batch.)
                    Some((mut fido, probe)) => {
                        fido.passkey.certificates = done.certificates;
                        send(State::Fido(fido), probe)
                    }
                    None => Next::Updated(done.certificates, None),
                }
            }
            update::Next::Failed(failure, certificates) => Next::UpdateFailed {
                failure,
                certificates,
                written: false,
            },
        }
    }

    /// The update is done: the new certificates (and passkey) go on record.
    fn updated(
        &mut self,
        certificates: Vec<(u8, Vec<u8>)>,
        passkey: Option<PasskeyRecord>,
        cx: &Context<'_>,
    ) -> Effect {
        let carry = self.update.take();
        let registered = passkey.is_some();
        let mut ending = self.end(SessionStatus::Updated, None, DeviceMove::Stays, cx);
        ending.certificates = certificates;
        ending.retired = carry.as_ref().and_then(|c| c.retired);
        ending.attested_slots = carry.map(|c| c.attested).unwrap_or_default();
        ending.passkey = passkey;
        ending.passkey_reregistration = registered.then_some(false);
        Effect::End(ending)
    }

    /// The update failed: certificates certified but not written are
    /// revoked; a PIV part that was written stays on record (the next
    /// update finishes the rest).
    fn update_failed(
        &mut self,
        failure: Failure,
        certificates: Vec<(u8, Vec<u8>)>,
        written: bool,
        cx: &Context<'_>,
    ) -> Effect {
        let carry = self.update.take();
        let at = self.batch.step();
        let mut ending = self.end(
            SessionStatus::UpdateFailed,
            Some(failure),
            DeviceMove::Stays,
            cx,
        );
        ending.step = at;
        ending.certificates = certificates;
        // The PIV part written: its retirement stands (else the old key's
        // record stays where it was, and the next attempt finds the key).
        ending.retired = carry.as_ref().and_then(|c| c.retired).filter(|_| written);
        ending.attested_slots = carry.map(|c| c.attested).unwrap_or_default();
        ending.revoked = !written;
        if written {
            self.notice = Some(Notice {
                code: "update_partly_done".into(),
                message: "The certificates were updated; the rest of the update is still pending"
                    .into(),
            });
        }
        Effect::End(ending)
    }

    // ── Endings ──────────────────────────────────────────────────────────

    fn send(&mut self, state: State, batch: Batch) -> Effect {
        self.state = state;
        self.batch = batch.clone();
        Effect::Send(batch)
    }

    /// An unlock that reset the FIDO application ends: `registration` is
    /// the passkey registered again (None: the policy has none to register).
    /// The PIV PIN is unlocked either way; a failed registration leaves the
    /// device flagged for its passkey's registration at the next update.
    fn unlocked(
        &mut self,
        registration: Option<Result<PasskeyRecord, Failure>>,
        cx: &Context<'_>,
    ) -> Effect {
        let (notice, passkey, flag) = match registration {
            None => (
                Notice {
                    code: "fido_reset".into(),
                    message: "The FIDO application was reset: its PIN is cleared and every credential on it erased".into(),
                },
                None,
                None,
            ),
            Some(Ok(record)) => (
                Notice {
                    code: "passkey_registered_again".into(),
                    message: "The FIDO application was reset and the passkey registered again with the new FIDO PIN".into(),
                },
                Some(record),
                Some(false),
            ),
            Some(Err(f)) => (
                Notice {
                    code: "passkey_not_registered".into(),
                    message: format!(
                        "The FIDO application was reset, but the passkey could not be registered again ({}: {}): the device's next update registers it",
                        f.code, f.message
                    ),
                },
                None,
                Some(true),
            ),
        };
        self.notice = Some(notice);
        let mut ending = self.end(SessionStatus::Unlocked, None, DeviceMove::Stays, cx);
        ending.passkey = passkey;
        ending.passkeys_erased = true;
        ending.passkey_reregistration = flag;
        Effect::End(ending)
    }

    /// Issued: the credentials go on record; only what Recycle needs stays.
    fn issued(
        &mut self,
        certificates: Vec<(u8, Vec<u8>)>,
        passkey: Option<PasskeyRecord>,
        cx: &Context<'_>,
    ) -> Effect {
        let mut attested_slots = Vec::new();
        if let Some(a) = self.attempt.take() {
            self.kept = Some(Kept::from_known(&a.known));
            attested_slots = a.attested;
        }
        let initial_pin = self.initial_pin.take();
        self.change_pin_at_end = false;
        let mut ending = self.end(SessionStatus::Issued, None, DeviceMove::Issued, cx);
        ending.certificates = certificates;
        ending.attested_slots = attested_slots;
        ending.passkey = passkey;
        ending.initial_pin = initial_pin;
        Effect::End(ending)
    }

    /// A failed attempt: its certificates and passkey are revoked, the
    /// session keeps what Retry needs (the plan, what the device's secrets
    /// are now, the PIN to show).
    fn issue_failed(
        &mut self,
        f: Failure,
        passkey: Option<PasskeyRecord>,
        cx: &Context<'_>,
    ) -> Effect {
        let mut revoked = Vec::new();
        if let Some(a) = &mut self.attempt {
            a.known.learn_from_failure(&f);
            revoked = std::mem::take(&mut a.certificates);
            self.kept = Some(Kept::from_known(&a.known));
        }
        let mut ending = self.end(SessionStatus::Failed, Some(f), DeviceMove::Failed, cx);
        ending.certificates = revoked;
        ending.passkey = passkey;
        ending.revoked = true;
        Effect::End(ending)
    }

    /// A failed recycle: part of the wipe may have run, so the factory
    /// values become the alternatives a next recycle tries.
    fn recycle_failed(&mut self, plan: &RecyclePlan) {
        let factory_puk = Secret::new(FACTORY_PUK);
        let mut kept = self.kept.take().unwrap_or(Kept {
            puk: plan.puk.clone(),
            management_key: plan.management_key.clone(),
            puk_blocked: false,
        });
        if kept.management_key.value != plan.factory_management_key {
            kept.management_key.alternative = Some(plan.factory_management_key.clone());
        }
        if kept.puk.value != factory_puk {
            kept.puk.alternative = Some(factory_puk);
        }
        self.kept = Some(kept);
    }

    fn end(
        &mut self,
        status: SessionStatus,
        failure: Option<Failure>,
        device: DeviceMove,
        cx: &Context<'_>,
    ) -> Ending {
        self.state = State::Finished;
        self.batch = Batch::default();
        Ending {
            status,
            step: failure
                .as_ref()
                .map(|f| f.step.to_string())
                .unwrap_or_else(|| "done".into()),
            failure,
            device,
            certificates: vec![],
            passkey: None,
            attested_slots: vec![],
            revoked: false,
            retired: None,
            initial_pin: None,
            tries_left: None,
            passkeys_erased: false,
            passkey_reregistration: None,
            at: cx.now,
        }
    }

    // ── Outside a step: Retry, Cancel, a replaced PIN change ─────────────

    /// Retry a failed attempt: the same plan, from what the server knows the
    /// device's secrets are now (keys are generated anew). `None`: the
    /// session keeps nothing to retry from.
    pub fn retry(&mut self) -> Option<Batch> {
        let attempt = self.attempt.take()?;
        let plan = attempt.known.retry_plan(&attempt.plan);
        let (state, batch) = PivIssuance::start(plan.clone());
        self.attempt = Some(Attempt {
            plan,
            known: attempt.known,
            certificates: vec![],
            attested: vec![],
        });
        self.send(State::AwaitWitness(state), batch.clone());
        Some(batch)
    }

    /// Cancel (or abandon): the session ends; only what Recycle needs
    /// stays. Answers the certificates of the attempt (to revoke) and the
    /// passkey it registered and did not record (to revoke and delete).
    pub fn cancel(&mut self) -> (Vec<(u8, Vec<u8>)>, Option<PasskeyRecord>) {
        let passkey = self.registered_passkey().cloned();
        let mut certificates = Vec::new();
        if let Some(a) = self.attempt.take() {
            self.kept = Some(Kept::from_known(&a.known));
            certificates = a.certificates;
        }
        self.initial_pin = None;
        self.state = State::Finished;
        self.batch = Batch::default();
        (certificates, passkey)
    }
}

/// The Keys certified: the next effect asks the CA, unless the CHUID
/// cannot be built.
fn certify(keys: AwaitCertificates) -> Next {
    match keys.chuid_to_sign() {
        Err(f) => Next::Failed(f, None),
        Ok(chuid_to_sign) => {
            let effect = Effect::Certify {
                keys: keys.keys().to_vec(),
                chuid_to_sign,
            };
            Next::To(State::AwaitCertified(keys), effect)
        }
    }
}

/// What an unlock tells about a FIDO PIN it did not reset.
fn unlock_notice(fido: &FidoOutcome) -> Option<Notice> {
    match fido {
        FidoOutcome::Untouched | FidoOutcome::Reset => None,
        FidoOutcome::NeedsReinsert => Some(Notice {
            code: "fido_pin_needs_reinsert".into(),
            message: "The FIDO PIN is temporarily blocked after wrong tries (PIN_AUTH_BLOCKED): remove the device and insert it again; no reset is needed".into(),
        }),
        FidoOutcome::StillBlocked(why) => Some(Notice {
            code: "fido_pin_still_blocked".into(),
            message: format!(
                "The device's PIN is unlocked, but its FIDO PIN stays blocked (PIN_BLOCKED: only a FIDO reset clears it): {why}. Unlock again to reset it"
            ),
        }),
    }
}

fn no_answer(kind: PromptKind, step: Step) -> Failure {
    Failure::new(
        FailureCode::AnswerRequired,
        step,
        format!("the prompt {} needs an answer", kind.as_str()),
    )
}

/// A batch cut short by the transport fails with the transport's cause
/// (`device_removed`, `card_reset`, `reader_gone`, `timeout`,
/// `sharing_violation`), which tells the person what to do, rather than
/// `incomplete_batch`. (`card_reset`: another program reset the card between
/// the session's batches; its security state is gone, Retry starts over.)
pub fn with_transport_cause(mut f: Failure, transport_error: Option<&str>) -> Failure {
    if let Some(cause) = transport_error.and_then(FailureCode::transport_cause) {
        if f.code == FailureCode::IncompleteBatch {
            f.message = format!("{} ({cause})", f.message);
            f.code = cause;
        }
    }
    f
}

/// The passkey's display name from the FIDO application's template.
fn passkey_name(template: &str, user: &User, device_type: DeviceType, serial: u64) -> String {
    let name = template
        .replace("{device_type}", device_type.label())
        .replace("{serial}", &serial.to_string())
        .replace("{display_name}", &user.display_name)
        .replace("{login}", &user.login)
        .replace("{upn}", user.upn.as_deref().unwrap_or(""))
        .replace("{mail}", user.email.as_deref().unwrap_or(""));
    name.chars().take(200).collect()
}
