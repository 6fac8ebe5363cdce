//! `datapack-worker reconcile`: compares a bucket (or a prefix of it) with `datapack_resource`
//! and repairs the difference through the pipeline queue messages take.
//!
//! The bucket is read one listing page at a time, in S3's key order ([`listing`], or an S3
//! Inventory report: [`inventory`]; [`source`] chooses), and each page is compared with the
//! database's live rows of the same key range ([`compare`], walked by [`pages`]), so memory holds
//! one page whatever the bucket's size. Each difference is checked with S3 (HeadObject) and
//! repaired through the pipeline ([`repair`]): an object with no live row, or whose live row is
//! another upload, is ingested (the same fetch, hash, filters, write, outcomes and metrics as a
//! notification); live rows whose object S3 no longer shows are removed. No repair is ever newer
//! than its source: a listing's repairs carry the time they were observed, an inventory's the
//! time the report was taken, so anything S3 announced after still wins (see
//! `docs/operating.md`, "Reconcile: safe against every input"). Keys the database cannot hold (a
//! NUL) are skipped and counted. The scope ([`scope`]) is held by a lease and checkpointed per
//! page ([`lease`]), released however the run ([`run`]) ends; [`report`] counts and prints, and
//! [`Stopped`] says how a run that did not complete ended, for the exit status.
//!
//! The running parts (database, writers, pipeline, HTTP) are `run`'s own, built and stopped by
//! [`crate::app::Parts`]; this module adds no start-up of its own.

mod compare;
mod inventory;
mod lease;
mod listing;
mod pages;
mod repair;
mod report;
mod run;
mod scope;
mod source;
mod stopped;

use std::time::Instant;

use crate::app::{Background, Parts, Wiring};
use crate::cli::ReconcileArgs;
use crate::{aws, shutdown};

use report::Report;
use run::Run;
use scope::Scope;
pub use stopped::Stopped;

/// Runs a reconcile and prints its report (always, once the run has started: with `--json` a
/// scheduler gets one document whatever happened). Fails with [`Stopped`] when the run did not
/// complete: interrupted, failed, refused or busy; refusals of single keys (a key outside any
/// datapack, an unknown datapack) are reported and counted, as the queue would dead-letter them.
pub async fn execute(mut args: ReconcileArgs) -> anyhow::Result<()> {
    let scope = Scope::of(&args)?;
    // The pipeline serves exactly the bucket reconciled.
    args.run.s3_bucket = vec![scope.bucket.clone()];
    let settings = args.run.ingest_settings()?;
    let sdk = aws::load(&settings.aws).await;
    let shutdown = shutdown::on_signals();
    let wiring = Wiring {
        ingest: settings,
        migrate_on_start: args.run.migrate_on_start,
        // A run whose writes fail reports them as failed repairs.
        check_schema: false,
        serve: args.serve_metrics.then_some(args.run.metrics_addr),
    };
    let parts = Parts::build(&sdk, &shutdown, wiring).await?;
    let started = Instant::now();
    let mut report = Report::new(&scope.bucket, &scope.prefix, args.dry_run);
    let run = Run {
        pool: parts.database.pool().clone(),
        s3: parts.pipeline.s3.clone(),
        scope,
        args: &args,
        shutdown,
    };
    let result = run.go(parts.pipeline, &mut report).await;
    drop(run);
    // A supervised part that died has logged why; what it cost is in the report (failed
    // repairs), so the run's own ending stands.
    let _died = parts.stop.stop(Background::new(&parts.watchdog)).await;
    report.elapsed_secs = started.elapsed().as_secs_f64();
    let stopped = stopped::ending(result, &report);
    if let Some(stopped) = &stopped {
        report.ended = stopped.label();
        report.error = Some(stopped.to_string());
    }
    report.print(args.json);
    match stopped {
        Some(stopped) => Err(stopped.into()),
        None => Ok(()),
    }
}
