//! The change feed: what changed in the store, told to every server node.
//!
//! The store publishes a [`Change`] after each write that others may wait
//! for (a device session started, moved on, retried, cancelled or bound to
//! an agent; an agent's devices, pairing or revocation). Subscribers (the
//! agents' long-polls, later the CRL publisher) wake on it instead of
//! polling or guessing from request URLs.
//!
//! * SQLite (one node): a tokio broadcast channel in the process.
//! * PostgreSQL (any number of nodes): `pg_notify('keyward_changes', json)`
//!   after the commit; every node (this one included) LISTENs on the channel
//!   with a connection of its own and re-broadcasts in its process. When
//!   that connection drops, [`Change::Resync`] tells subscribers that
//!   changes may have been missed.
//!
//! A change is a hint, never the data: subscribers read the store.

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

/// The PostgreSQL NOTIFY channel.
pub const CHANNEL: &str = "keyward_changes";

/// How many changes a slow subscriber may fall behind before it is told
/// it lagged (it then re-reads everything it watches).
const CAPACITY: usize = 1024;

/// One change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A device session was started, moved on, ended, or bound to an agent.
    Session { id: Uuid },
    /// An agent was paired or revoked, or reported its devices.
    Agents,
    /// A certificate was revoked, held or released: CRLs and OCSP answers change.
    Revocations,
    /// Jobs were written: the job runners look for due work.
    Jobs,
    /// Changes may have been missed (the listener reconnected): re-read.
    Resync,
}

/// The in-process side of the feed.
pub(crate) struct Feed {
    tx: broadcast::Sender<Change>,
    /// Counts the revocation changes this process has heard of (its own at
    /// once, in the writer's call; other nodes' through the listener): a
    /// cached CRL built at an older count is stale. A counter, not a
    /// subscriber, so that the writing node's next read never races a task
    /// that has not run yet.
    revocations: std::sync::atomic::AtomicU64,
    /// The PostgreSQL listener task, stopped with the store.
    listener: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

impl Feed {
    pub(crate) fn new() -> Feed {
        Feed {
            tx: broadcast::channel(CAPACITY).0,
            revocations: std::sync::atomic::AtomicU64::new(0),
            listener: std::sync::Mutex::new(None),
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }

    /// Tells this process's subscribers (none is not an error).
    pub(crate) fn local(&self, change: Change) {
        if matches!(change, Change::Revocations | Change::Resync) {
            self.note_revocation();
        }
        let _ = self.tx.send(change);
    }

    /// A revocation was written here or heard of: caches built before are stale.
    pub(crate) fn note_revocation(&self) {
        self.revocations
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// See [`Feed::revocations`].
    pub(crate) fn revocation_epoch(&self) -> u64 {
        self.revocations.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// LISTENs on PostgreSQL and re-broadcasts every node's changes here.
    pub(crate) async fn listen_postgres(
        self: &std::sync::Arc<Self>,
        pool: &sqlx::PgPool,
    ) -> Result<(), sqlx::Error> {
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        let feed = std::sync::Arc::downgrade(self);
        let task = tokio::spawn(async move {
            loop {
                // `try_recv` answers `None` when the connection was lost (it
                // reconnects on the next call): notifications may be gone.
                let next = listener.try_recv().await;
                let Some(feed) = feed.upgrade() else { return };
                match next {
                    Ok(Some(n)) => match serde_json::from_str::<Change>(n.payload()) {
                        Ok(change) => feed.local(change),
                        Err(e) => tracing::warn!(error = %e, "unreadable change notification"),
                    },
                    Ok(None) => feed.local(Change::Resync),
                    Err(e) => {
                        tracing::warn!(error = %e, "change feed listener failed; retrying");
                        feed.local(Change::Resync);
                        drop(feed);
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
        *self.listener.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
        Ok(())
    }
}

impl Feed {
    /// Stops the PostgreSQL listener (its connection closes with it).
    pub(crate) fn stop(&self) {
        if let Some(task) = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop();
    }
}
