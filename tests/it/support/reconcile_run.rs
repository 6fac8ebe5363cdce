//! Runs of `datapack-worker reconcile`, the real binary, and what they leave in the database.

use std::process::{Command, Output, Stdio};

use serde_json::Value;
use sqlx::Row;

use super::worker::moto_env;
use super::{Stack, TestDb};

/// The binary's `reconcile` of the stack's bucket into `db`, with S3 at `endpoint` and `extra`
/// flags: its JSON report on stdout, its progress logged, warnings only.
pub fn command(stack: &Stack, db: &TestDb, endpoint: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_datapack-worker"));
    moto_env(&mut command, endpoint)
        .args([
            "reconcile",
            "--database-url",
            &db.url,
            "--s3-bucket",
            &stack.bucket,
            "--json",
            "--progress",
            "log",
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    command
}

/// Runs a reconcile to its end; its exit status and JSON report.
pub async fn reconcile(stack: &Stack, db: &TestDb, extra: &[&str]) -> (Output, Value) {
    reconcile_via(stack, db, &stack.endpoint, extra).await
}

/// The same, with S3 at `endpoint` (a proxy in front of moto).
pub async fn reconcile_via(
    stack: &Stack,
    db: &TestDb,
    endpoint: &str,
    extra: &[&str],
) -> (Output, Value) {
    let mut command = command(stack, db, endpoint, extra);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): stdout {} stderr {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, report)
}

/// The number at `path` in a report, 0 if there is none.
pub fn n(report: &Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(report, |v, p| &v[*p])
        .as_u64()
        .unwrap_or(0)
}

/// (key, etag, sha256, live) of every row, in key order.
pub async fn rows(db: &TestDb) -> Vec<(String, String, String, bool)> {
    sqlx::query(
        "SELECT object_key, etag, sha256, deleted_at IS NULL FROM datapack_resource
         ORDER BY object_key, etag",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

/// (key, etag) of every live row, in key order.
pub async fn live_keys(db: &TestDb) -> Vec<(String, String)> {
    rows(db)
        .await
        .into_iter()
        .filter(|r| r.3)
        .map(|r| (r.0, r.1))
        .collect()
}
