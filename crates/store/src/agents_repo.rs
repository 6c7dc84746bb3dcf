// Workstation agents, included into each backend's repo module next to
// repo.rs and issuance_repo.rs (same helpers, same `$N` SQL for both).

const AGENT_COLS: &str = "id, name, status, owner_kind, owner_id, owner_login, code_hmac, poll_hmac, credential_hmac, code_expires_at, created_at, approved_at, approved_by, revoked_at, last_seen_at";

fn agent_from_row(r: &DbRow) -> StoreResult<crate::agents::Agent> {
    Ok(crate::agents::Agent {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        status: r.try_get("status")?,
        owner_kind: r.try_get("owner_kind")?,
        owner_id: r.try_get("owner_id")?,
        owner_login: r.try_get("owner_login")?,
        code_hmac: r.try_get("code_hmac")?,
        poll_hmac: r.try_get("poll_hmac")?,
        credential_hmac: r.try_get("credential_hmac")?,
        code_expires_at: r.try_get("code_expires_at")?,
        created_at: r.try_get("created_at")?,
        approved_at: r.try_get("approved_at")?,
        approved_by: r.try_get("approved_by")?,
        revoked_at: r.try_get("revoked_at")?,
        last_seen_at: r.try_get("last_seen_at")?,
    })
}

pub async fn create_agent(
    pool: &Pool<DB>,
    key: &AuditKey,
    a: &crate::agents::Agent,
    audit: &AuditDraft,
) -> StoreResult<()> {
    let mut tx = dialect::begin_write(pool).await?;
    sqlx::query(&format!(
        "INSERT INTO agents ({AGENT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
    ))
    .bind(a.id)
    .bind(&a.name)
    .bind(&a.status)
    .bind(&a.owner_kind)
    .bind(a.owner_id)
    .bind(&a.owner_login)
    .bind(&a.code_hmac)
    .bind(&a.poll_hmac)
    .bind(&a.credential_hmac)
    .bind(a.code_expires_at)
    .bind(a.created_at)
    .bind(a.approved_at)
    .bind(&a.approved_by)
    .bind(a.revoked_at)
    .bind(a.last_seen_at)
    .execute(&mut *tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            conflict("duplicate_pairing_code", "code", "this pairing code is in use; ask again")
        } else {
            e.into()
        }
    })?;
    finish(tx, key, audit).await
}

pub async fn approve_agent(
    pool: &Pool<DB>,
    key: &AuditKey,
    code_hmac: &[u8],
    owner: &crate::agents::AgentOwner,
    approved_by: &str,
    audit: &AuditDraft,
) -> StoreResult<crate::agents::Agent> {
    let mut tx = dialect::begin_write(pool).await?;
    let row = sqlx::query(&format!(
        "SELECT {AGENT_COLS} FROM agents WHERE code_hmac = $1 AND status = 'pending'"
    ))
    .bind(code_hmac)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(StoreError::not_found("pairing code", "(hidden)"));
    };
    let mut agent = agent_from_row(&row)?;
    let at = now();
    if agent.code_expires_at <= at {
        return Err(conflict(
            "pairing_code_expired",
            "code",
            "this pairing code has expired: restart `keyward agent` for a new one",
        ));
    }
    let res = sqlx::query(
        "UPDATE agents SET status = 'paired', code_hmac = NULL, owner_kind = $2, owner_id = $3, owner_login = $4, approved_at = $5, approved_by = $6 \
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(agent.id)
    .bind(&owner.kind)
    .bind(owner.id)
    .bind(&owner.login)
    .bind(at)
    .bind(approved_by)
    .execute(&mut *tx)
    .await?;
    if res.rows_affected() == 0 {
        return Err(StoreError::not_found("pairing code", "(hidden)"));
    }
    agent.status = "paired".into();
    agent.code_hmac = None;
    agent.owner_kind = Some(owner.kind.clone());
    agent.owner_id = Some(owner.id);
    agent.owner_login = Some(owner.login.clone());
    agent.approved_at = Some(at);
    agent.approved_by = Some(approved_by.to_string());
    let mut audit = audit.clone();
    audit.target = format!("agent:{}", agent.id);
    finish(tx, key, &audit).await?;
    Ok(agent)
}

pub async fn find_agent_by_poll(
    pool: &Pool<DB>,
    poll_hmac: &[u8],
) -> StoreResult<Option<crate::agents::Agent>> {
    sqlx::query(&format!(
        "SELECT {AGENT_COLS} FROM agents WHERE poll_hmac = $1"
    ))
    .bind(poll_hmac)
    .fetch_optional(pool)
    .await?
    .map(|r| agent_from_row(&r))
    .transpose()
}

pub async fn set_agent_credential(
    pool: &Pool<DB>,
    key: &AuditKey,
    id: Uuid,
    credential_hmac: &[u8],
    audit: &AuditDraft,
) -> StoreResult<bool> {
    let mut tx = dialect::begin_write(pool).await?;
    let res = sqlx::query(
        "UPDATE agents SET credential_hmac = $2, poll_hmac = NULL, last_seen_at = $3 \
         WHERE id = $1 AND status = 'paired' AND credential_hmac IS NULL",
    )
    .bind(id)
    .bind(credential_hmac)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    if res.rows_affected() == 0 {
        return Ok(false);
    }
    finish(tx, key, audit).await?;
    Ok(true)
}

pub async fn find_agent_by_credential(
    pool: &Pool<DB>,
    credential_hmac: &[u8],
) -> StoreResult<Option<crate::agents::Agent>> {
    sqlx::query(&format!(
        "SELECT {AGENT_COLS} FROM agents WHERE credential_hmac = $1"
    ))
    .bind(credential_hmac)
    .fetch_optional(pool)
    .await?
    .map(|r| agent_from_row(&r))
    .transpose()
}

pub async fn get_agent(pool: &Pool<DB>, id: Uuid) -> StoreResult<crate::agents::Agent> {
    match sqlx::query(&format!("SELECT {AGENT_COLS} FROM agents WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?
    {
        Some(r) => agent_from_row(&r),
        None => Err(StoreError::not_found("agent", id)),
    }
}

pub async fn list_agents(pool: &Pool<DB>) -> StoreResult<Vec<crate::agents::Agent>> {
    sqlx::query(&format!(
        "SELECT {AGENT_COLS} FROM agents ORDER BY created_at, id"
    ))
    .fetch_all(pool)
    .await?
    .iter()
    .map(agent_from_row)
    .collect()
}

pub async fn revoke_agent(
    pool: &Pool<DB>,
    key: &AuditKey,
    id: Uuid,
    audit: &AuditDraft,
) -> StoreResult<()> {
    let mut tx = dialect::begin_write(pool).await?;
    let res = sqlx::query(
        "UPDATE agents SET status = 'revoked', revoked_at = $2, code_hmac = NULL, poll_hmac = NULL \
         WHERE id = $1 AND status <> 'revoked'",
    )
    .bind(id)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    if res.rows_affected() == 0 {
        return Err(StoreError::not_found("agent", id));
    }
    sqlx::query("DELETE FROM agent_devices WHERE agent_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    finish(tx, key, audit).await
}

pub async fn touch_agent(pool: &Pool<DB>, id: Uuid, at: OffsetDateTime) -> StoreResult<()> {
    sqlx::query("UPDATE agents SET last_seen_at = $2 WHERE id = $1")
        .bind(id)
        .bind(at)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn replace_agent_devices(
    pool: &Pool<DB>,
    agent_id: Uuid,
    devices: &[crate::agents::AgentDevice],
) -> StoreResult<()> {
    let mut tx = dialect::begin_write(pool).await?;
    sqlx::query("DELETE FROM agent_devices WHERE agent_id = $1")
        .bind(agent_id)
        .execute(&mut *tx)
        .await?;
    for d in devices {
        sqlx::query(
            "INSERT INTO agent_devices (agent_id, serial, info, updated_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(agent_id)
        .bind(&d.serial)
        .bind(&d.info)
        .bind(d.updated_at)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub async fn list_agent_devices(pool: &Pool<DB>) -> StoreResult<Vec<crate::agents::AgentDevice>> {
    sqlx::query(
        "SELECT d.agent_id, d.serial, d.info, d.updated_at FROM agent_devices d \
         JOIN agents a ON a.id = d.agent_id WHERE a.status = 'paired' ORDER BY d.agent_id, d.serial",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(crate::agents::AgentDevice {
            agent_id: r.try_get("agent_id")?,
            serial: r.try_get("serial")?,
            info: r.try_get("info")?,
            updated_at: r.try_get("updated_at")?,
        })
    })
    .collect()
}

pub async fn bind_agent_session(
    pool: &Pool<DB>,
    session_id: Uuid,
    agent_id: Uuid,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO agent_sessions (session_id, agent_id, created_at) VALUES ($1, $2, $3)",
    )
    .bind(session_id)
    .bind(agent_id)
    .bind(now())
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn agent_of_session(pool: &Pool<DB>, session_id: Uuid) -> StoreResult<Option<Uuid>> {
    Ok(
        sqlx::query("SELECT agent_id FROM agent_sessions WHERE session_id = $1")
            .bind(session_id)
            .fetch_optional(pool)
            .await?
            .map(|r| r.try_get("agent_id"))
            .transpose()?,
    )
}

pub async fn agent_running_sessions(
    pool: &Pool<DB>,
    agent_id: Uuid,
) -> StoreResult<Vec<crate::issuance::IssuanceSession>> {
    sqlx::query(&format!(
        "SELECT {SESSION_COLS} FROM issuance_sessions WHERE status = 'running' \
         AND id IN (SELECT session_id FROM agent_sessions WHERE agent_id = $1) ORDER BY created_at, id"
    ))
    .bind(agent_id)
    .fetch_all(pool)
    .await?
    .iter()
    .map(session_from_row)
    .collect()
}

pub async fn agent_reports_device(
    pool: &Pool<DB>,
    agent_id: Uuid,
    serial: &str,
) -> StoreResult<bool> {
    Ok(
        sqlx::query("SELECT 1 AS one FROM agent_devices WHERE agent_id = $1 AND serial = $2")
            .bind(agent_id)
            .bind(serial)
            .fetch_optional(pool)
            .await?
            .is_some(),
    )
}

/// Pending pairings whose code is still valid at `now`.
pub async fn count_pending_pairings(pool: &Pool<DB>, now: OffsetDateTime) -> StoreResult<u64> {
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM agents WHERE status = 'pending' AND code_expires_at > $1")
        .bind(now)
        .fetch_one(pool)
        .await?
        .try_get("n")?;
    Ok(n.max(0) as u64)
}

/// Deletes pending pairings whose code expired before `before` (nobody
/// approved them: they never had a credential, devices or sessions).
pub async fn purge_expired_pairings(pool: &Pool<DB>, before: OffsetDateTime) -> StoreResult<u64> {
    Ok(sqlx::query("DELETE FROM agents WHERE status = 'pending' AND code_expires_at < $1")
        .bind(before)
        .execute(pool)
        .await?
        .rows_affected())
}
