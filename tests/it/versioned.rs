//! Versioned buckets: a version's row ends only when that version stops existing, a delete
//! marker hides the key, removing the marker brings the newest remaining version back, a
//! noncurrent version's expiry touches only its row, restores change nothing; in every order.
//!
//! The versions are real (moto, versioning enabled, real version ids). moto notifies creates
//! without version id or sequencer and does not notify version deletions or delete markers at
//! all, so its events are purged and the tests send the events S3 sends, in AWS's documented
//! shapes (S3 notifications and EventBridge), with the real version ids, in the order they choose.

use std::time::Duration;

use datapack_worker::store::{
    self, NewResource, Removal, Survivor, Write, WriteOptions, WriteOutcome,
};

/// The writes of these tests: no datapack is created, changes are announced.
const WRITE: WriteOptions = WriteOptions {
    create_datapacks: false,
    notify: true,
};
use serde_json::json;
use sqlx::Row;

use crate::support::s3_proxy::{Match, S3Proxy};
use crate::support::stack::form_encode;
use crate::support::versioning::{Version, enable_versioning, put};
use crate::support::{Moto, Stack, TestDb, TestWorker, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);

/// A bucket with versioning on, its queue, a database with the datapack `dp`.
async fn setup() -> (Stack, TestDb) {
    let (stack, db) = crate::support::setup("dp").await;
    enable_versioning(&stack).await;
    (stack, db)
}

/// Deletes one version (or delete marker) for good.
async fn delete_version(stack: &Stack, key: &str, version: &str) {
    stack
        .s3
        .delete_object()
        .bucket(&stack.bucket)
        .key(key)
        .version_id(version)
        .send()
        .await
        .unwrap();
}

/// Deletes without a version: S3 puts a delete marker on top; returns the marker's version id.
async fn delete_marker(stack: &Stack, key: &str) -> String {
    let out = stack
        .s3
        .delete_object()
        .bucket(&stack.bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(out.delete_marker(), Some(true));
    out.version_id().unwrap().to_owned()
}

/// The n-th position in a key's history: S3's sequencer and event time grow together.
fn at(n: u32) -> (String, String) {
    (
        format!("{:016X}", 0x1000 + n),
        format!("2024-05-01T10:00:{:02}.000Z", n),
    )
}

/// An S3 notification record as AWS documents it (event structure 2.1).
fn s3_record(name: &str, bucket: &str, object: serde_json::Value, time: &str) -> String {
    let principal = if name.starts_with("Lifecycle") {
        "s3.amazonaws.com"
    } else {
        "AWS:AIDAEXAMPLE"
    };
    let mut record = json!({
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": time, "eventName": name,
        "userIdentity": {"principalId": principal},
        "requestParameters": {"sourceIPAddress": "203.0.113.9"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD"},
        "s3": {
            "s3SchemaVersion": "1.0", "configurationId": "uploads",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "A3NL1KOZZKExample"}, "arn": format!("arn:aws:s3:::{bucket}")},
            "object": object
        }
    });
    if name.starts_with("ObjectRestore:") {
        record["glacierEventData"] = json!({"restoreEventData": {
            "lifecycleRestorationExpiryTime": "2024-05-08T00:00:00.000Z",
            "lifecycleRestoreStorageClass": "GLACIER"}});
    }
    json!({ "Records": [record] }).to_string()
}

/// A versioned bucket whose `key` has two versions, both announced and recorded, and a worker
/// running on it.
async fn two_versions(
    key: &str,
    one: &[u8],
    two: &[u8],
) -> (Stack, TestDb, TestWorker, Version, Version) {
    let (stack, db) = setup().await;
    let v1 = put(&stack, key, one).await;
    let v2 = put(&stack, key, two).await;
    stack.purge().await;
    let worker = TestWorker::spawn(&stack, &db, &[]).await;
    let b = &stack.bucket;
    deliver(&stack, &created(b, key, &v1, 1)).await;
    deliver(&stack, &created(b, key, &v2, 2)).await;
    (stack, db, worker, v1, v2)
}

fn created(bucket: &str, key: &str, v: &Version, n: u32) -> String {
    let (sequencer, time) = at(n);
    s3_record(
        "ObjectCreated:Put",
        bucket,
        json!({"key": form_encode(key), "size": v.size, "eTag": v.etag, "versionId": v.id, "sequencer": sequencer}),
        &time,
    )
}

/// A removal naming a version or marker: S3 sends neither size nor ETag.
fn removed(name: &str, bucket: &str, key: &str, version: &str, n: u32) -> String {
    let (sequencer, time) = at(n);
    s3_record(
        name,
        bucket,
        json!({"key": form_encode(key), "versionId": version, "sequencer": sequencer}),
        &time,
    )
}

fn restore(name: &str, bucket: &str, key: &str, v: &Version, n: u32) -> String {
    let (sequencer, time) = at(n);
    s3_record(
        name,
        bucket,
        json!({"key": form_encode(key), "size": v.size, "eTag": v.etag, "versionId": v.id, "sequencer": sequencer}),
        &time,
    )
}

/// EventBridge's `Object Created` / `Object Deleted`, as AWS documents them.
fn eventbridge(
    detail_type: &str,
    bucket: &str,
    object: serde_json::Value,
    extra: serde_json::Value,
) -> String {
    let mut detail = json!({"version": "0", "bucket": {"name": bucket}, "object": object,
        "request-id": "N4N7GDK58NMKJ12R", "requester": "123456789012", "source-ip-address": "203.0.113.9"});
    for (k, v) in extra.as_object().unwrap() {
        detail[k] = v.clone();
    }
    let time = object_time(&detail);
    json!({"version": "0", "id": "17793124-05d4-b198-2fde-7ededc63b103", "detail-type": detail_type,
        "source": "aws.s3", "account": "123456789012", "time": time, "region": "us-east-1",
        "resources": [format!("arn:aws:s3:::{bucket}")], "detail": detail})
    .to_string()
}

fn object_time(detail: &serde_json::Value) -> String {
    let sequencer = detail["object"]["sequencer"].as_str().unwrap();
    let n = u32::from_str_radix(sequencer, 16).unwrap() - 0x1000;
    format!("2024-05-01T10:00:{n:02}Z")
}

fn eb_created(bucket: &str, key: &str, v: &Version, n: u32) -> String {
    eventbridge(
        "Object Created",
        bucket,
        json!({"key": key, "size": v.size, "etag": v.etag, "version-id": v.id, "sequencer": at(n).0}),
        json!({"reason": "PutObject"}),
    )
}

fn eb_deleted(bucket: &str, key: &str, version: &str, deletion_type: &str, n: u32) -> String {
    eventbridge(
        "Object Deleted",
        bucket,
        json!({"key": key, "version-id": version, "sequencer": at(n).0}),
        json!({"reason": "DeleteObject", "deletion-type": deletion_type}),
    )
}

/// Sends one event and waits until the queue has settled it.
async fn deliver(stack: &Stack, body: &str) {
    stack.send(body).await;
    settled(stack).await;
}

async fn settled(stack: &Stack) {
    wait_until("the queue settled", DEADLINE, || async {
        (stack.depth().await == (0, 0)).then_some(())
    })
    .await;
}

/// The live rows of a key: (etag, version id).
async fn live(db: &TestDb, key: &str) -> Vec<(String, Option<String>)> {
    db.pairs(
        "SELECT etag, version_id FROM datapack_resource
         WHERE object_key = $1 AND deleted_at IS NULL ORDER BY id",
        key,
    )
    .await
}

/// Every row of a key: (etag, version id, live).
async fn rows(db: &TestDb, key: &str) -> Vec<(String, Option<String>, bool)> {
    sqlx::query(
        "SELECT etag, version_id, deleted_at IS NULL FROM datapack_resource
         WHERE object_key = $1 ORDER BY id",
    )
    .bind(key)
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

fn row_of(v: &Version) -> (String, Option<String>) {
    (v.etag.clone(), Some(v.id.clone()))
}

// ------------------------------------------------------------------ in order, step by step

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_old_version_leaves_the_current_one_live() {
    let key = "dp/report.csv";
    let (stack, db, worker, v1, v2) = two_versions(key, b"first draft", b"final").await;
    let b = &stack.bucket;
    assert_eq!(live(&db, key).await, vec![row_of(&v2)]);

    delete_version(&stack, key, &v1.id).await;
    deliver(&stack, &removed("ObjectRemoved:Delete", b, key, &v1.id, 3)).await;
    assert_eq!(
        rows(&db, key).await,
        vec![
            (v1.etag.clone(), Some(v1.id.clone()), false),
            (v2.etag.clone(), Some(v2.id.clone()), true)
        ],
        "only the deleted version's row is deleted"
    );
    // The same removal again (redelivery) changes nothing.
    deliver(&stack, &removed("ObjectRemoved:Delete", b, key, &v1.id, 3)).await;
    assert_eq!(live(&db, key).await, vec![row_of(&v2)]);
    assert_eq!(stack.dlq_depth().await, (0, 0));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_current_version_brings_the_previous_one_back() {
    let key = "dp/current.txt";
    let (stack, db, worker, v1, v2) = two_versions(key, b"one", b"two").await;
    let b = &stack.bucket;
    delete_version(&stack, key, &v2.id).await;
    deliver(&stack, &removed("ObjectRemoved:Delete", b, key, &v2.id, 3)).await;
    assert_eq!(live(&db, key).await, vec![row_of(&v1)]);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delete_marker_hides_the_key_and_removing_it_brings_the_newest_version_back() {
    let key = "dp/raw data/hidden file.txt";
    let (stack, db, worker, _v1, v2) = two_versions(key, b"one", b"two").await;
    let b = &stack.bucket;

    let marker = delete_marker(&stack, key).await;
    deliver(
        &stack,
        &removed("ObjectRemoved:DeleteMarkerCreated", b, key, &marker, 3),
    )
    .await;
    assert_eq!(live(&db, key).await, vec![], "the marker hides the key");

    delete_version(&stack, key, &marker).await;
    deliver(&stack, &removed("ObjectRemoved:Delete", b, key, &marker, 4)).await;
    assert_eq!(
        live(&db, key).await,
        vec![row_of(&v2)],
        "the newest remaining version is live again"
    );
    assert_eq!(stack.dlq_depth().await, (0, 0));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_noncurrent_version_s_expiry_touches_only_its_row() {
    let key = "dp/expiring.txt";
    let (stack, db, worker, v1, v2) = two_versions(key, b"old", b"new").await;
    let b = &stack.bucket;
    let before = rows(&db, key).await;
    // moto has no lifecycle: the expiry is made by hand, and its event is the one S3 sends.
    delete_version(&stack, key, &v1.id).await;
    deliver(
        &stack,
        &removed("LifecycleExpiration:Delete", b, key, &v1.id, 3),
    )
    .await;
    assert_eq!(rows(&db, key).await, before, "nothing visible changes");
    assert_eq!(live(&db, key).await, vec![row_of(&v2)]);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_old_version_with_the_same_bytes_takes_over_the_row() {
    let (stack, db) = setup().await;
    let key = "dp/same.txt";
    let v1 = put(&stack, key, b"same bytes").await;
    let v2 = put(&stack, key, b"same bytes").await;
    assert_eq!(v1.etag, v2.etag);
    stack.purge().await;
    let worker = TestWorker::spawn(&stack, &db, &[]).await;
    let b = &stack.bucket;
    deliver(&stack, &created(b, key, &v1, 1)).await;
    deliver(&stack, &created(b, key, &v2, 2)).await;
    assert_eq!(
        live(&db, key).await,
        vec![row_of(&v2)],
        "one row per upload identity"
    );
    delete_version(&stack, key, &v2.id).await;
    deliver(&stack, &removed("ObjectRemoved:Delete", b, key, &v2.id, 3)).await;
    assert_eq!(
        live(&db, key).await,
        vec![row_of(&v1)],
        "the row stays live and names the version that still exists"
    );
    worker.stop().await;
}

/// Two versions announced with one sequencer and one event time (LocalStack's constant
/// sequencer, within one millisecond): whichever arrives first, the version S3 shows wins, and
/// the other's row is not live.
#[tokio::test(flavor = "multi_thread")]
async fn a_tie_between_two_versions_goes_to_the_current_one_in_either_order() {
    for current_first in [true, false] {
        let (stack, db) = setup().await;
        let key = "dp/tied.txt";
        let v1 = put(&stack, key, b"first").await;
        let v2 = put(&stack, key, b"second").await;
        stack.purge().await;
        let worker = TestWorker::spawn(&stack, &db, &[]).await;
        let b = &stack.bucket;
        // Both at position 1: equal sequencers, equal times.
        let (first, second) = if current_first {
            (&v2, &v1)
        } else {
            (&v1, &v2)
        };
        deliver(&stack, &created(b, key, first, 1)).await;
        deliver(&stack, &created(b, key, second, 1)).await;
        assert_eq!(
            live(&db, key).await,
            vec![row_of(&v2)],
            "current first: {current_first}"
        );
        // Redelivered, in either order, they change nothing.
        deliver(&stack, &created(b, key, &v1, 1)).await;
        deliver(&stack, &created(b, key, &v2, 1)).await;
        assert_eq!(live(&db, key).await, vec![row_of(&v2)]);
        assert_eq!(rows(&db, key).await.len(), 2);
        assert_eq!(stack.dlq_depth().await, (0, 0));
        worker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn restores_change_nothing() {
    let (stack, db) = setup().await;
    let key = "dp/archived.txt";
    let v1 = put(&stack, key, b"one").await;
    let v2 = put(&stack, key, b"two").await;
    stack.purge().await;
    let worker = TestWorker::spawn(&stack, &db, &[]).await;
    let b = &stack.bucket;
    // A restore announced before the upload it restores is ignored too.
    deliver(&stack, &restore("ObjectRestore:Post", b, key, &v1, 5)).await;
    deliver(&stack, &created(b, key, &v1, 1)).await;
    deliver(&stack, &created(b, key, &v2, 2)).await;
    let before = rows(&db, key).await;
    for (name, n) in [
        ("ObjectRestore:Post", 3),
        ("ObjectRestore:Completed", 4),
        ("ObjectRestore:Delete", 6),
    ] {
        deliver(&stack, &restore(name, b, key, &v1, n)).await;
        deliver(&stack, &restore(name, b, key, &v2, n)).await;
    }
    assert_eq!(rows(&db, key).await, before);
    assert_eq!(live(&db, key).await, vec![row_of(&v2)]);
    assert_eq!(stack.dlq_depth().await, (0, 0), "acknowledged, not refused");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn eventbridge_delete_markers_hide_and_their_removal_restores() {
    let (stack, db) = setup().await;
    let key = "dp/bridge.txt";
    let v1 = put(&stack, key, b"one").await;
    stack.purge().await;
    let worker = TestWorker::spawn(&stack, &db, &[]).await;
    let b = &stack.bucket;
    deliver(&stack, &eb_created(b, key, &v1, 1)).await;
    assert_eq!(live(&db, key).await, vec![row_of(&v1)]);
    let marker = delete_marker(&stack, key).await;
    deliver(
        &stack,
        &eb_deleted(b, key, &marker, "Delete Marker Created", 2),
    )
    .await;
    assert_eq!(live(&db, key).await, vec![]);
    delete_version(&stack, key, &marker).await;
    deliver(
        &stack,
        &eb_deleted(b, key, &marker, "Permanently Deleted", 3),
    )
    .await;
    assert_eq!(live(&db, key).await, vec![row_of(&v1)]);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_version_s_deletion_asks_s3_and_unversioned_removals_cost_nothing() {
    let moto = Moto::shared();
    let stack = Stack::new(&moto.endpoint).await;
    let db = TestDb::new().await;
    db.add_datapack("dp").await;
    // First unversioned: a plain upload and its removal, as S3 sends them (no version id).
    let plain = stack.put("dp/plain.txt", b"plain").await;
    stack.purge().await;
    let proxy = S3Proxy::start(crate::support::proxy::url_addr(&moto.endpoint)).await;
    let worker = crate::support::worker::Launch::new(&stack, &db, &[])
        .via(&proxy.endpoint())
        .in_process()
        .await;
    let b = stack.bucket.clone();
    let (s1, t1) = at(1);
    let (s2, t2) = at(2);
    deliver(
        &stack,
        &s3_record(
            "ObjectCreated:Put",
            &b,
            json!({"key": "dp/plain.txt", "size": 5, "eTag": plain, "sequencer": s1}),
            &t1,
        ),
    )
    .await;
    stack.delete("dp/plain.txt").await;
    deliver(
        &stack,
        &s3_record(
            "ObjectRemoved:Delete",
            &b,
            json!({"key": "dp/plain.txt", "sequencer": s2}),
            &t2,
        ),
    )
    .await;
    assert_eq!(live(&db, "dp/plain.txt").await, vec![]);
    let heads = |part: &str| Match {
        method: Some("HEAD"),
        ..Match::key(part)
    };
    assert_eq!(
        proxy.count(&heads("plain.txt")),
        0,
        "no request for a plain removal"
    );

    // Then versioned: a delete marker needs no request either; a version's deletion needs one.
    enable_versioning(&stack).await;
    let key = "dp/versioned.txt";
    let v1 = put(&stack, key, b"one").await;
    let marker = delete_marker(&stack, key).await;
    stack.purge().await;
    deliver(&stack, &created(&b, key, &v1, 1)).await;
    deliver(
        &stack,
        &removed("ObjectRemoved:DeleteMarkerCreated", &b, key, &marker, 2),
    )
    .await;
    assert_eq!(proxy.count(&heads("versioned.txt")), 0);
    delete_version(&stack, key, &marker).await;
    deliver(
        &stack,
        &removed("ObjectRemoved:Delete", &b, key, &marker, 3),
    )
    .await;
    assert_eq!(proxy.count(&heads("versioned.txt")), 1);
    assert_eq!(live(&db, key).await, vec![row_of(&v1)]);
    worker.stop().await;
}

// ------------------------------------------------------------------ out of order

/// Every order of `n` events.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for rest in permutations(n - 1) {
        for slot in 0..=rest.len() {
            let mut order = rest.clone();
            order.insert(slot, n - 1);
            out.push(order);
        }
    }
    out
}

/// A key's history made for real on S3 (all of it, before any event is handled: every event
/// then meets the bucket's final state, the hardest case for a late one), the events S3 sent
/// for it in its order, and what must be live once all of them are handled, in any order.
struct History {
    key: String,
    events: Vec<String>,
    live: Vec<(String, Option<String>)>,
}

#[derive(Debug, Clone, Copy)]
enum Case {
    OldVersionDeleted,
    CurrentVersionDeleted,
    Marker,
    MarkerRemoved,
    MarkerThenUpload,
    NoncurrentExpired,
    Restored,
}

async fn history(stack: &Stack, case: Case, key: String) -> History {
    let b = stack.bucket.as_str();
    let k = key.as_str();
    let v1 = put(stack, k, format!("one {k}").as_bytes()).await;
    let v2 = put(stack, k, format!("two {k}").as_bytes()).await;
    let (events, live) = match case {
        Case::OldVersionDeleted => {
            delete_version(stack, k, &v1.id).await;
            let events = vec![
                created(b, k, &v1, 1),
                created(b, k, &v2, 2),
                removed("ObjectRemoved:Delete", b, k, &v1.id, 3),
            ];
            (events, vec![row_of(&v2)])
        }
        Case::CurrentVersionDeleted => {
            delete_version(stack, k, &v2.id).await;
            let events = vec![
                created(b, k, &v1, 1),
                created(b, k, &v2, 2),
                removed("ObjectRemoved:Delete", b, k, &v2.id, 3),
            ];
            (events, vec![row_of(&v1)])
        }
        Case::Marker => {
            let m = delete_marker(stack, k).await;
            let events = vec![
                created(b, k, &v1, 1),
                created(b, k, &v2, 2),
                removed("ObjectRemoved:DeleteMarkerCreated", b, k, &m, 3),
            ];
            (events, vec![])
        }
        Case::MarkerRemoved => {
            let m = delete_marker(stack, k).await;
            delete_version(stack, k, &m).await;
            let events = vec![
                created(b, k, &v1, 1),
                created(b, k, &v2, 2),
                removed("ObjectRemoved:DeleteMarkerCreated", b, k, &m, 3),
                removed("ObjectRemoved:Delete", b, k, &m, 4),
            ];
            (events, vec![row_of(&v2)])
        }
        Case::MarkerThenUpload => {
            let m = delete_marker(stack, k).await;
            let v3 = put(stack, k, format!("three {k}").as_bytes()).await;
            let events = vec![
                created(b, k, &v2, 2),
                removed("ObjectRemoved:DeleteMarkerCreated", b, k, &m, 3),
                created(b, k, &v3, 4),
            ];
            (events, vec![row_of(&v3)])
        }
        Case::NoncurrentExpired => {
            delete_version(stack, k, &v1.id).await;
            let events = vec![
                created(b, k, &v1, 1),
                created(b, k, &v2, 2),
                removed("LifecycleExpiration:Delete", b, k, &v1.id, 3),
            ];
            (events, vec![row_of(&v2)])
        }
        Case::Restored => {
            let events = vec![
                created(b, k, &v1, 1),
                created(b, k, &v2, 2),
                restore("ObjectRestore:Post", b, k, &v1, 3),
                restore("ObjectRestore:Completed", b, k, &v1, 4),
            ];
            (events, vec![row_of(&v2)])
        }
    };
    History { key, events, live }
}

/// Makes the case's history once per order of its events, delivers each order one event at a
/// time, then all of one more history at once (the worker handles them concurrently, the writer
/// may batch them), and checks every key ends as S3 shows it.
async fn every_order_converges(case: Case) {
    let (stack, db) = setup().await;
    let probe = history(&stack, case, format!("dp/{case:?}/probe.txt")).await;
    let orders = permutations(probe.events.len());
    let mut histories = Vec::new();
    for (i, _) in orders.iter().enumerate() {
        histories.push(history(&stack, case, format!("dp/{case:?}/order {i}.txt")).await);
    }
    let together = history(&stack, case, format!("dp/{case:?}/together.txt")).await;
    stack.purge().await;
    let worker = TestWorker::spawn(&stack, &db, &[]).await;
    for (order, h) in orders.iter().zip(&histories) {
        for &i in order {
            deliver(&stack, &h.events[i]).await;
        }
    }
    for event in &together.events {
        stack.send(event).await;
    }
    settled(&stack).await;
    for (order, h) in orders.iter().zip(&histories) {
        assert_eq!(
            live(&db, &h.key).await,
            h.live,
            "{case:?}, events in the order {order:?}"
        );
    }
    assert_eq!(
        live(&db, &together.key).await,
        together.live,
        "{case:?}, all events at once"
    );
    assert_eq!(stack.dlq_depth().await, (0, 0));
    worker.stop().await;
}

/// One test per case: each converges whatever order its events arrive in.
macro_rules! every_order {
    ($($name:ident => $case:ident),+ $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread")]
        async fn $name() {
            every_order_converges(Case::$case).await;
        }
    )+};
}

every_order! {
    old_version_deleted_in_every_order => OldVersionDeleted,
    current_version_deleted_in_every_order => CurrentVersionDeleted,
    delete_marker_in_every_order => Marker,
    delete_marker_removed_in_every_order => MarkerRemoved,
    upload_after_a_delete_marker_in_every_order => MarkerThenUpload,
    noncurrent_expiry_in_every_order => NoncurrentExpired,
    restore_in_every_order => Restored,
}

// ------------------------------------------------------------------ one batch

/// The event time that goes with a sequencer: S3's grow together, and one event delivered twice
/// has one time.
fn time_of(sequencer: &str) -> chrono::DateTime<chrono::Utc> {
    let n = i64::from_str_radix(sequencer, 16).unwrap();
    chrono::DateTime::from_timestamp(1_700_000_000 + n, 0).unwrap()
}

fn resource(key: &str, etag: &str, version: &str, sequencer: &str) -> Write {
    let (datapack, rest) = key.split_once('/').unwrap();
    Write::Resource(NewResource {
        bucket: "bucket".into(),
        object_key: key.into(),
        datapack: datapack.into(),
        path: "/".into(),
        display: rest.into(),
        content_type: None,
        length: 1,
        etag: etag.into(),
        sha256: "0".repeat(64),
        submitter_name: None,
        submitter_email: None,
        object_last_modified: None,
        version_id: Some(version.into()),
        sequencer: Some(sequencer.into()),
        event_time: time_of(sequencer),
        sha256_source: Default::default(),
        tiebreak: None,
    })
}

fn removal(key: &str, removed: &str, survivor: Option<(&str, &str)>, sequencer: &str) -> Write {
    Write::Removal(Removal {
        bucket: "bucket".into(),
        object_key: key.into(),
        sequencer: Some(sequencer.into()),
        event_time: time_of(sequencer),
        version_id: Some(removed.into()),
        survivor: survivor.map(|(etag, version)| Survivor {
            etag: etag.into(),
            version_id: Some(version.into()),
        }),
        tiebreak: None,
    })
}

/// The rules hold inside one group-commit batch too: the writes of several messages about one
/// key, in any order within the batch.
#[tokio::test(flavor = "multi_thread")]
async fn one_batch_applies_the_same_rules() {
    let db = TestDb::new().await;
    db.add_datapack("dp").await;
    let key = "dp/batched.txt";
    let writes = [
        removal(key, "v2", Some(("e1", "v1")), "30"),
        resource(key, "e2", "v2", "20"),
        resource(key, "e1", "v1", "10"),
    ];
    let outcomes = store::apply(&db.pool, &writes, WRITE).await.unwrap();
    assert_eq!(
        outcomes,
        vec![
            WriteOutcome::Removed,
            WriteOutcome::Recorded,
            WriteOutcome::Recorded
        ]
    );
    assert_eq!(live(&db, key).await, vec![("e1".into(), Some("v1".into()))]);
    // A marker and a newer upload in one batch: the upload wins.
    let writes = [
        resource(key, "e3", "v3", "50"),
        removal(key, "m1", None, "40"),
    ];
    store::apply(&db.pool, &writes, WRITE).await.unwrap();
    assert_eq!(live(&db, key).await, vec![("e3".into(), Some("v3".into()))]);
    // Everything again: duplicates and stale removals, nothing changes.
    let all = [
        removal(key, "v2", Some(("e1", "v1")), "30"),
        resource(key, "e2", "v2", "20"),
        resource(key, "e1", "v1", "10"),
        resource(key, "e3", "v3", "50"),
        removal(key, "m1", None, "40"),
    ];
    let outcomes = store::apply(&db.pool, &all, WRITE).await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, WriteOutcome::Duplicate | WriteOutcome::Stale)),
        "{outcomes:?}"
    );
    assert_eq!(live(&db, key).await, vec![("e3".into(), Some("v3".into()))]);
}
