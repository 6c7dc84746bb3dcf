// Requests (see requests.rs), for both backends.

const REQUEST_COLS: &str = "id, kind, user_id, policy_id, serial, replaces, reason, batch_id, state, requested_by, created_at, decided_by, decided_at, note, session_id, used_at";

fn request_row(r: &<DB as sqlx::Database>::Row) -> StoreResult<crate::requests::Request> {
    let state: String = r.try_get("state")?;
    Ok(crate::requests::Request {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        user_id: r.try_get("user_id")?,
        policy_id: r.try_get("policy_id")?,
        serial: r.try_get("serial")?,
        replaces: r.try_get("replaces")?,
        reason: r.try_get("reason")?,
        batch_id: r.try_get("batch_id")?,
        state: keyward_domain::RequestState::parse_field(&state, "state")
            .map_err(StoreError::Validation)?,
        requested_by: r.try_get("requested_by")?,
        created_at: r.try_get("created_at")?,
        decided_by: r.try_get("decided_by")?,
        decided_at: r.try_get("decided_at")?,
        note: r.try_get("note")?,
        session_id: r.try_get("session_id")?,
        used_at: r.try_get("used_at")?,
    })
}

pub async fn create_requests(
    pool: &Pool<DB>,
    key: &AuditKey,
    batch: Option<&crate::requests::RequestBatch>,
    requests: &[crate::requests::Request],
    audit: &AuditDraft,
) -> StoreResult<()> {
    let mut tx = dialect::begin_write(pool).await?;
    if let Some(b) = batch {
        sqlx::query("INSERT INTO request_batches (id, created_by, created_at, rows_count) VALUES ($1, $2, $3, $4)")
            .bind(b.id)
            .bind(&b.created_by)
            .bind(b.created_at)
            .bind(b.rows_count)
            .execute(&mut *tx)
            .await?;
    }
    for r in requests {
        sqlx::query(&format!(
            "INSERT INTO requests ({REQUEST_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL, NULL, NULL, NULL, NULL)"
        ))
        .bind(r.id)
        .bind(&r.kind)
        .bind(r.user_id)
        .bind(r.policy_id)
        .bind(&r.serial)
        .bind(&r.replaces)
        .bind(&r.reason)
        .bind(r.batch_id)
        .bind(r.state.as_str())
        .bind(&r.requested_by)
        .bind(r.created_at)
        .execute(&mut *tx)
        .await?;
    }
    finish(tx, key, audit).await
}

pub async fn get_request(pool: &Pool<DB>, id: Uuid) -> StoreResult<crate::requests::Request> {
    let row = sqlx::query(&format!("SELECT {REQUEST_COLS} FROM requests WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| StoreError::not_found("request", id))?;
    request_row(&row)
}

pub async fn list_requests(
    pool: &Pool<DB>,
    state: Option<keyward_domain::RequestState>,
    batch: Option<Uuid>,
) -> StoreResult<Vec<crate::requests::Request>> {
    let rows = sqlx::query(&format!(
        "SELECT {REQUEST_COLS} FROM requests WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR batch_id = $2) \
         ORDER BY created_at DESC, id LIMIT 1000"
    ))
    .bind(state.map(|s| s.as_str()))
    .bind(batch)
    .fetch_all(pool)
    .await?;
    rows.iter().map(request_row).collect()
}

pub async fn move_request(
    pool: &Pool<DB>,
    key: &AuditKey,
    id: Uuid,
    from: &[keyward_domain::RequestState],
    to: keyward_domain::RequestState,
    decided_by: Option<&str>,
    note: Option<&str>,
    audit: &AuditDraft,
) -> StoreResult<()> {
    let mut tx = dialect::begin_write(pool).await?;
    let current: Option<String> = sqlx::query("SELECT state FROM requests WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.try_get("state"))
        .transpose()?;
    let Some(current) = current else {
        return Err(StoreError::not_found("request", id));
    };
    if !from.iter().any(|s| s.as_str() == current) {
        return Err(conflict(
            "request_moved",
            "state",
            &format!("the request is {current} now"),
        ));
    }
    sqlx::query(
        "UPDATE requests SET state = $1, decided_by = COALESCE($2, decided_by), decided_at = $3, note = COALESCE($4, note) \
         WHERE id = $5 AND state = $6",
    )
    .bind(to.as_str())
    .bind(decided_by)
    .bind(now())
    .bind(note)
    .bind(id)
    .bind(&current)
    .execute(&mut *tx)
    .await?;
    finish(tx, key, audit).await
}

pub async fn use_request(pool: &Pool<DB>, id: Uuid, session: Uuid) -> StoreResult<()> {
    let res = sqlx::query(
        "UPDATE requests SET state = 'used', session_id = $1, used_at = $2 WHERE id = $3 AND state = 'approved'",
    )
    .bind(session)
    .bind(now())
    .bind(id)
    .execute(pool)
    .await?;
    if res.rows_affected() == 0 {
        return Err(conflict(
            "request_used",
            "request",
            "the request is not approved, or was carried out already",
        ));
    }
    Ok(())
}

pub async fn release_request(pool: &Pool<DB>, id: Uuid, session: Uuid) -> StoreResult<()> {
    sqlx::query(
        "UPDATE requests SET state = 'approved', session_id = NULL, used_at = NULL WHERE id = $1 AND state = 'used' AND session_id = $2",
    )
    .bind(id)
    .bind(session)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn get_request_batch(
    pool: &Pool<DB>,
    id: Uuid,
) -> StoreResult<crate::requests::RequestBatch> {
    let r = sqlx::query("SELECT id, created_by, created_at, rows_count FROM request_batches WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| StoreError::not_found("request batch", id))?;
    Ok(crate::requests::RequestBatch {
        id: r.try_get("id")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        rows_count: r.try_get("rows_count")?,
    })
}
