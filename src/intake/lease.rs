//! The lease on one received message: its receipt, its worker slot, the heartbeat that keeps it
//! invisible while it is worked on, and its settlement, as one value that settles itself.
//!
//! A lease ends in exactly one way: deleted (after its commit, or after its dead letter was
//! sent), retried (visibility set to its backoff), or released (visibility 0: shutdown, a
//! dependency proven down). One that is dropped unsettled (its task aborted) releases itself, so
//! another replica takes the message at once instead of after its visibility timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::disposition::{Failure, MessageDisposition, RetryReason};
use crate::intake::deleter::DeleteRequest;
use crate::intake::pool::{Context, backoff};
use crate::intake::queue::{Received, VisibilityError};
use crate::ops::health;
use crate::ops::metrics::{self, Raised};
use crate::process::pipeline::{Done, Verdict};

/// A worker slot and its gauge. Given back as soon as the message needs no more work, i.e. once
/// its delete is queued after the commit: waiting for SQS to confirm the delete is no reason to
/// keep another message waiting. The deleter's bounded channel still limits how many wait.
struct Slot {
    _permit: OwnedSemaphorePermit,
    _busy: Raised,
}

pub(super) struct Lease {
    context: Arc<Context>,
    message: Received,
    slot: Option<Slot>,
    settled: bool,
    /// In-flight: from receipt until the lease is settled (the delete confirmed, or the retry or
    /// release decided); outlives the slot by the wait for SQS's answer to the delete.
    _in_flight: Raised,
}

/// How holding a message while its work runs ended.
enum Held {
    Done(Verdict),
    /// Another receiver owns the message now: nothing to settle.
    Lost,
    /// The grace period is over: release.
    Stopped,
}

impl Lease {
    pub(super) fn new(
        context: Arc<Context>,
        message: Received,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            context,
            message,
            slot: Some(Slot {
                _permit: permit,
                _busy: Raised::new(metrics::WORKERS_BUSY),
            }),
            settled: false,
            _in_flight: Raised::new(metrics::IN_FLIGHT),
        }
    }

    /// Works the message to a verdict while keeping it invisible, then settles it.
    pub(super) async fn work(mut self) {
        let started = Instant::now();
        self.observe_queue_wait();
        match self.hold().await {
            Held::Done(verdict) => self.settle(verdict).await,
            Held::Stopped => self.release(MessageDisposition::Release).await,
            Held::Lost => {
                // Nothing to settle, and no processing time: the work did not finish here.
                self.settled = true;
                metrics::message_disposition(MessageDisposition::Lost);
                return;
            }
        }
        metrics::object_processing(started.elapsed());
    }

    fn observe_queue_wait(&self) {
        // The first-receive timestamp never changes, so only the first delivery observes it: a
        // redelivery would count the same wait again.
        let message = &self.message;
        if let (Some(sent), Some(first), 1) = (
            message.sent_at,
            message.first_received_at,
            message.receive_count,
        ) {
            metrics::queue_wait((first - sent).to_std().unwrap_or_default());
        }
    }

    /// Runs the message's work in a task of its own (so a panic on this message's data is a
    /// fact about this message, never the end of a worker) and extends the message's visibility
    /// every half timeout until the work ends, the processing cap is reached, or the grace
    /// period is over.
    async fn hold(&self) -> Held {
        let work = {
            let (pipeline, body) = (self.context.pipeline.clone(), self.message.body.clone());
            tokio::spawn(tracing::Instrument::in_current_span(async move {
                pipeline.process(&body).await
            }))
        };
        let abort = work.abort_handle();
        tokio::pin!(work);
        let started = Instant::now();
        let timeout = self.context.queue.visibility_timeout;
        let period = (timeout / 2).max(Duration::from_secs(1));
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let held = loop {
            tokio::select! {
                joined = &mut work => break Held::Done(match joined {
                    Ok(verdict) => verdict,
                    Err(e) => Verdict::Retry(Failure::transient(
                        RetryReason::ProcessingPanicked,
                        if e.is_panic() {
                            format!("processing panicked: {}", crate::disposition::panic_text(e.into_panic().as_ref()))
                        } else {
                            format!("processing stopped: {e}")
                        },
                    )),
                }),
                _ = heartbeat.tick() => {
                    if let Some(held) = self.beat(started, timeout).await {
                        break held;
                    }
                }
                _ = self.context.hard_stop.cancelled() => break Held::Stopped,
            }
        };
        abort.abort();
        held
    }

    /// One heartbeat: extend the visibility, unless the processing cap says this attempt ends.
    async fn beat(&self, started: Instant, timeout: Duration) -> Option<Held> {
        if started.elapsed() + timeout > self.context.settings.max_extension {
            // Extending further would break the promise of MAX_PROCESSING_SECS; the attempt ends
            // here and counts, like any other failure of this message.
            tracing::warn!(
                max_processing_secs = self.context.settings.max_extension.as_secs(),
                "processing cap reached: abandoning this attempt"
            );
            return Some(Held::Done(Verdict::Retry(Failure::transient(
                RetryReason::ProcessingTimeout,
                format!(
                    "still working after {:?} (MAX_PROCESSING_SECS)",
                    started.elapsed()
                ),
            ))));
        }
        match self.set_visibility(timeout).await {
            Ok(()) => metrics::visibility_extended(),
            Err(VisibilityError::Lost) => {
                tracing::warn!(
                    "receipt handle no longer valid: another receiver owns the message; stopping"
                );
                return Some(Held::Lost);
            }
            Err(VisibilityError::Failed(f)) => {
                tracing::warn!(error = %crate::disposition::chain(&f), "visibility extension failed")
            }
        }
        None
    }

    async fn settle(self, verdict: Verdict) {
        match verdict {
            Verdict::Ack(outcomes) => self.ack(outcomes, MessageDisposition::Ack).await,
            Verdict::DeadLetter { outcomes, failure } => self.dead_letter(outcomes, failure).await,
            Verdict::Retry(failure) => self.retry(failure).await,
        }
    }

    /// Deletes the message; on success its disposition and record outcomes are counted.
    async fn ack(mut self, outcomes: Vec<Done>, disposition: MessageDisposition) {
        if self.delete().await {
            metrics::message_disposition(disposition);
            outcomes.into_iter().for_each(Done::report);
        }
    }

    async fn dead_letter(self, outcomes: Vec<Done>, failure: Failure) {
        let reason = failure.dead_letter_reason();
        let detail = match &failure {
            Failure::Permanent { detail, .. } => detail.clone(),
            other => crate::disposition::chain(other),
        };
        // A message may announce several objects: the dead letter says which one failed.
        let detail = match failure.object() {
            Some(object) => format!("{object}: {detail}"),
            None => detail,
        };
        match self
            .context
            .queue
            .dead_letter(&self.message, reason.as_str(), &detail)
            .await
        {
            Ok(()) => {
                metrics::record_failure(&failure, true);
                metrics::dead_lettered(reason);
                self.ack(outcomes, MessageDisposition::DeadLetter).await;
            }
            Err(send_failure) => Box::pin(self.retry(send_failure)).await,
        }
    }

    /// A failure of this message: first ask the dependency's probe. Down: release the message
    /// (the pause keeps it and everything else from burning attempts). Up: the failure is about
    /// this message: back off, or, on its last attempt, dead-letter it with the reason.
    async fn retry(mut self, failure: Failure) {
        if let Some(dependency) = failure.dependency() {
            let verdict = self
                .context
                .health
                .confirm(dependency, &self.context.hard_stop)
                .await;
            if verdict != Some(health::Verdict::Up) {
                metrics::record_failure(&failure, false);
                return self.release(MessageDisposition::Release).await;
            }
        }
        let attempts = self.context.max_attempts();
        let receive_count = self.message.receive_count;
        if receive_count >= attempts
            && let Failure::Transient { reason, .. } = &failure
        {
            let mut exhausted = Failure::permanent(
                reason.exhausted(),
                format!(
                    "failed on attempt {receive_count} of {attempts}: {}",
                    crate::disposition::chain(&failure)
                ),
            );
            if let Some(object) = failure.object() {
                exhausted = exhausted.about(&object.bucket, &object.key);
            }
            return self.dead_letter(Vec::new(), exhausted).await;
        }
        metrics::record_failure(&failure, false);
        let delay = backoff(&self.context.settings, receive_count);
        self.settled = true;
        if let Err(e) = self.set_visibility(delay).await {
            tracing::warn!(error = %e, "could not set the retry delay; the message returns after its visibility timeout");
        }
        metrics::message_disposition(MessageDisposition::Retry);
    }

    async fn release(mut self, disposition: MessageDisposition) {
        self.settled = true;
        if let Err(e) = self.set_visibility(Duration::ZERO).await {
            tracing::warn!(error = %e, "could not release the message; it returns after its visibility timeout");
        }
        metrics::message_disposition(disposition);
    }

    /// Changes the message's visibility; the answer feeds the SQS breaker (a lost receipt is a
    /// fact about this message, not about SQS).
    async fn set_visibility(&self, timeout: Duration) -> Result<(), VisibilityError> {
        let result = self
            .context
            .queue
            .set_visibility(&self.message.receipt_handle, timeout)
            .await;
        let identity = &self.message.message_id;
        match &result {
            Ok(()) => self.context.health.observe_sqs(identity, Ok(())),
            Err(VisibilityError::Failed(failure)) => {
                self.context.health.observe_sqs(identity, Err(failure))
            }
            Err(VisibilityError::Lost) => {}
        }
        result
    }

    /// Queues the delete, gives the slot back, and waits for SQS's answer.
    async fn delete(&mut self) -> bool {
        self.settled = true;
        let (done, answer) = oneshot::channel();
        let request = DeleteRequest {
            receipt_handle: self.message.receipt_handle.clone(),
            done,
        };
        let sent = self.context.deletes.send(request).await;
        self.slot = None;
        let stopped = || Failure::transient(RetryReason::SqsDeleteFailed, "deleter stopped");
        let result = match sent {
            Ok(()) => answer.await.unwrap_or_else(|_| Err(stopped())),
            Err(_) => Err(stopped()),
        };
        match result {
            Ok(()) => true,
            Err(failure) => {
                // The work is committed; the message comes back and the idempotent write
                // absorbs it.
                tracing::warn!(error = %crate::disposition::chain(&failure), "delete failed; the message will be redelivered");
                metrics::message_disposition(MessageDisposition::Retry);
                false
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Dropped mid-work (its task was aborted): give the message back at once rather than
        // leave it invisible for the rest of its timeout.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let queue = self.context.queue.clone();
            let receipt = std::mem::take(&mut self.message.receipt_handle);
            runtime.spawn(async move {
                let _ = queue.set_visibility(&receipt, Duration::ZERO).await;
            });
            metrics::message_disposition(MessageDisposition::Release);
        }
    }
}
