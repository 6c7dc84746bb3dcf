//! One-time enrollment codes: how a user gets a first password without an
//! administrator ever knowing it. The code is shown once to the
//! administrator who hands it over; the store keeps only its keyed hash and
//! expiry, sealed under the KEK, as the secret `enrollment:<user id>`.
//! Redeeming deletes it first, so a code works once even under a race.

use keyward_domain::{Account, AuditDraft, Role, User};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::api::found;
use crate::app::AppState;

/// How long an enrollment code stays valid.
pub const VALIDITY_HOURS: i64 = 72;

fn secret_name(user_id: Uuid) -> String {
    format!("enrollment:{user_id}")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Sealed {
    code_hmac: String,
    expires_at: i64,
}

/// 16 characters from an unambiguous alphabet (80 bits), grouped by 4.
fn new_code() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rngs::OsRng;
    let chars: Vec<char> = (0..16)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

fn code_hmac(state: &AppState, user_id: Uuid, code: &str) -> String {
    let normalised: String = code
        .trim()
        .to_ascii_uppercase()
        .chars()
        .filter(|c| *c != '-' && *c != ' ')
        .collect();
    hex::encode(state.tokens.hash(&format!("enroll:{user_id}:{normalised}")))
}

/// Creates (or replaces) the user's enrollment code; returns it and its expiry.
pub async fn issue(
    state: &AppState,
    user: &User,
    audit: &AuditDraft,
) -> keyward_store::StoreResult<(String, OffsetDateTime)> {
    let code = new_code();
    let expires_at = OffsetDateTime::now_utc() + time::Duration::hours(VALIDITY_HOURS);
    let record = Sealed {
        code_hmac: code_hmac(state, user.id, &code),
        expires_at: expires_at.unix_timestamp(),
    };
    let name = secret_name(user.id);
    let sealed = state
        .sealer
        .seal(&name, &serde_json::to_vec(&record).expect("serialises"));
    state.store.put_secret(&name, &sealed, audit).await?;
    Ok((code, expires_at))
}

/// Sets the user's password if `code` is their current, unexpired code
/// (checked before the password is hashed). Returns false for any mismatch
/// (unknown login included), without saying which.
pub async fn redeem(
    state: &AppState,
    login: &str,
    code: &str,
    password: String,
    audit: &AuditDraft,
) -> keyward_store::StoreResult<bool> {
    let Some(user) = found(state.store.get_user_by_login(login).await)? else {
        return Ok(false);
    };
    let name = secret_name(user.id);
    let Some(sealed) = state.store.get_secret(&name).await? else {
        return Ok(false);
    };
    let Ok(plain) = state.sealer.open(&name, &sealed) else {
        return Ok(false);
    };
    let Ok(record) = serde_json::from_slice::<Sealed>(&plain) else {
        return Ok(false);
    };
    let given = code_hmac(state, user.id, code);
    if !bool::from(given.as_bytes().ct_eq(record.code_hmac.as_bytes()))
        || OffsetDateTime::now_utc().unix_timestamp() > record.expires_at
    {
        return Ok(false);
    }
    let phc = crate::secrets::hash_bounded(state, password).await;
    let password_hash = phc.as_str();
    // Delete first: only one redeemer wins.
    if !state.store.delete_secret(&name, audit).await? {
        return Ok(false);
    }
    match found(state.store.get_account_by_login(&user.login).await)? {
        Some(account) if account.role == Role::User && account.user_id == Some(user.id) => {
            state
                .store
                .set_password(account.id, password_hash, false, audit)
                .await?;
        }
        Some(_) => {
            return Err(keyward_store::StoreError::Conflict {
                code: "duplicate_login",
                field: "login",
                message: "an operator account already uses this login".into(),
            })
        }
        None => {
            let account = Account {
                id: Uuid::new_v4(),
                login: user.login.clone(),
                role: Role::User,
                password_hash: Some(password_hash.to_string()),
                must_change_password: false,
                user_id: Some(user.id),
                disabled: false,
            };
            state.store.create_account(&account, audit).await?;
        }
    }
    Ok(true)
}
