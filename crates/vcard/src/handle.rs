//! The in-process handle: a virtual card shared between its transports
//! (vpcd, the HID socket, the control socket) and other crates' tests,
//! with the control operations (remove, insert, power-cycle, touch,
//! decline) callable directly.

use crate::card::VirtualCard;
use crate::fido::UserPresence;
use crate::presence::{Presence, PresenceHandle};
use keyward_card::ctap::StatusCode;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The card is not in the reader (after `remove`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the virtual card has been removed")]
pub struct CardRemoved;

struct Slot {
    inserted: bool,
    /// Bumped by every remove and insert, so transports notice a cycle.
    generation: u64,
    /// The generation the HID socket has caught up with (None: no HID
    /// socket), so `remove` and `insert` answer only once it is closed or
    /// open again.
    hid_synced: Option<u64>,
}

struct Shared {
    card: Mutex<VirtualCard>,
    slot: Mutex<Slot>,
    changed: Condvar,
    state_file: Option<PathBuf>,
    presence: Presence,
}

/// Cloneable, thread-safe handle on one virtual card.
#[derive(Clone)]
pub struct VcardHandle {
    shared: Arc<Shared>,
}

impl VcardHandle {
    /// A factory-new card of `config` behind a handle (presence automatic,
    /// no state file): the one-liner for other crates' tests.
    pub fn from_config(config: crate::VcardConfig) -> Result<Self, crate::VcardError> {
        Ok(Self::new(VirtualCard::new(config)?))
    }

    /// A handle with presence confirmed automatically and no state file.
    pub fn new(card: VirtualCard) -> Self {
        Self::with_options(card, None, Presence::auto())
    }

    /// A handle that saves the card's state to `state_file` after each
    /// command that changed it, and asks `presence` for user presence.
    pub fn with_options(
        card: VirtualCard,
        state_file: Option<PathBuf>,
        presence: Presence,
    ) -> Self {
        VcardHandle {
            shared: Arc::new(Shared {
                card: Mutex::new(card),
                slot: Mutex::new(Slot {
                    inserted: true,
                    generation: 0,
                    hid_synced: None,
                }),
                changed: Condvar::new(),
                state_file,
                presence,
            }),
        }
    }

    fn card(&self) -> MutexGuard<'_, VirtualCard> {
        self.shared.card.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.shared.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Send a command APDU, as a reader would.
    pub fn transmit(&self, command_apdu: &[u8]) -> Result<Vec<u8>, CardRemoved> {
        if !self.is_inserted() {
            return Err(CardRemoved);
        }
        let mut card = self.card();
        let response = card.transmit(command_apdu);
        self.persist(&mut card);
        Ok(response)
    }

    /// One CTAP request (command byte + CBOR) with the given presence (the
    /// CTAPHID framing passes one that also watches for CANCEL).
    pub fn fido_request(
        &self,
        request: &[u8],
        presence: &mut dyn UserPresence,
    ) -> Result<Vec<u8>, CardRemoved> {
        if !self.is_inserted() {
            return Err(CardRemoved);
        }
        let generation = self.generation();
        let mut card = self.card();
        let response = card.fido_request(request, presence);
        self.persist(&mut card);
        drop(card);
        // Pulled out while it worked (waiting for a touch): no answer.
        if self.generation() != generation {
            return Err(CardRemoved);
        }
        Ok(response)
    }

    fn persist(&self, card: &mut VirtualCard) {
        if card.take_dirty() {
            if let Some(path) = &self.shared.state_file {
                if let Err(e) = card.save(path) {
                    tracing::error!(path = %path.display(), error = %e, "saving the card state failed");
                }
            }
        }
    }

    /// A wrong FIDO PIN typed at the authenticator, as a browser sends one
    /// (getKeyAgreement, then a pinUvAuthToken asked with the wrong PIN's
    /// hash): simulates a person who mistypes, for demonstrations and for
    /// tests of what an unlock does about a blocked FIDO PIN. Answers the
    /// CTAP status of the attempt (`PIN_INVALID`, `PIN_AUTH_BLOCKED`,
    /// `PIN_BLOCKED`, or `PIN_NOT_SET`).
    pub fn wrong_fido_pin(&self) -> Result<StatusCode, CardRemoved> {
        use keyward_card::ctap::platform::{get_key_agreement_request, PinSession};
        use keyward_card::ctap::{self, command, ClientPinResponse, PinProtocol};
        let ask = |req: &ctap::ClientPinRequest| {
            let message = ctap::encode_request(command::CLIENT_PIN, Some(&req.to_value()));
            self.fido_request(&message, &mut crate::fido::AlwaysPresent)
        };
        let out = ask(&get_key_agreement_request(PinProtocol::V1))?;
        let key = ctap::split_response(&out)
            .ok()
            .flatten()
            .and_then(|v| ClientPinResponse::from_value(&v).ok())
            .and_then(|r| r.key_agreement);
        let Some(key) = key else {
            return Ok(StatusCode(out.first().copied().unwrap_or(0x01)));
        };
        let mut rng = rand::rngs::OsRng;
        // getPinToken: every CTAP 2 authenticator takes it.
        let req = PinSession::new(PinProtocol::V1, &key, &mut rng).and_then(|session| {
            session.get_pin_token_request("wrong PIN of the control socket", &mut rng)
        });
        let Ok(req) = req else {
            // The authenticator's key is unusable: not a PIN attempt.
            return Ok(StatusCode::ERR_OTHER);
        };
        let out = ask(&req)?;
        Ok(StatusCode(out.first().copied().unwrap_or(0x01)))
    }

    /// Run `f` with the card locked (diagnostics and tests).
    pub fn with_card<R>(&self, f: impl FnOnce(&mut VirtualCard) -> R) -> R {
        let mut card = self.card();
        let r = f(&mut card);
        self.persist(&mut card);
        r
    }

    pub fn atr(&self) -> Vec<u8> {
        self.card().atr()
    }

    pub fn power_on(&self) {
        self.card().power_on();
    }

    pub fn power_off(&self) {
        self.card().power_off();
    }

    /// Power the card down and up again: security status cleared, and the
    /// FIDO reset window opens.
    pub fn power_cycle(&self) {
        let mut card = self.card();
        card.power_off();
        card.power_on();
    }

    /// The card leaves the reader: transports disconnect (vpcd) or close
    /// (HID socket) until `insert`.
    ///
    /// A request waiting for a touch holds the card lock: the card is marked
    /// out first, then the wait is ended, so that the request sees a removed
    /// card and answers nothing (a real device pulled out cannot answer).
    pub fn remove(&self) {
        {
            let mut slot = self.slot();
            slot.inserted = false;
            slot.generation += 1;
        }
        self.presence().handle().cancel_waiting();
        self.card().power_off();
        self.shared.changed.notify_all();
    }

    /// The card comes back (powered up: the FIDO reset window opens).
    pub fn insert(&self) {
        {
            let mut slot = self.slot();
            if slot.inserted {
                return;
            }
            slot.inserted = true;
            slot.generation += 1;
        }
        self.card().power_on();
        self.shared.changed.notify_all();
    }

    pub fn is_inserted(&self) -> bool {
        self.slot().inserted
    }

    /// Counter bumped by each remove and insert.
    pub fn generation(&self) -> u64 {
        self.slot().generation
    }

    /// Block until the card is inserted (or `timeout` passes); returns whether it is.
    pub fn wait_inserted(&self, timeout: Duration) -> bool {
        let slot = self.slot();
        let (slot, _) = self
            .shared
            .changed
            .wait_timeout_while(slot, timeout, |s| !s.inserted)
            .unwrap_or_else(|e| e.into_inner());
        slot.inserted
    }

    /// The HID socket has caught up with `generation` (closed after a
    /// remove, open after an insert).
    pub fn mark_hid_synced(&self, generation: u64) {
        self.slot().hid_synced = Some(generation);
        self.shared.changed.notify_all();
    }

    /// Block until the HID socket (if any) has caught up with the latest
    /// remove or insert, or `timeout` passes.
    pub fn wait_hid_synced(&self, timeout: Duration) {
        let slot = self.slot();
        let _ = self
            .shared
            .changed
            .wait_timeout_while(slot, timeout, |s| {
                s.hid_synced.is_some_and(|h| h < s.generation)
            })
            .unwrap_or_else(|e| e.into_inner());
    }

    /// Block until the generation differs from `seen` (or `timeout` passes).
    pub fn wait_change(&self, seen: u64, timeout: Duration) -> u64 {
        let slot = self.slot();
        let (slot, _) = self
            .shared
            .changed
            .wait_timeout_while(slot, timeout, |s| s.generation == seen)
            .unwrap_or_else(|e| e.into_inner());
        slot.generation
    }

    /// The user touches the device (manual presence).
    pub fn touch(&self) -> bool {
        self.shared.presence.handle().touch()
    }

    /// The user declines (manual presence).
    pub fn decline(&self) -> bool {
        self.shared.presence.handle().decline()
    }

    /// The presence the CTAPHID framing asks.
    pub fn presence(&self) -> &Presence {
        &self.shared.presence
    }

    pub fn presence_handle(&self) -> PresenceHandle {
        self.shared.presence.handle()
    }
}
