//! Operating the dead-letter queue: list without consuming, fix the cause, redrive, recorded.

use std::process::Command;
use std::time::Duration;

use crate::support::worker::{moto_env, output_ok};
use crate::support::{Moto, Stack, TestDb, TestWorker};

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
