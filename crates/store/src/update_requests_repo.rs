// Update requests (see update_requests.rs), for both backends.

const UPDATE_COLS: &str =
    "id, device_id, policy_id, changes, origin, created_by, created_at, state, session_id, ended_at";

fn update_request_row(
    r: &<DB as sqlx::Database>::Row,
) -> StoreResult<crate::update_requests::UpdateRequest> {
    Ok(crate::update_requests::UpdateRequest {
        id: r.try_get("id")?,
        device_id: r.try_get("device_id")?,
        policy_id: r.try_get("policy_id")?,
        changes: r.try_get("changes")?,
        origin: r.try_get("origin")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        state: r.try_get("state")?,
        session_id: r.try_get("session_id")?,
        ended_at: r.try_get("ended_at")?,
    })
}

pub async fn create_update_request(
    pool: &Pool<DB>,
    key: &AuditKey,
    r: &crate::update_requests::UpdateRequest,
    audit: &AuditDraft,
) -> StoreResult<()> {
    let mut tx = dialect::begin_write(pool).await?;
    let inserted = sqlx::query(&format!(
        "INSERT INTO update_requests ({UPDATE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', NULL, NULL)"
    ))
    .bind(r.id)
    .bind(r.device_id)
    .bind(r.policy_id)
    .bind(&r.changes)
    .bind(&r.origin)
    .bind(&r.created_by)
    .bind(r.created_at)
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            return Err(conflict(
                "update_pending",
                "serial",
                "the device has a pending update request: cancel it first",
            ))
        }
        Err(e) => return Err(e.into()),
    }
    finish(tx, key, audit).await
}

pub async fn pending_update_request(
    pool: &Pool<DB>,
    device_id: Uuid,
) -> StoreResult<Option<crate::update_requests::UpdateRequest>> {
    let row = sqlx::query(&format!(
        "SELECT {UPDATE_COLS} FROM update_requests WHERE device_id = $1 AND state = 'pending'"
    ))
    .bind(device_id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(update_request_row).transpose()
}

pub async fn refresh_update_request(pool: &Pool<DB>, id: Uuid, changes: &str) -> StoreResult<()> {
    sqlx::query("UPDATE update_requests SET changes = $1 WHERE id = $2 AND state = 'pending'")
        .bind(changes)
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn pending_update_requests(
    pool: &Pool<DB>,
) -> StoreResult<Vec<crate::update_requests::UpdateRequest>> {
    let rows = sqlx::query(&format!(
        "SELECT {UPDATE_COLS} FROM update_requests WHERE state = 'pending' ORDER BY created_at"
    ))
    .fetch_all(pool)
    .await?;
    rows.iter().map(update_request_row).collect()
}

pub async fn cancel_update_request(
    pool: &Pool<DB>,
    key: &AuditKey,
    id: Uuid,
    audit: &AuditDraft,
) -> StoreResult<()> {
    let mut tx = dialect::begin_write(pool).await?;
    let res = sqlx::query(
        "UPDATE update_requests SET state = 'cancelled', ended_at = $1 WHERE id = $2 AND state = 'pending'",
    )
    .bind(now())
    .bind(id)
    .execute(&mut *tx)
    .await?;
    if res.rows_affected() == 0 {
        return Err(conflict(
            "update_not_pending",
            "id",
            "the update request is not pending any more",
        ));
    }
    finish(tx, key, audit).await
}

pub async fn set_pin_check_due(
    pool: &Pool<DB>,
    key: &AuditKey,
    device_id: Uuid,
    due: bool,
    audit: &AuditDraft,
) -> StoreResult<()> {
    set_device_flag(pool, key, device_id, DeviceFlag::PinCheckDue, due, audit).await
}

pub async fn pin_check_due(pool: &Pool<DB>, device_id: Uuid) -> StoreResult<bool> {
    let row = sqlx::query("SELECT pin_check_due FROM devices WHERE id = $1")
        .bind(device_id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| StoreError::not_found("device", device_id))?;
    Ok(row.try_get("pin_check_due")?)
}

/// An update session's end (inside its transaction): the certificates it
/// replaced or removed revoked, the device's policy, the PIN flag, the
/// request done (or left pending, with the session that tried).
async fn apply_update_outcome(
    tx: &mut Tx,
    session: Uuid,
    o: &crate::update_requests::UpdateOutcome,
    at: OffsetDateTime,
) -> StoreResult<()> {
    for (credential, reason) in &o.revoke {
        sqlx::query(
            "UPDATE credentials SET revoked_at = $1, revocation_reason = $2 \
             WHERE id = $3 AND kind = 'certificate' AND (revoked_at IS NULL OR revocation_reason = 6)",
        )
        .bind(at)
        .bind(i64::from(*reason))
        .bind(credential)
        .execute(&mut **tx)
        .await?;
    }
    for (credential, slot) in &o.retire {
        sqlx::query("UPDATE credentials SET slot = $1 WHERE id = $2 AND kind = 'certificate'")
            .bind(slot)
            .bind(credential)
            .execute(&mut **tx)
            .await?;
    }
    let device: Uuid = sqlx::query("SELECT device_id FROM update_requests WHERE id = $1")
        .bind(o.request)
        .fetch_one(&mut **tx)
        .await?
        .try_get("device_id")?;
    if let Some(policy) = o.device_policy {
        sqlx::query(
            "UPDATE devices SET device_policy = $1, version = version + 1, updated_at = $2 WHERE id = $3",
        )
        .bind(policy)
        .bind(at)
        .bind(device)
        .execute(&mut **tx)
        .await?;
    }
    let state = if o.done { "done" } else { "pending" };
    let ended = o.done.then_some(at);
    sqlx::query("UPDATE update_requests SET state = $1, session_id = $2, ended_at = $3 WHERE id = $4")
        .bind(state)
        .bind(session)
        .bind(ended)
        .bind(o.request)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
