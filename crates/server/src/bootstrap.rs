//! First start: with no account in the store, create the `admin` operator
//! with a one-time password printed once on the console (never logged; it
//! must be changed at first sign-in). With `KEYWARD_BOOTSTRAP_TOKEN` set,
//! also make sure an `administrator` API token with exactly that value exists
//! (for automation and CI).

use keyward_domain::{Account, AuditDraft, AuditOutcome, Role};
use keyward_store::ApiToken;
use uuid::Uuid;

use crate::api::session::random_b64;
use crate::app::AppState;
use crate::secrets::hash_password;

/// Name of the API token created from `KEYWARD_BOOTSTRAP_TOKEN`.
pub const BOOTSTRAP_TOKEN_NAME: &str = "bootstrap";

fn system(action: &str, target: &str) -> AuditDraft {
    AuditDraft {
        actor: "system".into(),
        action: action.into(),
        target: target.into(),
        outcome: AuditOutcome::Success,
        details: serde_json::json!({}),
    }
}

/// Returns the admin's one-time password when the admin was created now.
pub async fn run(
    state: &AppState,
    bootstrap_token: Option<&str>,
) -> anyhow::Result<Option<String>> {
    let mut created_password = None;
    if state.store.count_accounts().await? == 0 {
        let password = random_b64(15);
        let pw = password.clone();
        let phc = tokio::task::spawn_blocking(move || hash_password(&pw)).await?;
        let admin = Account {
            id: Uuid::new_v4(),
            login: "admin".into(),
            role: Role::Administrator,
            password_hash: Some(phc),
            must_change_password: true,
            user_id: None,
            disabled: false,
        };
        match state
            .store
            .create_account(&admin, &system("operator.bootstrap", "account:admin"))
            .await
        {
            Ok(()) => created_password = Some(password),
            // Another node created it first: fine.
            Err(keyward_store::StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(token) = bootstrap_token.filter(|t| !t.is_empty()) {
        let hash = state.tokens.hash(token);
        if state.store.find_api_token(&hash).await?.is_none() {
            let record = ApiToken {
                id: Uuid::new_v4(),
                name: BOOTSTRAP_TOKEN_NAME.into(),
                role: Role::Administrator,
                token_hmac: hash,
                created_by: "system".into(),
                created_at: time::OffsetDateTime::now_utc(),
                last_used_at: None,
                revoked_at: None,
                expires_at: Some(
                    time::OffsetDateTime::now_utc()
                        + time::Duration::days(i64::from(state.config.token_days)),
                ),
            };
            state
                .store
                .create_api_token(&record, &system("token.bootstrap", "token:bootstrap"))
                .await?;
        }
    }
    // Tokens made before expiry existed expire `token_days` from now.
    state
        .store
        .expire_legacy_tokens(
            time::OffsetDateTime::now_utc()
                + time::Duration::days(i64::from(state.config.token_days)),
        )
        .await?;
    Ok(created_password)
}

/// The retired setting "Require device attestation" (one switch for every
/// policy) becomes each policy's own field: when it was on, every policy
/// requires attestation; when off, policies keep what they say. Once.
pub async fn migrate_attestation_setting(state: &AppState) -> anyhow::Result<()> {
    let Some(value) = state
        .store
        .take_retired_setting(
            "require_device_attestation",
            &system("settings.retire", "setting:require_device_attestation"),
        )
        .await?
    else {
        return Ok(());
    };
    if value.trim() != "true" {
        return Ok(());
    }
    for mut p in state.store.list_policies().await? {
        if p.require_device_attestation != Some(true) {
            p.require_device_attestation = Some(true);
            state
                .store
                .update_policy(&p, &system("policy.update", &format!("policy:{}", p.name)))
                .await?;
            tracing::info!(policy = %p.name, "the retired setting required device attestation: so does this policy");
        }
    }
    Ok(())
}
