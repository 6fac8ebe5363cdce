//! Start-up: turns validated settings into running parts, and runs them until shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::{RunArgs, redact_url};
use crate::disposition::Dependency;
use crate::intake::pool as worker;
use crate::intake::pool::WorkerSettings;
use crate::intake::queue::Queue;
use crate::ops::health::{Health, Probe, probe};
use crate::ops::watchdog::Watchdog;
use crate::ops::{http, metrics};
use crate::process::canary::Canary;
use crate::process::pipeline::{Pipeline, PipelineSettings};
use crate::store::writer::{Writer, WriterSettings};
use crate::{aws, store};

/// Longest wait between two probes of a down dependency (before jitter). Probes are one cheap
/// call each, so recovery is noticed within seconds even after a long outage.
const PROBE_MAX_DELAY: Duration = Duration::from_secs(10);

pub const GIT_COMMIT: &str = match option_env!("DATAPACK_WORKER_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// Runs the worker until `shutdown` fires and in-flight work is drained, with AWS settings
/// from the standard chain.
pub async fn run(args: RunArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    args.validate()?;
    let sdk = aws::load(&aws::AwsSettings {
        endpoint_url: args.aws_endpoint_url.clone(),
        attempt_timeout: Duration::from_secs(args.aws_attempt_timeout_secs),
        ..Default::default()
    })
    .await;
    run_with(args, sdk, shutdown).await
}

/// Runs the worker with AWS settings made by the caller (tests, embedders).
pub async fn run_with(
    args: RunArgs,
    sdk: aws_config::SdkConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_supervised(args, sdk, shutdown, Vec::new()).await
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
    args: RunArgs,
    sdk: aws_config::SdkConfig,
    shutdown: CancellationToken,
    extra: Vec<ExtraTask>,
) -> anyhow::Result<()> {
    args.validate()?;
    let handle = metrics::install();
    metrics::build_info(env!("CARGO_PKG_VERSION"), GIT_COMMIT);
    let db_url = args.database.url()?;
    tracing::info!(
        database = %redact_url(db_url.expose()),
        queue = args.sqs_queue_url.as_deref().unwrap_or_default(),
        buckets = ?args.buckets(),
        concurrency = args.worker_concurrency,
        "starting datapack-worker {}", env!("CARGO_PKG_VERSION")
    );

    let pool = store::pool(
        args.database.connect_options()?,
        &args.database.pool_settings(),
    );
    if args.migrate_on_start {
        store::migrate(&pool).await.context("applying migrations")?;
    }
    let s3 = aws::s3(&sdk);
    let queue = Queue::new(
        aws::sqs(&sdk),
        args.sqs_queue_url.clone().expect("validated"),
        args.sqs_dead_letter_queue_url.clone().expect("validated"),
        Duration::from_secs(args.sqs_wait_time_secs),
        Duration::from_secs(args.sqs_visibility_timeout_secs),
    );

    let health = Health::new();
    let watchdog = Watchdog::new(health.clone());
    let canary = Arc::new(Canary::default());
    let stop_background = CancellationToken::new();
    let mut background = Vec::new();
    for (dependency, probe) in probes(&pool, &s3, &queue, &args.buckets(), &health, &canary) {
        background.push(
            watchdog.spawn(
                "prober",
                health.clone().run_prober(
                    dependency,
                    probe,
                    PROBE_MAX_DELAY,
                    stop_background.clone(),
                ),
            ),
        );
    }
    background.push(watchdog.spawn(
        "queue sampler",
        crate::intake::depth::sample_queues(
            queue.clone(),
            Duration::from_secs(args.queue_sample_secs.max(1)),
            stop_background.clone(),
        ),
    ));
    for (name, task) in extra {
        background.push(watchdog.spawn(name, task));
    }
    let stop_http = CancellationToken::new();
    let server = http::serve(
        args.metrics_addr,
        handle,
        health.clone(),
        shutdown.clone(),
        stop_http.clone(),
    )
    .await
    .with_context(|| format!("binding METRICS_ADDR {}", args.metrics_addr))?;
    let server = watchdog.watch("http server", server);

    let (writer, writers) = Writer::spawn(
        pool.clone(),
        WriterSettings {
            writers: args.db_writers,
            max_batch: args.db_max_batch,
            create_datapacks: args.create_missing_datapacks,
            timeout: Duration::from_secs(args.database.database_statement_timeout_secs.max(1) + 5),
        },
        health.clone(),
        &watchdog,
    );
    let pipeline = Pipeline {
        s3,
        writer,
        settings: PipelineSettings {
            buckets: args.buckets(),
            required_uploaded_by: args.required_uploaded_by(),
            ranged: crate::process::fetch::Ranged::new(
                args.ranged_get_threshold_bytes,
                args.ranged_get_part_bytes,
                args.ranged_get_parallelism,
            ),
            checksums: crate::process::fetch::Checksums {
                trusted: args.s3_checksums_trusted,
                audit_ratio: args.checksum_audit_ratio,
            },
        },
        health: health.clone(),
        canary,
    };
    let settings = WorkerSettings {
        concurrency: args.worker_concurrency,
        pollers: args
            .worker_pollers
            .unwrap_or(args.worker_concurrency.div_ceil(10)),
        retry_base: Duration::from_secs(args.retry_base_secs),
        retry_max: Duration::from_secs(args.retry_max_secs),
        max_extension: Duration::from_secs(args.max_processing_secs),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        max_attempts: args.max_attempts,
    };
    worker::run(
        pipeline,
        queue,
        health,
        settings,
        shutdown.clone(),
        watchdog.clone(),
    )
    .await;

    // Past this point tasks are meant to end.
    watchdog.stopping();
    // The pipeline (and so every writer handle) is gone: writers drain and stop.
    for writer in writers {
        let _ = writer.await;
    }
    stop_background.cancel();
    for task in background {
        let _ = task.await;
    }
    stop_http.cancel();
    let _ = server.await;
    pool.close().await;
    match watchdog.cause() {
        Some(cause) => Err(anyhow::anyhow!("stopped because {cause}")),
        None => Ok(()),
    }
}

fn probes(
    pool: &sqlx::PgPool,
    s3: &aws_sdk_s3::Client,
    queue: &Queue,
    buckets: &[String],
    health: &Health,
    canary: &Arc<Canary>,
) -> Vec<(Dependency, Probe)> {
    let (pool, s3, q1, q2, buckets) = (
        pool.clone(),
        s3.clone(),
        queue.clone(),
        queue.clone(),
        Arc::new(buckets.to_vec()),
    );
    let (health, canary) = (health.clone(), canary.clone());
    vec![
        (
            Dependency::Postgres,
            probe(move || {
                let pool = pool.clone();
                async move { store::ping(&pool).await }
            }),
        ),
        (
            Dependency::S3,
            probe(move || {
                let (s3, buckets, health, canary) =
                    (s3.clone(), buckets.clone(), health.clone(), canary.clone());
                async move {
                    for bucket in buckets.iter() {
                        s3.head_bucket()
                            .bucket(bucket)
                            .send()
                            .await
                            .map_err(|e| aws::classify(Dependency::S3, e))?;
                    }
                    // In depth only when the breaker says most reads fail: a real read of an
                    // object that was readable tells a brownout from a run of bad objects.
                    if health.tripped(Dependency::S3) {
                        canary.probe(&s3).await?;
                    }
                    Ok(())
                }
            }),
        ),
        (
            Dependency::Sqs,
            probe(move || {
                let (main, dead) = (q1.clone(), q2.clone());
                async move {
                    main.learn_max_receive_count().await?;
                    dead.depth(&dead.dead_letter_url).await.map(drop)
                }
            }),
        ),
    ]
}
