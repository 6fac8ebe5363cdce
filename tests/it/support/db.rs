//! A fresh, migrated PostgreSQL database per test.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};

use super::wait_until;
use datapack_worker::ops::health::Health;
use datapack_worker::ops::watchdog::Watchdog;
use datapack_worker::store::writer::{Writer, WriterSettings};

pub struct TestDb {
    pub url: String,
    pub pool: PgPool,
}

/// The server to create test databases on; `TEST_DATABASE_ADMIN_URL` overrides it.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A resource row as the tests read it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceRow {
    pub datapack: String,
    pub object_key: String,
    pub path: String,
    pub display: String,
    pub content_type: Option<String>,
    pub length: i64,
    pub etag: String,
    pub sha256: String,
    pub submitter_name: Option<String>,
    pub submitter_email: Option<String>,
    pub deleted: bool,
}

impl TestDb {
    /// The two columns of every row `sql` returns for its one text parameter.
    pub async fn pairs<A, B>(&self, sql: &'static str, param: &str) -> Vec<(A, B)>
    where
        (A, B): for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        sqlx::query_as(sql)
            .bind(param)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    /// Locks `datapack_resource` until the returned transaction ends, so the worker's next write
    /// waits; `wait_for_blocked_write` tells when one does.
    pub async fn lock_resources(&self) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut lock = self.pool.begin().await.unwrap();
        sqlx::query("LOCK TABLE datapack_resource IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *lock)
            .await
            .unwrap();
        lock
    }

    /// Waits until a write is queued behind [`TestDb::lock_resources`]'s lock (not merely
    /// "something in flight").
    pub async fn wait_for_blocked_write(&self, deadline: std::time::Duration) {
        super::wait_until("the worker's write waiting on the lock", deadline, || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'datapack_resource'::regclass",
            )
            .fetch_one(&self.pool)
            .await
            .ok()?;
            (waiting > 0).then_some(())
        })
        .await;
    }

    pub async fn new() -> TestDb {
        let name = format!("dpw_test_{}_{}", std::process::id(), fastrand::u64(..));
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&admin_url())
            .await
            .expect("PostgreSQL (scripts/ensure-postgres.sh)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let (base, _) = admin_url()
            .rsplit_once('/')
            .map(|(b, d)| (b.to_owned(), d.to_owned()))
            .unwrap();
        let url = format!("{base}/{name}");
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap();
        datapack_worker::store::migrate(&pool).await.unwrap();
        TestDb { url, pool }
    }

    pub async fn add_datapack(&self, identifier: &str) {
        sqlx::query("INSERT INTO datapack (identifier) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(identifier)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    pub async fn rows(&self) -> Vec<ResourceRow> {
        sqlx::query(
            "SELECT d.identifier, r.object_key, r.path, r.display, r.content_type, r.length, r.etag, r.sha256,
                    r.submitter_name, r.submitter_email, r.deleted_at IS NOT NULL AS deleted
             FROM datapack_resource r JOIN datapack d ON d.id = r.datapack_id ORDER BY r.object_key, r.id",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|r| ResourceRow {
            datapack: r.get(0),
            object_key: r.get(1),
            path: r.get(2),
            display: r.get(3),
            content_type: r.get(4),
            length: r.get(5),
            etag: r.get(6),
            sha256: r.get(7),
            submitter_name: r.get(8),
            submitter_email: r.get(9),
            deleted: r.get(10),
        })
        .collect()
    }

    pub async fn count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM datapack_resource")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Waits until there are at least `n` rows.
    pub async fn wait_rows(&self, n: i64, deadline: Duration) {
        wait_until(&format!("{n} rows"), deadline, || async {
            (self.count().await >= n).then_some(())
        })
        .await;
    }

    /// Waits until the first row (a test's one key) is marked deleted.
    pub async fn wait_removed(&self, deadline: Duration) {
        wait_until("the row marked deleted", deadline, || async {
            self.rows()
                .await
                .first()
                .is_some_and(|r| r.deleted)
                .then_some(())
        })
        .await;
    }
}

/// The worker's group-commit writer on this database alone (one writer task, batches of at most
/// `max_batch`), with the health and the watchdog it reports to.
pub fn writer(db: &TestDb, max_batch: usize) -> (Writer, Health, Watchdog) {
    let health = Health::new();
    let watchdog = Watchdog::new(health.clone());
    let (writer, _tasks) = Writer::spawn(
        db.pool.clone(),
        WriterSettings {
            writers: 1,
            max_batch,
            options: datapack_worker::store::WriteOptions {
                create_datapacks: false,
                notify: true,
            },
            timeout: Duration::from_secs(30),
        },
        health.clone(),
        &watchdog,
    );
    (writer, health, watchdog)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    datapack_worker::process::fetch::hex(&sha2::Sha256::digest(bytes))
}
