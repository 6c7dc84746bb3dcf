//! The durable job runner: what a change needs done elsewhere (a passkey
//! deleted at Entra ID) is written as a job in the change's own transaction
//! (the store's outbox, `keyward_store::lifecycle`); a worker on every node
//! claims due jobs under a lease, carries them out, and tries a failed one
//! again with back-off, across restarts. A job that keeps failing stays
//! pending and visible (`GET /api/v1/jobs`, the device's page) until it
//! succeeds or an administrator closes it.

use std::time::Duration;

use keyward_store::{Change, Job};
use serde::Deserialize;
use uuid::Uuid;

use crate::app::AppState;

/// How long a claimed job is a worker's before another may take it.
const LEASE: time::Duration = time::Duration::minutes(2);
/// How often a worker looks for due jobs when nothing woke it.
const IDLE: Duration = Duration::from_secs(5);
/// The longest wait between two tries of a failing job.
const MAX_BACKOFF: time::Duration = time::Duration::hours(1);

/// Why a job failed (no secret), tried again after the back-off.
#[derive(Debug)]
pub struct JobFailed(pub String);

/// The wait before try `attempts + 1`: 10 s doubling, at most an hour.
pub fn backoff(attempts: u32) -> time::Duration {
    let secs = 10i64.saturating_mul(1i64 << attempts.saturating_sub(1).min(20));
    time::Duration::seconds(secs).min(MAX_BACKOFF)
}

/// Starts this node's worker: woken by the change feed when jobs are
/// written, else every few seconds (a retry's time comes, another node's
/// lease lapses).
pub fn spawn_worker(state: AppState) {
    let worker = format!("node-{}", Uuid::new_v4());
    let scan_state = state.clone();
    tokio::spawn(async move {
        if let Err(e) =
            schedule_renewal_scan(&scan_state, time::OffsetDateTime::now_utc(), false).await
        {
            tracing::warn!(error = %e, "scheduling the renewal scan failed");
        }
    });
    let mut changes = state.store.changes();
    tokio::spawn(async move {
        loop {
            // Everything due now, then wait.
            loop {
                match state.store.claim_job(&worker, LEASE).await {
                    Ok(Some(job)) => carry_out(&state, &worker, job).await,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming a job failed");
                        break;
                    }
                }
            }
            let woken = async {
                loop {
                    match changes.recv().await {
                        Ok(Change::Jobs | Change::Resync) => return,
                        Ok(_) => {}
                        // Fell behind: look anyway.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(IDLE, woken).await;
        }
    });
}

async fn carry_out(state: &AppState, worker: &str, job: Job) {
    let outcome = match job.kind.as_str() {
        keyward_store::lifecycle::JOB_DELETE_PASSKEY => delete_passkey(state, &job).await,
        keyward_store::lifecycle::JOB_EXPIRE_TEMPORARY => expire_temporary(state, &job).await,
        keyward_store::lifecycle::JOB_RENEWAL_SCAN => renewal_scan(state, &job).await,
        other => Err(JobFailed(format!("no worker knows jobs of kind {other}"))),
    };
    let now = time::OffsetDateTime::now_utc();
    let (error, retry_at) = match &outcome {
        Ok(()) => {
            tracing::info!(job = %job.id, kind = %job.kind, target = %job.target, "job done");
            (None, now)
        }
        Err(JobFailed(why)) => {
            let retry_at = now + backoff(job.attempts);
            tracing::warn!(job = %job.id, kind = %job.kind, target = %job.target, attempts = job.attempts, error = %why, %retry_at, "job failed; tried again later");
            (Some(why.as_str()), retry_at)
        }
    };
    if let Err(e) = state
        .store
        .finish_job(job.id, worker, error, retry_at)
        .await
    {
        // The lease lapses and the job is claimed again.
        tracing::warn!(job = %job.id, error = %e, "recording a job's outcome failed");
    }
}

#[derive(Deserialize)]
struct CredentialRef {
    credential: Uuid,
}

/// Deletes a passkey at its Passkey-Enabled Service (already gone: done).
async fn delete_passkey(state: &AppState, job: &Job) -> Result<(), JobFailed> {
    let r: CredentialRef = serde_json::from_str(&job.payload)
        .map_err(|e| JobFailed(format!("unreadable job: {e}")))?;
    let credential = state
        .store
        .get_credential(r.credential)
        .await
        .map_err(|e| JobFailed(format!("reading the passkey's record: {e}")))?;
    let record = crate::entra::passkey_record(&credential)
        .ok_or_else(|| JobFailed("the credential is not a passkey on record".into()))?;
    crate::entra::delete_passkey(state, &record)
        .await
        .map_err(JobFailed)
}

/// How often the renewal scan runs.
const RENEWAL_SCAN_EVERY: time::Duration = time::Duration::days(1);

/// Writes the renewal scan due at `at`, unless one is pending (`always`: the
/// scan that runs now writes its successor).
async fn schedule_renewal_scan(
    state: &AppState,
    at: time::OffsetDateTime,
    always: bool,
) -> Result<(), String> {
    use keyward_store::lifecycle::{JobState, JOB_RENEWAL_SCAN, RENEWALS_TARGET};
    if !always {
        let pending = state
            .store
            .list_jobs(Some(JobState::Pending), Some(RENEWALS_TARGET))
            .await
            .map_err(|e| e.to_string())?;
        if pending.iter().any(|j| j.kind == JOB_RENEWAL_SCAN) {
            return Ok(());
        }
    }
    let job = keyward_store::lifecycle::NewJob {
        kind: JOB_RENEWAL_SCAN.into(),
        payload: "{}".into(),
        target: RENEWALS_TARGET.into(),
        not_before: at,
    };
    let draft = keyward_domain::AuditDraft::new("system", "job.scheduled", RENEWALS_TARGET)
        .detail("kind", JOB_RENEWAL_SCAN)
        .detail("due", at.to_string());
    state
        .store
        .enqueue_job(&job, &draft)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The daily renewal scan, then the next one a day later.
async fn renewal_scan(state: &AppState, _job: &Job) -> Result<(), JobFailed> {
    let now = time::OffsetDateTime::now_utc();
    let done = crate::issuance::renewal_scan(state, now)
        .await
        .map_err(|e| JobFailed(e.detail.message.clone()))?;
    tracing::info!(
        scanned = done.scanned,
        requested = done.requested.len(),
        refused = done.refused.len(),
        "renewal scan"
    );
    schedule_renewal_scan(state, now + RENEWAL_SCAN_EVERY, true)
        .await
        .map_err(JobFailed)
}

#[derive(Deserialize)]
struct DeviceRef {
    device: Uuid,
}

/// Terminates a temporary device whose time is up (its certificates
/// revoked, its passkeys deleted); one that ended otherwise is done.
async fn expire_temporary(state: &AppState, job: &Job) -> Result<(), JobFailed> {
    let r: DeviceRef = serde_json::from_str(&job.payload)
        .map_err(|e| JobFailed(format!("unreadable job: {e}")))?;
    let draft = keyward_domain::AuditDraft::new("system", "device.temporary_expired", &job.target)
        .detail("job", job.id.to_string());
    match state
        .store
        .expire_temporary_device(r.device, time::OffsetDateTime::now_utc(), &draft)
        .await
    {
        Ok(Some(d)) => {
            tracing::info!(serial = %d.serial, "temporary device expired: terminated");
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => Err(JobFailed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_ten_seconds_up_to_an_hour() {
        assert_eq!(backoff(1), time::Duration::seconds(10));
        assert_eq!(backoff(2), time::Duration::seconds(20));
        assert_eq!(backoff(4), time::Duration::seconds(80));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}
