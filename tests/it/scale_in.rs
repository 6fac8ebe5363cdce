//! Scale-in: a replica stopped while uploads keep arriving strands none of them (its long polls in
//! flight finish and what they return is handed back at once), and the start-up warning about a
//! queue that would dead-letter before the worker does.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::{Launch, setup, wait_until};

/// Messages a stopped replica handed back, from its `handed_back=N` log lines.
fn handed_back(log: &str) -> u64 {
    log.lines()
        .filter_map(|line| line.split("handed_back=").nth(1))
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .sum()
}

/// Three real replicas on one queue with the production poll window (20 s) and visibility
/// timeout (60 s). One is stopped (SIGTERM) while uploads keep arriving: every upload is
/// recorded within seconds by the others, far below the visibility timeout a stranded message
/// would wait. Prints the measured figures.
#[tokio::test(flavor = "multi_thread")]
async fn stopping_one_of_three_replicas_strands_no_upload() {
    let (stack, db) = setup("dp-1").await;
    // The product's defaults for what matters here: a 20 s poll window, 60 s visibility (the
    // queue's and the worker's), and a 25 s grace, which covers the poll window plus its slack.
    let flags = ["--sqs-wait-time-secs", "20", "--shutdown-grace-secs", "25"];
    let info = [("RUST_LOG", "warn,datapack_worker::intake=info")];
    let mut leaving = Launch::new(&stack, &db, &flags)
        .binary_keeping_log(&info)
        .await;
    let _stay_a = Launch::new(&stack, &db, &flags).binary().await;
    let _stay_b = Launch::new(&stack, &db, &flags).binary().await;
    for worker in [&leaving.http, &_stay_a.http, &_stay_b.http] {
        wait_until("a replica to be ready", Duration::from_secs(30), || async {
            (worker.status("/readyz").await == Some(200)).then_some(())
        })
        .await;
    }

    // Uploads every 200 ms for 12 s; the replica is stopped 3 s in, while its pollers wait in
    // their long polls. Rows are looked for between uploads, so each is stamped when it appears
    // (to within one round).
    let uploads = 60;
    let mut uploaded: HashMap<String, Instant> = HashMap::new();
    let mut recorded: HashMap<String, Instant> = HashMap::new();
    let stamp = |recorded: &mut HashMap<String, Instant>, rows: Vec<String>| {
        let now = Instant::now();
        for key in rows {
            recorded.entry(key).or_insert(now);
        }
    };
    let keys = || async { db.rows().await.into_iter().map(|r| r.object_key).collect() };
    let mut signalled = None;
    let mut exited_at = None;
    let mut exited = |leaving: &mut crate::support::BinaryWorker| {
        if exited_at.is_none() && leaving.child.try_wait().unwrap().is_some() {
            exited_at = Some(Instant::now());
        }
    };
    for i in 0..uploads {
        if i == 15 {
            leaving.signal("TERM");
            signalled = Some(Instant::now());
        }
        let key = format!("dp-1/scale-in/{i:03}.txt");
        stack.put(&key, format!("upload {i}").as_bytes()).await;
        uploaded.insert(key, Instant::now());
        // Pacing the uploads, not waiting for anything.
        tokio::time::sleep(Duration::from_millis(150)).await;
        stamp(&mut recorded, keys().await);
        exited(&mut leaving);
    }
    let signalled = signalled.expect("signalled");
    let deadline = Instant::now() + Duration::from_secs(50);
    while recorded.len() < uploads {
        assert!(
            Instant::now() < deadline,
            "only {} of {uploads} uploads recorded",
            recorded.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        stamp(&mut recorded, keys().await);
        exited(&mut leaving);
    }
    let status = leaving.wait(Duration::from_secs(40)).await;
    let exited = exited_at.map_or_else(|| signalled.elapsed(), |at| at - signalled);
    assert!(
        status.success(),
        "the stopped replica exits cleanly: {status:?}"
    );

    let mut delays: Vec<(Duration, &str)> = uploaded
        .iter()
        .map(|(key, at)| (recorded[key].saturating_duration_since(*at), key.as_str()))
        .collect();
    delays.sort();
    let (worst, worst_key) = delays[delays.len() - 1];
    let log = leaving.log();
    let released = handed_back(&log);
    let stop_line = log
        .lines()
        .find(|l| l.contains("worker stopped"))
        .unwrap_or("-");
    println!(
        "scale-in: {uploads} uploads, median upload-to-row {:?}, worst {worst:?} ({worst_key}); \
         SIGTERM to exit {exited:?}; \
         handed back by drained polls: {released}; {stop_line}",
        delays[delays.len() / 2].0
    );
    assert!(
        worst < Duration::from_secs(10),
        "an upload waited {worst:?} ({worst_key}): stranded for a visibility timeout?"
    );
    assert_eq!(db.count().await, uploads as i64, "one row each");
    stack.wait_drained(Duration::from_secs(30)).await;
    assert_eq!(stack.dlq_depth().await, (0, 0), "nothing dead-lettered");
}

/// A queue whose redrive policy moves a message after 10 receives, with MAX_ATTEMPTS 10: the
/// worker says at start, with both numbers, that SQS can dead-letter without a reason first.
#[tokio::test(flavor = "multi_thread")]
async fn warns_at_start_when_max_receive_count_leaves_no_room() {
    let (stack, db) = setup("dp-1").await;
    stack.set_max_receive_count(10).await;
    let worker = Launch::new(&stack, &db, &["--max-attempts", "10"])
        .binary_keeping_log(&[("RUST_LOG", "warn")])
        .await;
    let line = wait_until(
        "the maxReceiveCount warning",
        Duration::from_secs(30),
        || async {
            worker
                .log()
                .lines()
                .find(|l| l.contains("maxReceiveCount"))
                .map(str::to_owned)
        },
    )
    .await;
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("max_receive_count=10") && line.contains("max_attempts=10"),
        "both numbers as fields: {line}"
    );
    assert!(
        line.contains("at least 15") && line.contains("shutdowns"),
        "says what to set and why: {line}"
    );
}
