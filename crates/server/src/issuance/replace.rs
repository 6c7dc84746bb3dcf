//! Replace Device: the checks of an issuance that replaces one of the
//! user's devices, and what the start writes with it.
//!
//! - lost, stolen, damaged, expired: permanent. The original's incident is
//!   declared as the session starts (unless it was already); when the new
//!   device is issued the original is terminated (the store's follow-ups),
//!   and so is a temporary device still out for it.
//! - forgotten: temporary. The original is declared forgotten (its
//!   certificates on hold); the new device lasts the policy's
//!   `temporary_validity_days` (its certificates expire then, and the job
//!   runner terminates it), or until the original is found (Restore).

use keyward_domain::{
    Device, DevicePolicy, DeviceState, Replacement, SessionStatus, StateChange, StateReason, User,
};
use keyward_store::Replacing;

use crate::api::{invalid, store_error};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

/// What replacing the device `serial` of `user` by `device` means, or why
/// it is refused; checked before anything is touched.
pub(super) async fn check(
    state: &AppState,
    user: &User,
    device: &Device,
    serial: &str,
    reason: Option<&str>,
) -> ApiResult<Checked> {
    let original = crate::api::devices::load(state, serial)
        .await
        .map_err(|e| e.field("replaces"))?;
    let reason = reason.ok_or_else(|| {
        ApiError::bad_request(
            "reason_required",
            "a replacement says why: lost, stolen, damaged, expired (permanent) or forgotten (temporary)",
        )
        .field("replace_reason")
    })?;
    let reason = StateReason::parse_field(reason, "replace_reason").map_err(invalid)?;
    if !matches!(
        reason,
        StateReason::Lost
            | StateReason::Stolen
            | StateReason::Damaged
            | StateReason::Expired
            | StateReason::Forgotten
    ) {
        return Err(ApiError::bad_request(
            "reason_not_allowed",
            "a device is replaced because it is lost, stolen, damaged, expired (permanent) or forgotten (temporary)",
        )
        .field("replace_reason"));
    }
    if original.id == device.id {
        return Err(ApiError::bad_request(
            "replaces_itself",
            format!("device {} cannot replace itself", device.serial),
        )
        .field("replaces"));
    }
    if original.assigned_user != Some(user.id) {
        return Err(ApiError::conflict(
            "device_not_users",
            format!("device {} is not {}'s", original.serial, user.login),
        )
        .field("replaces"));
    }
    // The original's incident: declared now (an issued device), or already.
    let incident = match (original.state, original.reason) {
        (DeviceState::Issued, _) => Some(StateChange {
            to: DeviceState::Invalid,
            reason: Some(reason),
            assigned_user: None,
            device_policy: None,
            note: Some(format!("replaced by device {}", device.serial)),
        }),
        (DeviceState::Invalid, Some(r)) if r == reason => None,
        // Forgotten, and now replaced for good.
        (DeviceState::Invalid, Some(StateReason::Forgotten)) if reason != StateReason::Forgotten => {
            None
        }
        (s, r) => {
            return Err(ApiError::conflict(
                "original_not_replaceable",
                format!(
                    "device {} is {} ({}): only an issued device, or one whose incident is declared, is replaced",
                    original.serial,
                    s.label(),
                    r.map(|r| r.as_str()).unwrap_or("-")
                ),
            )
            .field("replaces"))
        }
    };
    if let Some(change) = &incident {
        original
            .apply(change)
            .map_err(|e| invalid(e).field("replace_reason"))?;
    }
    let busy = state
        .store
        .latest_device_session(original.id)
        .await
        .map_err(|e| store_error("reading the device's sessions", e))?
        .filter(|s| matches!(s.status, SessionStatus::Running | SessionStatus::Failed));
    if let Some(s) = busy {
        return Err(ApiError::conflict(
            "device_in_session",
            format!(
                "device {} is in session {} ({}): finish or cancel it first",
                original.serial, s.id, s.status
            ),
        )
        .field("replaces"));
    }
    if reason == StateReason::Forgotten {
        let out = state
            .store
            .replacements_of(original.id)
            .await
            .map_err(|e| store_error("reading the device's replacements", e))?;
        if let Some(t) = out
            .iter()
            .find(|d| d.replacement.is_some_and(|r| r.is_temporary()))
        {
            return Err(ApiError::conflict(
                "temporary_already_out",
                format!(
                    "device {} already has temporary device {}: restore the original, or replace it for good",
                    original.serial, t.serial
                ),
            )
            .field("replaces"));
        }
    }
    Ok(Checked {
        original,
        incident,
        reason,
    })
}

/// A replacement that passed its checks.
pub(super) struct Checked {
    pub original: Device,
    incident: Option<StateChange>,
    reason: StateReason,
}

impl Checked {
    /// The replacement as the new device records it, under `policy` (a
    /// temporary device lasts its `temporary_validity_days`).
    pub fn replacing(self, policy: &DevicePolicy) -> ApiResult<Replacing> {
        let replacement = Replacement::new(
            self.original.id,
            self.reason,
            time::OffsetDateTime::now_utc(),
            policy.temporary_validity_days,
        )
        .map_err(|e| invalid(e).field("replace_reason"))?;
        Ok(Replacing {
            original: self.original,
            incident: self.incident,
            replacement,
        })
    }
}
