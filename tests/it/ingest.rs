//! The main path, end to end: uploads become rows, and every documented outcome happens.

use std::time::Duration;

use crate::support::db::{ResourceRow, sha256_hex};
use crate::support::stack::s3_event;
use crate::support::{Stack, TestDb, TestWorker, setup};

const DEADLINE: Duration = Duration::from_secs(60);

/// Runs a worker over what is queued until there are `rows` rows and the queue is empty, then
/// stops it; returns the rows.
async fn record_backlog(stack: &Stack, db: &TestDb, rows: i64) -> Vec<ResourceRow> {
    let worker = TestWorker::spawn(stack, db, &[]).await;
    db.wait_rows(rows, DEADLINE).await;
    stack.wait_drained(DEADLINE).await;
    worker.stop().await;
    db.rows().await
}

/// Runs a worker over what is queued until `letters` dead letters are visible and the queue is
/// empty, then stops it.
async fn dead_letter_backlog(stack: &Stack, db: &TestDb, letters: u64) {
    let worker = TestWorker::spawn(stack, db, &[]).await;
    stack.wait_dead_letters(letters, DEADLINE).await;
    stack.wait_drained(DEADLINE).await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn records_presigned_uploads_with_awkward_keys() {
    let (stack, db) = setup("dp-1").await;
    let worker = TestWorker::spawn(&stack, &db, &[]).await;
    let files: [(&str, &str, &[u8]); 6] = [
        ("raw data/2024", "file.csv", b"a,b\n1,2\n"),
        ("/", "a+b=c.txt", b"plus"),
        ("100%", "50% off.txt", b"percent"),
        ("ảnh/tài liệu", "ghi chú.txt", "Xin chào".as_bytes()),
        ("数据", "文件 一.txt", "你好".as_bytes()),
        ("deep/a/b/c", "x~y (1).bin", &[0u8, 1, 2, 255]),
    ];
    for (path, file, body) in files {
        stack
            .put_presigned("dp-1", path, file, "Nguyễn Văn A", "a@example.com", body)
            .await;
    }
    db.wait_rows(files.len() as i64, DEADLINE).await;
    let rows = db.rows().await;
    for (path, file, body) in files {
        let want_path = format!("/{}", path.trim_matches('/'));
        let row = rows
            .iter()
            .find(|r| r.display == file)
            .unwrap_or_else(|| panic!("no row for {file}"));
        assert_eq!(row.datapack, "dp-1");
        assert_eq!(row.path, want_path);
        assert_eq!(row.sha256, sha256_hex(body));
        assert_eq!(row.length, body.len() as i64);
        assert_eq!(row.submitter_name.as_deref(), Some("Nguyễn Văn A"));
        assert_eq!(row.submitter_email.as_deref(), Some("a@example.com"));
        assert!(!row.etag.starts_with('"'));
        assert!(!row.deleted);
    }
    stack.wait_drained(DEADLINE).await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_delivery_is_one_row() {
    let (stack, db) = setup("dp-1").await;
    stack.put("dp-1/dup.txt", b"same bytes").await;
    let event = stack.take().await.pop().expect("the upload's event");
    // The same event three times: redelivery, or a replay by hand.
    for _ in 0..3 {
        stack.send(&event).await;
    }
    let rows = record_backlog(&stack, &db, 1).await;
    assert_eq!(rows.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_share_a_queue_without_duplicates() {
    let (stack, db) = setup("dp-1").await;
    let a = TestWorker::spawn(&stack, &db, &["--worker-concurrency", "4"]).await;
    let b = TestWorker::spawn(&stack, &db, &["--worker-concurrency", "4"]).await;
    let mut expected = Vec::new();
    for i in 0..60 {
        let body = format!("object {i}");
        stack
            .put(&format!("dp-1/many/{i}.txt"), body.as_bytes())
            .await;
        expected.push(sha256_hex(body.as_bytes()));
    }
    // Every event once more, as if delivered twice to the two replicas.
    db.wait_rows(60, DEADLINE).await;
    stack.wait_drained(DEADLINE).await;
    a.stop().await;
    b.stop().await;
    let mut got: Vec<String> = db.rows().await.into_iter().map(|r| r.sha256).collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn multipart_upload_is_one_row_with_the_right_hash() {
    let (stack, db) = setup("dp-1").await;
    let part = vec![7u8; 5 * 1024 * 1024];
    let tail = b"the end".to_vec();
    stack
        .put_multipart("dp-1/big/multipart.bin", [part.clone(), tail.clone()])
        .await;
    let rows = record_backlog(&stack, &db, 1).await;
    assert_eq!(
        rows.len(),
        1,
        "moto's two events for one multipart upload are one row"
    );
    let whole: Vec<u8> = part.iter().chain(tail.iter()).copied().collect();
    assert_eq!(rows[0].sha256, sha256_hex(&whole));
    assert!(
        rows[0].etag.ends_with("-2"),
        "multipart ETag: {}",
        rows[0].etag
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_byte_object() {
    let (stack, db) = setup("dp-1").await;
    stack.put("dp-1/empty.txt", b"").await;
    let worker = TestWorker::spawn(&stack, &db, &[]).await;
    db.wait_rows(1, DEADLINE).await;
    worker.stop().await;
    let row = &db.rows().await[0];
    assert_eq!(row.length, 0);
    assert_eq!(row.sha256, sha256_hex(b""));
}

#[tokio::test(flavor = "multi_thread")]
async fn sns_and_eventbridge_envelopes() {
    let (stack, db) = setup("dp-1").await;
    let etag_a = stack.put("dp-1/via sns.txt", b"sns").await;
    let etag_b = stack.put("dp-1/via eventbridge.txt", b"eventbridge").await;
    stack.purge().await;
    let inner = s3_event(
        "ObjectCreated:Put",
        &stack.bucket,
        "dp-1/via sns.txt",
        Some(&etag_a),
        None,
        "2024-05-01T10:00:00.000Z",
    );
    stack.send(&serde_json::json!({"Type": "Notification", "MessageId": "1", "TopicArn": "arn:aws:sns:us-east-1:1:t", "Message": inner}).to_string()).await;
    let eventbridge = serde_json::json!({
        "version": "0", "id": "e", "detail-type": "Object Created", "source": "aws.s3", "account": "1",
        "time": "2024-05-01T10:00:00Z", "region": "us-east-1", "resources": [],
        "detail": {"version": "0", "bucket": {"name": stack.bucket}, "object": {"key": "dp-1/via+eventbridge.txt", "size": 11, "etag": etag_b}, "reason": "PutObject"}
    });
    stack.send(&eventbridge.to_string()).await;
    stack.send(r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2024-05-01T10:00:00.000Z","Bucket":"x"}"#).await;
    let rows = record_backlog(&stack, &db, 2).await;
    assert_eq!(
        rows.iter()
            .find(|r| r.display == "via sns.txt")
            .unwrap()
            .sha256,
        sha256_hex(b"sns")
    );
    assert_eq!(
        rows.iter()
            .find(|r| r.display == "via eventbridge.txt")
            .unwrap()
            .sha256,
        sha256_hex(b"eventbridge")
    );
    assert_eq!(
        stack.dlq_depth().await,
        (0, 0),
        "the test event is acknowledged, not dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_before_processing_leaves_no_live_row() {
    let (stack, db) = setup("dp-1").await;
    stack.put("dp-1/gone.txt", b"short-lived").await;
    stack.delete("dp-1/gone.txt").await;
    let worker = TestWorker::spawn(&stack, &db, &[]).await;
    stack.wait_drained(DEADLINE).await;
    worker.stop().await;
    assert!(
        db.rows().await.iter().all(|r| r.deleted),
        "no live row for a deleted object"
    );
    assert_eq!(stack.dlq_depth().await, (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn overwritten_before_processing_records_only_the_newest() {
    let (stack, db) = setup("dp-1").await;
    stack.put("dp-1/doc.txt", b"first version").await;
    stack.put("dp-1/doc.txt", b"second version").await;
    let rows = record_backlog(&stack, &db, 1).await;
    assert_eq!(
        rows.len(),
        1,
        "the first event finds its bytes gone (412) and records nothing"
    );
    assert_eq!(rows[0].sha256, sha256_hex(b"second version"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_datapack_is_dead_lettered_with_its_reason() {
    let (stack, db) = setup("dp-1").await;
    stack.put("dp-missing/x.txt", b"orphan").await;
    let original = stack.take().await.pop().unwrap();
    stack.send(&original).await;
    dead_letter_backlog(&stack, &db, 1).await;
    let letters = stack.take_dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].0, original, "the body is unchanged");
    assert_eq!(letters[0].1["error_reason"], "unknown_datapack");
    assert!(!letters[0].1["error_detail"].is_empty());
    assert_eq!(db.count().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_datapack_can_be_created_instead() {
    let (stack, db) = setup("dp-1").await;
    stack.put("dp-new/x.txt", b"welcome").await;
    let worker = TestWorker::spawn(&stack, &db, &["--create-missing-datapacks"]).await;
    db.wait_rows(1, DEADLINE).await;
    worker.stop().await;
    assert_eq!(db.rows().await[0].datapack, "dp-new");
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_without_presigned_metadata_are_skipped_unless_the_filter_is_off() {
    let (stack, db) = setup("dp-1").await;
    stack.put_with("dp-1/direct.txt", b"direct", None).await;
    stack.put("dp-1/marker.txt", b"marker").await;
    let rows = record_backlog(&stack, &db, 1).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].display, "marker.txt");

    let (stack, db) = setup("dp-1").await;
    stack.put_with("dp-1/direct.txt", b"direct", None).await;
    let worker = TestWorker::spawn(&stack, &db, &["--require-uploaded-by", "off"]).await;
    db.wait_rows(1, DEADLINE).await;
    worker.stop().await;
    assert_eq!(db.rows().await[0].submitter_name, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn folder_placeholders_and_rootless_keys() {
    let (stack, db) = setup("dp-1").await;
    stack.put("dp-1/folder/", b"").await;
    stack.put("rootless.txt", b"no datapack").await;
    stack.put("dp-1/ok.txt", b"ok").await;
    // The rootless key.
    dead_letter_backlog(&stack, &db, 1).await;
    let rows = db.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].display, "ok.txt");
    assert_eq!(
        stack.take_dead_letters().await[0].1["error_reason"],
        "invalid_key"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn removal_marks_rows_deleted() {
    let (stack, db) = setup("dp-1").await;
    let worker = TestWorker::spawn(&stack, &db, &[]).await;
    stack.put("dp-1/bye.txt", b"bye").await;
    db.wait_rows(1, DEADLINE).await;
    stack.delete("dp-1/bye.txt").await;
    db.wait_removed(DEADLINE).await;
    worker.stop().await;
}
