//! The checkpoint and lease of a reconcile scope, in `datapack_reconcile`.
//!
//! One row per (bucket, prefix). A run claims it with a lease it renews while it works; a second
//! reconciler whose scope overlaps a leased one (the same prefix, or one inside the other) is
//! refused, so the work is never done twice at once. After each page whose repairs are complete,
//! the run saves the page's last key and its counts: a run that stops (killed, interrupted, its
//! host lost) is continued from there by the next one, once the lease has run out (at once
//! after an interrupt, which releases it). A finished scope starts over on the next run.

use std::time::Duration;

use sqlx::{PgConnection, PgPool, Row};

/// How long a lease lasts without renewal: a crashed run's scope is free again after this.
pub(crate) const LEASE: Duration = Duration::from_secs(60);
/// How often a running reconcile renews its lease.
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckpointError {
    #[error("the lease on this scope was lost to {0:?}: another reconcile took it over")]
    LeaseLost(Option<String>),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The scope's row, as this run holds it.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    pool: PgPool,
    pub(crate) bucket: String,
    pub(crate) prefix: String,
    pub(crate) owner: String,
}

/// What claiming a scope came to.
#[derive(Debug)]
pub(crate) enum Claim {
    /// This run holds the scope, from `cursor` on (`None`: from the start), with the counts of
    /// the interrupted run it continues.
    Held {
        lease: Lease,
        cursor: Option<String>,
        counts: serde_json::Value,
    },
    /// Another run holds an overlapping scope until `until`.
    Busy {
        prefix: String,
        owner: String,
        until: chrono::DateTime<chrono::Utc>,
    },
}

/// Claims `bucket`/`prefix` for a run reading `source`. An unfinished run of the same scope and
/// source is continued (unless `restart`); otherwise the run starts from the beginning.
pub(crate) async fn claim(
    pool: &PgPool,
    bucket: &str,
    prefix: &str,
    source: &str,
    restart: bool,
) -> Result<Claim, sqlx::Error> {
    let owner = format!("pid {} #{:08x}", std::process::id(), fastrand::u32(..));
    let mut tx = pool.begin().await?;
    // One claim per bucket at a time, so two claims cannot both see the other's scope as free.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('datapack_reconcile:' || $1))")
        .bind(bucket)
        .execute(&mut *tx)
        .await?;
    if let Some(busy) = busy(&mut tx, bucket, prefix).await? {
        return Ok(busy);
    }
    let row = sqlx::query(
        "INSERT INTO datapack_reconcile AS r (bucket, prefix, source, owner, lease_until)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
         ON CONFLICT (bucket, prefix) DO UPDATE SET
             owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until, updated_at = now(),
             cursor = CASE WHEN $6 OR r.finished_at IS NOT NULL OR r.source <> EXCLUDED.source
                           THEN NULL ELSE r.cursor END,
             counts = CASE WHEN $6 OR r.finished_at IS NOT NULL OR r.source <> EXCLUDED.source
                           THEN '{}'::jsonb ELSE r.counts END,
             started_at = CASE WHEN $6 OR r.finished_at IS NOT NULL OR r.source <> EXCLUDED.source
                               THEN now() ELSE r.started_at END,
             source = EXCLUDED.source, finished_at = NULL
         RETURNING cursor, counts",
    )
    .bind(bucket)
    .bind(prefix)
    .bind(source)
    .bind(&owner)
    .bind(LEASE.as_secs_f64())
    .bind(restart)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Claim::Held {
        lease: Lease {
            pool: pool.clone(),
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            owner,
        },
        cursor: row.try_get("cursor")?,
        counts: row.try_get("counts")?,
    })
}

/// Another run's live lease on a scope overlapping `prefix` (the same, or one inside the other).
async fn busy(
    tx: &mut PgConnection,
    bucket: &str,
    prefix: &str,
) -> Result<Option<Claim>, sqlx::Error> {
    let busy = sqlx::query(
        "SELECT prefix, owner, lease_until FROM datapack_reconcile
         WHERE bucket = $1 AND finished_at IS NULL AND lease_until > now() AND owner IS NOT NULL
           AND (starts_with($2, prefix) OR starts_with(prefix, $2))
         LIMIT 1",
    )
    .bind(bucket)
    .bind(prefix)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = busy else {
        return Ok(None);
    };
    Ok(Some(Claim::Busy {
        prefix: row.try_get("prefix")?,
        owner: row.try_get("owner")?,
        until: row.try_get("lease_until")?,
    }))
}

// Each names the row by scope and owner ($1-$3); $4 cursor, $5 counts, $6 the lease in seconds.
const SAVE: &str = "UPDATE datapack_reconcile
     SET cursor = $4, counts = $5, lease_until = now() + make_interval(secs => $6), updated_at = now()
     WHERE bucket = $1 AND prefix = $2 AND owner = $3";
const RENEW: &str = "UPDATE datapack_reconcile
     SET lease_until = now() + make_interval(secs => $6), updated_at = now()
     WHERE bucket = $1 AND prefix = $2 AND owner = $3 AND ($4::text IS NULL OR $5::jsonb IS NULL)";
const FINISH: &str = "UPDATE datapack_reconcile
     SET finished_at = now(), lease_until = now(), counts = $5, updated_at = now()
     WHERE bucket = $1 AND prefix = $2 AND owner = $3
       AND ($4::text IS NULL OR $6::float8 IS NOT NULL)";
const RELEASE: &str = "UPDATE datapack_reconcile SET lease_until = now(), updated_at = now()
     WHERE bucket = $1 AND prefix = $2 AND owner = $3
       AND ($4::text IS NULL OR $5::jsonb IS NULL OR $6::float8 IS NOT NULL)";

impl Lease {
    /// Records that every key up to `cursor` is reconciled, with the counts so far, and renews.
    pub(crate) async fn save(
        &self,
        cursor: &str,
        counts: &serde_json::Value,
    ) -> Result<(), CheckpointError> {
        self.update(SAVE, Some(cursor), Some(counts)).await
    }

    /// Extends the lease.
    pub(crate) async fn renew(&self) -> Result<(), CheckpointError> {
        self.update(RENEW, None, None).await
    }

    /// The scope is reconciled: the next run starts over.
    pub(crate) async fn finish(&self, counts: &serde_json::Value) -> Result<(), CheckpointError> {
        self.update(FINISH, None, Some(counts)).await
    }

    /// Gives the scope up without finishing (an interrupt): the next run continues at once.
    pub(crate) async fn release(&self) -> Result<(), CheckpointError> {
        self.update(RELEASE, None, None).await
    }

    /// One of the updates above, only while this run holds the scope.
    async fn update(
        &self,
        sql: &'static str,
        cursor: Option<&str>,
        counts: Option<&serde_json::Value>,
    ) -> Result<(), CheckpointError> {
        let changed = sqlx::query(sql)
            .bind(&self.bucket)
            .bind(&self.prefix)
            .bind(&self.owner)
            .bind(cursor)
            .bind(counts)
            .bind(LEASE.as_secs_f64())
            .execute(&self.pool)
            .await?
            .rows_affected();
        if changed == 1 {
            return Ok(());
        }
        let holder: Option<String> = sqlx::query_scalar(
            "SELECT owner FROM datapack_reconcile WHERE bucket = $1 AND prefix = $2",
        )
        .bind(&self.bucket)
        .bind(&self.prefix)
        .fetch_optional(&self.pool)
        .await?
        .flatten();
        Err(CheckpointError::LeaseLost(holder))
    }
}
