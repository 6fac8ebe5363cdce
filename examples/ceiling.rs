//! The emulator's ceiling: the worker's S3 and SQS calls with nothing else.
//!
//! Pollers receive only for idle slots (as the worker does), each message's objects are fetched
//! with GetObject and the body is read and discarded (no database), and the message
//! is deleted through a batching deleter. Optionally the objects are read as parallel ranged GETs
//! (`--ranged-part BYTES --ranged-parallelism N`), also discarded; or each single GET's bytes
//! are run through SHA-256 as they arrive (`--hash`), the least CPU any worker that verifies
//! what it stores can spend on a byte (the same hasher as the worker's). Stops after `--expect`
//! messages and prints one JSON line: messages, bytes, the epoch time of the last delete.
//!
//!     cargo run --release --example ceiling -- --queue-url URL --expect 2000 --concurrency 16
//!
//! Endpoint, region and credentials come from the standard AWS environment (AWS_ENDPOINT_URL…).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use datapack_worker::aws::{self, AwsSettings};
use datapack_worker::intake::queue::Queue;
use datapack_worker::process::event::{self, Item, Message};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, Semaphore, mpsc};

struct Args {
    queue_url: String,
    expect: u64,
    concurrency: usize,
    ranged_part: u64,
    ranged_parallelism: usize,
    hash: bool,
}

fn args() -> Args {
    let mut a = Args {
        queue_url: String::new(),
        expect: 0,
        concurrency: 16,
        ranged_part: 8 << 20,
        ranged_parallelism: 0,
        hash: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--hash" {
            a.hash = true;
            continue;
        }
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--queue-url" => a.queue_url = value,
            "--expect" => a.expect = value.parse().expect("--expect N"),
            "--concurrency" => a.concurrency = value.parse().expect("--concurrency N"),
            "--ranged-part" => a.ranged_part = value.parse().expect("--ranged-part BYTES"),
            "--ranged-parallelism" => {
                a.ranged_parallelism = value.parse().expect("--ranged-parallelism N")
            }
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!a.queue_url.is_empty(), "--queue-url is required");
    assert!(a.expect > 0, "--expect is required");
    a
}

struct Totals {
    messages: AtomicU64,
    bytes: AtomicU64,
    done: Notify,
}

/// The worker's allocator (src/main.rs), so the floor it is compared against is not made dearer
/// by glibc's malloc alone.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let args = args();
    let sdk = aws::load(&AwsSettings {
        endpoint_url: std::env::var("AWS_ENDPOINT_URL").ok(),
        ..datapack_worker::config::aws_from_env()
    })
    .await;
    let s3 = aws::s3(&sdk);
    let queue = Queue::new(
        aws::sqs(&sdk),
        args.queue_url.clone(),
        String::new(),
        Duration::from_secs(1),
        Duration::from_secs(60),
    );
    let totals = Arc::new(Totals {
        messages: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        done: Notify::new(),
    });
    let (deletes, mut delete_requests) = mpsc::channel::<String>(args.concurrency.max(10) * 2);
    let deleter = {
        let (queue, totals, expect) = (queue.clone(), totals.clone(), args.expect);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(10);
            while delete_requests.recv_many(&mut batch, 10).await > 0 {
                queue
                    .delete_batch(&batch)
                    .await
                    .expect("DeleteMessageBatch");
                let n = batch.len() as u64;
                batch.clear();
                if totals.messages.fetch_add(n, Ordering::SeqCst) + n >= expect {
                    totals.done.notify_one();
                }
            }
        })
    };
    let slots = Arc::new(Semaphore::new(args.concurrency));
    let pollers = args.concurrency.div_ceil(10).max(1);
    let ranged =
        (args.ranged_parallelism > 1).then_some((args.ranged_part, args.ranged_parallelism));
    let hash = args.hash;
    for _ in 0..pollers {
        let (queue, slots, s3, deletes, totals) = (
            queue.clone(),
            slots.clone(),
            s3.clone(),
            deletes.clone(),
            totals.clone(),
        );
        tokio::spawn(async move {
            loop {
                let mut permits = vec![slots.clone().acquire_owned().await.unwrap()];
                while permits.len() < 10 {
                    match slots.clone().try_acquire_owned() {
                        Ok(p) => permits.push(p),
                        Err(_) => break,
                    }
                }
                let messages = match queue.receive(permits.len()).await {
                    Ok(m) => m,
                    Err(e) => {
                        eprintln!("receive: {e}");
                        continue;
                    }
                };
                for message in messages {
                    let permit = permits.pop().unwrap();
                    let (s3, deletes, totals) = (s3.clone(), deletes.clone(), totals.clone());
                    tokio::spawn(async move {
                        let _permit = permit;
                        if let Ok(Message::Events(items)) = event::parse(&message.body) {
                            for item in items {
                                if let Item::Object(e) = item {
                                    let n = match ranged {
                                        None => get(&s3, &e.bucket, &e.key, None, hash).await,
                                        Some((part, par)) => {
                                            get_ranged(&s3, &e.bucket, &e.key, part, par).await
                                        }
                                    };
                                    totals.bytes.fetch_add(n, Ordering::Relaxed);
                                }
                            }
                        }
                        deletes.send(message.receipt_handle).await.unwrap();
                    });
                }
            }
        });
    }
    drop(deletes);
    totals.done.notified().await;
    let end = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    println!(
        "{{\"messages\": {}, \"bytes\": {}, \"end_epoch\": {:.6}}}",
        totals.messages.load(Ordering::SeqCst),
        totals.bytes.load(Ordering::SeqCst),
        end.as_secs_f64()
    );
    deleter.abort();
}

/// One GetObject (optionally a range), body read (and hashed with `hash`) and dropped; returns
/// the bytes read.
async fn get(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    range: Option<String>,
    hash: bool,
) -> u64 {
    let output = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .set_range(range)
        .send()
        .await
        .expect("GetObject");
    let mut body = output.body;
    let mut n = 0u64;
    let mut hasher = hash.then(Sha256::new);
    while let Some(chunk) = body.try_next().await.expect("body") {
        n += chunk.len() as u64;
        if let Some(hasher) = &mut hasher {
            hasher.update(&chunk);
        }
    }
    if let Some(hasher) = hasher {
        std::hint::black_box(hasher.finalize());
    }
    n
}

/// The first part tells the size; the rest in parallel, `parallelism` at once, discarded.
async fn get_ranged(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    part: u64,
    parallelism: usize,
) -> u64 {
    let first = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .range(format!("bytes=0-{}", part - 1))
        .send()
        .await
        .expect("GetObject");
    let total: u64 = first
        .content_range()
        .and_then(|r| r.rsplit('/').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let mut body = first.body;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move {
        let mut n = 0u64;
        while let Some(chunk) = body.try_next().await.expect("body") {
            n += chunk.len() as u64;
        }
        n
    });
    // The first part counts as one of the `parallelism` GETs in flight.
    let limit = Arc::new(Semaphore::new(parallelism.saturating_sub(1).max(1)));
    let mut start = part;
    while start < total {
        let end = (start + part).min(total) - 1;
        let permit = limit.clone().acquire_owned().await.unwrap();
        let (s3, bucket, key) = (s3.clone(), bucket.to_owned(), key.to_owned());
        tasks.spawn(async move {
            let _permit = permit;
            get(
                &s3,
                &bucket,
                &key,
                Some(format!("bytes={start}-{end}")),
                false,
            )
            .await
        });
        start = end + 1;
    }
    let mut n = 0u64;
    while let Some(r) = tasks.join_next().await {
        n += r.unwrap();
    }
    n
}
