//! Group commit: the writes of messages that finish together share one transaction.
//!
//! A few writer tasks take whatever jobs are waiting (no timer: a lone job is committed at once)
//! and apply them with [`store::apply`]. No job is answered before its transaction commits. If a
//! batch fails on one job's data (a data exception, a constraint, even a panic), each job is
//! retried alone so only the bad one fails. A transaction runs in a task of its own, so a panic
//! on someone's data fails that batch, never the writer; the writer tasks themselves are
//! supervised (see `watchdog`).
//!
//! Getting a connection is never a job's fault. While the database serves this process but
//! refuses it more connections (its connection limit reached: backpressure), a writer waits for
//! one; if nothing here is served, it asks the probe, and only a probe that fails too ends the
//! wait (the messages are then released and receiving pauses). A transaction that lost its
//! connection (terminated, the server restarting) is tried once more at once on a new one: it
//! committed nothing, and the write is idempotent anyway.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::disposition::{Dependency, Failure, RetryReason};
use crate::ops::health::{self, Health};
use crate::ops::watchdog::Watchdog;
use crate::store::{self, Database, Write, WriteOutcome, connect};

struct Job {
    writes: Vec<Write>,
    done: oneshot::Sender<Result<Vec<WriteOutcome>, Failure>>,
}

#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub writers: usize,
    /// Jobs (messages) per transaction at most.
    pub max_batch: usize,
    /// Create missing datapacks, announce changes: what every batch does besides writing.
    pub options: store::write::WriteOptions,
    /// Client-side bound on one transaction: a silent database cannot hold a worker forever.
    pub timeout: Duration,
}

/// The handle workers use to submit their writes.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer tasks under `watchdog`. They end once every [`Writer`] clone is dropped
    /// and the queue of jobs is drained.
    pub fn spawn(
        database: impl Into<Database>,
        settings: WriterSettings,
        health: Health,
        watchdog: &Watchdog,
    ) -> (Self, Vec<JoinHandle<()>>) {
        let database = database.into();
        let (jobs, receiver) =
            mpsc::channel::<Job>(settings.max_batch * settings.writers.max(1) * 2);
        let receiver = Arc::new(Mutex::new(receiver));
        let batches = Arc::new(AtomicU64::new(0));
        let tasks = (0..settings.writers.max(1))
            .map(|_| {
                let context = Context {
                    database: database.clone(),
                    settings: settings.clone(),
                    health: health.clone(),
                    batches: batches.clone(),
                };
                watchdog.spawn("writer", run(context, receiver.clone()))
            })
            .collect();
        (Self { jobs }, tasks)
    }

    pub async fn write(&self, writes: Vec<Write>) -> Result<Vec<WriteOutcome>, Failure> {
        let (done, answer) = oneshot::channel();
        let stopped = || Failure::transient(RetryReason::WriterStopped, "the writer has stopped");
        self.jobs
            .send(Job { writes, done })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

struct Context {
    database: Database,
    settings: WriterSettings,
    health: Health,
    /// Numbers the batches, so the database breaker counts different batches, not messages.
    batches: Arc<AtomicU64>,
}

async fn run(context: Context, receiver: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let max_batch = context.settings.max_batch;
    let mut jobs = Vec::with_capacity(max_batch);
    loop {
        let taken = receiver.lock().await.recv_many(&mut jobs, max_batch).await;
        if taken == 0 {
            return;
        }
        // The writes move into one shared batch (no copy per try); each job keeps its range.
        let mut writes = Vec::with_capacity(jobs.iter().map(|j| j.writes.len()).sum());
        let mut ranges = Vec::with_capacity(jobs.len());
        for job in &mut jobs {
            let start = writes.len();
            writes.append(&mut job.writes);
            ranges.push(start..writes.len());
        }
        let writes = Arc::new(writes);
        let abandoned = || jobs.iter().all(|j| j.done.is_closed());
        match commit(&context, writes.clone(), &abandoned).await {
            Ok(outcomes) => answer(jobs.drain(..), &ranges, outcomes),
            Err(failure) if failure.isolates() && jobs.len() > 1 => {
                for (job, range) in jobs.drain(..).zip(ranges) {
                    let alone = || job.done.is_closed();
                    let mine = Arc::new(writes[range].to_vec());
                    let result = commit(&context, mine, &alone).await;
                    let _ = job.done.send(result);
                }
            }
            Err(failure) => {
                for job in jobs.drain(..) {
                    let _ = job.done.send(Err(failure.copy()));
                }
            }
        }
    }
}

/// One batch: a connection (waited for, see the header), then its transaction, tried once more
/// on a new connection if it lost its own; the outcome fed to the database breaker.
async fn commit(
    context: &Context,
    writes: Arc<Vec<Write>>,
    abandoned: &(dyn Fn() -> bool + Sync),
) -> Result<Vec<WriteOutcome>, Failure> {
    let started = Instant::now();
    let count = writes.len();
    let mut result = Err(Failure::transient(RetryReason::WriterStopped, "not tried"));
    for _ in 0..2 {
        let connection = match connection(context, abandoned).await {
            Ok(connection) => connection,
            Err(failure) => {
                result = Err(failure);
                break;
            }
        };
        let (outcome, lost) = transact(context, connection, writes.clone()).await;
        result = outcome;
        if !lost {
            break;
        }
    }
    crate::ops::metrics::phase("db_write", started.elapsed());
    let batch = context.batches.fetch_add(1, Ordering::Relaxed);
    match &result {
        Ok(_) => {
            crate::ops::metrics::db_commit(count);
            context
                .health
                .observe(Dependency::Postgres, &batch.to_string(), true);
        }
        // Refused data says nothing about the database.
        Err(failure) if failure.isolates() => {}
        Err(_) => context
            .health
            .observe(Dependency::Postgres, &batch.to_string(), false),
    }
    result
}

/// Longest pause between two tries for a connection.
const CONNECTION_RETRY_MAX: Duration = Duration::from_secs(5);

/// A connection for one batch. Waits while the database refuses this process more connections
/// but serves it, or while the probe says it is up; fails only when the probe fails too (or when
/// every job of the batch was given up, at shutdown).
async fn connection(
    context: &Context,
    abandoned: &(dyn Fn() -> bool + Sync),
) -> Result<PoolConnection<sqlx::Postgres>, Failure> {
    let mut delay = Duration::from_millis(100);
    let never = tokio_util::sync::CancellationToken::new();
    loop {
        let served_before = context.database.handed();
        let error = match context.database.acquire().await {
            Ok(connection) => return Ok(connection),
            Err(error) => error,
        };
        let served = context.database.handed() > served_before;
        if abandoned() {
            return Err(store::classify(error));
        }
        if !connect::refused(&error, served) {
            // Nothing here got a connection meanwhile: is the database there at all?
            let verdict = context.health.confirm(Dependency::Postgres, &never).await;
            if verdict != Some(health::Verdict::Up) {
                return Err(store::classify(error));
            }
        }
        tracing::debug!(
            error = %crate::disposition::chain(&error),
            "no database connection for this batch yet: waiting (backpressure, not the batch's fault)"
        );
        tokio::time::sleep(delay.mul_f64(0.5 + fastrand::f64())).await;
        delay = (delay * 2).min(CONNECTION_RETRY_MAX);
    }
}

/// One transaction, in a task of its own (a panic fails the batch, not the writer), bounded by
/// the client-side timeout. Says too whether it failed for losing its connection.
async fn transact(
    context: &Context,
    mut connection: PoolConnection<sqlx::Postgres>,
    writes: Arc<Vec<Write>>,
) -> (Result<Vec<WriteOutcome>, Failure>, bool) {
    let options = context.settings.options;
    let transaction =
        tokio::spawn(
            async move { store::write::apply_on(&mut connection, &writes, options).await },
        );
    let abort = transaction.abort_handle();
    match tokio::time::timeout(context.settings.timeout, transaction).await {
        Ok(Ok(Ok(outcomes))) => (Ok(outcomes), false),
        Ok(Ok(Err(error))) => {
            let lost = connect::lost_connection(&error);
            (Err(store::classify(error)), lost)
        }
        Ok(Err(joined)) if joined.is_panic() => (
            Err(Failure::transient(
                RetryReason::ProcessingPanicked,
                format!(
                    "writing the batch panicked: {}",
                    crate::disposition::panic_text(joined.into_panic().as_ref())
                ),
            )),
            false,
        ),
        Ok(Err(joined)) => (
            Err(Failure::transient(RetryReason::WriterStopped, joined)),
            false,
        ),
        Err(_) => {
            abort.abort();
            (
                Err(Failure::transient(
                    RetryReason::DatabaseTimeout,
                    format!(
                        "transaction took longer than {:?}",
                        context.settings.timeout
                    ),
                )),
                false,
            )
        }
    }
}

/// Splits one batch's outcomes back to the jobs, by the range of writes each brought.
fn answer(
    jobs: impl Iterator<Item = Job>,
    ranges: &[std::ops::Range<usize>],
    outcomes: Vec<WriteOutcome>,
) {
    for (job, range) in jobs.zip(ranges) {
        let mine = outcomes.get(range.clone()).unwrap_or_default().to_vec();
        let _ = job.done.send(Ok(mine));
    }
}
