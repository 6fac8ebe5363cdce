//! The store layer: PostgreSQL's pool, migrations and probe ([`self`]), the idempotent write of
//! a batch ([`write`]), the announcement of its changes to listeners ([`notify`]), and the group
//! commit that batches concurrent jobs into it ([`writer`]).

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::disposition::{DeadLetterReason, Failure, RetryReason};

pub mod notify;
pub mod write;
pub mod writer;

pub use write::{NewResource, Removal, Sha256Source, Survivor, Write, WriteOutcome, apply};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub statement_timeout: Duration,
}

/// Builds a pool that connects lazily, so the worker starts (and reports not-ready) while the
/// database is down instead of crashing.
pub fn pool(options: PgConnectOptions, settings: &PoolSettings) -> PgPool {
    let options = options.application_name("datapack-worker").options([(
        "statement_timeout",
        settings.statement_timeout.as_millis().to_string(),
    )]);
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(0)
        .acquire_timeout(settings.acquire_timeout)
        .test_before_acquire(true)
        .connect_lazy_with(options)
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Probe used for readiness and outage recovery: reads the table, and checks that this role
/// may still do what the writes need (a revoked grant fails every write while a plain SELECT
/// still passes, the database's form of a brownout).
pub async fn ping(pool: &PgPool) -> Result<(), Failure> {
    let allowed: bool = sqlx::query_scalar(
        "SELECT has_table_privilege('datapack_resource', 'SELECT, INSERT, UPDATE')
            AND has_table_privilege('datapack_object_removal', 'SELECT, INSERT, UPDATE')
            AND has_table_privilege('datapack', 'SELECT')
         FROM (SELECT 1 FROM datapack_resource LIMIT 0) AS readable
         RIGHT JOIN (VALUES (1)) AS one ON true",
    )
    .fetch_one(pool)
    .await
    .map_err(classify)?;
    if allowed {
        Ok(())
    } else {
        Err(Failure::transient(
            RetryReason::DatabaseMisconfigured,
            "this role may not write datapack_resource / datapack_object_removal",
        ))
    }
}

/// Maps a database error to its disposition by SQLSTATE class. Nothing here declares the
/// database down: the worker asks its probe first (see `health`).
pub fn classify(error: sqlx::Error) -> Failure {
    use sqlx::Error as E;
    let reason = match &error {
        E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::Protocol(_) => {
            RetryReason::DatabaseUnavailable
        }
        E::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            match code.get(..2).unwrap_or_default() {
                // connection exception, operator intervention, insufficient resources
                "08" | "57" | "53" => RetryReason::DatabaseUnavailable,
                // undefined table/column, privileges, auth, unknown database: configuration
                // faults; the probe (which checks the privileges the writes need) tells
                // whether they hit everyone.
                "42" | "28" | "3D" => RetryReason::DatabaseMisconfigured,
                "22" => {
                    return Failure::permanent(DeadLetterReason::InvalidData, error.to_string());
                }
                // integrity constraint: about one row; a batch is retried job by job.
                "23" => RetryReason::DatabaseConstraint,
                _ => RetryReason::DatabaseError,
            }
        }
        _ => RetryReason::DatabaseError,
    };
    Failure::transient(reason, error)
}
