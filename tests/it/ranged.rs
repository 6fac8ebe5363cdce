//! Large objects read as parallel ranged GETs: the same hash as one GET, an overwrite in the
//! middle of the parts ends as Superseded, never as a row mixing two uploads, and the adaptive
//! default reads one GET unless that stream is slow and parts prove faster.

use std::time::Duration;

use datapack_worker::process::fetch::{self, Fetched, Ranged, Target};

use crate::support::db::sha256_hex;
use crate::support::emulator;
use crate::support::s3_proxy::{Action, Match, Rule, S3Proxy};
use crate::support::{Moto, Stack, TestWorker, setup};

const MIB: usize = 1 << 20;

/// ~40 MiB that differ in every part, with a length that is not a multiple of any part size.
fn body(seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut bytes = vec![0u8; 40 * MIB + 12_345];
    rng.fill(&mut bytes);
    bytes
}

/// A stack of its own holding [`body`]`(seed)` as `key`: the stack, the bytes and their ETag.
async fn uploaded(seed: u64, key: &str) -> (Stack, Vec<u8>, String) {
    let stack = Stack::new(&Moto::shared().endpoint).await;
    let bytes = body(seed);
    let etag = stack.put(key, &bytes).await;
    (stack, bytes, etag)
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_records_a_large_object_read_in_parts() {
    let (stack, db) = setup("dp-1").await;
    let bytes = body(1);
    stack.put("dp-1/big/ranged.bin", &bytes).await;
    let worker = TestWorker::spawn(
        &stack,
        &db,
        &[
            "--ranged-get-threshold-bytes",
            "1048576",
            "--ranged-get-part-bytes",
            "3145728",
            "--ranged-get-parallelism",
            "3",
        ],
    )
    .await;
    db.wait_rows(1, Duration::from_secs(120)).await;
    worker.stop().await;
    let rows = db.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].sha256, sha256_hex(&bytes));
    assert_eq!(rows[0].length, bytes.len() as i64);
}

#[tokio::test(flavor = "multi_thread")]
async fn ranged_fetch_hashes_the_same_bytes_as_one_get() {
    let key = "dp-1/big/direct.bin";
    let (stack, bytes, etag) = uploaded(2, key).await;
    let target = Target {
        bucket: &stack.bucket,
        key,
        etag: Some(&etag),
        version_id: None,
        size: Some(bytes.len() as u64),
    };
    // Odd part sizes so the last part is short; parallelism 1 is a single GET.
    for ranged in [
        Ranged::new(MIB as u64, 5 * MIB as u64 + 7, 4),
        Ranged::new(MIB as u64, 2 * MIB as u64 + 1, 2),
        Ranged::off(),
    ] {
        let Fetched::Object(facts) = fetch::fetch(&stack.s3, target, None, &ranged)
            .await
            .unwrap()
        else {
            panic!("expected the object with {ranged:?}");
        };
        assert_eq!(facts.sha256, sha256_hex(&bytes), "{ranged:?}");
        assert_eq!(facts.length, bytes.len() as u64);
        assert_eq!(facts.etag, etag);
    }
    // An event announcing a large size for an empty object: S3 refuses the range (416), the
    // fetch falls back to one GET.
    let empty_etag = stack.put("dp-1/big/empty.bin", b"").await;
    let fetched = fetch::fetch(
        &stack.s3,
        Target {
            key: "dp-1/big/empty.bin",
            etag: Some(&empty_etag),
            ..target
        },
        None,
        &Ranged::new(1, MIB as u64, 4),
    )
    .await
    .unwrap();
    assert!(matches!(fetched, Fetched::Object(f) if f.length == 0 && f.sha256 == sha256_hex(b"")));
}

#[tokio::test(flavor = "multi_thread")]
async fn overwrite_between_parts_is_superseded() {
    let key = "dp-1/big/overwritten.bin";
    let (stack, bytes, etag) = uploaded(3, key).await;
    let (bucket, size) = (stack.bucket.clone(), bytes.len() as u64);
    let s3 = stack.s3.clone();
    let fetch = tokio::spawn(async move {
        // 160 small parts: the first one is answered long before the overwrite below lands.
        let ranged = Ranged::new(1, 256 * 1024, 2);
        let target = Target {
            bucket: &bucket,
            key,
            etag: Some(&etag),
            version_id: None,
            size: Some(size),
        };
        fetch::fetch(&s3, target, None, &ranged).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut other = bytes.clone();
    other[0] ^= 1;
    stack.put(key, &other).await;
    // Whether the overwrite lands before the first GET or between parts, the answer is the same:
    // these bytes are no longer the announced upload.
    assert_eq!(fetch.await.unwrap().unwrap(), Fetched::Superseded);
}

/// Fetches `key` (announced as `size` bytes) through `proxy` with `ranged`: the facts, how long
/// it took, and the GETs the proxy saw for it (whether each asked for a range).
async fn fetch_via(
    proxy: &S3Proxy,
    bucket: &str,
    key: &str,
    etag: &str,
    size: usize,
    ranged: &Ranged,
) -> (fetch::Facts, Duration, Vec<bool>) {
    let s3 = datapack_worker::aws::s3(&emulator::sdk_config(&proxy.endpoint()));
    let target = Target {
        bucket,
        key,
        etag: Some(etag),
        version_id: None,
        size: Some(size as u64),
    };
    let started = std::time::Instant::now();
    let Fetched::Object(facts) = fetch::fetch(&s3, target, None, ranged).await.unwrap() else {
        panic!("expected the object");
    };
    let elapsed = started.elapsed();
    let gets = proxy
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.key.as_deref() == Some(key))
        .map(|s| s.ranged)
        .collect();
    (facts, elapsed, gets)
}

/// Adaptive reading on a server that streams fast (moto, which re-reads the whole object for
/// every range): one GET, no range, whatever the size.
#[tokio::test(flavor = "multi_thread")]
async fn adaptive_reads_a_fast_stream_as_one_get() {
    let key = "dp-1/big/adaptive-fast.bin";
    let (stack, bytes, etag) = uploaded(4, key).await;
    let proxy = S3Proxy::start(Moto::shared().addr).await;
    // A floor far below any loopback stream: the probation always passes.
    let ranged = Ranged::new(MIB as u64, 4 * MIB as u64, 4).adaptive(MIB as u64);
    let (facts, _, gets) = fetch_via(&proxy, &stack.bucket, key, &etag, bytes.len(), &ranged).await;
    assert_eq!(facts.sha256, sha256_hex(&bytes));
    assert_eq!(facts.length, bytes.len() as u64);
    assert_eq!(gets, [false], "one plain GET");
}

/// A server that caps each connection (as S3 does): the slow stream hands the rest of the
/// object over to parallel parts, which prove faster, and the bytes hash the same.
#[tokio::test(flavor = "multi_thread")]
async fn adaptive_moves_a_capped_stream_to_parallel_parts() {
    let key = "dp-1/big/adaptive-capped.bin";
    let (stack, bytes, etag) = uploaded(5, key).await;
    let proxy = S3Proxy::start(Moto::shared().addr).await;
    proxy.add(Rule::new(Match::get(key), Action::Throttle(4 * MIB as u64)));
    let ranged = Ranged::new(MIB as u64, 2 * MIB as u64, 4).adaptive(64 * MIB as u64);
    let (facts, elapsed, gets) =
        fetch_via(&proxy, &stack.bucket, key, &etag, bytes.len(), &ranged).await;
    assert_eq!(facts.sha256, sha256_hex(&bytes));
    assert_eq!(facts.length, bytes.len() as u64);
    assert_eq!(
        gets.first(),
        Some(&false),
        "the first GET is the whole object"
    );
    let parts = gets.iter().filter(|r| **r).count();
    // 40 MiB from 6 MiB on, in 2 MiB parts.
    assert!(parts >= 17, "the rest in parts: {gets:?}");
    println!(
        "40 MiB at 4 MiB/s per connection: {elapsed:?} adaptive (one stream alone: ~10 s), {parts} parts"
    );
}

/// When the parts are no faster than the slow stream (here: they never answer), the stream is
/// not abandoned: the object is read by the one GET, in the time that GET takes.
#[tokio::test(flavor = "multi_thread")]
async fn adaptive_keeps_the_stream_when_parts_are_no_faster() {
    let key = "dp-1/big/adaptive-slow-parts.bin";
    let (stack, bytes, etag) = uploaded(6, key).await;
    let proxy = S3Proxy::start(Moto::shared().addr).await;
    proxy.add(Rule::new(
        Match {
            ranged: Some(false),
            ..Match::get(key)
        },
        Action::Throttle(16 * MIB as u64),
    ));
    proxy.add(Rule::new(
        Match {
            ranged: Some(true),
            ..Match::get(key)
        },
        Action::Delay(Duration::from_secs(60)),
    ));
    let ranged = Ranged::new(MIB as u64, 2 * MIB as u64, 4).adaptive(64 * MIB as u64);
    let (facts, elapsed, gets) =
        fetch_via(&proxy, &stack.bucket, key, &etag, bytes.len(), &ranged).await;
    assert_eq!(facts.sha256, sha256_hex(&bytes));
    assert_eq!(gets.first(), Some(&false));
    assert!(gets.iter().any(|r| *r), "parts were tried: {gets:?}");
    assert!(
        elapsed < Duration::from_secs(30),
        "the stream went on without waiting for the parts: {elapsed:?}"
    );
}
