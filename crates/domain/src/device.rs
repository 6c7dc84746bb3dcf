//! Devices (smart cards and security keys) and their history.

use crate::error::{ValidationError, ValidationResult};
use crate::firmware::FirmwareVersion;
use crate::names::{DeviceState, DeviceType, StateReason};
use crate::state;
use crate::validate;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use time::OffsetDateTime;
use uuid::Uuid;

/// A device serial number: a decimal number (YubiKey serials, Crescendo CSNs as
/// decimal). Serialised as a string so JSON clients never round it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(pub u64);

impl Serial {
    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        let bad = || {
            ValidationError::new(
                "serial_invalid",
                field,
                "serial must be a decimal number of 1 to 20 digits (at most 18446744073709551615)",
            )
        };
        let s = s.trim();
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map(Serial).map_err(|_| bad())
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Serial {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse("serial", s)
    }
}

impl Serialize for Serial {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Serial {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Serial;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal serial number (string or integer)")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Serial, E> {
                Ok(Serial(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Serial, E> {
                u64::try_from(v)
                    .map(Serial)
                    .map_err(|_| E::custom("serial must not be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Serial, E> {
                Serial::parse("serial", v).map_err(|e| E::custom(e.message))
            }
        }
        d.deserialize_any(V)
    }
}

/// Answer-to-reset bytes, hex in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Atr(pub Vec<u8>);

impl Atr {
    /// ISO 7816-3 caps an ATR at 33 bytes.
    pub const MAX_LEN: usize = 33;

    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        let b = validate::hex_bytes(field, s, Self::MAX_LEN)?;
        if b.is_empty() {
            return Err(ValidationError::new(
                "atr_invalid",
                field,
                "ATR must not be empty",
            ));
        }
        Ok(Atr(b))
    }
}

impl fmt::Display for Atr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&validate::to_hex(&self.0))
    }
}

impl Serialize for Atr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Atr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Atr::parse("atr", &s).map_err(|e| serde::de::Error::custom(e.message))
    }
}

/// One inventory row: what an import or an automatic import of an unknown card supplies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    pub device_type: DeviceType,
    pub serial: Serial,
    #[serde(default)]
    pub firmware_version: Option<FirmwareVersion>,
    #[serde(default)]
    pub atr: Option<Atr>,
}

impl NewDevice {
    /// A fresh device in stock: Available, no reason, version 1.
    pub fn into_device(self) -> Device {
        Device {
            id: Uuid::new_v4(),
            device_type: self.device_type,
            serial: self.serial,
            firmware_version: self.firmware_version,
            atr: self.atr,
            state: DeviceState::Available,
            reason: None,
            assigned_user: None,
            device_policy: None,
            version: 1,
            suspended: false,
            passkey_reregistration: false,
            puk_rotation_due: false,
            replacement: None,
        }
    }
}

/// What a device issued in place of another replaces (Replace Device):
/// permanent for a lost, stolen, damaged or expired original (which is
/// terminated when this device is issued), temporary for a forgotten one
/// (this device ends at `until`, or when the original is found).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replacement {
    /// The device replaced.
    pub original: Uuid,
    /// The original's incident.
    pub reason: StateReason,
    /// A temporary device's end (its certificates expire then too).
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub until: Option<OffsetDateTime>,
}

impl Replacement {
    /// The replacement of `original` for `reason`: temporary (ending after
    /// `temporary_days` from `now`) for a forgotten device, else permanent.
    pub fn new(
        original: Uuid,
        reason: StateReason,
        now: OffsetDateTime,
        temporary_days: u32,
    ) -> ValidationResult<Replacement> {
        let until = match reason {
            StateReason::Forgotten => {
                Some(now + time::Duration::days(i64::from(temporary_days)))
            }
            StateReason::Lost | StateReason::Stolen | StateReason::Damaged | StateReason::Expired => {
                None
            }
            other => {
                return Err(ValidationError::new(
                    "reason_not_allowed",
                    "reason",
                    format!(
                        "a device is replaced because it is lost, stolen, damaged, expired (permanent) or forgotten (temporary), not {other}"
                    ),
                ))
            }
        };
        Ok(Replacement {
            original,
            reason,
            until,
        })
    }

    pub fn is_temporary(&self) -> bool {
        self.until.is_some()
    }
}

/// A device record. `version` is the optimistic-concurrency counter: every state change
/// names the version it read, and loses if someone else changed the device first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub id: Uuid,
    pub device_type: DeviceType,
    pub serial: Serial,
    pub firmware_version: Option<FirmwareVersion>,
    pub atr: Option<Atr>,
    pub state: DeviceState,
    pub reason: Option<StateReason>,
    pub assigned_user: Option<Uuid>,
    pub device_policy: Option<Uuid>,
    pub version: i64,
    /// Issued but suspended: its certificates on hold, its passkeys deleted
    /// (Suspend); Resume releases the hold.
    #[serde(default)]
    pub suspended: bool,
    /// Its passkey was deleted while the device stays in use (Suspend):
    /// the next update registers one again.
    #[serde(default)]
    pub passkey_reregistration: bool,
    /// Its PUK was disclosed to the help desk for an offline unlock: the
    /// next unlock (or update) replaces it.
    #[serde(default)]
    pub puk_rotation_due: bool,
    /// Issued in place of another device.
    #[serde(default)]
    pub replacement: Option<Replacement>,
}

/// A requested state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateChange {
    pub to: DeviceState,
    #[serde(default)]
    pub reason: Option<StateReason>,
    /// For assign/issue: the user the device is bound to. Unassign, recycle and
    /// terminate clear it.
    #[serde(default)]
    pub assigned_user: Option<Uuid>,
    #[serde(default)]
    pub device_policy: Option<Uuid>,
    /// Free text for the history (never a secret).
    #[serde(default)]
    pub note: Option<String>,
}

impl Device {
    /// Whether Recycle takes the device: one whose issuance failed, was
    /// cancelled or abandoned (Produced, reason Failed), one assigned and
    /// then unassigned (Produced, Unassigned), a Terminated one (at hand
    /// again), or an Available one. An issued or invalid device is never
    /// recycled as it is: it is terminated first.
    pub fn is_recyclable(&self) -> bool {
        matches!(
            (self.state, self.reason),
            (
                DeviceState::Produced,
                Some(StateReason::Failed | StateReason::Unassigned)
            ) | (DeviceState::Available, _)
                | (DeviceState::Terminated, _)
        )
    }

    /// Suspend: an issued device stays issued but is marked suspended (its
    /// certificates go on hold and its passkeys are deleted: Graph has no
    /// "disable", so the passkey must be registered again later).
    pub fn suspend(&self) -> ValidationResult<Device> {
        if self.state != DeviceState::Issued {
            return Err(ValidationError::new(
                "transition_not_allowed",
                "state",
                format!(
                    "only an issued device is suspended; device {} is {}",
                    self.serial, self.state
                ),
            ));
        }
        if self.suspended {
            return Err(ValidationError::new(
                "already_suspended",
                "state",
                format!("device {} is already suspended", self.serial),
            ));
        }
        let mut next = self.clone();
        next.suspended = true;
        Ok(next)
    }

    /// Resume a suspended device: its certificates' hold is released; its
    /// passkey stays to be registered again (by an update).
    pub fn resume(&self) -> ValidationResult<Device> {
        if self.state != DeviceState::Issued || !self.suspended {
            return Err(ValidationError::new(
                "not_suspended",
                "state",
                format!("device {} is not suspended", self.serial),
            ));
        }
        let mut next = self.clone();
        next.suspended = false;
        Ok(next)
    }

    /// Checks `change` against the state machine and returns the device as it will be
    /// after the change (version not yet bumped: the store does that).
    pub fn apply(&self, change: &StateChange) -> ValidationResult<Device> {
        state::check_transition(self.state, self.reason, change.to, change.reason)?;
        if let Some(n) = &change.note {
            validate::description("note", n)?;
        }
        // A suspended device's certificates are on hold already: "forgotten"
        // (a hold that Original found releases) would undo the suspension.
        if self.suspended && change.reason == Some(StateReason::Forgotten) {
            return Err(ValidationError::new(
                "device_suspended",
                "reason",
                format!(
                    "device {} is suspended: resume it first, or declare it lost, stolen, damaged or expired",
                    self.serial
                ),
            ));
        }
        let mut next = self.clone();
        next.state = change.to;
        next.reason = change.reason;
        // Suspension is a mark on an issued device only.
        if change.to != DeviceState::Issued {
            next.suspended = false;
        }
        match change.to {
            DeviceState::Available | DeviceState::Terminated => {
                next.assigned_user = None;
                next.device_policy = None;
                next.passkey_reregistration = false;
                // A temporary device keeps naming its original until it ends.
                next.replacement = None;
            }
            DeviceState::Assigned | DeviceState::InProduction => {
                if let Some(u) = change.assigned_user {
                    next.assigned_user = Some(u);
                }
                if let Some(p) = change.device_policy {
                    next.device_policy = Some(p);
                }
                if next.assigned_user.is_none() {
                    return Err(ValidationError::new(
                        "user_required",
                        "assigned_user",
                        format!("a device that goes to {} needs a user", change.to),
                    ));
                }
                if next.device_policy.is_none() {
                    return Err(ValidationError::new(
                        "device_policy_required",
                        "device_policy",
                        format!("a device that goes to {} needs a device policy", change.to),
                    ));
                }
            }
            // Cancelled or abandoned: no longer the user's.
            _ if change.reason == Some(StateReason::Unassigned) => {
                next.assigned_user = None;
                next.device_policy = None;
                next.replacement = None;
            }
            _ => {
                if change
                    .assigned_user
                    .is_some_and(|u| Some(u) != self.assigned_user)
                {
                    return Err(ValidationError::new(
                        "user_change_not_allowed",
                        "assigned_user",
                        format!("the user cannot change when a device goes to {}", change.to),
                    ));
                }
            }
        }
        Ok(next)
    }
}

/// One line of a device's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceHistoryEntry {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub actor: String,
    pub from_state: Option<DeviceState>,
    pub from_reason: Option<StateReason>,
    pub to_state: DeviceState,
    pub to_reason: Option<StateReason>,
    pub assigned_user: Option<Uuid>,
    pub note: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dev() -> Device {
        NewDevice {
            device_type: DeviceType::YubiKey5,
            serial: Serial(12345678),
            firmware_version: Some(FirmwareVersion::new(5, 4, 3)),
            atr: None,
        }
        .into_device()
    }

    #[test]
    fn apply_assign_needs_user_and_policy() {
        let d = dev();
        let mut c = StateChange {
            to: DeviceState::Assigned,
            reason: None,
            assigned_user: None,
            device_policy: None,
            note: None,
        };
        assert_eq!(d.apply(&c).unwrap_err().field, "assigned_user");
        c.assigned_user = Some(Uuid::new_v4());
        assert_eq!(d.apply(&c).unwrap_err().field, "device_policy");
        c.device_policy = Some(Uuid::new_v4());
        let a = d.apply(&c).unwrap();
        assert_eq!(a.state, DeviceState::Assigned);
        let back = a
            .apply(&StateChange {
                to: DeviceState::Available,
                reason: Some(StateReason::Unassigned),
                assigned_user: None,
                device_policy: None,
                note: None,
            })
            .unwrap();
        assert_eq!(back.assigned_user, None);

        // Issue, fail, cancel: the cancelled device is no longer the user's.
        let step = |d: &Device, to, reason| {
            d.apply(&StateChange {
                to,
                reason,
                assigned_user: None,
                device_policy: None,
                note: None,
            })
        };
        let prod = step(&a, DeviceState::InProduction, None).unwrap();
        assert_eq!(prod.assigned_user, a.assigned_user);
        let failed = step(&prod, DeviceState::Produced, Some(StateReason::Failed)).unwrap();
        assert_eq!(failed.assigned_user, a.assigned_user);
        let cancelled = step(
            &failed,
            DeviceState::Produced,
            Some(StateReason::Unassigned),
        )
        .unwrap();
        assert_eq!(
            (cancelled.assigned_user, cancelled.device_policy),
            (None, None)
        );
        assert!(step(&cancelled, DeviceState::InProduction, None).is_err());
        assert!(step(
            &cancelled,
            DeviceState::Available,
            Some(StateReason::Recycled)
        )
        .is_ok());
    }

    #[test]
    fn serial_json_accepts_string_and_number() {
        assert_eq!(
            serde_json::from_str::<Serial>("\"42\"").unwrap(),
            Serial(42)
        );
        assert_eq!(serde_json::from_str::<Serial>("42").unwrap(), Serial(42));
        assert!(serde_json::from_str::<Serial>("\"4x\"").is_err());
        assert!(serde_json::from_str::<Serial>("-1").is_err());
        assert_eq!(serde_json::to_string(&Serial(7)).unwrap(), "\"7\"");
    }

    proptest! {
        #[test]
        fn serial_round_trips(n in any::<u64>()) {
            prop_assert_eq!(Serial::parse("serial", &n.to_string()).unwrap(), Serial(n));
        }

        #[test]
        fn serial_rejects_non_digits(s in "[0-9]{0,5}[a-zA-Z_.,+-]+[0-9]{0,5}") {
            prop_assert_eq!(Serial::parse("rows[1].serial", &s).unwrap_err().field, "rows[1].serial");
        }
    }
}

#[cfg(test)]
mod recyclable_tests {
    use super::*;

    #[test]
    fn recycle_takes_failed_unassigned_terminated_and_available_devices_only() {
        let mut d: Device = serde_json::from_value(serde_json::json!({
            "id": "00000000-0000-0000-0000-000000000001", "device_type": "yubikey5",
            "serial": "12345678", "state": "available", "version": 1,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
        }))
        .expect("a device");
        assert!(d.is_recyclable());
        for (state, reason, yes) in [
            (DeviceState::Produced, Some(StateReason::Failed), true),
            (DeviceState::Produced, Some(StateReason::Unassigned), true),
            (DeviceState::Produced, None, false),
            (DeviceState::Issued, None, false),
            (DeviceState::Invalid, Some(StateReason::Lost), false),
            // Terminated, and the device at hand: it is wiped and back in stock.
            (DeviceState::Terminated, None, true),
        ] {
            d.state = state;
            d.reason = reason;
            assert_eq!(d.is_recyclable(), yes, "{state:?} {reason:?}");
        }
    }
}
