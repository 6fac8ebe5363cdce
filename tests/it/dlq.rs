//! Operating the dead-letter queue: list without consuming, fix the cause, redrive, recorded.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::worker::{moto_env, output_ok};
use crate::support::{Moto, Stack, TestDb, TestWorker, wait_until};

fn dlq_command(stack: &Stack, args: &[&str]) -> String {
    output_ok(
        moto_env(
            &mut Command::new(env!("CARGO_BIN_EXE_datapack-worker")),
            &stack.endpoint,
        )
        .arg("dlq")
        .args(args)
        .env("SQS_QUEUE_URL", &stack.queue_url)
        .env("SQS_DEAD_LETTER_QUEUE_URL", &stack.dlq_url),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn list_then_redrive_after_the_cause_is_fixed() {
    let stack = Stack::new(&Moto::shared().endpoint).await;
    let db = TestDb::new().await;
    stack.put("dp-late/a.txt", b"a").await;
    stack.put("dp-late/b.txt", b"b").await;
    stack.send("this is not json").await;
    let worker = TestWorker::spawn(&stack, &db, &[]).await;
    stack.wait_dead_letters(3, Duration::from_secs(60)).await;

    // Listing twice shows the same three messages: nothing is consumed.
    for _ in 0..2 {
        let listed: serde_json::Value =
            serde_json::from_str(&dlq_command(&stack, &["list", "--json"])).unwrap();
        let listed = listed.as_array().unwrap();
        assert_eq!(listed.len(), 3);
        let mut keys: Vec<_> = listed.iter().filter_map(|e| e["key"].as_str()).collect();
        keys.sort();
        assert_eq!(keys, ["dp-late/a.txt", "dp-late/b.txt"]);
        let reasons = listed
            .iter()
            .filter(|e| e["reason"] == "unknown_datapack")
            .count();
        assert_eq!(reasons, 2);
        assert!(listed.iter().any(|e| e["reason"] == "malformed_message"));
        assert!(
            listed
                .iter()
                .all(|e| e["age_secs"].as_i64().is_some_and(|a| a >= 0))
        );
    }
    let text = dlq_command(&stack, &["list"]);
    assert!(
        text.contains("unknown_datapack") && text.contains("3 message(s)"),
        "{text}"
    );

    // Fix the cause, redrive only what it explains; the malformed one stays.
    db.add_datapack("dp-late").await;
    let out = dlq_command(&stack, &["redrive", "--reason", "unknown_datapack"]);
    assert!(out.contains("redrove 2"), "{out}");
    db.wait_rows(2, Duration::from_secs(60)).await;
    stack.wait_drained(Duration::from_secs(60)).await;
    worker.stop().await;
    let left = stack.take_dead_letters().await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].1["error_reason"], "malformed_message");
}

/// Sends a dead letter as the worker does: the body with its reason attribute.
async fn dead_letter(stack: &Stack, body: &str, reason: &str) {
    let attribute = aws_sdk_sqs::types::MessageAttributeValue::builder()
        .data_type("String")
        .string_value(reason)
        .build()
        .unwrap();
    stack
        .sqs
        .send_message()
        .queue_url(&stack.dlq_url)
        .message_body(body)
        .message_attributes("error_reason", attribute)
        .send()
        .await
        .unwrap();
}

/// More than one receive's worth (ten) of dead letters: `list` shows every one and consumes
/// none; `redrive --reason` moves every one with that reason and leaves the others.
#[tokio::test(flavor = "multi_thread")]
async fn list_and_redrive_page_through_more_than_ten_messages() {
    let stack = Stack::new(&Moto::shared().endpoint).await;
    for i in 0..23 {
        let reason = if i % 3 == 0 {
            "malformed_message"
        } else {
            "unknown_datapack"
        };
        dead_letter(&stack, &format!("body {i}"), reason).await;
    }
    for _ in 0..2 {
        let listed: serde_json::Value =
            serde_json::from_str(&dlq_command(&stack, &["list", "--json"])).unwrap();
        assert_eq!(listed.as_array().unwrap().len(), 23, "every message listed");
        assert_eq!(
            stack.dlq_depth().await,
            (23, 0),
            "nothing consumed, nothing held"
        );
    }
    let limited: serde_json::Value =
        serde_json::from_str(&dlq_command(&stack, &["list", "--json", "--max", "12"])).unwrap();
    assert_eq!(limited.as_array().unwrap().len(), 12);
    assert_eq!(stack.dlq_depth().await, (23, 0));

    let out = dlq_command(&stack, &["redrive", "--reason", "unknown_datapack"]);
    assert!(out.contains("redrove 15"), "{out}");
    assert_eq!(
        stack.dlq_depth().await,
        (8, 0),
        "the other reason stays, visible"
    );
    assert_eq!(stack.depth().await.0, 15);
    let out = dlq_command(&stack, &["redrive", "--max", "5"]);
    assert!(out.contains("redrove 5"), "{out}");
    assert_eq!(stack.dlq_depth().await, (3, 0));
}

/// Every message of `url`, taken (received and deleted): their bodies.
async fn drain_queue(stack: &Stack, url: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    for m in stack.receive_all(url).await {
        bodies.push(stack.delete_received(url, m).await);
    }
    bodies
}

/// SIGINT half-way through redriving 300 messages: the message in hand is finished (none ends in
/// both queues), what was held is visible again at once, the summary is printed, and the exit
/// code says it was interrupted.
#[tokio::test(flavor = "multi_thread")]
async fn redrive_interrupted_half_way_hands_everything_back() {
    let stack = Stack::new(&Moto::shared().endpoint).await;
    let total = 300;
    for batch in 0..total / 10 {
        let entries: Vec<_> = (0..10)
            .map(|i| {
                let n = batch * 10 + i;
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(format!("dead letter {n:03}"))
                    .message_attributes(
                        "error_reason",
                        aws_sdk_sqs::types::MessageAttributeValue::builder()
                            .data_type("String")
                            .string_value("unknown_datapack")
                            .build()
                            .unwrap(),
                    )
                    .build()
                    .unwrap()
            })
            .collect();
        stack
            .sqs
            .send_message_batch()
            .queue_url(&stack.dlq_url)
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
    }
    let redrive = moto_env(
        &mut Command::new(env!("CARGO_BIN_EXE_datapack-worker")),
        &stack.endpoint,
    )
    .args(["dlq", "redrive"])
    .env("SQS_QUEUE_URL", &stack.queue_url)
    .env("SQS_DEAD_LETTER_QUEUE_URL", &stack.dlq_url)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_until(
        "some messages redriven",
        Duration::from_secs(60),
        || async { (stack.depth().await.0 >= 20).then_some(()) },
    )
    .await;
    let status = Command::new("kill")
        .args(["-INT", &redrive.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::task::spawn_blocking(move || redrive.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("redrove ") && stdout.contains("interrupted"),
        "the summary: {stdout}"
    );

    // What was held is visible again at once (the hold is 300 s).
    let (visible, held) = stack.dlq_depth().await;
    assert_eq!(held, 0, "nothing left invisible on the dead-letter queue");
    let moved = stack.depth().await.0;
    assert!(
        moved > 0 && visible > 0,
        "interrupted half-way: {moved} moved, {visible} left"
    );
    let summary_moved: u64 = stdout
        .split("redrove ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the count in the summary");
    assert_eq!(
        summary_moved, moved,
        "the summary counts what moved: {stdout}"
    );

    // Every message is in exactly one of the two queues.
    let mut bodies = drain_queue(&stack, &stack.queue_url).await;
    bodies.extend(drain_queue(&stack, &stack.dlq_url).await);
    bodies.sort();
    let count = bodies.len();
    bodies.dedup();
    assert_eq!(bodies.len(), count, "no message in both queues");
    assert_eq!(count, total, "none lost");
    println!("redrive interrupted: {moved} moved, {visible} handed back; {stdout}");
}
