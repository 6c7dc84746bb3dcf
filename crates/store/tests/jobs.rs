//! The durable job runner's outbox and the CRL numbers (migration 0006) on
//! both backends: a claimed job is leased to one worker, a failed one waits
//! for its retry time, a done one never runs again, an administrator closes
//! a pending one (audited); two nodes on PostgreSQL claim different jobs;
//! CRL numbers only grow, from a floor.

mod common;

use common::cleanup;
use keyward_store::*;

const KEY: AuditKey = [7u8; 32];

fn job(target: &str) -> NewJob {
    NewJob {
        kind: "test".into(),
        payload: "{}".into(),
        target: target.into(),
        not_before: keyward_store::now(),
    }
}

fn draft(action: &str) -> AuditDraft {
    AuditDraft::new("system", action, "job:?")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_leased_retried_after_its_back_off_done_once_or_closed_by_hand() {
    for (store, pg, _dir) in common::stores("jobs_life", KEY).await {
        let lease = time::Duration::minutes(2);
        let id = store
            .enqueue_job(&job("device:1"), &draft("job.enqueue"))
            .await
            .unwrap();
        let claimed = store.claim_job("w1", lease).await.unwrap().unwrap();
        assert_eq!((claimed.id, claimed.attempts), (id, 1));
        // Leased: nobody else gets it.
        assert!(store.claim_job("w2", lease).await.unwrap().is_none());
        // Failed: not again before its retry time.
        let later = keyward_store::now() + time::Duration::seconds(2);
        store
            .finish_job(id, "w1", Some("Graph is unreachable"), later)
            .await
            .unwrap();
        assert!(store.claim_job("w2", lease).await.unwrap().is_none());
        let pending = store
            .list_jobs(Some(JobState::Pending), Some("device:1"))
            .await
            .unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(
            pending[0].last_error.as_deref(),
            Some("Graph is unreachable")
        );
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        let again = store.claim_job("w2", lease).await.unwrap().unwrap();
        assert_eq!((again.id, again.attempts), (id, 2));
        // Only the lease holder finishes it.
        store
            .finish_job(id, "w1", None, keyward_store::now())
            .await
            .unwrap();
        assert_eq!(store.get_job(id).await.unwrap().state, JobState::Pending);
        store
            .finish_job(id, "w2", None, keyward_store::now())
            .await
            .unwrap();
        assert_eq!(store.get_job(id).await.unwrap().state, JobState::Done);
        assert!(store.claim_job("w3", lease).await.unwrap().is_none());

        // A stuck one is closed by hand, once, with its audit record.
        let stuck = store
            .enqueue_job(&job("device:2"), &draft("job.enqueue"))
            .await
            .unwrap();
        store.close_job(stuck, &draft("job.close")).await.unwrap();
        assert_eq!(store.get_job(stuck).await.unwrap().state, JobState::Closed);
        assert!(store.claim_job("w1", lease).await.unwrap().is_none());
        match store.close_job(id, &draft("job.close")).await {
            Err(StoreError::Conflict { code, .. }) => assert_eq!(code, "job_not_pending"),
            other => panic!("a done job is not closed: {other:?}"),
        }
        assert!(store.verify_audit_chain().await.unwrap().ok());
        cleanup(store, pg).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_numbers_only_grow_from_their_floor() {
    for (store, pg, _dir) in common::stores("crl_numbers", KEY).await {
        let a = store
            .next_crl_number("issuing", 1_700_000_000)
            .await
            .unwrap();
        assert_eq!(a, 1_700_000_000);
        let b = store
            .next_crl_number("issuing", 1_700_000_000)
            .await
            .unwrap();
        assert_eq!(b, a + 1);
        // A floor above the last number wins (a later time).
        let c = store
            .next_crl_number("issuing", 1_800_000_000)
            .await
            .unwrap();
        assert_eq!(c, 1_800_000_000);
        // Each issuer counts on its own.
        assert_eq!(store.next_crl_number("root", 5).await.unwrap(), 5);
        cleanup(store, pg).await;
    }
}
