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

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::disposition::{Failure, MessageDisposition};
use crate::intake::lease::{self, Lease};
use crate::intake::queue::Queue;
use crate::intake::settle::Limits;
use crate::intake::sqs::{BATCH, Received, Sqs};
use crate::intake::{batch, deleter, visibility};
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
pub(crate) struct WorkerSettings {
    pub(crate) concurrency: usize,
    pub(crate) pollers: usize,
    pub(crate) retry_base: Duration,
    pub(crate) retry_max: Duration,
    /// Longest time a message's visibility is extended while it is worked on.
    pub(crate) max_extension: Duration,
    pub(crate) shutdown_grace: Duration,
    /// Attempts a message gets before a failure dead-letters it with its reason (capped by the
    /// queue's own `maxReceiveCount`, so SQS never moves it first without a reason).
    pub(crate) max_attempts: u32,
    /// While receives come back full (a backlog), how long a poller holding fewer free slots
    /// than a full receive waits for more before it receives (see [`gather`]).
    pub(crate) receive_batch_wait: Duration,
    /// How long a delete or a visibility change waits for nine others (see `intake::batch`).
    pub(crate) delete_batch_wait: Duration,
}

/// What the pollers share: the pipeline each message's work runs through, the SQS seam, what
/// every lease needs, and the settings.
struct Pollers {
    pipeline: Pipeline,
    sqs: Arc<dyn Sqs>,
    leases: Arc<lease::Context>,
    settings: WorkerSettings,
    /// The long poll's window (`SQS_WAIT_TIME_SECS`).
    wait: Duration,
}

/// Runs until `signals.stop` fires and in-flight work is drained or released. If `watchdog`
/// fires (a supervised task died) or `signals.now` does, what is held is released at once.
///
/// One function on purpose: it is the pool's start and shutdown order, read top to bottom.
pub(crate) async fn run(
    pipeline: Pipeline,
    queue: Queue,
    health: Health,
    settings: WorkerSettings,
    signals: Signals,
    watchdog: Watchdog,
) {
    // Receiving stops on shutdown, or at once when a supervised task died; cancelled only after
    // the watchdog knows the pollers are meant to end. From then on deletes and visibility
    // changes wait for no batch.
    let receiving = CancellationToken::new();
    let sqs: Arc<dyn Sqs> = Arc::new(queue.clone());
    let (leases, settlers) = settling(&sqs, &queue, health, &settings, &watchdog, &receiving);
    let slots = Arc::new(Semaphore::new(settings.concurrency));
    metrics::concurrency(settings.concurrency);
    let hard_stop = leases.hard_stop.clone();
    let context = Arc::new(Pollers {
        pipeline,
        sqs,
        leases,
        settings: settings.clone(),
        wait: queue.wait,
    });
    let tasks = TaskTracker::new();
    let gathering = Arc::new(Gathering::default());
    // Stop waiting for anything: a second signal, or a supervised task died.
    let hurry = signals.now.child_token();
    let pollers: Vec<_> = (0..settings.pollers.max(1))
        .map(|_| {
            let poller = poll(
                context.clone(),
                slots.clone(),
                gathering.clone(),
                tasks.clone(),
                receiving.clone(),
                hurry.clone(),
            );
            watchdog.spawn("poller", poller)
        })
        .collect();

    let fatal = watchdog.fatal().clone();
    tokio::select! {
        _ = signals.stop.cancelled() => {}
        _ = fatal.cancelled() => hurry.cancel(),
    }
    let stopping = Instant::now();
    // From here on the pollers, then the deleter and the visibility batcher, are meant to end.
    watchdog.stopping();
    receiving.cancel();
    // The polls in flight finish while in-flight work goes on; both share the grace period.
    for poller in pollers {
        let _ = poller.await;
    }
    let grace_left = settings.shutdown_grace.saturating_sub(stopping.elapsed());
    drain(&tasks, grace_left, &hard_stop, &hurry).await;
    // The last senders: the batchers send what is queued and end.
    drop(context);
    for settler in settlers {
        let _ = settler.await;
    }
    tracing::info!("worker stopped");
}

/// The deleter and the visibility batcher, supervised, and what every lease settles through.
/// Both gather for the same short wait; from `stopping` on, neither waits.
fn settling(
    sqs: &Arc<dyn Sqs>,
    queue: &Queue,
    health: Health,
    settings: &WorkerSettings,
    watchdog: &Watchdog,
    stopping: &CancellationToken,
) -> (Arc<lease::Context>, [JoinHandle<()>; 2]) {
    let linger = batch::linger(settings.delete_batch_wait, queue.visibility_timeout);
    let capacity = settings.concurrency.max(BATCH) * 2;
    let (deletes, delete_requests) = mpsc::channel(capacity);
    let (visibility, visibility_requests) = mpsc::channel(capacity);
    let sink = batch::Sink {
        sqs: sqs.clone(),
        health: health.clone(),
        linger,
        stopping: stopping.clone(),
    };
    let deleter = deleter::run_deleter(sink.clone(), delete_requests);
    let batcher = visibility::run_batcher(sink, visibility_requests);
    let settlers = [
        watchdog.spawn("deleter", deleter),
        watchdog.spawn("visibility batcher", batcher),
    ];
    let leases = lease::Context {
        sqs: sqs.clone(),
        health,
        deletes,
        visibility,
        visibility_timeout: queue.visibility_timeout,
        max_extension: settings.max_extension,
        limits: Limits {
            max_attempts: settings.max_attempts,
            retry_base: settings.retry_base,
            retry_max: settings.retry_max,
        },
        redrive: queue.redrive_limit(),
        hard_stop: CancellationToken::new(),
    };
    (Arc::new(leases), settlers)
}

/// Lets in-flight work finish within `grace` (or until `hurry`), then has every lease still
/// held released.
async fn drain(
    tasks: &TaskTracker,
    grace: Duration,
    hard_stop: &CancellationToken,
    hurry: &CancellationToken,
) {
    // A supervised task died, or a second signal: no grace at all.
    let grace = if hurry.is_cancelled() {
        Duration::ZERO
    } else {
        grace
    };
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
    context: Arc<Pollers>,
    slots: Arc<Semaphore>,
    gathering: Arc<Gathering>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    hurry: CancellationToken,
) {
    let target = receive_target(context.settings.concurrency);
    loop {
        if !context.leases.health.wait_ready(&shutdown).await {
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
            let receive = context.sqs.receive(asked);
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
            tasks.spawn(context.work_on(message, permit));
        }
    }
}

impl Pollers {
    /// The task that works on `message` in `permit`'s slot: its lease, running it through the
    /// pipeline, inside the message's span.
    fn work_on(
        &self,
        message: Received,
        permit: OwnedSemaphorePermit,
    ) -> impl Future<Output = ()> + Send + 'static {
        // ERROR level so that a filter keeping only warnings still shows the message each line
        // is about. The object fields are filled in when the message fails on one.
        let span = tracing::error_span!("message", message_id = %message.message_id, receive_count = message.receive_count, bucket = tracing::field::Empty, key = tracing::field::Empty, etag = tracing::field::Empty);
        let work = {
            let (pipeline, body) = (self.pipeline.clone(), message.body.clone());
            async move { pipeline.process(&body).await }
        };
        // Boxed: the task's future is large, and a task's future is moved by value when it is
        // spawned, stored and completed (callgrind counted about 95,000 instructions of memcpy
        // per message); a box is moved as a pointer.
        Box::pin(
            Lease::new(self.leases.clone(), message, permit)
                .work(work)
                .instrument(span),
        )
    }
}

/// Shutdown came during a long poll: lets it finish (SQS goes on with a receive whose client
/// has gone, handing it the messages it finds) within the poll window plus [`POLL_SLACK`], never
/// past the grace period, and hands back at once whatever it returns. Releasing, not working
/// on them: the grace period belongs to the work already in hand, and the other replicas are
/// polling right now. `hurry` drops the poll at once.
async fn hand_back_poll(
    context: &Pollers,
    receive: std::pin::Pin<&mut impl Future<Output = Result<Vec<Received>, Failure>>>,
    hurry: &CancellationToken,
) {
    let bound = (context.wait + POLL_SLACK).min(context.settings.shutdown_grace);
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
    let health = &context.leases.health;
    let (handed_back, failed) =
        visibility::hand_back(context.sqs.as_ref(), health, &messages).await;
    for _ in 0..handed_back {
        metrics::message_disposition(MessageDisposition::HandedBack);
    }
    tracing::info!(
        received = messages.len(),
        handed_back,
        "a long poll in flight at shutdown returned messages: handed back at once"
    );
    if let Some(first) = failed.first() {
        tracing::warn!(
            not_handed_back = failed.len(),
            error = %crate::disposition::chain(first),
            "could not hand back some of what a long poll returned at shutdown; they return after their visibility timeout"
        );
    }
}

/// The most messages one receive asks for: SQS's limit, or every slot of a smaller pool.
pub(crate) fn receive_target(concurrency: usize) -> usize {
    concurrency.clamp(1, BATCH)
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
async fn pause_after(context: &Pollers, failure: Failure, shutdown: &CancellationToken) -> bool {
    tracing::warn!(error = %crate::disposition::chain(&failure), "receive failed");
    if let Some(dependency) = failure.dependency()
        && context.leases.health.confirm(dependency, shutdown).await == Some(health::Verdict::Down)
    {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(1)) => true,
        _ = shutdown.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
