//! `datapack-worker reconcile`: compares a bucket (or a prefix of it) with `datapack_resource`
//! and repairs the difference through the pipeline queue messages take.
//!
//! The bucket is read one listing page at a time, in S3's key order ([`listing`], or an S3
//! Inventory report: [`inventory`]), and each page is compared with the database's live rows of
//! the same key range ([`compare`]), so memory holds one page whatever the bucket's size. Each
//! difference is checked with S3 (HeadObject) and repaired through the [`Pipeline`]
//! ([`repair`]): an object with no live row, or whose live row is another upload, is ingested
//! (the same fetch, hash, filters, write, outcomes and metrics as a notification); live rows
//! whose object S3 no longer shows are removed. No repair is ever newer than its source: a
//! listing's repairs carry the time they were observed, an inventory's the time the report was
//! taken, so anything S3 announced after still wins (see `docs/operating.md`, "Reconcile: safe
//! against every input"). Keys the database cannot hold (a NUL) are skipped and counted.
//! Progress is checkpointed per page ([`checkpoint`], in the store); the lease is released however the run
//! ends; [`report`] counts and prints, and [`Stopped`] says how a run that did not complete ended, for the exit status.
//!
//! The running parts (database, writers, pipeline, HTTP) are `run`'s own, built and stopped by
//! [`crate::app::Parts`]; this module adds no start-up of its own.

mod compare;
mod inventory;
mod listing;
mod repair;
mod report;
mod source;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::app::{Background, Parts, Wiring};
use crate::cli::{ListingMode, ReconcileArgs};
use crate::config::{self, ConfigError};
use crate::disposition::Failure;
use crate::ops;
use crate::process::pipeline::Pipeline;
use crate::store::reconcile::checkpoint::{self, Claim, Lease};
use crate::store::reconcile::live::LiveRows;
use crate::{aws, shutdown};

use compare::Drift;
use listing::Start;
use repair::{Repaired, Work};
use report::{Counts, Made, Progress, Report, printable};
use source::Source;

/// How a reconcile that did not complete ended; `main` turns it into the exit status (the
/// table is in `docs/operating.md`, "Reconcile: safe against every input").
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    /// Interrupted, failed part-way, or some repairs kept failing: the next run continues.
    #[error("{0}")]
    Failed(String),
    /// The settings or the input (an inventory report) cannot be used: running again as it
    /// is cannot succeed.
    #[error("refused: {0}")]
    Refused(String),
    /// Another reconcile holds an overlapping scope: nothing was done.
    #[error("busy: {0}")]
    Busy(String),
}

impl Stopped {
    /// 1 failed, 2 refused, 3 busy (0 is a complete run).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Failed(_) => 1,
            Self::Refused(_) => 2,
            Self::Busy(_) => 3,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Self::Failed(_) => "failed",
            Self::Refused(_) => "refused",
            Self::Busy(_) => "busy",
        }
    }

    fn failed(error: impl std::fmt::Display) -> Self {
        Self::Failed(error.to_string())
    }

    /// A listing (or inventory) failure: one that can never succeed as it is is a refusal.
    fn listing(what: &str, failure: &Failure) -> Self {
        let text = format!("{what}: {}", crate::disposition::chain(failure));
        match failure {
            Failure::Permanent { .. } => Self::Refused(text),
            Failure::Transient { .. } => Self::Failed(text),
        }
    }
}

/// The scope the flags name (an inherent impl beside the command that uses it: the flags are
/// the command line's, in `cli`).
impl ReconcileArgs {
    /// The bucket and prefix, checked.
    fn scope(&self) -> Result<(String, String), ConfigError> {
        let invalid = |name, problem: &str| ConfigError::Invalid {
            name,
            problem: problem.into(),
        };
        config::check_range("RECONCILE_CONCURRENCY", self.concurrency as u64)?;
        config::check_range("--page-keys", u64::try_from(self.page_keys).unwrap_or(0))?;
        config::check_range(
            "--inventory-max-rows-per-key",
            self.inventory_max_rows_per_key,
        )?;
        // The buckets as `run` reads them: `S3_BUCKET`, else the seed's `FILESYSTEM_S3_BUCKET`.
        let buckets = self.run.buckets();
        let bucket = match (&self.bucket, buckets.as_slice()) {
            (Some(b), _) => b.clone(),
            (None, [one]) => one.clone(),
            (None, []) => {
                return Err(ConfigError::Missing(
                    "--bucket (or S3_BUCKET, or FILESYSTEM_S3_BUCKET)",
                ));
            }
            (None, _) => {
                return Err(invalid(
                    "--bucket",
                    "S3_BUCKET names several buckets: say which to reconcile",
                ));
            }
        };
        let prefix = match &self.datapack {
            Some(datapack) if datapack.is_empty() || datapack.contains('/') => {
                return Err(invalid("--datapack", "must be one datapack identifier"));
            }
            Some(datapack) => format!("{datapack}/"),
            None => self.prefix.clone(),
        };
        Ok((bucket, prefix))
    }
}

/// Runs a reconcile and prints its report (always, once the run has started: with `--json` a
/// scheduler gets one document whatever happened). Fails with [`Stopped`] when the run did not
/// complete: interrupted, failed, refused or busy; refusals of single keys (a key outside any
/// datapack, an unknown datapack) are reported and counted, as the queue would dead-letter them.
pub async fn execute(mut args: ReconcileArgs) -> anyhow::Result<()> {
    let (bucket, prefix) = args.scope()?;
    // The pipeline serves exactly the bucket reconciled.
    args.run.s3_bucket = vec![bucket.clone()];
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
    let mut report = Report {
        bucket: bucket.clone(),
        prefix: prefix.clone(),
        source: String::new(),
        dry_run: args.dry_run,
        resumed_after: None,
        complete: false,
        busy: None,
        ended: "complete",
        error: None,
        elapsed_secs: 0.0,
        counts: Counts::default(),
    };
    let run = Run {
        pool: parts.database.pool().clone(),
        prefix,
        args: &args,
        s3: parts.pipeline.s3.clone(),
        bucket,
        shutdown: shutdown.clone(),
    };
    let result = run.go(parts.pipeline, &mut report).await;
    drop(run);
    // A supervised part that died has logged why; what it cost is in the report (failed
    // repairs), so the run's own ending stands.
    let _died = parts.stop.stop(Background::new(&parts.watchdog)).await;
    report.elapsed_secs = started.elapsed().as_secs_f64();
    let stopped = result.err().or_else(|| {
        let failed = report.counts.failures_total();
        if !report.complete {
            Some(Stopped::Failed(
                "the reconcile stopped before the end of its scope: run it again to continue"
                    .into(),
            ))
        } else if failed > 0 {
            Some(Stopped::Failed(format!(
                "{failed} repairs failed (listed in the report); run again once the cause is fixed"
            )))
        } else {
            None
        }
    });
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

/// One run over a scope.
struct Run<'a> {
    pool: PgPool,
    prefix: String,
    args: &'a ReconcileArgs,
    s3: aws_sdk_s3::Client,
    bucket: String,
    shutdown: CancellationToken,
}

/// What the run reads: a listing (objects or versions) or an inventory report.
enum Reading {
    Listing(ListingMode),
    Inventory(String),
}

impl Reading {
    /// The source's name in the report and the checkpoint: a checkpoint is a position in one
    /// source's key order only.
    fn name(&self) -> String {
        match self {
            Self::Listing(mode) => mode.as_str().to_owned(),
            Self::Inventory(url) => format!("inventory:{url}"),
        }
    }
}

impl Run<'_> {
    /// Claims the scope, goes through it, and settles the lease however that ended.
    async fn go(&self, pipeline: Pipeline, report: &mut Report) -> Result<(), Stopped> {
        let reading = self.reading().await?;
        report.source = reading.name();
        let source = self.open(&reading, None).await;
        // The inventory is opened (and refused) before the scope is claimed; reopened below
        // from the checkpoint.
        let source = source?;
        let listed_at = match &source {
            Source::Inventory(inventory) => Some(inventory.taken_at),
            _ => None,
        };
        let work = Arc::new(Work {
            pipeline,
            s3: self.s3.clone(),
            bucket: self.bucket.clone(),
            dry_run: self.args.dry_run,
            shutdown: self.shutdown.clone(),
            listed_at,
        });
        if self.args.dry_run {
            let never = CancellationToken::new();
            return self.pages(&work, source, None, report, None, &never).await;
        }
        let claim = checkpoint::claim(
            &self.pool,
            &self.bucket,
            &self.prefix,
            &report.source,
            self.args.restart,
        )
        .await
        .map_err(|e| Stopped::failed(format!("claiming the reconcile scope: {e}")))?;
        let (lease, cursor) = match claim {
            Claim::Held {
                lease,
                cursor,
                counts,
            } => {
                report.resumed_after = cursor.as_deref().map(printable);
                report.counts = serde_json::from_value(counts).unwrap_or_default();
                (lease, cursor)
            }
            Claim::Busy {
                prefix,
                owner,
                until,
            } => {
                let busy = format!(
                    "another reconcile ({owner}) holds s3://{}/{} until {until}: nothing done",
                    self.bucket,
                    printable(&prefix)
                );
                tracing::warn!("{busy}");
                report.busy = Some(busy.clone());
                return Err(Stopped::Busy(busy));
            }
        };
        let lost = CancellationToken::new();
        let renewer = tokio::spawn(renew(lease.clone(), lost.clone()));
        let outcome = match cursor {
            None => Ok(source),
            Some(_) => self.open(&reading, cursor.clone()).await,
        };
        let outcome = match outcome {
            Ok(source) => {
                self.pages(&work, source, cursor, report, Some(&lease), &lost)
                    .await
            }
            Err(stopped) => Err(stopped),
        };
        renewer.abort();
        let settled = settle(&lease, outcome.is_ok() && report.complete, &report.counts).await;
        outcome.and(settled)
    }

    /// What to read: the inventory, or what `--listing` says (for `auto`, the bucket's
    /// versioning: a suspended bucket still holds versions).
    async fn reading(&self) -> Result<Reading, Stopped> {
        if let Some(url) = &self.args.inventory {
            return Ok(Reading::Inventory(url.clone()));
        }
        if self.args.listing != ListingMode::Auto {
            return Ok(Reading::Listing(self.args.listing));
        }
        let answer = self
            .s3
            .get_bucket_versioning()
            .bucket(&self.bucket)
            .send()
            .await;
        let versioned = match answer {
            Ok(versioning) => versioning.status().is_some(),
            // A 200 the SDK cannot read: some emulators (moto) answer under another root
            // element. The status is read from the document itself.
            Err(error) if aws::status(&error) == Some(200) => {
                let body = error
                    .raw_response()
                    .and_then(|r| r.body().bytes())
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                body.contains("<Status>Enabled</Status>")
                    || body.contains("<Status>Suspended</Status>")
            }
            Err(error) => {
                let failure = aws::classify(crate::disposition::Dependency::S3, error);
                return Err(Stopped::listing(
                    "reading the bucket's versioning (or pass --listing objects|versions)",
                    &failure,
                ));
            }
        };
        Ok(Reading::Listing(if versioned {
            ListingMode::Versions
        } else {
            ListingMode::Objects
        }))
    }

    async fn open(&self, reading: &Reading, after: Option<String>) -> Result<Source, Stopped> {
        let start = Start {
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            after,
            page_keys: self.args.page_keys,
        };
        let s3 = self.s3.clone();
        Ok(match reading {
            Reading::Inventory(url) => Source::Inventory(Box::new(
                inventory::Inventory::open(s3, url, start, self.args.inventory_max_rows_per_key)
                    .await
                    .map_err(|f| Stopped::listing("opening the inventory", &f))?,
            )),
            Reading::Listing(ListingMode::Versions) => {
                Source::Versions(listing::Versions::new(s3, start))
            }
            Reading::Listing(_) => Source::Objects(listing::Objects::new(s3, start)),
        })
    }

    /// Page after page until the scope ends, the run is interrupted, or the lease is lost.
    async fn pages(
        &self,
        work: &Arc<Work>,
        mut source: Source,
        mut after: Option<String>,
        report: &mut Report,
        lease: Option<&Lease>,
        lost: &CancellationToken,
    ) -> Result<(), Stopped> {
        tracing::info!(
            bucket = %self.bucket,
            prefix = printable(&self.prefix),
            listing = source.name(),
            resumed_after = after.as_deref().map(printable).unwrap_or_default(),
            dry_run = self.args.dry_run,
            "reconcile started"
        );
        let mut progress = Progress::new(
            self.args.progress,
            Duration::from_secs(self.args.progress_secs.max(1)),
        );
        let limit = self.args.report_keys;
        let result = loop {
            let page = tokio::select! {
                page = next_page(&mut source, &self.shutdown) => page,
                () = self.shutdown.cancelled() => break Ok(()),
                () = lost.cancelled() => break Err(Stopped::failed("the lease on this scope was lost")),
            };
            let page = match page {
                Ok(Some(page)) => page,
                Ok(None) => {
                    report.complete = true;
                    break Ok(());
                }
                Err(failure) => break Err(Stopped::listing("listing the bucket", &failure)),
            };
            let (page, unstorable) = page.storable();
            for key in &unstorable {
                tracing::warn!(
                    key = printable(key),
                    "a key PostgreSQL cannot hold (it contains NUL): skipped"
                );
                report.counts.unstorable(key, limit);
            }
            if let Err(e) = self
                .page(work, &page, after.as_deref(), &mut report.counts)
                .await
            {
                break Err(Stopped::failed(format!("reading live rows: {e}")));
            }
            if self.shutdown.is_cancelled() {
                // The page's repairs may have been cut short: its checkpoint is not saved.
                break Ok(());
            }
            let keys = page.entries.len() + unstorable.len();
            report.counts.keys_listed += keys as u64;
            report.counts.pages += 1;
            ops::metrics::reconcile_page(keys);
            let at = page
                .upto
                .clone()
                .or_else(|| page.entries.last().map(|l| l.key.clone()))
                .unwrap_or_default();
            progress.page(&report.counts, &at);
            match page.upto {
                None => {
                    report.complete = true;
                    break Ok(());
                }
                Some(upto) => {
                    if let Some(lease) = lease
                        && let Err(e) = lease.save(&upto, &counts_json(&report.counts)).await
                    {
                        break Err(Stopped::failed(format!("saving the checkpoint: {e}")));
                    }
                    after = Some(upto);
                }
            }
        };
        progress.done();
        tracing::info!(
            keys_listed = report.counts.keys_listed,
            differences = report.counts.differences_total(),
            failed = report.counts.failures_total(),
            complete = report.complete,
            "reconcile ended"
        );
        result
    }

    /// Compares one page with the live rows of its range and repairs what differs, at most
    /// `concurrency` at a time; returns once every repair of the page is done.
    async fn page(
        &self,
        work: &Arc<Work>,
        page: &listing::Page,
        after: Option<&str>,
        counts: &mut Counts,
    ) -> Result<(), sqlx::Error> {
        let mut rows = LiveRows::new(
            &self.pool,
            &self.bucket,
            &self.prefix,
            after,
            page.upto.as_deref(),
        );
        let mut entries = page.entries.iter().peekable();
        let mut tasks = JoinSet::new();
        while let Some((key, live)) = rows.next_key().await? {
            while let Some(listed) = entries.next_if(|l| l.key < key) {
                self.submit(work, &mut tasks, Drift::Missing(listed.clone()), counts)
                    .await;
            }
            if let Some(listed) = entries.next_if(|l| l.key == key) {
                if let Some(drift) = compare::compare(listed, &live) {
                    self.submit(work, &mut tasks, drift, counts).await;
                }
                continue;
            }
            // Rows written after the inventory was taken cannot be judged by it.
            let rows: Vec<_> = live
                .into_iter()
                .filter(|r| work.listed_at.is_none_or(|t| r.event_time <= t))
                .collect();
            if !rows.is_empty() {
                self.submit(work, &mut tasks, Drift::Gone { key, rows }, counts)
                    .await;
            }
        }
        for listed in entries {
            self.submit(work, &mut tasks, Drift::Missing(listed.clone()), counts)
                .await;
        }
        while self.wait_one(&mut tasks, counts).await {}
        Ok(())
    }

    /// Starts the repair of `drift`, first waiting for a free slot.
    async fn submit(
        &self,
        work: &Arc<Work>,
        tasks: &mut JoinSet<Repaired>,
        drift: Drift,
        counts: &mut Counts,
    ) {
        while tasks.len() >= self.args.concurrency {
            self.wait_one(tasks, counts).await;
        }
        if !self.shutdown.is_cancelled() {
            tasks.spawn(repair::repair(work.clone(), drift));
        }
    }

    /// Waits for one repair and counts it; false once none is left. On shutdown the repairs in
    /// hand are abandoned (each is one idempotent write, committed or not): the page is not
    /// checkpointed, and the next run does it again.
    async fn wait_one(&self, tasks: &mut JoinSet<Repaired>, counts: &mut Counts) -> bool {
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(done) => {
                    fold(done, counts, self.args.report_keys);
                    true
                }
                None => false,
            },
            () = self.shutdown.cancelled() => {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                false
            }
        }
    }
}

/// The counts as the checkpoint stores them.
fn counts_json(counts: &Counts) -> serde_json::Value {
    serde_json::to_value(counts).unwrap_or_else(|_| serde_json::json!({}))
}

/// Ends this run's hold on the scope, whatever the run came to: finished (the next run starts
/// over) or released (the next run continues from the checkpoint, at once). A finish that fails
/// still releases; only a lost database leaves the lease to run out.
async fn settle(lease: &Lease, complete: bool, counts: &Counts) -> Result<(), Stopped> {
    let finished = if complete {
        match lease.finish(&counts_json(counts)).await {
            Ok(()) => return Ok(()),
            Err(e) => Err(Stopped::failed(format!(
                "recording the finished reconcile: {e}"
            ))),
        }
    } else {
        Ok(())
    };
    if let Err(error) = lease.release().await {
        tracing::error!(%error, "releasing the reconcile scope failed: it is free once the lease runs out");
    }
    finished
}

/// Adds a finished repair to the counts. A repair that panicked is a failure like another.
fn fold(done: Result<Repaired, tokio::task::JoinError>, counts: &mut Counts, limit: usize) {
    let repaired = match done {
        Ok(repaired) => repaired,
        Err(error) => {
            tracing::error!(%error, "a reconcile repair task ended abnormally");
            counts.failed("?", "failed:panicked".into(), limit);
            return;
        }
    };
    let Some(kind) = repaired.kind else {
        counts.confirmed_present += 1;
        return;
    };
    counts.found(kind, &repaired.key, limit);
    match &repaired.made {
        Made::Nothing => {}
        Made::Done(label) => counts.outcome(label.clone()),
        made @ (Made::Refused(_) | Made::Failed(_)) => {
            if let Some(label) = made.label() {
                counts.failed(&repaired.key, label, limit);
            }
        }
    }
}

/// Renews the lease until the run ends; tells the run if another reconcile took it over.
async fn renew(lease: Lease, lost: CancellationToken) {
    loop {
        tokio::time::sleep(checkpoint::RENEW_EVERY).await;
        match lease.renew().await {
            Ok(()) => {}
            Err(checkpoint::CheckpointError::LeaseLost(holder)) => {
                tracing::error!(?holder, "the reconcile lease was lost: stopping");
                lost.cancel();
                return;
            }
            // A database blip: the lease lasts several renewals; the next try may pass.
            Err(error) => tracing::warn!(%error, "renewing the reconcile lease failed"),
        }
    }
}

/// The next page, retrying a transient failure.
async fn next_page(
    source: &mut Source,
    shutdown: &CancellationToken,
) -> Result<Option<listing::Page>, Failure> {
    let mut delays = repair::delays();
    loop {
        let page = source.next_page().await;
        if let Err(failure @ Failure::Transient { .. }) = &page {
            tracing::warn!(reason = failure.reason(), error = %failure, "listing failed");
            if repair::pause(&mut delays, shutdown).await {
                continue;
            }
        }
        return page;
    }
}
