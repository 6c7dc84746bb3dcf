//! Write transactions, and SQLite's one writer.
//!
//! SQLite lets one connection write at a time. When several pool connections
//! ask for the write lock (`BEGIN IMMEDIATE`) at once, all but one sleep in
//! SQLite's busy handler (1, 2, 5, 10 … 100 ms, then try again): under
//! concurrent issuance that sleeping, not work, set the pace (a p99 of several
//! hundred milliseconds, idle CPU). So each SQLite file open in this process
//! has one dedicated writer connection, outside the read pool: writers queue
//! for it on an async mutex (in order, no sleeping threads, no pool
//! connection held while waiting) and readers (WAL) never wait for writers.
//! Another process writing the same file still meets the busy timeout.
//!
//! The writer is the one serial resource, so a transaction holding it must
//! not wait for anything else: each statement is a round trip to the
//! connection's thread, and on the runtime's workers the task would wait,
//! after every answer, behind whatever else they run (a relay verifying
//! attestations, a certificate being signed) before it sends the next one.
//! [`with_writer`] therefore drives a writing store call on a thread of its
//! own (`block_in_place`), where the next statement goes out as soon as the
//! answer is in; callers queue for that asynchronously, two at a time. On 2
//! cores this took full issuances from about 215 to about 260 per second.
//!
//! PostgreSQL has row locks and needs none of this: its write transactions
//! are ordinary pool transactions.

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Sqlite, Transaction};
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use tokio::sync::OwnedMutexGuard;

/// The dedicated writer connection of one SQLite file.
pub(crate) struct SqliteWriter {
    conn: SqliteConnection,
    /// A transaction was begun and neither committed nor rolled back (its
    /// `WriteTx` was dropped on an error): the next writer rolls it back first.
    open: bool,
    /// The audit chain's head (count, last MAC) as this connection last
    /// committed it, and the file's `data_version` then: while no other
    /// connection has committed since (the version is unchanged), the head
    /// need not be read again.
    audit_head: Option<(i64, Vec<u8>, i64)>,
    /// This transaction's `data_version`, and the head it moved to (kept once it commits).
    data_version: i64,
    pending_head: Option<(i64, Vec<u8>)>,
}

/// A file's writer, and the gate in front of it (see [`with_writer`]).
pub(crate) struct WriterSlot {
    writer: Arc<tokio::sync::Mutex<SqliteWriter>>,
    gate: tokio::sync::Semaphore,
}

/// Held by the `Store` while it is open; the registry only points at it.
pub(crate) type SharedWriter = Arc<WriterSlot>;

static WRITERS: LazyLock<Mutex<HashMap<PathBuf, Weak<WriterSlot>>>> =
    LazyLock::new(Default::default);

/// Writers let through the gate at once: the one holding the writer and the
/// next, already on its own thread when the writer passes to it.
const ON_THREADS: usize = 2;

/// Opens (or joins, when this process has the file open already) the writer
/// connection of the file `opts` names.
pub(crate) async fn open_writer(opts: &SqliteConnectOptions) -> Result<SharedWriter, sqlx::Error> {
    let file = opts.get_filename().to_path_buf();
    if let Some(w) = registered(&file) {
        return Ok(w);
    }
    let conn = SqliteConnection::connect_with(opts).await?;
    let mut writers = WRITERS.lock().expect("writer registry lock");
    // Another task may have opened one meanwhile: one writer per file.
    if let Some(w) = writers.get(&file).and_then(Weak::upgrade) {
        return Ok(w);
    }
    writers.retain(|_, w| w.strong_count() > 0);
    let w = Arc::new(WriterSlot {
        writer: Arc::new(tokio::sync::Mutex::new(SqliteWriter {
            conn,
            open: false,
            audit_head: None,
            data_version: 0,
            pending_head: None,
        })),
        gate: tokio::sync::Semaphore::new(ON_THREADS),
    });
    writers.insert(file, Arc::downgrade(&w));
    Ok(w)
}

fn registered(file: &Path) -> Option<SharedWriter> {
    WRITERS
        .lock()
        .expect("writer registry lock")
        .get(file)
        .and_then(Weak::upgrade)
}

/// A SQLite write transaction. Dereferences to the connection, as
/// `sqlx::Transaction` does (PostgreSQL's write transactions are plain
/// `sqlx::Transaction`s).
pub(crate) enum WriteTx {
    Pooled(Transaction<'static, Sqlite>),
    /// The file's writer connection, held for the transaction.
    Writer(WriterTurn),
}

/// The writer connection, held by one transaction. Dropped with the
/// transaction still open (an error or a cancelled request on the way), it
/// rolls back before the next writer gets the connection, so the file's write
/// lock is not kept from other processes.
pub(crate) struct WriterTurn(Option<OwnedMutexGuard<SqliteWriter>>);

impl Deref for WriterTurn {
    type Target = SqliteWriter;
    fn deref(&self) -> &SqliteWriter {
        self.0.as_ref().expect("held until dropped")
    }
}

impl DerefMut for WriterTurn {
    fn deref_mut(&mut self) -> &mut SqliteWriter {
        self.0.as_mut().expect("held until dropped")
    }
}

impl Drop for WriterTurn {
    fn drop(&mut self) {
        let Some(mut w) = self.0.take() else { return };
        if !w.open {
            return;
        }
        // Without a runtime (process exit) the next writer rolls back instead.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if sqlx::query("ROLLBACK").execute(&mut w.conn).await.is_ok() {
                    w.open = false;
                }
            });
        }
    }
}

tokio::task_local! {
    /// The writer [`with_writer`] waited for, for the body's first `begin`.
    static RESERVED: RefCell<Option<OwnedMutexGuard<SqliteWriter>>>;
}

/// Runs `body`, a store function that writes to `pool`'s file, on a thread
/// of its own (`block_in_place`), its first write transaction on the writer.
/// Writers queue asynchronously at a gate that lets [`ON_THREADS`] through:
/// so no more threads wait than that, and the hand-over of the runtime's
/// worker to a new thread happens before the writer is held, not while. On a
/// current-thread runtime (tests), or with no writer registered, `body` just
/// runs.
pub(crate) async fn with_writer<F: Future>(pool: &sqlx::SqlitePool, body: F) -> F::Output {
    let Some(slot) = registered(pool.connect_options().get_filename()) else {
        return body.await;
    };
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if !multi_thread {
        return body.await;
    }
    let _through = slot.gate.acquire().await.expect("the gate is never closed");
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async {
            let guard = slot.writer.clone().lock_owned().await;
            RESERVED.scope(RefCell::new(Some(guard)), body).await
        })
    })
}

impl WriteTx {
    /// Waits for the writer connection of the pool's file and begins an
    /// IMMEDIATE transaction on it (or on a pool connection, if no store of
    /// this process holds a writer for the file).
    pub(crate) async fn begin(pool: &sqlx::SqlitePool) -> Result<Self, sqlx::Error> {
        let Some(writer) = registered(pool.connect_options().get_filename()) else {
            return Ok(WriteTx::Pooled(pool.begin_with("BEGIN IMMEDIATE").await?));
        };
        let reserved = RESERVED
            .try_with(|r| r.borrow_mut().take())
            .ok()
            .flatten()
            .filter(|g| Arc::ptr_eq(OwnedMutexGuard::mutex(g), &writer.writer));
        let mut w = match reserved {
            Some(guard) => guard,
            None => writer.writer.clone().lock_owned().await,
        };
        if w.open {
            // Best effort: SQLite may have ended the transaction itself (it
            // rolls back on some errors), and then there is nothing to undo.
            let _ = sqlx::query("ROLLBACK").execute(&mut w.conn).await;
            w.open = false;
        }
        // One round trip: the transaction and whether anyone else wrote since.
        let version: i64 = match sqlx::query_scalar("BEGIN IMMEDIATE; PRAGMA data_version")
            .fetch_one(&mut w.conn)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                // Whether or not BEGIN took, no transaction stays open.
                let _ = sqlx::query("ROLLBACK").execute(&mut w.conn).await;
                return Err(e);
            }
        };
        w.open = true;
        w.data_version = version;
        w.pending_head = None;
        Ok(WriteTx::Writer(WriterTurn(Some(w))))
    }

    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.end("COMMIT").await
    }

    pub(crate) async fn rollback(self) -> Result<(), sqlx::Error> {
        self.end("ROLLBACK").await
    }

    async fn end(self, statement: &'static str) -> Result<(), sqlx::Error> {
        match self {
            WriteTx::Pooled(tx) if statement == "COMMIT" => tx.commit().await,
            WriteTx::Pooled(tx) => tx.rollback().await,
            WriteTx::Writer(mut w) => {
                sqlx::query(statement).execute(&mut w.conn).await?;
                if statement == "COMMIT" {
                    w.committed();
                } else {
                    w.open = false;
                    w.pending_head = None;
                }
                Ok(())
            }
        }
    }
}

impl SqliteWriter {
    pub(crate) fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }

    pub(crate) fn moved_audit_head(&mut self, count: i64, mac: &[u8]) {
        self.pending_head = Some((count, mac.to_vec()));
    }

    /// The transaction committed (also when the COMMIT went in the same
    /// text as its last statements): the head it moved to is the head now.
    pub(crate) fn committed(&mut self) {
        self.open = false;
        if let Some((count, mac)) = self.pending_head.take() {
            self.audit_head = Some((count, mac, self.data_version));
        }
    }
}

impl WriteTx {
    /// The audit head, if known without reading it: this connection wrote it
    /// last and no other connection has committed since.
    pub(crate) fn known_audit_head(&self) -> Option<(i64, Vec<u8>)> {
        let WriteTx::Writer(w) = self else {
            return None;
        };
        if let Some(head) = &w.pending_head {
            return Some(head.clone());
        }
        match &w.audit_head {
            Some((count, mac, version)) if *version == w.data_version => {
                Some((*count, mac.clone()))
            }
            _ => None,
        }
    }

    /// The head this transaction moves the chain to (known once it commits).
    pub(crate) fn moved_audit_head(&mut self, count: i64, mac: &[u8]) {
        if let WriteTx::Writer(w) = self {
            w.moved_audit_head(count, mac);
        }
    }
}

impl Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        match self {
            WriteTx::Pooled(tx) => tx,
            WriteTx::Writer(w) => &w.conn,
        }
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            WriteTx::Pooled(tx) => tx,
            WriteTx::Writer(w) => &mut w.conn,
        }
    }
}
