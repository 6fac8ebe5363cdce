//! Out-of-order events: an older event applied after a newer one never changes a key's state.
//! These drive real events through the queue with explicit sequencers and times.

use std::time::Duration;

use crate::support::stack::s3_event;
use crate::support::{Stack, TestDb, TestWorker, setup};

const KEY: &str = "dp/k.txt";
const T1: &str = "2024-05-01T10:00:01.000Z";
const T2: &str = "2024-05-01T10:00:02.000Z";
const T3: &str = "2024-05-01T10:00:03.000Z";

/// A worker on a fresh stack, and the ETag of `body` uploaded as [`KEY`].
async fn start(body: &[u8]) -> (Stack, TestDb, TestWorker, String) {
    let (stack, db) = setup("dp").await;
    let worker = TestWorker::spawn(&stack, &db, &[]).await;
    let etag = upload(&stack, body).await;
    (stack, db, worker, etag)
}

/// Uploads `body` as [`KEY`] without its event (each test sends its own) and returns the ETag.
async fn upload(stack: &Stack, body: &[u8]) -> String {
    let etag = stack.put(KEY, body).await;
    stack.purge().await;
    etag
}

/// Delivers the creation of [`KEY`] with `etag`, as S3 would announce it.
async fn created(stack: &Stack, etag: &str, sequencer: Option<&str>, time: &str) {
    let event = s3_event(
        "ObjectCreated:Put",
        &stack.bucket,
        KEY,
        Some(etag),
        sequencer,
        time,
    );
    deliver(stack, event).await;
}

/// Delivers the removal of [`KEY`].
async fn removed(stack: &Stack, sequencer: Option<&str>, time: &str) {
    let event = s3_event(
        "ObjectRemoved:Delete",
        &stack.bucket,
        KEY,
        None,
        sequencer,
        time,
    );
    deliver(stack, event).await;
}

/// Sends one event and waits until the queue has settled it.
async fn deliver(stack: &Stack, body: String) {
    stack.send(&body).await;
    stack.wait_drained(Duration::from_secs(60)).await;
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
    let (stack, db, worker, etag) = start(b"v1").await;
    removed(&stack, Some("0000000000000020"), T2).await;
    created(&stack, &etag, Some("0000000000000010"), T1).await;
    assert_eq!(
        state(&db).await,
        vec![(etag, true)],
        "the create is older than the removal"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn create_removal_create_in_order_leaves_the_last_live() {
    let (stack, db, worker, e1) = start(b"v1").await;
    created(&stack, &e1, Some("10"), T1).await;
    removed(&stack, Some("20"), T2).await;
    let e2 = upload(&stack, b"v2").await;
    created(&stack, &e2, Some("30"), T3).await;
    assert_eq!(
        state(&db).await,
        vec![(e1.clone(), true), (e2.clone(), false)]
    );
    // A stale removal (between the two creates) delivered again changes nothing.
    removed(&stack, Some("20"), T2).await;
    assert_eq!(state(&db).await, vec![(e1, true), (e2, false)]);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn same_bytes_uploaded_again_after_removal_is_live_again() {
    let (stack, db, worker, etag) = start(b"same").await;
    created(&stack, &etag, None, T1).await;
    removed(&stack, None, T2).await;
    assert_eq!(state(&db).await, vec![(etag.clone(), true)]);
    created(&stack, &etag, None, T3).await;
    assert_eq!(
        state(&db).await,
        vec![(etag.clone(), false)],
        "one row per upload identity, live again"
    );
    // The first create, redelivered late, is older than everything: nothing changes.
    created(&stack, &etag, None, T1).await;
    assert_eq!(state(&db).await, vec![(etag, false)]);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sequencers_of_different_lengths_compare_padded_right() {
    let (stack, db, worker, etag) = start(b"v").await;
    // "0056" pads to "005600…" and is newer than "0055FFFFFFFF" although it is shorter.
    created(&stack, &etag, Some("0055FFFFFFFF"), T3).await;
    removed(&stack, Some("0056"), T1).await;
    assert_eq!(
        state(&db).await,
        vec![(etag, true)],
        "the sequencer decides, not the event time"
    );
    worker.stop().await;
}
