//! The two backends the store's tests run on: SQLite (a file in a temp
//! folder) and PostgreSQL at KEYWARD_TEST_POSTGRES_URL in a schema of its
//! own (skipped with a notice without it, failing when CI is set).

use std::str::FromStr;

use keyward_store::*;
use sqlx::Connection;
use uuid::Uuid;

/// One store per backend, with what `cleanup` needs.
pub type TestStores = Vec<(Store, Option<(String, String)>, Option<tempfile::TempDir>)>;

pub async fn stores(test: &str, key: AuditKey) -> TestStores {
    let mut out = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("k.db").display());
    out.push((Store::open(&url, key).await.unwrap(), None, Some(dir)));
    match std::env::var("KEYWARD_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => {
            let schema = format!("t_{}_{}", test, Uuid::new_v4().simple());
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
                .execute(&mut c)
                .await
                .unwrap();
            let opts = sqlx::postgres::PgConnectOptions::from_str(&url)
                .unwrap()
                .options([("search_path", schema.as_str())]);
            out.push((
                Store::open_postgres(opts, key).await.unwrap(),
                Some((url, schema)),
                None,
            ));
        }
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI is set but KEYWARD_TEST_POSTGRES_URL is not (run .ci/postgres)")
        }
        _ => eprintln!("NOTICE: KEYWARD_TEST_POSTGRES_URL is not set; {test} ran on SQLite only"),
    }
    out
}

pub async fn cleanup(store: Store, pg: Option<(String, String)>) {
    store.close().await;
    if let Some((url, schema)) = pg {
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&mut c)
            .await
            .unwrap();
    }
}
