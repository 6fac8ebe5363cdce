//! The public sample events (AWS Lambda Powertools' fixtures, recreated in their shapes under
//! `tests/fixtures/powertools/`) through the real worker: every one that names an object is
//! recorded or removed as it says, and only bodies that are not events are dead-lettered.
//!
//! The bucket notifies nothing here (its notification is switched off): each fixture is the only
//! event the worker sees about its object, with the bucket name, ETag, size and version id of the
//! object the test uploaded in place of the sample's.

use std::time::Duration;

use aws_sdk_s3::types::NotificationConfiguration;
use serde_json::Value;

use crate::support::stack::s3_event;
use crate::support::versioning::{Version, enable_versioning, put};
use crate::support::{Stack, TestDb, TestWorker, setup};

const DEADLINE: Duration = Duration::from_secs(60);

/// What the worker must do with a fixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The object it names is uploaded first; afterwards its row is live.
    Recorded,
    /// The object it names is uploaded, recorded and deleted first; afterwards no row is live.
    Removed,
    /// Acknowledged; nothing changes and nothing is dead-lettered.
    Acknowledged,
    /// Not an event: dead-lettered.
    DeadLettered,
}

const FIXTURES: [(&str, Expect); 14] = [
    ("s3-put.json", Expect::Recorded),
    ("s3-decoded-key-happy-sequencer.json", Expect::Recorded),
    ("s3-delete-object.json", Expect::Removed),
    ("s3-put-glacier.json", Expect::Recorded),
    ("s3-lifecycle-expiration.json", Expect::Removed),
    ("sqs-body-s3-put-versioned.json", Expect::Recorded),
    ("eventbridge-object-created.json", Expect::Recorded),
    ("eventbridge-object-deleted.json", Expect::Removed),
    ("eventbridge-object-expired.json", Expect::Removed),
    (
        "eventbridge-object-restore-completed.json",
        Expect::Acknowledged,
    ),
    ("sns-s3-put.json", Expect::Recorded),
    ("sns-not-an-s3-event.json", Expect::DeadLettered),
    ("s3-test-event.json", Expect::Acknowledged),
    (
        "s3-object-lambda-not-a-notification.json",
        Expect::DeadLettered,
    ),
];

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/powertools/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The S3 event inside a fixture (unwrapping SNS's `Message`), to read or rewrite.
fn with_event<T>(body: &mut Value, f: impl FnOnce(&mut Value) -> T) -> T {
    if body["Type"] == "Notification"
        && let Some(message) = body["Message"].as_str()
        && let Ok(mut inner) = serde_json::from_str::<Value>(message)
    {
        let out = f(&mut inner);
        body["Message"] = Value::String(inner.to_string());
        return out;
    }
    f(body)
}

/// The `object` (and its bucket's holder) of an S3 record or an EventBridge detail.
fn object_of(event: &mut Value) -> Option<&mut Value> {
    if event.get("Records").is_some() {
        event["Records"].get_mut(0)?.get_mut("s3")
    } else if event.get("detail-type").is_some() {
        event.get_mut("detail")
    } else {
        None
    }
}

/// The key the fixture names, decoded as the worker decodes it.
fn key_of(body: &mut Value) -> Option<String> {
    with_event(body, |event| {
        let raw = object_of(event)?["object"]["key"].as_str()?.to_owned();
        datapack_worker::process::event::decode_key(&raw).ok()
    })
}

/// Puts the test's bucket, and the uploaded object's ETag, size and version, where the fixture
/// has the sample's; keeps everything else (key encoding, sequencer, times, names).
fn rewrite(body: &mut Value, bucket: &str, uploaded: Option<&Version>, size: usize) {
    with_event(body, |event| {
        if let Some(resources) = event.get_mut("resources") {
            *resources = serde_json::json!([format!("arn:aws:s3:::{bucket}")]);
        }
        let Some(holder) = object_of(event) else {
            return;
        };
        holder["bucket"]["name"] = bucket.into();
        if holder["bucket"].get("arn").is_some() {
            holder["bucket"]["arn"] = format!("arn:aws:s3:::{bucket}").into();
        }
        let Some(v) = uploaded else { return };
        let object = &mut holder["object"];
        for (field, value) in [
            ("eTag", Value::from(v.etag.clone())),
            ("etag", Value::from(v.etag.clone())),
            ("size", Value::from(size)),
            ("versionId", Value::from(v.id.clone())),
            ("version-id", Value::from(v.id.clone())),
        ] {
            if object.get(field).is_some() {
                object[field] = value;
            }
        }
    });
}

/// Switches the bucket's notification off: the fixtures are the only events.
pub(crate) async fn silence(stack: &Stack) {
    stack
        .s3
        .put_bucket_notification_configuration()
        .bucket(&stack.bucket)
        .notification_configuration(NotificationConfiguration::builder().build())
        .send()
        .await
        .unwrap();
    stack.purge().await;
}

async fn deliver(stack: &Stack, body: &str) {
    stack.send(body).await;
    stack.wait_drained(DEADLINE).await;
}

/// (etag, live) of every row of `key`.
async fn rows_of(db: &TestDb, key: &str) -> Vec<(String, bool)> {
    db.rows()
        .await
        .into_iter()
        .filter(|r| r.object_key == key)
        .map(|r| (r.etag, !r.deleted))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_public_fixture_is_recorded_or_removed_as_it_says() {
    let (stack, db) = setup("dp-fixtures").await;
    enable_versioning(&stack).await;
    silence(&stack).await;
    let worker = TestWorker::spawn(&stack, &db, &[]).await;
    let mut dead_letters = 0;
    for (name, expect) in FIXTURES {
        let mut body = fixture(name);
        let key = key_of(&mut body);
        let bytes = format!("the bytes of {name}").into_bytes();
        let uploaded = match (&key, expect) {
            (Some(key), Expect::Recorded | Expect::Removed) => Some(put(&stack, key, &bytes).await),
            _ => None,
        };
        if let (Some(key), Some(v), Expect::Removed) = (&key, &uploaded, expect) {
            // Recorded by an event older than any fixture's, then deleted in S3.
            let create = s3_event(
                "ObjectCreated:Put",
                &stack.bucket,
                key,
                Some(&v.etag),
                None,
                "1960-01-01T00:00:00.000Z",
            );
            deliver(&stack, &create).await;
            assert_eq!(
                rows_of(&db, key).await,
                vec![(v.etag.clone(), true)],
                "{name}"
            );
            stack.delete(key).await;
        }
        rewrite(&mut body, &stack.bucket, uploaded.as_ref(), bytes.len());
        deliver(&stack, &body.to_string()).await;
        match expect {
            Expect::DeadLettered => dead_letters += 1,
            Expect::Recorded => {
                let (key, v) = (key.as_deref().unwrap(), uploaded.as_ref().unwrap());
                assert_eq!(
                    rows_of(&db, key).await,
                    vec![(v.etag.clone(), true)],
                    "{name}"
                );
            }
            Expect::Removed => {
                let (key, v) = (key.as_deref().unwrap(), uploaded.as_ref().unwrap());
                assert_eq!(
                    rows_of(&db, key).await,
                    vec![(v.etag.clone(), false)],
                    "{name}"
                );
            }
            Expect::Acknowledged => {
                if let Some(key) = &key {
                    assert!(rows_of(&db, key).await.is_empty(), "{name}");
                }
            }
        }
        stack.wait_dead_letters(dead_letters, DEADLINE).await;
    }
    worker.stop().await;
    let letters = stack.take_dead_letters().await;
    assert_eq!(letters.len(), 2, "only the bodies that are not events");
    for (_, attributes) in &letters {
        assert_eq!(attributes["error_reason"], "malformed_message");
    }
}
