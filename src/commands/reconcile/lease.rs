//! Holding a scope while a run goes through it: the claim (continuing an interrupted run's
//! checkpoint, or refused while another reconcile holds an overlapping scope), the lease renewed
//! in the background, a checkpoint after each page, and the hold settled however the run ends.
//! What is stored, and how, is the store's ([`crate::store::reconcile::checkpoint`]).

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::reconcile::checkpoint::{self, CheckpointError, Claim, Lease};

use super::report::{Counts, Report, printable};
use super::scope::Scope;
use super::stopped::Stopped;

/// This run's hold on its scope: the lease, renewed until [`Hold::end`].
pub(crate) struct Hold {
    lease: Lease,
    /// Fired when another reconcile took the scope over.
    lost: CancellationToken,
    renewer: JoinHandle<()>,
}

impl Hold {
    /// Claims `scope` for a run reading `source` (the report says which) and starts renewing
    /// the lease. Returns the hold and the key to continue after; the report takes on the
    /// counts of the run it continues, or says who holds the scope.
    pub(crate) async fn claim(
        pool: &PgPool,
        scope: &Scope,
        restart: bool,
        report: &mut Report,
    ) -> Result<(Self, Option<String>), Stopped> {
        let claim = checkpoint::claim(pool, &scope.bucket, &scope.prefix, &report.source, restart)
            .await
            .map_err(|e| Stopped::failed(format!("claiming the reconcile scope: {e}")))?;
        let (lease, cursor, counts) = match claim {
            Claim::Held {
                lease,
                cursor,
                counts,
            } => (lease, cursor, counts),
            Claim::Busy {
                prefix,
                owner,
                until,
            } => {
                let busy = format!(
                    "another reconcile ({owner}) holds s3://{}/{} until {until}: nothing done",
                    scope.bucket,
                    printable(&prefix)
                );
                tracing::warn!("{busy}");
                report.busy = Some(busy.clone());
                return Err(Stopped::Busy(busy));
            }
        };
        report.resumed_after = cursor.as_deref().map(printable);
        report.counts = serde_json::from_value(counts).unwrap_or_default();
        let lost = CancellationToken::new();
        let renewer = tokio::spawn(renew(lease.clone(), lost.clone()));
        let hold = Self {
            lease,
            lost,
            renewer,
        };
        Ok((hold, cursor))
    }

    /// Returns once the lease is lost.
    pub(crate) async fn lost(&self) {
        self.lost.cancelled().await;
    }

    /// Records that every key up to `upto` is reconciled, with the counts so far.
    pub(crate) async fn save(&self, upto: &str, counts: &Counts) -> Result<(), Stopped> {
        self.lease
            .save(upto, &counts_json(counts))
            .await
            .map_err(|e| Stopped::failed(format!("saving the checkpoint: {e}")))
    }

    /// Ends the hold, whatever the run came to: finished (the next run starts over) or
    /// released (the next run continues from the checkpoint, at once). A finish that fails
    /// still releases; only a lost database leaves the lease to run out.
    pub(crate) async fn end(self, complete: bool, counts: &Counts) -> Result<(), Stopped> {
        self.renewer.abort();
        let finished = if complete {
            match self.lease.finish(&counts_json(counts)).await {
                Ok(()) => return Ok(()),
                Err(e) => Err(Stopped::failed(format!(
                    "recording the finished reconcile: {e}"
                ))),
            }
        } else {
            Ok(())
        };
        if let Err(error) = self.lease.release().await {
            tracing::error!(%error, "releasing the reconcile scope failed: it is free once the lease runs out");
        }
        finished
    }
}

/// The counts as the checkpoint stores them.
fn counts_json(counts: &Counts) -> serde_json::Value {
    serde_json::to_value(counts).unwrap_or_else(|_| serde_json::json!({}))
}

/// Renews the lease until the run ends; tells the run if another reconcile took it over.
async fn renew(lease: Lease, lost: CancellationToken) {
    loop {
        tokio::time::sleep(checkpoint::RENEW_EVERY).await;
        match lease.renew().await {
            Ok(()) => {}
            Err(CheckpointError::LeaseLost(holder)) => {
                tracing::error!(?holder, "the reconcile lease was lost: stopping");
                lost.cancel();
                return;
            }
            // A database blip: the lease lasts several renewals; the next try may pass.
            Err(error) => tracing::warn!(%error, "renewing the reconcile lease failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::reconcile::checkpoint::LEASE;

    #[test]
    fn the_checkpoint_holds_what_a_resumed_run_reports() {
        let mut counts = Counts {
            keys_listed: 3,
            ..Counts::default()
        };
        counts.unstorable("dp/a\0b", 5);
        let back: Counts = serde_json::from_value(counts_json(&counts)).unwrap();
        assert_eq!(back.keys_listed, 3);
        assert_eq!(back.first_keys, counts.first_keys);
        assert_eq!(back.outcomes, counts.outcomes);
    }

    #[test]
    fn a_lease_outlives_several_missed_renewals() {
        assert!(LEASE >= checkpoint::RENEW_EVERY * 3);
    }
}
