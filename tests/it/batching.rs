//! SQS requests per object: under a backlog the worker receives and deletes ten at a time (its
//! own request counter says so), the heartbeats of messages worked on together share their
//! visibility calls, and at light load a single upload is still recorded at once, not held back
//! for a batch that never fills.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::support::s3_proxy::{Action, Match, Rule, S3Proxy};
use crate::support::scrape::{samples, sum};
use crate::support::{BinaryWorker, Launch, Moto, Stack, TestDb, setup, wait_until};

/// The SQS operations that move messages (receive, delete, visibility); the probe's and the
/// depth sampler's `GetQueueAttributes` are a fixed cost per replica, not per object.
const PER_OBJECT_OPERATIONS: [&str; 4] = [
    "ReceiveMessage",
    "DeleteMessageBatch",
    "ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch",
];

/// Uploads `keys`, 1 KiB each with the presigned metadata, 16 at a time; S3 (moto) sends one
/// notification per upload to the stack's queue.
async fn upload_all(stack: &Stack, keys: Vec<String>) {
    let body = vec![b'x'; 1024];
    for chunk in keys.chunks(16) {
        let mut uploads = JoinSet::new();
        for key in chunk {
            let request = stack
                .s3
                .put_object()
                .bucket(&stack.bucket)
                .key(key)
                .body(body.clone().into())
                .content_type("text/plain")
                .metadata("uploaded-by", "presigned-url")
                .metadata("uploader-name", "batching")
                .metadata("uploader-email", "batching@example.com");
            uploads.spawn(async move { request.send().await.map(drop) });
        }
        while let Some(done) = uploads.join_next().await {
            done.unwrap().unwrap();
        }
    }
}

/// The worker's SQS requests by operation (every outcome), from its own counter.
async fn sqs_requests(worker: &BinaryWorker) -> Vec<(String, f64)> {
    let scrape = worker.http.scrape().await;
    PER_OBJECT_OPERATIONS
        .iter()
        .map(|operation| {
            let n = samples(&scrape)
                .into_iter()
                .filter(|s| {
                    s.name == "datapack_worker_aws_requests_total"
                        && s.labels.get("service").map(String::as_str) == Some("sqs")
                        && s.labels.get("operation").map(String::as_str) == Some(*operation)
                })
                .map(|s| s.value)
                .sum();
            ((*operation).to_owned(), n)
        })
        .collect()
}

async fn ready(worker: &BinaryWorker) {
    wait_until(
        "the worker to be ready",
        Duration::from_secs(30),
        || async { (worker.http.status("/readyz").await == Some(200)).then_some(()) },
    )
    .await;
}

/// 500 uploads queued before the worker starts: a full backlog. The worker (the real binary,
/// concurrency 16) drains it with receives and deletes that carry several messages each, as its
/// own request counter counts them: at most half an SQS request per object, receives, deletes and
/// visibility changes summed. One receive and one delete per message would be two.
///
/// What this asserts is that both batch, on any machine the suite runs on; the goal of 0.3 at
/// full load with the default waits is the benchmark's to measure (`SQS requests per object at
/// full load`, docs/capacity.md). How many slots and settled messages gather within a wait
/// depends on how fast the machine works: a suite sharing two cores once drained this backlog at
/// 0.346 with the default waits (100 and 200 ms). The waits are set to their longest (1 s) so
/// the figure depends on the batching, not on the machine's speed.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_is_drained_with_batched_receives_and_deletes() {
    let objects = 500;
    let (stack, db): (Stack, TestDb) = setup("dp-1").await;
    let keys: Vec<String> = (0..objects)
        .map(|i| format!("dp-1/batching/{i:04}.bin"))
        .collect();
    queue_uploads(&stack, keys).await;

    let worker = BinaryWorker::spawn(
        &stack,
        &db,
        &[
            "--sqs-receive-batch-wait-ms",
            "1000",
            "--sqs-delete-batch-wait-ms",
            "1000",
        ],
    )
    .await;
    let started = Instant::now();
    db.wait_rows(objects, Duration::from_secs(300)).await;
    stack.wait_drained(Duration::from_secs(60)).await;
    let took = started.elapsed();

    let requests = sqs_requests(&worker).await;
    let total: f64 = requests.iter().map(|(_, n)| n).sum();
    let per_object = total / objects as f64;
    eprintln!(
        "{objects} objects in {took:?}: {per_object:.3} SQS requests per object ({})",
        requests
            .iter()
            .map(|(op, n)| format!("{op} {:.3}", n / objects as f64))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_eq!(db.count().await, objects, "one row per object");
    assert!(
        per_object <= 0.5,
        "{per_object:.3} SQS requests per object under a backlog: {requests:?}"
    );
}

/// Ten messages whose objects take longer to read than half the visibility timeout (a proxy holds
/// each GetObject answer back 3 s; the timeout is 2 s, so a heartbeat every second): the
/// heartbeats that keep them invisible go out together, several messages per
/// ChangeMessageVisibilityBatch, instead of one ChangeMessageVisibility per message and beat.
#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_of_messages_worked_on_together_share_their_calls() {
    let objects = 10;
    let (stack, db) = setup("dp-1").await;
    let keys: Vec<String> = (0..objects)
        .map(|i| format!("dp-1/heartbeats/{i}.bin"))
        .collect();
    queue_uploads(&stack, keys).await;
    let proxy = S3Proxy::start(Moto::shared().addr).await;
    proxy.add(Rule::new(
        Match::get("dp-1/heartbeats/"),
        Action::Delay(Duration::from_secs(3)),
    ));
    let worker = Launch::new(&stack, &db, &["--sqs-visibility-timeout-secs", "2"])
        .via(&proxy.endpoint())
        .binary()
        .await;
    db.wait_rows(objects, Duration::from_secs(120)).await;
    stack.wait_drained(Duration::from_secs(60)).await;

    let scrape = worker.http.scrape().await;
    let extensions = sum(&scrape, "datapack_worker_visibility_extensions_total", "");
    let calls: f64 = sqs_requests(&worker)
        .await
        .iter()
        .filter(|(op, _)| op.starts_with("ChangeMessageVisibility"))
        .map(|(_, n)| n)
        .sum();
    eprintln!(
        "{objects} objects held past their heartbeats: {extensions} extensions in {calls} visibility calls"
    );
    assert_eq!(db.count().await, objects, "one row per object");
    assert!(extensions >= objects as f64, "{extensions} extensions");
    assert!(
        calls * 3.0 <= extensions,
        "{calls} visibility calls for {extensions} extensions: not batched"
    );
}

/// Uploads one at a time, each only after the previous one was recorded: nothing ever waits for
/// a batch to fill. Each is recorded promptly (a generous bound for a loaded machine: the
/// figure itself is the benchmark's, 14-16 ms at p50) and its message deleted.
#[tokio::test(flavor = "multi_thread")]
async fn at_light_load_each_upload_is_recorded_at_once() {
    let (stack, db) = setup("dp-1").await;
    let worker = BinaryWorker::spawn(&stack, &db, &[]).await;
    ready(&worker).await;
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let key = format!("dp-1/light/{i:02}.bin");
        let uploaded = Instant::now();
        stack.put(&key, format!("light {i}").as_bytes()).await;
        wait_until(
            &format!("the row for upload {i}"),
            Duration::from_secs(2),
            || async { (db.count().await > i).then_some(()) },
        )
        .await;
        slowest = slowest.max(uploaded.elapsed());
    }
    stack.wait_drained(Duration::from_secs(10)).await;
    eprintln!("slowest upload to row: {slowest:?}");
    let deletes: f64 = sqs_requests(&worker)
        .await
        .iter()
        .filter(|(op, _)| op == "DeleteMessageBatch")
        .map(|(_, n)| n)
        .sum();
    assert!(
        (1.0..=10.0).contains(&deletes),
        "{deletes} DeleteMessageBatch calls for 10 messages"
    );
}

/// Uploads `keys` and waits until the notification of each is in the queue.
async fn queue_uploads(stack: &Stack, keys: Vec<String>) {
    let queued = keys.len() as u64;
    upload_all(stack, keys).await;
    wait_until(
        "every notification queued",
        Duration::from_secs(60),
        || async { (stack.depth().await.0 >= queued).then_some(()) },
    )
    .await;
}
