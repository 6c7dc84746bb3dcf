//! The one sign-in path of the API (`POST /api/v1/auth/session`) and the
//! portal's form (`POST /signin`): the password checked against the
//! account's hash (or a dummy hash for an unknown login, so the time taken
//! does not tell whether an account exists), a refusal counted and audited,
//! a success audited with the new browser session written, and the session
//! cookie. The two routes differ only in how they answer.

use keyward_domain::Account;
use keyward_domain::{AuditDraft, AuditOutcome};
use keyward_store::{Session, StoreError};

use crate::api::session::random_b64;
use crate::app::AppState;
use crate::auth::SESSION_COOKIE;
use crate::secrets::hash_password;

/// A hash to verify against when the login is unknown.
static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| hash_password("keyward-dummy-password"));

/// Where the sign-in came from (written in the audit record's details).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Api,
    Portal,
}

/// A new browser session.
pub struct SignedIn {
    pub account: Account,
    /// The session's secret, for the cookie only (stored as a hash).
    pub session_id: String,
    pub csrf_token: String,
}

/// Verifies `password` for `login` off the async workers (argon2 is slow on
/// purpose), a bounded number at once.
pub async fn password_matches(state: &AppState, password: String, phc: Option<String>) -> bool {
    let phc = phc.unwrap_or_else(|| DUMMY_HASH.clone());
    crate::secrets::verify_bounded(state, password, phc).await
}

/// How a sign-in ended.
pub enum Outcome {
    SignedIn(SignedIn),
    /// Unknown login, wrong password or a disabled account: one answer.
    Refused,
    /// Too many attempts for this login or from this address: try again
    /// after the wait (nothing was checked).
    Limited(std::time::Duration),
}

/// Whether a sign-in (or enrollment) from `ip` for `login` may be tried
/// now; spends one of the address's attempts. A refusal is audited once a
/// minute per login and address (a flood must not flood the trail).
pub async fn brake(
    state: &AppState,
    ip: std::net::IpAddr,
    login: &str,
    action: &str,
) -> Result<Option<std::time::Duration>, (&'static str, StoreError)> {
    let now = std::time::Instant::now();
    let login_key = login.trim().to_lowercase();
    let wait = match state.limits.sign_in_address.take(&ip.to_string(), now) {
        Err(wait) => Some(wait),
        Ok(()) => state.limits.sign_in_login.check(&login_key, now),
    };
    let Some(wait) = wait else {
        return Ok(None);
    };
    let key = format!("{login_key}|{ip}");
    if state.limits.limited_audit.take(&key, now).is_ok() {
        let draft = AuditDraft {
            actor: format!("login:{}", printable(login)),
            action: "auth.rate_limited".into(),
            target: format!("account:{}", printable(login)),
            outcome: AuditOutcome::Failure,
            details: serde_json::json!({
                "address": ip.to_string(),
                "attempt": action,
                "retry_after_seconds": wait.as_secs() + 1,
            }),
        };
        state
            .store
            .append_audit(&draft)
            .await
            .map_err(|e| ("recording a limited sign-in", e))?;
    }
    Ok(Some(wait))
}

/// A login as it may be written in the audit trail (no control characters,
/// at most 64 characters).
pub fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// Signs `login` in: `Ok(None)` when refused (unknown login, wrong password
/// or a disabled account: counted and audited, one answer for all).
pub async fn sign_in(
    state: &AppState,
    login: &str,
    password: String,
    channel: Channel,
    ip: std::net::IpAddr,
) -> Result<Outcome, (&'static str, StoreError)> {
    if let Some(wait) = brake(state, ip, login, "sign_in").await? {
        return Ok(Outcome::Limited(wait));
    }
    let account = crate::api::found(state.store.get_account_by_login(login).await)
        .map_err(|e| ("signing in", e))?;
    let phc = account.as_ref().and_then(|a| a.password_hash.clone());
    let ok = password_matches(state, password, phc).await;
    let details = match channel {
        Channel::Api => serde_json::json!({}),
        Channel::Portal => serde_json::json!({ "via": "portal" }),
    };
    let account = match account {
        Some(a) if ok && !a.disabled => a,
        _ => {
            state
                .metrics
                .sign_in_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // A failure spends one of the login's attempts.
            let _ = state
                .limits
                .sign_in_login
                .take(&login.trim().to_lowercase(), std::time::Instant::now());
            let draft = AuditDraft {
                actor: format!("login:{}", printable(login)),
                action: "auth.sign_in".into(),
                target: format!("account:{}", printable(login)),
                outcome: AuditOutcome::Failure,
                details,
            };
            state
                .store
                .append_audit(&draft)
                .await
                .map_err(|e| ("recording a failed sign-in", e))?;
            return Ok(Outcome::Refused);
        }
    };
    let session_id = random_b64(32);
    let csrf_token = random_b64(32);
    let now = time::OffsetDateTime::now_utc();
    let draft = AuditDraft {
        actor: format!("account:{}", account.login),
        action: "auth.sign_in".into(),
        target: format!("account:{}", account.login),
        outcome: AuditOutcome::Success,
        details,
    };
    let session = Session {
        id_hash: state.tokens.hash(&session_id),
        account_id: account.id,
        csrf_token: csrf_token.clone(),
        created_at: now,
        expires_at: now + time::Duration::minutes(state.config.session_minutes as i64),
    };
    state
        .store
        .create_session(&session, &draft)
        .await
        .map_err(|e| ("creating the session", e))?;
    Ok(Outcome::SignedIn(SignedIn {
        account,
        session_id,
        csrf_token,
    }))
}

/// The `Set-Cookie` value of a new session (`Secure` when served over
/// HTTPS, then with the `__Host-` prefix: the browser keeps it for this
/// host only, Path=/, and never sends it over plain HTTP).
pub fn session_cookie(state: &AppState, session_id: &str) -> String {
    format!(
        "{}={session_id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        session_cookie_name(state),
        state.config.session_minutes * 60,
        secure_flag(state)
    )
}

/// The `Set-Cookie` value that ends the session cookie.
pub fn clear_session_cookie(state: &AppState) -> String {
    format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        session_cookie_name(state),
        secure_flag(state)
    )
}

/// Whether browsers reach this server over HTTPS: it speaks TLS itself, or
/// a TLS proxy in front of it (`public_url` is https).
pub fn served_securely(state: &AppState) -> bool {
    state.config.tls.is_some()
        || state
            .config
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
}

/// The session cookie's name: `__Host-kw_session` over HTTPS.
pub fn session_cookie_name(state: &AppState) -> &'static str {
    if served_securely(state) {
        crate::auth::SECURE_SESSION_COOKIE
    } else {
        SESSION_COOKIE
    }
}

/// `; Secure` when browsers reach the server over HTTPS.
pub fn secure_flag(state: &AppState) -> &'static str {
    if served_securely(state) {
        "; Secure"
    } else {
        ""
    }
}
