//! The pool: pollers that receive only for idle workers, and a task per message's [`Lease`].
//!
//! A semaphore holds `WORKER_CONCURRENCY` slots. A poller first takes one free slot, then every
//! other free slot (up to ten), and asks SQS for that many messages, so no message waits in
//! memory while its visibility clock runs. While receives come back full (a backlog), it first
//! waits a bounded time ([`WorkerSettings::receive_batch_wait`]) for ten free slots, so a busy
//! worker receives ten at a time instead of the two or three that free up between receives;
//! pollers take turns at gathering, so they never split the free slots. Each message keeps its
//! slot until its work is done (its delete queued after the commit, or its retry or release
//! decided).
//! Shutdown starts no new receive, but lets each long poll in flight finish (bounded by the poll
//! window plus [`POLL_SLACK`], and by the grace period), and hands back at once whatever it
//! returns: SQS does not cancel a receive when its client goes away, so a dropped poll would
//! leave the messages it was about to return invisible for a whole visibility timeout. In-flight
//! work finishes within what is left of the grace period; the rest is released (visibility 0)
//! so another replica takes it immediately. A second signal (or a dead supervised task) hands
//! everything back at once.
//!
//! Work on one message runs in a task of its own: whatever happens there, a panic included, is a
//! fact about that message. A failure is charged to the message (backoff on its receive count,
//! and a dead letter with a reason on its last attempt) only after a fresh probe has said the
//! dependency is up; if the probe fails too, the message is released and receiving pauses.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::disposition::{Failure, MessageDisposition};
use crate::intake::deleter::DeleteRequest;
use crate::intake::lease::Lease;
use crate::intake::queue::{Queue, Received};
use crate::ops::health::{self, Health};
use crate::ops::metrics::{self, Raised};
use crate::ops::watchdog::Watchdog;
use crate::process::pipeline::Pipeline;
use crate::shutdown::Signals;

/// How long past its wait time a long poll in flight at shutdown may take to answer: the
/// network's share. A poll that has not answered by then is dropped (what it was about to
/// return comes back after its visibility timeout).
pub(crate) const POLL_SLACK: Duration = Duration::from_secs(5);

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
    /// While receives come back full (a backlog), how long a poller holding fewer free slots
    /// than a full receive waits for more before it receives (see [`gather`]).
    pub receive_batch_wait: Duration,
    /// How long a delete waits for nine others (see [`crate::intake::deleter`]).
    pub delete_batch_wait: Duration,
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

/// Runs until `signals.stop` fires and in-flight work is drained or released. If `watchdog`
/// fires (a supervised task died) or `signals.now` does, what is held is released at once.
pub async fn run(
    pipeline: Pipeline,
    queue: Queue,
    health: Health,
    settings: WorkerSettings,
    signals: Signals,
    watchdog: Watchdog,
) {
    // Receiving stops on shutdown, or at once when a supervised task died; cancelled only after
    // the watchdog knows the pollers are meant to end. From then on deletes wait for no batch.
    let receiving = CancellationToken::new();
    let (deletes, delete_requests) = mpsc::channel(settings.concurrency.max(10) * 2);
    let deleter = watchdog.spawn(
        "deleter",
        crate::intake::deleter::run_deleter(
            queue.clone(),
            health.clone(),
            delete_requests,
            crate::intake::deleter::linger(settings.delete_batch_wait, queue.visibility_timeout),
            receiving.clone(),
        ),
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
    let gathering = Arc::new(Gathering::default());
    // Stop waiting for anything: a second signal, or a supervised task died.
    let hurry = signals.now.child_token();
    let pollers: Vec<_> = (0..settings.pollers.max(1))
        .map(|_| {
            watchdog.spawn(
                "poller",
                poll(
                    context.clone(),
                    slots.clone(),
                    gathering.clone(),
                    tasks.clone(),
                    receiving.clone(),
                    hurry.clone(),
                ),
            )
        })
        .collect();

    let fatal = watchdog.fatal().clone();
    tokio::select! {
        _ = signals.stop.cancelled() => {}
        _ = fatal.cancelled() => hurry.cancel(),
    }
    let stopping = Instant::now();
    // From here on the pollers, then the deleter, are meant to end.
    watchdog.stopping();
    receiving.cancel();
    // The polls in flight finish while in-flight work goes on; both share the grace period.
    for poller in pollers {
        let _ = poller.await;
    }
    let grace = if hurry.is_cancelled() {
        Duration::ZERO
    } else {
        settings.shutdown_grace.saturating_sub(stopping.elapsed())
    };
    drain(&tasks, grace, &context.hard_stop, &hurry).await;
    drop(context);
    let _ = deleter.await;
    tracing::info!("worker stopped");
}

/// Lets in-flight work finish within `grace` (or until `hurry`), then has every lease still
/// held released.
async fn drain(
    tasks: &TaskTracker,
    grace: Duration,
    hard_stop: &CancellationToken,
    hurry: &CancellationToken,
) {
    tasks.close();
    tracing::info!(
        in_flight = tasks.len(),
        grace_secs = grace.as_secs_f64(),
        "shutting down: draining in-flight work"
    );
    let finished = tokio::select! {
        r = tokio::time::timeout(grace, tasks.wait()) => r.is_ok(),
        _ = hurry.cancelled() => false,
    };
    if !finished {
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
    gathering: Arc<Gathering>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    hurry: CancellationToken,
) {
    let target = receive_target(context.settings.concurrency);
    loop {
        if !context.health.wait_ready(&shutdown).await {
            return;
        }
        let Some(mut permits) = gathering
            .idle_slots(
                &slots,
                target,
                context.settings.receive_batch_wait,
                &shutdown,
            )
            .await
        else {
            return;
        };
        let asked = permits.len();
        let received = {
            let _receiving = Raised::new(metrics::POLLERS_RECEIVING);
            let receive = context.queue.receive(asked);
            tokio::pin!(receive);
            tokio::select! {
                r = &mut receive => r,
                _ = shutdown.cancelled() => {
                    return hand_back_poll(&context, receive, &hurry).await;
                }
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
        gathering.received(asked, messages.len());
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

/// Shutdown came during a long poll: lets it finish (SQS goes on with a receive whose client
/// has gone, handing it the messages it finds) within the poll window plus [`POLL_SLACK`], never
/// past the grace period, and hands back at once whatever it returns. Releasing, not working
/// on them: the grace period belongs to the work already in hand, and the other replicas are
/// polling right now. `hurry` drops the poll at once.
async fn hand_back_poll(
    context: &Context,
    receive: std::pin::Pin<&mut impl Future<Output = Result<Vec<Received>, Failure>>>,
    hurry: &CancellationToken,
) {
    let bound = (context.queue.wait + POLL_SLACK).min(context.settings.shutdown_grace);
    let answered = tokio::select! {
        r = tokio::time::timeout(bound, receive) => r,
        _ = hurry.cancelled() => {
            tracing::warn!("stopping now: a long poll in flight is dropped; what it returns stays invisible until its visibility timeout");
            return;
        }
    };
    let messages = match answered {
        Ok(Ok(messages)) => messages,
        // Nothing was handed to this poll.
        Ok(Err(_)) => return,
        Err(_) => {
            tracing::warn!(
                bound_secs = bound.as_secs_f64(),
                "a long poll in flight at shutdown did not answer in time; what it returns stays invisible until its visibility timeout"
            );
            return;
        }
    };
    metrics::received(messages.len());
    if messages.is_empty() {
        return;
    }
    let handles: Vec<String> = messages.into_iter().map(|m| m.receipt_handle).collect();
    let released = context.queue.release_batch(&handles).await;
    if let Some(first) = handles.first() {
        context
            .health
            .observe_sqs(first, released.as_ref().map(drop));
    }
    match released {
        Ok(n) => {
            for _ in 0..n {
                metrics::message_disposition(MessageDisposition::HandedBack);
            }
            tracing::info!(
                received = handles.len(),
                handed_back = n,
                "a long poll in flight at shutdown returned messages: handed back at once"
            );
        }
        Err(failure) => tracing::warn!(
            received = handles.len(),
            error = %crate::disposition::chain(&failure),
            "could not hand back what a long poll returned at shutdown; it returns after its visibility timeout"
        ),
    }
}

/// The most messages one receive asks for: SQS's limit, or every slot of a smaller pool.
pub(crate) fn receive_target(concurrency: usize) -> usize {
    concurrency.clamp(1, 10)
}

/// What a poller holding `held` free slots does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gather {
    /// Receive for the slots held.
    Receive,
    /// Wait this long at most for more slots to free up, then receive.
    WaitUpTo(Duration),
}

/// Receive now for the `held` slots, or wait for more? Only while a backlog is known (the last
/// receive came back with as many messages as it asked for) is a receive for a few slots a waste:
/// slots free one by one as work finishes, so without waiting each receive would ask for two or
/// three of the many messages waiting. Then the poller waits for `target` slots, at most
/// `max_wait` from its first. Without a backlog it receives at once, for however many slots are
/// free: a message arriving on a quiet queue finds a receive already waiting for it.
pub(crate) fn gather(
    held: usize,
    target: usize,
    backlog: bool,
    waited: Duration,
    max_wait: Duration,
) -> Gather {
    if held >= target || !backlog || waited >= max_wait {
        Gather::Receive
    } else {
        Gather::WaitUpTo(max_wait - waited)
    }
}

/// The pollers' shared view of the queue, and their turn at gathering slots: one poller gathers
/// at a time, so two pollers never split the free slots between them and both wait for more.
#[derive(Default)]
pub(crate) struct Gathering {
    turn: tokio::sync::Mutex<()>,
    /// The last receive came back full: more messages are probably waiting.
    backlog: AtomicBool,
}

impl Gathering {
    /// Takes one free slot, then every other free one, and, while there is a backlog, waits (see
    /// [`gather`]) for up to `target` in all. `None` on shutdown.
    async fn idle_slots(
        &self,
        slots: &Arc<Semaphore>,
        target: usize,
        max_wait: Duration,
        shutdown: &CancellationToken,
    ) -> Option<Vec<OwnedSemaphorePermit>> {
        let _idle = Raised::new(metrics::POLLERS_IDLE);
        let _turn = tokio::select! {
            turn = self.turn.lock() => turn,
            _ = shutdown.cancelled() => return None,
        };
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            _ = shutdown.cancelled() => return None,
        };
        let since = Instant::now();
        let mut permits = vec![first];
        loop {
            while permits.len() < target {
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            let backlog = self.backlog.load(Ordering::Relaxed);
            let wait = match gather(permits.len(), target, backlog, since.elapsed(), max_wait) {
                Gather::Receive => return Some(permits),
                Gather::WaitUpTo(wait) => wait,
            };
            tokio::select! {
                permit = slots.clone().acquire_owned() => {
                    permits.push(permit.expect("semaphore is never closed"));
                }
                _ = tokio::time::sleep(wait) => return Some(permits),
                _ = shutdown.cancelled() => return None,
            }
        }
    }

    /// Remembers whether a receive for `asked` messages came back full.
    fn received(&self, asked: usize, got: usize) {
        self.backlog.store(got >= asked, Ordering::Relaxed);
    }
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
            receive_batch_wait: Duration::from_millis(100),
            delete_batch_wait: Duration::from_millis(200),
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

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_receive_asks_for_ten_or_the_whole_pool() {
        assert_eq!(receive_target(16), 10);
        assert_eq!(receive_target(4), 4);
        assert_eq!(receive_target(1), 1);
        assert_eq!(receive_target(0), 1);
    }

    #[test]
    fn without_a_backlog_a_poller_receives_at_once_for_one_slot() {
        assert_eq!(
            gather(1, 10, false, Duration::ZERO, 50 * MS),
            Gather::Receive
        );
        assert_eq!(
            gather(3, 10, false, Duration::ZERO, 50 * MS),
            Gather::Receive
        );
    }

    #[test]
    fn with_a_backlog_a_poller_waits_for_a_full_receive_for_a_bounded_time() {
        assert_eq!(
            gather(1, 10, true, Duration::ZERO, 50 * MS),
            Gather::WaitUpTo(50 * MS)
        );
        assert_eq!(
            gather(9, 10, true, 20 * MS, 50 * MS),
            Gather::WaitUpTo(30 * MS)
        );
        assert_eq!(gather(4, 10, true, 50 * MS, 50 * MS), Gather::Receive);
        assert_eq!(
            gather(10, 10, true, Duration::ZERO, 50 * MS),
            Gather::Receive
        );
        assert_eq!(gather(4, 4, true, Duration::ZERO, 50 * MS), Gather::Receive);
    }

    #[test]
    fn a_zero_wait_turns_gathering_off() {
        assert_eq!(
            gather(1, 10, true, Duration::ZERO, Duration::ZERO),
            Gather::Receive
        );
    }

    #[test]
    fn a_full_receive_marks_a_backlog_and_a_short_one_clears_it() {
        let gathering = Gathering::default();
        gathering.received(3, 3);
        assert!(gathering.backlog.load(Ordering::Relaxed));
        gathering.received(10, 2);
        assert!(!gathering.backlog.load(Ordering::Relaxed));
        gathering.received(10, 0);
        assert!(!gathering.backlog.load(Ordering::Relaxed));
    }
}
