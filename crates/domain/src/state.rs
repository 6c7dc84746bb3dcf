//! The device state machine: an explicit whitelist of (from, to) transitions and the
//! reasons each one accepts, the way Dogtag TPS lists its allowed token transitions.
//! Anything not listed is refused.

use crate::error::{ValidationError, ValidationResult};
use crate::names::{DeviceState, StateReason};

use DeviceState as S;
use StateReason as R;

/// One allowed transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: DeviceState,
    pub to: DeviceState,
    /// Reasons the target state may carry; `None` in the list means "no reason".
    pub reasons: &'static [Option<StateReason>],
    /// When set, the device must currently carry this reason (a forgotten device
    /// that turns up again goes back to Issued; a lost one does not).
    pub requires_current_reason: Option<StateReason>,
    /// What the product calls this step.
    pub operation: &'static str,
}

const fn t(
    from: DeviceState,
    to: DeviceState,
    reasons: &'static [Option<StateReason>],
    operation: &'static str,
) -> Transition {
    Transition {
        from,
        to,
        reasons,
        requires_current_reason: None,
        operation,
    }
}

/// The whitelist.
pub const TRANSITIONS: &[Transition] = &[
    t(S::Available, S::Assigned, &[None], "assign"),
    t(S::Available, S::InProduction, &[None], "issue"),
    // Retire stock that was never issued.
    t(S::Available, S::Terminated, &[None], "terminate"),
    t(S::Assigned, S::InProduction, &[None], "issue"),
    t(
        S::Assigned,
        S::Available,
        &[Some(R::Unassigned)],
        "unassign",
    ),
    // Produced without a reason: produced for later delivery; with Failed: production
    // failed part way and the device needs a retry or a recycle; with Unassigned: the
    // session was cancelled or abandoned, the device is no longer the user's.
    t(S::InProduction, S::Issued, &[None], "complete"),
    t(
        S::InProduction,
        S::Produced,
        &[None, Some(R::Failed), Some(R::Unassigned)],
        "produce",
    ),
    // Retry: same device, policy and PIN, only after a failure.
    Transition {
        from: S::Produced,
        to: S::InProduction,
        reasons: &[None],
        requires_current_reason: Some(R::Failed),
        operation: "retry",
    },
    // Cancel after a failure: the one change of reason within a state.
    Transition {
        from: S::Produced,
        to: S::Produced,
        reasons: &[Some(R::Unassigned)],
        requires_current_reason: Some(R::Failed),
        operation: "cancel",
    },
    t(S::Produced, S::Issued, &[None], "deliver"),
    t(S::Produced, S::Available, &[Some(R::Recycled)], "recycle"),
    t(S::Produced, S::Terminated, &[None], "terminate"),
    t(
        S::Issued,
        S::Invalid,
        &[
            Some(R::Lost),
            Some(R::Stolen),
            Some(R::Damaged),
            Some(R::Forgotten),
            Some(R::Expired),
        ],
        "declare_incident",
    ),
    t(S::Issued, S::Terminated, &[None], "terminate"),
    Transition {
        from: S::Invalid,
        to: S::Issued,
        reasons: &[None],
        requires_current_reason: Some(R::Forgotten),
        operation: "restore",
    },
    t(S::Invalid, S::Terminated, &[None], "terminate"),
    t(S::Terminated, S::Available, &[Some(R::Recycled)], "recycle"),
];

/// The whitelist entry for (from, to), if any.
pub fn transition(from: DeviceState, to: DeviceState) -> Option<&'static Transition> {
    TRANSITIONS.iter().find(|t| t.from == from && t.to == to)
}

/// States reachable from `from`.
pub fn next_states(from: DeviceState) -> impl Iterator<Item = DeviceState> {
    TRANSITIONS
        .iter()
        .filter(move |t| t.from == from)
        .map(|t| t.to)
}

fn reason_name(r: Option<StateReason>) -> &'static str {
    r.map(StateReason::as_str).unwrap_or("none")
}

/// Checks a state change. `current_reason` is the reason the device carries now.
pub fn check_transition(
    from: DeviceState,
    current_reason: Option<StateReason>,
    to: DeviceState,
    reason: Option<StateReason>,
) -> ValidationResult<&'static Transition> {
    let t = transition(from, to).ok_or_else(|| {
        let allowed: Vec<&str> = next_states(from).map(DeviceState::as_str).collect();
        ValidationError::new(
            "transition_not_allowed",
            "state",
            format!(
                "a device cannot go from {from} to {to}; from {from} it can go to: {}",
                if allowed.is_empty() {
                    "nothing".to_string()
                } else {
                    allowed.join(", ")
                }
            ),
        )
    })?;
    if let Some(req) = t.requires_current_reason {
        if current_reason != Some(req) {
            return Err(ValidationError::new(
                "transition_not_allowed",
                "state",
                format!(
                    "a device goes from {from} to {to} only when its reason is {req} (it is {})",
                    reason_name(current_reason)
                ),
            ));
        }
    }
    if !t.reasons.contains(&reason) {
        let allowed: Vec<&str> = t.reasons.iter().map(|r| reason_name(*r)).collect();
        return Err(ValidationError::new(
            if reason.is_none() {
                "reason_required"
            } else {
                "reason_not_allowed"
            },
            "reason",
            format!(
                "going from {from} to {to} takes reason {}; got {}",
                allowed.join(" or "),
                reason_name(reason)
            ),
        ));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expected whitelist written out as a matrix, independently of TRANSITIONS.
    fn expected(from: DeviceState, to: DeviceState) -> bool {
        use DeviceState::*;
        matches!(
            (from, to),
            (Available, Assigned)
                | (Available, InProduction)
                | (Available, Terminated)
                | (Assigned, InProduction)
                | (Assigned, Available)
                | (InProduction, Issued)
                | (InProduction, Produced)
                | (Produced, InProduction)
                | (Produced, Produced)
                | (Produced, Issued)
                | (Produced, Available)
                | (Produced, Terminated)
                | (Issued, Invalid)
                | (Issued, Terminated)
                | (Invalid, Issued)
                | (Invalid, Terminated)
                | (Terminated, Available)
        )
    }

    #[test]
    fn every_pair_of_states() {
        let mut allowed = 0;
        for &from in DeviceState::ALL {
            for &to in DeviceState::ALL {
                let listed = transition(from, to);
                assert_eq!(listed.is_some(), expected(from, to), "{from} -> {to}");
                // Try every reason (and none) from every current reason.
                let mut any_ok = false;
                for cur in std::iter::once(None).chain(StateReason::ALL.iter().copied().map(Some)) {
                    for r in std::iter::once(None).chain(StateReason::ALL.iter().copied().map(Some))
                    {
                        let res = check_transition(from, cur, to, r);
                        match listed {
                            None => {
                                let e = res.unwrap_err();
                                assert_eq!(e.code, "transition_not_allowed");
                                assert_eq!(e.field, "state");
                            }
                            Some(t) => {
                                let ok = t.reasons.contains(&r)
                                    && t.requires_current_reason.is_none_or(|q| cur == Some(q));
                                assert_eq!(res.is_ok(), ok, "{from}({cur:?}) -> {to}({r:?})");
                                any_ok |= ok;
                            }
                        }
                    }
                }
                if listed.is_some() {
                    assert!(any_ok, "{from} -> {to} listed but never allowed");
                    allowed += 1;
                }
                if from == to {
                    // The only change within a state: cancel (produced, failed -> unassigned).
                    assert!(
                        listed.is_none() || from == DeviceState::Produced,
                        "{from} -> {to}"
                    );
                }
            }
        }
        assert_eq!(allowed, TRANSITIONS.len(), "no duplicate entries");
    }

    #[test]
    fn reasons_are_checked() {
        use DeviceState::*;
        assert!(check_transition(Issued, None, Invalid, Some(StateReason::Lost)).is_ok());
        let e = check_transition(Issued, None, Invalid, None).unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.field.as_str()),
            ("reason_required", "reason")
        );
        let e = check_transition(Issued, None, Invalid, Some(StateReason::Recycled)).unwrap_err();
        assert_eq!(e.code, "reason_not_allowed");
        assert!(check_transition(Terminated, None, Available, Some(StateReason::Recycled)).is_ok());
        assert!(check_transition(InProduction, None, Produced, Some(StateReason::Failed)).is_ok());
        // Retry and cancel only after a failure.
        assert!(check_transition(Produced, Some(StateReason::Failed), InProduction, None).is_ok());
        assert!(
            check_transition(Produced, Some(StateReason::Unassigned), InProduction, None).is_err()
        );
        assert!(check_transition(
            Produced,
            Some(StateReason::Failed),
            Produced,
            Some(StateReason::Unassigned)
        )
        .is_ok());
        assert!(check_transition(
            Produced,
            Some(StateReason::Unassigned),
            Produced,
            Some(StateReason::Unassigned)
        )
        .is_err());
        assert!(
            check_transition(InProduction, None, Produced, Some(StateReason::Unassigned)).is_ok()
        );
        assert!(check_transition(Invalid, Some(StateReason::Forgotten), Issued, None).is_ok());
        assert!(check_transition(Invalid, Some(StateReason::Stolen), Issued, None).is_err());
        let e = check_transition(Terminated, None, Issued, None).unwrap_err();
        assert!(e.message.contains("available"), "{}", e.message);
    }
}
