//! One bad message, object or task never harms the rest: a message built to crash the writers,
//! an object S3 refuses or breaks for one key, a brownout where every object is unreadable but
//! the bucket answers, and a supervised task that dies. Each scenario prints what it measured:
//! how long the bad message lived, how many receives it took, the reason it carried, and how the
//! good traffic fared.

use std::time::{Duration, Instant};

use crate::support::db::sha256_hex;
use crate::support::rig::{Rig, readyz, wait_ready};
use crate::support::s3_proxy::{Action, Match, Rule, S3Proxy};
use crate::support::scrape::sum;
use crate::support::worker::Endpoint;
use crate::support::{TestDb, TestWorker, wait_until};

const SETTLE: Duration = Duration::from_secs(90);

/// A notification for `key` (ETag `etag`) in the rig's bucket, as S3 would send it, with the
/// sequencer given.
fn notification(bucket: &str, key: &str, etag: &str, sequencer: &str) -> String {
    serde_json::json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2024-05-01T10:00:00.000Z", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket},
               "object": {"key": key, "size": 6, "eTag": etag, "sequencer": sequencer}}
    }]})
    .to_string()
}

/// The old writer panicked on a sequencer longer than 65,535 characters (a `format!` width), and
/// each redelivery killed another writer. The parser now drops a sequencer no S3 would send (it is
/// an ordering hint, not the upload): the upload is recorded, ordered by its event time, the
/// dropped sequencers are counted, nothing is dead-lettered, and the worker stays healthy.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_built_to_crash_the_writers_is_recorded_without_its_sequencer() {
    let started = Instant::now();
    let mut rig = Rig::new().await;
    let worker = rig.worker(&[]).await;
    wait_ready(&worker, 200, "ready", SETTLE).await;
    let key = "dp-1/poison.txt";
    let etag = rig.stack.put(key, b"poison").await;
    rig.expected.insert(key.to_owned(), sha256_hex(b"poison"));
    let poison = notification(&rig.stack.bucket, key, &etag, &"F".repeat(70_000));
    for _ in 0..3 {
        rig.stack.send(&poison).await;
    }
    rig.uploads(0..10).await;
    rig.assert_nothing_lost_but_dead_letters(SETTLE, 0, "malformed_message")
        .await;
    let scrape = worker.http.scrape().await;
    assert_eq!(
        sum(
            &scrape,
            "datapack_worker_sequencer_unusable_total",
            "reason=\"too_long\""
        ),
        3.0,
        "each delivery's sequencer dropped and counted"
    );
    assert_eq!(
        worker.http.status("/healthz").await,
        Some(200),
        "healthy after the poison"
    );
    assert_eq!(readyz(&worker).await, Some(200));
    println!(
        "three 70,000-character sequencers: dropped and counted, {} uploads recorded, test {:?}",
        rig.expected.len(),
        started.elapsed()
    );
    worker.stop().await;
}

/// A supervised task that dies takes the process down at once, releasing what it holds, with
/// the cause in the error (the binary exits 1 on it).
#[tokio::test(flavor = "multi_thread")]
async fn a_dying_supervised_task_releases_what_is_held_and_ends_the_run() {
    let mut rig = Rig::new().await;
    // An object slow enough to still be hashing when the task dies.
    let size = 8 * 1024 * 1024;
    let body: Vec<u8> = (0..size as u32).map(|i| (i % 251) as u8).collect();
    let key = "dp-1/isolation/slow.bin";
    rig.stack.put(key, &body).await;
    rig.expected.insert(key.to_owned(), sha256_hex(&body));
    rig.moto_proxy.set_latency(Duration::from_millis(30));
    let (die, dying) = tokio::sync::oneshot::channel::<()>();
    let task: datapack_worker::app::ExtraTask = (
        "test task",
        Box::pin(async move {
            let _ = dying.await;
            panic!("injected by the test");
        }),
    );
    let worker = rig
        .launch(&rig.moto_proxy.endpoint(), &[])
        .supervised(vec![task])
        .await;
    // This worker's own evidence that it holds the message: its GET of the object is under way
    // (a megabyte through its proxy; SQS answers are a few kilobytes). A metric would not do:
    // every worker in the test process shares one registry, and dying before the receive
    // answers leaves the message with a long poll that is gone.
    wait_until("the object being read", SETTLE, || async {
        (rig.moto_proxy.delivered() > 1024 * 1024).then_some(())
    })
    .await;
    let _ = die.send(());
    let died = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(30), worker.task)
        .await
        .expect("the run ends at once")
        .expect("no panic escapes the run");
    let error = ended.expect_err("the run reports the dead task");
    assert!(
        format!("{error:#}").contains("test task") && format!("{error:#}").contains("injected"),
        "{error:#}"
    );
    let ended_after = died.elapsed();
    // Released (visibility 0), not left invisible for the 60 s visibility timeout.
    rig.moto_proxy.set_latency(Duration::ZERO);
    wait_until(
        "the message visible again",
        Duration::from_secs(20),
        || async { (rig.stack.depth().await == (1, 0)).then_some(()) },
    )
    .await;
    println!(
        "a supervised task panicked: the run ended {ended_after:?} later and the message in hand was visible again {:?} after the panic",
        died.elapsed()
    );
}

/// The readiness answers seen while a scenario runs, polled in the background.
struct ReadinessWatch {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Vec<Option<u16>>>,
}

impl ReadinessWatch {
    fn start(http: Endpoint) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !token.is_cancelled() {
                tick.tick().await;
                seen.push(http.status("/readyz").await);
            }
            seen
        });
        Self { stop, task }
    }

    /// Every answer seen, in order.
    async fn finish(self) -> Vec<Option<u16>> {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}

/// Records that failed for `reason`, from the worker's scrape. In-process workers share one
/// metrics registry (other tests fail reads too), so this counts at least this worker's.
async fn records_failed(worker: &TestWorker, reason: &str) -> f64 {
    let scrape = worker.http.scrape().await;
    let having = format!("reason=\"{reason}\"");
    sum(&scrape, "datapack_worker_records_total", &having)
}

/// The S3 sabotage proxy in front of moto, and a worker whose S3 and SQS go through it.
async fn sabotaged(rig: &Rig, extra: &[&str]) -> (S3Proxy, TestWorker) {
    let proxy = S3Proxy::start(rig.moto_proxy.target()).await;
    let worker = rig.launch(&proxy.endpoint(), extra).in_process().await;
    (proxy, worker)
}

fn object_get(key: &str) -> Match {
    Match::get(key)
}

/// S3 refuses one object (a KMS key the worker may not use, a per-key deny) while every other
/// object and the bucket answer. Before, that paused the whole worker and looped the message
/// ten times in a second. Now it is a fact about that message: retried with backoff, then
/// dead-lettered with its reason on its last attempt; the rest flows and readiness never drops.
#[tokio::test(flavor = "multi_thread")]
async fn an_object_denied_alone_is_retried_then_dead_lettered_with_its_reason() {
    let mut rig = Rig::new().await;
    let (proxy, worker) = sabotaged(&rig, &[]).await;
    let denied = "dp-1/isolation/denied.txt";
    proxy.add(Rule {
        matcher: object_get(denied),
        action: Action::Deny,
        times: None,
    });
    wait_ready(&worker, 200, "ready", SETTLE).await;
    let watch = ReadinessWatch::start(worker.http);
    let uploaded = Instant::now();
    rig.stack.put(denied, b"a KMS key we may not use").await;
    rig.uploads(0..20).await;
    // The denied object.
    rig.stack.wait_dead_letters(1, SETTLE).await;
    let lived = uploaded.elapsed();
    let letters = rig
        .assert_nothing_lost_but_dead_letters(SETTLE, 1, "object_access_denied")
        .await;
    assert_eq!(
        letters[0].1.get("receive_count").map(String::as_str),
        Some("5")
    );
    let detail = &letters[0].1["error_detail"];
    assert!(
        detail.starts_with(&format!("s3://{}/{denied}: ", rig.stack.bucket)),
        "the dead letter names the object that failed: {detail}"
    );
    let readiness = watch.finish().await;
    assert!(
        readiness.iter().all(|s| *s == Some(200)),
        "never paused for one object: {readiness:?}"
    );
    let gets: Vec<Instant> = proxy
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.key.as_deref() == Some(denied))
        .map(|s| s.at)
        .collect();
    assert_eq!(
        gets.len(),
        5,
        "one GET per attempt, the queue's maxReceiveCount"
    );
    let gaps: Vec<Duration> = gets.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(900)),
        "attempts spaced by the backoff (RETRY_BASE_SECS 1): {gaps:?}"
    );
    // In-process workers share one metrics registry (other tests deny reads too): at least.
    assert!(records_failed(&worker, "s3_access_denied").await >= 4.0);
    println!(
        "one object denied: dead-lettered as object_access_denied after {} receives in {lived:?} (gaps {gaps:?}); {} other uploads recorded, readiness 200 throughout ({} samples)",
        gets.len(),
        rig.expected.len(),
        readiness.len()
    );
    worker.stop().await;
}

/// A body reset mid-stream once, and a body that stalls twice, are facts about those reads:
/// retried after a backoff and recorded; the worker never pauses.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_reset_or_stalled_mid_stream_is_fetched_again_without_a_pause() {
    let mut rig = Rig::new().await;
    let (proxy, worker) = sabotaged(&rig, &[]).await;
    let body: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    for (key, action, times) in [
        (
            "dp-1/isolation/reset.bin",
            Action::ResetAfterBodyBytes(64 * 1024),
            1,
        ),
        (
            "dp-1/isolation/stall.bin",
            Action::StallAfterBodyBytes(64 * 1024),
            2,
        ),
    ] {
        proxy.add(Rule {
            matcher: object_get(key),
            action,
            times: Some(times),
        });
        rig.stack.put(key, &body).await;
        rig.expected.insert(key.to_owned(), sha256_hex(&body));
    }
    wait_ready(&worker, 200, "ready", SETTLE).await;
    let watch = ReadinessWatch::start(worker.http);
    let started = Instant::now();
    rig.uploads(0..10).await;
    rig.assert_nothing_lost(SETTLE).await;
    let readiness = watch.finish().await;
    assert!(
        readiness.iter().all(|s| *s == Some(200)),
        "never paused: {readiness:?}"
    );
    let read_failures = records_failed(&worker, "s3_read_failed").await;
    assert!(
        read_failures >= 3.0,
        "{read_failures} read failures retried"
    );
    println!(
        "a reset once and a stall twice: {read_failures} failed reads retried, all {} uploads recorded once in {:?}, readiness 200 throughout",
        rig.expected.len(),
        started.elapsed()
    );
    worker.stop().await;
}

/// Bytes corrupted on the way for one object: the SDK's checksum check refuses them, every
/// attempt. Never recorded with a wrong hash; dead-lettered as unreadable; the rest flows.
#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_body_is_never_recorded_and_is_dead_lettered_as_unreadable() {
    let mut rig = Rig::new().await;
    let (proxy, worker) = sabotaged(&rig, &[]).await;
    let corrupted = "dp-1/isolation/corrupted.bin";
    proxy.add(Rule {
        matcher: object_get(corrupted),
        action: Action::CorruptBodyByte(100),
        times: None,
    });
    rig.stack.put(corrupted, &[7u8; 4096]).await;
    wait_ready(&worker, 200, "ready", SETTLE).await;
    let watch = ReadinessWatch::start(worker.http);
    rig.uploads(0..10).await;
    let started = Instant::now();
    rig.assert_nothing_lost_but_dead_letters(SETTLE, 1, "object_unreadable")
        .await;
    let readiness = watch.finish().await;
    assert!(readiness.iter().all(|s| *s == Some(200)), "{readiness:?}");
    let mismatches = records_failed(&worker, "s3_checksum_mismatch").await;
    // In-process workers share one metrics registry: at least this worker's four.
    assert!(
        mismatches >= 4.0,
        "retried on four attempts, dead-lettered on the fifth"
    );
    println!(
        "a corrupted body: {mismatches} checksum mismatches retried, then object_unreadable; the other {} uploads recorded in {:?}",
        rig.expected.len(),
        started.elapsed()
    );
    worker.stop().await;
}

/// Every object unreadable while the bucket answers its probe (a bucket policy denying
/// GetObject, a revoked kms:Decrypt): before, 40 of 40 good uploads were dead-lettered in five
/// seconds while /readyz said 200. Now the S3 breaker trips, its deep probe (a real read of an
/// object that was readable) fails, the worker pauses, and nothing is dead-lettered; when reads
/// work again everything is recorded.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_brownout_pauses_and_dead_letters_nothing() {
    let mut rig = Rig::new().await;
    let (proxy, worker) = sabotaged(&rig, &[]).await;
    wait_ready(&worker, 200, "ready", SETTLE).await;
    rig.uploads(0..3).await;
    rig.assert_nothing_lost(SETTLE).await;

    let deny = proxy.add(Rule {
        matcher: object_get("dp-1/"),
        action: Action::Deny,
        times: None,
    });
    let browned_out = Instant::now();
    rig.uploads(3..43).await;
    wait_ready(&worker, 503, "paused by the breaker's deep probe", SETTLE).await;
    let paused_after = browned_out.elapsed();
    // The brownout goes on for ten seconds more (the scenario's length, not a synchronisation):
    // the pause must hold, and nothing may be dead-lettered meanwhile.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(readyz(&worker).await, Some(503), "still paused");
    assert_eq!(rig.stack.dlq_depth().await, (0, 0), "nothing dead-lettered");
    let failed_gets = proxy.count(&object_get("dp-1/"));

    proxy.remove(deny);
    let restored = Instant::now();
    wait_ready(&worker, 200, "ready once reads work", SETTLE).await;
    let resumed_after = restored.elapsed();
    rig.assert_nothing_lost(SETTLE).await;
    println!(
        "read-only brownout with 40 uploads: paused {paused_after:?} after it began ({failed_gets} GETs refused), \
         0 dead letters, ready {resumed_after:?} after reads worked again, all {} recorded {:?} after",
        rig.expected.len(),
        restored.elapsed()
    );
    worker.stop().await;
}

/// A constraint violation (SQLSTATE class 23) belongs to one row: the batch it was committed in
/// is retried job by job, so every other message of the batch is recorded and only the
/// offending one fails, with `database_constraint`.
#[tokio::test(flavor = "multi_thread")]
async fn a_constraint_violation_fails_only_its_own_message() {
    use crate::support::db::writer;
    use datapack_worker::disposition::{Failure, RetryReason};
    use datapack_worker::store::{NewResource, Write, WriteOutcome};

    let db = TestDb::new().await;
    db.add_datapack("dp-1").await;
    sqlx::query(
        "ALTER TABLE datapack_resource ADD CONSTRAINT no_evil CHECK (display <> 'evil.txt')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let (writer, _, watchdog) = writer(&db, 64);
    let at = chrono::Utc::now();
    let write = |display: String| {
        Write::Resource(NewResource {
            bucket: "uploads".into(),
            object_key: format!("dp-1/{display}"),
            datapack: "dp-1".into(),
            path: "/".into(),
            display: display.clone(),
            content_type: None,
            length: 1,
            etag: sha256_hex(display.as_bytes())[..32].to_owned(),
            sha256: sha256_hex(display.as_bytes()),
            sha256_source: Default::default(),
            submitter_name: None,
            submitter_email: None,
            object_last_modified: None,
            version_id: None,
            sequencer: None,
            event_time: at,
            tiebreak: None,
        })
    };
    let mut jobs = tokio::task::JoinSet::new();
    for i in 0..30 {
        let display = if i == 17 {
            "evil.txt".to_owned()
        } else {
            format!("good-{i}.txt")
        };
        let (writer, write) = (writer.clone(), write(display.clone()));
        jobs.spawn(async move { (display, writer.write(vec![write]).await) });
    }
    let mut recorded = 0;
    while let Some(joined) = jobs.join_next().await {
        let (display, result) = joined.unwrap();
        match result {
            Ok(outcomes) => {
                assert_ne!(display, "evil.txt");
                assert_eq!(outcomes, [WriteOutcome::Recorded]);
                recorded += 1;
            }
            Err(Failure::Transient { reason, .. }) => {
                assert_eq!(display, "evil.txt");
                assert_eq!(reason, RetryReason::DatabaseConstraint);
            }
            Err(other) => panic!("{display}: {other}"),
        }
    }
    assert_eq!(recorded, 29);
    assert_eq!(db.count().await, 29);
    assert!(!watchdog.fatal().is_cancelled(), "no writer died");
}

/// Work that outlives MAX_PROCESSING_SECS is abandoned (logged), not extended silently: the
/// attempt counts as a failure of the message, and on its last attempt the message is
/// dead-lettered as `processing_failed`.
#[tokio::test(flavor = "multi_thread")]
async fn work_past_the_processing_cap_is_abandoned_then_dead_lettered() {
    let rig = Rig::new().await;
    let size = 4 * 1024 * 1024;
    let body: Vec<u8> = (0..size as u32).map(|i| (i % 241) as u8).collect();
    rig.stack.put("dp-1/isolation/endless.bin", &body).await;
    // About 60 chunks of 64 KiB at 50 ms each: every attempt needs ~3 s, the cap allows 2.
    rig.moto_proxy.set_latency(Duration::from_millis(50));
    let started = Instant::now();
    let worker = rig
        .worker(&[
            "--sqs-visibility-timeout-secs",
            "2",
            "--max-processing-secs",
            "2",
        ])
        .await;
    let letters = rig
        .assert_nothing_lost_but_dead_letters(SETTLE, 1, "processing_failed")
        .await;
    let timeouts = records_failed(&worker, "processing_timeout").await;
    // In-process workers share one metrics registry: at least this worker's four.
    assert!(
        timeouts >= 4.0,
        "four attempts abandoned and retried, the fifth dead-lettered"
    );
    println!(
        "work past MAX_PROCESSING_SECS=2: abandoned on each attempt, dead-lettered as processing_failed after {:?} ({:?})",
        started.elapsed(),
        letters[0].1.get("error_detail")
    );
    worker.stop().await;
}
