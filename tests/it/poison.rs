//! Poison: bad inputs sent to one running worker, each with its documented end. Every case is
//! checked twice: where the running worker left it (the dead-letter queue with which
//! `error_reason`, or acknowledged and gone), and what the pipeline decides for it alone (the
//! exact outcome label). The table lives in docs/poison-outcomes.md; this test keeps it honest.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use crate::support::db::{sha256_hex, writer};
use crate::support::stack::s3_event;
use crate::support::{TestWorker, setup, wait_until};
use datapack_worker::process::pipeline::{Pipeline, PipelineSettings, Verdict};

const DEADLINE: Duration = Duration::from_secs(90);
const TIME: &str = "2024-05-01T10:00:00.000Z";

/// Where a message must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// In the dead-letter queue with this `error_reason`.
    DeadLetter(&'static str),
    /// Acknowledged (deleted, not dead-lettered) with this outcome (`outcome` or
    /// `outcome:reason`).
    Ack(&'static str),
}

impl End {
    /// The words docs/poison-outcomes.md uses for it.
    fn doc(self) -> String {
        match self {
            End::DeadLetter(reason) => format!("dead-letter `{reason}`"),
            End::Ack(outcome) => format!("acknowledged `{outcome}`"),
        }
    }
}

struct Case {
    name: &'static str,
    body: String,
    end: End,
}

fn case(name: &'static str, body: impl Into<String>, end: End) -> Case {
    Case {
        name,
        body: body.into(),
        end,
    }
}

/// An S3 record with every field right, to break one field at a time.
fn record(bucket: &str, key: &str) -> serde_json::Value {
    json!({
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": TIME, "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket},
               "object": {"key": key, "size": 3, "eTag": "0123456789abcdef0123456789abcdef"}}
    })
}

fn records(record: serde_json::Value) -> String {
    json!({ "Records": [record] }).to_string()
}

fn eventbridge(source: &str, detail_type: &str, bucket: &str, key: &str) -> String {
    json!({
        "version": "0", "id": "e", "detail-type": detail_type, "source": source, "account": "1",
        "time": TIME, "region": "us-east-1", "resources": [],
        "detail": {"version": "0", "bucket": {"name": bucket}, "object": {"key": key, "size": 1}}
    })
    .to_string()
}

/// Text that is valid in an SQS body (SQS refuses most control characters) but means nothing.
fn noise(seed: u64, len: usize) -> String {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len)
        .map(|_| char::from_u32(rng.u32(0x20..0xD7FF)).expect("below the surrogates"))
        .collect()
}

fn cases(bucket: &str, etag_of_orphan: &str) -> Vec<Case> {
    use End::{Ack, DeadLetter};
    let malformed = DeadLetter("malformed_message");
    let ok_key = "dp-1%2Fpoison%2Fok.txt";
    let broken = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut r = record(bucket, ok_key);
        f(&mut r);
        records(r)
    };
    vec![
        case(
            "malformed JSON",
            r#"{"Records": [{"eventName": "#,
            malformed,
        ),
        case("JSON array", "[1, 2, 3]", malformed),
        case("JSON string", r#""ObjectCreated:Put""#, malformed),
        case("JSON null", "null", malformed),
        case("empty object", "{}", malformed),
        case(
            "Records not an array",
            r#"{"Records": {"0": {}}}"#,
            malformed,
        ),
        case("empty Records", r#"{"Records": []}"#, malformed),
        case(
            "record missing eventName",
            broken(&|r| {
                r.as_object_mut().unwrap().remove("eventName");
            }),
            malformed,
        ),
        case(
            "record missing s3",
            broken(&|r| {
                r.as_object_mut().unwrap().remove("s3");
            }),
            malformed,
        ),
        case(
            "record missing key",
            broken(&|r| {
                r["s3"]["object"].as_object_mut().unwrap().remove("key");
            }),
            malformed,
        ),
        case(
            "record missing bucket",
            broken(&|r| {
                r["s3"].as_object_mut().unwrap().remove("bucket");
            }),
            malformed,
        ),
        case(
            "non-numeric size",
            broken(&|r| r["s3"]["object"]["size"] = json!("three")),
            malformed,
        ),
        case(
            "negative size",
            broken(&|r| r["s3"]["object"]["size"] = json!(-1)),
            malformed,
        ),
        case(
            "bad eventTime",
            broken(&|r| r["eventTime"] = json!("yesterday at noon")),
            malformed,
        ),
        case(
            "unknown eventName",
            broken(&|r| r["eventName"] = json!("ObjectExploded:Boom")),
            DeadLetter("unknown_event"),
        ),
        case(
            "known but ignored event (ObjectRestore:Completed)",
            broken(&|r| r["eventName"] = json!("ObjectRestore:Completed")),
            Ack("skipped:unsupported_event"),
        ),
        case(
            "eventSource not aws:s3",
            broken(&|r| r["eventSource"] = json!("aws:sqs")),
            malformed,
        ),
        case(
            "one good record and one unknown event in one message",
            json!({"Records": [record(bucket, ok_key), {
                "eventSource": "aws:s3", "eventTime": TIME, "eventName": "ObjectExploded:Boom",
                "s3": {"bucket": {"name": bucket}, "object": {"key": ok_key}}}]})
            .to_string(),
            DeadLetter("unknown_event"),
        ),
        case(
            "SNS envelope with non-JSON Message",
            json!({"Type": "Notification", "MessageId": "m", "Message": "not json at all"})
                .to_string(),
            malformed,
        ),
        case(
            "SNS envelope with Message not a string",
            json!({"Type": "Notification", "MessageId": "m",
                   "Message": {"Records": [record(bucket, ok_key)]}})
            .to_string(),
            malformed,
        ),
        case(
            "EventBridge with unknown detail-type",
            eventbridge("aws.s3", "Bucket Exploded", bucket, "dp-1/x.txt"),
            DeadLetter("unknown_event"),
        ),
        case(
            "EventBridge Object Restore Completed",
            eventbridge("aws.s3", "Object Restore Completed", bucket, "dp-1/x.txt"),
            Ack("skipped:unsupported_event"),
        ),
        case(
            "EventBridge from another source",
            eventbridge(
                "aws.ec2",
                "EC2 Instance State-change Notification",
                bucket,
                "dp-1/x.txt",
            ),
            malformed,
        ),
        case(
            "key not UTF-8 after decoding (%FF)",
            records(record(bucket, "dp-1%2F%FF%FE.txt")),
            DeadLetter("invalid_key"),
        ),
        case(
            "key without a datapack segment",
            records(record(bucket, "rootless.txt")),
            DeadLetter("invalid_key"),
        ),
        case(
            "key starting with / (empty datapack)",
            records(record(bucket, "%2Ffile.txt")),
            DeadLetter("invalid_key"),
        ),
        case(
            "key with NUL (%00)",
            records(record(bucket, "dp-1%2Fa%00b.txt")),
            DeadLetter("invalid_key"),
        ),
        case(
            "folder placeholder",
            records(record(bucket, "dp-1%2Ffolder%2F")),
            Ack("skipped:folder_placeholder"),
        ),
        case(
            "bucket we do not serve",
            records(record("someone-elses-bucket", ok_key)),
            Ack("skipped:foreign_bucket"),
        ),
        case(
            "object that does not exist",
            records(record(bucket, "dp-1%2Fpoison%2Fnever-uploaded.txt")),
            Ack("object_gone"),
        ),
        case(
            "etag differs from the object's",
            s3_event(
                "ObjectCreated:Put",
                bucket,
                "dp-1/poison/etag.txt",
                Some(&format!("{:x}", fastrand::u128(..))),
                None,
                TIME,
            ),
            Ack("superseded"),
        ),
        case(
            "unknown datapack",
            s3_event(
                "ObjectCreated:Put",
                bucket,
                "dp-nowhere/orphan.txt",
                Some(etag_of_orphan),
                None,
                TIME,
            ),
            DeadLetter("unknown_datapack"),
        ),
        case(
            "s3:TestEvent",
            r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2024-05-01T10:00:00.000Z","Bucket":"x"}"#,
            Ack("skipped:test_event"),
        ),
        case(
            "huge body (250 KiB of JSON padding)",
            json!({"padding": "x".repeat(250 * 1024)}).to_string(),
            malformed,
        ),
        case(
            "huge S3 notification (250 KiB record, object missing)",
            {
                let mut r = record(bucket, "dp-1%2Fpoison%2Fhuge.txt");
                r["padding"] = json!("y".repeat(250 * 1024));
                records(r)
            },
            Ack("object_gone"),
        ),
        case("random text", noise(7, 2000), malformed),
        case("whitespace only", " \n\t ", malformed),
        case(
            "deeply nested arrays",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            malformed,
        ),
        case(
            "deeply nested Records",
            format!(
                r#"{{"Records": {}1{}}}"#,
                r#"[{"s3":"#.repeat(2_000),
                "}]".repeat(2_000)
            ),
            malformed,
        ),
    ]
}

/// What the pipeline alone decides for a body, in the table's words.
fn verdict_end(verdict: Verdict) -> End {
    let label = |o: datapack_worker::disposition::Outcome| match o.label() {
        (outcome, "none") => outcome.to_owned(),
        (outcome, reason) => format!("{outcome}:{reason}"),
    };
    match verdict {
        Verdict::DeadLetter { failure, .. } => End::DeadLetter(failure.reason()),
        Verdict::Ack(outcomes) => {
            let labels: Vec<String> = outcomes.into_iter().map(|d| label(d.outcome)).collect();
            End::Ack(Box::leak(labels.join(",").into_boxed_str()))
        }
        Verdict::Retry(failure) => panic!("poison must not be retried: {failure}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_messages_end_where_documented_and_the_worker_keeps_serving() {
    let (stack, db) = setup("dp-1").await;
    // Objects some cases refer to; their own notifications are taken off the queue so only the
    // poison reaches the worker.
    stack.put("dp-1/poison/etag.txt", b"real bytes").await;
    let orphan = stack.put("dp-nowhere/orphan.txt", b"orphan").await;
    while !stack.take().await.is_empty() {}

    let cases = cases(&stack.bucket, &orphan);
    assert!(cases.len() >= 25, "{} cases", cases.len());

    // The pipeline alone, per body: the exact outcome, without the queue in the way.
    let (writer, health, _watchdog) = writer(&db, 8);
    let pipeline = Pipeline {
        s3: datapack_worker::aws::s3(&stack.sdk),
        writer,
        settings: PipelineSettings {
            buckets: vec![stack.bucket.clone()],
            required_uploaded_by: Some("presigned-url".into()),
            ranged: datapack_worker::process::fetch::Ranged::off(),
            checksums: Default::default(),
        },
        health: health.clone(),
        canary: Default::default(),
    };
    for c in &cases {
        let got = verdict_end(pipeline.process(&c.body).await);
        assert_eq!(got, c.end, "pipeline verdict for {:?}", c.name);
    }

    // The running worker: every case through the queue.
    let worker = TestWorker::spawn(&stack, &db, &[]).await;
    let mut ids: HashMap<String, &Case> = HashMap::new();
    for c in &cases {
        let id = stack
            .sqs
            .send_message()
            .queue_url(&stack.queue_url)
            .message_body(&c.body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("SQS accepts {:?}: {e:?}", c.name))
            .message_id
            .unwrap();
        ids.insert(id, c);
    }
    let want_letters = cases
        .iter()
        .filter(|c| matches!(c.end, End::DeadLetter(_)))
        .count() as u64;
    wait_until("every poison message settled", DEADLINE, || async {
        (stack.is_drained().await && stack.dlq_depth().await.0 >= want_letters).then_some(())
    })
    .await;

    let letters = stack.take_dead_letters().await;
    let mut lettered: HashMap<String, String> = HashMap::new();
    for (body, attrs) in &letters {
        let source = &attrs["source_message_id"];
        let c = ids
            .get(source)
            .unwrap_or_else(|| panic!("a dead letter from no case: {attrs:?}"));
        assert_eq!(body, &c.body, "{:?} is dead-lettered unchanged", c.name);
        assert!(
            !attrs["error_detail"].is_empty(),
            "{:?} has a detail",
            c.name
        );
        let previous = lettered.insert(source.clone(), attrs["error_reason"].clone());
        assert!(previous.is_none(), "{:?} dead-lettered twice", c.name);
    }
    for (id, c) in &ids {
        match c.end {
            End::DeadLetter(reason) => assert_eq!(
                lettered.get(id).map(String::as_str),
                Some(reason),
                "{:?} ends in the dead-letter queue",
                c.name
            ),
            End::Ack(_) => assert!(
                !lettered.contains_key(id),
                "{:?} is acknowledged, not dead-lettered",
                c.name
            ),
        }
    }
    assert_eq!(db.count().await, 0, "no poison became a row");

    // Still serving: a valid upload after all the poison is recorded.
    assert!(!worker.task.is_finished(), "the worker is still running");
    stack.put("dp-1/poison/after.txt", b"still here").await;
    wait_until("the upload after the poison", DEADLINE, || async {
        (db.count().await == 1).then_some(())
    })
    .await;
    assert_eq!(db.rows().await[0].sha256, sha256_hex(b"still here"));
    worker.stop().await;

    // The documented table says the same.
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/poison-outcomes.md"
    ))
    .expect("docs/poison-outcomes.md");
    for c in &cases {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| {} |", c.name)))
            .unwrap_or_else(|| panic!("docs/poison-outcomes.md has no row for {:?}", c.name));
        assert!(
            row.contains(&c.end.doc()),
            "docs/poison-outcomes.md says {row:?} for {:?}, the worker does {}",
            c.name,
            c.end.doc()
        );
    }
    println!(
        "{} poison cases: {} dead-lettered, {} acknowledged; the worker kept serving",
        cases.len(),
        letters.len(),
        cases.len() - letters.len()
    );
}
