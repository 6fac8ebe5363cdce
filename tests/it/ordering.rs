//! Out-of-order events: an older event applied after a newer one never changes a key's state.
//! These drive real events through the queue with explicit sequencers and times.

use std::time::Duration;

use crate::support::stack::s3_event;
use crate::support::{Moto, Stack, TestDb, TestWorker, wait_until};

const T1: &str = "2024-05-01T10:00:01.000Z";
const T2: &str = "2024-05-01T10:00:02.000Z";
const T3: &str = "2024-05-01T10:00:03.000Z";

async fn setup() -> (Stack, TestDb, TestWorker) {
    let stack = Stack::new(&Moto::shared().endpoint).await;
    let db = TestDb::new().await;
    db.add_datapack("dp").await;
    let worker = TestWorker::spawn(&stack, &db, &[]);
    (stack, db, worker)
}

/// Sends one event and waits until the queue has settled it.
async fn deliver(stack: &Stack, body: String) {
    stack.send(&body).await;
    wait_until("the event settled", Duration::from_secs(60), || async {
        (stack.depth().await == (0, 0)).then_some(())
    })
    .await;
}

/// (etag, deleted) per row of the key, oldest first.
async fn state(db: &TestDb) -> Vec<(String, bool)> {
    db.rows()
        .await
        .into_iter()
        .map(|r| (r.etag, r.deleted))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn removal_then_late_create_stays_deleted() {
    let (stack, db, worker) = setup().await;
    let etag = stack.put("dp/k.txt", b"v1").await;
    stack
        .sqs
        .purge_queue()
        .queue_url(&stack.queue_url)
        .send()
        .await
        .unwrap();
    let b = &stack.bucket;
    deliver(
        &stack,
        s3_event(
            "ObjectRemoved:Delete",
            b,
            "dp/k.txt",
            None,
            Some("0000000000000020"),
            T2,
        ),
    )
    .await;
    deliver(
        &stack,
        s3_event(
            "ObjectCreated:Put",
            b,
            "dp/k.txt",
            Some(&etag),
            Some("0000000000000010"),
            T1,
        ),
    )
    .await;
    assert_eq!(
        state(&db).await,
        vec![(etag, true)],
        "the create is older than the removal"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn create_removal_create_in_order_leaves_the_last_live() {
    let (stack, db, worker) = setup().await;
    let b = stack.bucket.clone();
    let e1 = stack.put("dp/k.txt", b"v1").await;
    stack
        .sqs
        .purge_queue()
        .queue_url(&stack.queue_url)
        .send()
        .await
        .unwrap();
    deliver(
        &stack,
        s3_event(
            "ObjectCreated:Put",
            &b,
            "dp/k.txt",
            Some(&e1),
            Some("10"),
            T1,
        ),
    )
    .await;
    deliver(
        &stack,
        s3_event("ObjectRemoved:Delete", &b, "dp/k.txt", None, Some("20"), T2),
    )
    .await;
    let e2 = stack.put("dp/k.txt", b"v2").await;
    stack
        .sqs
        .purge_queue()
        .queue_url(&stack.queue_url)
        .send()
        .await
        .unwrap();
    deliver(
        &stack,
        s3_event(
            "ObjectCreated:Put",
            &b,
            "dp/k.txt",
            Some(&e2),
            Some("30"),
            T3,
        ),
    )
    .await;
    assert_eq!(
        state(&db).await,
        vec![(e1.clone(), true), (e2.clone(), false)]
    );
    // A stale removal (between the two creates) delivered again changes nothing.
    deliver(
        &stack,
        s3_event("ObjectRemoved:Delete", &b, "dp/k.txt", None, Some("20"), T2),
    )
    .await;
    assert_eq!(state(&db).await, vec![(e1, true), (e2, false)]);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn same_bytes_uploaded_again_after_removal_is_live_again() {
    let (stack, db, worker) = setup().await;
    let b = stack.bucket.clone();
    let etag = stack.put("dp/k.txt", b"same").await;
    stack
        .sqs
        .purge_queue()
        .queue_url(&stack.queue_url)
        .send()
        .await
        .unwrap();
    deliver(
        &stack,
        s3_event("ObjectCreated:Put", &b, "dp/k.txt", Some(&etag), None, T1),
    )
    .await;
    deliver(
        &stack,
        s3_event("ObjectRemoved:Delete", &b, "dp/k.txt", None, None, T2),
    )
    .await;
    assert_eq!(state(&db).await, vec![(etag.clone(), true)]);
    deliver(
        &stack,
        s3_event("ObjectCreated:Put", &b, "dp/k.txt", Some(&etag), None, T3),
    )
    .await;
    assert_eq!(
        state(&db).await,
        vec![(etag.clone(), false)],
        "one row per upload identity, live again"
    );
    // The first create, redelivered late, is older than everything: nothing changes.
    deliver(
        &stack,
        s3_event("ObjectCreated:Put", &b, "dp/k.txt", Some(&etag), None, T1),
    )
    .await;
    assert_eq!(state(&db).await, vec![(etag, false)]);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sequencers_of_different_lengths_compare_padded_right() {
    let (stack, db, worker) = setup().await;
    let b = stack.bucket.clone();
    let etag = stack.put("dp/k.txt", b"v").await;
    stack
        .sqs
        .purge_queue()
        .queue_url(&stack.queue_url)
        .send()
        .await
        .unwrap();
    // "0056" pads to "005600…" and is newer than "0055FFFFFFFF" although it is shorter.
    deliver(
        &stack,
        s3_event(
            "ObjectCreated:Put",
            &b,
            "dp/k.txt",
            Some(&etag),
            Some("0055FFFFFFFF"),
            T3,
        ),
    )
    .await;
    deliver(
        &stack,
        s3_event(
            "ObjectRemoved:Delete",
            &b,
            "dp/k.txt",
            None,
            Some("0056"),
            T1,
        ),
    )
    .await;
    assert_eq!(
        state(&db).await,
        vec![(etag, true)],
        "the sequencer decides, not the event time"
    );
    worker.stop().await;
}
