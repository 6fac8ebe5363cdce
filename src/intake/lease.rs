//! The lease on one received message: its receipt, its worker slot, the heartbeat that keeps it
//! invisible while it is worked on, and its settlement, as one value that settles itself.
//!
//! What to do is [`settle::decide`]'s (pure); the lease only asks the probe first and carries the
//! decision out. A lease ends in exactly one way: deleted (after its commit, or after its dead
//! letter was sent), retried (visibility set to its backoff), or released (visibility 0:
//! shutdown, a dependency proven down). One that is dropped unsettled (its task aborted)
//! releases itself, so another replica takes the message at once instead of after its
//! visibility timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::disposition::{Failure, MessageDisposition, RetryReason};
use crate::intake::deleter::DeleteRequest;
use crate::intake::queue::RedriveLimit;
use crate::intake::settle::{self, Ended, Limits, Probe, Settlement};
use crate::intake::sqs::{DeadLetter, Received, Sqs, VisibilityChange, VisibilityError};
use crate::intake::visibility::VisibilityRequest;
use crate::ops::health::{self, Health};
use crate::ops::metrics::{self, Raised};
use crate::process::pipeline::{Done, Verdict};

/// What every lease needs: the SQS seam (for the dead-letter send), the deleter's and the
/// visibility batcher's queues, health (the probes and the SQS breaker) and the limits.
pub(crate) struct Context {
    pub(crate) sqs: Arc<dyn Sqs>,
    pub(crate) health: Health,
    pub(crate) deletes: mpsc::Sender<DeleteRequest>,
    pub(crate) visibility: mpsc::Sender<VisibilityRequest>,
    /// The visibility each heartbeat sets; it comes every half of it.
    pub(crate) visibility_timeout: Duration,
    /// Longest time a message's visibility is extended while it is worked on.
    pub(crate) max_extension: Duration,
    /// Retry delays, and the configured attempts (before the queue's own limit).
    pub(crate) limits: Limits,
    pub(crate) redrive: RedriveLimit,
    /// Fired when the grace period is over: unfinished work is released.
    pub(crate) hard_stop: CancellationToken,
}

impl Context {
    /// The limits as they stand now: the queue's redrive limit is learned after start.
    fn current_limits(&self) -> Limits {
        Limits {
            max_attempts: settle::max_attempts(self.limits.max_attempts, self.redrive.get()),
            ..self.limits
        }
    }
}

/// A worker slot and its gauge. Given back as soon as the message needs no more work, i.e. once
/// its delete (or its retry or release) is queued: waiting for SQS's answer is no reason to keep
/// another message waiting. The batchers' bounded channels still limit how many wait.
struct Slot {
    _permit: OwnedSemaphorePermit,
    _busy: Raised,
}

pub(crate) struct Lease {
    context: Arc<Context>,
    message: Received,
    slot: Option<Slot>,
    settled: bool,
    /// Until when SQS keeps the message invisible, as far as this lease knows: its receipt plus
    /// the visibility timeout, moved on by each heartbeat SQS accepted.
    visible_until: Instant,
    /// In-flight: from receipt until the lease is settled (SQS has answered its delete, retry or
    /// release); outlives the slot by the wait for that answer.
    _in_flight: Raised,
}

/// How long a message about to be dead-lettered is held at least: the send and the delete,
/// retried by the SDK on a slow queue, fit in it many times over.
const DEAD_LETTER_HOLD: Duration = Duration::from_secs(30);

/// How often the heartbeat extends a message's visibility: every half timeout, at most once a
/// second.
fn heartbeat_period(timeout: Duration) -> Duration {
    (timeout / 2).max(Duration::from_secs(1))
}

/// What one heartbeat did.
enum Beat {
    /// SQS keeps the message invisible until then.
    Extended(Instant),
    /// The extension failed (logged); the message may come back when its visibility ends.
    Failed,
    /// This attempt ends here.
    Ended(Held),
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
    pub(crate) fn new(
        context: Arc<Context>,
        message: Received,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            message,
            slot: Some(Slot {
                _permit: permit,
                _busy: Raised::new(metrics::WORKERS_BUSY),
            }),
            settled: false,
            visible_until: Instant::now() + context.visibility_timeout,
            _in_flight: Raised::new(metrics::IN_FLIGHT),
            context,
        }
    }

    /// Runs `work` (the message's processing) to a verdict while keeping the message invisible,
    /// then settles it.
    pub(crate) async fn work(mut self, work: impl Future<Output = Verdict> + Send + 'static) {
        let started = Instant::now();
        self.observe_queue_wait();
        let (held, visible_until) = self.hold(work).await;
        self.visible_until = visible_until;
        let (ended, outcomes) = match held {
            Held::Done(Verdict::Ack(outcomes)) => (Ended::Done, outcomes),
            Held::Done(Verdict::DeadLetter { outcomes, failure }) => {
                (Ended::Failed(failure), outcomes)
            }
            Held::Done(Verdict::Retry(failure)) => (Ended::Failed(failure), Vec::new()),
            Held::Stopped => (Ended::Stopped, Vec::new()),
            Held::Lost => (Ended::Lost, Vec::new()),
        };
        let lost = matches!(ended, Ended::Lost);
        self.settle(ended, outcomes).await;
        // A lost message's work did not finish here: no processing time.
        if !lost {
            metrics::object_processing(started.elapsed());
        }
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

    /// Runs the work in a task of its own (so a panic on this message's data is a fact about
    /// this message, never the end of a worker) and extends the message's visibility every half
    /// timeout until the work ends, the processing cap is reached, or the grace period is over.
    /// Returns how it ended and until when the message is invisible.
    async fn hold(&self, work: impl Future<Output = Verdict> + Send + 'static) -> (Held, Instant) {
        let work = tokio::spawn(tracing::Instrument::in_current_span(work));
        let abort = work.abort_handle();
        tokio::pin!(work);
        let started = Instant::now();
        let timeout = self.context.visibility_timeout;
        let period = heartbeat_period(timeout);
        let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
        let mut visible_until = self.visible_until;
        let held = loop {
            tokio::select! {
                joined = &mut work => break Held::Done(joined.unwrap_or_else(|e| {
                    Verdict::Retry(Failure::transient(
                        RetryReason::ProcessingPanicked,
                        if e.is_panic() {
                            format!("processing panicked: {}", crate::disposition::panic_text(e.into_panic().as_ref()))
                        } else {
                            format!("processing stopped: {e}")
                        },
                    ))
                })),
                _ = heartbeat.tick() => {
                    match self.beat(started, timeout).await {
                        Beat::Extended(until) => visible_until = until,
                        Beat::Failed => {}
                        Beat::Ended(held) => break held,
                    }
                }
                _ = self.context.hard_stop.cancelled() => break Held::Stopped,
            }
        };
        abort.abort();
        (held, visible_until)
    }

    /// One heartbeat: extend the visibility, unless the processing cap says this attempt ends.
    async fn beat(&self, started: Instant, timeout: Duration) -> Beat {
        if started.elapsed() + timeout > self.context.max_extension {
            // Extending further would break the promise of MAX_PROCESSING_SECS; the attempt ends
            // here and counts, like any other failure of this message.
            tracing::warn!(
                max_processing_secs = self.context.max_extension.as_secs(),
                "processing cap reached: abandoning this attempt"
            );
            return Beat::Ended(Held::Done(Verdict::Retry(Failure::transient(
                RetryReason::ProcessingTimeout,
                format!(
                    "still working after {:?} (MAX_PROCESSING_SECS)",
                    started.elapsed()
                ),
            ))));
        }
        match self.extend(timeout).await {
            Ok(until) => Beat::Extended(until),
            Err(VisibilityError::Lost) => {
                tracing::warn!(
                    "receipt handle no longer valid: another receiver owns the message; stopping"
                );
                Beat::Ended(Held::Lost)
            }
            Err(VisibilityError::Failed(f)) => {
                tracing::warn!(error = %crate::disposition::chain(&f), "visibility extension failed");
                Beat::Failed
            }
        }
    }

    /// Sets the message's visibility to `timeout` from now; on success, the new end of it.
    async fn extend(&self, timeout: Duration) -> Result<Instant, VisibilityError> {
        // Taken before asking: SQS counts the timeout from its answer, a little later.
        let asked = Instant::now();
        let answer = self
            .queue_visibility(timeout)
            .await
            .map_err(VisibilityError::Failed)?;
        answer.await?;
        metrics::visibility_extended();
        Ok(asked + timeout)
    }

    /// Decides what becomes of the message (asking the dependency's probe first when the
    /// failure names one) and carries it out.
    async fn settle(mut self, mut ended: Ended, mut outcomes: Vec<Done>) {
        // At most twice: a dead letter that could not be sent is decided again, and that
        // decision never sends one (see `Ended::DeadLetterUnsent`).
        loop {
            let probe = match settle::probe_for(&ended) {
                None => Probe::NotAsked,
                Some(dependency) => {
                    let health = &self.context.health;
                    match health.confirm(dependency, &self.context.hard_stop).await {
                        Some(health::Verdict::Up) => Probe::Up,
                        _ => Probe::Down,
                    }
                }
            };
            let limits = self.context.current_limits();
            let receive_count = self.message.receive_count;
            let settlement = settle::decide(ended, receive_count, probe, &limits, fastrand::f64());
            // The outcomes of a message whose dead letter was not sent are not reported: it
            // is not settled by this attempt.
            match self
                .carry_out(settlement, std::mem::take(&mut outcomes))
                .await
            {
                Some(unsent) => ended = unsent,
                None => return,
            }
        }
    }

    /// Carries `settlement` out; `Some` when a dead letter could not be sent, to decide again.
    async fn carry_out(&mut self, settlement: Settlement, outcomes: Vec<Done>) -> Option<Ended> {
        match settlement {
            Settlement::Delete => self.ack(outcomes, MessageDisposition::Ack).await,
            Settlement::DeadLetter(failure) => return self.dead_letter(outcomes, failure).await,
            Settlement::Retry { delay, failure } => {
                metrics::record_failure(&failure, false);
                self.set_visibility(delay, "could not set the retry delay")
                    .await;
                metrics::message_disposition(MessageDisposition::Retry);
            }
            Settlement::Release(failure) => {
                if let Some(failure) = failure {
                    metrics::record_failure(&failure, false);
                }
                self.set_visibility(Duration::ZERO, "could not release the message")
                    .await;
                metrics::message_disposition(MessageDisposition::Release);
            }
            Settlement::Abandon => {
                self.settled = true;
                metrics::message_disposition(MessageDisposition::Lost);
            }
        }
        None
    }

    /// Sends the dead letter, then deletes the message; `Some` (what to decide again on) when
    /// the send failed.
    async fn dead_letter(&mut self, outcomes: Vec<Done>, failure: Failure) -> Option<Ended> {
        if !self.cover_dead_letter().await {
            self.settled = true;
            metrics::message_disposition(MessageDisposition::Lost);
            return None;
        }
        let reason = failure.dead_letter_reason();
        let detail = settle::dead_letter_detail(&failure);
        let sent = self
            .context
            .sqs
            .send_dead_letter(DeadLetter {
                message: &self.message,
                reason,
                detail: &detail,
            })
            .await;
        if let Err(unsent) = sent {
            return Some(Ended::DeadLetterUnsent(unsent));
        }
        metrics::record_failure(&failure, true);
        metrics::dead_lettered(reason);
        self.ack(outcomes, MessageDisposition::DeadLetter).await;
        None
    }

    /// Makes sure the message stays invisible while its dead letter is sent and it is deleted.
    /// If it came back in between, SQS would hand it out again: past the queue's redrive limit
    /// it moves a second copy to the dead-letter queue itself, without the worker's reason. Only
    /// a lease with no more than a heartbeat period left asks (the processing cap ends attempts
    /// there, and a late heartbeat leaves less): one more call per such dead letter, none for the
    /// rest.
    ///
    /// `false` when the message is no longer this lease's: another receiver has it and will
    /// settle it, so no dead letter is sent from here.
    async fn cover_dead_letter(&mut self) -> bool {
        let timeout = self.context.visibility_timeout;
        if self.visible_until.saturating_duration_since(Instant::now()) > heartbeat_period(timeout)
        {
            return true;
        }
        match self.extend(timeout.max(DEAD_LETTER_HOLD)).await {
            Ok(until) => self.visible_until = until,
            Err(VisibilityError::Lost) => {
                tracing::warn!(
                    "receipt handle no longer valid: another receiver owns the message; no dead letter from here"
                );
                return false;
            }
            // Sent anyway: a dead letter too many beats a failure recorded nowhere.
            Err(e) => tracing::warn!(error = %e, "could not hold the message for its dead letter"),
        }
        true
    }

    /// Deletes the message; on success its disposition and record outcomes are counted.
    async fn ack(&mut self, outcomes: Vec<Done>, disposition: MessageDisposition) {
        if self.delete().await {
            metrics::message_disposition(disposition);
            outcomes.into_iter().for_each(Done::report);
        }
    }

    /// Sets the visibility to settle the message (a retry's delay, or 0 to release it): queues
    /// the change, gives the slot back, and waits for SQS's answer. A failure is logged with
    /// `failed`: the message then comes back after its visibility timeout.
    async fn set_visibility(&mut self, timeout: Duration, failed: &str) {
        self.settled = true;
        let answer = self.queue_visibility(timeout).await;
        self.slot = None;
        let result = match answer {
            Ok(answer) => answer.await,
            Err(stopped) => Err(VisibilityError::Failed(stopped)),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "{failed}; it returns after its visibility timeout");
        }
    }

    /// Queues a change of this message's visibility; the answer comes on the returned future.
    async fn queue_visibility(
        &self,
        timeout: Duration,
    ) -> Result<impl Future<Output = Result<(), VisibilityError>> + use<>, Failure> {
        let (done, answer) = oneshot::channel();
        let request = self.visibility_request(timeout, done);
        let stopped = || Failure::transient(RetryReason::SqsError, "visibility batcher stopped");
        self.context
            .visibility
            .send(request)
            .await
            .map_err(|_| stopped())?;
        Ok(async move {
            answer
                .await
                .unwrap_or_else(|_| Err(VisibilityError::Failed(stopped())))
        })
    }

    fn visibility_request(
        &self,
        timeout: Duration,
        done: oneshot::Sender<Result<(), VisibilityError>>,
    ) -> VisibilityRequest {
        VisibilityRequest {
            message_id: self.message.message_id.clone(),
            change: VisibilityChange {
                receipt_handle: self.message.receipt_handle.clone(),
                timeout,
            },
            done,
        }
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
        // leave it invisible for the rest of its timeout. Nobody waits for the answer.
        let (done, _) = oneshot::channel();
        let request = self.visibility_request(Duration::ZERO, done);
        let queued = match self.context.visibility.try_send(request) {
            Ok(()) => true,
            Err(TrySendError::Full(request)) => {
                let sender = self.context.visibility.clone();
                tokio::runtime::Handle::try_current()
                    .map(|runtime| {
                        runtime.spawn(async move {
                            let _ = sender.send(request).await;
                        })
                    })
                    .is_ok()
            }
            Err(TrySendError::Closed(_)) => false,
        };
        if queued {
            metrics::message_disposition(MessageDisposition::Release);
        }
    }
}

#[cfg(test)]
mod tests;
