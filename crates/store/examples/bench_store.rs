//! Store benchmark (not a test; never run by .ci/run):
//!
//!   cargo run --release -p keyward-store --example bench_store -- [USERS] [QUERIES]
//!
//! Loads USERS users (default 1,000,000) through `Store::import_users` in batches of
//! 50,000 (one transaction each, as an API import would), then times QUERIES (default
//! 10,000) login-prefix searches (first page of 50) over random prefixes, and the same
//! for display-name prefixes. Runs on SQLite in a temporary folder, and on PostgreSQL
//! when KEYWARD_BENCH_POSTGRES_URL or KEYWARD_TEST_POSTGRES_URL is set (in a schema of
//! its own, dropped afterwards).

use keyward_domain::{AuditDraft, NewUser, UserStatus};
use keyward_store::{ImportMode, Store, UserSearch, UserSearchField};
use sqlx::Connection;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

const BATCH: usize = 50_000;
const FIRST: &[&str] = &[
    "james",
    "mary",
    "robert",
    "patricia",
    "john",
    "jennifer",
    "michael",
    "linda",
    "david",
    "elizabeth",
    "william",
    "barbara",
    "richard",
    "susan",
    "joseph",
    "jessica",
    "thomas",
    "sarah",
    "charles",
    "karen",
    "amelie",
    "zoe",
    "yusuf",
    "xavier",
    "wei",
    "valentina",
    "ulrich",
    "tomas",
    "sofia",
    "quentin",
    "olga",
    "nina",
];
const LAST: &[&str] = &[
    "smith",
    "johnson",
    "williams",
    "brown",
    "jones",
    "garcia",
    "miller",
    "davis",
    "rodriguez",
    "martinez",
    "hernandez",
    "lopez",
    "gonzalez",
    "wilson",
    "anderson",
    "thomas",
    "taylor",
    "moore",
    "jackson",
    "martin",
    "lee",
    "perez",
    "thompson",
    "white",
    "harris",
    "sanchez",
    "clark",
    "ramirez",
    "lewis",
    "robinson",
    "walker",
    "young",
];

/// xorshift64*: reproducible, dependency-free randomness for data and prefixes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn user(i: usize, rng: &mut Rng) -> NewUser {
    let f = FIRST[rng.below(FIRST.len())];
    let l = LAST[rng.below(LAST.len())];
    let login = format!("{}.{}{}", f, l, i);
    let cap = |s: &str| s[..1].to_uppercase() + &s[1..];
    NewUser {
        upn: Some(format!("{login}@example.com")),
        display_name: format!("{} {}", cap(f), cap(l)),
        email: Some(format!("{login}@example.com")),
        attributes: BTreeMap::from([(
            "objectSid".to_string(),
            format!("S-1-5-21-1004336348-1177238915-682003330-{}", 1000 + i),
        )]),
        status: UserStatus::Active,
        login,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

async fn run(label: &str, store: &Store, users: usize, queries: usize) {
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let started = Instant::now();
    let mut inserted = 0u64;
    let mut logins: Vec<String> = Vec::with_capacity(users);
    let mut names: Vec<String> = Vec::with_capacity(users);
    let mut gen_time = Duration::ZERO;
    let mut i = 0;
    while i < users {
        let n = BATCH.min(users - i);
        let g = Instant::now();
        let batch: Vec<NewUser> = (i..i + n).map(|k| user(k, &mut rng)).collect();
        gen_time += g.elapsed();
        for u in &batch {
            if logins.len() < 100_000 {
                logins.push(u.login.clone());
                names.push(u.display_name.clone());
            }
        }
        let r = store
            .import_users(
                &batch,
                ImportMode::AllOrNothing,
                &AuditDraft::new("bench", "user.import", "users"),
            )
            .await
            .expect("import");
        assert!(r.rejected.is_empty(), "{:?}", &r.rejected[..1]);
        inserted += r.inserted;
        i += n;
    }
    let import = started.elapsed() - gen_time;
    println!(
        "[{label}] imported {inserted} users in {:.1} s ({:.0} users/s; batches of {BATCH}, data generation excluded)",
        import.as_secs_f64(),
        inserted as f64 / import.as_secs_f64()
    );

    for by in [UserSearchField::Login, UserSearchField::DisplayName] {
        let mut times = Vec::with_capacity(queries);
        let mut total_rows = 0usize;
        // Warm-up, then timed queries over random prefixes of 1 to 6 characters of
        // existing values (so most prefixes match at least a page).
        for q in 0..queries + 200 {
            let source = match by {
                UserSearchField::Login => &logins[rng.below(logins.len())],
                UserSearchField::DisplayName => &names[rng.below(names.len())],
            };
            let len = 1 + rng.below(6).min(source.len() - 1);
            let prefix: String = source.chars().take(len).collect();
            let t = Instant::now();
            let page = store
                .search_users(&UserSearch {
                    prefix,
                    by,
                    after: None,
                    limit: 50,
                })
                .await
                .expect("search");
            let d = t.elapsed();
            if q >= 200 {
                times.push(d);
                total_rows += page.items.len();
            }
        }
        times.sort();
        println!(
            "[{label}] search by {:?} prefix, page of 50, {queries} queries: p50 {}  p99 {}  max {}  (avg rows {:.1})",
            by,
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            ms(*times.last().unwrap()),
            total_rows as f64 / queries as f64
        );
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let users: usize = args
        .next()
        .map(|s| s.parse().expect("USERS"))
        .unwrap_or(1_000_000);
    let queries: usize = args
        .next()
        .map(|s| s.parse().expect("QUERIES"))
        .unwrap_or(10_000);
    let key = [42u8; 32];

    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    let store = Store::open(&url, key).await.expect("open sqlite");
    run("sqlite", &store, users, queries).await;
    store.close().await;
    let size = std::fs::metadata(dir.path().join("bench.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!("[sqlite] database file {:.0} MB", size as f64 / 1e6);

    let pg = std::env::var("KEYWARD_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("KEYWARD_TEST_POSTGRES_URL"));
    match pg {
        Ok(url) if !url.is_empty() => {
            let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
            let mut c = sqlx::PgConnection::connect(&url)
                .await
                .expect("connect postgres");
            sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
                .execute(&mut c)
                .await
                .expect("schema");
            let opts = sqlx::postgres::PgConnectOptions::from_str(&url)
                .unwrap()
                .options([("search_path", schema.as_str())]);
            let store = Store::open_postgres(opts, key)
                .await
                .expect("open postgres");
            run("postgres", &store, users, queries).await;
            store.close().await;
            sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&mut c)
                .await
                .expect("drop schema");
        }
        _ => println!(
            "[postgres] skipped: set KEYWARD_BENCH_POSTGRES_URL or KEYWARD_TEST_POSTGRES_URL"
        ),
    }
}
