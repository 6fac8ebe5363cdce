//! Going through a source page by page: each page compared with the live rows of its key range
//! ([`Merge`]), each difference repaired at most `--concurrency` at a time, counted, and the
//! page checkpointed once every repair of it is done.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::ReconcileArgs;
use crate::ops;
use crate::store::reconcile::live::LiveRows;

use super::compare::{Drift, Merge};
use super::lease::Hold;
use super::listing::Page;
use super::repair::{self, Repaired, Work};
use super::report::{Counts, Progress, Report, printable};
use super::scope::Scope;
use super::source::{self, Source};
use super::stopped::Stopped;

/// A walk through one source's pages.
pub(crate) struct Pages<'a> {
    pub(crate) pool: &'a PgPool,
    pub(crate) scope: &'a Scope,
    pub(crate) args: &'a ReconcileArgs,
    pub(crate) work: Arc<Work>,
    pub(crate) shutdown: &'a CancellationToken,
}

impl Pages<'_> {
    /// Page after page, from after `after`, until the scope ends, the run is interrupted, or
    /// the lease of `hold` (none in a dry run) is lost.
    pub(crate) async fn walk(
        &self,
        mut source: Source,
        mut after: Option<String>,
        report: &mut Report,
        hold: Option<&Hold>,
    ) -> Result<(), Stopped> {
        tracing::info!(
            bucket = %self.scope.bucket,
            prefix = printable(&self.scope.prefix),
            listing = source.name(),
            resumed_after = after.as_deref().map(printable).unwrap_or_default(),
            dry_run = self.args.dry_run,
            "reconcile started"
        );
        let every = Duration::from_secs(self.args.progress_secs.max(1));
        let mut progress = Progress::new(self.args.progress, every);
        let result = loop {
            let page = tokio::select! {
                page = source::next_page(&mut source, self.shutdown) => page,
                () = self.shutdown.cancelled() => break Ok(()),
                () = lost(hold) => break Err(Stopped::failed("the lease on this scope was lost")),
            };
            let page = match page {
                Ok(Some(page)) => page,
                Ok(None) => {
                    report.complete = true;
                    break Ok(());
                }
                Err(failure) => break Err(Stopped::listing("listing the bucket", &failure)),
            };
            match self
                .step(page, &mut after, report, hold, &mut progress)
                .await
            {
                Ok(ControlFlow::Continue(())) => {}
                Ok(ControlFlow::Break(())) => break Ok(()),
                Err(stopped) => break Err(stopped),
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

    /// One page: the keys the database cannot hold set aside, the rest compared and repaired,
    /// then counted and checkpointed. Breaks at the scope's end or on shutdown.
    async fn step(
        &self,
        page: Page,
        after: &mut Option<String>,
        report: &mut Report,
        hold: Option<&Hold>,
        progress: &mut Progress,
    ) -> Result<ControlFlow<()>, Stopped> {
        let limit = self.args.report_keys;
        let (page, unstorable) = page.storable();
        for key in &unstorable {
            tracing::warn!(
                key = printable(key),
                "a key PostgreSQL cannot hold (it contains NUL): skipped"
            );
            report.counts.unstorable(key, limit);
        }
        self.page(&page, after.as_deref(), &mut report.counts)
            .await
            .map_err(|e| Stopped::failed(format!("reading live rows: {e}")))?;
        if self.shutdown.is_cancelled() {
            // The page's repairs may have been cut short: its checkpoint is not saved.
            return Ok(ControlFlow::Break(()));
        }
        let keys = page.entries.len() + unstorable.len();
        report.counts.paged(keys);
        ops::metrics::reconcile_page(keys);
        progress.page(&report.counts, &reached(&page));
        let Some(upto) = page.upto else {
            report.complete = true;
            return Ok(ControlFlow::Break(()));
        };
        if let Some(hold) = hold {
            hold.save(&upto, &report.counts).await?;
        }
        *after = Some(upto);
        Ok(ControlFlow::Continue(()))
    }

    /// Compares one page with the live rows of its range and repairs what differs, at most
    /// `concurrency` at a time; returns once every repair of the page is done.
    async fn page(
        &self,
        page: &Page,
        after: Option<&str>,
        counts: &mut Counts,
    ) -> Result<(), sqlx::Error> {
        let (bucket, prefix) = (&self.scope.bucket, &self.scope.prefix);
        let upto = page.upto.as_deref();
        let mut rows = LiveRows::new(self.pool, bucket, prefix, after, upto);
        let mut merge = Merge::new(&page.entries, self.work.listed_at);
        let mut tasks = JoinSet::new();
        while let Some((key, live)) = rows.next_key().await? {
            for drift in merge.key(key, live) {
                self.submit(&mut tasks, drift, counts).await;
            }
        }
        for drift in merge.rest() {
            self.submit(&mut tasks, drift, counts).await;
        }
        while self.wait_one(&mut tasks, counts).await {}
        Ok(())
    }

    /// Starts the repair of `drift`, first waiting for a free slot.
    async fn submit(&self, tasks: &mut JoinSet<Repaired>, drift: Drift, counts: &mut Counts) {
        while tasks.len() >= self.args.concurrency {
            self.wait_one(tasks, counts).await;
        }
        if !self.shutdown.is_cancelled() {
            tasks.spawn(repair::repair(self.work.clone(), drift));
        }
    }

    /// Waits for one repair and counts it; false once none is left. On shutdown the repairs in
    /// hand are abandoned (each is one idempotent write, committed or not): the page is not
    /// checkpointed, and the next run does it again.
    async fn wait_one(&self, tasks: &mut JoinSet<Repaired>, counts: &mut Counts) -> bool {
        let limit = self.args.report_keys;
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(Ok(repaired)) => {
                    counts.repaired(&repaired.key, repaired.kind, &repaired.made, limit);
                    true
                }
                // A repair that panicked is a failure like another.
                Some(Err(error)) => {
                    tracing::error!(%error, "a reconcile repair task ended abnormally");
                    counts.failed("?", "failed:panicked".into(), limit);
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

/// Returns once the lease of `hold` is lost; never without one.
async fn lost(hold: Option<&Hold>) {
    match hold {
        Some(hold) => hold.lost().await,
        None => std::future::pending().await,
    }
}

/// How far a page took the run, for the progress line.
fn reached(page: &Page) -> String {
    page.upto
        .clone()
        .or_else(|| page.entries.last().map(|l| l.key.clone()))
        .unwrap_or_default()
}
