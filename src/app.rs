//! Start-up: builds the running parts from the settings, runs them until shutdown, and stops
//! them in order. [`Parts`] are what every command that ingests shares (`run`, `reconcile`):
//! one builder, one shutdown order ([`Stop`]); the worker adds the queue, its pollers, probes
//! and sampler.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use aws_config::SdkConfig;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{DatabaseSettings, IngestSettings, QueueSettings, Settings};
use crate::disposition::Dependency;
use crate::intake;
use crate::intake::pool::WorkerSettings;
use crate::intake::queue::Queue;
use crate::ops::health::{Health, Probe, probe};
use crate::ops::watchdog::Watchdog;
use crate::ops::{self, http};
use crate::process::canary::{self, Canary};
use crate::process::pipeline::Pipeline;
use crate::shutdown::Signals;
use crate::store::writer::Writer;
use crate::store::{Database, Password, connect};
use crate::{aws, store};

/// Longest wait between two probes of a down dependency (before jitter). Probes are one cheap
/// call each, so recovery is noticed within seconds even after a long outage.
const PROBE_MAX_DELAY: Duration = Duration::from_secs(10);

pub(crate) const GIT_COMMIT: &str = match option_env!("DATAPACK_WORKER_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// Runs the worker until `signals.stop` fires and in-flight work is drained (or `signals.now`
/// asks to stop at once), with AWS clients built from the settings.
pub async fn run(settings: Settings, signals: Signals) -> anyhow::Result<()> {
    let sdk = aws::load(&settings.aws).await;
    let application = Application::build(settings, &sdk, &signals.stop).await?;
    application.run_until_stopped(signals, Vec::new()).await
}

/// A task an embedder runs beside the worker, supervised like the worker's own.
pub type ExtraTask = (
    &'static str,
    std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
);

/// Runs the worker and `extra` tasks under one watchdog: if any supervised task ends or panics
/// before shutdown, what is in hand is released at once and this returns the cause as an error
/// (the binary then exits non-zero, so the orchestrator restarts it).
pub async fn run_supervised(
    settings: Settings,
    sdk: SdkConfig,
    shutdown: CancellationToken,
    extra: Vec<ExtraTask>,
) -> anyhow::Result<()> {
    let application = Application::build(settings, &sdk, &shutdown).await?;
    application.run_until_stopped(shutdown.into(), extra).await
}

/// The worker: the shared [`Parts`], the queue, and what the pollers and the sampler are set to.
/// The HTTP endpoint is bound and the writers wait for jobs, but no probe runs and nothing is
/// received until [`Application::run_until_stopped`].
struct Application {
    parts: Parts,
    queue: Queue,
    worker: WorkerSettings,
    sample_every: Duration,
}

impl Application {
    /// Everything that can fail at start fails here: migrations, the schema, binding the HTTP
    /// port.
    async fn build(
        settings: Settings,
        sdk: &SdkConfig,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        announce(&settings);
        let wiring = Wiring {
            serve: Some(settings.metrics_addr),
            // Every message would fail on a schema that lacks what the writes need.
            check_schema: true,
            migrate_on_start: settings.migrate_on_start,
            ingest: IngestSettings {
                database: settings.database,
                aws: settings.aws,
                pipeline: settings.pipeline,
                writer: settings.writer,
            },
        };
        Ok(Self {
            parts: Parts::build(sdk, shutdown, wiring).await?,
            sample_every: settings.queue.sample_every,
            queue: queue(sdk, settings.queue),
            worker: settings.worker,
        })
    }

    /// Starts the probes, the queue sampler and `extra` under the watchdog, runs the worker until
    /// shutdown (or until a supervised task dies), then stops everything in order.
    async fn run_until_stopped(
        self,
        signals: Signals,
        extra: Vec<ExtraTask>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            _ = intake::probe::read_queue_settings(&self.queue, self.worker.max_attempts) => {}
            _ = signals.stop.cancelled() => {}
        }
        let background = self.spawn_background(extra);
        let Parts {
            pipeline,
            health,
            watchdog,
            stop,
            ..
        } = self.parts;
        intake::pool::run(pipeline, self.queue, health, self.worker, signals, watchdog).await;
        // The pipeline (and so every writer handle) is gone with the pool.
        match stop.stop(background).await {
            Some(cause) => Err(anyhow::anyhow!("stopped because {cause}")),
            None => Ok(()),
        }
    }

    /// The tasks that run beside the worker until shutdown: one prober per dependency, the
    /// queue sampler, and the embedder's own.
    fn spawn_background(&self, extra: Vec<ExtraTask>) -> Background {
        let parts = &self.parts;
        let mut background = Background::new(&parts.watchdog);
        let probes = probes(
            &parts.database,
            &self.queue,
            &parts.pipeline,
            self.worker.max_attempts,
        );
        for (dependency, probe) in probes {
            let stop = background.stopping();
            let prober = parts
                .health
                .clone()
                .run_prober(dependency, probe, PROBE_MAX_DELAY, stop);
            background.spawn("prober", prober);
        }
        let stop = background.stopping();
        let sampler = intake::depth::sample_queues(self.queue.clone(), self.sample_every, stop);
        background.spawn("queue sampler", sampler);
        for (name, task) in extra {
            background.spawn(name, task);
        }
        background
    }
}

/// Says what the worker starts with, and warns about a grace shorter than a long poll.
fn announce(settings: &Settings) {
    tracing::info!(
        database = %settings.database.redacted_url,
        queue = settings.queue.url.as_str(),
        buckets = ?settings.pipeline.buckets,
        concurrency = settings.worker.concurrency,
        "starting datapack-worker {}", env!("CARGO_PKG_VERSION")
    );
    let drain_poll = settings.queue.wait + intake::pool::POLL_SLACK;
    if settings.worker.shutdown_grace < drain_poll {
        tracing::warn!(
            shutdown_grace_secs = settings.worker.shutdown_grace.as_secs(),
            sqs_wait_time_secs = settings.queue.wait.as_secs(),
            "SHUTDOWN_GRACE_SECS is shorter than SQS_WAIT_TIME_SECS + {}s: a long poll in \
             flight at shutdown may be dropped before it answers, and what SQS hands it stays \
             invisible for a visibility timeout",
            intake::pool::POLL_SLACK.as_secs()
        );
    }
}

/// How the shared parts are wired for one command: what `run` and `reconcile` differ in is
/// said here, as settings, and nowhere else.
pub(crate) struct Wiring {
    /// The database, the pipeline's rules and the writers.
    pub(crate) ingest: IngestSettings,
    /// Apply pending migrations first.
    pub(crate) migrate_on_start: bool,
    /// Refuse to start on a schema that lacks what the writes need.
    pub(crate) check_schema: bool,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None`: nowhere.
    pub(crate) serve: Option<SocketAddr>,
}

/// The running parts every command that ingests shares: the database, health and its watchdog,
/// the HTTP endpoint (when served), the group-commit writers and the pipeline that feeds them.
/// Built once by [`Parts::build`]; ended by [`Stop::stop`], in one order.
pub(crate) struct Parts {
    pub(crate) pipeline: Pipeline,
    pub(crate) database: Database,
    pub(crate) health: Health,
    pub(crate) watchdog: Watchdog,
    pub(crate) stop: Stop,
}

impl Parts {
    /// Everything shared that can fail at start fails here: the database settings, migrations,
    /// the schema (when checked), binding the HTTP port.
    pub(crate) async fn build(
        sdk: &SdkConfig,
        shutdown: &CancellationToken,
        wiring: Wiring,
    ) -> anyhow::Result<Self> {
        let metrics = ops::metrics::install();
        ops::metrics::build_info(env!("CARGO_PKG_VERSION"), GIT_COMMIT);
        let IngestSettings {
            database,
            pipeline,
            writer,
            ..
        } = wiring.ingest;
        let database = self::database(&database, sdk)?;
        if wiring.migrate_on_start {
            store::migrate(database.pool())
                .await
                .context("applying migrations")?;
        }
        if wiring.check_schema {
            check_schema(&database).await?;
        }
        let health = Health::new();
        let watchdog = Watchdog::new(health.clone());
        let http = match wiring.serve {
            Some(addr) => Some(Http::serve(addr, metrics, &health, shutdown, &watchdog).await?),
            None => None,
        };
        let (writer, writers) = Writer::spawn(database.clone(), writer, health.clone(), &watchdog);
        let pipeline = Pipeline {
            s3: aws::s3(sdk),
            writer,
            settings: pipeline,
            health: health.clone(),
            canary: Arc::new(Canary::default()),
        };
        let stop = Stop {
            watchdog: watchdog.clone(),
            writers,
            http,
            database: database.clone(),
        };
        Ok(Self {
            pipeline,
            database,
            health,
            watchdog,
            stop,
        })
    }
}

/// The HTTP endpoint, supervised, and the token that ends it.
struct Http {
    server: JoinHandle<()>,
    stop: CancellationToken,
}

impl Http {
    async fn serve(
        addr: SocketAddr,
        metrics: PrometheusHandle,
        health: &Health,
        shutdown: &CancellationToken,
        watchdog: &Watchdog,
    ) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let server = http::serve(
            addr,
            metrics,
            health.clone(),
            shutdown.clone(),
            stop.clone(),
        )
        .await
        .with_context(|| format!("binding METRICS_ADDR {addr}"))?;
        Ok(Self {
            server: watchdog.watch("http server", server),
            stop,
        })
    }
}

/// Supervised tasks that run beside the work until shutdown (probers, samplers, an embedder's
/// own); [`Stop::stop`] ends them after the writers.
pub(crate) struct Background {
    watchdog: Watchdog,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Background {
    pub(crate) fn new(watchdog: &Watchdog) -> Self {
        Self {
            watchdog: watchdog.clone(),
            stop: CancellationToken::new(),
            tasks: Vec::new(),
        }
    }

    /// Fires when the tasks are to end.
    pub(crate) fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub(crate) fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.push(self.watchdog.spawn(name, task));
    }
}

/// The ends of the shared parts. Shutdown as a value: whoever holds it ends them, in one order.
pub(crate) struct Stop {
    watchdog: Watchdog,
    writers: Vec<JoinHandle<()>>,
    http: Option<Http>,
    database: Database,
}

impl Stop {
    /// Ends the parts in their one order, once the pipeline (and with it every writer handle)
    /// is gone: supervision stands down, the writers drain what they were handed, the
    /// `background` tasks end, then the HTTP endpoint (it answers until the work is done), and
    /// the database's connections close last. Returns what a supervised task died of, if one
    /// did before shutdown.
    pub(crate) async fn stop(self, background: Background) -> Option<String> {
        // Past this point tasks are meant to end.
        self.watchdog.stopping();
        for writer in self.writers {
            let _ = writer.await;
        }
        background.stop.cancel();
        for task in background.tasks {
            let _ = task.await;
        }
        if let Some(http) = self.http {
            http.stop.cancel();
            let _ = http.server.await;
        }
        self.database.close().await;
        self.watchdog.cause()
    }
}

/// The database as the settings describe it: a lazy pool whose new connections get fresh
/// credentials (with RDS IAM tokens signed from `sdk`'s credential chain and region).
pub(crate) fn database(settings: &DatabaseSettings, sdk: &SdkConfig) -> anyhow::Result<Database> {
    let signer = match (&settings.password, sdk.credentials_provider(), sdk.region()) {
        (Password::RdsIam, Some(credentials), Some(region)) => Some(connect::AwsSigner {
            credentials,
            region: region.to_string(),
        }),
        _ => None,
    };
    Ok(Database::new(
        settings.connect.clone(),
        &settings.password,
        &settings.pool,
        signer,
    )?)
}

/// Refuses to start on a database whose schema lacks what the writes need (every write would
/// fail). A database that cannot be reached now is left to the probe: the worker starts, not
/// ready, and the probe says what is missing once it connects.
async fn check_schema(database: &Database) -> anyhow::Result<()> {
    let connection = tokio::time::timeout(Duration::from_secs(10), database.acquire()).await;
    let Ok(Ok(mut connection)) = connection else {
        tracing::warn!("the database cannot be reached at start: its probe keeps trying");
        return Ok(());
    };
    match store::schema::missing(&mut connection).await {
        Ok(missing) if !missing.is_empty() => Err(store::schema::Drift(missing).into()),
        _ => Ok(()),
    }
}

fn queue(sdk: &SdkConfig, settings: QueueSettings) -> Queue {
    Queue::new(
        aws::sqs(sdk),
        settings.url,
        settings.dead_letter_url,
        settings.wait,
        settings.visibility_timeout,
    )
}

/// One probe per dependency: PostgreSQL, S3 (the served buckets, and in depth the canary object
/// while the breaker is tripped), SQS (both queues, and in depth the calls that settle messages
/// while its breaker is tripped). The SQS probe also reads the queue's settings if start-up
/// could not. Each lives with the layer that owns its dependency.
fn probes(
    database: &Database,
    queue: &Queue,
    pipeline: &Pipeline,
    max_attempts: u32,
) -> Vec<(Dependency, Probe)> {
    vec![
        (Dependency::Postgres, postgres_probe(database.clone())),
        (
            Dependency::S3,
            canary::s3_probe(
                pipeline.s3.clone(),
                pipeline.settings.buckets.clone(),
                pipeline.health.clone(),
                pipeline.canary.clone(),
            ),
        ),
        (
            Dependency::Sqs,
            intake::probe::sqs_probe(queue.clone(), pipeline.health.clone(), max_attempts),
        ),
    ]
}

fn postgres_probe(database: Database) -> Probe {
    probe(move || {
        let database = database.clone();
        async move { store::ping(&database).await }
    })
}
