//! One run over a scope: what to read, the claim on the scope (none in a dry run), the pages,
//! and the hold settled however the run ends.

use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::cli::ReconcileArgs;
use crate::process::pipeline::Pipeline;

use super::lease::Hold;
use super::listing::Start;
use super::pages::Pages;
use super::repair::Work;
use super::report::Report;
use super::scope::Scope;
use super::source::{Reading, Source};
use super::stopped::Stopped;

/// What a run works with.
pub(crate) struct Run<'a> {
    pub(crate) pool: PgPool,
    pub(crate) scope: Scope,
    pub(crate) args: &'a ReconcileArgs,
    pub(crate) s3: aws_sdk_s3::Client,
    pub(crate) shutdown: CancellationToken,
}

impl Run<'_> {
    /// Claims the scope, goes through it, and settles the hold however that ended. Every
    /// repair goes through `pipeline`, which is gone when this returns.
    pub(crate) async fn go(&self, pipeline: Pipeline, report: &mut Report) -> Result<(), Stopped> {
        let reading = Reading::choose(&self.s3, &self.scope.bucket, self.args).await?;
        report.source = reading.name();
        // The inventory is opened (and refused) before the scope is claimed; reopened below
        // from the checkpoint.
        let source = self.open(&reading, None).await?;
        let pages = Pages {
            pool: &self.pool,
            scope: &self.scope,
            args: self.args,
            work: Arc::new(self.work(pipeline, &source)),
            shutdown: &self.shutdown,
        };
        if self.args.dry_run {
            return pages.walk(source, None, report, None).await;
        }
        let (hold, cursor) =
            Hold::claim(&self.pool, &self.scope, self.args.restart, report).await?;
        let source = match cursor {
            None => Ok(source),
            Some(_) => self.open(&reading, cursor.clone()).await,
        };
        let outcome = match source {
            Ok(source) => pages.walk(source, cursor, report, Some(&hold)).await,
            Err(stopped) => Err(stopped),
        };
        let settled = hold
            .end(outcome.is_ok() && report.complete, &report.counts)
            .await;
        outcome.and(settled)
    }

    /// What each repair needs.
    fn work(&self, pipeline: Pipeline, source: &Source) -> Work {
        Work {
            pipeline,
            s3: self.s3.clone(),
            bucket: self.scope.bucket.clone(),
            dry_run: self.args.dry_run,
            shutdown: self.shutdown.clone(),
            listed_at: source.taken_at(),
        }
    }

    /// The source `reading` names, from after `after` (`None`: from the scope's start).
    async fn open(&self, reading: &Reading, after: Option<String>) -> Result<Source, Stopped> {
        let start = Start {
            bucket: self.scope.bucket.clone(),
            prefix: self.scope.prefix.clone(),
            after,
            page_keys: self.args.page_keys,
        };
        let max_rows_per_key = self.args.inventory_max_rows_per_key;
        Source::open(self.s3.clone(), reading, start, max_rows_per_key).await
    }
}
