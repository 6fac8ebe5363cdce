//! How the worker meets its database: a schema that lacks what the writes need stops `run` and
//! `migrate` with what is missing; settings that would sign in wrongly are refused before start.

use std::process::Command;

use crate::support::TestDb;

fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_datapack-worker"))
}

/// `run` on a database missing a column refuses to start and names it; `migrate` (which has
/// nothing left to apply) says the same instead of "applied".
#[tokio::test]
async fn a_schema_missing_a_column_stops_run_and_migrate_naming_it() {
    let db = TestDb::new().await;
    sqlx::query("ALTER TABLE datapack_resource DROP COLUMN submitter_email")
        .execute(&db.pool)
        .await
        .unwrap();
    let migrate = worker()
        .args(["migrate", "--database-url", &db.url])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&migrate.stderr);
    assert_eq!(migrate.status.code(), Some(1), "{said}");
    assert!(said.contains("datapack_resource.submitter_email"), "{said}");
    let run = worker()
        .args([
            "run",
            "--database-url",
            &db.url,
            "--sqs-queue-url",
            "http://127.0.0.1:9/q",
            "--sqs-dead-letter-queue-url",
            "http://127.0.0.1:9/dlq",
            "--s3-bucket",
            "b",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "y")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{said}");
    assert!(said.contains("datapack_resource.submitter_email"), "{said}");
}

/// IAM tokens only over TLS, one password source, an empty `DATABASE_URL` read as unset: each
/// refusal exits 2 (a configuration error) and never shows a password.
#[test]
fn credential_settings_that_cannot_work_exit_2_without_a_secret() {
    let refused = |env: &[(&str, &str)], says: &str| {
        let out = worker()
            .arg("migrate")
            .env_remove("DATABASE_URL")
            .env_remove("DB_DSN")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{said}");
        assert!(said.contains(says), "{said}");
        assert!(
            !said.contains("hunter2") && !said.contains("p@ss"),
            "{said}"
        );
    };
    refused(
        &[
            ("DATABASE_URL", "postgres://app@db.example/app"),
            ("DATABASE_IAM_AUTH", "true"),
        ],
        "sslmode=verify-full",
    );
    refused(
        &[
            ("DATABASE_URL", "postgres://app:hunter2@db.example/app"),
            ("DATABASE_PASSWORD_FILE", "/nonexistent"),
        ],
        "DATABASE_PASSWORD_FILE",
    );
    refused(
        &[(
            "DATABASE_URL",
            "postgres://app:p@ss:w/rd@db.example:5432/app",
        )],
        "percent-encode",
    );
    // An empty DATABASE_URL does not hide DB_DSN: the refusal is about DB_DSN's URL.
    refused(
        &[
            ("DATABASE_URL", ""),
            ("DB_DSN", "postgres://app@db.example/app"),
            ("DATABASE_IAM_AUTH", "true"),
        ],
        "sslmode=verify-full",
    );
}
