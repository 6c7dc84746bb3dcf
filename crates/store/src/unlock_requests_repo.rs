// Unlock requests (see unlock_requests.rs), for both backends.

pub async fn create_unlock_request(
    pool: &Pool<DB>,
    key: &AuditKey,
    r: &crate::unlock_requests::UnlockRequest,
    audit: &AuditDraft,
) -> StoreResult<()> {
    let mut tx = dialect::begin_write(pool).await?;
    sqlx::query(
        "INSERT INTO unlock_requests (id, device_id, created_by, created_at, expires_at, used_at, session_id) \
         VALUES ($1, $2, $3, $4, $5, NULL, NULL)",
    )
    .bind(r.id)
    .bind(r.device_id)
    .bind(&r.created_by)
    .bind(r.created_at)
    .bind(r.expires_at)
    .execute(&mut *tx)
    .await?;
    finish(tx, key, audit).await
}

pub async fn open_unlock_request(
    pool: &Pool<DB>,
    device_id: Uuid,
    now: OffsetDateTime,
) -> StoreResult<Option<crate::unlock_requests::UnlockRequest>> {
    let row = sqlx::query(
        "SELECT id, device_id, created_by, created_at, expires_at, used_at, session_id FROM unlock_requests \
         WHERE device_id = $1 AND used_at IS NULL AND expires_at > $2 ORDER BY created_at DESC LIMIT 1",
    )
    .bind(device_id)
    .bind(now)
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        Ok(crate::unlock_requests::UnlockRequest {
            id: r.try_get("id")?,
            device_id: r.try_get("device_id")?,
            created_by: r.try_get("created_by")?,
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
            used_at: r.try_get("used_at")?,
            session_id: r.try_get("session_id")?,
        })
    })
    .transpose()
}

pub async fn use_unlock_request(
    pool: &Pool<DB>,
    id: Uuid,
    session: Uuid,
    now: OffsetDateTime,
) -> StoreResult<()> {
    let res = sqlx::query(
        "UPDATE unlock_requests SET used_at = $1, session_id = $2 \
         WHERE id = $3 AND used_at IS NULL AND expires_at > $1",
    )
    .bind(now)
    .bind(session)
    .bind(id)
    .execute(pool)
    .await?;
    if res.rows_affected() == 0 {
        return Err(conflict(
            "unlock_request_used",
            "id",
            "the unlock request was used or expired meanwhile",
        ));
    }
    Ok(())
}

pub async fn set_puk_rotation_due(
    pool: &Pool<DB>,
    key: &AuditKey,
    device_id: Uuid,
    due: bool,
    audit: &AuditDraft,
) -> StoreResult<()> {
    set_device_flag(pool, key, device_id, DeviceFlag::PukRotationDue, due, audit).await
}

/// A device's flags that follow-up sessions clear.
#[derive(Clone, Copy)]
enum DeviceFlag {
    /// Its PUK was disclosed for an offline unlock.
    PukRotationDue,
    /// An offline unlock set its PIN unchecked by the policy's rules.
    PinCheckDue,
}

/// Sets (or clears) one of a device's flags, with the audit record.
async fn set_device_flag(
    pool: &Pool<DB>,
    key: &AuditKey,
    device_id: Uuid,
    flag: DeviceFlag,
    due: bool,
    audit: &AuditDraft,
) -> StoreResult<()> {
    let sql = match flag {
        DeviceFlag::PukRotationDue => "UPDATE devices SET puk_rotation_due = $1 WHERE id = $2",
        DeviceFlag::PinCheckDue => "UPDATE devices SET pin_check_due = $1 WHERE id = $2",
    };
    let mut tx = dialect::begin_write(pool).await?;
    let res = sqlx::query(sql)
        .bind(due)
        .bind(device_id)
        .execute(&mut *tx)
        .await?;
    if res.rows_affected() == 0 {
        return Err(StoreError::not_found("device", device_id));
    }
    finish(tx, key, audit).await
}
