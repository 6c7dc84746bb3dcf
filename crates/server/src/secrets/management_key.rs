//! The master key of per-device PIV management keys: each device's key is
//! derived from it by HKDF over the serial (`keyward_engine::plan`), so the
//! store holds no per-card key. Created at first use, sealed under the KEK.

use keyward_domain::{AuditDraft, AuditOutcome};
use rand::RngCore;

use crate::api::store_error;
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

/// The store secret holding the sealed master key.
const MASTER_KEY_SECRET: &str = "piv:management-key-master";

/// The master key, read and unsealed once per server.
pub async fn master_key(state: &AppState) -> ApiResult<zeroize::Zeroizing<Vec<u8>>> {
    Ok(state
        .master_key
        .get_or_try_init(|| create_or_read(state))
        .await?
        .clone())
}

/// The master key for per-device management keys, created on first use.
async fn create_or_read(state: &AppState) -> ApiResult<zeroize::Zeroizing<Vec<u8>>> {
    let open = |sealed: Vec<u8>| {
        state
            .sealer
            .open(MASTER_KEY_SECRET, &sealed)
            .map(zeroize::Zeroizing::new)
            .map_err(|e| ApiError::internal("opening the management-key master key", e))
    };
    if let Some(sealed) = state
        .store
        .get_secret(MASTER_KEY_SECRET)
        .await
        .map_err(|e| store_error("reading the master key", e))?
    {
        return open(sealed);
    }
    let mut key = zeroize::Zeroizing::new(vec![0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut key);
    let draft = AuditDraft {
        actor: "system".into(),
        action: "pki.master_key_created".into(),
        target: "secret:piv-management-key-master".into(),
        outcome: AuditOutcome::Success,
        details: serde_json::json!({}),
    };
    state
        .store
        .put_secret(
            MASTER_KEY_SECRET,
            &state.sealer.seal(MASTER_KEY_SECRET, &key),
            &draft,
        )
        .await
        .map_err(|e| store_error("storing the master key", e))?;
    // Several nodes may race: use what the store holds.
    let sealed = state
        .store
        .get_secret(MASTER_KEY_SECRET)
        .await
        .map_err(|e| store_error("reading the master key", e))?
        .ok_or_else(|| ApiError::internal("reading the master key", "vanished"))?;
    open(sealed)
}
