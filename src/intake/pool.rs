//! The pool: pollers that receive only for idle workers, a task per message, and settlement.
//!
//! A semaphore holds `WORKER_CONCURRENCY` slots. A poller first takes one free slot, then every
//! other free slot (up to ten), and asks SQS for that many messages, so no message waits in
//! memory while its visibility clock runs. Each message keeps its slot until its work is done (its
//! delete queued after the commit, or its retry or release decided).
//! Shutdown stops receiving at once, lets in-flight work finish within the grace period, and
//! releases the rest (visibility 0) so another replica takes it immediately.
//!
//! Work on one message runs in a task of its own: whatever happens there, a panic included, is a
//! fact about that message. A failure is charged to the message (backoff on its receive count,
//! and a dead letter with a reason on its last attempt) only after a fresh probe has said the
//! dependency is up; if the probe fails too, the message is released and receiving pauses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::disposition::{Failure, RetryReason};
use crate::intake::deleter::DeleteRequest;
use crate::intake::queue::{Queue, Received, VisibilityError};
use crate::ops::health::{self, Health};
use crate::ops::metrics::{self as m, Raised};
use crate::ops::watchdog::Watchdog;
use crate::process::pipeline::{Done, Pipeline, Verdict};

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub pollers: usize,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Longest time a message's visibility is extended while it is worked on.
    pub max_extension: Duration,
    pub shutdown_grace: Duration,
    /// Attempts a message gets before a failure dead-letters it with its reason (capped by the
    /// queue's own `maxReceiveCount`, so SQS never moves it first without a reason).
    pub max_attempts: u32,
}

struct Context {
    pipeline: Pipeline,
    queue: Queue,
    health: Health,
    deletes: mpsc::Sender<DeleteRequest>,
    settings: WorkerSettings,
    /// Fired when the grace period is over: unfinished work is released.
    hard_stop: CancellationToken,
}

/// Runs until `shutdown` fires and in-flight work is drained or released. If `watchdog` fires
/// (a supervised task died), in-flight work is released at once.
pub async fn run(
    pipeline: Pipeline,
    queue: Queue,
    health: Health,
    settings: WorkerSettings,
    shutdown: CancellationToken,
    watchdog: Watchdog,
) {
    let (deletes, delete_requests) = mpsc::channel(settings.concurrency.max(10) * 2);
    let deleter = watchdog.spawn(
        "deleter",
        crate::intake::deleter::run_deleter(queue.clone(), delete_requests),
    );
    let slots = Arc::new(Semaphore::new(settings.concurrency));
    metrics::gauge!(m::CONCURRENCY).set(settings.concurrency as f64);
    let context = Arc::new(Context {
        pipeline,
        queue,
        health,
        deletes,
        settings: settings.clone(),
        hard_stop: CancellationToken::new(),
    });
    let tasks = TaskTracker::new();
    // Receiving stops on shutdown, or at once when a supervised task died; cancelled only after
    // the watchdog knows the pollers are meant to end.
    let receiving = CancellationToken::new();
    let pollers: Vec<_> = (0..settings.pollers.max(1))
        .map(|_| {
            watchdog.spawn(
                "poller",
                poll(
                    context.clone(),
                    slots.clone(),
                    tasks.clone(),
                    receiving.clone(),
                ),
            )
        })
        .collect();

    let fatal = watchdog.fatal().clone();
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = fatal.cancelled() => {}
    }
    // From here on the pollers, then the deleter, are meant to end.
    watchdog.stopping();
    receiving.cancel();
    for poller in pollers {
        let _ = poller.await;
    }
    tasks.close();
    let grace = if fatal.is_cancelled() {
        Duration::ZERO
    } else {
        settings.shutdown_grace
    };
    tracing::info!(
        in_flight = tasks.len(),
        grace_secs = grace.as_secs(),
        "shutting down: draining in-flight work"
    );
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!(
            unfinished = tasks.len(),
            "grace period over: releasing unfinished messages"
        );
        context.hard_stop.cancel();
        tasks.wait().await;
    }
    drop(context);
    let _ = deleter.await;
    tracing::info!("worker stopped");
}

async fn poll(
    context: Arc<Context>,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        if !context.health.wait_ready(&shutdown).await {
            return;
        }
        let first = {
            let _idle = Raised::new(m::POLLERS_IDLE);
            tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
                _ = shutdown.cancelled() => return,
            }
        };
        let mut permits = vec![first];
        while permits.len() < 10 {
            match slots.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        let received = {
            let _receiving = Raised::new(m::POLLERS_RECEIVING);
            tokio::select! {
                r = context.queue.receive(permits.len()) => r,
                // Dropping a long poll may leave a message invisible until its timeout; it is
                // redelivered then, never lost.
                _ = shutdown.cancelled() => return,
            }
        };
        let messages = match received {
            Ok(messages) => messages,
            Err(failure) => {
                tracing::warn!(error = %crate::disposition::chain(&failure), "receive failed");
                // Ask the probe: if SQS is down the loop waits for it above; if not, a short
                // pause keeps a persistent error from spinning.
                if let Some(dependency) = failure.dependency()
                    && context.health.confirm(dependency, &shutdown).await
                        == Some(health::Verdict::Down)
                {
                    continue;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => return,
                }
                continue;
            }
        };
        m::received(&context.queue.url, &messages);
        for message in messages {
            let permit = permits
                .pop()
                .expect("never more messages than slots asked for");
            // ERROR level so that a filter keeping only warnings still shows the message each
            // line is about. The object fields are filled in when the message fails on one.
            let span = tracing::error_span!("message", message_id = %message.message_id, receive_count = message.receive_count, bucket = tracing::field::Empty, key = tracing::field::Empty, etag = tracing::field::Empty);
            tasks.spawn(handle(context.clone(), message, permit).instrument(span));
        }
    }
}

/// A worker slot and its gauge. Given back as soon as the message needs no more work, i.e. once
/// its delete is queued after the commit: waiting for SQS to confirm the delete is no reason to
/// keep another message waiting. The deleter's bounded channel still limits how many wait.
struct Slot {
    _permit: OwnedSemaphorePermit,
    _busy: Raised,
}

async fn handle(context: Arc<Context>, message: Received, permit: OwnedSemaphorePermit) {
    let slot = Slot {
        _permit: permit,
        _busy: Raised::new(m::WORKERS_BUSY),
    };
    let _in_flight = Raised::new(m::IN_FLIGHT);
    let started = Instant::now();
    // The first-receive timestamp never changes, so only the first delivery observes it: a
    // redelivery would count the same wait again.
    if let (Some(sent), Some(first), 1) = (
        message.sent_at,
        message.first_received_at,
        message.receive_count,
    ) {
        let wait = (first - sent).to_std().unwrap_or_default();
        metrics::histogram!(m::QUEUE_WAIT).record(wait.as_secs_f64());
    }
    // The message's work runs in a task of its own, so a panic on this message's data is a
    // fact about this message (retried, then dead-lettered), never the end of a worker.
    let work = {
        let (pipeline, message) = (context.pipeline.clone(), message.clone());
        tokio::spawn(async move { pipeline.process(&message).await }.in_current_span())
    };
    let abort = work.abort_handle();
    tokio::pin!(work);
    let timeout = context.queue.visibility_timeout;
    let period = (timeout / 2).max(Duration::from_secs(1));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let verdict = loop {
        tokio::select! {
            joined = &mut work => break Some(match joined {
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
                if started.elapsed() + timeout > context.settings.max_extension {
                    // Extending further would break the promise of MAX_PROCESSING_SECS; the
                    // attempt ends here and counts, like any other failure of this message.
                    abort.abort();
                    tracing::warn!(
                        max_processing_secs = context.settings.max_extension.as_secs(),
                        "processing cap reached: abandoning this attempt"
                    );
                    break Some(Verdict::Retry(Failure::transient(
                        RetryReason::ProcessingTimeout,
                        format!("still working after {:?} (MAX_PROCESSING_SECS)", started.elapsed()),
                    )));
                }
                match context.queue.set_visibility(&message.receipt_handle, timeout).await {
                    Ok(()) => metrics::counter!(m::VISIBILITY_EXTENSIONS).increment(1),
                    Err(VisibilityError::Lost) => {
                        abort.abort();
                        tracing::warn!("receipt handle no longer valid: another receiver owns the message; stopping");
                        m::message_disposition("lost");
                        return;
                    }
                    Err(VisibilityError::Failed(f)) => tracing::warn!(error = %crate::disposition::chain(&f), "visibility extension failed"),
                }
            }
            _ = context.hard_stop.cancelled() => {
                abort.abort();
                break None;
            }
        }
    };
    match verdict {
        Some(verdict) => settle(&context, &message, verdict, slot).await,
        None => release(&context, &message, "release").await,
    }
    metrics::histogram!(m::OBJECT_PROCESSING).record(started.elapsed().as_secs_f64());
}

async fn settle(context: &Context, message: &Received, verdict: Verdict, slot: Slot) {
    match verdict {
        Verdict::Ack(outcomes) => {
            if delete(context, message, slot).await {
                m::message_disposition("ack");
                outcomes.into_iter().for_each(Done::report);
            }
        }
        Verdict::DeadLetter { outcomes, failure } => {
            dead_letter(context, message, outcomes, failure, slot).await
        }
        Verdict::Retry(failure) => retry(context, message, failure, slot).await,
    }
}

async fn dead_letter(
    context: &Context,
    message: &Received,
    outcomes: Vec<Done>,
    failure: Failure,
    slot: Slot,
) {
    let reason = failure.reason();
    let detail = match &failure {
        Failure::Permanent { detail, .. } => detail.clone(),
        other => crate::disposition::chain(other),
    };
    match context.queue.dead_letter(message, reason, &detail).await {
        Ok(()) => {
            m::record_failure(&failure, true);
            m::dead_lettered(reason);
            if delete(context, message, slot).await {
                m::message_disposition("dead_letter");
                outcomes.into_iter().for_each(Done::report);
            }
        }
        Err(send_failure) => Box::pin(retry(context, message, send_failure, slot)).await,
    }
}

/// A failure of this message: first ask the dependency's probe. Down: release the message (the
/// pause keeps it and everything else from burning attempts). Up: the failure is about this
/// message: back off, or, on its last attempt, dead-letter it with the reason.
async fn retry(context: &Context, message: &Received, failure: Failure, slot: Slot) {
    if let Some(dependency) = failure.dependency() {
        let verdict = context.health.confirm(dependency, &context.hard_stop).await;
        if verdict != Some(health::Verdict::Up) {
            m::record_failure(&failure, false);
            return release(context, message, "release").await;
        }
    }
    let attempts = context.max_attempts();
    if message.receive_count >= attempts
        && let Failure::Transient { reason, .. } = &failure
    {
        let exhausted = Failure::permanent(
            reason.exhausted(),
            format!(
                "failed on attempt {} of {attempts}: {}",
                message.receive_count,
                crate::disposition::chain(&failure)
            ),
        );
        return dead_letter(context, message, Vec::new(), exhausted, slot).await;
    }
    m::record_failure(&failure, false);
    let delay = backoff(&context.settings, message.receive_count);
    if let Err(e) = context
        .queue
        .set_visibility(&message.receipt_handle, delay)
        .await
    {
        tracing::warn!(error = %e, "could not set the retry delay; the message returns after its visibility timeout");
    }
    m::message_disposition("retry");
}

impl Context {
    /// The attempt on which a failure dead-letters the message: the configured number, but
    /// never beyond the queue's own `maxReceiveCount` (SQS would move it without a reason).
    fn max_attempts(&self) -> u32 {
        match self.queue.max_receive_count() {
            Some(limit) => self.settings.max_attempts.min(limit),
            None => self.settings.max_attempts,
        }
        .max(1)
    }
}

async fn release(context: &Context, message: &Received, disposition: &'static str) {
    if let Err(e) = context
        .queue
        .set_visibility(&message.receipt_handle, Duration::ZERO)
        .await
    {
        tracing::warn!(error = %e, "could not release the message; it returns after its visibility timeout");
    }
    m::message_disposition(disposition);
}

async fn delete(context: &Context, message: &Received, slot: Slot) -> bool {
    let (done, answer) = oneshot::channel();
    let request = DeleteRequest {
        receipt_handle: message.receipt_handle.clone(),
        done,
    };
    let sent = context.deletes.send(request).await;
    drop(slot);
    let result = match sent {
        Ok(()) => answer.await.unwrap_or_else(|_| {
            Err(Failure::transient(
                RetryReason::SqsDeleteFailed,
                "deleter stopped",
            ))
        }),
        Err(_) => Err(Failure::transient(
            RetryReason::SqsDeleteFailed,
            "deleter stopped",
        )),
    };
    match result {
        Ok(()) => true,
        Err(failure) => {
            // The work is committed; the message comes back and the idempotent write absorbs it.
            tracing::warn!(error = %crate::disposition::chain(&failure), "delete failed; the message will be redelivered");
            m::message_disposition("retry");
            false
        }
    }
}

/// Visibility delay before the next attempt: exponential on the receive count, jittered, capped.
pub fn backoff(settings: &WorkerSettings, receive_count: u32) -> Duration {
    ExponentialBuilder::default()
        .with_min_delay(settings.retry_base)
        .with_max_delay(settings.retry_max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(receive_count.saturating_sub(1) as usize)
        .unwrap_or(settings.retry_max)
        .min(settings.retry_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_the_receive_count_and_stays_capped() {
        let settings = WorkerSettings {
            concurrency: 1,
            pollers: 1,
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(900),
            max_extension: Duration::from_secs(3600),
            shutdown_grace: Duration::from_secs(1),
            max_attempts: 10,
        };
        for _ in 0..50 {
            let first = backoff(&settings, 1);
            assert!(
                first >= Duration::from_secs(5) && first <= Duration::from_secs(10),
                "{first:?}"
            );
            let fifth = backoff(&settings, 5);
            assert!(fifth >= Duration::from_secs(80), "{fifth:?}");
            assert!(backoff(&settings, 30) <= Duration::from_secs(900));
        }
    }
}
