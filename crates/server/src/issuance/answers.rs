//! The person's answers to a prompt batch, checked before the session moves:
//! a refused answer (400) changes nothing and leaves the same prompts out,
//! so the person can answer again.

use std::collections::BTreeMap;

use keyward_domain::DevicePolicy;
use keyward_engine::{Batch, PromptKind};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ApiResult};

/// The answers to the prompt batch out now in session `s`, checked against
/// the session's policy (its PIN rules); nothing to check for a batch of
/// device commands.
pub(super) async fn check_for_session(
    state: &crate::app::AppState,
    s: &keyward_store::IssuanceSession,
    batch: &Batch,
    answers: &BTreeMap<String, String>,
) -> ApiResult<()> {
    if !batch.awaits_answers() {
        return Ok(());
    }
    let policy = state
        .store
        .get_policy(s.policy_id)
        .await
        .map_err(|e| crate::api::store_error("reading the policy", e))?;
    check(batch, answers, &policy)
}

pub(super) fn check(
    batch: &Batch,
    answers: &BTreeMap<String, String>,
    policy: &DevicePolicy,
) -> ApiResult<()> {
    for p in &batch.prompts {
        let kind = p.kind.as_str();
        let field = format!("answers.{kind}");
        let Some(answer) = answers.get(kind) else {
            let key = p
                .kind
                .answers_key()
                .map(|k| format!(" (`{k}` in an answers file)"))
                .unwrap_or_default();
            return Err(ApiError::bad_request(
                "answer_required",
                format!("the prompt {kind} needs an answer{key}"),
            )
            .field(field));
        };
        match p.kind {
            PromptKind::SetNewPin => {
                let checks = policy.pin_application.check(answer);
                let failed: Vec<_> = checks.iter().filter(|c| !c.passed).collect();
                if let Some(first) = failed.first() {
                    let rules: Vec<&str> = failed.iter().map(|c| c.description.as_str()).collect();
                    return Err(ApiError::bad_request(
                        &first.code,
                        format!("the new PIN must have: {}", rules.join("; ")),
                    )
                    .field(field)
                    .details(serde_json::json!({
                        "failed_rules": failed.iter().map(|c| serde_json::json!({
                            "rule": c.rule, "code": c.code, "description": c.description,
                        })).collect::<Vec<_>>(),
                    })));
                }
            }
            PromptKind::ConfirmTouch => {
                if !matches!(answer.as_str(), "true" | "false") {
                    return Err(ApiError::bad_request(
                        "answer_invalid",
                        "confirm_touch is answered true (confirm) or false (decline)",
                    )
                    .field(field));
                }
            }
            PromptKind::ShowInitialPin => {
                let shown = p.value.as_ref().map(|v| v.expose()).unwrap_or("");
                if !bool::from(shown.as_bytes().ct_eq(answer.as_bytes())) {
                    return Err(ApiError::bad_request(
                        "pin_mismatch",
                        "type the PIN shown back exactly",
                    )
                    .field(field));
                }
            }
            _ => {}
        }
    }
    Ok(())
}
