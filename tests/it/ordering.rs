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

// ------------------------------------------------------------------ equal and unusable sequencers

/// LocalStack's constant sequencer: every record of every key carries this one.
const CONSTANT: &str = "0062E99A88DC407460";
const T4: &str = "2024-05-01T10:00:04.000Z";
const T5: &str = "2024-05-01T10:00:05.000Z";

/// [`start`] on a bucket that notifies nothing: every event the worker sees is the test's (an
/// upload's own event could otherwise reach the running worker before it is purged).
async fn start_quiet(body: &[u8]) -> (Stack, TestDb, TestWorker, String) {
    let (stack, db) = setup("dp").await;
    crate::fixtures::silence(&stack).await;
    let worker = TestWorker::spawn(&stack, &db, &[]).await;
    let etag = upload(&stack, body).await;
    (stack, db, worker, etag)
}

/// An event of AWS's own sample shape: the sequencer is not hexadecimal. It orders nothing, so
/// the event is ordered by its time; it is never a reason to refuse the upload.
#[tokio::test(flavor = "multi_thread")]
async fn a_happy_sequencer_is_recorded_not_dead_lettered() {
    let (stack, db, worker, etag) = start_quiet(b"happy").await;
    created(&stack, &etag, Some("Happy Sequencer"), T1).await;
    assert_eq!(state(&db).await, vec![(etag.clone(), false)]);
    assert_eq!(stack.dlq_depth().await, (0, 0), "nothing dead-lettered");
    // Its removal, with the same odd sequencer and a later time, removes.
    removed(&stack, Some("Happy Sequencer"), T2).await;
    assert_eq!(state(&db).await, vec![(etag, true)]);
    assert_eq!(stack.dlq_depth().await, (0, 0));
    worker.stop().await;
}

/// Equal sequencers on different objects are not one event delivered twice: the event time
/// orders them, so an overwrite leaves one live row and every removal removes.
#[tokio::test(flavor = "multi_thread")]
async fn a_constant_sequencer_still_overwrites_and_removes() {
    let (stack, db, worker, e1) = start_quiet(b"v1").await;
    created(&stack, &e1, Some(CONSTANT), T1).await;
    let e2 = upload(&stack, b"v2").await;
    created(&stack, &e2, Some(CONSTANT), T2).await;
    assert_eq!(
        state(&db).await,
        vec![(e1.clone(), true), (e2.clone(), false)],
        "the overwrite leaves the newer upload alone live"
    );
    // The same events again (redelivery) change nothing.
    created(&stack, &e2, Some(CONSTANT), T2).await;
    created(&stack, &e1, Some(CONSTANT), T1).await;
    assert_eq!(
        state(&db).await,
        vec![(e1.clone(), true), (e2.clone(), false)]
    );
    removed(&stack, Some(CONSTANT), T3).await;
    assert_eq!(
        state(&db).await,
        vec![(e1.clone(), true), (e2.clone(), true)]
    );
    // Upload, then remove again: the second removal removes too (it used to be `stale`).
    let e3 = upload(&stack, b"v3").await;
    created(&stack, &e3, Some(CONSTANT), T4).await;
    assert_eq!(
        state(&db).await,
        vec![(e1.clone(), true), (e2.clone(), true), (e3.clone(), false)],
        "a create after a removal with the same sequencer is live"
    );
    removed(&stack, Some(CONSTANT), T5).await;
    removed(&stack, Some(CONSTANT), T5).await;
    assert_eq!(state(&db).await, vec![(e1, true), (e2, true), (e3, true)]);
    assert_eq!(stack.dlq_depth().await, (0, 0));
    worker.stop().await;
}

/// Two different objects tie on sequencer and event time: S3's current object wins, whichever
/// event arrives first. A create that is current beats the row before it; a removal beats the
/// create it ties with once S3 shows the key gone, and loses while S3 still shows the object.
#[tokio::test(flavor = "multi_thread")]
async fn a_tie_on_sequencer_and_time_goes_to_s3_s_current_object() {
    let (stack, db, worker, e1) = start_quiet(b"v1").await;
    created(&stack, &e1, Some(CONSTANT), T1).await;
    let e2 = upload(&stack, b"v2").await;
    created(&stack, &e2, Some(CONSTANT), T1).await;
    assert_eq!(
        state(&db).await,
        vec![(e1.clone(), true), (e2.clone(), false)],
        "S3 shows v2: it wins the tie"
    );
    // A removal at the same position while S3 still shows v2: it loses, v2 stays live.
    removed(&stack, Some(CONSTANT), T1).await;
    assert_eq!(
        state(&db).await,
        vec![(e1.clone(), true), (e2.clone(), false)]
    );
    // The tied create delivered again changes nothing, and asks S3 nothing new.
    created(&stack, &e2, Some(CONSTANT), T1).await;
    assert_eq!(state(&db).await, vec![(e1, true), (e2, false)]);
    assert_eq!(stack.dlq_depth().await, (0, 0));
    worker.stop().await;
}

/// The removal side of a tie: the object is gone from S3, so the removal at the create's
/// position wins.
#[tokio::test(flavor = "multi_thread")]
async fn a_removal_tied_with_its_create_removes_once_s3_shows_the_key_gone() {
    let (stack, db, worker, etag) = start_quiet(b"gone").await;
    created(&stack, &etag, None, T1).await;
    stack.delete(KEY).await;
    stack.purge().await;
    removed(&stack, None, T1).await;
    assert_eq!(state(&db).await, vec![(etag, true)]);
    assert_eq!(stack.dlq_depth().await, (0, 0));
    worker.stop().await;
}
