// Repository bodies, compiled once per backend: `lib.rs` includes this file into
// `sqlite_repo` and `pg_repo`, each with its own `DB` type and `dialect` module. Writing
// the SQL once keeps both backends in step; every statement uses `$N` placeholders,
// which both SQLite (through sqlx) and PostgreSQL accept.
//
// Every mutating function takes the audit event to append and appends it in the same
// write transaction, so no change can be stored without its audit record.

use crate::error::{is_foreign_key_violation, is_unique_violation, StoreError, StoreResult};
use crate::types::*;
use crate::{audit_mac, now, AuditKey, GENESIS_MAC};
use keyward_domain::{
    Account, AuditDraft, AuditEvent, AuditOutcome, Device, DeviceHistoryEntry, DevicePolicy,
    DeviceState, NewDevice, NewUser, PasskeyService, Role, SealedSecret, Serial, SettingKey,
    SettingValue, Settings, StateChange, User, ValidationError,
};
use sqlx::{Pool, Row};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use time::OffsetDateTime;
use uuid::Uuid;

type Tx = dialect::Tx;
type DbRow = <DB as sqlx::Database>::Row;

pub async fn migrate(pool: &Pool<DB>) -> StoreResult<()> {
    dialect::MIGRATOR.run(pool).await?;
    Ok(())
}

fn parse<T>(entity: &'static str, s: &str) -> StoreResult<T>
where
    T: FromStr<Err = ValidationError>,
{
    s.parse()
        .map_err(|e: ValidationError| StoreError::corrupt(entity, e.message))
}

fn parse_opt<T>(entity: &'static str, s: Option<String>) -> StoreResult<Option<T>>
where
    T: FromStr<Err = ValidationError>,
{
    s.map(|s| parse(entity, &s)).transpose()
}

fn conflict(code: &'static str, field: &'static str, message: impl Into<String>) -> StoreError {
    StoreError::Conflict {
        code,
        field,
        message: message.into(),
    }
}

/// Page size: 0 means the default 50; at most MAX_PAGE.
fn page_limit(limit: u32) -> i64 {
    i64::from(if limit == 0 { 50 } else { limit.min(MAX_PAGE) })
}

/// Exclusive upper bound of the strings starting with `prefix` (byte order): no string
/// with the prefix can continue with a character above U+10FFFF.
fn prefix_upper(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

/// "($1,$2,..),(..)" groups for a multi-row VALUES list. On SQLite the placeholders are
/// anonymous `?`: sqlx looks each numbered parameter's name up with
/// sqlite3_bind_parameter_name, a linear scan, which makes thousands of `$N` quadratic.
fn values_list(rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 6);
    for r in 0..rows {
        if r > 0 {
            s.push(',');
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push(',');
            }
            if dialect::ANONYMOUS_PLACEHOLDERS {
                s.push('?');
            } else {
                s.push('$');
                s.push_str(&(r * cols + c + 1).to_string());
            }
        }
        s.push(')');
    }
    s
}

// ---------------------------------------------------------------- audit trail

/// Appends `draft` to the chain inside `tx`: locks the head row, links the record to
/// the previous MAC and moves the head, all in the caller's transaction.
async fn append_audit_tx(tx: &mut Tx, key: &AuditKey, draft: &AuditDraft) -> StoreResult<i64> {
    let record = audit_record(tx, key, draft).await?;
    dialect::append_audit_record(tx, &record).await?;
    Ok(record.seq)
}

/// The next record of the chain: reads (and on PostgreSQL locks) the head.
async fn audit_record(
    tx: &mut Tx,
    key: &AuditKey,
    draft: &AuditDraft,
) -> StoreResult<crate::AuditRecord> {
    let (count, prev_mac) = match dialect::known_audit_head(tx) {
        Some(head) => head,
        None => {
            let head_sql = format!(
                "SELECT count, last_mac FROM audit_head WHERE id = 1{}",
                dialect::FOR_UPDATE
            );
            let head = sqlx::query(&head_sql).fetch_one(&mut **tx).await?;
            (head.try_get("count")?, head.try_get("last_mac")?)
        }
    };
    let at = now();
    let mut details = draft.details.clone();
    keyward_domain::audit::redact_secrets(&mut details);
    let details = serde_json::to_string(&details).expect("JSON value serialises");
    let mac = audit_mac(
        key,
        &prev_mac,
        at,
        &draft.actor,
        &draft.action,
        &draft.target,
        draft.outcome.as_str(),
        &details,
    );
    Ok(crate::AuditRecord {
        seq: count + 1,
        at,
        actor: draft.actor.clone(),
        action: draft.action.clone(),
        target: draft.target.clone(),
        outcome: draft.outcome.as_str(),
        details,
        prev_mac,
        mac,
    })
}

/// Appends the change's audit record and commits (on SQLite's writer
/// connection in one round trip to its thread).
async fn finish(mut tx: Tx, key: &AuditKey, audit: &AuditDraft) -> StoreResult<()> {
    let record = audit_record(&mut tx, key, audit).await?;
    dialect::append_audit_record_and_commit(tx, &record).await?;
    Ok(())
}

pub async fn append_audit(pool: &Pool<DB>, key: &AuditKey, audit: &AuditDraft) -> StoreResult<i64> {
    let mut tx = dialect::begin_write(pool).await?;
    let seq = append_audit_tx(&mut tx, key, audit).await?;
    tx.commit().await?;
    Ok(seq)
}

pub async fn audit_head<'e, E: sqlx::Executor<'e, Database = DB>>(
    pool: E,
) -> StoreResult<AuditCheckpoint> {
    let r = sqlx::query("SELECT count, last_mac FROM audit_head WHERE id = 1")
        .fetch_one(pool)
        .await?;
    Ok(AuditCheckpoint {
        count: r.try_get("count")?,
        last_mac: r.try_get("last_mac")?,
    })
}

struct AuditRow {
    seq: i64,
    at: OffsetDateTime,
    actor: String,
    action: String,
    target: String,
    outcome: String,
    details: String,
    prev_mac: Vec<u8>,
    mac: Vec<u8>,
}

fn audit_row(r: &DbRow) -> StoreResult<AuditRow> {
    Ok(AuditRow {
        seq: r.try_get("seq")?,
        at: r.try_get("at")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        outcome: r.try_get("outcome")?,
        details: r.try_get("details")?,
        prev_mac: r.try_get("prev_mac")?,
        mac: r.try_get("mac")?,
    })
}

const AUDIT_COLS: &str = "seq, at, actor, action, target, outcome, details, prev_mac, mac";
const AUDIT_BATCH: i64 = 5000;

async fn audit_batch<'e, E: sqlx::Executor<'e, Database = DB>>(
    pool: E,
    after: i64,
    limit: i64,
) -> StoreResult<Vec<AuditRow>> {
    let sql = format!("SELECT {AUDIT_COLS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2");
    sqlx::query(&sql)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?
        .iter()
        .map(audit_row)
        .collect()
}

pub async fn list_audit(
    pool: &Pool<DB>,
    after_seq: i64,
    limit: u32,
) -> StoreResult<Vec<AuditEvent>> {
    audit_batch(pool, after_seq, page_limit(limit))
        .await?
        .into_iter()
        .map(|r| {
            Ok(AuditEvent {
                seq: r.seq,
                at: r.at,
                actor: r.actor,
                action: r.action,
                target: r.target,
                outcome: parse::<AuditOutcome>("audit_log", &r.outcome)?,
                details: serde_json::from_str(&r.details)
                    .map_err(|e| StoreError::corrupt("audit_log", e))?,
            })
        })
        .collect()
}

/// One record whose link to the previous record in sequence order is broken.
struct BrokenLink {
    seq: i64,
    claimed_prev: Vec<u8>,
    mac: Vec<u8>,
    next_seq: Option<i64>,
    after_gap: bool,
}

/// Walks the log in sequence order and reports what is wrong with it (see
/// [`AuditProblem`]). Streams in batches; a second pass runs only to explain broken links.
pub async fn verify_audit_chain(
    pool: &Pool<DB>,
    key: &AuditKey,
    checkpoint: Option<&AuditCheckpoint>,
) -> StoreResult<AuditVerification> {
    // One snapshot for the head and every record: an append committed
    // while this runs is neither half-seen nor taken for one made outside
    // Keyward.
    let mut snap = dialect::begin_snapshot(pool).await?;
    let head = audit_head(&mut *snap).await?;
    let mut problems = Vec::new();
    let mut broken: Vec<BrokenLink> = Vec::new();
    let mut records = 0i64;
    let mut last_seq = 0i64;
    let mut last_mac: Vec<u8> = GENESIS_MAC.to_vec();
    let mut last_changed = false;
    let mut checkpoint_seen = false;
    loop {
        let batch = audit_batch(&mut *snap, last_seq, AUDIT_BATCH).await?;
        if batch.is_empty() {
            break;
        }
        for r in batch {
            records += 1;
            if let Some(b) = broken.last_mut() {
                if b.next_seq.is_none() && b.seq == last_seq {
                    b.next_seq = Some(r.seq);
                }
            }
            let expected = audit_mac(
                key,
                &r.prev_mac,
                r.at,
                &r.actor,
                &r.action,
                &r.target,
                &r.outcome,
                &r.details,
            );
            let changed = expected[..] != r.mac[..];
            let gap = r.seq != last_seq + 1;
            if gap {
                problems.push(AuditProblem::Deleted {
                    first: last_seq + 1,
                    last: r.seq - 1,
                    before_seq: r.seq,
                });
            }
            if changed {
                problems.push(AuditProblem::Changed { seq: r.seq });
            } else if r.prev_mac != last_mac && !last_changed {
                broken.push(BrokenLink {
                    seq: r.seq,
                    claimed_prev: r.prev_mac.clone(),
                    mac: r.mac.clone(),
                    next_seq: None,
                    after_gap: gap,
                });
            }
            if let Some(cp) = checkpoint {
                if r.seq == cp.count {
                    checkpoint_seen = r.mac == cp.last_mac;
                }
            }
            last_changed = changed;
            last_seq = r.seq;
            last_mac = r.mac;
        }
    }

    // Second pass: where do the broken records' predecessors and successors sit, and
    // where is the record the head points at?
    let head_mismatch = head.count != last_seq || head.last_mac != last_mac;
    if !broken.is_empty() || head_mismatch {
        let wanted_macs: HashSet<Vec<u8>> = broken
            .iter()
            .map(|b| b.claimed_prev.clone())
            .chain(std::iter::once(head.last_mac.clone()))
            .collect();
        let wanted_prevs: HashSet<Vec<u8>> = broken.iter().map(|b| b.mac.clone()).collect();
        let mut seq_of_mac: HashMap<Vec<u8>, i64> = HashMap::new();
        let mut successor_of: HashMap<Vec<u8>, i64> = HashMap::new();
        let mut after = 0i64;
        loop {
            let batch = audit_batch(&mut *snap, after, AUDIT_BATCH).await?;
            if batch.is_empty() {
                break;
            }
            for r in batch {
                if wanted_macs.contains(&r.mac) {
                    seq_of_mac.insert(r.mac.clone(), r.seq);
                }
                if wanted_prevs.contains(&r.prev_mac) {
                    successor_of.insert(r.prev_mac.clone(), r.seq);
                }
                after = r.seq;
            }
        }
        for b in &broken {
            let pred = if b.claimed_prev[..] == GENESIS_MAC[..] {
                Some(0)
            } else {
                seq_of_mac.get(&b.claimed_prev).copied()
            };
            match pred {
                None if b.after_gap => {} // the gap already says records were deleted
                None => problems.push(AuditProblem::PredecessorMissing { seq: b.seq }),
                Some(pred) => {
                    // In place when its successor follows it: then it is the record
                    // before it that moved, and that record is reported itself.
                    let succ = successor_of.get(&b.mac).copied();
                    if succ != b.next_seq {
                        problems.push(AuditProblem::Reordered {
                            seq: b.seq,
                            belongs_after: pred,
                        });
                    }
                }
            }
        }
        if head.count > last_seq {
            problems.push(AuditProblem::Truncated {
                head_count: head.count,
                last_seq,
            });
        } else if head.count < last_seq {
            problems.push(AuditProblem::BeyondHead {
                head_count: head.count,
                last_seq,
            });
        } else if head.last_mac != last_mac && !seq_of_mac.contains_key(&head.last_mac) {
            problems.push(AuditProblem::Truncated {
                head_count: head.count,
                last_seq,
            });
        }
    }
    if let Some(cp) = checkpoint {
        if cp.count > 0 && !checkpoint_seen {
            problems.push(AuditProblem::CheckpointMissing { count: cp.count });
        }
    }
    snap.rollback().await?;
    Ok(AuditVerification {
        records,
        head,
        problems,
    })
}

// ---------------------------------------------------------------- users

const USER_COLS: &str = "id, login, upn, display_name, email, attributes, status";

fn user_from_row(r: &DbRow) -> StoreResult<User> {
    user_from_row_as(r, "")
}

/// A column's name under `prefix`: a join names each table's columns apart
/// (see [`aliased`]).
fn col(prefix: &str, name: &'static str) -> std::borrow::Cow<'static, str> {
    if prefix.is_empty() {
        std::borrow::Cow::Borrowed(name)
    } else {
        std::borrow::Cow::Owned(format!("{prefix}{name}"))
    }
}

/// `cols` of `table` as a select list, each renamed `{prefix}{column}`.
fn aliased(table: &str, cols: &str, prefix: &str) -> String {
    cols.split(", ")
        .map(|c| format!("{table}.{c} AS {prefix}{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn user_from_row_as(r: &DbRow, p: &str) -> StoreResult<User> {
    let attributes: String = r.try_get(col(p, "attributes").as_ref())?;
    let status: String = r.try_get(col(p, "status").as_ref())?;
    Ok(User {
        id: r.try_get(col(p, "id").as_ref())?,
        login: r.try_get(col(p, "login").as_ref())?,
        upn: r.try_get(col(p, "upn").as_ref())?,
        display_name: r.try_get(col(p, "display_name").as_ref())?,
        email: r.try_get(col(p, "email").as_ref())?,
        attributes: serde_json::from_str::<BTreeMap<String, String>>(&attributes)
            .map_err(|e| StoreError::corrupt("user", e))?,
        status: parse("user", &status)?,
    })
}

fn attributes_json(a: &BTreeMap<String, String>) -> String {
    serde_json::to_string(a).expect("string map serialises")
}

fn duplicate_login(login: &str) -> StoreError {
    conflict(
        "duplicate_login",
        "login",
        format!("a user with login {login} already exists"),
    )
}

pub async fn create_user(
    pool: &Pool<DB>,
    key: &AuditKey,
    u: &User,
    audit: &AuditDraft,
) -> StoreResult<()> {
    u.validate()?;
    let mut tx = dialect::begin_write(pool).await?;
    let t = now();
    sqlx::query(
        "INSERT INTO users (id, login, upn, display_name, display_name_key, email, attributes, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(u.id)
    .bind(&u.login)
    .bind(&u.upn)
    .bind(&u.display_name)
    .bind(u.display_name.to_lowercase())
    .bind(&u.email)
    .bind(attributes_json(&u.attributes))
    .bind(u.status.as_str())
    .bind(t)
    .bind(t)
    .execute(&mut *tx)
    .await
    .map_err(|e| if is_unique_violation(&e) { duplicate_login(&u.login) } else { e.into() })?;
    finish(tx, key, audit).await
}

pub async fn update_user(
    pool: &Pool<DB>,
    key: &AuditKey,
    u: &User,
    audit: &AuditDraft,
) -> StoreResult<()> {
    u.validate()?;
    let mut tx = dialect::begin_write(pool).await?;
    let res = sqlx::query(
        "UPDATE users SET login = $2, upn = $3, display_name = $4, display_name_key = $5, email = $6, \
         attributes = $7, status = $8, updated_at = $9 WHERE id = $1",
    )
    .bind(u.id)
    .bind(&u.login)
    .bind(&u.upn)
    .bind(&u.display_name)
    .bind(u.display_name.to_lowercase())
    .bind(&u.email)
    .bind(attributes_json(&u.attributes))
    .bind(u.status.as_str())
    .bind(now())
    .execute(&mut *tx)
    .await
    .map_err(|e| if is_unique_violation(&e) { duplicate_login(&u.login) } else { e.into() })?;
    if res.rows_affected() == 0 {
        return Err(StoreError::not_found("user", u.id));
    }
    finish(tx, key, audit).await
}

pub async fn get_user(pool: &Pool<DB>, id: Uuid) -> StoreResult<User> {
    let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
    match sqlx::query(&sql).bind(id).fetch_optional(pool).await? {
        Some(r) => user_from_row(&r),
        None => Err(StoreError::not_found("user", id)),
    }
}

pub async fn get_user_by_login(pool: &Pool<DB>, login: &str) -> StoreResult<User> {
    let sql = format!("SELECT {USER_COLS} FROM users WHERE login = $1");
    match sqlx::query(&sql).bind(login).fetch_optional(pool).await? {
        Some(r) => user_from_row(&r),
        None => Err(StoreError::not_found("user", format!("login={login}"))),
    }
}

pub async fn count_users(pool: &Pool<DB>) -> StoreResult<i64> {
    Ok(sqlx::query("SELECT COUNT(*) AS n FROM users")
        .fetch_one(pool)
        .await?
        .try_get("n")?)
}

fn bad_cursor() -> StoreError {
    StoreError::Validation(ValidationError::new(
        "cursor_invalid",
        "after",
        "the page cursor is not valid",
    ))
}

pub async fn search_users(pool: &Pool<DB>, q: &UserSearch) -> StoreResult<Page<User>> {
    let limit = page_limit(q.limit);
    let rows = match q.by {
        UserSearchField::Login => {
            let lower = q.prefix.clone();
            let upper = prefix_upper(&q.prefix);
            let after = q.after.clone().unwrap_or_default();
            let sql = format!(
                "SELECT {USER_COLS} FROM users WHERE login >= $1 AND login < $2 AND login > $3 ORDER BY login LIMIT $4"
            );
            sqlx::query(&sql)
                .bind(lower)
                .bind(upper)
                .bind(after)
                .bind(limit + 1)
                .fetch_all(pool)
                .await?
        }
        UserSearchField::DisplayName => {
            let prefix = q.prefix.to_lowercase();
            let upper = prefix_upper(&prefix);
            match &q.after {
                None => {
                    let sql = format!(
                        "SELECT {USER_COLS} FROM users WHERE display_name_key >= $1 AND display_name_key < $2 \
                         ORDER BY display_name_key, id LIMIT $3"
                    );
                    sqlx::query(&sql)
                        .bind(prefix)
                        .bind(upper)
                        .bind(limit + 1)
                        .fetch_all(pool)
                        .await?
                }
                Some(c) => {
                    // Cursor: the last row's id (36 characters) then its key.
                    let (id, k) = (
                        c.get(..36).ok_or_else(bad_cursor)?,
                        c.get(36..).ok_or_else(bad_cursor)?,
                    );
                    let id = Uuid::parse_str(id).map_err(|_| bad_cursor())?;
                    let sql = format!(
                        "SELECT {USER_COLS} FROM users WHERE display_name_key >= $1 AND display_name_key < $2 \
                         AND (display_name_key > $3 OR (display_name_key = $3 AND id > $4)) \
                         ORDER BY display_name_key, id LIMIT $5"
                    );
                    sqlx::query(&sql)
                        .bind(prefix)
                        .bind(upper)
                        .bind(k.to_string())
                        .bind(id)
                        .bind(limit + 1)
                        .fetch_all(pool)
                        .await?
                }
            }
        }
    };
    let mut items = rows
        .iter()
        .map(user_from_row)
        .collect::<StoreResult<Vec<_>>>()?;
    let next = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|u| match q.by {
            UserSearchField::Login => u.login.clone(),
            UserSearchField::DisplayName => format!("{}{}", u.id, u.display_name.to_lowercase()),
        })
    } else {
        None
    };
    Ok(Page { items, next })
}

/// Validates every row and rejects duplicates within the batch. Returns the indexes of
/// the rows that may be written.
fn precheck<T>(
    rows: &[T],
    field: &'static str,
    key: impl Fn(&T) -> String,
    validate: impl Fn(&T) -> Result<(), ValidationError>,
    report: &mut ImportReport,
) -> Vec<usize> {
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(rows.len());
    let mut good = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        if let Err(error) = validate(r) {
            report.rejected.push(RowRejection { row: i, error });
            continue;
        }
        let k = key(r);
        if let Some(first) = seen.get(&k) {
            report.rejected.push(RowRejection {
                row: i,
                error: ValidationError::new(
                    format!("duplicate_{field}"),
                    field,
                    format!("{field} {k} also appears in row {first}"),
                ),
            });
            continue;
        }
        seen.insert(k, i);
        good.push(i);
    }
    good
}

pub async fn import_users(
    pool: &Pool<DB>,
    key: &AuditKey,
    users: &[NewUser],
    mode: ImportMode,
    audit: &AuditDraft,
) -> StoreResult<ImportReport> {
    let mut report = ImportReport::default();
    let good = precheck(
        users,
        "login",
        |u| u.login.clone(),
        NewUser::validate,
        &mut report,
    );
    if mode == ImportMode::AllOrNothing && !report.rejected.is_empty() {
        return Ok(report);
    }
    let t = now();
    let mut tx = dialect::begin_write(pool).await?;
    dialect::begin_bulk(&mut tx).await?;
    const COLS: usize = 10;
    let mut duplicates = Vec::new();
    for chunk in good.chunks(dialect::BULK_ROWS) {
        let ids: Vec<Uuid> = chunk.iter().map(|_| Uuid::now_v7()).collect();
        let sql = format!(
            "INSERT INTO users (id, login, upn, display_name, display_name_key, email, attributes, status, created_at, updated_at) \
             VALUES {} ON CONFLICT DO NOTHING",
            values_list(chunk.len(), COLS)
        );
        let mut q = sqlx::query(&sql);
        for (&i, id) in chunk.iter().zip(&ids) {
            let u = &users[i];
            q = q
                .bind(*id)
                .bind(&u.login)
                .bind(&u.upn)
                .bind(&u.display_name)
                .bind(u.display_name.to_lowercase())
                .bind(&u.email)
                .bind(attributes_json(&u.attributes))
                .bind(u.status.as_str())
                .bind(t)
                .bind(t);
        }
        // No RETURNING on the fast path: streaming every row back costs more than the
        // insert. Only when some rows conflicted, ask which of our ids were stored.
        let n = q.execute(&mut *tx).await?.rows_affected();
        report.inserted += n;
        if n as usize != chunk.len() {
            let sql = format!(
                "SELECT id FROM users WHERE id IN {}",
                values_list(1, ids.len())
            );
            let mut q = sqlx::query(&sql);
            for id in &ids {
                q = q.bind(*id);
            }
            let stored: HashSet<Uuid> = q
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get::<Uuid, _>("id"))
                .collect::<Result<_, _>>()?;
            for (&i, id) in chunk.iter().zip(&ids) {
                if !stored.contains(id) {
                    duplicates.push(i);
                }
            }
        }
    }
    dialect::end_bulk(&mut tx).await?;
    let rejected = duplicates.into_iter().map(|i| RowRejection {
        row: i,
        error: ValidationError::new(
            "duplicate_login",
            "login",
            format!("a user with login {} already exists", users[i].login),
        ),
    });
    finish_import(tx, key, audit, report, rejected, mode).await
}

/// The end of a bulk import: adds the rows the store refused as duplicates,
/// then either rolls everything back (all or nothing, with a rejected row)
/// or commits with the audit event carrying the counts.
async fn finish_import(
    tx: Tx,
    key: &AuditKey,
    audit: &AuditDraft,
    mut report: ImportReport,
    duplicates: impl Iterator<Item = RowRejection>,
    mode: ImportMode,
) -> StoreResult<ImportReport> {
    report.rejected.extend(duplicates);
    report.rejected.sort_by_key(|r| r.row);
    if mode == ImportMode::AllOrNothing && !report.rejected.is_empty() {
        tx.rollback().await?;
        report.inserted = 0;
        return Ok(report);
    }
    let audit = audit
        .clone()
        .detail("inserted", report.inserted)
        .detail("rejected", report.rejected.len() as u64);
    finish(tx, key, &audit).await?;
    Ok(report)
}

// ---------------------------------------------------------------- devices

const DEVICE_COLS: &str = "id, device_type, serial, firmware_version, atr, state, reason, assigned_user, device_policy, version, \
     suspended, passkey_reregistration, replaces, replace_reason, temporary_until, puk_rotation_due";

fn device_from_row(r: &DbRow) -> StoreResult<Device> {
    device_from_row_as(r, "")
}

fn device_from_row_as(r: &DbRow, p: &str) -> StoreResult<Device> {
    let serial: String = r.try_get(col(p, "serial").as_ref())?;
    let device_type: String = r.try_get(col(p, "device_type").as_ref())?;
    let state: String = r.try_get(col(p, "state").as_ref())?;
    let atr: Option<Vec<u8>> = r.try_get(col(p, "atr").as_ref())?;
    Ok(Device {
        id: r.try_get(col(p, "id").as_ref())?,
        device_type: parse("device", &device_type)?,
        serial: Serial::parse("serial", &serial)
            .map_err(|e| StoreError::corrupt("device", e.message))?,
        firmware_version: parse_opt("device", r.try_get(col(p, "firmware_version").as_ref())?)?,
        atr: atr.map(keyward_domain::Atr),
        state: parse("device", &state)?,
        reason: parse_opt("device", r.try_get(col(p, "reason").as_ref())?)?,
        assigned_user: r.try_get(col(p, "assigned_user").as_ref())?,
        device_policy: r.try_get(col(p, "device_policy").as_ref())?,
        version: r.try_get(col(p, "version").as_ref())?,
        suspended: r.try_get(col(p, "suspended").as_ref())?,
        passkey_reregistration: r.try_get(col(p, "passkey_reregistration").as_ref())?,
        puk_rotation_due: r.try_get(col(p, "puk_rotation_due").as_ref())?,
        replacement: match r.try_get::<Option<Uuid>, _>(col(p, "replaces").as_ref())? {
            None => None,
            Some(original) => Some(keyward_domain::Replacement {
                original,
                reason: parse("device", &r.try_get::<String, _>(col(p, "replace_reason").as_ref())?)?,
                until: r.try_get(col(p, "temporary_until").as_ref())?,
            }),
        },
    })
}

async fn insert_history(
    tx: &mut Tx,
    device: Uuid,
    actor: &str,
    from: Option<&Device>,
    to: &Device,
    note: Option<&str>,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO device_history (device_id, at, actor, from_state, from_reason, to_state, to_reason, assigned_user, note) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(device)
    .bind(now())
    .bind(actor)
    .bind(from.map(|d| d.state.as_str()))
    .bind(from.and_then(|d| d.reason).map(|r| r.as_str()))
    .bind(to.state.as_str())
    .bind(to.reason.map(|r| r.as_str()))
    .bind(to.assigned_user)
    .bind(note)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn duplicate_serial(serial: Serial) -> StoreError {
    conflict(
        "duplicate_serial",
        "serial",
        format!("a device with serial {serial} already exists"),
    )
}

pub async fn insert_device(
    pool: &Pool<DB>,
    key: &AuditKey,
    d: &NewDevice,
    audit: &AuditDraft,
) -> StoreResult<Device> {
    let dev = d.clone().into_device();
    let mut tx = dialect::begin_write(pool).await?;
    let t = now();
    sqlx::query(
        "INSERT INTO devices (id, device_type, serial, firmware_version, atr, state, reason, assigned_user, device_policy, version, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, NULL, $7, $8, $9)",
    )
    .bind(dev.id)
    .bind(dev.device_type.as_str())
    .bind(dev.serial.to_string())
    .bind(dev.firmware_version.map(|v| v.to_string()))
    .bind(dev.atr.as_ref().map(|a| a.0.clone()))
    .bind(dev.state.as_str())
    .bind(dev.version)
    .bind(t)
    .bind(t)
    .execute(&mut *tx)
    .await
    .map_err(|e| if is_unique_violation(&e) { duplicate_serial(dev.serial) } else { e.into() })?;
    insert_history(&mut tx, dev.id, &audit.actor, None, &dev, Some("imported")).await?;
    finish(tx, key, audit).await?;
    Ok(dev)
}

pub async fn import_devices(
    pool: &Pool<DB>,
    key: &AuditKey,
    devices: &[NewDevice],
    mode: ImportMode,
    audit: &AuditDraft,
) -> StoreResult<ImportReport> {
    let mut report = ImportReport::default();
    let good = precheck(
        devices,
        "serial",
        |d| d.serial.to_string(),
        |_| Ok(()),
        &mut report,
    );
    if mode == ImportMode::AllOrNothing && !report.rejected.is_empty() {
        return Ok(report);
    }
    let t = now();
    let mut tx = dialect::begin_write(pool).await?;
    const COLS: usize = 9;
    let mut duplicates = Vec::new();
    for chunk in good.chunks(dialect::BULK_ROWS) {
        let rows: Vec<Device> = chunk
            .iter()
            .map(|&i| devices[i].clone().into_device())
            .collect();
        let sql = format!(
            "INSERT INTO devices (id, device_type, serial, firmware_version, atr, state, version, created_at, updated_at) \
             VALUES {} ON CONFLICT DO NOTHING RETURNING id",
            values_list(rows.len(), COLS)
        );
        let mut q = sqlx::query(&sql);
        for d in &rows {
            q = q
                .bind(d.id)
                .bind(d.device_type.as_str())
                .bind(d.serial.to_string())
                .bind(d.firmware_version.map(|v| v.to_string()))
                .bind(d.atr.as_ref().map(|a| a.0.clone()))
                .bind(d.state.as_str())
                .bind(d.version)
                .bind(t)
                .bind(t);
        }
        let inserted: HashSet<Uuid> = q
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get::<Uuid, _>("id"))
            .collect::<Result<_, _>>()?;
        report.inserted += inserted.len() as u64;
        for (d, &i) in rows.iter().zip(chunk) {
            if inserted.contains(&d.id) {
                insert_history(&mut tx, d.id, &audit.actor, None, d, Some("imported")).await?;
            } else {
                duplicates.push(i);
            }
        }
    }
    let rejected = duplicates.into_iter().map(|i| RowRejection {
        row: i,
        error: ValidationError::new(
            "duplicate_serial",
            "serial",
            format!("a device with serial {} already exists", devices[i].serial),
        ),
    });
    finish_import(tx, key, audit, report, rejected, mode).await
}

pub async fn get_device(pool: &Pool<DB>, id: Uuid) -> StoreResult<Device> {
    let sql = format!("SELECT {DEVICE_COLS} FROM devices WHERE id = $1");
    match sqlx::query(&sql).bind(id).fetch_optional(pool).await? {
        Some(r) => device_from_row(&r),
        None => Err(StoreError::not_found("device", id)),
    }
}

pub async fn get_device_by_serial(pool: &Pool<DB>, serial: Serial) -> StoreResult<Device> {
    let sql = format!("SELECT {DEVICE_COLS} FROM devices WHERE serial = $1");
    match sqlx::query(&sql)
        .bind(serial.to_string())
        .fetch_optional(pool)
        .await?
    {
        Some(r) => device_from_row(&r),
        None => Err(StoreError::not_found("device", format!("serial={serial}"))),
    }
}

pub async fn list_devices(pool: &Pool<DB>, f: &DeviceFilter) -> StoreResult<Page<Device>> {
    let limit = page_limit(f.limit);
    let mut sql = format!("SELECT {DEVICE_COLS} FROM devices WHERE 1 = 1");
    let mut n = 0;
    let mut next = |sql: &mut String, cond: &str| {
        n += 1;
        sql.push_str(&cond.replace('?', &format!("${n}")));
    };
    if f.state.is_some() {
        next(&mut sql, " AND state = ?");
    }
    if f.device_type.is_some() {
        next(&mut sql, " AND device_type = ?");
    }
    if f.assigned_user.is_some() {
        next(&mut sql, " AND assigned_user = ?");
    }
    if f.device_policy.is_some() {
        next(&mut sql, " AND device_policy = ?");
    }
    if f.serial_prefix.is_some() {
        next(&mut sql, " AND serial >= ?");
        next(&mut sql, " AND serial < ?");
    }
    if f.after.is_some() {
        next(&mut sql, " AND serial > ?");
    }
    next(&mut sql, " ORDER BY serial LIMIT ?");
    let mut q = sqlx::query(&sql);
    if let Some(s) = f.state {
        q = q.bind(s.as_str());
    }
    if let Some(t) = f.device_type {
        q = q.bind(t.as_str());
    }
    if let Some(u) = f.assigned_user {
        q = q.bind(u);
    }
    if let Some(p) = f.device_policy {
        q = q.bind(p);
    }
    if let Some(p) = &f.serial_prefix {
        q = q.bind(p.clone()).bind(prefix_upper(p));
    }
    if let Some(a) = &f.after {
        q = q.bind(a.clone());
    }
    let rows = q.bind(limit + 1).fetch_all(pool).await?;
    let mut items = rows
        .iter()
        .map(device_from_row)
        .collect::<StoreResult<Vec<_>>>()?;
    let next = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|d| d.serial.to_string())
    } else {
        None
    };
    Ok(Page { items, next })
}

pub async fn change_device_state(
    pool: &Pool<DB>,
    key: &AuditKey,
    id: Uuid,
    expected_version: i64,
    change: &StateChange,
    audit: &AuditDraft,
) -> StoreResult<(Device, crate::lifecycle::EffectsDone)> {
    let mut tx = dialect::begin_write(pool).await?;
    let sql = format!("SELECT {DEVICE_COLS} FROM devices WHERE id = $1");
    let current = match sqlx::query(&sql).bind(id).fetch_optional(&mut *tx).await? {
        Some(r) => device_from_row(&r)?,
        None => return Err(StoreError::not_found("device", id)),
    };
    let version_conflict = |v: i64| {
        conflict(
            "version_conflict",
            "version",
            format!(
                "device {} was changed by someone else (version {v}, expected {expected_version})",
                current.serial
            ),
        )
    };
    if current.version != expected_version {
        return Err(version_conflict(current.version));
    }
    let (next, done) = device_change_tx(&mut tx, &current, change, &audit.actor).await?;
    let audit = audit
        .clone()
        .detail("serial", current.serial.to_string())
        .detail("from_state", current.state.as_str())
        .detail("to_state", next.state.as_str())
        .detail("reason", next.reason.map(|r| r.as_str()))
        .detail("version", next.version)
        .detail("certificates_revoked", done.revoked)
        .detail("certificates_held", done.held)
        .detail("certificates_released", done.released)
        .detail("passkey_deletions", done.jobs);
    finish(tx, key, &audit).await?;
    Ok((next, done))
}

pub async fn device_history(pool: &Pool<DB>, id: Uuid) -> StoreResult<Vec<DeviceHistoryEntry>> {
    let rows = sqlx::query(
        "SELECT at, actor, from_state, from_reason, to_state, to_reason, assigned_user, note \
         FROM device_history WHERE device_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let to_state: String = r.try_get("to_state")?;
            Ok(DeviceHistoryEntry {
                at: r.try_get("at")?,
                actor: r.try_get("actor")?,
                from_state: parse_opt::<DeviceState>("device_history", r.try_get("from_state")?)?,
                from_reason: parse_opt("device_history", r.try_get("from_reason")?)?,
                to_state: parse("device_history", &to_state)?,
                to_reason: parse_opt("device_history", r.try_get("to_reason")?)?,
                assigned_user: r.try_get("assigned_user")?,
                note: r.try_get("note")?,
            })
        })
        .collect()
}

// ---------------------------------------------------------------- device policies

fn policy_from_row(r: &DbRow) -> StoreResult<DevicePolicy> {
    policy_from_row_as(r, "")
}

fn policy_from_row_as(r: &DbRow, prefix: &str) -> StoreResult<DevicePolicy> {
    let doc: String = r.try_get(col(prefix, "document").as_ref())?;
    let mut p: DevicePolicy =
        serde_json::from_str(&doc).map_err(|e| StoreError::corrupt("device_policy", e))?;
    p.id = r.try_get(col(prefix, "id").as_ref())?;
    Ok(p)
}

fn duplicate_policy(name: &str) -> StoreError {
    conflict(
        "duplicate_name",
        "name",
        format!("a device policy named {name} already exists"),
    )
}

pub async fn create_policy(
    pool: &Pool<DB>,
    key: &AuditKey,
    p: &DevicePolicy,
    audit: &AuditDraft,
) -> StoreResult<DevicePolicy> {
    p.validate()?;
    let mut p = p.clone();
    if p.id.is_nil() {
        p.id = Uuid::new_v4();
    }
    let t = now();
    let mut tx = dialect::begin_write(pool).await?;
    sqlx::query(
        "INSERT INTO device_policies (id, name, document, version, created_at, updated_at) VALUES ($1, $2, $3, 1, $4, $5)",
    )
    .bind(p.id)
    .bind(&p.name)
    .bind(serde_json::to_string(&p).expect("policy serialises"))
    .bind(t)
    .bind(t)
    .execute(&mut *tx)
    .await
    .map_err(|e| if is_unique_violation(&e) { duplicate_policy(&p.name) } else { e.into() })?;
    finish(tx, key, audit).await?;
    Ok(p)
}

pub async fn update_policy(
    pool: &Pool<DB>,
    key: &AuditKey,
    p: &DevicePolicy,
    audit: &AuditDraft,
) -> StoreResult<()> {
    p.validate()?;
    let mut tx = dialect::begin_write(pool).await?;
    let res = sqlx::query(
        "UPDATE device_policies SET name = $2, document = $3, version = version + 1, updated_at = $4 WHERE id = $1",
    )
    .bind(p.id)
    .bind(&p.name)
    .bind(serde_json::to_string(p).expect("policy serialises"))
    .bind(now())
    .execute(&mut *tx)
    .await
    .map_err(|e| if is_unique_violation(&e) { duplicate_policy(&p.name) } else { e.into() })?;
    if res.rows_affected() == 0 {
        return Err(StoreError::not_found("device_policy", p.id));
    }
    finish(tx, key, audit).await
}

pub async fn get_policy(pool: &Pool<DB>, id: Uuid) -> StoreResult<DevicePolicy> {
    match sqlx::query("SELECT id, document FROM device_policies WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
    {
        Some(r) => policy_from_row(&r),
        None => Err(StoreError::not_found("device_policy", id)),
    }
}

pub async fn get_policy_by_name(pool: &Pool<DB>, name: &str) -> StoreResult<DevicePolicy> {
    match sqlx::query("SELECT id, document FROM device_policies WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await?
    {
        Some(r) => policy_from_row(&r),
        None => Err(StoreError::not_found(
            "device_policy",
            format!("name={name}"),
        )),
    }
}

pub async fn list_policies(pool: &Pool<DB>) -> StoreResult<Vec<DevicePolicy>> {
    sqlx::query("SELECT id, document FROM device_policies ORDER BY name")
        .fetch_all(pool)
        .await?
        .iter()
        .map(policy_from_row)
        .collect()
}

pub async fn delete_policy(
    pool: &Pool<DB>,
    key: &AuditKey,
    id: Uuid,
    audit: &AuditDraft,
) -> StoreResult<()> {
    let mut tx = dialect::begin_write(pool).await?;
    let res = sqlx::query("DELETE FROM device_policies WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_foreign_key_violation(&e) {
                conflict("in_use", "id", "devices still use this device policy")
            } else {
                e.into()
            }
        })?;
    if res.rows_affected() == 0 {
        return Err(StoreError::not_found("device_policy", id));
    }
    finish(tx, key, audit).await
}

// ---------------------------------------------------------------- settings

pub async fn get_settings(pool: &Pool<DB>) -> StoreResult<Settings> {
    let rows = sqlx::query("SELECT key, value FROM settings")
        .fetch_all(pool)
        .await?;
    let mut s = Settings::default();
    for r in rows {
        let k: String = r.try_get("key")?;
        let v: String = r.try_get("value")?;
        match k.parse::<SettingKey>() {
            Ok(key) => {
                let value = key
                    .parse_value(&v)
                    .map_err(|e| StoreError::corrupt("setting", e.message))?;
                s.set(key, value)?;
            }
            // A key a newer version wrote: keep it, ignore it.
            Err(_) => tracing::warn!(key = %k, "ignoring unknown stored setting"),
        }
    }
    Ok(s)
}

async fn upsert_setting(tx: &mut Tx, k: SettingKey, v: SettingValue) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO settings (key, value, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
    )
    .bind(k.as_str())
    .bind(v.to_string())
    .bind(now())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn set_setting(
    pool: &Pool<DB>,
    key: &AuditKey,
    k: SettingKey,
    v: SettingValue,
    audit: &AuditDraft,
) -> StoreResult<Settings> {
    // Check the value against the key before writing anything.
    let mut s = get_settings(pool).await?;
    s.set(k, v)?;
    let mut tx = dialect::begin_write(pool).await?;
    upsert_setting(&mut tx, k, v).await?;
    let audit = audit
        .clone()
        .detail("key", k.as_str())
        .detail("value", v.to_string());
    finish(tx, key, &audit).await?;
    get_settings(pool).await
}

pub async fn put_settings(
    pool: &Pool<DB>,
    key: &AuditKey,
    s: &Settings,
    audit: &AuditDraft,
) -> StoreResult<()> {
    let mut tx = dialect::begin_write(pool).await?;
    for k in SettingKey::ALL {
        upsert_setting(&mut tx, *k, s.get(*k)).await?;
    }
    finish(tx, key, audit).await
}

// ---------------------------------------------------------------- passkey services

const PASSKEY_COLS: &str =
    "id, name, tenant_id, client_id, client_secret, authority_url, graph_url, token_scope, \
     api_version, challenge_timeout_minutes, user_id_attribute, client_certificate_pem";

fn passkey_from_row(r: &DbRow) -> StoreResult<PasskeyService> {
    Ok(PasskeyService {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        tenant_id: r.try_get("tenant_id")?,
        client_id: r.try_get("client_id")?,
        client_secret: SealedSecret(r.try_get("client_secret")?),
        authority_url: r.try_get("authority_url")?,
        graph_url: r.try_get("graph_url")?,
        token_scope: r.try_get("token_scope")?,
        api_version: r.try_get("api_version")?,
        challenge_timeout_minutes: u32::try_from(r.try_get::<i64, _>("challenge_timeout_minutes")?)
            .unwrap_or(keyward_domain::passkey::DEFAULT_CHALLENGE_TIMEOUT_MINUTES),
        user_id_attribute: r.try_get("user_id_attribute")?,
        client_certificate_pem: r.try_get("client_certificate_pem")?,
    })
}

fn duplicate_service(name: &str) -> StoreError {
    conflict(
        "duplicate_name",
        "name",
        format!("a Passkey-Enabled Service named {name} already exists"),
    )
}

pub async fn create_passkey_service(
    pool: &Pool<DB>,
    key: &AuditKey,
    s: &PasskeyService,
    audit: &AuditDraft,
) -> StoreResult<()> {
    s.validate()?;
    let t = now();
    let mut tx = dialect::begin_write(pool).await?;
    sqlx::query(&format!(
        "INSERT INTO passkey_services ({PASSKEY_COLS}, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    ))
    .bind(s.id)
    .bind(&s.name)
    .bind(&s.tenant_id)
    .bind(&s.client_id)
    .bind(&s.client_secret.0)
    .bind(&s.authority_url)
    .bind(&s.graph_url)
    .bind(&s.token_scope)
    .bind(&s.api_version)
    .bind(i64::from(s.challenge_timeout_minutes))
    .bind(&s.user_id_attribute)
    .bind(&s.client_certificate_pem)
    .bind(t)
    .bind(t)
    .execute(&mut *tx)
    .await
    .map_err(|e| if is_unique_violation(&e) { duplicate_service(&s.name) } else { e.into() })?;
    finish(tx, key, audit).await
}

pub async fn update_passkey_service(
    pool: &Pool<DB>,
    key: &AuditKey,
    s: &PasskeyService,
    audit: &AuditDraft,
) -> StoreResult<()> {
    s.validate()?;
    let mut tx = dialect::begin_write(pool).await?;
    let res = sqlx::query(
        "UPDATE passkey_services SET name = $2, tenant_id = $3, client_id = $4, client_secret = $5, \
         authority_url = $6, graph_url = $7, token_scope = $8, updated_at = $9, \
         api_version = $10, challenge_timeout_minutes = $11, user_id_attribute = $12, \
         client_certificate_pem = $13 WHERE id = $1",
    )
    .bind(s.id)
    .bind(&s.name)
    .bind(&s.tenant_id)
    .bind(&s.client_id)
    .bind(&s.client_secret.0)
    .bind(&s.authority_url)
    .bind(&s.graph_url)
    .bind(&s.token_scope)
    .bind(now())
    .bind(&s.api_version)
    .bind(i64::from(s.challenge_timeout_minutes))
    .bind(&s.user_id_attribute)
    .bind(&s.client_certificate_pem)
    .execute(&mut *tx)
    .await
    .map_err(|e| if is_unique_violation(&e) { duplicate_service(&s.name) } else { e.into() })?;
    if res.rows_affected() == 0 {
        return Err(StoreError::not_found("passkey_service", s.id));
    }
    finish(tx, key, audit).await
}

pub async fn get_passkey_service(pool: &Pool<DB>, id: Uuid) -> StoreResult<PasskeyService> {
    match sqlx::query(&format!(
        "SELECT {PASSKEY_COLS} FROM passkey_services WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?
    {
        Some(r) => passkey_from_row(&r),
        None => Err(StoreError::not_found("passkey_service", id)),
    }
}

pub async fn get_passkey_service_by_name(
    pool: &Pool<DB>,
    name: &str,
) -> StoreResult<PasskeyService> {
    match sqlx::query(&format!(
        "SELECT {PASSKEY_COLS} FROM passkey_services WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(pool)
    .await?
    {
        Some(r) => passkey_from_row(&r),
        None => Err(StoreError::not_found(
            "passkey_service",
            format!("name={name}"),
        )),
    }
}

pub async fn list_passkey_services(pool: &Pool<DB>) -> StoreResult<Vec<PasskeyService>> {
    sqlx::query(&format!(
        "SELECT {PASSKEY_COLS} FROM passkey_services ORDER BY name"
    ))
    .fetch_all(pool)
    .await?
    .iter()
    .map(passkey_from_row)
    .collect()
}

pub async fn delete_passkey_service(
    pool: &Pool<DB>,
    key: &AuditKey,
    id: Uuid,
    audit: &AuditDraft,
) -> StoreResult<()> {
    let mut tx = dialect::begin_write(pool).await?;
    let res = sqlx::query("DELETE FROM passkey_services WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if res.rows_affected() == 0 {
        return Err(StoreError::not_found("passkey_service", id));
    }
    finish(tx, key, audit).await
}

// ---------------------------------------------------------------- accounts

const ACCOUNT_COLS: &str =
    "id, login, role, password_hash, must_change_password, user_id, disabled";

fn account_from_row(r: &DbRow) -> StoreResult<Account> {
    let role: String = r.try_get("role")?;
    Ok(Account {
        id: r.try_get("id")?,
        login: r.try_get("login")?,
        role: parse::<Role>("account", &role)?,
        password_hash: r.try_get("password_hash")?,
        must_change_password: r.try_get("must_change_password")?,
        user_id: r.try_get("user_id")?,
        disabled: r.try_get("disabled")?,
    })
}

fn account_write_error(e: sqlx::Error, a: &Account) -> StoreError {
    if is_unique_violation(&e) {
        // login or user_id: say which from the constraint when the backend names it.
        let on_user = matches!(&e, sqlx::Error::Database(d) if d.constraint().is_some_and(|c| c.contains("user_id")) || d.message().contains("user_id"));
        if on_user {
            conflict(
                "duplicate_user_account",
                "user_id",
                "this user already has an account",
            )
        } else {
            conflict(
                "duplicate_login",
                "login",
                format!("an account with login {} already exists", a.login),
            )
        }
    } else if is_foreign_key_violation(&e) {
        StoreError::Validation(ValidationError::new(
            "reference_not_found",
            "user_id",
            "the linked user does not exist",
        ))
    } else {
        e.into()
    }
}

pub async fn create_account(
    pool: &Pool<DB>,
    key: &AuditKey,
    a: &Account,
    audit: &AuditDraft,
) -> StoreResult<()> {
    a.validate()?;
    let t = now();
    let mut tx = dialect::begin_write(pool).await?;
    sqlx::query(&format!(
        "INSERT INTO accounts ({ACCOUNT_COLS}, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    ))
    .bind(a.id)
    .bind(&a.login)
    .bind(a.role.as_str())
    .bind(&a.password_hash)
    .bind(a.must_change_password)
    .bind(a.user_id)
    .bind(a.disabled)
    .bind(t)
    .bind(t)
    .execute(&mut *tx)
    .await
    .map_err(|e| account_write_error(e, a))?;
    finish(tx, key, audit).await
}

pub async fn update_account(
    pool: &Pool<DB>,
    key: &AuditKey,
    a: &Account,
    audit: &AuditDraft,
) -> StoreResult<()> {
    a.validate()?;
    let mut tx = dialect::begin_write(pool).await?;
    let res = sqlx::query(
        "UPDATE accounts SET login = $2, role = $3, password_hash = $4, must_change_password = $5, user_id = $6, \
         disabled = $7, updated_at = $8 WHERE id = $1",
    )
    .bind(a.id)
    .bind(&a.login)
    .bind(a.role.as_str())
    .bind(&a.password_hash)
    .bind(a.must_change_password)
    .bind(a.user_id)
    .bind(a.disabled)
    .bind(now())
    .execute(&mut *tx)
    .await
    .map_err(|e| account_write_error(e, a))?;
    if res.rows_affected() == 0 {
        return Err(StoreError::not_found("account", a.id));
    }
    finish(tx, key, audit).await
}

pub async fn set_password(
    pool: &Pool<DB>,
    key: &AuditKey,
    id: Uuid,
    password_hash: &str,
    must_change_password: bool,
    audit: &AuditDraft,
) -> StoreResult<()> {
    let mut tx = dialect::begin_write(pool).await?;
    let res = sqlx::query("UPDATE accounts SET password_hash = $2, must_change_password = $3, updated_at = $4 WHERE id = $1")
        .bind(id)
        .bind(password_hash)
        .bind(must_change_password)
        .bind(now())
        .execute(&mut *tx)
        .await?;
    if res.rows_affected() == 0 {
        return Err(StoreError::not_found("account", id));
    }
    finish(tx, key, audit).await
}

pub async fn get_account(pool: &Pool<DB>, id: Uuid) -> StoreResult<Account> {
    match sqlx::query(&format!(
        "SELECT {ACCOUNT_COLS} FROM accounts WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?
    {
        Some(r) => account_from_row(&r),
        None => Err(StoreError::not_found("account", id)),
    }
}

pub async fn get_account_by_login(pool: &Pool<DB>, login: &str) -> StoreResult<Account> {
    match sqlx::query(&format!(
        "SELECT {ACCOUNT_COLS} FROM accounts WHERE login = $1"
    ))
    .bind(login)
    .fetch_optional(pool)
    .await?
    {
        Some(r) => account_from_row(&r),
        None => Err(StoreError::not_found("account", format!("login={login}"))),
    }
}

pub async fn list_accounts(pool: &Pool<DB>) -> StoreResult<Vec<Account>> {
    sqlx::query(&format!(
        "SELECT {ACCOUNT_COLS} FROM accounts ORDER BY login"
    ))
    .fetch_all(pool)
    .await?
    .iter()
    .map(account_from_row)
    .collect()
}

pub async fn count_accounts(pool: &Pool<DB>) -> StoreResult<i64> {
    Ok(sqlx::query("SELECT COUNT(*) AS n FROM accounts")
        .fetch_one(pool)
        .await?
        .try_get("n")?)
}

// ---------------------------------------------------------------- sessions

pub async fn create_session(
    pool: &Pool<DB>,
    key: &AuditKey,
    s: &Session,
    audit: &AuditDraft,
) -> StoreResult<()> {
    let mut tx = dialect::begin_write(pool).await?;
    sqlx::query("INSERT INTO sessions (id_hash, account_id, csrf_token, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(&s.id_hash)
        .bind(s.account_id)
        .bind(&s.csrf_token)
        .bind(s.created_at)
        .bind(s.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_foreign_key_violation(&e) {
                StoreError::not_found("account", s.account_id)
            } else {
                e.into()
            }
        })?;
    finish(tx, key, audit).await
}

/// The session with this id hash, if it exists and has not expired at `at`.
pub async fn get_session(
    pool: &Pool<DB>,
    id_hash: &[u8],
    at: OffsetDateTime,
) -> StoreResult<Option<Session>> {
    let row = sqlx::query(
        "SELECT id_hash, account_id, csrf_token, created_at, expires_at FROM sessions WHERE id_hash = $1 AND expires_at > $2",
    )
    .bind(id_hash)
    .bind(at)
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        Ok(Session {
            id_hash: r.try_get("id_hash")?,
            account_id: r.try_get("account_id")?,
            csrf_token: r.try_get("csrf_token")?,
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
        })
    })
    .transpose()
}

pub async fn delete_session(
    pool: &Pool<DB>,
    key: &AuditKey,
    id_hash: &[u8],
    audit: &AuditDraft,
) -> StoreResult<bool> {
    let mut tx = dialect::begin_write(pool).await?;
    let n = sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
        .bind(id_hash)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    finish(tx, key, audit).await?;
    Ok(n > 0)
}

/// Ends the account's browser sessions but `keep` (the one making the
/// change), inside `tx`; how many ended.
async fn end_sessions_tx(tx: &mut Tx, account_id: Uuid, keep: Option<&[u8]>) -> StoreResult<u64> {
    let keep = keep.unwrap_or(&[]);
    Ok(
        sqlx::query("DELETE FROM sessions WHERE account_id = $1 AND id_hash <> $2")
            .bind(account_id)
            .bind(keep)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
    )
}

/// An account changed by an administrator (role, disabled, a new one-time
/// password) with its browser sessions ended (`end_sessions`) in the same
/// transaction; how many ended.
pub async fn update_account_ending_sessions(
    pool: &Pool<DB>,
    key: &AuditKey,
    a: &Account,
    end_sessions: bool,
    audit: &AuditDraft,
) -> StoreResult<u64> {
    a.validate()?;
    let mut tx = dialect::begin_write(pool).await?;
    let res = sqlx::query(
        "UPDATE accounts SET role = $2, password_hash = $3, must_change_password = $4, disabled = $5, updated_at = $6 WHERE id = $1",
    )
    .bind(a.id)
    .bind(a.role.as_str())
    .bind(&a.password_hash)
    .bind(a.must_change_password)
    .bind(a.disabled)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    if res.rows_affected() == 0 {
        return Err(StoreError::not_found("account", a.id));
    }
    let ended = if end_sessions {
        end_sessions_tx(&mut tx, a.id, None).await?
    } else {
        0
    };
    let audit = audit.clone().detail("sessions_ended", ended);
    finish(tx, key, &audit).await?;
    Ok(ended)
}

/// One's own new password: the account's other sessions end with it.
pub async fn change_own_password(
    pool: &Pool<DB>,
    key: &AuditKey,
    id: Uuid,
    password_hash: &str,
    keep_session: Option<&[u8]>,
    audit: &AuditDraft,
) -> StoreResult<u64> {
    let mut tx = dialect::begin_write(pool).await?;
    let res = sqlx::query("UPDATE accounts SET password_hash = $2, must_change_password = $3, updated_at = $4 WHERE id = $1")
        .bind(id)
        .bind(password_hash)
        .bind(false)
        .bind(now())
        .execute(&mut *tx)
        .await?;
    if res.rows_affected() == 0 {
        return Err(StoreError::not_found("account", id));
    }
    let ended = end_sessions_tx(&mut tx, id, keep_session).await?;
    let audit = audit.clone().detail("other_sessions_ended", ended);
    finish(tx, key, &audit).await?;
    Ok(ended)
}

/// Housekeeping (not audited: it changes nothing anyone could still use).
pub async fn delete_expired_sessions(pool: &Pool<DB>, at: OffsetDateTime) -> StoreResult<u64> {
    Ok(sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
        .bind(at)
        .execute(pool)
        .await?
        .rows_affected())
}

// ---------------------------------------------------------------- API tokens

const TOKEN_COLS: &str =
    "id, name, role, token_hmac, created_by, created_at, last_used_at, revoked_at, expires_at";

fn token_from_row(r: &DbRow) -> StoreResult<ApiToken> {
    let role: String = r.try_get("role")?;
    Ok(ApiToken {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        role: parse("api_token", &role)?,
        token_hmac: r.try_get("token_hmac")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        last_used_at: r.try_get("last_used_at")?,
        revoked_at: r.try_get("revoked_at")?,
        expires_at: r.try_get("expires_at")?,
    })
}

/// Tokens made before expiry existed get one (`at`); once.
pub async fn expire_legacy_tokens(pool: &Pool<DB>, at: OffsetDateTime) -> StoreResult<u64> {
    Ok(
        sqlx::query("UPDATE api_tokens SET expires_at = $1 WHERE expires_at IS NULL")
            .bind(at)
            .execute(pool)
            .await?
            .rows_affected(),
    )
}

pub async fn create_api_token(
    pool: &Pool<DB>,
    key: &AuditKey,
    t: &ApiToken,
    audit: &AuditDraft,
) -> StoreResult<()> {
    keyward_domain::validate::name("name", &t.name)?;
    let mut tx = dialect::begin_write(pool).await?;
    sqlx::query(&format!(
        "INSERT INTO api_tokens ({TOKEN_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    ))
    .bind(t.id)
    .bind(&t.name)
    .bind(t.role.as_str())
    .bind(&t.token_hmac)
    .bind(&t.created_by)
    .bind(t.created_at)
    .bind(t.last_used_at)
    .bind(t.revoked_at)
    .bind(t.expires_at)
    .execute(&mut *tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            conflict("duplicate_token", "token", "this token already exists")
        } else {
            e.into()
        }
    })?;
    finish(tx, key, audit).await
}

/// The token with this HMAC, revoked or not (the caller checks `revoked_at`).
pub async fn find_api_token(pool: &Pool<DB>, token_hmac: &[u8]) -> StoreResult<Option<ApiToken>> {
    sqlx::query(&format!(
        "SELECT {TOKEN_COLS} FROM api_tokens WHERE token_hmac = $1"
    ))
    .bind(token_hmac)
    .fetch_optional(pool)
    .await?
    .map(|r| token_from_row(&r))
    .transpose()
}

pub async fn list_api_tokens(pool: &Pool<DB>) -> StoreResult<Vec<ApiToken>> {
    sqlx::query(&format!(
        "SELECT {TOKEN_COLS} FROM api_tokens ORDER BY created_at, id"
    ))
    .fetch_all(pool)
    .await?
    .iter()
    .map(token_from_row)
    .collect()
}

pub async fn revoke_api_token(
    pool: &Pool<DB>,
    key: &AuditKey,
    id: Uuid,
    audit: &AuditDraft,
) -> StoreResult<()> {
    let mut tx = dialect::begin_write(pool).await?;
    let res =
        sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .bind(now())
            .execute(&mut *tx)
            .await?;
    if res.rows_affected() == 0 {
        return Err(StoreError::not_found("api_token", id));
    }
    finish(tx, key, audit).await
}

/// Records a use (not audited; the server may call it at most once a minute per token).
pub async fn touch_api_token(pool: &Pool<DB>, id: Uuid, at: OffsetDateTime) -> StoreResult<()> {
    sqlx::query("UPDATE api_tokens SET last_used_at = $2 WHERE id = $1")
        .bind(id)
        .bind(at)
        .execute(pool)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------- secrets

pub async fn put_secret(
    pool: &Pool<DB>,
    key: &AuditKey,
    name: &str,
    ciphertext: &[u8],
    audit: &AuditDraft,
) -> StoreResult<()> {
    let t = now();
    let mut tx = dialect::begin_write(pool).await?;
    sqlx::query(
        "INSERT INTO secrets (name, ciphertext, created_at, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO UPDATE SET ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
    )
    .bind(name)
    .bind(ciphertext)
    .bind(t)
    .bind(t)
    .execute(&mut *tx)
    .await?;
    finish(tx, key, audit).await
}

pub async fn get_secret(pool: &Pool<DB>, name: &str) -> StoreResult<Option<Vec<u8>>> {
    Ok(
        sqlx::query("SELECT ciphertext FROM secrets WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?
            .map(|r| r.try_get("ciphertext"))
            .transpose()?,
    )
}

pub async fn delete_secret(
    pool: &Pool<DB>,
    key: &AuditKey,
    name: &str,
    audit: &AuditDraft,
) -> StoreResult<bool> {
    let mut tx = dialect::begin_write(pool).await?;
    let n = sqlx::query("DELETE FROM secrets WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    finish(tx, key, audit).await?;
    Ok(n > 0)
}

/// Removes a stored setting that no longer exists and answers its value
/// (a release folding it into something else moves it there).
pub async fn take_retired_setting(
    pool: &Pool<DB>,
    key: &AuditKey,
    name: &str,
    audit: &AuditDraft,
) -> StoreResult<Option<String>> {
    let mut tx = dialect::begin_write(pool).await?;
    let value: Option<String> = sqlx::query("SELECT value FROM settings WHERE key = $1")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.try_get("value"))
        .transpose()?;
    if value.is_none() {
        tx.commit().await?;
        return Ok(None);
    }
    sqlx::query("DELETE FROM settings WHERE key = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    finish(tx, key, audit).await?;
    Ok(value)
}
