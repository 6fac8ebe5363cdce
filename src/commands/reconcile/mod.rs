//! `datapack-worker reconcile`: compares a bucket (or a prefix of it) with `datapack_resource`
//! and repairs the difference through the pipeline queue messages take.
//!
//! The bucket is read one listing page at a time, in S3's key order ([`listing`], or an S3
//! Inventory report: [`inventory`]), and each page is compared with the database's live rows of
//! the same key range ([`compare`]), so memory holds one page whatever the bucket's size. Each
//! difference becomes an event for the [`Pipeline`]: an object with no live row, or whose live
//! row is another upload, is ingested (the same fetch, hash, filters, write, outcomes and
//! metrics as a notification); live rows whose object the listing does not show are checked
//! with HeadObject first (a row written after the page was listed is not a difference), then
//! removed. Each event is stamped with the time it was observed, so the store's ordering keeps
//! it safe beside live workers: anything S3 announces later still wins, and a removal S3
//! announced earlier never brings a deleted object back (the read is pinned to the listed ETag).
//! Progress is checkpointed per page ([`checkpoint`]); [`report`] counts and prints.

mod checkpoint;
mod compare;
mod inventory;
mod listing;
mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use clap::Args;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, RunArgs};
use crate::disposition::{Failure, Outcome};
use crate::ops::health::Health;
use crate::ops::watchdog::Watchdog;
use crate::ops::{self, http};
use crate::process::canary::Canary;
use crate::process::event::{EventKind, Item, ObjectEvent};
use crate::process::pipeline::{Pipeline, Verdict};
use crate::process::versions::{self, Current};
use crate::store::writer::Writer;
use crate::{aws, shutdown, store};

use checkpoint::{Claim, Lease};
use compare::{Drift, LiveRows};
use listing::{Listed, Source, Start};
pub use report::ProgressMode;
use report::{Counts, Progress, Report};

/// Attempts a repair (or a listing request) gets within one run before it counts as failed; the
/// next run tries it again.
const ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListingMode {
    /// ListObjectVersions when the bucket has versioning (enabled or suspended), else ListObjectsV2.
    Auto,
    Objects,
    Versions,
}

/// `reconcile` reads the same settings as `run` (so it runs from the worker's environment
/// file), plus its own flags.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// The bucket to reconcile (default: the one S3_BUCKET names).
    #[arg(long)]
    pub bucket: Option<String>,
    /// Only keys starting with this.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Only this datapack's keys (the prefix `DATAPACK/`).
    #[arg(long, conflicts_with = "prefix")]
    pub datapack: Option<String>,
    /// Find and report the differences; change nothing (no write, no checkpoint).
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// How many keys of each kind of difference (and of failures) the report names.
    #[arg(long, default_value_t = 20)]
    pub report_keys: usize,
    /// Differences checked and repaired at once.
    #[arg(long, env = "RECONCILE_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,
    /// Keys per listing page (S3 answers at most 1,000); also the checkpoint's step.
    #[arg(long, default_value_t = 1000)]
    pub page_keys: i32,
    /// Read the listing from an S3 Inventory report (CSV) instead of listing the bucket:
    /// `s3://BUCKET/PATH/manifest.json`.
    #[arg(long, value_name = "S3_URL")]
    pub inventory: Option<String>,
    /// How to list the bucket.
    #[arg(long, value_enum, default_value = "auto")]
    pub listing: ListingMode,
    /// Start the scope over instead of continuing an interrupted run from its checkpoint.
    #[arg(long)]
    pub restart: bool,
    /// Serve /metrics (and the health endpoints) on METRICS_ADDR while reconciling.
    #[arg(long)]
    pub serve_metrics: bool,
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
    /// Seconds between progress log lines (when there is no bar).
    #[arg(long, default_value_t = 10)]
    pub progress_secs: u64,
}

impl ReconcileArgs {
    /// The bucket and prefix, checked.
    fn scope(&self) -> Result<(String, String), ConfigError> {
        let invalid = |name, problem: &str| ConfigError::Invalid {
            name,
            problem: problem.into(),
        };
        if !(1..=256).contains(&self.concurrency) {
            return Err(invalid(
                "RECONCILE_CONCURRENCY",
                "must be between 1 and 256",
            ));
        }
        if !(1..=1000).contains(&self.page_keys) {
            return Err(invalid("--page-keys", "must be between 1 and 1000"));
        }
        let buckets = &self.run.s3_bucket;
        let bucket = match (&self.bucket, buckets.as_slice()) {
            (Some(b), _) => b.clone(),
            (None, [one]) => one.trim().to_owned(),
            (None, []) => return Err(ConfigError::Missing("--bucket (or S3_BUCKET)")),
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

/// Runs a reconcile and prints its report. Fails (exit status 1) when it was interrupted or
/// when repairs kept failing, so a scheduler notices; refusals (a key outside any datapack, an
/// unknown datapack) are reported and counted, as the queue would dead-letter them.
pub async fn execute(mut args: ReconcileArgs) -> anyhow::Result<()> {
    let (bucket, prefix) = args.scope()?;
    // The pipeline serves exactly the bucket reconciled.
    args.run.s3_bucket = vec![bucket.clone()];
    let settings = args.run.ingest_settings()?;
    let sdk = aws::load(&settings.aws).await;
    let s3 = aws::s3(&sdk);
    let database = crate::app::database(&settings.database, &sdk)?;
    let pool = database.pool().clone();
    if args.run.migrate_on_start {
        store::migrate(&pool).await.context("applying migrations")?;
    }
    let metrics = ops::metrics::install();
    let health = Health::new();
    let watchdog = Watchdog::new(health.clone());
    let shutdown = shutdown::on_signals();
    let stop_http = CancellationToken::new();
    let server = if args.serve_metrics {
        let addr = args.run.metrics_addr;
        let server = http::serve(
            addr,
            metrics,
            health.clone(),
            shutdown.clone(),
            stop_http.clone(),
        )
        .await
        .with_context(|| format!("binding METRICS_ADDR {addr}"))?;
        Some(server)
    } else {
        None
    };
    let (writer, writers) =
        Writer::spawn(database.clone(), settings.writer, health.clone(), &watchdog);
    let work = Work {
        pipeline: Pipeline {
            s3: s3.clone(),
            writer,
            settings: settings.pipeline,
            health,
            canary: Arc::new(Canary::default()),
        },
        s3,
        bucket,
        dry_run: args.dry_run,
        shutdown: shutdown.clone(),
    };
    let run = Run {
        work: Arc::new(work),
        pool: pool.clone(),
        prefix,
        args: &args,
    };
    let result = run.go().await;
    // Past this point the writers are meant to end.
    watchdog.stopping();
    drop(run);
    // Every pipeline handle is gone: the writers drain and stop.
    for writer in writers {
        let _ = writer.await;
    }
    stop_http.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    pool.close().await;
    let report = result?;
    report.print(args.json);
    if !report.complete {
        anyhow::bail!(
            "the reconcile stopped before the end of its scope: run it again to continue"
        );
    }
    let failed = report.counts.failures_total();
    if failed > 0 {
        anyhow::bail!(
            "{failed} repairs failed (listed in the report); run again once the cause is fixed"
        );
    }
    Ok(())
}

/// What each repair needs.
struct Work {
    pipeline: Pipeline,
    s3: aws_sdk_s3::Client,
    bucket: String,
    dry_run: bool,
    shutdown: CancellationToken,
}

/// One run over a scope.
struct Run<'a> {
    work: Arc<Work>,
    pool: PgPool,
    prefix: String,
    args: &'a ReconcileArgs,
}

/// What one repair came to.
struct Repaired {
    key: String,
    /// The difference it turned out to be; `None`: S3 shows the live row's object after all.
    kind: Option<&'static str>,
    /// The repair's outcome label; `Ok(None)` in a dry run; `Err(label)` when it did not
    /// succeed: `refused:<reason>` (it never can as things are: the queue would dead-letter it)
    /// or `failed:<reason>` (it kept failing: a later run tries again).
    result: Result<Option<String>, String>,
}

impl Run<'_> {
    async fn go(&self) -> anyhow::Result<Report> {
        let started = Instant::now();
        let bucket = self.work.bucket.clone();
        let source_kind = self.source_kind().await?;
        let source_name = match &self.args.inventory {
            Some(url) => format!("inventory:{url}"),
            None => source_kind.to_owned(),
        };
        let mut report = Report {
            bucket: bucket.clone(),
            prefix: self.prefix.clone(),
            source: source_name.clone(),
            dry_run: self.args.dry_run,
            resumed_after: None,
            complete: false,
            busy: None,
            elapsed_secs: 0.0,
            counts: Counts::default(),
        };
        let lease = if self.args.dry_run {
            None
        } else {
            match checkpoint::claim(
                &self.pool,
                &bucket,
                &self.prefix,
                &source_name,
                self.args.restart,
            )
            .await
            .context("claiming the reconcile scope")?
            {
                Claim::Held {
                    lease,
                    cursor,
                    counts,
                } => {
                    report.resumed_after = cursor;
                    report.counts = serde_json::from_value(counts).unwrap_or_default();
                    Some(lease)
                }
                Claim::Busy {
                    prefix,
                    owner,
                    until,
                } => {
                    let busy = format!(
                        "another reconcile ({owner}) holds s3://{bucket}/{prefix} until {until}: nothing done"
                    );
                    tracing::warn!("{busy}");
                    report.busy = Some(busy);
                    report.complete = true;
                    return Ok(report);
                }
            }
        };
        let lost = CancellationToken::new();
        let renewer = lease
            .clone()
            .map(|lease| tokio::spawn(renew(lease, lost.clone())));
        let outcome = self
            .pages(source_kind, &mut report, lease.as_ref(), &lost)
            .await;
        if let Some(renewer) = renewer {
            renewer.abort();
        }
        report.elapsed_secs = started.elapsed().as_secs_f64();
        if let Some(lease) = &lease {
            let counts = serde_json::to_value(&report.counts)?;
            match (&outcome, report.complete) {
                (Ok(()), true) => lease.finish(&counts).await?,
                _ => {
                    // Interrupted or failed: the checkpoint stands; free the scope for the next.
                    let _ = lease.release().await;
                }
            }
        }
        outcome?;
        Ok(report)
    }

    /// Which listing: the inventory, or what `--listing` says (for `auto`, the bucket's
    /// versioning: a suspended bucket still holds versions).
    async fn source_kind(&self) -> anyhow::Result<&'static str> {
        if self.args.inventory.is_some() {
            return Ok("inventory");
        }
        Ok(match self.args.listing {
            ListingMode::Objects => "objects",
            ListingMode::Versions => "versions",
            ListingMode::Auto => {
                let answer = self
                    .work
                    .s3
                    .get_bucket_versioning()
                    .bucket(&self.work.bucket)
                    .send()
                    .await;
                match answer {
                    Ok(versioning) if versioning.status().is_some() => "versions",
                    Ok(_) => "objects",
                    // A 200 the SDK cannot read: some emulators (moto) answer under another
                    // root element. The status is read from the document itself.
                    Err(error) if aws::status(&error) == Some(200) => {
                        let body = error
                            .raw_response()
                            .and_then(|r| r.body().bytes())
                            .map(String::from_utf8_lossy)
                            .unwrap_or_default();
                        if body.contains("<Status>Enabled</Status>")
                            || body.contains("<Status>Suspended</Status>")
                        {
                            "versions"
                        } else {
                            "objects"
                        }
                    }
                    Err(error) => {
                        return Err(anyhow::Error::new(aws::classify(
                            crate::disposition::Dependency::S3,
                            error,
                        ))
                        .context(
                            "reading the bucket's versioning (or pass --listing objects|versions)",
                        ));
                    }
                }
            }
        })
    }

    async fn open(&self, kind: &str, after: Option<String>) -> anyhow::Result<Source> {
        let start = Start {
            bucket: self.work.bucket.clone(),
            prefix: self.prefix.clone(),
            after,
            page_keys: self.args.page_keys,
        };
        let s3 = self.work.s3.clone();
        Ok(match (kind, &self.args.inventory) {
            (_, Some(url)) => Source::Inventory(Box::new(
                inventory::Inventory::open(s3, url, start)
                    .await
                    .context("opening the inventory")?,
            )),
            ("versions", None) => Source::Versions(listing::Versions::new(s3, start)),
            _ => Source::Objects(listing::Objects::new(s3, start)),
        })
    }

    /// Page after page until the scope ends, the run is interrupted, or the lease is lost.
    async fn pages(
        &self,
        kind: &str,
        report: &mut Report,
        lease: Option<&Lease>,
        lost: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut after = report.resumed_after.clone();
        let mut source = self.open(kind, after.clone()).await?;
        let taken_at = match &source {
            Source::Inventory(i) => i.taken_at,
            _ => None,
        };
        tracing::info!(
            bucket = %self.work.bucket,
            prefix = %self.prefix,
            listing = source.name(),
            resumed_after = after.as_deref().unwrap_or(""),
            dry_run = self.args.dry_run,
            "reconcile started"
        );
        let mut progress = Progress::new(
            self.args.progress,
            Duration::from_secs(self.args.progress_secs.max(1)),
        );
        let result = loop {
            let page = tokio::select! {
                page = next_page(&mut source, &self.work.shutdown) => page,
                () = self.work.shutdown.cancelled() => break Ok(()),
                () = lost.cancelled() => break Err(anyhow::anyhow!("the lease on this scope was lost")),
            };
            let page = match page {
                Ok(Some(page)) => page,
                Ok(None) => {
                    report.complete = true;
                    break Ok(());
                }
                Err(failure) => {
                    break Err(anyhow::Error::new(failure).context("listing the bucket"));
                }
            };
            if let Err(e) = self
                .page(&page, after.as_deref(), taken_at, &mut report.counts)
                .await
            {
                break Err(e);
            }
            if self.work.shutdown.is_cancelled() {
                // The page's repairs may have been cut short: its checkpoint is not saved.
                break Ok(());
            }
            report.counts.keys_listed += page.entries.len() as u64;
            report.counts.pages += 1;
            ops::metrics::reconcile_page(page.entries.len());
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
                    if let Some(lease) = lease {
                        let counts = serde_json::to_value(&report.counts)?;
                        if let Err(e) = lease.save(&upto, &counts).await {
                            break Err(e.into());
                        }
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
        page: &listing::Page,
        after: Option<&str>,
        taken_at: Option<chrono::DateTime<Utc>>,
        counts: &mut Counts,
    ) -> anyhow::Result<()> {
        let mut rows = LiveRows::new(
            &self.pool,
            &self.work.bucket,
            &self.prefix,
            after,
            page.upto.as_deref(),
        );
        let mut entries = page.entries.iter().peekable();
        let mut tasks = JoinSet::new();
        loop {
            let Some((key, live)) = rows.next_key().await.context("reading live rows")? else {
                break;
            };
            while let Some(listed) = entries.next_if(|l| l.key < key) {
                self.submit(&mut tasks, Drift::Missing(listed.clone()), counts)
                    .await;
            }
            if let Some(listed) = entries.next_if(|l| l.key == key) {
                if let Some(drift) = compare::compare(listed, &live) {
                    self.submit(&mut tasks, drift, counts).await;
                }
                continue;
            }
            // Rows written after the inventory was taken cannot be judged by it.
            let rows: Vec<_> = live
                .into_iter()
                .filter(|r| taken_at.is_none_or(|t| r.event_time <= t))
                .collect();
            if !rows.is_empty() {
                self.submit(&mut tasks, Drift::Gone { key, rows }, counts)
                    .await;
            }
        }
        for listed in entries {
            self.submit(&mut tasks, Drift::Missing(listed.clone()), counts)
                .await;
        }
        while self.wait_one(&mut tasks, counts).await {}
        Ok(())
    }

    /// Starts the repair of `drift`, first waiting for a free slot.
    async fn submit(&self, tasks: &mut JoinSet<Repaired>, drift: Drift, counts: &mut Counts) {
        while tasks.len() >= self.args.concurrency {
            self.wait_one(tasks, counts).await;
        }
        if !self.work.shutdown.is_cancelled() {
            tasks.spawn(repair(self.work.clone(), drift));
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
            () = self.work.shutdown.cancelled() => {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                false
            }
        }
    }
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
    match repaired.result {
        Ok(Some(outcome)) => counts.outcome(outcome),
        Ok(None) => {}
        Err(label) => counts.failed(&repaired.key, label, limit),
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

/// The next page, retrying a transient failure with a short backoff.
async fn next_page(
    source: &mut Source,
    shutdown: &CancellationToken,
) -> Result<Option<listing::Page>, Failure> {
    let mut attempt = 1;
    loop {
        match source.next_page().await {
            Err(failure @ Failure::Transient { .. }) if attempt < ATTEMPTS => {
                tracing::warn!(reason = failure.reason(), error = %failure, "listing failed; retrying");
                backoff(attempt, shutdown).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn backoff(attempt: u32, shutdown: &CancellationToken) {
    let delay = Duration::from_millis(500 * 4u64.pow(attempt - 1));
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = shutdown.cancelled() => {}
    }
}

/// Repairs one difference (in a dry run: only confirms it).
async fn repair(work: Arc<Work>, drift: Drift) -> Repaired {
    match drift {
        Drift::Missing(listed) => ingest(&work, listed, "missing").await,
        Drift::Changed(listed) => ingest(&work, listed, "changed").await,
        Drift::Gone { key, rows } => gone(&work, key, &rows).await,
    }
}

/// Live rows, no object in the listing: what does S3 show now? Stamped before asking, so an
/// upload S3 announces after the answer still wins over the removal.
async fn gone(work: &Work, key: String, rows: &[compare::LiveRow]) -> Repaired {
    let observed = Utc::now();
    let mut attempt = 1;
    let current = loop {
        match versions::current(&work.s3, &work.bucket, &key).await {
            Err(failure @ Failure::Transient { .. }) if attempt < ATTEMPTS => {
                backoff(attempt, &work.shutdown).await;
                attempt += 1;
                let _ = failure;
            }
            other => break other,
        }
    };
    match current {
        Err(failure) => Repaired {
            kind: Some("gone"),
            result: Err(format!("failed:{}", failed_key(&key, &failure))),
            key,
        },
        Ok(Current::Version(survivor)) if rows.iter().any(|r| r.etag == survivor.etag) => {
            Repaired {
                key,
                kind: None,
                result: Ok(None),
            }
        }
        Ok(Current::Version(survivor)) => {
            let listed = Listed {
                key,
                etag: survivor.etag,
                version_id: survivor.version_id,
                size: None,
            };
            ingest(work, listed, "changed").await
        }
        Ok(Current::Nothing) if work.dry_run => Repaired {
            key,
            kind: Some("gone"),
            result: Ok(None),
        },
        Ok(Current::Nothing) => {
            let event = ObjectEvent {
                kind: EventKind::Removed,
                event_name: "Reconcile:Gone".into(),
                bucket: work.bucket.clone(),
                key: key.clone(),
                etag: None,
                size: None,
                version_id: None,
                sequencer: None,
                event_time: observed,
            };
            let result = settle(work, Item::Object(event)).await;
            Repaired {
                key,
                kind: Some("gone"),
                result,
            }
        }
    }
}

/// Ingests the listed version as if S3 had just announced it: the read is pinned to its ETag
/// (and version), so an object changed or deleted since the listing is not recorded.
async fn ingest(work: &Work, listed: Listed, kind: &'static str) -> Repaired {
    if work.dry_run {
        return Repaired {
            key: listed.key,
            kind: Some(kind),
            result: Ok(None),
        };
    }
    let key = listed.key.clone();
    let event = ObjectEvent {
        kind: EventKind::Created,
        event_name: format!("Reconcile:{kind}"),
        bucket: work.bucket.clone(),
        key: listed.key,
        etag: Some(listed.etag),
        size: listed.size,
        version_id: listed.version_id,
        sequencer: None,
        event_time: Utc::now(),
    };
    let result = settle(work, Item::Object(event)).await;
    Repaired {
        key,
        kind: Some(kind),
        result,
    }
}

/// Runs one event through the pipeline, retrying a transient failure; the outcome label, or the
/// reason it failed.
async fn settle(work: &Work, item: Item) -> Result<Option<String>, String> {
    let mut attempt = 1;
    loop {
        match work
            .pipeline
            .process_items(std::slice::from_ref(&item))
            .await
        {
            Verdict::Ack(done) => {
                let mut label = None;
                for done in done {
                    label = Some(outcome_label(done.outcome));
                    done.report();
                }
                return Ok(label);
            }
            Verdict::DeadLetter { outcomes, failure } => {
                for done in outcomes {
                    done.report();
                }
                return Err(format!("refused:{}", failed(&item, &failure)));
            }
            Verdict::Retry(failure) if attempt < ATTEMPTS && !work.shutdown.is_cancelled() => {
                backoff(attempt, &work.shutdown).await;
                attempt += 1;
                let _ = failure;
            }
            Verdict::Retry(failure) => return Err(format!("failed:{}", failed(&item, &failure))),
        }
    }
}

fn failed(item: &Item, failure: &Failure) -> String {
    let key = match item {
        Item::Object(e) => e.key.as_str(),
        Item::Unsupported { .. } => "",
    };
    failed_key(key, failure)
}

/// Logs a repair that did not succeed; its reason code.
fn failed_key(key: &str, failure: &Failure) -> String {
    tracing::warn!(
        key,
        reason = failure.reason(),
        error = %crate::disposition::chain(failure),
        "reconcile repair not made"
    );
    failure.reason().to_owned()
}

fn outcome_label(outcome: Outcome) -> String {
    match outcome.label() {
        ("skipped", reason) => format!("skipped:{reason}"),
        (label, _) => label.to_owned(),
    }
}
