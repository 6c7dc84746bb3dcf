//! The relay step: the client's responses to the batch out now, the engine's
//! next batch (certifying keys on the way), or the end of the session.

use axum::extract::{Path, State};
use axum::Json;
use keyward_domain::{AuditDraft, AuditOutcome, DeviceState, StateChange, StateReason};
use std::collections::BTreeMap;

use keyward_engine::piv::{Certified, Secret};
use keyward_engine::{Batch, Failure, Prompt, PromptKind, Response};
use keyward_pki::{CertificateAuthority, LeafRequest};
use keyward_proto::{RelayBatch, RelayResult, RELAY_PROTOCOL_VERSION};
use keyward_store::{Credential, IssuanceSession, IssuanceUpdate};

use super::session::{certificate_credential, end_session, seal, unseal, Ending};
use super::{relay_batch, Engine, Kept, SessionData};
use crate::api::{audit, store_error};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ApiJson;

pub(super) fn parse_responses(r: &RelayResult) -> ApiResult<Vec<Response>> {
    let bad = |i: usize, what: &str| {
        ApiError::bad_request("bad_response", format!("response {i}: {what}"))
            .field(format!("responses[{i}]"))
    };
    r.responses
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let data = hex::decode(&x.data).map_err(|_| bad(i, "data is not hex"))?;
            // Exactly four hex digits: `u16::from_str_radix` alone also
            // takes a leading `+` ("+FFF" would be 0x0FFF).
            let sw =
                x.sw.bytes()
                    .all(|b| b.is_ascii_hexdigit())
                    .then(|| u16::from_str_radix(&x.sw, 16).ok())
                    .flatten()
                    .filter(|_| x.sw.len() == 4)
                    .ok_or_else(|| bad(i, "sw is not a 4-digit hex status word"))?;
            Ok(Response { data, sw })
        })
        .collect()
}

/// A batch cut short by the transport fails with the transport's cause
/// (`device_removed`, `card_reset`, `reader_gone`, `timeout`,
/// `sharing_violation`), which tells the person what to do, rather than
/// `incomplete_batch`. (`card_reset`: another program reset the card between
/// the session's batches; its security state is gone, Retry starts over.)
fn with_transport_cause(mut f: Failure, transport_error: Option<&str>) -> Failure {
    const CAUSES: [&str; 5] = [
        "device_removed",
        "card_reset",
        "reader_gone",
        "timeout",
        "sharing_violation",
    ];
    if let Some(cause) = transport_error.filter(|c| CAUSES.contains(c)) {
        if f.code == "incomplete_batch" {
            f.message = format!("{} ({cause})", f.message);
            f.code = cause.to_string();
        }
    }
    f
}

/// Where a relay step leads.
pub(super) enum Next {
    /// The next state and batch, and certificates issued on the way.
    Batch(Engine, Batch, Vec<(u8, Vec<u8>)>),
    Done(Vec<Credential>),
    Failed(Failure),
}

pub(super) fn step_engine(
    state: &AppState,
    s: &IssuanceSession,
    user: &keyward_domain::User,
    policy: &keyward_domain::DevicePolicy,
    data: SessionData,
    responses: &[Response],
    answers: &BTreeMap<String, String>,
) -> ApiResult<Next> {
    let change_pin_at_end = data.change_pin_at_end;
    // For the FIDO step after the PIV writes: the plan (the device PIN) and
    // whether that PIN was generated and never shown (Not Displayed).
    let piv_plan = data.attempt.as_ref().map(|a| a.plan.clone());
    let pin_hidden = data.initial_pin.is_some();
    Ok(match data.engine {
        Engine::AwaitWitness(e) => match e.on_responses(responses) {
            Ok((next, batch)) => Next::Batch(Engine::AwaitKeys(next), batch, vec![]),
            Err(f) => Next::Failed(f),
        },
        Engine::AwaitKeys(e) => match e.on_responses(responses) {
            Err(f) => Next::Failed(f),
            Ok(await_certs) => {
                // Certify the device's keys now: no round trip.
                let now = time::OffsetDateTime::now_utc();
                let mut certificates = Vec::new();
                for k in await_certs.keys() {
                    let app = policy
                        .pki_applications
                        .iter()
                        .find(|a| keyward_engine::plan::piv_slot(a.slot) == k.slot)
                        .ok_or_else(|| {
                            ApiError::internal("certifying", "no PKI application for the slot")
                        })?;
                    let req = match LeafRequest::from_template(app, user, None, &k.spki_der) {
                        Ok(r) => r,
                        Err(e) => {
                            return Ok(Next::Failed(Failure::new(
                                "certificate_template",
                                "certify keys",
                                e.to_string(),
                            )))
                        }
                    };
                    let issued = state
                        .pki
                        .ca
                        .issue(&req, now)
                        .map_err(|e| ApiError::internal("issuing a certificate", e))?;
                    certificates.push((k.slot, issued.der));
                }
                let to_sign = match await_certs.chuid_to_sign() {
                    Ok(c) => c,
                    Err(f) => return Ok(Next::Failed(f)),
                };
                let chuid_signature = state
                    .pki
                    .ca
                    .sign_chuid(&to_sign)
                    .map_err(|e| ApiError::internal("signing the CHUID", e))?;
                let certified = Certified {
                    certificates: certificates.clone(),
                    chuid_signature,
                };
                // (A shared FIDO PIN changes after the passkey registration.)
                if change_pin_at_end
                    && await_certs.plan().final_pin.is_none()
                    && !super::fido_step::shares_device_pin(policy)
                {
                    // The person chooses their PIN now; the last batch sets it.
                    let prompt = Batch::prompts(vec![Prompt::new(
                        PromptKind::SetNewPin,
                        "set new PIN",
                        "Choose the PIN of your device",
                    )]);
                    return Ok(Next::Batch(
                        Engine::AwaitNewPin(await_certs, certified),
                        prompt,
                        certificates,
                    ));
                }
                let plan = await_certs.plan().clone();
                match await_certs.with_certificates(certified) {
                    // A FIDO application's probe rides along the writes.
                    Ok((next, batch)) => super::fido_step::with_writes(
                        policy,
                        user,
                        &plan,
                        pin_hidden,
                        change_pin_at_end,
                        next,
                        batch,
                        certificates,
                    ),
                    Err(f) => Next::Failed(f),
                }
            }
        },
        Engine::AwaitWrites(e) => match e.on_responses(responses) {
            Err(f) => Next::Failed(f),
            Ok(done) if policy.fido_application.is_some() => {
                let plan = piv_plan
                    .ok_or_else(|| ApiError::internal("relaying", "no plan for the FIDO step"))?;
                super::fido_step::after_piv(
                    policy,
                    user,
                    &plan,
                    pin_hidden,
                    change_pin_at_end,
                    done.certificates,
                )?
                .ok_or_else(|| ApiError::internal("relaying", "no FIDO application"))?
            }
            Ok(done) => Next::Done(
                done.certificates
                    .into_iter()
                    .map(|(slot, der)| certificate_credential(s, slot, der, None))
                    .collect::<ApiResult<_>>()?,
            ),
        },
        Engine::AwaitNewPin(mut await_certs, certified) => {
            // Checked against the PIN rules before the session moved.
            let pin = answers
                .get(PromptKind::SetNewPin.as_str())
                .ok_or_else(|| ApiError::internal("relaying", "no new PIN"))?;
            await_certs.set_final_pin(Secret::new(pin.as_str()));
            let plan = await_certs.plan().clone();
            match await_certs.with_certificates(certified) {
                Ok((next, batch)) => super::fido_step::with_writes(
                    policy,
                    user,
                    &plan,
                    pin_hidden,
                    change_pin_at_end,
                    next,
                    batch,
                    vec![],
                ),
                Err(f) => Next::Failed(f),
            }
        }
        Engine::Recycle(_) | Engine::ChangePin(_) => {
            return Err(ApiError::internal(
                "relaying",
                "a recycle or PIN change in the issuance path",
            ))
        }
        Engine::AwaitWritesAndFido(e, piv_commands, fido) => {
            // The PIV writes' answers first, then the FIDO probe's.
            let (piv, probe) = responses.split_at(piv_commands.min(responses.len()));
            match e.on_responses(piv) {
                Err(f) => Next::Failed(f),
                Ok(done) => super::fido_step::on_probe(*fido, done.certificates, probe),
            }
        }
        Engine::Fido(_) => {
            return Err(ApiError::internal(
                "relaying",
                "the FIDO step runs in fido_step::step",
            ))
        }
        Engine::Finished => {
            return Err(ApiError::conflict(
                "session_finished",
                "the session has ended",
            ))
        }
    })
}

/// The client's responses to batch `seq`; answers with the next batch, or
/// the end of the session (`issued` or `failed`).
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
    let data = unseal(&state, &s)?;
    // An agent also needs the device reported and a command batch out (its
    // binding was checked by RelayCaller); on the session already open.
    crate::agents::check_relay_batch(
        &state,
        &caller,
        &s,
        data.serial,
        !data.batch.commands.is_empty(),
    )
    .await?;
    if result.session_id != s.id.to_string() {
        return Err(
            ApiError::bad_request("session_mismatch", "session_id differs from the URL")
                .field("session_id"),
        );
    }
    if s.status != keyward_domain::SessionStatus::Running {
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
    if matches!(data.engine, Engine::Recycle(_)) {
        return super::recycle::on_result(&state, &caller, &s, data, &responses, &result).await;
    }
    if matches!(data.engine, Engine::ChangePin(_)) {
        return super::change_pin::on_result(&state, &caller, &s, data, &responses, &result).await;
    }
    let user = ctx.user.map_err(|e| store_error("reading the user", e))?;
    let policy = ctx
        .policy
        .map_err(|e| store_error("reading the policy", e))?;
    let device = ctx
        .device
        .map_err(|e| store_error("reading the device", e))?;
    // Answers are checked before anything moves: a refused answer leaves
    // the same prompts out.
    if data.batch.awaits_answers() {
        super::answers::check(&data.batch, &result.answers, &policy)?;
    }
    let (user_login, policy_name, serial) = (
        data.user_login.clone(),
        data.policy_name.clone(),
        data.serial,
    );
    let initial_pin = data.initial_pin.clone();
    let mut attempt = data
        .attempt
        .clone()
        .ok_or_else(|| ApiError::internal("relaying", "a running session without its attempt"))?;
    if let Some(pin) = result.answers.get(PromptKind::SetNewPin.as_str()) {
        if data
            .batch
            .prompts
            .iter()
            .any(|p| p.kind == PromptKind::SetNewPin)
        {
            attempt.plan.final_pin = Some(Secret::new(pin.as_str()));
        }
    }
    attempt.known.after_batch(
        &attempt.plan,
        &data.batch,
        &responses,
        result.transport_error.is_some(),
    );
    let change_pin_at_end = data.change_pin_at_end;
    // Keys that must prove they were generated on the device (attestation).
    let (attestation_failure, attestation_audit) =
        super::attestation::before_certify(&state, &caller, &s, &device, &data.engine, &responses)
            .await?;
    // A passkey registered before the device PIN change: revoked on record
    // if the attempt fails (the FIDO step deletes it at its service).
    let registered_passkey = super::fido_step::registered_passkey(&data.engine);
    let next = match data.engine {
        _ if attestation_failure.is_some() => {
            Ok(Next::Failed(attestation_failure.expect("checked")))
        }
        Engine::Fido(fido) => {
            super::fido_step::step(
                &state,
                &s,
                &user,
                &policy,
                *fido,
                &responses,
                &result.answers,
            )
            .await
        }
        // Certifying the keys (the CA's signatures, the signed CHUID) is the
        // CPU-heavy step: on a blocking thread, so the runtime's workers keep
        // serving other sessions, among them the one holding the store's writer.
        Engine::AwaitKeys(_) => {
            let (state, s, user, policy) = (state.clone(), s.clone(), user.clone(), policy.clone());
            let (responses, answers) = (responses.clone(), result.answers.clone());
            tokio::task::spawn_blocking(move || {
                step_engine(&state, &s, &user, &policy, data, &responses, &answers)
            })
            .await
            .map_err(|e| ApiError::internal("certifying the keys", e))?
        }
        _ => step_engine(
            &state,
            &s,
            &user,
            &policy,
            data,
            &responses,
            &result.answers,
        ),
    };
    let next_seq = s.seq + 1;
    let target = format!("device:{serial}");
    let next = next.map(|n| match n {
        Next::Failed(f) => Next::Failed(with_transport_cause(f, result.transport_error.as_deref())),
        n => n,
    });
    let next = next?;
    // The attestation outcomes go with the session's next move when it is a
    // batch (one write); before the ending otherwise.
    if let (Some(draft), false) = (&attestation_audit, matches!(next, Next::Batch(..))) {
        state
            .store
            .append_audit(draft)
            .await
            .map_err(|e| store_error("recording the attestation", e))?;
    }
    match next {
        Next::Batch(engine, batch, issued) => {
            attempt.certificates.extend(issued);
            let step = batch.step();
            let data = SessionData {
                format: super::SEALED_FORMAT,
                engine,
                batch: batch.clone(),
                user_login,
                policy_name,
                serial,
                initial_pin,
                attempt: Some(attempt),
                change_pin_at_end,
                kept: None,
            };
            let update = IssuanceUpdate {
                status: keyward_domain::SessionStatus::Running,
                step,
                seq: next_seq,
                sealed_state: seal(&state, s.id, &data),
                error: None,
            };
            let draft = audit(
                &caller,
                "issuance.step",
                target,
                serde_json::json!({ "session": s.id, "batch": next_seq }),
            );
            let audits: Vec<&AuditDraft> = attestation_audit
                .iter()
                .chain(std::iter::once(&draft))
                .collect();
            state
                .store
                .advance_issuance(s.id, s.seq, &update, None, &[], &audits)
                .await
                .map_err(|e| store_error("saving the session", e))?;
            Ok(Json(relay_batch(
                s.id,
                next_seq,
                keyward_domain::SessionStatus::Running,
                &batch,
            )))
        }
        Next::Done(creds) => {
            // A passkey registered in this step but not on record is deleted
            // at its service again (compensation).
            let passkeys: Vec<_> = creds
                .iter()
                .filter_map(super::fido_step::passkey_record)
                .collect();
            if let Some(pin) = &initial_pin {
                if let Err(e) =
                    crate::initial_pin::keep(&state, &device, s.user_id, pin, &caller).await
                {
                    super::fido_step::compensate(&state, &passkeys).await;
                    return Err(e);
                }
            }
            let draft = audit(
                &caller,
                "issuance.complete",
                target,
                serde_json::json!({ "session": s.id, "credentials": creds.len() }),
            );
            let ending = Ending {
                status: keyward_domain::SessionStatus::Issued,
                step: "done".into(),
                error: None,
                device: StateChange {
                    to: DeviceState::Issued,
                    reason: None,
                    assigned_user: None,
                    device_policy: None,
                    note: Some(format!("issuance session {}", s.id)),
                },
                credentials: creds,
                audit: draft,
            };
            let answer = end_session(
                &state,
                &s,
                &device,
                (user_login, policy_name, serial),
                ending,
                None,
                Some(Kept::from_known(&attempt.known)),
            )
            .await;
            if answer.is_err() {
                super::fido_step::compensate(&state, &passkeys).await;
            }
            answer
        }
        Next::Failed(f) => {
            // The attempt ends; the device is Produced (Failed) and can be cancelled or recycled.
            let report = serde_json::json!({
                "code": f.code, "step": f.step, "sw": f.sw.map(|sw| format!("{sw:04X}")), "message": f.message,
                "session": s.id, "at": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            });
            let mut draft = audit(
                &caller,
                "issuance.fail",
                target,
                serde_json::json!({ "session": s.id, "code": f.code, "step": f.step }),
            );
            draft.outcome = AuditOutcome::Failure;
            attempt.known.learn_from_failure(&f);
            // Certificates issued in this attempt are revoked: keys are
            // generated anew on a retry.
            let now = time::OffsetDateTime::now_utc();
            let revoked: Vec<Credential> = std::mem::take(&mut attempt.certificates)
                .into_iter()
                .map(|(slot, der)| certificate_credential(&s, slot, der, Some(now)))
                .collect::<ApiResult<_>>()?;
            let any_revoked = !revoked.is_empty();
            let mut revoked = revoked;
            if let Some(record) = &registered_passkey {
                revoked.push(super::fido_step::passkey_credential(&s, record, Some(now)));
            }
            let ending = Ending {
                status: keyward_domain::SessionStatus::Failed,
                step: f.step.clone(),
                error: Some(report.to_string()),
                device: StateChange {
                    to: DeviceState::Produced,
                    reason: Some(StateReason::Failed),
                    assigned_user: None,
                    device_policy: None,
                    note: Some(format!("issuance failed at {}", f.step)),
                },
                credentials: revoked,
                audit: draft,
            };
            let kept = Kept::from_known(&attempt.known);
            let answer = end_session(
                &state,
                &s,
                &device,
                (user_login, policy_name, serial),
                ending,
                Some((attempt, initial_pin, change_pin_at_end)),
                Some(kept),
            )
            .await;
            if any_revoked {
                state.pki.invalidate_crl();
            }
            answer
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let cut = || Failure::new("incomplete_batch", "x", "the batch stopped at command 2");
        for cause in ["device_removed", "card_reset", "reader_gone", "timeout"] {
            assert_eq!(with_transport_cause(cut(), Some(cause)).code, cause);
        }
        // Unknown words stay out of the failure code.
        assert_eq!(
            with_transport_cause(cut(), Some("nonsense")).code,
            "incomplete_batch"
        );
        // A status-word failure keeps its own code.
        let sw = Failure::new("unexpected_status", "x", "6982");
        assert_eq!(
            with_transport_cause(sw, Some("device_removed")).code,
            "unexpected_status"
        );
    }
}
