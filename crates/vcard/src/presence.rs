//! User presence: the "touch" of a security key.
//!
//! `--presence auto` confirms every request at once. `--presence manual`
//! waits for the control interface: its `touch` and `decline` commands call
//! [`PresenceHandle::touch`] / [`PresenceHandle::decline`] (the handle is
//! cloneable and thread-safe). A request that sees neither before the
//! timeout ends as CTAP2_ERR_USER_ACTION_TIMEOUT; a decline as
//! CTAP2_ERR_OPERATION_DENIED; a CTAPHID CANCEL from the platform (noticed
//! by the `tick` callback of [`Presence::wait`]) as
//! CTAP2_ERR_KEEPALIVE_CANCEL.
//!
//! A touch or decline that arrives while no request waits is kept for
//! [`EARLY_EVENT_WINDOW`] and then forgotten: a test (or a person) that
//! touches a moment before the platform's request reaches the device is
//! not penalised, while a stale touch can never confirm a later request.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::fido::{PresenceOutcome, UserPresence};

/// How long a touch given before the request still counts.
pub const EARLY_EVENT_WINDOW: Duration = Duration::from_secs(2);
/// CTAP's usual user-action timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the waiting side is given control (CTAPHID KEEPALIVE).
pub const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceMode {
    Auto,
    Manual,
}

impl std::str::FromStr for PresenceMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "manual" => Ok(Self::Manual),
            other => Err(format!("unknown presence mode {other:?} (auto|manual)")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Touch,
    Decline,
    Cancel,
}

#[derive(Debug, Default)]
struct Shared {
    waiting: bool,
    event: Option<(Event, Instant)>,
}

/// Cloneable handle the control interface uses.
#[derive(Debug, Clone, Default)]
pub struct PresenceHandle {
    inner: Arc<(Mutex<Shared>, Condvar)>,
}

impl PresenceHandle {
    fn signal(&self, event: Event) -> bool {
        let (lock, cvar) = &*self.inner;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        s.event = Some((event, Instant::now()));
        cvar.notify_all();
        s.waiting
    }

    /// The user touches the device. Returns whether a request was waiting.
    pub fn touch(&self) -> bool {
        self.signal(Event::Touch)
    }

    /// The user declines (a real key: lets the request time out or the
    /// platform cancel; here an explicit refusal). Returns whether a
    /// request was waiting.
    pub fn decline(&self) -> bool {
        self.signal(Event::Decline)
    }

    /// Ends a wait in progress as if the platform had cancelled it
    /// (CTAP2_ERR_KEEPALIVE_CANCEL): for `remove`, so a card pulled out
    /// while waiting for a touch stops waiting at once. Call it before
    /// taking the card lock, which the waiting request holds. Nothing is
    /// remembered when no request waits. Returns whether one was waiting.
    pub fn cancel_waiting(&self) -> bool {
        let (lock, cvar) = &*self.inner;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        if s.waiting {
            s.event = Some((Event::Cancel, Instant::now()));
            cvar.notify_all();
        }
        s.waiting
    }

    /// Whether a request is waiting for a touch right now.
    pub fn is_waiting(&self) -> bool {
        self.inner
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .waiting
    }
}

/// User presence of one virtual device.
#[derive(Debug, Clone)]
pub struct Presence {
    mode: PresenceMode,
    timeout: Duration,
    handle: PresenceHandle,
}

impl Presence {
    pub fn new(mode: PresenceMode, timeout: Duration) -> Self {
        Self {
            mode,
            timeout,
            handle: PresenceHandle::default(),
        }
    }

    pub fn auto() -> Self {
        Self::new(PresenceMode::Auto, DEFAULT_TIMEOUT)
    }

    pub fn mode(&self) -> PresenceMode {
        self.mode
    }

    /// The handle for the control interface.
    pub fn handle(&self) -> PresenceHandle {
        self.handle.clone()
    }

    /// Waits for a touch. `tick` runs about every 100 ms while waiting (the
    /// HID transport sends KEEPALIVE and reads CANCEL there); it returns
    /// `false` when the platform cancelled.
    pub fn wait(&self, tick: &mut dyn FnMut() -> bool) -> PresenceOutcome {
        if self.mode == PresenceMode::Auto {
            return PresenceOutcome::Confirmed;
        }
        let (lock, cvar) = &*self.handle.inner;
        let start = Instant::now();
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(s.event, Some((e, at)) if e == Event::Cancel || start.duration_since(at) > EARLY_EVENT_WINDOW)
        {
            s.event = None;
        }
        s.waiting = true;
        let outcome = loop {
            if let Some((event, _)) = s.event.take() {
                break match event {
                    Event::Touch => PresenceOutcome::Confirmed,
                    Event::Decline => PresenceOutcome::Declined,
                    Event::Cancel => PresenceOutcome::Cancelled,
                };
            }
            let elapsed = start.elapsed();
            if elapsed >= self.timeout {
                break PresenceOutcome::TimedOut;
            }
            let (guard, _) = cvar
                .wait_timeout(s, TICK.min(self.timeout - elapsed))
                .unwrap_or_else(|e| e.into_inner());
            s = guard;
            if s.event.is_none() {
                drop(s);
                let go_on = tick();
                s = lock.lock().unwrap_or_else(|e| e.into_inner());
                if !go_on {
                    break PresenceOutcome::Cancelled;
                }
            }
        };
        s.waiting = false;
        outcome
    }

    /// A [`UserPresence`] without a transport callback (ISO 7816 framing,
    /// in-process use).
    pub fn user_presence(&self) -> impl UserPresence + '_ {
        WithTick {
            presence: self,
            tick: || true,
        }
    }

    /// A [`UserPresence`] that runs `tick` while waiting.
    pub fn with_tick<F: FnMut() -> bool>(&self, tick: F) -> WithTick<'_, F> {
        WithTick {
            presence: self,
            tick,
        }
    }
}

/// [`Presence`] plus the transport's tick callback.
pub struct WithTick<'a, F> {
    presence: &'a Presence,
    tick: F,
}

impl<F: FnMut() -> bool> UserPresence for WithTick<'_, F> {
    fn request_user_presence(&mut self) -> PresenceOutcome {
        self.presence.wait(&mut self.tick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_confirms_at_once() {
        assert_eq!(
            Presence::auto().wait(&mut || panic!("no tick in auto")),
            PresenceOutcome::Confirmed
        );
    }

    #[test]
    fn manual_touch_decline_timeout_and_cancel() {
        let p = Presence::new(PresenceMode::Manual, Duration::from_millis(400));
        let h = p.handle();
        let t = std::thread::spawn(move || {
            while !h.is_waiting() {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(h.touch());
        });
        assert_eq!(p.wait(&mut || true), PresenceOutcome::Confirmed);
        t.join().unwrap();

        p.handle().decline();
        assert_eq!(p.wait(&mut || true), PresenceOutcome::Declined);

        let mut ticks = 0;
        assert_eq!(
            p.wait(&mut || {
                ticks += 1;
                true
            }),
            PresenceOutcome::TimedOut
        );
        assert!(ticks >= 2, "keep-alive ticks while waiting: {ticks}");

        assert_eq!(p.wait(&mut || false), PresenceOutcome::Cancelled);
    }

    #[test]
    fn cancel_waiting_ends_a_wait_and_is_not_remembered() {
        let p = Presence::new(PresenceMode::Manual, Duration::from_millis(300));
        assert!(!p.handle().cancel_waiting());
        assert_eq!(
            p.wait(&mut || true),
            PresenceOutcome::TimedOut,
            "no stale cancel"
        );

        let p = Presence::new(PresenceMode::Manual, Duration::from_secs(10));
        let h = p.handle();
        let t = std::thread::spawn(move || {
            while !h.is_waiting() {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(h.cancel_waiting());
        });
        let started = Instant::now();
        assert_eq!(p.wait(&mut || true), PresenceOutcome::Cancelled);
        assert!(started.elapsed() < Duration::from_secs(5));
        t.join().unwrap();
    }

    #[test]
    fn stale_touch_does_not_count() {
        let p = Presence::new(PresenceMode::Manual, Duration::from_millis(150));
        let h = p.handle();
        assert!(!h.touch());
        // Age the event beyond the early window.
        {
            let mut s = h.inner.0.lock().unwrap();
            s.event = Some((
                Event::Touch,
                Instant::now() - EARLY_EVENT_WINDOW - Duration::from_secs(1),
            ));
        }
        assert_eq!(p.wait(&mut || true), PresenceOutcome::TimedOut);
    }
}
