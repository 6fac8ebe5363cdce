//! What an operator sees: exact metric values for a known workload, the health endpoints, JSON
//! logs, and a real Prometheus scraping the real binary.
//!
//! Exact values need a process of their own: in-process workers share one global recorder
//! with every other test of this binary, so these tests run the real binary.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::listen::{self, Lines};
use crate::support::scrape::{metric, samples, sum};
use crate::support::stack::s3_event;
use crate::support::worker::get;
use crate::support::{BinaryWorker, Launch, setup, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);
const TEST_EVENT: &str = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2024-05-01T10:00:00.000Z","Bucket":"x"}"#;

/// A temporary directory removed on drop (no tempfile crate in the dev-dependencies).
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "dpw-{what}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (and reaped) on drop, even when an assertion fails first.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Finds a Prometheus tool. Absent outside CI: skip loudly. In CI (env CI set) it must exist.
fn tool(name: &str) -> Option<PathBuf> {
    // check.sh honours PROMTOOL=path; so do we (and PROMETHEUS=path).
    if let Some(path) = std::env::var_os(name.to_uppercase()) {
        return Some(path.into());
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is required in CI (Debian package `prometheus`; deploy/observability/check.sh installs it)"
        );
        eprintln!(
            "\n!!!!!!!! SKIPPING: {name} not found (install Debian package `prometheus`); \
             this check runs in CI !!!!!!!!\n"
        );
    }
    found
}

fn sum_of(scrape: &str, name: &str) -> f64 {
    sum(scrape, name, "")
}

/// `promtool check metrics` on a scrape (its lint: names, units, suffixes, help text).
fn promtool_check(scrape: &str) {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let dir = TempDir::new("scrape");
    let file = dir.0.join("metrics.prom");
    std::fs::write(&file, scrape).unwrap();
    let output = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exact_counters_for_every_outcome() {
    let (stack, db) = setup("dp-1").await;
    let mut keys = vec![];
    let mut etags = vec![];

    // duplicate: one upload's event, delivered twice (the first records, the second is a duplicate).
    let dup = b"duplicate bytes".to_vec();
    etags.push(stack.put("dp-1/dup.txt", &dup).await);
    keys.push("dp-1/dup.txt");
    let dup_event = stack.take().await.pop().expect("the upload's event");
    stack.send(&dup_event).await;
    stack.send(&dup_event).await;

    // recorded: three plain uploads, one large enough to arrive in several chunks.
    let recorded: [(&str, Vec<u8>); 3] = [
        ("dp-1/a.txt", b"alpha".to_vec()),
        ("dp-1/b.bin", vec![7u8; 300_000]),
        ("dp-1/c d.txt", b"charlie with a space".to_vec()),
    ];
    for (key, body) in &recorded {
        etags.push(stack.put(key, body).await);
        keys.push(key);
    }

    // superseded: overwritten before the worker starts; If-Match on the first ETag gets 412.
    let second = b"second version, longer".to_vec();
    etags.push(stack.put("dp-1/over.txt", b"first version").await);
    etags.push(stack.put("dp-1/over.txt", &second).await);
    keys.push("dp-1/over.txt");

    // skipped: not presigned, folder placeholder, a test event, a foreign bucket, an ignored type.
    etags.push(stack.put_with("dp-1/direct.txt", b"direct", None).await);
    keys.push("dp-1/direct.txt");
    stack.put("dp-1/folder/", b"").await;
    keys.push("dp-1/folder/");
    stack.send(TEST_EVENT).await;
    let foreign_etag = "0123456789abcdef0123456789abcdef";
    stack
        .send(&s3_event(
            "ObjectCreated:Put",
            "someone-elses-bucket",
            "dp-1/foreign.txt",
            Some(foreign_etag),
            None,
            "2024-05-01T10:00:00.000Z",
        ))
        .await;
    keys.push("dp-1/foreign.txt");
    stack
        .send(&s3_event(
            "ObjectRestore:Completed",
            &stack.bucket,
            "dp-1/a.txt",
            None,
            None,
            "2024-05-01T10:00:00.000Z",
        ))
        .await;

    // object_gone + removed: deleted before the worker starts; the create finds 404, the
    // removal records a tombstone.
    etags.push(stack.put("dp-1/gone.txt", b"short-lived").await);
    stack.delete("dp-1/gone.txt").await;
    keys.push("dp-1/gone.txt");

    // dead-lettered: an unknown datapack (fetched and hashed, then refused) and a malformed body.
    let orphan = b"orphan bytes".to_vec();
    etags.push(stack.put("dp-missing/orphan.txt", &orphan).await);
    keys.push("dp-missing/orphan.txt");
    stack.send("this is not json").await;

    let phase_one = 16.0;
    let worker = BinaryWorker::spawn(&stack, &db, &[]).await;
    wait_until("16 settled messages", DEADLINE, || async {
        let s = worker.http.try_scrape().await?;
        (sum_of(&s, "datapack_worker_messages_total") >= phase_one).then_some(())
    })
    .await;

    // removed, the live way: a recorded object deleted while the worker runs.
    stack.delete("dp-1/a.txt").await;
    wait_until("17 settled messages", DEADLINE, || async {
        let s = worker.http.scrape().await;
        (sum_of(&s, "datapack_worker_messages_total") >= phase_one + 1.0).then_some(())
    })
    .await;
    stack.wait_drained(DEADLINE).await;
    // The sampler runs every second; once it has seen the empty queue the age is 0.
    let s = wait_until("the oldest-age gauge back to 0", DEADLINE, || async {
        let s = worker.http.scrape().await;
        let sampled =
            s.contains("datapack_worker_queue_oldest_message_age_seconds{queue=\"main\"}");
        (sampled
            && metric(
                &s,
                "datapack_worker_queue_oldest_message_age_seconds{queue=\"main\"}",
            ) == 0.0)
            .then_some(s)
    })
    .await;

    let expect = |series: &str, want: f64| {
        assert_eq!(metric(&s, series), want, "{series}\n--- scrape ---\n{s}");
    };
    expect("datapack_worker_messages_received_total", 17.0);
    expect("datapack_worker_messages_total{disposition=\"ack\"}", 15.0);
    expect(
        "datapack_worker_messages_total{disposition=\"dead_letter\"}",
        2.0,
    );
    assert_eq!(sum_of(&s, "datapack_worker_messages_total"), 17.0, "{s}");
    let records = [
        ("recorded", "none", 5.0),
        ("duplicate", "none", 1.0),
        ("superseded", "none", 1.0),
        ("object_gone", "none", 1.0),
        ("removed", "none", 2.0),
        ("skipped", "not_presigned", 1.0),
        ("skipped", "test_event", 1.0),
        ("skipped", "folder_placeholder", 1.0),
        ("skipped", "foreign_bucket", 1.0),
        ("skipped", "unsupported_event", 1.0),
        ("dead_lettered", "unknown_datapack", 1.0),
        ("dead_lettered", "malformed_message", 1.0),
    ];
    for (outcome, reason, want) in records {
        expect(
            &format!("datapack_worker_records_total{{outcome=\"{outcome}\",reason=\"{reason}\"}}"),
            want,
        );
    }
    assert_eq!(
        sum_of(&s, "datapack_worker_records_total"),
        records.iter().map(|r| r.2).sum::<f64>(),
        "no other outcome: {s}"
    );
    expect(
        "datapack_worker_dead_letters_total{reason=\"unknown_datapack\"}",
        1.0,
    );
    expect(
        "datapack_worker_dead_letters_total{reason=\"malformed_message\"}",
        1.0,
    );
    assert_eq!(sum_of(&s, "datapack_worker_dead_letters_total"), 2.0);

    // Hashed: every body read in full. The three uploads, the duplicate twice (each delivery is
    // fetched and hashed before the write finds the row), the newer overwrite, and the orphan
    // (hashed, then refused by the database). Not hashed: the superseded first version (412),
    // the unpresigned upload (refused on its metadata, body unread), the gone object (404).
    let hashed = recorded.iter().map(|(_, b)| b.len()).sum::<usize>()
        + 2 * dup.len()
        + second.len()
        + orphan.len();
    expect("datapack_worker_hashed_bytes_total", hashed as f64);
    expect("datapack_worker_object_size_bytes_count", 7.0);
    expect("datapack_worker_object_size_bytes_sum", hashed as f64);
    // Every message that parsed to events (all but the test event and the malformed body).
    expect("datapack_worker_records_per_message_count", 15.0);
    expect("datapack_worker_records_per_message_sum", 15.0);
    // Fetches: creates that reached S3 (not the folder, foreign or restore events).
    expect(
        "datapack_worker_phase_seconds_count{phase=\"fetch_hash\"}",
        10.0,
    );
    assert!(
        metric(
            &s,
            "datapack_worker_phase_seconds_count{phase=\"db_write\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &s,
            "datapack_worker_phase_seconds_count{phase=\"sqs_delete\"}"
        ) >= 1.0
    );
    // Lag to commit: recorded and removed records.
    expect("datapack_worker_event_to_commit_seconds_count", 7.0);
    expect("datapack_worker_queue_wait_seconds_count", 17.0);
    expect("datapack_worker_object_processing_seconds_count", 17.0);
    assert!(metric(&s, "datapack_worker_db_commits_total") > 0.0);
    assert!(metric(&s, "datapack_worker_receives_total") >= 1.0);
    assert!(
        metric(&s, "datapack_worker_empty_receives_total")
            < metric(&s, "datapack_worker_receives_total")
    );
    expect("datapack_worker_worker_concurrency", 16.0);
    expect("datapack_worker_workers_busy", 0.0);
    expect("datapack_worker_in_flight_messages", 0.0);
    expect("datapack_worker_paused", 0.0);
    for dependency in ["postgres", "s3", "sqs"] {
        expect(
            &format!("datapack_worker_dependency_up{{dependency=\"{dependency}\"}}"),
            1.0,
        );
        // Start-up counts as paused until each dependency is proven: a small, non-zero figure.
        let paused = metric(
            &s,
            &format!("datapack_worker_paused_seconds_total{{dependency=\"{dependency}\"}}"),
        );
        assert!(
            paused > 0.0 && paused < 30.0,
            "{dependency} paused {paused}"
        );
    }
    for state in ["visible", "in_flight", "delayed"] {
        assert!(s.contains(&format!(
            "datapack_worker_queue_messages{{queue=\"dead_letter\",state=\"{state}\"}}"
        )));
    }
    // Every AWS request the worker sent is counted, by operation and outcome.
    for (service, operation) in [
        ("s3", "GetObject"),
        ("sqs", "ReceiveMessage"),
        ("sqs", "DeleteMessageBatch"),
    ] {
        let sent = metric(
            &s,
            &format!(
                "datapack_worker_aws_requests_total{{service=\"{service}\",\
                 operation=\"{operation}\",outcome=\"ok\"}}"
            ),
        );
        assert!(
            sent >= 1.0,
            "{service} {operation}: {sent} requests counted"
        );
    }
    let build = samples(&s)
        .into_iter()
        .find(|x| x.name == "datapack_worker_build_info")
        .expect("build_info");
    assert_eq!(build.value, 1.0);
    assert_eq!(build.labels["version"], env!("CARGO_PKG_VERSION"));
    let commit = &build.labels["git_commit"];
    // build.rs stamps the short hash when the build had git; a source tarball says "unknown".
    let had_git = Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .output()
        .is_ok_and(|o| o.status.success());
    if had_git {
        assert!(
            commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit()),
            "git commit from build.rs: {commit:?}"
        );
    } else {
        assert_eq!(commit, "unknown");
    }

    // No label carries a key, an ETag, a bucket or a message id.
    let letters = stack.take_dead_letters().await;
    assert_eq!(letters.len(), 2);
    let message_ids: Vec<String> = letters
        .iter()
        .map(|(_, a)| a["source_message_id"].clone())
        .collect();
    let allowed_labels: HashSet<&str> = [
        "outcome",
        "reason",
        "disposition",
        "dependency",
        "phase",
        "queue",
        "state",
        "version",
        "git_commit",
        "le",
        "result",
        // datapack_worker_aws_requests_total: closed sets of the SDK's service and operation names.
        "service",
        "operation",
    ]
    .into();
    for sample in samples(&s) {
        for (name, value) in &sample.labels {
            assert!(
                allowed_labels.contains(name.as_str()),
                "unexpected label {name} on {sample:?}"
            );
            let leaks = keys.iter().any(|k| value.contains(k))
                || etags
                    .iter()
                    .chain([&foreign_etag.to_owned()])
                    .any(|e| value.contains(e.as_str()))
                || message_ids.iter().any(|m| value.contains(m.as_str()))
                || value.contains(&stack.bucket)
                || crate::support::looks_like_uuid(value);
            assert!(!leaks, "label {name}={value:?} leaks an identifier");
        }
    }

    promtool_check(&s);
    // For deploy/observability/check.sh: METRICS_FILE=<this> checks dashboard names against it.
    if let Some(path) = std::env::var_os("DPW_SCRAPE_OUT") {
        std::fs::write(path, &s).unwrap();
    }
    println!(
        "exact counters: received 17, ack 15, dead_letter 2, recorded 5, removed 2, hashed {hashed} bytes"
    );
    drop(worker);
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_follows_dependencies_and_shutdown() {
    let (stack, db) = setup("dp-1").await;
    // A second bucket the worker must serve, not created yet: the S3 probe fails until it is.
    let late = format!("late-{:x}", fastrand::u64(..));
    // The flag replaces base_args' bucket list, so name both.
    let buckets = format!("{},{late}", stack.bucket);
    let mut worker = BinaryWorker::spawn(&stack, &db, &["--s3-bucket", &buckets]).await;
    let base = worker.http.url("");

    let healthz = || async { get(&format!("{base}/healthz")).await.map(|r| r.0) };
    wait_until("/healthz to answer", DEADLINE, || async {
        (healthz().await == Some(200)).then_some(())
    })
    .await;
    let (status, body) = get(&format!("{base}/readyz")).await.unwrap();
    assert_eq!(status, 503, "not ready before S3 is proven: {body}");
    assert!(body.contains("s3"), "{body}");
    let s = worker.http.scrape().await;
    assert_eq!(
        metric(&s, "datapack_worker_dependency_up{dependency=\"s3\"}"),
        0.0
    );
    assert_eq!(metric(&s, "datapack_worker_paused"), 1.0);
    // Paused time grows during the outage, not only once it ends.
    let paused = |s: &str| metric(s, "datapack_worker_paused_seconds_total{dependency=\"s3\"}");
    let before = paused(&s);
    wait_until(
        "paused seconds to grow while S3 is down",
        DEADLINE,
        || async { (paused(&worker.http.scrape().await) > before).then_some(()) },
    )
    .await;

    stack.s3.create_bucket().bucket(&late).send().await.unwrap();
    wait_until("/readyz 200 once S3 answers", DEADLINE, || async {
        (get(&format!("{base}/readyz")).await.map(|r| r.0) == Some(200)).then_some(())
    })
    .await;
    assert_eq!(healthz().await, Some(200));
    let s = worker.http.scrape().await;
    assert_eq!(metric(&s, "datapack_worker_paused"), 0.0);
    assert_eq!(
        metric(&s, "datapack_worker_dependency_up{dependency=\"s3\"}"),
        1.0
    );

    // Hold one message in flight (its write waits on a table lock) so the process outlives
    // SIGTERM long enough to be asked.
    let lock = db.lock_resources().await;
    stack.put("dp-1/held.txt", b"held").await;
    db.wait_for_blocked_write(DEADLINE).await;
    assert!(
        metric(
            &worker.http.scrape().await,
            "datapack_worker_in_flight_messages"
        ) >= 1.0
    );
    worker.signal("TERM");
    let (_, body) = wait_until("/readyz 503 after SIGTERM", DEADLINE, || async {
        get(&format!("{base}/readyz")).await.filter(|r| r.0 == 503)
    })
    .await;
    assert!(body.contains("shutting down"), "{body}");
    assert_eq!(healthz().await, Some(200), "alive while draining");
    lock.commit().await.unwrap();
    let status = worker.wait(Duration::from_secs(30)).await;
    assert!(status.success(), "clean exit after draining: {status}");
    assert_eq!(db.count().await, 1, "the in-flight message was finished");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_the_message_id_and_log_each_failure_once() {
    let (stack, db) = setup("dp-1").await;
    let mut worker = Launch::new(&stack, &db, &[])
        .binary_keeping_log(&[("LOG_FORMAT", "json"), ("RUST_LOG", "info")])
        .await;

    stack.put("dp-1/logged.txt", b"logged").await;
    stack.put("dp-missing/refused.txt", b"refused").await;
    wait_until("one row and one dead letter", DEADLINE, || async {
        (db.count().await == 1 && stack.dlq_depth().await.0 == 1).then_some(())
    })
    .await;
    stack.wait_drained(DEADLINE).await;
    worker.signal("TERM");
    let exited = worker.wait(DEADLINE).await;
    assert!(exited.success());

    let text = worker.log();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty());
    let message = |v: &serde_json::Value| v["fields"]["message"].as_str().unwrap_or("").to_owned();
    let done = lines
        .iter()
        .find(|v| message(v) == "record done" && v["fields"]["outcome"] == "recorded")
        .unwrap_or_else(|| panic!("no `record done` line:\n{text}"));
    let message_id = done["span"]["message_id"]
        .as_str()
        .or_else(|| {
            done["spans"]
                .as_array()?
                .iter()
                .find_map(|s| s["message_id"].as_str())
        })
        .unwrap_or_else(|| panic!("no message_id on {done}"));
    assert!(crate::support::looks_like_uuid(message_id), "{message_id}");
    // The refused upload: one warning with the cause, from the deciding place, nowhere else.
    let refusals: Vec<_> = lines
        .iter()
        .filter(|v| v.to_string().contains("unknown_datapack"))
        .filter(|v| v["level"] == "WARN" || v["level"] == "ERROR")
        .collect();
    assert_eq!(refusals.len(), 1, "logged once: {refusals:#?}");
    assert_eq!(message(refusals[0]), "record failed");
    assert!(
        refusals[0]["fields"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_worker() {
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    let (stack, db) = setup("dp-1").await;
    let worker = BinaryWorker::spawn(&stack, &db, &[]).await;
    let dir = TempDir::new("prometheus");
    let config = dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: datapack-worker\n    scrape_interval: 1s\n    \
             scrape_timeout: 1s\n    static_configs:\n      - targets: [\"{}\"]\n",
            worker.http.addr
        ),
    )
    .unwrap();
    let (server, addr) = start_prometheus(&prometheus, &config, &dir.0).await;
    let api = format!("http://{addr}/api/v1");

    let targets = wait_until("the worker target up in Prometheus", DEADLINE, || async {
        let (_, body) = get(&format!("{api}/targets")).await?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let targets = v["data"]["activeTargets"].as_array()?.clone();
        targets
            .iter()
            .any(|t| t["health"] == "up" && t["labels"]["job"] == "datapack-worker")
            .then_some(targets)
    })
    .await;
    assert_eq!(targets.len(), 1, "{targets:?}");

    // A counter's first sample carries no increase: let Prometheus see the series once, then
    // upload more, so rate() has an increase to show.
    stack.put("dp-1/prom/first.txt", b"first").await;
    wait_until("the first record in Prometheus", DEADLINE, || async {
        let v = prom_query(&api, "datapack_worker_records_total{outcome=\"recorded\"}").await?;
        (v >= 1.0).then_some(())
    })
    .await;
    for i in 0..3 {
        stack
            .put(
                &format!("dp-1/prom/{i}.txt"),
                format!("object {i}").as_bytes(),
            )
            .await;
    }
    wait_until("4 rows", DEADLINE, || async {
        (db.count().await == 4).then_some(())
    })
    .await;
    let query = "sum(rate(datapack_worker_records_total{outcome=\"recorded\"}[30s]))";
    let rate = wait_until("a non-zero record rate in Prometheus", DEADLINE, || async {
        prom_query(&api, query).await.filter(|v| *v > 0.0)
    })
    .await;
    println!("prometheus: {query} = {rate}");
    drop(server);
    drop(worker);
}

/// The first value of an instant query; asserts the API answers `success`.
async fn prom_query(api: &str, query: &str) -> Option<f64> {
    let url = reqwest::Url::parse_with_params(&format!("{api}/query"), [("query", query)]).unwrap();
    let (_, body) = get(url.as_str()).await?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    assert_eq!(v["status"], "success", "{query}: {body}");
    v["data"]["result"].as_array()?.first()?["value"][1]
        .as_str()?
        .parse()
        .ok()
}

/// Prometheus on a port it picks, and the address it says it listens on.
async fn start_prometheus(binary: &Path, config: &Path, dir: &Path) -> (Killed, SocketAddr) {
    let mut child = Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start prometheus");
    let stderr = child.stderr.take().unwrap();
    let server = Killed(child);
    // Its start-up line names the bound address (`msg="Listening on" address=127.0.0.1:PORT`);
    // an earlier line names the configured one.
    let listening = |line: &str| {
        line.contains("msg=\"Listening on\"")
            .then(|| listen::after(line, "address="))
            .flatten()
    };
    let (addr, _) = listen::follow(stderr, listening, Lines::Discard)
        .wait_async("prometheus")
        .await;
    (server, addr)
}
