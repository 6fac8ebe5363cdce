//! Crash safety of the real binary: uploads and poison keep arriving while the worker is killed
//! with SIGKILL at random points and restarted. Whatever instant the kill lands on (mid-hash,
//! between commit and delete, between dead-letter send and delete), every upload must end as
//! exactly one row with the right hash, and every poison message as a dead letter.
//!
//! CHAOS_OBJECTS (default 800), CHAOS_KILLS (default 5) and CHAOS_SEED (default random, printed)
//! size and replay a run. The default is sized for the emulator: moto's SQS scans its whole
//! queue on every call, so its throughput falls as the backlog grows, and a 2,000-object run has
//! been seen to need from 4 to more than 10 minutes on the same two cores. Every kill point is
//! reached with 800 as well; larger runs are for `CHAOS_OBJECTS=2000 scripts/test.sh -- chaos`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::support::db::sha256_hex;
use crate::support::{BinaryWorker, Moto, Stack, TestDb, wait_until};

/// A killed worker leaves its in-flight messages invisible until this runs out.
const FLAGS: [&str; 6] = [
    "--sqs-visibility-timeout-secs",
    "5",
    "--retry-base-secs",
    "1",
    "--retry-max-secs",
    "2",
];
const POISON: usize = 25;
const UPLOADS_IN_FLIGHT: usize = 8;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Poison the parser refuses, one distinct body per index: all of it must be dead-lettered.
fn poison(i: usize, bucket: &str) -> String {
    match i % 5 {
        0 => format!(r#"{{"Records": [{{"chaos": {i}"#),
        1 => format!(r#"{{"chaos": {i}}}"#),
        2 => serde_json::json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectExploded:Chaos",
            "eventTime": "2024-05-01T10:00:00Z", "s3": {"bucket": {"name": bucket}, "object": {"key": format!("dp-1/{i}")}}}]})
        .to_string(),
        3 => crate::support::stack::s3_event(
            "ObjectCreated:Put",
            bucket,
            &format!("rootless-{i}.txt"),
            None,
            None,
            "2024-05-01T10:00:00Z",
        ),
        _ => format!("[{i}, \"not a notification\"]"),
    }
}

/// Uploads objects `range` (and the poison that falls in it) with a few requests in flight.
/// Returns (key, sha256) of the uploads and the message ids of the poison.
async fn feed(
    stack: Arc<Stack>,
    range: std::ops::Range<usize>,
    poison_every: usize,
) -> (Vec<(String, String)>, Vec<String>) {
    let slots = Arc::new(Semaphore::new(UPLOADS_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    for n in range {
        let permit = slots.clone().acquire_owned().await.unwrap();
        let stack = stack.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let key = format!("dp-1/chaos/{n:05}.txt");
            let body = format!("chaos object {n} in {}", stack.bucket);
            stack.put(&key, body.as_bytes()).await;
            let mut poisoned = None;
            if n % poison_every == poison_every - 1 && n / poison_every < POISON {
                let id = stack
                    .sqs
                    .send_message()
                    .queue_url(&stack.queue_url)
                    .message_body(poison(n / poison_every, &stack.bucket))
                    .send()
                    .await
                    .unwrap()
                    .message_id
                    .unwrap();
                poisoned = Some(id);
            }
            ((key, sha256_hex(body.as_bytes())), poisoned)
        });
    }
    let mut uploads = Vec::new();
    let mut poison_ids = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (upload, poisoned) = done.unwrap();
        uploads.push(upload);
        poison_ids.extend(poisoned);
    }
    (uploads, poison_ids)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_points_loses_nothing() {
    let started = Instant::now();
    let objects: usize = env_or("CHAOS_OBJECTS", 800).max(POISON);
    let kills: usize = env_or("CHAOS_KILLS", 5);
    let seed: u64 = env_or("CHAOS_SEED", fastrand::u64(..));
    println!("chaos: CHAOS_SEED={seed} CHAOS_OBJECTS={objects} CHAOS_KILLS={kills}");
    let mut rng = fastrand::Rng::with_seed(seed);

    // A moto of its own: its SQS slows down as the queue grows, and other tests share the other.
    let moto = Moto::start();
    let stack = Arc::new(Stack::new(&moto.endpoint).await);
    // As docs/operating.md recommends, the redrive limit sits well above the attempts the worker makes
    // (5 kills each burn a receive of what is in hand, and a slow emulator can let a heartbeat
    // arrive late); what SQS would move without a reason is then only a crash loop.
    stack.set_max_receive_count(20).await;
    let db = TestDb::new().await;
    db.add_datapack("dp-1").await;
    let poison_every = objects / POISON;

    // Uploads arrive in one batch per life of the worker, fed while it runs and is killed.
    let rounds = kills + 1;
    let per_round = objects.div_ceil(rounds);
    let mut feeders = JoinSet::new();
    let mut worker = BinaryWorker::spawn(&stack, &db, &FLAGS).await;
    let mut kill_times = Vec::new();
    for round in 0..rounds {
        let range = (round * per_round).min(objects)..((round + 1) * per_round).min(objects);
        feeders.spawn(feed(stack.clone(), range, poison_every));
        if round == kills {
            break;
        }
        // The kill lands wherever the worker happens to be: the chaos schedule, not a wait.
        let delay = Duration::from_millis(rng.u64(1000..4000));
        tokio::time::sleep(delay).await;
        worker.signal("KILL");
        let status = worker.wait(Duration::from_secs(10)).await;
        assert!(!status.success(), "SIGKILL ends the worker: {status}");
        kill_times.push(delay);
        worker = BinaryWorker::spawn(&stack, &db, &FLAGS).await;
    }
    let mut expected: HashMap<String, String> = HashMap::new();
    let mut poison_ids: HashSet<String> = HashSet::new();
    while let Some(fed) = feeders.join_next().await {
        let (uploads, ids) = fed.unwrap();
        expected.extend(uploads);
        poison_ids.extend(ids);
    }
    let fed_at = started.elapsed();
    assert_eq!(expected.len(), objects);
    assert_eq!(poison_ids.len(), POISON);

    // Let the last life drain everything: rows for every upload, then an empty queue and at
    // least one dead letter per poison message. Rows are counted in PostgreSQL first: asking
    // moto for queue depths 20 times a second would take the CPU it needs to serve the worker.
    // Generous: the emulator's pace varies a lot from machine to machine; what is asserted is
    // that nothing is lost or doubled, not how fast.
    let deadline = Duration::from_secs(480);
    let progress = std::cell::Cell::new(Instant::now());
    wait_until("a row for every upload", deadline, || async {
        let rows = db.count().await;
        if progress.get().elapsed() > Duration::from_secs(15) {
            progress.set(Instant::now());
            println!("chaos: {:?} rows={rows}", started.elapsed());
        }
        (rows >= objects as i64).then_some(())
    })
    .await;
    wait_until(
        "an empty queue and the poison dead-lettered",
        deadline,
        || async {
            let settled = stack.is_drained().await && stack.dlq_depth().await.0 >= POISON as u64;
            if !settled {
                // Depth queries cost moto a scan of the queue: ask at most every half second.
                tokio::time::sleep(Duration::from_millis(450)).await;
            }
            settled.then_some(())
        },
    )
    .await;
    let drained_at = started.elapsed();
    drop(worker);

    let rows = db.rows().await;
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for row in &rows {
        *per_key.entry(row.object_key.as_str()).or_default() += 1;
        let want = expected
            .get(&row.object_key)
            .unwrap_or_else(|| panic!("a row nobody uploaded: {}", row.object_key));
        assert_eq!(&row.sha256, want, "sha256 of {}", row.object_key);
    }
    let duplicate_rows: usize = per_key.values().map(|n| n - 1).sum();
    let lost: Vec<&String> = expected
        .keys()
        .filter(|k| !per_key.contains_key(k.as_str()))
        .collect();

    let letters = stack.take_dead_letters().await;
    let sources: Vec<&str> = letters
        .iter()
        .map(|(_, a)| a.get("source_message_id").map_or("", String::as_str))
        .collect();
    let distinct: HashSet<&str> = sources.iter().copied().collect();
    let strangers: Vec<_> = letters
        .iter()
        .filter(|(_, a)| {
            !poison_ids.contains(a.get("source_message_id").map_or("", String::as_str))
        })
        .collect();

    println!(
        "chaos summary: objects={objects} kills={} (after {:?}) rows={} dead_letters={}/{} (distinct/raw) poison={POISON} duplicate_rows={duplicate_rows} lost={} fed_in={fed_at:?} drained_in={drained_at:?} wall={:?} seed={seed}",
        kill_times.len(),
        kill_times,
        rows.len(),
        distinct.len(),
        letters.len(),
        lost.len(),
        started.elapsed()
    );
    if letters.len() > distinct.len() {
        // At-least-once dead-lettering: a kill between the send and the delete sends again.
        println!(
            "chaos: {} dead letter(s) sent twice by a kill between send and delete",
            letters.len() - distinct.len()
        );
    }
    assert!(lost.is_empty(), "lost uploads: {lost:?}");
    assert_eq!(duplicate_rows, 0, "uploads recorded more than once");
    assert_eq!(rows.len(), objects, "no other rows");
    assert!(
        strangers.is_empty(),
        "dead letters that are not poison (a valid upload dead-lettered?): {strangers:?}"
    );
    assert_eq!(
        distinct.len(),
        POISON,
        "every poison message dead-lettered once"
    );
}
