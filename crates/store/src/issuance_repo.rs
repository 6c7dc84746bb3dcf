// Issuance sessions and credentials, included into each backend's repo module
// next to repo.rs (same helpers, same `$N` SQL for both backends).

const SESSION_COLS: &str = "id, device_id, user_id, policy_id, action, status, step, seq, sealed_state, error, created_by, created_at, updated_at";

fn session_from_row(r: &DbRow) -> StoreResult<crate::issuance::IssuanceSession> {
    Ok(crate::issuance::IssuanceSession {
        id: r.try_get("id")?,
        device_id: r.try_get("device_id")?,
        user_id: r.try_get("user_id")?,
        policy_id: r.try_get("policy_id")?,
        action: enum_column(r, "action")?,
        status: enum_column(r, "status")?,
        step: r.try_get("step")?,
        seq: r.try_get("seq")?,
        sealed_state: r.try_get("sealed_state")?,
        error: r.try_get("error")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// A text column holding one of a canonical enum's names.
fn enum_column<T: std::str::FromStr<Err = keyward_domain::ValidationError>>(
    r: &DbRow,
    column: &str,
) -> StoreResult<T> {
    let text: String = r.try_get(column)?;
    text.parse()
        .map_err(|e: keyward_domain::ValidationError| sqlx::Error::Decode(e.message.into()).into())
}

/// Applies `change` inside `tx` to the device as the caller read it
/// (`current`). Every change of a device row moves its version, so the
/// update's version check proves the row is still `current`: no read of it
/// inside the transaction (a round trip while holding the write lock).
/// A device's move inside `tx`, from `current` as the caller read it (the
/// version check in the UPDATE proves it current), with its history row
/// and what it does to the device's credentials.
/// What must follow (another device terminated, a temporary device's end
/// scheduled) is written with it: `replacement_follow_ups`.
async fn device_change_tx(
    tx: &mut Tx,
    current: &Device,
    change: &StateChange,
    actor: &str,
) -> StoreResult<(Device, crate::lifecycle::EffectsDone)> {
    let (next, mut done) = move_device_tx(tx, current, change, actor).await?;
    let more = replacement_follow_ups(tx, current, &next, actor).await?;
    done.add(&more);
    Ok((next, done))
}

/// The move itself and its effects on the device's own credentials.
async fn move_device_tx(
    tx: &mut Tx,
    current: &Device,
    change: &StateChange,
    actor: &str,
) -> StoreResult<(Device, crate::lifecycle::EffectsDone)> {
    let (id, expected_version) = (current.id, current.version);
    let mut next = current.apply(change)?;
    next.version = expected_version + 1;
    let at = now();
    let res = write_device_row(tx, &next, expected_version, at)
    .await
    .map_err(|e| {
        if is_foreign_key_violation(&e) {
            StoreError::Validation(ValidationError::new(
                "reference_not_found",
                "assigned_user",
                "the user or device policy does not exist",
            ))
        } else {
            e.into()
        }
    })?;
    if res.rows_affected() == 0 {
        return Err(conflict(
            "version_conflict",
            "version",
            format!("device {} was changed by someone else", current.serial),
        ));
    }
    insert_history(tx, id, actor, Some(current), &next, change.note.as_deref()).await?;
    let effects = keyward_domain::lifecycle::effects(current.state, next.state, next.reason);
    let done = apply_effects(tx, &next, &effects, at).await?;
    Ok((next, done))
}

/// Writes every changeable column of `next` if the row is still at
/// `expected_version`.
async fn write_device_row(
    tx: &mut Tx,
    next: &Device,
    expected_version: i64,
    at: OffsetDateTime,
) -> Result<<DB as sqlx::Database>::QueryResult, sqlx::Error> {
    let r = next.replacement;
    sqlx::query(
        "UPDATE devices SET state = $1, reason = $2, assigned_user = $3, device_policy = $4, version = $5, updated_at = $6, \
         suspended = $7, passkey_reregistration = $8, replaces = $9, replace_reason = $10, temporary_until = $11 \
         WHERE id = $12 AND version = $13",
    )
    .bind(next.state.as_str())
    .bind(next.reason.map(|r| r.as_str()))
    .bind(next.assigned_user)
    .bind(next.device_policy)
    .bind(next.version)
    .bind(at)
    .bind(next.suspended)
    .bind(next.passkey_reregistration)
    .bind(r.map(|r| r.original))
    .bind(r.map(|r| r.reason.as_str()))
    .bind(r.and_then(|r| r.until))
    .bind(next.id)
    .bind(expected_version)
    .execute(&mut **tx)
    .await
}

/// Inserts a session row inside `tx`; a second active session for the same
/// device breaks the one-active-session index: `device_busy`.
async fn insert_session(
    tx: &mut Tx,
    session: &crate::issuance::IssuanceSession,
    busy: &str,
) -> StoreResult<()> {
    sqlx::query(&format!(
        "INSERT INTO issuance_sessions ({SESSION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    ))
    .bind(session.id)
    .bind(session.device_id)
    .bind(session.user_id)
    .bind(session.policy_id)
    .bind(session.action.as_str())
    .bind(session.status.as_str())
    .bind(&session.step)
    .bind(session.seq)
    .bind(&session.sealed_state)
    .bind(&session.error)
    .bind(&session.created_by)
    .bind(session.created_at)
    .bind(session.updated_at)
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            conflict("device_busy", "serial", busy)
        } else {
            e.into()
        }
    })?;
    Ok(())
}

/// Starts a session: the device (as read, at its version) changes state and
/// the session row is written, in one transaction. A device changed since it
/// was read is a `version_conflict`; one with an active session already is a
/// conflict (`device_busy`).
/// A replacement starts with the original's incident declared (unless it
/// was already) and the new device marked as its replacement.
pub async fn start_issuance(
    pool: &Pool<DB>,
    key: &AuditKey,
    session: &crate::issuance::IssuanceSession,
    device: &Device,
    change: &StateChange,
    replacing: Option<&crate::issuance::Replacing>,
    audit: &AuditDraft,
) -> StoreResult<(Device, crate::lifecycle::EffectsDone)> {
    if device.id != session.device_id {
        return Err(StoreError::Validation(ValidationError::new(
            "device_mismatch",
            "device",
            "the session names another device",
        )));
    }
    let mut tx = dialect::begin_write(pool).await?;
    let (mut device, mut done) = device_change_tx(&mut tx, device, change, &audit.actor).await?;
    if let Some(r) = replacing {
        if let Some(incident) = &r.incident {
            let (_, d) = device_change_tx(&mut tx, &r.original, incident, &audit.actor).await?;
            done.add(&d);
        }
        sqlx::query(
            "UPDATE devices SET replaces = $1, replace_reason = $2, temporary_until = $3 WHERE id = $4",
        )
        .bind(r.replacement.original)
        .bind(r.replacement.reason.as_str())
        .bind(r.replacement.until)
        .bind(device.id)
        .execute(&mut *tx)
        .await?;
        device.replacement = Some(r.replacement);
    }
    insert_session(&mut tx, session, "the device is in another active issuance session").await?;
    finish(tx, key, audit).await?;
    Ok((device, done))
}

/// Opens a session that changes no device state when it starts (Recycle:
/// the device keeps its state until the wipe is done). The one-active-session
/// rule holds as for [`start_issuance`] (`device_busy`).
pub async fn open_device_session(
    pool: &Pool<DB>,
    key: &AuditKey,
    session: &crate::issuance::IssuanceSession,
    audit: &AuditDraft,
) -> StoreResult<()> {
    let mut tx = dialect::begin_write(pool).await?;
    insert_session(&mut tx, session, "the device is in another active session").await?;
    finish(tx, key, audit).await
}

/// Revokes every certificate and passkey of the device still live (Recycle);
/// returns how many.
pub async fn revoke_device_credentials(
    pool: &Pool<DB>,
    device_id: Uuid,
    at: OffsetDateTime,
) -> StoreResult<u64> {
    let res = sqlx::query(
        "UPDATE credentials SET revoked_at = $1 WHERE device_id = $2 AND revoked_at IS NULL",
    )
    .bind(at)
    .bind(device_id)
    .execute(pool)
    .await?;
    Ok(res.rows_affected())
}

/// One credential by id.
pub async fn get_credential(pool: &Pool<DB>, id: Uuid) -> StoreResult<crate::issuance::Credential> {
    let row = sqlx::query(
        "SELECT id, device_id, session_id, kind, slot, serial, not_after, der, created_at, revoked_at, revocation_reason, attested \
         FROM credentials WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| StoreError::not_found("credential", id))?;
    credential_from_row(&row)
}

/// The device's most recent session, if it ever had one.
pub async fn latest_device_session(
    pool: &Pool<DB>,
    device_id: Uuid,
) -> StoreResult<Option<crate::issuance::IssuanceSession>> {
    sqlx::query(&format!(
        "SELECT {SESSION_COLS} FROM issuance_sessions WHERE device_id = $1 ORDER BY created_at DESC LIMIT 1"
    ))
    .bind(device_id)
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(session_from_row)
    .transpose()
}

pub async fn get_issuance(
    pool: &Pool<DB>,
    id: Uuid,
) -> StoreResult<crate::issuance::IssuanceSession> {
    match sqlx::query(&format!(
        "SELECT {SESSION_COLS} FROM issuance_sessions WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?
    {
        Some(r) => session_from_row(&r),
        None => Err(StoreError::not_found("issuance session", id)),
    }
}

/// A session with its user, policy and device, read in one statement (each
/// relay needs all four; one round trip instead of four).
pub async fn get_issuance_context(
    pool: &Pool<DB>,
    id: Uuid,
) -> StoreResult<crate::issuance::IssuanceContext> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT {}, {}, {}, {} FROM issuance_sessions s \
             LEFT JOIN users u ON u.id = s.user_id \
             LEFT JOIN device_policies p ON p.id = s.policy_id \
             LEFT JOIN devices d ON d.id = s.device_id \
             WHERE s.id = $1",
            aliased("s", SESSION_COLS, ""),
            aliased("u", USER_COLS, "u_"),
            aliased("p", "id, document", "p_"),
            aliased("d", DEVICE_COLS, "d_"),
        )
    });
    let Some(r) = sqlx::query(&SQL).bind(id).fetch_optional(pool).await? else {
        return Err(StoreError::not_found("issuance session", id));
    };
    let session = session_from_row(&r)?;
    // A LEFT JOIN without a match gives NULL ids: the same not-found as a
    // read of its own would.
    let found = |prefix: &str| -> StoreResult<bool> {
        Ok(r.try_get::<Option<Uuid>, _>(col(prefix, "id").as_ref())?.is_some())
    };
    Ok(crate::issuance::IssuanceContext {
        user: match found("u_")? {
            true => user_from_row_as(&r, "u_"),
            false => Err(StoreError::not_found("user", session.user_id)),
        },
        policy: match found("p_")? {
            true => policy_from_row_as(&r, "p_"),
            false => Err(StoreError::not_found("device_policy", session.policy_id)),
        },
        device: match found("d_")? {
            true => device_from_row_as(&r, "d_"),
            false => Err(StoreError::not_found("device", session.device_id)),
        },
        session,
    })
}

/// Moves a session on, if it is still at `expected_seq` (a replayed or
/// concurrent step loses with `sequence_mismatch`); optionally changes the
/// device and records credentials, all in one transaction.
pub async fn advance_issuance(
    pool: &Pool<DB>,
    key: &AuditKey,
    id: Uuid,
    expected_seq: i64,
    update: &crate::issuance::IssuanceUpdate,
    device_change: Option<(&Device, &StateChange)>,
    credentials: &[crate::issuance::Credential],
    audits: &[&AuditDraft],
) -> StoreResult<crate::lifecycle::EffectsDone> {
    let Some((last, earlier)) = audits.split_last() else {
        return Err(StoreError::Validation(ValidationError::new(
            "audit_missing",
            "audit",
            "a session moves with at least one audit record",
        )));
    };
    let mut tx = dialect::begin_write(pool).await?;
    let res = sqlx::query(
        "UPDATE issuance_sessions SET status = $1, step = $2, seq = $3, sealed_state = $4, error = $5, updated_at = $6 \
         WHERE id = $7 AND seq = $8",
    )
    .bind(update.status.as_str())
    .bind(&update.step)
    .bind(update.seq)
    .bind(&update.sealed_state)
    .bind(&update.error)
    .bind(now())
    .bind(id)
    .bind(expected_seq)
    .execute(&mut *tx)
    .await?;
    if res.rows_affected() == 0 {
        return Err(conflict(
            "sequence_mismatch",
            "seq",
            "the session moved on: fetch the current batch",
        ));
    }
    // A FIDO reset erased the passkeys on record before the new ones are.
    if update.passkeys_erased || update.passkey_reregistration.is_some() {
        let row = sqlx::query(
            "SELECT d.id, d.serial FROM devices d JOIN issuance_sessions s ON s.device_id = d.id WHERE s.id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let device: Uuid = row.try_get("id")?;
        let serial: String = row.try_get("serial")?;
        if update.passkeys_erased {
            delete_passkeys_tx(&mut tx, device, &serial, now()).await?;
        }
        if let Some(flag) = update.passkey_reregistration {
            sqlx::query(
                "UPDATE devices SET passkey_reregistration = $1, version = version + 1, updated_at = $2 WHERE id = $3",
            )
            .bind(flag)
            .bind(now())
            .bind(device)
            .execute(&mut *tx)
            .await?;
        }
    }
    // The credentials first: a device's move (a Recycle's) then acts on
    // every credential it has.
    if !credentials.is_empty() {
        insert_credentials(&mut tx, credentials).await?;
    }
    if let Some(outcome) = &update.update {
        apply_update_outcome(&mut tx, id, outcome, now()).await?;
    }
    if update.pin_checked {
        sqlx::query(
            "UPDATE devices SET pin_check_due = $1 WHERE id = (SELECT device_id FROM issuance_sessions WHERE id = $2)",
        )
        .bind(false)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    let mut done = crate::lifecycle::EffectsDone::default();
    if let Some((device, change)) = device_change {
        done = device_change_tx(&mut tx, device, change, &last.actor).await?.1;
    }
    if credentials.iter().any(|c| c.revoked_at.is_some()) {
        // A failed attempt's certificates, revoked as they are recorded.
        done.revoked += 1;
    }
    // A passkey recorded revoked (registered by a failed or abandoned
    // attempt) is deleted at its service by a job written here.
    for c in credentials
        .iter()
        .filter(|c| c.kind == "passkey" && c.revoked_at.is_some())
    {
        let serial: String = sqlx::query("SELECT serial FROM devices WHERE id = $1")
            .bind(c.device_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("serial")?;
        let job = crate::lifecycle::NewJob {
            kind: crate::lifecycle::JOB_DELETE_PASSKEY.into(),
            payload: serde_json::json!({ "credential": c.id }).to_string(),
            target: format!("device:{serial}"),
            not_before: now(),
        };
        insert_job(&mut tx, &job).await?;
        done.jobs += 1;
    }
    for audit in earlier {
        append_audit_tx(&mut tx, key, audit).await?;
    }
    finish(tx, key, last).await?;
    Ok(done)
}

/// The credentials as one multi-row INSERT (one round trip while the
/// transaction holds the write lock).
async fn insert_credentials(
    tx: &mut Tx,
    credentials: &[crate::issuance::Credential],
) -> StoreResult<()> {
    for chunk in credentials.chunks(dialect::BULK_ROWS) {
        let sql = format!(
            "INSERT INTO credentials (id, device_id, session_id, kind, slot, serial, not_after, der, created_at, revoked_at, attested) VALUES {}",
            values_list(chunk.len(), 11)
        );
        let mut q = sqlx::query(&sql);
        for c in chunk {
            q = q
                .bind(c.id)
                .bind(c.device_id)
                .bind(c.session_id)
                .bind(&c.kind)
                .bind(&c.slot)
                .bind(&c.serial)
                .bind(c.not_after)
                .bind(&c.der)
                .bind(c.created_at)
                .bind(c.revoked_at)
                .bind(c.attested);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

pub async fn device_credentials(
    pool: &Pool<DB>,
    device_id: Uuid,
) -> StoreResult<Vec<crate::issuance::Credential>> {
    let rows = sqlx::query(
        "SELECT id, device_id, session_id, kind, slot, serial, not_after, der, created_at, revoked_at, revocation_reason, attested \
         FROM credentials WHERE device_id = $1 ORDER BY created_at, serial",
    )
    .bind(device_id)
    .fetch_all(pool)
    .await?;
    rows.iter().map(credential_from_row).collect()
}

fn credential_from_row(r: &DbRow) -> StoreResult<crate::issuance::Credential> {
    Ok(crate::issuance::Credential {
        id: r.try_get("id")?,
        device_id: r.try_get("device_id")?,
        session_id: r.try_get("session_id")?,
        kind: r.try_get("kind")?,
        slot: r.try_get("slot")?,
        serial: r.try_get("serial")?,
        not_after: r.try_get("not_after")?,
        der: r.try_get("der")?,
        created_at: r.try_get("created_at")?,
        revoked_at: r.try_get("revoked_at")?,
        revocation_reason: r
            .try_get::<Option<i64>, _>("revocation_reason")?
            .and_then(|c| u8::try_from(c).ok())
            .and_then(keyward_domain::RevocationReason::from_code),
        attested: r.try_get("attested")?,
    })
}

/// Serial numbers (hex) and revocation times of every revoked certificate,
/// for the CRL.
pub async fn revoked_certificates(pool: &Pool<DB>) -> StoreResult<Vec<(String, OffsetDateTime)>> {
    let rows = sqlx::query(
        "SELECT serial, revoked_at FROM credentials WHERE kind = 'certificate' AND revoked_at IS NOT NULL ORDER BY revoked_at, serial",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("serial")?, r.try_get("revoked_at")?)))
        .collect()
}

/// Sessions still `running` or `failed` whose last activity is older than
/// `before` (abandoned: the server ends them).
pub async fn stale_issuances(
    pool: &Pool<DB>,
    before: OffsetDateTime,
) -> StoreResult<Vec<crate::issuance::IssuanceSession>> {
    let rows = sqlx::query(&format!(
        "SELECT {SESSION_COLS} FROM issuance_sessions WHERE status IN ('running', 'failed') AND updated_at < $1 ORDER BY updated_at LIMIT 100"
    ))
    .bind(before)
    .fetch_all(pool)
    .await?;
    rows.iter().map(session_from_row).collect()
}
