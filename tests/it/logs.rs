//! docs/operating.md's claims about logs (colour, spans) and the pool gauges, checked on what the
//! real binary writes to its stderr and serves on `/metrics`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::proxy::Proxy;
use crate::support::scrape::metric;
use crate::support::{Launch, Moto, setup, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn text_logs_on_a_pipe_have_no_colour_and_name_the_object() {
    let (stack, db) = setup("dp-1").await;
    let worker = Launch::new(&stack, &db, &[])
        .binary_keeping_log(&[("RUST_LOG", "info")])
        .await;
    let key = "dp-1/logs/plain.txt";
    let etag = stack.put(key, b"plain text logs").await;
    let done = wait_until("a `record done` line", DEADLINE, || {
        let line = worker
            .log()
            .lines()
            .find(|l| l.contains("record done"))
            .map(str::to_owned);
        async move { line }
    })
    .await;
    let log = worker.stop(DEADLINE).await;
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() > 3, "{lines:#?}");
    let coloured: Vec<_> = lines.iter().filter(|l| l.contains('\x1b')).collect();
    assert!(coloured.is_empty(), "escapes on a pipe: {coloured:#?}");
    // message{message_id=… receive_count=1}:record{bucket=… key=… etag="…"}: … record done
    for part in [
        "message{message_id=",
        &format!(
            "record{{bucket={} key={key} etag=\"{etag}\"}}",
            stack.bucket
        ),
        "outcome=\"recorded\"",
    ] {
        assert!(done.contains(part), "{part:?} not in {done:?}");
    }
}

/// What the binary writes to a terminal: `script` gives it a pseudo-terminal and copies what it
/// shows. With an empty environment, `run` stops on its configuration and logs why (ERROR).
fn on_a_terminal(no_color: Option<&str>) -> String {
    let binary = env!("CARGO_BIN_EXE_datapack-worker");
    let mut command = Command::new("script");
    command
        .args(["--quiet", "--return", "--command"])
        .arg(format!("'{binary}' run"))
        .arg("/dev/null")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null());
    if let Some(value) = no_color {
        command.env("NO_COLOR", value);
    }
    let output = command
        .output()
        .expect("util-linux `script` (Debian bsdutils)");
    let shown = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(shown.contains("ERROR"), "{shown:?}");
    shown
}

#[test]
fn colour_on_a_terminal_unless_no_color() {
    assert!(
        on_a_terminal(None).contains("\x1b["),
        "a terminal gets colour"
    );
    assert!(
        !on_a_terminal(Some("1")).contains('\x1b'),
        "NO_COLOR turns it off"
    );
    // The same error with stderr on a pipe.
    let output = Command::new(env!("CARGO_BIN_EXE_datapack-worker"))
        .arg("run")
        .env_clear()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ERROR"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "no colour on a pipe: {stderr:?}");
}

/// The span called `name` among a JSON line's `spans` (outermost first).
fn span<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    line["spans"].as_array()?.iter().find(|s| s["name"] == name)
}

fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn json_lines_about_an_object_carry_its_record_and_message_spans() {
    let (stack, db) = setup("dp-1").await;
    // Warnings only, except the outcome lines: the spans are kept at any level a line is kept.
    let worker = Launch::new(&stack, &db, &[])
        .binary_keeping_log(&[
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "warn,datapack_worker::ops::metrics=info"),
        ])
        .await;
    let recorded = (
        "dp-1/logs/recorded.txt",
        stack.put("dp-1/logs/recorded.txt", b"recorded").await,
    );
    let skipped = (
        "dp-1/logs/direct.txt",
        stack
            .put_with("dp-1/logs/direct.txt", b"not presigned", None)
            .await,
    );
    let refused = (
        "dp-missing/logs/refused.txt",
        stack.put("dp-missing/logs/refused.txt", b"refused").await,
    );
    wait_until(
        "one row, one dead letter, an empty queue",
        DEADLINE,
        || async {
            (db.count().await == 1
                && stack.dlq_depth().await.0 == 1
                && stack.depth().await == (0, 0))
                .then_some(())
        },
    )
    .await;
    let text = worker.stop(DEADLINE).await;
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let about = |key: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l.to_string().contains(key))
            .collect()
    };
    let names_object = |line: &Value, span: &Value, (key, etag): (&str, &String)| {
        assert_eq!(span["bucket"], stack.bucket.as_str(), "{line}");
        assert_eq!(span["key"], key, "{line}");
        assert_eq!(span["etag"], etag.as_str(), "{line}");
    };
    let message_id = |line: &Value| -> String {
        let id = span(line, "message")
            .and_then(|s| s["message_id"].as_str())
            .unwrap_or_else(|| panic!("no message span on {line}"));
        assert!(crate::support::looks_like_uuid(id), "{id}");
        id.to_owned()
    };

    // `record done`, once per object, inside its record span, inside its message span.
    let mut ids = Vec::new();
    for (object, outcome) in [(recorded, "recorded"), (skipped, "skipped")] {
        let done: Vec<_> = about(object.0)
            .into_iter()
            .filter(|l| message(l) == "record done")
            .collect();
        assert_eq!(done.len(), 1, "{}: {done:#?}", object.0);
        let line = done[0];
        assert_eq!(line["fields"]["outcome"], outcome, "{line}");
        assert_eq!(line["span"]["name"], "record", "innermost: {line}");
        names_object(line, &line["span"], (object.0, &object.1));
        names_object(line, span(line, "record").unwrap(), (object.0, &object.1));
        ids.push(message_id(line));
    }
    assert_ne!(ids[0], ids[1], "each object came in its own message");

    // The refusal: logged once, when the message is settled, by the message span that names
    // the object it failed on.
    let failed: Vec<_> = about(refused.0)
        .into_iter()
        .filter(|l| l["level"] == "WARN" || l["level"] == "ERROR")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:#?}");
    let line = failed[0];
    assert_eq!(message(line), "record failed", "{line}");
    assert_eq!(line["fields"]["reason"], "unknown_datapack", "{line}");
    assert_eq!(line["span"]["name"], "message", "{line}");
    names_object(line, &line["span"], (refused.0, &refused.1));
    message_id(line);
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_gauges_during_and_after_work() {
    let (stack, db) = setup("dp-1").await;
    // S3 and SQS through a proxy the test can silence, to hold a delete on its way to SQS.
    let moto: SocketAddr = Moto::shared().addr;
    let proxy = Proxy::start(moto).await;
    // One slot: the default is then one poller (concurrency / 10, rounded up).
    let worker = Launch::new(&stack, &db, &["--worker-concurrency", "1"])
        .via(&proxy.endpoint())
        .binary_keeping_log(&[("RUST_LOG", "warn")])
        .await;
    let gauges = |s: &str| {
        [
            "datapack_worker_worker_concurrency",
            "datapack_worker_workers_busy",
            "datapack_worker_in_flight_messages",
            "datapack_worker_pollers_idle",
            "datapack_worker_pollers_receiving",
        ]
        .map(|g| metric(s, g))
    };

    // Idle: the one poller is in a long poll, nothing is worked on.
    wait_until("the poller in a long poll", DEADLINE, || async {
        let s = worker.http.try_scrape().await?;
        (gauges(&s) == [1.0, 0.0, 0.0, 0.0, 1.0]).then_some(())
    })
    .await;

    // Working: the write waits on a table lock. The slot is busy, the message in flight, and the
    // poller waits for a free slot instead of receiving more.
    let lock = db.lock_resources().await;
    stack.put("dp-1/gauges/held.txt", b"held").await;
    db.wait_for_blocked_write(DEADLINE).await;
    let s = wait_until(
        "busy slot, message in flight, idle poller",
        DEADLINE,
        || async {
            let s = worker.http.try_scrape().await?;
            (gauges(&s) == [1.0, 1.0, 1.0, 1.0, 0.0]).then_some(s)
        },
    )
    .await;
    let utilisation = metric(&s, "datapack_worker_workers_busy")
        / metric(&s, "datapack_worker_worker_concurrency");
    assert_eq!(utilisation, 1.0);
    // SQS counts the received message as in flight too, on the next sample (every second).
    wait_until("the queue's in-flight count sampled", DEADLINE, || async {
        let s = worker.http.try_scrape().await?;
        let series = "datapack_worker_queue_messages{queue=\"main\",state=\"in_flight\"}";
        (metric(&s, series) == 1.0).then_some(())
    })
    .await;

    // Committed, delete on its way: SQS answers nothing. The slot is free at once; the message
    // is still in flight until SQS confirms the delete.
    proxy.blackhole();
    lock.commit().await.unwrap();
    wait_until("a free slot while the delete waits", DEADLINE, || async {
        let s = worker.http.try_scrape().await?;
        (metric(&s, "datapack_worker_workers_busy") == 0.0
            && metric(&s, "datapack_worker_in_flight_messages") == 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(db.count().await, 1, "committed before the delete");

    // SQS answers again: the delete completes (or fails and the redelivery is a duplicate);
    // either way nothing is in flight any more.
    proxy.restore();
    wait_until("nothing in flight, nothing busy", DEADLINE, || async {
        let s = worker.http.try_scrape().await?;
        (metric(&s, "datapack_worker_workers_busy") == 0.0
            && metric(&s, "datapack_worker_in_flight_messages") == 0.0)
            .then_some(())
    })
    .await;
    drop(worker);
}
