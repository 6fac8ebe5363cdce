//! `datapack-worker reconcile`, the real binary against moto and PostgreSQL: it finds objects
//! uploaded while notifications were lost, rows whose objects were deleted behind its back, and
//! overwritten keys, and repairs them; a dry run changes nothing; an interrupted run continues
//! from its checkpoint; a second reconciler of the same scope does nothing; beside a running
//! worker nothing is recorded twice; a versioned bucket converges to its current versions; an S3
//! Inventory report gives the same database as the listing.

use std::process::{Command, Stdio};
use std::time::Duration;

use async_compression::tokio::write::GzipEncoder;
use aws_sdk_s3::primitives::ByteStream;
use tokio::io::AsyncWriteExt;

use crate::support::db::sha256_hex;
use crate::support::reconcile_run::{command, live_keys, n, reconcile, reconcile_via, rows};
use crate::support::s3_proxy::{Action, Match, Rule, S3Proxy};
use crate::support::versioning::{enable_versioning, put};
use crate::support::{Launch, Stack, TestDb, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);

/// A stack whose notifications are lost: uploads leave no message behind.
async fn lost_notifications() -> (Stack, TestDb) {
    crate::support::setup("dp").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_and_repairs_missing_gone_and_changed_objects_and_a_dry_run_changes_nothing() {
    let (stack, db) = lost_notifications().await;
    let a = stack.put("dp/a.txt", b"alpha").await;
    let b = stack.put("dp/folder/b b.txt", b"bravo").await;
    let c = stack.put("dp/c.txt", b"charlie").await;
    // Outside the datapack scope and outside any datapack: found, refused by the key rules.
    stack.put("README", b"not a datapack file").await;
    stack.purge().await;

    let (out, dry) = reconcile(&stack, &db, &["--dry-run"]).await;
    assert!(out.status.success(), "{dry}");
    assert_eq!(n(&dry, &["differences", "missing"]), 4, "{dry}");
    assert_eq!(dry["dry_run"], true);
    assert!(dry["first_keys"]["missing"].as_array().unwrap().len() == 4);
    assert_eq!(db.count().await, 0, "a dry run writes nothing");
    let checkpoints: i64 = sqlx::query_scalar("SELECT count(*) FROM datapack_reconcile")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(checkpoints, 0, "a dry run keeps no checkpoint");

    let (out, first) = reconcile(&stack, &db, &[]).await;
    assert!(out.status.success(), "{first}");
    assert_eq!(n(&first, &["outcomes", "recorded"]), 3, "{first}");
    assert_eq!(
        n(&first, &["outcomes", "refused:invalid_key"]),
        1,
        "{first}"
    );
    assert_eq!(first["complete"], true);
    let recorded = rows(&db).await;
    assert_eq!(
        recorded,
        vec![
            ("dp/a.txt".into(), a.clone(), sha256_hex(b"alpha"), true),
            ("dp/c.txt".into(), c.clone(), sha256_hex(b"charlie"), true),
            (
                "dp/folder/b b.txt".into(),
                b.clone(),
                sha256_hex(b"bravo"),
                true
            ),
        ]
    );

    // Behind the worker's back: b deleted, c overwritten, d added.
    stack.delete("dp/folder/b b.txt").await;
    let c2 = stack.put("dp/c.txt", b"charlie, second take").await;
    let d = stack.put("dp/d.txt", b"delta").await;
    stack.purge().await;

    let (_, dry) = reconcile(&stack, &db, &["--dry-run", "--datapack", "dp"]).await;
    assert_eq!(n(&dry, &["differences", "gone"]), 1, "{dry}");
    assert_eq!(n(&dry, &["differences", "changed"]), 1, "{dry}");
    assert_eq!(n(&dry, &["differences", "missing"]), 1, "{dry}");
    assert_eq!(rows(&db).await, recorded, "a dry run changes nothing");

    let (out, second) = reconcile(&stack, &db, &["--datapack", "dp"]).await;
    assert!(out.status.success(), "{second}");
    assert_eq!(n(&second, &["outcomes", "removed"]), 1, "{second}");
    assert_eq!(n(&second, &["outcomes", "recorded"]), 2, "{second}");
    assert_eq!(
        live_keys(&db).await,
        vec![
            ("dp/a.txt".into(), a),
            ("dp/c.txt".into(), c2),
            ("dp/d.txt".into(), d)
        ]
    );
    let all = rows(&db).await;
    assert!(
        all.iter().any(|r| r.0 == "dp/c.txt" && r.1 == c && !r.3),
        "the old upload is retired, not lost: {all:?}"
    );
    assert!(all.iter().any(|r| r.0 == "dp/folder/b b.txt" && !r.3));

    let (_, third) = reconcile(&stack, &db, &["--datapack", "dp"]).await;
    assert_eq!(n(&third, &["keys_listed"]), 3, "{third}");
    assert!(
        third["differences"].as_object().unwrap().is_empty(),
        "converged: {third}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_resumes_from_its_checkpoint_and_a_second_reconciler_does_nothing() {
    let (stack, db) = lost_notifications().await;
    for i in 0..30 {
        stack
            .put(&format!("dp/f{i:02}.txt"), format!("file {i}").as_bytes())
            .await;
    }
    stack.purge().await;
    // Reads of f17 hang: the run stops inside its fourth page of five keys.
    let proxy = S3Proxy::start(crate::support::proxy::url_addr(&stack.endpoint)).await;
    proxy.add(Rule::new(
        Match::get("dp/f17.txt"),
        Action::Delay(Duration::from_secs(600)),
    ));
    let mut first = command(
        &stack,
        &db,
        &proxy.endpoint(),
        &["--page-keys", "5", "--concurrency", "2"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let cursor = wait_until("the third page's checkpoint", DEADLINE, || async {
        let cursor: Option<String> = sqlx::query_scalar("SELECT cursor FROM datapack_reconcile")
            .fetch_optional(&db.pool)
            .await
            .unwrap()
            .flatten();
        cursor.filter(|c| c.as_str() >= "dp/f14.txt")
    })
    .await;
    assert_eq!(
        cursor, "dp/f14.txt",
        "checkpointed per page, never past a page in progress"
    );

    // A second reconciler of an overlapping scope is refused while the first holds it, and
    // says so with its own exit status: busy is neither success nor failure.
    let (out, busy) = reconcile(&stack, &db, &["--datapack", "dp"]).await;
    assert_eq!(out.status.code(), Some(3), "{busy}");
    assert_eq!(busy["ended"], "busy", "{busy}");
    assert!(
        busy["busy"]
            .as_str()
            .unwrap_or_default()
            .contains("another reconcile"),
        "{busy}"
    );
    assert_eq!(n(&busy, &["keys_listed"]), 0);

    // Interrupted: it stops, keeps its checkpoint, frees the scope, and says it is incomplete.
    let status = Command::new("kill")
        .args(["-INT", &first.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::task::spawn_blocking(move || {
        let _ = first.stdout.take();
        first.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "an interrupted run exits 1");
    let recorded_before = db.count().await;
    assert!(recorded_before >= 15, "{recorded_before}");

    proxy.clear();
    let before = proxy.seen().len();
    let (out, resumed) = reconcile_via(&stack, &db, &proxy.endpoint(), &["--page-keys", "5"]).await;
    assert!(out.status.success(), "{resumed}");
    assert_eq!(resumed["resumed_after"], "dp/f14.txt", "{resumed}");
    assert_eq!(resumed["complete"], true);
    assert_eq!(
        n(&resumed, &["keys_listed"]),
        30,
        "the counts span both runs: {resumed}"
    );
    // Listed from the checkpoint on: three pages (and the versioning check), not six.
    let bucket_requests = proxy.seen()[before..]
        .iter()
        .filter(|r| r.method == "GET" && r.bucket.is_some() && r.key.is_none())
        .count();
    assert!(bucket_requests <= 5, "{bucket_requests} listing requests");
    let live = live_keys(&db).await;
    assert_eq!(live.len(), 30);
    assert_eq!(db.count().await, 30, "no upload recorded twice");
    let finished: bool =
        sqlx::query_scalar("SELECT finished_at IS NOT NULL FROM datapack_reconcile")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(finished);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beside_a_running_worker_nothing_is_recorded_twice_and_nothing_deleted_comes_back() {
    let (stack, db) = crate::support::setup("dp").await;
    let worker = Launch::new(&stack, &db, &[]).in_process().await;
    // Notifications work: the worker and the reconcile race for the same uploads.
    let mut etags = Vec::new();
    for i in 0..40 {
        etags.push(
            stack
                .put(
                    &format!("dp/race-{i:02}.txt"),
                    format!("race {i}").as_bytes(),
                )
                .await,
        );
    }
    let (out, report) = reconcile(&stack, &db, &["--concurrency", "8"]).await;
    assert!(out.status.success(), "{report}");
    db.wait_rows(40, DEADLINE).await;
    stack.wait_drained(DEADLINE).await;
    // Deleted while the worker runs: the removal's row stays deleted after another reconcile.
    stack.delete("dp/race-00.txt").await;
    wait_until("the removal recorded", DEADLINE, || async {
        rows(&db)
            .await
            .iter()
            .any(|r| r.0 == "dp/race-00.txt" && !r.3)
            .then_some(())
    })
    .await;
    let (_, after) = reconcile(&stack, &db, &[]).await;
    assert!(
        after["differences"].as_object().unwrap().is_empty(),
        "{after}"
    );
    let all = rows(&db).await;
    assert_eq!(all.len(), 40, "one row per upload: {all:?}");
    assert_eq!(all.iter().filter(|r| r.3).count(), 39);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_versioned_bucket_converges_to_its_current_versions() {
    let (stack, db) = lost_notifications().await;
    enable_versioning(&stack).await;
    put(&stack, "dp/a.txt", b"a one").await;
    let a2 = put(&stack, "dp/a.txt", b"a two").await;
    put(&stack, "dp/b.txt", b"b one").await;
    stack.delete("dp/b.txt").await; // a delete marker on top
    let c1 = put(&stack, "dp/c.txt", b"c one").await;
    let c2 = put(&stack, "dp/c.txt", b"c two").await;
    // The current version of c deleted for good: the older one is current again.
    stack
        .s3
        .delete_object()
        .bucket(&stack.bucket)
        .key("dp/c.txt")
        .version_id(&c2.id)
        .send()
        .await
        .unwrap();
    stack.purge().await;

    let (out, report) = reconcile(&stack, &db, &[]).await;
    assert!(out.status.success(), "{report}");
    assert_eq!(report["source"], "versions", "{report}");
    assert_eq!(n(&report, &["outcomes", "recorded"]), 2, "{report}");
    assert_eq!(
        live_keys(&db).await,
        vec![("dp/a.txt".into(), a2.etag), ("dp/c.txt".into(), c1.etag)]
    );
    let versions: Vec<String> = sqlx::query_scalar(
        "SELECT version_id FROM datapack_resource WHERE deleted_at IS NULL ORDER BY object_key",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(versions, [a2.id, c1.id]);

    // The marker removed: b's version is current again, and the next run ingests it.
    let markers = stack
        .s3
        .list_object_versions()
        .bucket(&stack.bucket)
        .prefix("dp/b.txt")
        .send()
        .await
        .unwrap();
    let marker = markers.delete_markers()[0].version_id().unwrap().to_owned();
    stack
        .s3
        .delete_object()
        .bucket(&stack.bucket)
        .key("dp/b.txt")
        .version_id(marker)
        .send()
        .await
        .unwrap();
    stack.purge().await;
    let (_, again) = reconcile(&stack, &db, &[]).await;
    assert_eq!(n(&again, &["differences", "missing"]), 1, "{again}");
    assert_eq!(live_keys(&db).await.len(), 3);
}

/// Writes an S3 Inventory report of `stack`'s bucket as AWS documents it (a manifest, gzipped
/// CSV files with every field quoted and keys URL-encoded) under `inventory/` in `into`, split
/// into files of `per_file` rows listed in the manifest in reverse; its manifest's URL.
async fn write_inventory(stack: &Stack, into: &str, per_file: usize) -> String {
    let listed = stack.listing().await;
    let rows: Vec<String> = listed
        .contents()
        .iter()
        .map(|o| {
            format!(
                "\"{}\",\"{}\",\"{}\",\"{}\",\"{}\"",
                stack.bucket,
                crate::support::stack::form_encode(o.key().unwrap()),
                o.size().unwrap(),
                "2026-11-30T00:00:00.000Z",
                datapack_worker::process::event::unquote_etag(o.e_tag().unwrap()),
            )
        })
        .collect();
    let mut files = Vec::new();
    for (i, chunk) in rows.chunks(per_file).enumerate() {
        let mut gz = GzipEncoder::new(Vec::new());
        gz.write_all((chunk.join("\n") + "\n").as_bytes())
            .await
            .unwrap();
        gz.shutdown().await.unwrap();
        let key = format!("inventory/{}/config/data/part-{i}.csv.gz", stack.bucket);
        stack
            .s3
            .put_object()
            .bucket(into)
            .key(&key)
            .body(ByteStream::from(gz.into_inner()))
            .send()
            .await
            .unwrap();
        files.push(serde_json::json!({"key": key, "size": 0, "MD5checksum": ""}));
    }
    files.reverse();
    let manifest = serde_json::json!({
        "sourceBucket": stack.bucket,
        "destinationBucket": format!("arn:aws:s3:::{into}"),
        "version": "2016-11-30",
        "creationTimestamp": (chrono::Utc::now().timestamp_millis()).to_string(),
        "fileFormat": "CSV",
        "fileSchema": "Bucket, Key, Size, LastModifiedDate, ETag",
        "files": files,
    });
    let key = format!(
        "inventory/{}/config/2026-12-01T00-00Z/manifest.json",
        stack.bucket
    );
    stack
        .s3
        .put_object()
        .bucket(into)
        .key(&key)
        .body(ByteStream::from(manifest.to_string().into_bytes()))
        .send()
        .await
        .unwrap();
    format!("s3://{into}/{key}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inventory_report_gives_the_same_database_as_the_listing() {
    let (stack, listing_db) = lost_notifications().await;
    let inventory_db = TestDb::new().await;
    inventory_db.add_datapack("dp").await;
    for db in [&listing_db, &inventory_db] {
        // Rows of objects deleted before the report: both sources must retire them.
        sqlx::query(
            "INSERT INTO datapack_resource (datapack_id, bucket, object_key, path, display, length,
                 etag, sha256, event_time)
             SELECT id, $1, 'dp/deleted.txt', '/', 'deleted.txt', 1, 'e0', repeat('0', 64),
                 now() - interval '1 day' FROM datapack WHERE identifier = 'dp'",
        )
        .bind(&stack.bucket)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    for (i, key) in [
        "dp/a.txt",
        "dp/raw data/été.csv",
        "dp/b+c%d.txt",
        "dp/z/deep/file.bin",
        "dp/m.txt",
    ]
    .iter()
    .enumerate()
    {
        stack.put(key, format!("body {i}").as_bytes()).await;
    }
    stack.purge().await;
    let reports = stack.inventory_bucket().await;
    let manifest = write_inventory(&stack, &reports, 2).await;

    let (out, listed) = reconcile(&stack, &listing_db, &[]).await;
    assert!(out.status.success(), "{listed}");
    let (out, inventoried) = reconcile(
        &stack,
        &inventory_db,
        &["--inventory", &manifest, "--page-keys", "2"],
    )
    .await;
    assert!(out.status.success(), "{inventoried}");
    assert_eq!(n(&inventoried, &["keys_listed"]), 5, "{inventoried}");
    assert_eq!(
        n(&inventoried, &["differences", "missing"]),
        5,
        "{inventoried}"
    );
    assert_eq!(
        n(&inventoried, &["differences", "gone"]),
        1,
        "{inventoried}"
    );
    assert_eq!(rows(&listing_db).await, rows(&inventory_db).await);
    assert_eq!(live_keys(&inventory_db).await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_deleted_objects_across_many_chunks_are_all_retired() {
    let (stack, db) = lost_notifications().await;
    let kept = stack.put("dp/kept.txt", b"kept").await;
    stack.purge().await;
    // 2,500 live rows whose objects never existed: more than two chunks of the row reader.
    sqlx::query(
        "INSERT INTO datapack_resource (datapack_id, bucket, object_key, path, display, length,
             etag, sha256, event_time)
         SELECT d.id, $1, 'dp/gone-' || lpad(i::text, 5, '0'), '/', 'x', 1, 'e' || i,
                repeat('0', 64), now() - interval '1 hour'
         FROM datapack d, generate_series(1, 2500) AS i WHERE d.identifier = 'dp'",
    )
    .bind(&stack.bucket)
    .execute(&db.pool)
    .await
    .unwrap();
    let (out, report) = reconcile(&stack, &db, &["--concurrency", "32"]).await;
    assert!(out.status.success(), "{report}");
    assert_eq!(n(&report, &["differences", "gone"]), 2500, "{report}");
    assert_eq!(n(&report, &["differences", "missing"]), 1, "{report}");
    assert_eq!(live_keys(&db).await, vec![("dp/kept.txt".into(), kept)]);
}
