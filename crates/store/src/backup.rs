//! A consistent copy of a SQLite store while its server runs (for
//! `keyward backup`): `VACUUM INTO` reads the database in one transaction
//! (writers go on meanwhile) and writes a compact copy.

use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};

use crate::StoreResult;

/// Copies the store `db` to `out` (which must not exist).
pub async fn snapshot_sqlite(db: &Path, out: &Path) -> StoreResult<()> {
    let mut c = SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))?
        .read_only(true)
        .busy_timeout(std::time::Duration::from_secs(30))
        .connect()
        .await?;
    sqlx::query("VACUUM INTO ?")
        .bind(out.display().to_string())
        .execute(&mut c)
        .await?;
    c.close().await?;
    Ok(())
}

/// The audit trail's length and head MAC (hex) of a SQLite store file.
pub async fn audit_head_of_sqlite(db: &Path) -> StoreResult<(i64, String)> {
    let mut c = SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))?
        .read_only(true)
        .connect()
        .await?;
    let row = sqlx::query("SELECT count, last_mac FROM audit_head WHERE id = 1")
        .fetch_one(&mut c)
        .await?;
    let count: i64 = row.try_get("count")?;
    let mac: Vec<u8> = row.try_get("last_mac")?;
    c.close().await?;
    Ok((count, hex::encode(mac)))
}
