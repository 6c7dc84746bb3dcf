//! The agent repository (migration 0003_agents) on both backends: SQLite
//! (a file in a temp folder) and PostgreSQL at KEYWARD_TEST_POSTGRES_URL in
//! a schema of its own (skipped with a notice without it, failing when CI
//! is set, as the store suite does).

mod common;

use common::{cleanup, stores as stores_with};
use keyward_store::*;
use uuid::Uuid;

async fn stores(test: &str) -> common::TestStores {
    stores_with(test, KEY).await
}

const KEY: AuditKey = [9u8; 32];

fn pending(code: &[u8], poll: &[u8], expires_in: time::Duration) -> Agent {
    let now = keyward_store::now();
    Agent {
        id: Uuid::new_v4(),
        name: "ws-1".into(),
        status: "pending".into(),
        owner_kind: None,
        owner_id: None,
        owner_login: None,
        code_hmac: Some(code.to_vec()),
        poll_hmac: Some(poll.to_vec()),
        credential_hmac: None,
        code_expires_at: now + expires_in,
        created_at: now,
        approved_at: None,
        approved_by: None,
        revoked_at: None,
        last_seen_at: None,
    }
}

fn draft(action: &str) -> AuditDraft {
    AuditDraft::new("account:test", action, "agent:?")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_codes_are_single_use_expire_and_credentials_are_given_once() {
    for (store, pg, _dir) in stores("agents_pairing").await {
        let owner = AgentOwner {
            kind: "account".into(),
            id: Uuid::new_v4(),
            login: "opal".into(),
        };
        // Expired: refused with pairing_code_expired, still pending.
        let old = pending(b"code-old", b"poll-old", time::Duration::seconds(-1));
        store
            .create_agent(&old, &draft("agent.pair_request"))
            .await
            .unwrap();
        match store
            .approve_agent(b"code-old", &owner, "account:opal", &draft("agent.approve"))
            .await
        {
            Err(StoreError::Conflict { code, .. }) => assert_eq!(code, "pairing_code_expired"),
            other => panic!("expected pairing_code_expired, got {other:?}"),
        }
        assert_eq!(store.get_agent(old.id).await.unwrap().status, "pending");

        // Valid: approved once; the code is used up.
        let a = pending(b"code-new", b"poll-new", time::Duration::minutes(10));
        store
            .create_agent(&a, &draft("agent.pair_request"))
            .await
            .unwrap();
        let approved = store
            .approve_agent(b"code-new", &owner, "account:opal", &draft("agent.approve"))
            .await
            .unwrap();
        assert_eq!(approved.status, "paired");
        assert_eq!(approved.owner_login.as_deref(), Some("opal"));
        assert!(matches!(
            store
                .approve_agent(b"code-new", &owner, "account:opal", &draft("agent.approve"))
                .await,
            Err(StoreError::NotFound { .. })
        ));
        // The credential: set once, then the polling secret is gone.
        let by_poll = store
            .find_agent_by_poll(b"poll-new")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(by_poll.id, a.id);
        assert!(store
            .set_agent_credential(a.id, b"cred-1", &draft("agent.paired"))
            .await
            .unwrap());
        assert!(!store
            .set_agent_credential(a.id, b"cred-2", &draft("agent.paired"))
            .await
            .unwrap());
        assert!(store
            .find_agent_by_poll(b"poll-new")
            .await
            .unwrap()
            .is_none());
        let found = store
            .find_agent_by_credential(b"cred-1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.id, a.id);
        assert!(store
            .find_agent_by_credential(b"cred-2")
            .await
            .unwrap()
            .is_none());

        // Devices: replaced as a set, listed while paired; sessions bind.
        let dev = |serial: &str| AgentDevice {
            agent_id: a.id,
            serial: serial.into(),
            info: "{}".into(),
            updated_at: keyward_store::now(),
        };
        store
            .replace_agent_devices(a.id, &[dev("1"), dev("2")])
            .await
            .unwrap();
        store
            .replace_agent_devices(a.id, &[dev("2")])
            .await
            .unwrap();
        assert!(store.agent_reports_device(a.id, "2").await.unwrap());
        assert!(!store.agent_reports_device(a.id, "1").await.unwrap());
        assert_eq!(store.list_agent_devices().await.unwrap().len(), 1);
        assert!(store.agent_running_sessions(a.id).await.unwrap().is_empty());

        // Revoked: final, devices dropped, a second revoke is not found.
        store
            .revoke_agent(a.id, &draft("agent.revoke"))
            .await
            .unwrap();
        let r = store.get_agent(a.id).await.unwrap();
        assert_eq!(r.status, "revoked");
        assert!(r.revoked_at.is_some());
        assert!(store.list_agent_devices().await.unwrap().is_empty());
        assert!(matches!(
            store.revoke_agent(a.id, &draft("agent.revoke")).await,
            Err(StoreError::NotFound { .. })
        ));
        // Audit: every change recorded, the chain intact.
        let events = store.list_audit(0, 100).await.unwrap();
        let actions: Vec<_> = events.iter().map(|e| e.action.as_str()).collect();
        for want in [
            "agent.pair_request",
            "agent.approve",
            "agent.paired",
            "agent.revoke",
        ] {
            assert!(actions.contains(&want), "{want} missing: {actions:?}");
        }
        assert!(events.iter().any(|e| e.target == format!("agent:{}", a.id)));
        assert!(store
            .verify_audit_chain()
            .await
            .unwrap()
            .problems
            .is_empty());
        cleanup(store, pg).await;
    }
}

/// Issue 15, item 11: pending pairings are counted in SQL, and those whose
/// code expired are purged (approved agents are never touched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_pairings_are_purged_and_pending_ones_counted() {
    for (store, pg, _dir) in stores("agents_purge").await {
        let now = keyward_store::now();
        for (i, ttl) in [-120i64, -1, 600, 600].iter().enumerate() {
            let a = pending(
                format!("code-{i}").as_bytes(),
                format!("poll-{i}").as_bytes(),
                time::Duration::seconds(*ttl),
            );
            store
                .create_agent(&a, &draft("agent.pair_request"))
                .await
                .unwrap();
        }
        let owner = AgentOwner {
            kind: "account".into(),
            id: Uuid::new_v4(),
            login: "opal".into(),
        };
        store
            .approve_agent(b"code-3", &owner, "account:opal", &draft("agent.approve"))
            .await
            .unwrap();
        assert_eq!(store.count_pending_pairings(now).await.unwrap(), 1);
        assert_eq!(store.purge_expired_pairings(now).await.unwrap(), 2);
        let left: Vec<String> = store
            .list_agents()
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.status)
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.contains(&"paired".to_string()));
        cleanup(store, pg).await;
    }
}
