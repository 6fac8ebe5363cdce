//! The store layer: how connections are made ([`connect`]: credentials, ramp, backpressure),
//! migrations, the probe and the schema it checks ([`schema`]), the idempotent write of a batch
//! ([`write`]), the announcement of its changes to listeners ([`notify`]), and the group commit
//! that batches concurrent jobs into it ([`writer`]).

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool};

use crate::disposition::{DeadLetterReason, Failure, RetryReason};

pub(crate) mod connect;
pub(crate) mod iam;
pub mod notify;
pub(crate) mod reconcile;
pub(crate) mod schema;
pub mod write;
pub mod writer;

pub(crate) use connect::{Database, Password};
pub use write::{
    NewResource, Removal, Sha256Source, Survivor, Write, WriteOptions, WriteOutcome, apply,
};

pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub statement_timeout: Duration,
    /// A connection idle this long is closed (`DATABASE_IDLE_TIMEOUT_SECS`).
    pub idle_timeout: Duration,
}

/// Builds a pool with fixed options that connects lazily, so the worker starts (and reports
/// not-ready) while the database is down instead of crashing. The worker itself builds a
/// [`Database`], whose connections get fresh credentials.
pub fn pool(options: PgConnectOptions, settings: &PoolSettings) -> PgPool {
    let options = options.application_name("datapack-worker").options([(
        "statement_timeout",
        settings.statement_timeout.as_millis().to_string(),
    )]);
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(0)
        .idle_timeout(settings.idle_timeout)
        .acquire_timeout(settings.acquire_timeout)
        .test_before_acquire(true)
        .connect_lazy_with(options)
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Longest the probe waits for a pooled connection before it connects on its own to learn why
/// there is none.
const PROBE_ACQUIRE: Duration = Duration::from_secs(4);

/// Probe used for readiness and outage recovery: checks that the schema holds what the writes
/// need and that this role may still do them (a revoked grant or a dropped column fails every
/// write while a plain SELECT still passes: the database's form of a brownout). When the pool
/// has no connection to give, the error is the database's own answer to a direct connection
/// ("connection refused", "password authentication failed"), not the pool's timeout.
pub(crate) async fn ping(db: &Database) -> Result<(), Failure> {
    let pooled = match tokio::time::timeout(PROBE_ACQUIRE, db.acquire()).await {
        Ok(Ok(connection)) => Some(connection),
        Ok(Err(error)) if !matches!(error, sqlx::Error::PoolTimedOut) => {
            return Err(classify(error));
        }
        _ => None,
    };
    match pooled {
        Some(mut connection) => check(&mut connection).await,
        None => {
            let mut direct = db.connect_directly().await.map_err(classify)?;
            let checked = check(&mut direct).await;
            let _ = sqlx::Connection::close(direct).await;
            checked
        }
    }
}

/// The probe's checks on one connection: the schema, then the privileges.
async fn check(connection: &mut PgConnection) -> Result<(), Failure> {
    let missing = schema::missing(connection).await.map_err(classify)?;
    if !missing.is_empty() {
        return Err(Failure::transient(
            RetryReason::DatabaseMisconfigured,
            schema::Drift(missing),
        ));
    }
    let allowed: bool = sqlx::query_scalar(
        "SELECT has_table_privilege('datapack_resource', 'SELECT, INSERT, UPDATE')
            AND has_table_privilege('datapack_object_removal', 'SELECT, INSERT, UPDATE')
            AND has_table_privilege('datapack', 'SELECT')
            AND has_function_privilege($1, 'EXECUTE')
         FROM (SELECT 1 FROM datapack_resource LIMIT 0) AS readable
         RIGHT JOIN (VALUES (1)) AS one ON true",
    )
    .bind(schema::WRITE_BATCH)
    .fetch_one(&mut *connection)
    .await
    .map_err(classify)?;
    if allowed {
        Ok(())
    } else {
        Err(Failure::transient(
            RetryReason::DatabaseMisconfigured,
            "this role may not write datapack_resource / datapack_object_removal, or not run \
             datapack_write_batch",
        ))
    }
}

/// What a SQLSTATE says about the failure, by class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Retry(RetryReason),
    /// The data of this write: a dead letter.
    Data,
}

/// The disposition of a SQLSTATE. Nothing here declares the database down: the worker asks its
/// probe first (see `health`), and the probe checks the schema and the grants the writes need.
pub(crate) fn fault(code: &str) -> Fault {
    Fault::Retry(match code.get(..2).unwrap_or_default() {
        // connection exception, operator intervention (shutdown, terminated), insufficient
        // resources (53300 too_many_connections: a refusal of *more* connections, handled as
        // backpressure by the writer before it ever gets here)
        "08" | "57" | "53" => RetryReason::DatabaseUnavailable,
        // undefined table/column/function (42P01, 42703, 42883), privileges, auth, unknown
        // database or schema: the database's configuration, never the message's. The probe
        // checks the schema and the grants, so it fails too and the message is released.
        "42" | "28" | "3D" | "3F" => RetryReason::DatabaseMisconfigured,
        "22" => return Fault::Data,
        // integrity constraint: about one row; a batch is retried job by job.
        "23" => RetryReason::DatabaseConstraint,
        _ => RetryReason::DatabaseError,
    })
}

/// Maps a database error to its disposition (see [`fault`]).
pub(crate) fn classify(error: sqlx::Error) -> Failure {
    use sqlx::Error as E;
    let reason = match &error {
        E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::Protocol(_) => {
            RetryReason::DatabaseUnavailable
        }
        // The credentials could not be made (password file, IAM signing).
        E::Configuration(_) => RetryReason::DatabaseMisconfigured,
        E::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            match fault(&code) {
                Fault::Retry(reason) => reason,
                Fault::Data => {
                    return Failure::permanent(DeadLetterReason::InvalidData, error.to_string());
                }
            }
        }
        _ => RetryReason::DatabaseError,
    };
    Failure::transient(reason, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_drift_and_refusals_are_the_databases_fault() {
        use RetryReason as R;
        for (code, expected) in [
            ("42703", Fault::Retry(R::DatabaseMisconfigured)),
            ("42P01", Fault::Retry(R::DatabaseMisconfigured)),
            ("42883", Fault::Retry(R::DatabaseMisconfigured)),
            ("28P01", Fault::Retry(R::DatabaseMisconfigured)),
            ("3F000", Fault::Retry(R::DatabaseMisconfigured)),
            ("53300", Fault::Retry(R::DatabaseUnavailable)),
            ("57P01", Fault::Retry(R::DatabaseUnavailable)),
            ("23505", Fault::Retry(R::DatabaseConstraint)),
            ("22001", Fault::Data),
            ("", Fault::Retry(R::DatabaseError)),
        ] {
            assert_eq!(fault(code), expected, "{code}");
        }
        let failure = classify(sqlx::Error::Configuration("no file".into()));
        assert_eq!(failure.reason(), "database_misconfigured");
    }
}
