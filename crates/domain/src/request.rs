//! Requests (issue 18): an issuance or a replacement that a device policy
//! puts on hold until a second person approves it, and the rules of who may
//! decide. Without I/O; the store keeps the requests, the server checks them
//! here.
//!
//! * Only a person approves or denies: a signed-in account, never an API
//!   token (two tokens cannot make two people).
//! * The approver is neither the requester nor the recipient (the user the
//!   device is for, whom the approver's account may be linked to).
//! * Only a pending request is decided; only an approved one is carried
//!   out, and once (it is then `used`).

use uuid::Uuid;

use crate::error::{ValidationError, ValidationResult};
use crate::names::RequestState;

/// Who decides: the caller as the server knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decider<'a> {
    /// How the audit trail names the caller (`account:LOGIN`, `token:NAME`).
    pub actor: &'a str,
    /// A signed-in account (a person); None for an API token.
    pub account: Option<Uuid>,
    /// The user record the account is linked to.
    pub linked_user: Option<Uuid>,
}

/// What a request keeps of who asked and for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked<'a> {
    pub requested_by: &'a str,
    pub recipient: Uuid,
    pub state: RequestState,
}

/// Whether `decider` may approve or deny `asked`.
pub fn may_decide(asked: &Asked<'_>, decider: &Decider<'_>) -> ValidationResult {
    if asked.state != RequestState::Pending {
        return Err(ValidationError::new(
            "request_not_pending",
            "state",
            format!(
                "the request is {}: only a pending one is decided",
                asked.state.label().to_lowercase()
            ),
        ));
    }
    if decider.account.is_none() {
        return Err(ValidationError::new(
            "approver_not_a_person",
            "approver",
            "only a person signed in to the portal approves or denies: an API token has no person behind it",
        ));
    }
    if decider.actor == asked.requested_by {
        return Err(ValidationError::new(
            "approver_is_requester",
            "approver",
            "the person who asked cannot approve their own request: a second operator does",
        ));
    }
    if decider.linked_user == Some(asked.recipient) {
        return Err(ValidationError::new(
            "approver_is_recipient",
            "approver",
            "the device is for you: another operator approves it",
        ));
    }
    Ok(())
}

/// Whether a request in `state` may be carried out now.
pub fn may_carry_out(state: RequestState) -> ValidationResult {
    match state {
        RequestState::Approved => Ok(()),
        RequestState::Pending => Err(ValidationError::new(
            "request_not_approved",
            "request",
            "the request waits for approval by a second operator",
        )),
        RequestState::Used => Err(ValidationError::new(
            "request_used",
            "request",
            "the request was carried out already: a request is carried out once",
        )),
        s => Err(ValidationError::new(
            "request_not_approved",
            "request",
            format!(
                "the request is {}: it cannot be carried out",
                s.label().to_lowercase()
            ),
        )),
    }
}

/// Whether it may be cancelled: pending or approved, not yet carried out.
pub fn may_cancel(state: RequestState) -> ValidationResult {
    match state {
        RequestState::Pending | RequestState::Approved => Ok(()),
        s => Err(ValidationError::new(
            "request_not_open",
            "state",
            format!(
                "the request is {}: there is nothing to cancel",
                s.label().to_lowercase()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: Uuid = Uuid::from_u128(1);
    const BOB_USER: Uuid = Uuid::from_u128(2);

    fn asked(state: RequestState) -> Asked<'static> {
        Asked {
            requested_by: "account:operator",
            recipient: ALICE,
            state,
        }
    }

    #[test]
    fn a_second_person_decides_never_the_requester_the_recipient_or_a_token() {
        let second = Decider {
            actor: "account:approver",
            account: Some(Uuid::from_u128(9)),
            linked_user: Some(BOB_USER),
        };
        assert!(may_decide(&asked(RequestState::Pending), &second).is_ok());
        let code = |d: &Decider<'_>| {
            may_decide(&asked(RequestState::Pending), d)
                .unwrap_err()
                .code
        };
        let token = Decider {
            actor: "token:ci",
            account: None,
            linked_user: None,
        };
        assert_eq!(code(&token), "approver_not_a_person");
        let requester = Decider {
            actor: "account:operator",
            ..second.clone()
        };
        assert_eq!(code(&requester), "approver_is_requester");
        let recipient = Decider {
            linked_user: Some(ALICE),
            ..second.clone()
        };
        assert_eq!(code(&recipient), "approver_is_recipient");
        assert_eq!(
            may_decide(&asked(RequestState::Denied), &second)
                .unwrap_err()
                .code,
            "request_not_pending"
        );
    }

    #[test]
    fn only_an_approved_request_is_carried_out_once() {
        assert!(may_carry_out(RequestState::Approved).is_ok());
        assert_eq!(
            may_carry_out(RequestState::Used).unwrap_err().code,
            "request_used"
        );
        for s in [
            RequestState::Pending,
            RequestState::Denied,
            RequestState::Cancelled,
        ] {
            assert_eq!(may_carry_out(s).unwrap_err().code, "request_not_approved");
        }
        assert!(may_cancel(RequestState::Approved).is_ok());
        assert_eq!(
            may_cancel(RequestState::Used).unwrap_err().code,
            "request_not_open"
        );
    }
}
