//! Group commit: the writes of messages that finish together share one transaction.
//!
//! A few writer tasks take whatever jobs are waiting (no timer: a lone job is committed at once)
//! and apply them with [`store::apply`]. No job is answered before its transaction commits. If a
//! batch fails on one job's data, each job is retried alone so only the bad one fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::disposition::{Dependency, Failure};
use crate::store::{self, Write, WriteOutcome};

struct Job {
    writes: Vec<Write>,
    done: oneshot::Sender<Result<Vec<WriteOutcome>, Failure>>,
}

#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub writers: usize,
    /// Jobs (messages) per transaction at most.
    pub max_batch: usize,
    pub create_datapacks: bool,
    /// Client-side bound on one transaction: a silent database cannot hold a worker forever.
    pub timeout: Duration,
}

/// The handle workers use to submit their writes.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer tasks. They end once every [`Writer`] clone is dropped and the queue of
    /// jobs is drained.
    pub fn spawn(pool: PgPool, settings: WriterSettings) -> (Self, JoinSet<()>) {
        let (jobs, receiver) =
            mpsc::channel::<Job>(settings.max_batch * settings.writers.max(1) * 2);
        let receiver = Arc::new(Mutex::new(receiver));
        let mut tasks = JoinSet::new();
        for _ in 0..settings.writers.max(1) {
            tasks.spawn(run(pool.clone(), settings.clone(), receiver.clone()));
        }
        (Self { jobs }, tasks)
    }

    pub async fn write(&self, writes: Vec<Write>) -> Result<Vec<WriteOutcome>, Failure> {
        let (done, answer) = oneshot::channel();
        let unavailable = || {
            Failure::unavailable(
                Dependency::Postgres,
                "writer_stopped",
                "the writer has stopped",
            )
        };
        self.jobs
            .send(Job { writes, done })
            .await
            .map_err(|_| unavailable())?;
        answer.await.map_err(|_| unavailable())?
    }
}

async fn run(pool: PgPool, settings: WriterSettings, receiver: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let mut jobs = Vec::with_capacity(settings.max_batch);
    loop {
        let taken = receiver
            .lock()
            .await
            .recv_many(&mut jobs, settings.max_batch)
            .await;
        if taken == 0 {
            return;
        }
        let writes: Vec<Write> = jobs.iter().flat_map(|j| j.writes.iter().cloned()).collect();
        match commit(&pool, &settings, &writes).await {
            Ok(outcomes) => answer(jobs.drain(..), outcomes),
            Err(Failure::Permanent { .. }) if jobs.len() > 1 => {
                for job in jobs.drain(..) {
                    let result = commit(&pool, &settings, &job.writes).await;
                    let _ = job.done.send(result);
                }
            }
            Err(failure) => {
                let text = crate::disposition::chain(&failure);
                for job in jobs.drain(..) {
                    let _ = job.done.send(Err(copy_failure(&failure, &text)));
                }
            }
        }
    }
}

async fn commit(
    pool: &PgPool,
    settings: &WriterSettings,
    writes: &[Write],
) -> Result<Vec<WriteOutcome>, Failure> {
    let started = Instant::now();
    let result = tokio::time::timeout(
        settings.timeout,
        store::apply(pool, writes, settings.create_datapacks),
    )
    .await;
    crate::metrics::phase("db_write", started.elapsed());
    match result {
        Ok(Ok(outcomes)) => {
            metrics::counter!(crate::metrics::DB_COMMITS).increment(1);
            metrics::histogram!(crate::metrics::DB_BATCH_SIZE).record(writes.len() as f64);
            Ok(outcomes)
        }
        Ok(Err(error)) => Err(store::classify(error)),
        Err(_) => Err(Failure::unavailable(
            Dependency::Postgres,
            "database_timeout",
            format!("transaction took longer than {:?}", settings.timeout),
        )),
    }
}

/// Splits one batch's outcomes back to the jobs, in order.
fn answer(jobs: impl Iterator<Item = Job>, outcomes: Vec<WriteOutcome>) {
    let mut outcomes = outcomes.into_iter();
    for job in jobs {
        let mine: Vec<WriteOutcome> = outcomes.by_ref().take(job.writes.len()).collect();
        let _ = job.done.send(Ok(mine));
    }
}

/// One failure told to several jobs: same disposition, the cause kept as text.
fn copy_failure(failure: &Failure, text: &str) -> Failure {
    match failure {
        Failure::Permanent { reason, detail } => Failure::permanent(*reason, detail.clone()),
        Failure::Transient { reason, .. } => Failure::transient(reason, text.to_owned()),
        Failure::Unavailable {
            dependency, reason, ..
        } => Failure::unavailable(*dependency, reason, text.to_owned()),
    }
}
