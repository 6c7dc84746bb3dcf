//! The relay step: the client's result for the batch out now goes into the
//! session's machine (`keyward_engine::session`); this loop carries out the
//! effects it asks for (attestation, the CA, Graph) and feeds their outcome
//! back, until the machine answers the next batch or the session's end,
//! which is written here.

use axum::extract::{Path, State};
use axum::Json;
use keyward_domain::{
    AuditDraft, DeviceState, SessionAction, SessionStatus, StateChange, StateReason,
};
use keyward_engine::answers::RefusedRules;
use keyward_engine::{
    Context, DeviceMove, DeviceSession, Effect, Ending, Input, Refusal, Response,
};
use keyward_proto::{RelayBatch, RelayResult, RELAY_PROTOCOL_VERSION};
use keyward_store::IssuanceSession;

use super::session::{
    audit_prefix, certificate_credential, close, failure_audit, passkey_credential, report, unseal,
    write_batch, Close,
};
use crate::api::{audit, store_error};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ApiJson;

pub(super) fn parse_responses(r: &RelayResult) -> ApiResult<Vec<Response>> {
    r.parsed_responses()
        .map(|v| {
            v.into_iter()
                .map(|(data, sw)| Response { data, sw })
                .collect()
        })
        .map_err(|(i, what)| {
            ApiError::bad_request("bad_response", format!("response {i}: {what}"))
                .field(format!("responses[{i}]"))
        })
}

/// Who may post this result: the bound agent (checked by `RelayCaller` and
/// `check_relay_batch`); else the session's creator, or the person it is
/// for. Device responses come from the agent when one is bound, else from
/// the creator's client; the person posts prompt answers only. Anyone else
/// gets the 404 of a session that does not exist.
async fn may_post(
    state: &AppState,
    caller: &Caller,
    s: &keyward_store::IssuanceSession,
    result: &RelayResult,
    batch_has_commands: bool,
) -> ApiResult<()> {
    use crate::auth::sessions::{party, Party};
    if matches!(caller.via, crate::auth::Via::Agent { .. }) {
        return Ok(());
    }
    let device_output = !result.responses.is_empty() || result.transport_error.is_some();
    let answers_only = || {
        Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "answers_only",
            "a person answers the session's prompts; device responses come from the client that relays the device".to_string(),
        ))
    };
    match party(caller, s) {
        None | Some(Party::Auditor) => Err(ApiError::not_found("issuance session").field("id")),
        Some(Party::Person) if device_output || batch_has_commands => answers_only(),
        Some(Party::Creator)
            if (device_output || batch_has_commands)
                && crate::agents::agent_of_session(state, s.id).await?.is_some() =>
        {
            Err(ApiError::conflict(
                "relayed_by_agent",
                "the workstation agent bound to this session relays its device commands; post the prompts' answers only",
            ))
        }
        _ => Ok(()),
    }
}

/// The client's responses to batch `seq`; answers with the next batch, or
/// the end of the session (`issued`, `failed`, `recycled`, …).
#[utoipa::path(post, path = "/issuance/{id}/relay", operation_id = "relayIssuance", tag = "issuance", params(("id" = String, Path)),
    request_body = RelayResult,
    responses((status = 200, body = RelayBatch), (status = 409, body = ErrorBody)))]
pub(super) async fn relay(
    State(state): State<AppState>,
    crate::agents::RelayCaller(caller): crate::agents::RelayCaller,
    Path(id): Path<String>,
    ApiJson(result): ApiJson<RelayResult>,
) -> ApiResult<Json<RelayBatch>> {
    if result.protocol != RELAY_PROTOCOL_VERSION {
        return Err(ApiError::bad_request(
            "protocol_version",
            format!(
                "relay protocol {} is not supported; this server speaks {RELAY_PROTOCOL_VERSION}",
                result.protocol
            ),
        ));
    }
    // The session with its user, policy and device: one read.
    let ctx = super::load_context(&state, &id).await?;
    let s = ctx.session;
    let mut data = unseal(&state, &s)?;
    may_post(
        &state,
        &caller,
        &s,
        &result,
        !data.batch().commands.is_empty(),
    )
    .await?;
    // An agent also needs the device reported and a command batch out (its
    // binding was checked by RelayCaller); on the session already open.
    crate::agents::check_relay_batch(
        &state,
        &caller,
        &s,
        data.serial,
        !data.batch().commands.is_empty(),
    )
    .await?;
    if result.session_id != s.id.to_string() {
        return Err(
            ApiError::bad_request("session_mismatch", "session_id differs from the URL")
                .field("session_id"),
        );
    }
    if s.status != SessionStatus::Running {
        return Err(ApiError::conflict(
            "session_not_running",
            format!("the session is {}", s.status),
        ));
    }
    if result.seq as i64 != s.seq {
        return Err(ApiError::conflict(
            "sequence_mismatch",
            format!(
                "the session is at batch {}, this result is for batch {}: fetch the current batch",
                s.seq, result.seq
            ),
        )
        .field("seq"));
    }
    let responses = parse_responses(&result)?;
    let user = ctx.user.map_err(|e| store_error("reading the user", e))?;
    let policy = ctx
        .policy
        .map_err(|e| store_error("reading the policy", e))?;
    let device = ctx
        .device
        .map_err(|e| store_error("reading the device", e))?;
    // Answers are checked before anything moves: a refused answer leaves
    // the same prompts out.
    data.check_answers(&result.answers, &policy)
        .map_err(answer_refused)?;

    let mut input = Input::Relayed {
        responses: &responses,
        answers: &result.answers,
        transport_error: result.transport_error.as_deref(),
    };
    // Audit records of the effects, written with the session's move.
    let mut audits: Vec<AuditDraft> = Vec::new();
    let ending = loop {
        // (The context is not held across an await: its random source is
        // not Send.)
        let effect = data.step(
            input,
            &mut Context {
                policy: &policy,
                user: &user,
                now: time::OffsetDateTime::now_utc(),
                rng: &mut rand::rngs::OsRng,
            },
        );
        input = match effect.map_err(refused)? {
            Effect::Send(_) => return write_batch(&state, &caller, &s, &data, audits).await,
            Effect::End(ending) => break ending,
            Effect::VerifyAttestation {
                serial,
                firmware,
                device_certificate,
                keys,
            } => {
                let (outcomes, required, draft) = crate::attestation::verify(
                    &state,
                    &caller,
                    s.id,
                    serial,
                    firmware,
                    device_certificate.as_deref(),
                    &keys,
                    policy.requires_attestation(device.device_type),
                )
                .await?;
                audits.push(draft);
                Input::Attested { outcomes, required }
            }
            Effect::VerifyPasskeyAttestation { registration } => {
                let required = policy.requires_attestation(device.device_type);
                let (outcome, draft) = crate::attestation::verify_passkey(
                    &state,
                    &caller,
                    s.id,
                    &device,
                    &registration,
                    required,
                );
                audits.push(draft);
                Input::PasskeyAttested { outcome, required }
            }
            // Certifying the keys (the CA's signatures, the signed CHUID)
            // is the CPU-heavy step: on a blocking thread, so the runtime's
            // workers keep serving other sessions, among them the one
            // holding the store's writer.
            Effect::Certify {
                keys,
                chuid_to_sign,
            } => {
                let (st, policy, user) = (state.clone(), policy.clone(), user.clone());
                // A temporary device's certificates end with it.
                let until = device.replacement.and_then(|r| r.until);
                let certified = tokio::task::spawn_blocking(move || {
                    crate::pki::certify_keys(&st, &policy, &user, &keys, &chuid_to_sign, until)
                })
                .await
                .map_err(|e| ApiError::internal("certifying the keys", e))??;
                Input::Certified(certified)
            }
            Effect::FetchCreationOptions { service_id } => Input::CreationOptions(
                crate::entra::creation_options(&state, s.id, service_id, &user).await?,
            ),
            Effect::RegisterPasskey {
                service_id,
                entra_user,
                display_name,
                registration,
            } => Input::Registered(
                crate::entra::register(
                    &state,
                    s.id,
                    service_id,
                    &entra_user,
                    display_name,
                    &registration,
                )
                .await?,
            ),
        };
    };
    record_ending(&state, &caller, &s, device, &data, ending, audits).await
}

/// Records a session's end as the machine decided it: the device's move,
/// the credentials, the audit; then what follows outside the store (a
/// passkey deleted again, the recycled device's passkeys, the CRL).
async fn record_ending(
    state: &AppState,
    caller: &Caller,
    s: &IssuanceSession,
    device: keyward_domain::Device,
    data: &DeviceSession,
    ending: Ending,
    mut audits: Vec<AuditDraft>,
) -> ApiResult<Json<RelayBatch>> {
    let revoked_at = ending.revoked.then_some(ending.at);
    let mut credentials = ending
        .certificates
        .into_iter()
        .map(|(slot, der)| {
            let attested = ending.attested_slots.contains(&slot);
            certificate_credential(s, slot, der, revoked_at, Some(attested))
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let passkeys: Vec<_> = ending.passkey.into_iter().collect();
    credentials.extend(
        passkeys
            .iter()
            .map(|p| passkey_credential(s, p, revoked_at)),
    );
    let prefix = audit_prefix(s.action);
    let serial = data.serial;
    let error = ending.failure.as_ref().map(|f| {
        let mut r = report(s, f, ending.at);
        if s.action == SessionAction::ChangePin {
            r["tries_left"] = serde_json::json!(ending.tries_left);
        }
        r
    });
    audits.push(match (&ending.failure, s.action) {
        (Some(f), SessionAction::ChangePin) => failure_audit(
            caller,
            "pin_change.fail",
            serial,
            serde_json::json!({ "session": s.id, "code": f.code, "tries_left": ending.tries_left }),
        ),
        (Some(f), _) => failure_audit(
            caller,
            &format!("{prefix}.fail"),
            serial,
            serde_json::json!({ "session": s.id, "code": f.code, "step": f.step }),
        ),
        (None, action) => {
            let (name, details) = match action {
                SessionAction::Recycle => {
                    ("device.recycle", serde_json::json!({ "session": s.id }))
                }
                SessionAction::ChangePin => {
                    ("device.change_pin", serde_json::json!({ "session": s.id }))
                }
                SessionAction::Update => (
                    "device.update",
                    serde_json::json!({ "session": s.id, "credentials": credentials.len() }),
                ),
                SessionAction::Unlock => (
                    "device.unlock",
                    serde_json::json!({
                        "session": s.id,
                        "fido": data.notice().map(|n| n.code.clone()),
                        "passkeys_erased": ending.passkeys_erased,
                        "credentials": credentials.len(),
                    }),
                ),
                _ => (
                    "issuance.complete",
                    serde_json::json!({ "session": s.id, "credentials": credentials.len() }),
                ),
            };
            audit(caller, name, format!("device:{serial}"), details)
        }
    });
    let change = |to, reason, note: String| StateChange {
        to,
        reason,
        assigned_user: None,
        device_policy: None,
        note: Some(note),
    };
    let step = ending.step.clone();
    let device_move = match ending.device {
        DeviceMove::Stays => None,
        DeviceMove::Issued => Some(change(
            DeviceState::Issued,
            None,
            format!("issuance session {}", s.id),
        )),
        DeviceMove::Failed => Some(change(
            DeviceState::Produced,
            Some(StateReason::Failed),
            format!("issuance failed at {step}"),
        )),
        // An available device (recycled before) stays Available.
        DeviceMove::Recycled => (device.state != DeviceState::Available).then(|| {
            change(
                DeviceState::Available,
                Some(StateReason::Recycled),
                format!("recycled in session {}", s.id),
            )
        }),
    };
    if let Some(pin) = &ending.initial_pin {
        if let Err(e) = crate::initial_pin::keep(state, &device, s.user_id, pin, caller).await {
            crate::entra::compensate(state, &passkeys).await;
            return Err(e);
        }
    }
    // An update's end: its request, the certificates it replaced, the
    // policy; a passkey it removes is deleted at its service.
    let piv_written = ending.status == keyward_domain::SessionStatus::Updated
        || (ending.status == keyward_domain::SessionStatus::UpdateFailed && !ending.revoked);
    let update =
        super::update::outcome(state, s, ending.status, piv_written, ending.retired).await?;
    let (update, remove_passkey, update_pin_checked) = match update {
        Some((o, remove, pin)) => (Some(o), remove, pin),
        None => (None, false, false),
    };
    // A PIN the policy's rules checked: an offline unlock's flag is over.
    let pin_checked = update_pin_checked
        || matches!(
            ending.status,
            keyward_domain::SessionStatus::PinChanged | keyward_domain::SessionStatus::Unlocked
        );
    // An unlock replaced the PUK: a disclosure (offline unlock) is over.
    let rotated = (ending.status == keyward_domain::SessionStatus::Unlocked
        && device.puk_rotation_due)
        .then_some(device.id);
    let answer = close(
        state,
        s,
        data,
        Close {
            status: ending.status,
            step,
            error: error.map(|e| e.to_string()),
            device: device_move.map(|c| (device, c)),
            credentials,
            audits,
            passkeys_erased: ending.passkeys_erased || remove_passkey,
            passkey_reregistration: ending.passkey_reregistration,
            update,
            pin_checked,
        },
    )
    .await;
    // A passkey registered by a failed attempt is deleted at its service by
    // a job written with the end (the store's outbox); one whose session's
    // end could not be recorded has no record and no job: deleted now.
    if answer.is_err() {
        crate::entra::compensate(state, &passkeys).await;
    }
    if let (Ok(_), Some(id)) = (&answer, rotated) {
        let draft = audit(
            caller,
            "device.puk_rotated",
            format!("device:{serial}"),
            serde_json::json!({ "session": s.id }),
        );
        state
            .store
            .set_puk_rotation_due(id, false, &draft)
            .await
            .map_err(|e| store_error("clearing the PUK rotation flag", e))?;
    }
    answer
}

/// A refused answer: 400, nothing moved, the same prompts stay out.
fn answer_refused(r: keyward_engine::answers::Refused) -> ApiError {
    let e = ApiError::bad_request(&r.code, r.message).field(r.field);
    match r.rules {
        RefusedRules::None => e,
        RefusedRules::Pin(failed) => e.details(serde_json::json!({
            "failed_rules": failed.iter().map(|c| serde_json::json!({
                "rule": c.rule, "code": c.code, "description": c.description,
            })).collect::<Vec<_>>(),
        })),
        RefusedRules::Fido(problems) => e.details(serde_json::json!({ "failed_rules": problems })),
    }
}

fn refused(r: Refusal) -> ApiError {
    match r {
        Refusal::Finished => ApiError::conflict("session_finished", "the session has ended"),
        Refusal::OutOfOrder(why) => ApiError::internal("relaying", why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_engine::{Failure, FailureCode, Step};
    use keyward_proto::RelayResponse;

    fn result(sw: &str) -> RelayResult {
        RelayResult {
            protocol: RELAY_PROTOCOL_VERSION,
            session_id: "s".into(),
            seq: 1,
            responses: vec![RelayResponse {
                data: "01".into(),
                sw: sw.into(),
            }],
            answers: Default::default(),
            transport_error: None,
        }
    }

    #[test]
    fn a_status_word_is_exactly_four_hex_digits() {
        assert_eq!(parse_responses(&result("9000")).unwrap()[0].sw, 0x9000);
        assert_eq!(parse_responses(&result("6a82")).unwrap()[0].sw, 0x6A82);
        for bad in ["+FFF", "-001", "900", "90000", "90 0", "", "9G00"] {
            let e = parse_responses(&result(bad)).unwrap_err();
            assert_eq!(e.detail.code, "bad_response", "{bad:?}");
        }
    }

    #[test]
    fn a_batch_cut_short_fails_with_the_transports_cause() {
        use keyward_engine::session::with_transport_cause;
        let cut = || {
            Failure::new(
                FailureCode::IncompleteBatch,
                Step::WriteChuid,
                "the batch stopped at command 2",
            )
        };
        for cause in ["device_removed", "card_reset", "reader_gone", "timeout"] {
            assert_eq!(
                with_transport_cause(cut(), Some(cause)).code.as_str(),
                cause
            );
        }
        // Unknown words stay out of the failure code.
        assert_eq!(
            with_transport_cause(cut(), Some("nonsense")).code,
            FailureCode::IncompleteBatch
        );
        // A status-word failure keeps its own code.
        let sw = Failure::new(FailureCode::UnexpectedStatus, Step::VerifyPin, "6982");
        assert_eq!(
            with_transport_cause(sw, Some("device_removed")).code,
            FailureCode::UnexpectedStatus
        );
    }
}
