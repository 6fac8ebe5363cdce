//! One bad message, object or task never harms the rest: a message built to crash the writers,
//! an object S3 refuses or breaks for one key, a brownout where every object is unreadable but
//! the bucket answers, and a supervised task that dies. Each scenario prints what it measured:
//! how long the bad message lived, how many receives it took, the reason it carried, and how the
//! good traffic fared.

use std::time::{Duration, Instant};

use crate::faults::{Rig, readyz, sum, wait_ready};
use crate::support::db::sha256_hex;
use crate::support::wait_until;

const SETTLE: Duration = Duration::from_secs(90);

/// A notification for `key` in the rig's bucket, as S3 would send it, with a sequencer `width`
/// characters long.
fn notification(bucket: &str, key: &str, sequencer: &str) -> String {
    serde_json::json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2024-05-01T10:00:00.000Z", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket},
               "object": {"key": key, "size": 5, "eTag": "0123456789abcdef0123456789abcdef",
                          "sequencer": sequencer}}
    }]})
    .to_string()
}

/// The old writer panicked on a sequencer longer than 65,535 characters (a `format!` width), and
/// each redelivery killed another writer. Now the parser refuses it: one dead letter with its
/// reason, and the worker goes on recording, healthy.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_built_to_crash_the_writers_is_dead_lettered_and_the_rest_flows() {
    let started = Instant::now();
    let mut rig = Rig::new().await;
    let worker = rig.worker(&[]);
    wait_ready(&worker, 200, "ready", SETTLE).await;
    let poison = notification(&rig.stack.bucket, "dp-1/poison.txt", &"F".repeat(70_000));
    for _ in 0..3 {
        rig.stack.send(&poison).await;
    }
    for n in 0..10 {
        rig.upload(n).await;
    }
    let letters = wait_until("three dead letters", SETTLE, || async {
        let (visible, _) = rig.stack.dlq_depth().await;
        (visible == 3).then_some(())
    })
    .await;
    let _ = letters;
    rig.assert_nothing_lost_but_dead_letters(SETTLE, 3, "malformed_message")
        .await;
    let health = reqwest::get(format!("http://{}/healthz", worker.metrics_addr))
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "healthy after the poison");
    assert_eq!(readyz(&worker).await, Some(200));
    println!(
        "three 70,000-character sequencers: dead-lettered as malformed_message, {} uploads recorded, test {:?}",
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
    let worker = rig.worker_with(&rig.moto_proxy.endpoint(), &[], vec![task]);
    let metrics = format!("http://{}/metrics", worker.metrics_addr);
    wait_until("the object being hashed", SETTLE, || async {
        let scrape = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
        (sum(&scrape, "datapack_worker_hashed_bytes_total", "") > 0.0).then_some(())
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
    wait_until("the message visible again", Duration::from_secs(20), || async {
        (rig.stack.depth().await == (1, 0)).then_some(())
    })
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
    fn start(metrics_addr: &str) -> Self {
        let url = format!("http://{metrics_addr}/readyz");
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !token.is_cancelled() {
                tick.tick().await;
                let status = tokio::time::timeout(Duration::from_secs(2), reqwest::get(&url))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|r| r.status().as_u16());
                seen.push(status);
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

/// The scrape of an in-process worker.
async fn scrape(metrics_addr: &str) -> String {
    reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

