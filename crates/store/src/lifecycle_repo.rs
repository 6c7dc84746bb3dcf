// Repository bodies of the device lifecycle (included into `sqlite_repo` and
// `pg_repo` like `repo.rs`): what a device's move does to its credentials,
// in the move's own transaction; the durable jobs that carry out what needs
// another service (a passkey deleted at Entra ID); the issuing CA's CRL
// numbers and the revoked certificates a CRL or OCSP answer lists.

use keyward_domain::{CertificateAction, CredentialEffects, RevocationReason};

/// Carries out `effects` of the move of `device` (inside its transaction):
/// certificates revoked, held or released; passkeys marked revoked and a
/// `delete_passkey` job written for each.
async fn apply_effects(
    tx: &mut Tx,
    device: &Device,
    effects: &CredentialEffects,
    at: OffsetDateTime,
) -> StoreResult<crate::lifecycle::EffectsDone> {
    let mut done = crate::lifecycle::EffectsDone::default();
    let id = device.id;
    let hold = i64::from(RevocationReason::CertificateHold.code());
    match effects.certificates {
        None => {}
        Some(CertificateAction::Revoke {
            reason,
            only_unexpired,
        }) => {
            // Held ones get their final reason too.
            let unexpired = if only_unexpired {
                " AND (not_after IS NULL OR not_after > $1)"
            } else {
                ""
            };
            let sql = format!(
                "UPDATE credentials SET revoked_at = $1, revocation_reason = $2 \
                 WHERE device_id = $3 AND kind = 'certificate' AND (revoked_at IS NULL OR revocation_reason = $4){unexpired}"
            );
            done.revoked = sqlx::query(&sql)
                .bind(at)
                .bind(i64::from(reason.code()))
                .bind(id)
                .bind(hold)
                .execute(&mut **tx)
                .await?
                .rows_affected();
        }
        Some(CertificateAction::Hold) => {
            done.held = sqlx::query(
                "UPDATE credentials SET revoked_at = $1, revocation_reason = $2 \
                 WHERE device_id = $3 AND kind = 'certificate' AND revoked_at IS NULL",
            )
            .bind(at)
            .bind(hold)
            .bind(id)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        }
        Some(CertificateAction::Release) => {
            done.released = sqlx::query(
                "UPDATE credentials SET revoked_at = NULL, revocation_reason = NULL \
                 WHERE device_id = $1 AND kind = 'certificate' AND revocation_reason = $2",
            )
            .bind(id)
            .bind(hold)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        }
    }
    if effects.delete_passkeys {
        done.jobs += delete_passkeys_tx(tx, id, &device.serial.to_string(), at).await?;
    }
    Ok(done)
}

/// The passkeys on record for device `id` marked revoked at `at`, a
/// `delete_passkey` job written for each (inside the caller's transaction):
/// answers how many.
async fn delete_passkeys_tx(
    tx: &mut Tx,
    id: Uuid,
    serial: &str,
    at: OffsetDateTime,
) -> StoreResult<u64> {
    let rows = sqlx::query(
        "SELECT id FROM credentials WHERE device_id = $1 AND kind = 'passkey' AND revoked_at IS NULL",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    for r in &rows {
        let credential: Uuid = r.try_get("id")?;
        sqlx::query("UPDATE credentials SET revoked_at = $1 WHERE id = $2")
            .bind(at)
            .bind(credential)
            .execute(&mut **tx)
            .await?;
        let job = crate::lifecycle::NewJob {
            kind: crate::lifecycle::JOB_DELETE_PASSKEY.into(),
            payload: serde_json::json!({ "credential": credential }).to_string(),
            target: format!("device:{serial}"),
            not_before: at,
        };
        insert_job(tx, &job).await?;
    }
    Ok(rows.len() as u64)
}

async fn insert_job(tx: &mut Tx, job: &crate::lifecycle::NewJob) -> StoreResult<Uuid> {
    let id = Uuid::new_v4();
    let at = now();
    sqlx::query(
        "INSERT INTO jobs (id, kind, payload, target, state, attempts, next_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, 'pending', 0, $5, $6, $6)",
    )
    .bind(id)
    .bind(&job.kind)
    .bind(&job.payload)
    .bind(&job.target)
    .bind(job.not_before)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

/// A job written on its own (with its audit record): work scheduled by
/// something other than a device's move.
pub async fn enqueue_job(
    pool: &Pool<DB>,
    key: &AuditKey,
    job: &crate::lifecycle::NewJob,
    audit: &AuditDraft,
) -> StoreResult<Uuid> {
    let mut tx = dialect::begin_write(pool).await?;
    let id = insert_job(&mut tx, job).await?;
    finish(tx, key, audit).await?;
    Ok(id)
}

const JOB_COLS: &str =
    "id, kind, payload, target, state, attempts, next_at, lease_until, leased_by, last_error, created_at, updated_at";

fn job_from_row(r: &DbRow) -> StoreResult<crate::lifecycle::Job> {
    let state: String = r.try_get("state")?;
    Ok(crate::lifecycle::Job {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        payload: r.try_get("payload")?,
        target: r.try_get("target")?,
        state: state
            .parse()
            .map_err(|_| StoreError::corrupt("job", format!("state {state}")))?,
        attempts: r.try_get::<i64, _>("attempts")? as u32,
        next_at: r.try_get("next_at")?,
        lease_until: r.try_get("lease_until")?,
        leased_by: r.try_get("leased_by")?,
        last_error: r.try_get("last_error")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// Claims the oldest due job no live lease holds, for `lease` from now: on
/// PostgreSQL with `FOR UPDATE SKIP LOCKED` (workers on several nodes take
/// different jobs), on SQLite on the file's one writer.
pub async fn claim_job(
    pool: &Pool<DB>,
    worker: &str,
    lease: time::Duration,
) -> StoreResult<Option<crate::lifecycle::Job>> {
    let mut tx = dialect::begin_write(pool).await?;
    let at = now();
    let sql = format!(
        "SELECT {JOB_COLS} FROM jobs WHERE state = 'pending' AND next_at <= $1 \
         AND (lease_until IS NULL OR lease_until < $1) ORDER BY next_at LIMIT 1{}",
        dialect::SKIP_LOCKED
    );
    let Some(row) = sqlx::query(&sql).bind(at).fetch_optional(&mut *tx).await? else {
        tx.commit().await?;
        return Ok(None);
    };
    let mut job = job_from_row(&row)?;
    job.lease_until = Some(at + lease);
    job.leased_by = Some(worker.to_string());
    job.attempts += 1;
    sqlx::query(
        "UPDATE jobs SET lease_until = $1, leased_by = $2, attempts = $3, updated_at = $4 WHERE id = $5",
    )
    .bind(job.lease_until)
    .bind(worker)
    .bind(i64::from(job.attempts))
    .bind(at)
    .bind(job.id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(job))
}

/// A claimed job is done (`error` None) or failed and is tried again at
/// `retry_at` (its lease ends). Only the worker holding the lease may.
pub async fn finish_job(
    pool: &Pool<DB>,
    id: Uuid,
    worker: &str,
    error: Option<&str>,
    retry_at: OffsetDateTime,
) -> StoreResult<()> {
    let mut tx = dialect::begin_write(pool).await?;
    let sql = match error {
        None => "UPDATE jobs SET state = 'done', lease_until = NULL, last_error = NULL, updated_at = $1 \
                 WHERE id = $2 AND leased_by = $3 AND state = 'pending'",
        Some(_) => "UPDATE jobs SET next_at = $4, lease_until = NULL, last_error = $5, updated_at = $1 \
                    WHERE id = $2 AND leased_by = $3 AND state = 'pending'",
    };
    let mut q = sqlx::query(sql).bind(now()).bind(id).bind(worker);
    if let Some(e) = error {
        q = q.bind(retry_at).bind(e);
    }
    q.execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Jobs not done: pending (waiting, retrying) and closed by hand are listed
/// with `state`; `target` narrows to one device.
pub async fn list_jobs(
    pool: &Pool<DB>,
    state: Option<crate::lifecycle::JobState>,
    target: Option<&str>,
) -> StoreResult<Vec<crate::lifecycle::Job>> {
    let sql = format!(
        "SELECT {JOB_COLS} FROM jobs WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR target = $2) \
         ORDER BY created_at LIMIT 1000"
    );
    let rows = sqlx::query(&sql)
        .bind(state.map(|s| s.as_str()))
        .bind(target)
        .fetch_all(pool)
        .await?;
    rows.iter().map(job_from_row).collect()
}

pub async fn get_job(pool: &Pool<DB>, id: Uuid) -> StoreResult<crate::lifecycle::Job> {
    let sql = format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1");
    match sqlx::query(&sql).bind(id).fetch_optional(pool).await? {
        Some(r) => job_from_row(&r),
        None => Err(StoreError::not_found("job", id)),
    }
}

/// An administrator closes a pending job by hand (it will not run again),
/// with its audit record.
pub async fn close_job(
    pool: &Pool<DB>,
    key: &AuditKey,
    id: Uuid,
    audit: &AuditDraft,
) -> StoreResult<()> {
    let mut tx = dialect::begin_write(pool).await?;
    let res = sqlx::query(
        "UPDATE jobs SET state = 'closed', lease_until = NULL, updated_at = $1 WHERE id = $2 AND state = 'pending'",
    )
    .bind(now())
    .bind(id)
    .execute(&mut *tx)
    .await?;
    if res.rows_affected() == 0 {
        return Err(conflict(
            "job_not_pending",
            "id",
            "only a pending job can be closed (it is done, closed, or unknown)",
        ));
    }
    finish(tx, key, audit).await
}

/// The next CRL number of `issuer`: above the last one signed and at least
/// `floor` (numbers published before were seconds since the epoch).
pub async fn next_crl_number(pool: &Pool<DB>, issuer: &str, floor: i64) -> StoreResult<i64> {
    let mut tx = dialect::begin_write(pool).await?;
    let last: Option<i64> = sqlx::query(&format!(
        "SELECT number FROM crl_numbers WHERE issuer = $1{}",
        dialect::FOR_UPDATE
    ))
    .bind(issuer)
    .fetch_optional(&mut *tx)
    .await?
    .map(|r| r.try_get("number"))
    .transpose()?;
    let next = last.map(|n| n + 1).unwrap_or(0).max(floor);
    sqlx::query(
        "INSERT INTO crl_numbers (issuer, number) VALUES ($1, $2) \
         ON CONFLICT (issuer) DO UPDATE SET number = excluded.number",
    )
    .bind(issuer)
    .bind(next)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(next)
}

/// Every revoked or held certificate: serial (hex), time and reason
/// (`None`: revoked before reasons were stored, cessationOfOperation).
pub async fn revocations(pool: &Pool<DB>) -> StoreResult<Vec<crate::lifecycle::Revocation>> {
    let rows = sqlx::query(
        "SELECT serial, revoked_at, revocation_reason FROM credentials \
         WHERE kind = 'certificate' AND revoked_at IS NOT NULL ORDER BY revoked_at, serial",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let reason: Option<i64> = r.try_get("revocation_reason")?;
            Ok(crate::lifecycle::Revocation {
                serial: r.try_get("serial")?,
                at: r.try_get("revoked_at")?,
                reason: reason.and_then(|c| RevocationReason::from_code(c as u8)),
            })
        })
        .collect()
}

/// One certificate's revocation state, by serial (hex): `None` when no
/// certificate with that serial is on record.
pub async fn certificate_status(
    pool: &Pool<DB>,
    serial: &str,
) -> StoreResult<Option<Option<crate::lifecycle::Revocation>>> {
    let row = sqlx::query(
        "SELECT serial, revoked_at, revocation_reason FROM credentials WHERE kind = 'certificate' AND serial = $1",
    )
    .bind(serial)
    .fetch_optional(pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let at: Option<OffsetDateTime> = r.try_get("revoked_at")?;
    let reason: Option<i64> = r.try_get("revocation_reason")?;
    Ok(Some(at.map(|at| crate::lifecycle::Revocation {
        serial: serial.to_string(),
        at,
        reason: reason.and_then(|c| RevocationReason::from_code(c as u8)),
    })))
}

/// Every certificate on record with its device's serial (for reports over
/// what was issued).
pub async fn certificates_with_devices(
    pool: &Pool<DB>,
) -> StoreResult<Vec<(crate::issuance::Credential, Serial)>> {
    let rows = sqlx::query(
        "SELECT c.id, c.device_id, c.session_id, c.kind, c.slot, c.serial, c.not_after, c.der, c.created_at, c.revoked_at, c.revocation_reason, c.attested, d.serial AS device_serial \
         FROM credentials c JOIN devices d ON d.id = c.device_id WHERE c.kind = 'certificate' ORDER BY c.created_at",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let device: String = r.try_get("device_serial")?;
            Ok((
                credential_from_row(r)?,
                Serial(device.parse().map_err(|_| StoreError::corrupt("device", format!("serial {device}")))?),
            ))
        })
        .collect()
}

// ---------------------------------------------------------------- replacement

/// The devices matching `filter` (SQL on `devices`, one `$1` bound to `id`).
async fn devices_where(tx: &mut Tx, filter: &str, id: Uuid) -> StoreResult<Vec<Device>> {
    let sql = format!("SELECT {DEVICE_COLS} FROM devices WHERE {filter} ORDER BY serial");
    sqlx::query(&sql)
        .bind(id)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(device_from_row)
        .collect()
}

/// Ends `d` as part of another device's move (its own effects included).
async fn terminate_follower(
    tx: &mut Tx,
    d: &Device,
    actor: &str,
    note: String,
) -> StoreResult<crate::lifecycle::EffectsDone> {
    let change = StateChange {
        to: DeviceState::Terminated,
        reason: None,
        assigned_user: None,
        device_policy: None,
        note: Some(note),
    };
    Ok(move_device_tx(tx, d, &change, actor).await?.1)
}

/// Whether a session holds `d` (it cannot end under the session).
fn in_session(d: &Device) -> bool {
    matches!(
        (d.state, d.reason),
        (DeviceState::InProduction, _)
            | (
                DeviceState::Produced,
                Some(keyward_domain::StateReason::Failed)
            )
    )
}

/// What a device's move makes happen to the devices it replaces or that
/// replace it, in the same transaction:
/// - a permanent replacement just issued terminates the original and any
///   temporary device still out for it;
/// - a temporary replacement just issued gets its end scheduled (a job due
///   at `until`, which terminates it);
/// - an original found again (Restore) terminates its temporary devices; a
///   temporary device still in its issuance session holds the restore back.
async fn replacement_follow_ups(
    tx: &mut Tx,
    current: &Device,
    next: &Device,
    actor: &str,
) -> StoreResult<crate::lifecycle::EffectsDone> {
    let mut done = crate::lifecycle::EffectsDone::default();
    if next.state != DeviceState::Issued {
        return Ok(done);
    }
    let issued_now = matches!(current.state, DeviceState::InProduction | DeviceState::Produced);
    match (issued_now, current.state, next.replacement) {
        (true, _, Some(r)) if r.is_temporary() => {
            let job = crate::lifecycle::NewJob {
                kind: crate::lifecycle::JOB_EXPIRE_TEMPORARY.into(),
                payload: serde_json::json!({ "device": next.id }).to_string(),
                target: format!("device:{}", next.serial),
                not_before: r.until.unwrap_or_else(now),
            };
            insert_job(tx, &job).await?;
            done.jobs += 1;
        }
        (true, _, Some(r)) => {
            let mut ends = devices_where(tx, "id = $1", r.original).await?;
            ends.extend(
                devices_where(tx, "replaces = $1 AND temporary_until IS NOT NULL", r.original)
                    .await?
                    .into_iter()
                    .filter(|d| d.id != next.id),
            );
            for d in ends {
                if matches!(d.state, DeviceState::Issued | DeviceState::Invalid) {
                    let note = format!("replaced by device {}", next.serial);
                    done.add(&terminate_follower(tx, &d, actor, note).await?);
                }
            }
        }
        (false, DeviceState::Invalid, _) => {
            let temporaries =
                devices_where(tx, "replaces = $1 AND temporary_until IS NOT NULL", current.id)
                    .await?;
            for t in temporaries {
                if in_session(&t) {
                    return Err(conflict(
                        "temporary_in_session",
                        "serial",
                        format!(
                            "temporary device {} is still in its issuance session: finish or cancel it, then restore",
                            t.serial
                        ),
                    ));
                }
                if matches!(
                    t.state,
                    DeviceState::Issued | DeviceState::Invalid | DeviceState::Produced
                ) {
                    let note = format!("original device {} found", current.serial);
                    done.add(&terminate_follower(tx, &t, actor, note).await?);
                }
            }
        }
        _ => {}
    }
    Ok(done)
}

/// Suspends (`suspend`) or resumes the device as the caller read it at
/// `expected_version`: the mark, its history line, and the credentials'
/// hold (and on suspend the passkeys' deletion, flagging the device for a
/// passkey registered again) in one transaction.
pub async fn set_suspended(
    pool: &Pool<DB>,
    key: &AuditKey,
    id: Uuid,
    expected_version: i64,
    suspend: bool,
    note: Option<&str>,
    audit: &AuditDraft,
) -> StoreResult<(Device, crate::lifecycle::EffectsDone)> {
    let mut tx = dialect::begin_write(pool).await?;
    let current = devices_where(&mut tx, "id = $1", id)
        .await?
        .pop()
        .ok_or_else(|| StoreError::not_found("device", id))?;
    if current.version != expected_version {
        return Err(conflict(
            "version_conflict",
            "version",
            format!(
                "device {} was changed by someone else (version {}, expected {expected_version})",
                current.serial, current.version
            ),
        ));
    }
    let mut next = if suspend {
        current.suspend()?
    } else {
        current.resume()?
    };
    next.version = current.version + 1;
    let at = now();
    let effects = keyward_domain::lifecycle::suspension_effects(suspend);
    let done = apply_effects(&mut tx, &next, &effects, at).await?;
    if suspend && done.jobs > 0 {
        next.passkey_reregistration = true;
    }
    if write_device_row(&mut tx, &next, expected_version, at)
        .await?
        .rows_affected()
        == 0
    {
        return Err(conflict(
            "version_conflict",
            "version",
            format!("device {} was changed by someone else", current.serial),
        ));
    }
    let what = if suspend { "suspended" } else { "resumed" };
    let line = match note {
        Some(n) => format!("{what}: {n}"),
        None => what.to_string(),
    };
    insert_history(&mut tx, id, &audit.actor, Some(&current), &next, Some(&line)).await?;
    let audit = audit
        .clone()
        .detail("serial", current.serial.to_string())
        .detail("suspended", suspend)
        .detail("version", next.version)
        .detail("certificates_held", done.held)
        .detail("certificates_released", done.released)
        .detail("passkey_deletions", done.jobs);
    finish(tx, key, &audit).await?;
    Ok((next, done))
}

/// Ends a temporary device whose time is up at `at` (the job runner's
/// `expire_temporary_device`): `None` when there is nothing to end (it
/// ended already, or is no longer a temporary device). A device not due
/// yet, or still in a session, is a conflict (the job is tried again).
pub async fn expire_temporary_device(
    pool: &Pool<DB>,
    key: &AuditKey,
    id: Uuid,
    at: OffsetDateTime,
    audit: &AuditDraft,
) -> StoreResult<(Option<Device>, crate::lifecycle::EffectsDone)> {
    let mut tx = dialect::begin_write(pool).await?;
    let Some(current) = devices_where(&mut tx, "id = $1", id).await?.pop() else {
        tx.commit().await?;
        return Ok((None, Default::default()));
    };
    let Some(until) = current.replacement.and_then(|r| r.until) else {
        tx.commit().await?;
        return Ok((None, Default::default()));
    };
    if until > at {
        return Err(conflict(
            "not_due",
            "temporary_until",
            format!("temporary device {} lasts until {until}", current.serial),
        ));
    }
    if in_session(&current) {
        return Err(conflict(
            "device_in_session",
            "serial",
            format!("temporary device {} is in a session", current.serial),
        ));
    }
    if !matches!(
        current.state,
        DeviceState::Issued | DeviceState::Invalid | DeviceState::Produced
    ) {
        tx.commit().await?;
        return Ok((None, Default::default()));
    }
    let note = format!("temporary device expired ({until})");
    let change = StateChange {
        to: DeviceState::Terminated,
        reason: None,
        assigned_user: None,
        device_policy: None,
        note: Some(note),
    };
    let (next, done) = device_change_tx(&mut tx, &current, &change, &audit.actor).await?;
    let audit = audit
        .clone()
        .detail("serial", current.serial.to_string())
        .detail("from_state", current.state.as_str())
        .detail("temporary_until", until.to_string())
        .detail("certificates_revoked", done.revoked)
        .detail("passkey_deletions", done.jobs);
    finish(tx, key, &audit).await?;
    Ok((Some(next), done))
}

/// The devices issued in place of `original` (permanent or temporary), in
/// any state but ended ones (their mark is cleared when they end).
pub async fn replacements_of(pool: &Pool<DB>, original: Uuid) -> StoreResult<Vec<Device>> {
    let sql = format!("SELECT {DEVICE_COLS} FROM devices WHERE replaces = $1 ORDER BY serial");
    sqlx::query(&sql)
        .bind(original)
        .fetch_all(pool)
        .await?
        .iter()
        .map(device_from_row)
        .collect()
}
