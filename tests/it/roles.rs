//! The shipped database roles (deploy/sql): migrations run as the owner, the worker runs end to
//! end as the restricted role, and that role can change rows only as the worker does (no DDL).

use std::process::Command;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

use crate::support::db::{admin_url, sha256_hex};
use crate::support::worker::BinaryWorker;
use crate::support::{Moto, Stack, TestDb, wait_until};

const ROLES_SQL: &str = include_str!("../../deploy/sql/roles.sql");
const GRANTS_SQL: &str = include_str!("../../deploy/sql/grants.sql");
const DEADLINE: Duration = Duration::from_secs(60);

/// The URL of database `name` on the test server, as `user`.
fn url_as(user: &str, name: &str) -> String {
    let admin = admin_url();
    let (base, _) = admin.rsplit_once('/').expect("admin URL names a database");
    let (scheme, rest) = base.split_once("://").expect("admin URL has a scheme");
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}@{host}/{name}")
}

async fn connect(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// `datapack-worker migrate` with DATABASE_URL = `url`: whether it exited 0, and what it said.
fn migrate(url: &str) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_datapack-worker"))
        .arg("migrate")
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "error")
        .output()
        .expect("spawn datapack-worker migrate");
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), said)
}

/// Runs a shipped SQL file twice: the second run proves it can be applied again.
async fn apply_twice(pool: &PgPool, sql: &'static str, file: &str) {
    for run in ["", " again"] {
        sqlx::raw_sql(sql)
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("{file}{run}: {e}"));
    }
}

/// The SQLSTATE of a statement that must fail.
async fn refused(pool: &PgPool, sql: &str) -> String {
    match sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
    {
        Ok(_) => panic!("the worker role was allowed to run: {sql}"),
        Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()).unwrap_or_default(),
        Err(e) => panic!("{sql}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_runs_as_the_restricted_role_and_cannot_change_the_schema() {
    // A fresh database, not migrated: the owner role must create everything.
    let name = format!("dpw_roles_{}_{}", std::process::id(), fastrand::u64(..));
    let admin = connect(&admin_url()).await;
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let superuser = connect(&url_as("postgres", &name)).await;
    apply_twice(&superuser, ROLES_SQL, "roles.sql").await;
    let owner_url = url_as("datapack_owner", &name);
    let worker_url = url_as("datapack_worker", &name);

    let (migrated, said) = migrate(&worker_url);
    assert!(!migrated, "the worker role must not be able to migrate");
    assert!(
        said.contains("permission denied"),
        "migrate as worker: {said}"
    );
    let (migrated, said) = migrate(&owner_url);
    assert!(migrated, "migrate as datapack_owner: {said}");
    let owner = connect(&owner_url).await;
    apply_twice(&owner, GRANTS_SQL, "grants.sql").await;
    let tables_owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = 'datapack_owner'",
    )
    .fetch_one(&superuser)
    .await
    .unwrap();
    assert!(
        tables_owned >= 3,
        "the owner owns the tables ({tables_owned})"
    );
    sqlx::query("INSERT INTO datapack (identifier) VALUES ('dp-roles')")
        .execute(&owner)
        .await
        .unwrap();

    // End to end as the worker role: a presigned upload becomes a row, then its removal
    // marks it deleted (UPDATE, the removal table, the ordering function, advisory locks).
    let stack = Stack::new(&Moto::shared().endpoint).await;
    let db = TestDb {
        url: worker_url.clone(),
        pool: superuser.clone(),
    };
    let worker = BinaryWorker::spawn(&stack, &db, &[]).await;
    let body = "bytes the restricted role records".as_bytes();
    stack
        .put_presigned(
            "dp-roles",
            "in",
            "file.txt",
            "Uploader",
            "u@example.com",
            body,
        )
        .await;
    let rows = wait_until("the upload's row", DEADLINE, || async {
        let rows = db.rows().await;
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].sha256, sha256_hex(body));
    assert!(!rows[0].deleted);
    stack.delete("dp-roles/in/file.txt").await;
    db.wait_removed(DEADLINE).await;
    assert_eq!(
        stack.dlq_depth().await,
        (0, 0),
        "nothing was dead-lettered for lack of a privilege"
    );
    drop(worker);

    // No DDL and no DML beyond the worker's own, as the worker role.
    let restricted = connect(&worker_url).await;
    for sql in [
        "CREATE TABLE intruder (id int)",
        "CREATE INDEX intruder_idx ON datapack_resource (sha256)",
        "ALTER TABLE datapack_resource ADD COLUMN intruder text",
        "DROP TABLE datapack_object_removal",
        "TRUNCATE datapack_resource",
        "DELETE FROM datapack_resource",
        "UPDATE datapack SET identifier = 'renamed'",
        "INSERT INTO datapack (identifier) VALUES ('not-created-by-default')",
        "CREATE FUNCTION intruder() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "SELECT count(*) FROM _sqlx_migrations",
    ] {
        let code = refused(&restricted, sql).await;
        assert!(
            code == "42501" || code == "42809",
            "{sql}: expected a privilege error, got SQLSTATE {code}"
        );
    }

    restricted.close().await;
    owner.close().await;
    superuser.close().await;
    // Best effort: a database left behind by a failed assertion is harmless.
    let _ = sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await;
}
