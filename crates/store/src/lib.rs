//! Keyward's store: sqlx repositories over SQLite (the embedded default) and
//! PostgreSQL, with one API for both.
//!
//! - `Store::open("sqlite://path?mode=rwc", key)` or `Store::open("postgres://…", key)`
//!   connects and runs the embedded migrations.
//! - Every mutating method takes the [`AuditDraft`] of the change and appends it to the
//!   MAC-chained audit trail in the same transaction: a change without its audit
//!   record cannot be written.
//! - Device state changes use optimistic concurrency (`version`): the loser of a race
//!   gets [`StoreError::Conflict`] with code `version_conflict`.
//!
//! The repository code is written once (`repo.rs`) and compiled for each backend.

/// A read on the store's backend (repository function `$f`).
macro_rules! on_backend {
    ($self:ident, $f:ident ( $($arg:expr),* )) => {
        match &$self.backend {
            Backend::Sqlite(p) => crate::sqlite_repo::$f(p, $($arg),*).await,
            Backend::Postgres(p) => crate::pg_repo::$f(p, $($arg),*).await,
        }
    };
}

/// A write: on SQLite driven on the file's writer (see `write_tx::with_writer`).
macro_rules! on_writer {
    ($self:ident, $f:ident ( $($arg:expr),* )) => {
        match &$self.backend {
            Backend::Sqlite(p) => {
                crate::write_tx::with_writer(p, crate::sqlite_repo::$f(p, $($arg),*)).await
            }
            Backend::Postgres(p) => crate::pg_repo::$f(p, $($arg),*).await,
        }
    };
}

mod backup;
pub mod changes;
mod error;
mod issuance;
pub mod lifecycle;
pub mod requests;
mod types;
pub mod unlock_requests;
pub mod update_requests;
mod write_tx;

pub use backup::{audit_head_of_sqlite, snapshot_sqlite};
pub use changes::Change;
pub use error::{StoreError, StoreResult};
pub use issuance::{Credential, IssuanceContext, IssuanceSession, IssuanceUpdate, Replacing};
pub use keyward_domain::AuditDraft;
pub use lifecycle::{EffectsDone, Job, JobState, NewJob, Revocation};
pub use requests::{Request, RequestBatch};
pub use types::*;
pub use unlock_requests::UnlockRequest;
pub use update_requests::{UpdateOutcome, UpdateRequest};

use hmac::{Hmac, Mac};
use keyward_domain::{
    Account, AuditEvent, Device, DeviceHistoryEntry, DevicePolicy, NewDevice, NewUser,
    PasskeyService, Serial, SettingKey, SettingValue, Settings, StateChange, User,
};
use sha2::Sha256;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

/// The 32-byte key of the audit chain's HMAC-SHA-256 (the server derives it from the KEK).
pub type AuditKey = [u8; 32];

/// The "previous MAC" of the first record.
pub(crate) const GENESIS_MAC: [u8; 32] = [0; 32];

/// Now, in UTC, cut to microseconds: PostgreSQL keeps microseconds, and a stored time
/// must read back equal (the audit MAC covers it).
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000)
        .expect("valid nanosecond")
}

/// An audit record ready to append: linked to the head it was computed from.
pub(crate) struct AuditRecord {
    pub seq: i64,
    pub at: OffsetDateTime,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: &'static str,
    pub details: String,
    pub prev_mac: Vec<u8>,
    pub mac: [u8; 32],
}

/// The record, and (on SQLite, sent in the same text) the head's move.
const APPEND_AUDIT_SQL: &str =
    "INSERT INTO audit_log (seq, at, actor, action, target, outcome, details, prev_mac, mac) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
const MOVE_AUDIT_HEAD_SQL: &str = "UPDATE audit_head SET count = $1, last_mac = $9 WHERE id = 1";

/// Binds a record's nine values in `APPEND_AUDIT_SQL`'s order (`MOVE_AUDIT_HEAD_SQL`
/// reuses $1 and $9).
macro_rules! bind_audit_record {
    ($q:expr, $r:expr) => {
        $q.bind($r.seq)
            .bind($r.at)
            .bind(&$r.actor)
            .bind(&$r.action)
            .bind(&$r.target)
            .bind($r.outcome)
            .bind(&$r.details)
            .bind(&$r.prev_mac)
            .bind(&$r.mac[..])
    };
}

/// MAC = HMAC-SHA-256(key, prev_mac || canonical record bytes). The record bytes are
/// length-prefixed fields, so no two different records encode alike. The sequence number
/// is not covered: order is protected by the chain itself, which lets verification tell
/// a moved record from a changed one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn audit_mac(
    key: &AuditKey,
    prev_mac: &[u8],
    at: OffsetDateTime,
    actor: &str,
    action: &str,
    target: &str,
    outcome: &str,
    details: &str,
) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(prev_mac);
    m.update(b"keyward-audit-v1");
    m.update(&at.unix_timestamp_nanos().to_be_bytes());
    for f in [actor, action, target, outcome, details] {
        m.update(&(f.len() as u64).to_be_bytes());
        m.update(f.as_bytes());
    }
    m.finalize().into_bytes().into()
}

mod sqlite_dialect {
    use crate::write_tx::WriteTx;
    use sqlx::SqlitePool;
    use std::sync::LazyLock;
    pub type Tx = WriteTx;
    pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
    /// SQLite locks by transaction: IMMEDIATE takes the write lock up front, so two
    /// writers never both read then fail to upgrade, and audit appends are serialised.
    pub const FOR_UPDATE: &str = "";
    /// The writer is alone: nothing to skip.
    pub const SKIP_LOCKED: &str = "";
    /// Rows per multi-row INSERT (SQLite allows 32766 parameters).
    pub const BULK_ROWS: usize = 500;
    pub const ANONYMOUS_PLACEHOLDERS: bool = true;
    /// On the file's one writer connection (see `write_tx`), so `BEGIN
    /// IMMEDIATE` meets a held lock only when another process writes.
    pub async fn begin_write(pool: &SqlitePool) -> Result<WriteTx, sqlx::Error> {
        WriteTx::begin(pool).await
    }
    /// A read transaction: in WAL mode its first read fixes the snapshot
    /// every later read of it sees (appends committed meanwhile are not).
    pub async fn begin_snapshot(
        pool: &SqlitePool,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        pool.begin().await
    }
    /// Statements run on the writer's thread one after another; sending the
    /// record, the head's move (and the COMMIT) as one text saves the round
    /// trips between them, which set the pace of concurrent writers.
    static APPEND: LazyLock<String> = LazyLock::new(|| {
        format!(
            "{}; {}",
            super::APPEND_AUDIT_SQL,
            super::MOVE_AUDIT_HEAD_SQL
        )
    });
    static APPEND_AND_COMMIT: LazyLock<String> = LazyLock::new(|| format!("{}; COMMIT", *APPEND));
    pub async fn append_audit_record(
        tx: &mut WriteTx,
        r: &super::AuditRecord,
    ) -> Result<(), sqlx::Error> {
        bind_audit_record!(sqlx::query(APPEND.as_str()), r)
            .execute(&mut **tx)
            .await?;
        tx.moved_audit_head(r.seq, &r.mac);
        Ok(())
    }
    /// The writer connection remembers the head it committed (see `write_tx`).
    pub fn known_audit_head(tx: &WriteTx) -> Option<(i64, Vec<u8>)> {
        tx.known_audit_head()
    }
    pub async fn append_audit_record_and_commit(
        tx: WriteTx,
        r: &super::AuditRecord,
    ) -> Result<(), sqlx::Error> {
        match tx {
            WriteTx::Writer(mut w) => {
                bind_audit_record!(sqlx::query(APPEND_AND_COMMIT.as_str()), r)
                    .execute(w.conn())
                    .await?;
                w.moved_audit_head(r.seq, &r.mac);
                w.committed();
                Ok(())
            }
            mut tx => {
                append_audit_record(&mut tx, r).await?;
                tx.commit().await
            }
        }
    }
    /// A bulk import inserts into the login and display-name indexes in random key
    /// order; a 256 MiB cache for its transaction keeps those B-trees in memory.
    pub async fn begin_bulk(tx: &mut WriteTx) -> Result<(), sqlx::Error> {
        sqlx::query("PRAGMA cache_size = -262144")
            .execute(&mut **tx)
            .await
            .map(|_| ())
    }
    /// Back to the everyday cache size (SQLite frees the pages above it).
    pub async fn end_bulk(tx: &mut WriteTx) -> Result<(), sqlx::Error> {
        sqlx::query("PRAGMA cache_size = -16384")
            .execute(&mut **tx)
            .await
            .map(|_| ())
    }
}

mod pg_dialect {
    use sqlx::{PgPool, Postgres, Transaction};
    pub type Tx = Transaction<'static, Postgres>;
    pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
    /// The head row is locked so writers on several nodes append one after the other.
    pub const FOR_UPDATE: &str = " FOR UPDATE";
    /// Job runners on several nodes claim different jobs.
    pub const SKIP_LOCKED: &str = " FOR UPDATE SKIP LOCKED";
    /// Rows per multi-row INSERT (PostgreSQL allows 65535 parameters).
    pub const BULK_ROWS: usize = 1000;
    pub const ANONYMOUS_PLACEHOLDERS: bool = false;
    pub async fn begin_write(pool: &PgPool) -> Result<Tx, sqlx::Error> {
        pool.begin().await
    }
    /// A read transaction on one snapshot (REPEATABLE READ): appends
    /// committed meanwhile are not seen.
    pub async fn begin_snapshot(pool: &PgPool) -> Result<Tx, sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }
    pub async fn append_audit_record(
        tx: &mut Tx,
        r: &super::AuditRecord,
    ) -> Result<(), sqlx::Error> {
        bind_audit_record!(sqlx::query(super::APPEND_AUDIT_SQL), r)
            .execute(&mut **tx)
            .await?;
        sqlx::query("UPDATE audit_head SET count = $1, last_mac = $2 WHERE id = 1")
            .bind(r.seq)
            .bind(&r.mac[..])
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
    /// PostgreSQL reads (and locks) the head in every transaction.
    pub fn known_audit_head(_tx: &Tx) -> Option<(i64, Vec<u8>)> {
        None
    }
    pub async fn append_audit_record_and_commit(
        mut tx: Tx,
        r: &super::AuditRecord,
    ) -> Result<(), sqlx::Error> {
        append_audit_record(&mut tx, r).await?;
        tx.commit().await
    }
    pub async fn begin_bulk(_tx: &mut Tx) -> Result<(), sqlx::Error> {
        Ok(())
    }
    pub async fn end_bulk(_tx: &mut Tx) -> Result<(), sqlx::Error> {
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
mod sqlite_repo {
    type DB = sqlx::Sqlite;
    use crate::sqlite_dialect as dialect;
    include!("repo.rs");
    include!("issuance_repo.rs");
    include!("agents_repo.rs");
    include!("lifecycle_repo.rs");
    include!("unlock_requests_repo.rs");
    include!("update_requests_repo.rs");
    include!("requests_repo.rs");
}

#[allow(clippy::too_many_arguments)]
mod pg_repo {
    type DB = sqlx::Postgres;
    use crate::pg_dialect as dialect;
    include!("repo.rs");
    include!("issuance_repo.rs");
    include!("agents_repo.rs");
    include!("lifecycle_repo.rs");
    include!("unlock_requests_repo.rs");
    include!("update_requests_repo.rs");
    include!("requests_repo.rs");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The store: cheap to clone (shared pools).
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    audit_key: Arc<RwLock<AuditKey>>,
    /// SQLite: the file's writer connection, kept open while the store is
    /// (write transactions find it by the file's name; see `write_tx`).
    _sqlite_writer: Option<write_tx::SharedWriter>,
    /// The change feed (see [`changes`]).
    feed: Arc<changes::Feed>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.kind())
            .finish_non_exhaustive()
    }
}

/// Calls the same repository function on whichever backend is open.
macro_rules! dispatch {
    ($self:ident, $f:ident ( $($arg:expr),* )) => {
        match &$self.backend {
            Backend::Sqlite(p) => sqlite_repo::$f(p, $($arg),*).await,
            Backend::Postgres(p) => pg_repo::$f(p, $($arg),*).await,
        }
    };
}

/// Same, passing the audit key first: a write, on SQLite driven on the
/// file's writer (see [`write_tx::with_writer`]).
macro_rules! dispatch_audited {
    ($self:ident, $f:ident ( $($arg:expr),* )) => {{
        let key = $self.key();
        match &$self.backend {
            Backend::Sqlite(p) => {
                write_tx::with_writer(p, sqlite_repo::$f(p, &key, $($arg),*)).await
            }
            Backend::Postgres(p) => pg_repo::$f(p, &key, $($arg),*).await,
        }
    }};
}

impl Store {
    /// Opens `sqlite://PATH?mode=rwc` (WAL, busy timeout, foreign keys) or
    /// `postgres://…`, and runs the migrations.
    pub async fn open(url: &str, audit_key: AuditKey) -> StoreResult<Store> {
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?;
            Self::open_sqlite(opts, audit_key).await
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let opts = PgConnectOptions::from_str(url)?;
            Self::open_postgres(opts, audit_key).await
        } else {
            Err(StoreError::Validation(
                keyward_domain::ValidationError::new(
                    "database_url_invalid",
                    "database_url",
                    "database URL must start with sqlite: or postgres:",
                ),
            ))
        }
    }

    pub async fn open_sqlite(
        opts: SqliteConnectOptions,
        audit_key: AuditKey,
    ) -> StoreResult<Store> {
        let opts = opts
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // 16 MiB page cache per connection (bulk imports raise it for their
            // transaction: see BULK_CACHE_KIB).
            .pragma("cache_size", "-16384")
            .pragma("temp_store", "memory");
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            // A SQLite connection is a file handle in this process: it cannot go stale
            // the way a network connection can, so the ping sqlx sends before every
            // acquire (a round trip to the connection's worker thread) buys nothing.
            .test_before_acquire(false)
            .connect_with(opts.clone())
            .await?;
        sqlite_repo::migrate(&pool).await?;
        let writer = write_tx::open_writer(&opts).await?;
        Ok(Store {
            backend: Backend::Sqlite(pool),
            audit_key: Arc::new(RwLock::new(audit_key)),
            _sqlite_writer: Some(writer),
            feed: Arc::new(changes::Feed::new()),
        })
    }

    pub async fn open_postgres(opts: PgConnectOptions, audit_key: AuditKey) -> StoreResult<Store> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.clone())
            .await?;
        pg_repo::migrate(&pool).await?;
        // The listener keeps one connection for itself, out of the store's
        // pool (closing the pool would otherwise wait for it for ever).
        let listener_pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_with(opts)
            .await?;
        let feed = Arc::new(changes::Feed::new());
        feed.listen_postgres(&listener_pool).await?;
        Ok(Store {
            backend: Backend::Postgres(pool),
            audit_key: Arc::new(RwLock::new(audit_key)),
            _sqlite_writer: None,
            feed,
        })
    }

    pub fn kind(&self) -> BackendKind {
        match self.backend {
            Backend::Sqlite(_) => BackendKind::Sqlite,
            Backend::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// The change feed: every node's store changes, as hints (see [`changes`]).
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.feed.subscribe()
    }

    /// How many revocations this node has written or heard of: a CRL cached
    /// at a lower number is stale (see [`changes`]).
    pub fn revocation_epoch(&self) -> u64 {
        self.feed.revocation_epoch()
    }

    /// Tells every node (this one included) that `change` happened; called
    /// after the write committed. A failed NOTIFY is logged, not an error of
    /// the write: the other nodes' subscribers re-read the store on their
    /// own schedule as well.
    pub(crate) async fn publish(&self, change: Change) {
        match &self.backend {
            Backend::Sqlite(_) => self.feed.local(change),
            Backend::Postgres(p) => {
                // This node's caches go stale now, not when its own
                // notification comes back through the listener.
                if change == Change::Revocations {
                    self.feed.note_revocation();
                }
                let payload = serde_json::to_string(&change).expect("a change serialises");
                if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(changes::CHANNEL)
                    .bind(payload)
                    .execute(p)
                    .await
                {
                    tracing::warn!(error = %e, "publishing a change failed");
                    // At least this node's subscribers hear of it.
                    self.feed.local(change);
                }
            }
        }
    }

    /// Replaces the audit chain key (e.g. once the KEK is loaded). Records already
    /// written stay verifiable only with the key they were written under.
    pub fn set_audit_key(&self, key: AuditKey) {
        *self.audit_key.write().expect("audit key lock") = key;
    }

    fn key(&self) -> AuditKey {
        *self.audit_key.read().expect("audit key lock")
    }

    /// Closes the pools (waits for connections to be returned) and stops
    /// the change feed's listener.
    pub async fn close(&self) {
        self.feed.stop();
        match &self.backend {
            Backend::Sqlite(p) => p.close().await,
            Backend::Postgres(p) => p.close().await,
        }
    }

    /// A cheap round trip for health checks.
    pub async fn ping(&self) -> StoreResult<()> {
        match &self.backend {
            Backend::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.map(|_| ())?,
            Backend::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.map(|_| ())?,
        }
        Ok(())
    }

    // ---- audit trail

    /// Appends an event that goes with no stored change (a sign-in, a denial).
    pub async fn append_audit(&self, audit: &AuditDraft) -> StoreResult<i64> {
        dispatch_audited!(self, append_audit(audit))
    }

    pub async fn audit_head(&self) -> StoreResult<AuditCheckpoint> {
        dispatch!(self, audit_head())
    }

    /// Records after `after_seq` in order (at most `limit`, 0 = 50, clamped to MAX_PAGE).
    pub async fn list_audit(&self, after_seq: i64, limit: u32) -> StoreResult<Vec<AuditEvent>> {
        dispatch!(self, list_audit(after_seq, limit))
    }

    /// Checks the whole chain: changed, deleted, reordered and truncated records.
    pub async fn verify_audit_chain(&self) -> StoreResult<AuditVerification> {
        dispatch_audited!(self, verify_audit_chain(None))
    }

    /// As [`Store::verify_audit_chain`], and also checks that the log still holds the
    /// record a checkpoint (from the server log) pointed at.
    pub async fn verify_audit_chain_against(
        &self,
        checkpoint: &AuditCheckpoint,
    ) -> StoreResult<AuditVerification> {
        dispatch_audited!(self, verify_audit_chain(Some(checkpoint)))
    }

    // ---- users

    pub async fn create_user(&self, user: &User, audit: &AuditDraft) -> StoreResult<()> {
        dispatch_audited!(self, create_user(user, audit))
    }

    pub async fn update_user(&self, user: &User, audit: &AuditDraft) -> StoreResult<()> {
        dispatch_audited!(self, update_user(user, audit))
    }

    pub async fn get_user(&self, id: Uuid) -> StoreResult<User> {
        dispatch!(self, get_user(id))
    }

    pub async fn get_user_by_login(&self, login: &str) -> StoreResult<User> {
        dispatch!(self, get_user_by_login(login))
    }

    pub async fn count_users(&self) -> StoreResult<i64> {
        dispatch!(self, count_users())
    }

    /// Prefix search with keyset pagination (index range scans on both backends).
    pub async fn search_users(&self, q: &UserSearch) -> StoreResult<Page<User>> {
        dispatch!(self, search_users(q))
    }

    /// Bulk insert in one transaction; each bad row is reported with its index. One
    /// audit event (with the counts) covers the import.
    pub async fn import_users(
        &self,
        users: &[NewUser],
        mode: ImportMode,
        audit: &AuditDraft,
    ) -> StoreResult<ImportReport> {
        dispatch_audited!(self, import_users(users, mode, audit))
    }

    // ---- devices

    /// Adds one device to the inventory (Available), e.g. automatic import of an unknown card.
    pub async fn insert_device(
        &self,
        device: &NewDevice,
        audit: &AuditDraft,
    ) -> StoreResult<Device> {
        dispatch_audited!(self, insert_device(device, audit))
    }

    /// Inventory (CSV) import in one transaction.
    pub async fn import_devices(
        &self,
        devices: &[NewDevice],
        mode: ImportMode,
        audit: &AuditDraft,
    ) -> StoreResult<ImportReport> {
        dispatch_audited!(self, import_devices(devices, mode, audit))
    }

    pub async fn get_device(&self, id: Uuid) -> StoreResult<Device> {
        dispatch!(self, get_device(id))
    }

    pub async fn get_device_by_serial(&self, serial: Serial) -> StoreResult<Device> {
        dispatch!(self, get_device_by_serial(serial))
    }

    pub async fn list_devices(&self, filter: &DeviceFilter) -> StoreResult<Page<Device>> {
        dispatch!(self, list_devices(filter))
    }

    /// Applies a state change checked by the domain state machine, if the device is
    /// still at `expected_version`; otherwise `Conflict { code: "version_conflict" }`.
    /// Writes a history row, what the move does to the device's credentials
    /// (`keyward_domain::lifecycle::effects`: revocations, holds, passkey
    /// deletions as jobs) and the audit event (actor = `audit.actor`), in one
    /// transaction.
    pub async fn change_device_state(
        &self,
        id: Uuid,
        expected_version: i64,
        change: &StateChange,
        audit: &AuditDraft,
    ) -> StoreResult<(Device, EffectsDone)> {
        let done = dispatch_audited!(
            self,
            change_device_state(id, expected_version, change, audit)
        )?;
        self.revocations_changed(&done.1).await;
        Ok(done)
    }

    pub async fn device_history(&self, id: Uuid) -> StoreResult<Vec<DeviceHistoryEntry>> {
        dispatch!(self, device_history(id))
    }

    // ---- device policies

    /// Validates and stores; a nil id is replaced by a fresh one. Returns the stored policy.
    pub async fn create_policy(
        &self,
        policy: &DevicePolicy,
        audit: &AuditDraft,
    ) -> StoreResult<DevicePolicy> {
        dispatch_audited!(self, create_policy(policy, audit))
    }

    pub async fn update_policy(
        &self,
        policy: &DevicePolicy,
        audit: &AuditDraft,
    ) -> StoreResult<()> {
        dispatch_audited!(self, update_policy(policy, audit))
    }

    pub async fn get_policy(&self, id: Uuid) -> StoreResult<DevicePolicy> {
        dispatch!(self, get_policy(id))
    }

    pub async fn get_policy_by_name(&self, name: &str) -> StoreResult<DevicePolicy> {
        dispatch!(self, get_policy_by_name(name))
    }

    pub async fn list_policies(&self) -> StoreResult<Vec<DevicePolicy>> {
        dispatch!(self, list_policies())
    }

    /// Fails with `Conflict { code: "in_use" }` while devices reference the policy.
    pub async fn delete_policy(&self, id: Uuid, audit: &AuditDraft) -> StoreResult<()> {
        dispatch_audited!(self, delete_policy(id, audit))
    }

    // ---- settings

    /// Stored settings over the defaults.
    pub async fn get_settings(&self) -> StoreResult<Settings> {
        dispatch!(self, get_settings())
    }

    /// Sets one setting; returns all settings after the change.
    /// Removes the retired setting `name` and answers its stored value.
    pub async fn take_retired_setting(
        &self,
        name: &str,
        audit: &AuditDraft,
    ) -> StoreResult<Option<String>> {
        dispatch_audited!(self, take_retired_setting(name, audit))
    }

    pub async fn set_setting(
        &self,
        key: SettingKey,
        value: SettingValue,
        audit: &AuditDraft,
    ) -> StoreResult<Settings> {
        dispatch_audited!(self, set_setting(key, value, audit))
    }

    /// Writes every setting (e.g. the demo's).
    pub async fn put_settings(&self, settings: &Settings, audit: &AuditDraft) -> StoreResult<()> {
        dispatch_audited!(self, put_settings(settings, audit))
    }

    // ---- Passkey-Enabled Services

    /// The client secret must already be sealed (ciphertext) by the caller.
    pub async fn create_passkey_service(
        &self,
        s: &PasskeyService,
        audit: &AuditDraft,
    ) -> StoreResult<()> {
        dispatch_audited!(self, create_passkey_service(s, audit))
    }

    pub async fn update_passkey_service(
        &self,
        s: &PasskeyService,
        audit: &AuditDraft,
    ) -> StoreResult<()> {
        dispatch_audited!(self, update_passkey_service(s, audit))
    }

    pub async fn get_passkey_service(&self, id: Uuid) -> StoreResult<PasskeyService> {
        dispatch!(self, get_passkey_service(id))
    }

    pub async fn get_passkey_service_by_name(&self, name: &str) -> StoreResult<PasskeyService> {
        dispatch!(self, get_passkey_service_by_name(name))
    }

    pub async fn list_passkey_services(&self) -> StoreResult<Vec<PasskeyService>> {
        dispatch!(self, list_passkey_services())
    }

    pub async fn delete_passkey_service(&self, id: Uuid, audit: &AuditDraft) -> StoreResult<()> {
        dispatch_audited!(self, delete_passkey_service(id, audit))
    }

    // ---- accounts (operators and self-service users)

    pub async fn create_account(&self, account: &Account, audit: &AuditDraft) -> StoreResult<()> {
        dispatch_audited!(self, create_account(account, audit))
    }

    /// Rewrites every field of the account (login, role, hash, flags, user link).
    pub async fn update_account(&self, account: &Account, audit: &AuditDraft) -> StoreResult<()> {
        dispatch_audited!(self, update_account(account, audit))
    }

    /// An account changed by an administrator, its sessions ended with it
    /// when `end_sessions`; how many ended.
    pub async fn update_account_ending_sessions(
        &self,
        account: &Account,
        end_sessions: bool,
        audit: &AuditDraft,
    ) -> StoreResult<u64> {
        dispatch_audited!(
            self,
            update_account_ending_sessions(account, end_sessions, audit)
        )
    }

    /// One's own new password; the account's other sessions end.
    pub async fn change_own_password(
        &self,
        id: Uuid,
        password_hash: &str,
        keep_session: Option<&[u8]>,
        audit: &AuditDraft,
    ) -> StoreResult<u64> {
        dispatch_audited!(
            self,
            change_own_password(id, password_hash, keep_session, audit)
        )
    }

    /// Tokens made before expiry existed expire at `at`.
    pub async fn expire_legacy_tokens(&self, at: OffsetDateTime) -> StoreResult<u64> {
        on_writer!(self, expire_legacy_tokens(at))
    }

    pub async fn set_password(
        &self,
        id: Uuid,
        password_hash: &str,
        must_change_password: bool,
        audit: &AuditDraft,
    ) -> StoreResult<()> {
        dispatch_audited!(
            self,
            set_password(id, password_hash, must_change_password, audit)
        )
    }

    pub async fn get_account(&self, id: Uuid) -> StoreResult<Account> {
        dispatch!(self, get_account(id))
    }

    pub async fn get_account_by_login(&self, login: &str) -> StoreResult<Account> {
        dispatch!(self, get_account_by_login(login))
    }

    pub async fn list_accounts(&self) -> StoreResult<Vec<Account>> {
        dispatch!(self, list_accounts())
    }

    pub async fn count_accounts(&self) -> StoreResult<i64> {
        dispatch!(self, count_accounts())
    }

    // ---- browser sessions

    pub async fn create_session(&self, session: &Session, audit: &AuditDraft) -> StoreResult<()> {
        dispatch_audited!(self, create_session(session, audit))
    }

    /// The live session (not expired at `at`) with this id hash.
    pub async fn get_session(
        &self,
        id_hash: &[u8],
        at: OffsetDateTime,
    ) -> StoreResult<Option<Session>> {
        dispatch!(self, get_session(id_hash, at))
    }

    pub async fn delete_session(&self, id_hash: &[u8], audit: &AuditDraft) -> StoreResult<bool> {
        dispatch_audited!(self, delete_session(id_hash, audit))
    }

    pub async fn delete_expired_sessions(&self, at: OffsetDateTime) -> StoreResult<u64> {
        dispatch!(self, delete_expired_sessions(at))
    }

    // ---- API tokens

    pub async fn create_api_token(&self, token: &ApiToken, audit: &AuditDraft) -> StoreResult<()> {
        dispatch_audited!(self, create_api_token(token, audit))
    }

    /// Looks a token up by the HMAC of its bytes (revoked tokens too: check `revoked_at`).
    pub async fn find_api_token(&self, token_hmac: &[u8]) -> StoreResult<Option<ApiToken>> {
        dispatch!(self, find_api_token(token_hmac))
    }

    pub async fn list_api_tokens(&self) -> StoreResult<Vec<ApiToken>> {
        dispatch!(self, list_api_tokens())
    }

    pub async fn revoke_api_token(&self, id: Uuid, audit: &AuditDraft) -> StoreResult<()> {
        dispatch_audited!(self, revoke_api_token(id, audit))
    }

    /// Sets `last_used_at` (unaudited; throttle calls, it is a write).
    pub async fn touch_api_token(&self, id: Uuid, at: OffsetDateTime) -> StoreResult<()> {
        dispatch!(self, touch_api_token(id, at))
    }

    // ---- KEK-encrypted blobs (management keys, PUKs, initial PINs)

    /// Stores ciphertext under `name` (e.g. `device/<id>/puk`), replacing any old value.
    pub async fn put_secret(
        &self,
        name: &str,
        ciphertext: &[u8],
        audit: &AuditDraft,
    ) -> StoreResult<()> {
        dispatch_audited!(self, put_secret(name, ciphertext, audit))
    }

    pub async fn get_secret(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        dispatch!(self, get_secret(name))
    }

    pub async fn delete_secret(&self, name: &str, audit: &AuditDraft) -> StoreResult<bool> {
        dispatch_audited!(self, delete_secret(name, audit))
    }
}

// After the dispatch macros and the repo modules it calls.
mod agents;
pub use agents::{Agent, AgentDevice, AgentOwner};
