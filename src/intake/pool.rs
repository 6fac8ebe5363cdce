//! The pool: pollers that receive only for idle workers, and a task per message's [`Lease`].
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
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::disposition::Failure;
use crate::intake::deleter::DeleteRequest;
use crate::intake::lease::Lease;
use crate::intake::queue::Queue;
use crate::ops::health::{self, Health};
use crate::ops::metrics::{self, Raised};
use crate::ops::watchdog::Watchdog;
use crate::process::pipeline::Pipeline;

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

/// What every lease needs: the pipeline, the queue, health, the deleter and the settings.
pub(super) struct Context {
    pub(super) pipeline: Pipeline,
    pub(super) queue: Queue,
    pub(super) health: Health,
    pub(super) deletes: mpsc::Sender<DeleteRequest>,
    pub(super) settings: WorkerSettings,
    /// Fired when the grace period is over: unfinished work is released.
    pub(super) hard_stop: CancellationToken,
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
    metrics::concurrency(settings.concurrency);
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
    let grace = if fatal.is_cancelled() {
        Duration::ZERO
    } else {
        settings.shutdown_grace
    };
    drain(&tasks, grace, &context.hard_stop).await;
    drop(context);
    let _ = deleter.await;
    tracing::info!("worker stopped");
}

/// Lets in-flight work finish within `grace`, then has every lease still held released.
async fn drain(tasks: &TaskTracker, grace: Duration, hard_stop: &CancellationToken) {
    tasks.close();
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
        hard_stop.cancel();
        tasks.wait().await;
    }
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
        let Some(mut permits) = idle_slots(&slots, &shutdown).await else {
            return;
        };
        let received = {
            let _receiving = Raised::new(metrics::POLLERS_RECEIVING);
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
                if pause_after(&context, failure, &shutdown).await {
                    continue;
                }
                return;
            }
        };
        metrics::received(messages.len());
        for message in messages {
            let permit = permits
                .pop()
                .expect("never more messages than slots asked for");
            // ERROR level so that a filter keeping only warnings still shows the message each
            // line is about. The object fields are filled in when the message fails on one.
            let span = tracing::error_span!("message", message_id = %message.message_id, receive_count = message.receive_count, bucket = tracing::field::Empty, key = tracing::field::Empty, etag = tracing::field::Empty);
            tasks.spawn(
                Lease::new(context.clone(), message, permit)
                    .work()
                    .instrument(span),
            );
        }
    }
}

/// Waits for one free slot, then takes every other free one (up to ten in all, SQS's most per
/// receive). `None` on shutdown.
async fn idle_slots(
    slots: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Option<Vec<OwnedSemaphorePermit>> {
    let first = {
        let _idle = Raised::new(metrics::POLLERS_IDLE);
        tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            _ = shutdown.cancelled() => return None,
        }
    };
    let mut permits = vec![first];
    while permits.len() < 10 {
        match slots.clone().try_acquire_owned() {
            Ok(permit) => permits.push(permit),
            Err(_) => break,
        }
    }
    Some(permits)
}

/// After a failed receive, asks the probe: if SQS is down, the poller's wait for readiness holds
/// it; if not, a short pause keeps a persistent error from spinning. False on shutdown.
async fn pause_after(context: &Context, failure: Failure, shutdown: &CancellationToken) -> bool {
    tracing::warn!(error = %crate::disposition::chain(&failure), "receive failed");
    if let Some(dependency) = failure.dependency()
        && context.health.confirm(dependency, shutdown).await == Some(health::Verdict::Down)
    {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(1)) => true,
        _ = shutdown.cancelled() => false,
    }
}

impl Context {
    /// The attempt on which a failure dead-letters the message: the configured number, but
    /// never beyond the queue's own `maxReceiveCount` (SQS would move it without a reason).
    pub(super) fn max_attempts(&self) -> u32 {
        match self.queue.max_receive_count() {
            Some(limit) => self.settings.max_attempts.min(limit),
            None => self.settings.max_attempts,
        }
        .max(1)
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
