//! `datapack-worker reconcile` against inputs that used to hurt it, the real binary against moto
//! and PostgreSQL: a stale inventory changes no row a newer event or listing set; a report
//! without its creation time is refused; keys PostgreSQL cannot hold are skipped and counted and
//! the lease is always released; a key with a control character is listed, ingested, and printed
//! escaped; hostile gzip files and manifests end with a clear refusal in bounded memory.

use std::process::{Command, Stdio};
use std::time::Duration;

use async_compression::tokio::write::GzipEncoder;
use aws_sdk_s3::primitives::ByteStream;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::support::Stack;
use crate::support::reconcile_run::{command, live_keys, n, reconcile, rows};
use crate::support::versioning::{Version, enable_versioning, put};
use crate::support::worker::{moto_env, status_kib};

/// A reconcile's resident memory must stay under this whatever the input (the binary itself,
/// its runtime and the AWS SDK take a few tens of MiB).
const PEAK_MIB: u64 = 160;

const VERSIONED_SCHEMA: &str =
    "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag";
const CURRENT_SCHEMA: &str = "Bucket, Key, Size, LastModifiedDate, ETag";

async fn upload(stack: &Stack, bucket: &str, key: &str, body: Vec<u8>) {
    stack
        .s3
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body))
        .send()
        .await
        .unwrap();
}

async fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = GzipEncoder::new(Vec::new());
    gz.write_all(bytes).await.unwrap();
    gz.shutdown().await.unwrap();
    gz.into_inner()
}

/// Uploads one data file per entry of `files` (already gzipped) and a manifest listing them,
/// with `creation` as its creationTimestamp (`None`: left out); the manifest's URL.
async fn inventory(
    stack: &Stack,
    reports: &str,
    schema: &str,
    files: Vec<Vec<u8>>,
    creation: Option<String>,
) -> String {
    let mut listed = Vec::new();
    for (i, body) in files.into_iter().enumerate() {
        let key = format!("inventory/{}/config/data/part-{i}.csv.gz", stack.bucket);
        upload(stack, reports, &key, body).await;
        listed.push(serde_json::json!({"key": key, "size": 0, "MD5checksum": ""}));
    }
    let mut manifest = serde_json::json!({
        "sourceBucket": stack.bucket,
        "destinationBucket": format!("arn:aws:s3:::{reports}"),
        "version": "2016-11-30",
        "fileFormat": "CSV",
        "fileSchema": schema,
        "files": listed,
    });
    if let Some(creation) = creation {
        manifest["creationTimestamp"] = Value::String(creation);
    }
    let key = format!("inventory/{}/config/manifest.json", stack.bucket);
    upload(stack, reports, &key, manifest.to_string().into_bytes()).await;
    format!("s3://{reports}/{key}")
}

fn now_ms() -> String {
    chrono::Utc::now().timestamp_millis().to_string()
}

/// One CSV row of a report of current versions.
fn current_row(bucket: &str, encoded_key: &str, etag: &str) -> String {
    format!("\"{bucket}\",\"{encoded_key}\",\"5\",\"2026-11-30T00:00:00.000Z\",\"{etag}\"\n")
}

/// Runs a reconcile, sampling its peak resident memory (VmHWM) until it exits: its exit code,
/// JSON report (if any), stderr and peak in MiB.
async fn measured(mut command: Command) -> (Option<i32>, Value, String, u64) {
    tokio::task::spawn_blocking(move || {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut peak = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            peak = peak.max(status_kib(pid, "VmHWM:"));
            if child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the reconcile did not end in time"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let output = child.wait_with_output().unwrap();
        let report = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        (
            output.status.code(),
            report,
            String::from_utf8_lossy(&output.stderr).into_owned(),
            peak / 1024,
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_inventory_changes_no_row_that_a_newer_event_or_listing_set() {
    let (stack, db) = crate::support::setup("dp").await;
    enable_versioning(&stack).await;
    let k1 = put(&stack, "dp/k.txt", b"k one").await;
    let del1 = put(&stack, "dp/del.txt", b"deleted later").await;
    stack.purge().await;
    let (out, first) = reconcile(&stack, &db, &[]).await;
    assert!(out.status.success(), "{first}");
    // The report S3 would have taken now: the V1s are latest.
    let taken = now_ms();
    let row = |key: &str, v: &Version| {
        format!(
            "\"{}\",\"{key}\",\"{}\",\"true\",\"false\",\"5\",\"2026-11-30T00:00:00.000Z\",\"{}\"\n",
            stack.bucket, v.id, v.etag
        )
    };
    let csv = row("dp/del.txt", &del1) + &row("dp/k.txt", &k1);

    // Later: V2 of k, del deleted (a marker on top); a listing reconcile agrees.
    let k2 = put(&stack, "dp/k.txt", b"k two").await;
    stack.delete("dp/del.txt").await;
    stack.purge().await;
    let (out, agreed) = reconcile(&stack, &db, &[]).await;
    assert!(out.status.success(), "{agreed}");
    assert_eq!(
        live_keys(&db).await,
        vec![("dp/k.txt".into(), k2.etag.clone())]
    );
    let before = rows(&db).await;

    // The old report arrives: it changes nothing.
    let reports = stack.inventory_bucket().await;
    let manifest = inventory(
        &stack,
        &reports,
        VERSIONED_SCHEMA,
        vec![gzip(csv.as_bytes()).await],
        Some(taken),
    )
    .await;
    let (out, stale) = reconcile(&stack, &db, &["--inventory", &manifest]).await;
    assert!(out.status.success(), "{stale}");
    assert_eq!(
        rows(&db).await,
        before,
        "a stale inventory changed rows: {stale}"
    );
    assert_eq!(n(&stale, &["confirmed_present"]), 2, "{stale}");
    assert!(stale["outcomes"].as_object().unwrap().is_empty(), "{stale}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_without_a_creation_time_or_with_a_missing_file_is_refused_by_name() {
    let (stack, db) = crate::support::setup("dp").await;
    stack.put("dp/a.txt", b"alpha").await;
    stack.purge().await;
    let reports = stack.inventory_bucket().await;
    let csv = current_row(&stack.bucket, "dp/a.txt", "e");
    let manifest = inventory(
        &stack,
        &reports,
        CURRENT_SCHEMA,
        vec![gzip(csv.as_bytes()).await],
        None,
    )
    .await;
    let (out, report) = reconcile(&stack, &db, &["--inventory", &manifest]).await;
    assert_eq!(out.status.code(), Some(2), "{report}");
    assert_eq!(report["ended"], "refused", "{report}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("manifest.json has no creationTimestamp"),
        "{stderr}"
    );
    assert_eq!(db.count().await, 0);

    // A manifest naming a data file that is not there: the error names it.
    let missing = format!("s3://{reports}/inventory/gone.csv.gz");
    let manifest = serde_json::json!({
        "sourceBucket": stack.bucket,
        "fileFormat": "CSV",
        "fileSchema": CURRENT_SCHEMA,
        "creationTimestamp": now_ms(),
        "files": [{"key": "inventory/gone.csv.gz"}],
    });
    upload(
        &stack,
        &reports,
        "inventory/m2.json",
        manifest.to_string().into_bytes(),
    )
    .await;
    let url = format!("s3://{reports}/inventory/m2.json");
    let (out, report) = reconcile(&stack, &db, &["--inventory", &url]).await;
    assert!(!out.status.success(), "{report}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&missing), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_postgresql_cannot_hold_are_skipped_and_counted_and_the_lease_is_released() {
    let (stack, db) = crate::support::setup("dp").await;
    let a = stack.put("dp/a.txt", b"alpha").await;
    let d = stack.put("dp/d.txt", b"delta").await;
    stack.purge().await;
    let reports = stack.inventory_bucket().await;
    // One NUL key ends a page (one key per page), another ends the report.
    let csv = [
        current_row(&stack.bucket, "dp/a.txt", &a),
        current_row(&stack.bucket, "dp/b%00c.txt", "e"),
        current_row(&stack.bucket, "dp/d.txt", &d),
        current_row(&stack.bucket, "dp/z%00", "e"),
    ]
    .concat();
    let manifest = inventory(
        &stack,
        &reports,
        CURRENT_SCHEMA,
        vec![gzip(csv.as_bytes()).await],
        Some(now_ms()),
    )
    .await;
    let args = ["--inventory", manifest.as_str(), "--page-keys", "1"];
    let (out, report) = reconcile(&stack, &db, &args).await;
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(n(&report, &["keys_listed"]), 4, "{report}");
    assert_eq!(
        n(&report, &["outcomes", "skipped:unstorable_key"]),
        2,
        "{report}"
    );
    assert_eq!(n(&report, &["outcomes", "recorded"]), 2, "{report}");
    assert_eq!(
        report["first_keys"]["unstorable_key"],
        serde_json::json!([r"dp/b\x00c.txt", r"dp/z\x00"]),
    );
    // Right after, the scope is free: the next run is not busy, and finds nothing to repair.
    let (out, again) = reconcile(&stack, &db, &args).await;
    assert_eq!(out.status.code(), Some(0), "{again}");
    assert!(again["busy"].is_null(), "{again}");
    assert!(
        again["differences"].as_object().unwrap().is_empty(),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_a_control_character_is_listed_ingested_and_printed_escaped() {
    let (stack, db) = crate::support::setup("dp").await;
    let odd = "dp/odd\u{1}name.txt";
    let etag = stack.put(odd, b"odd").await;
    stack.put("dp/plain.txt", b"plain").await;
    stack.purge().await;

    // The text report names the key escaped: no raw control character reaches the terminal.
    let mut text = Command::new(env!("CARGO_BIN_EXE_datapack-worker"));
    moto_env(&mut text, &stack.endpoint).args([
        "reconcile",
        "--database-url",
        &db.url,
        "--s3-bucket",
        &stack.bucket,
        "--dry-run",
        "--progress",
        "log",
    ]);
    let text = tokio::task::spawn_blocking(move || text.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(text.status.success(), "{stdout}");
    assert!(stdout.contains(r"dp/odd\x01name.txt"), "{stdout}");
    assert!(!stdout.contains('\u{1}'), "{stdout}");

    let (out, report) = reconcile(&stack, &db, &[]).await;
    assert!(out.status.success(), "{report}");
    assert_eq!(n(&report, &["outcomes", "recorded"]), 2, "{report}");
    assert!(
        report["first_keys"]["missing"]
            .as_array()
            .unwrap()
            .contains(&Value::String(r"dp/odd\x01name.txt".into())),
        "{report}"
    );
    assert!(live_keys(&db).await.contains(&(odd.to_owned(), etag)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inventory_files_are_refused_in_bounded_memory() {
    let (stack, db) = crate::support::setup("dp").await;
    let reports = stack.inventory_bucket().await;
    let refused = |case: &str, code: Option<i32>, report: &Value, stderr: &str, peak: u64| {
        assert_eq!(code, Some(2), "{case}: {report} {stderr}");
        assert_eq!(report["ended"], "refused", "{case}: {report}");
        assert!(peak < PEAK_MIB, "{case}: peak {peak} MiB");
        eprintln!("{case}: refused, peak {peak} MiB");
    };

    // 1.2 million rows of one key, as gzip members of 10,000 rows each.
    let block = current_row(&stack.bucket, "dp/same.txt", "e").repeat(10_000);
    let member = gzip(block.as_bytes()).await;
    let manifest = inventory(
        &stack,
        &reports,
        CURRENT_SCHEMA,
        vec![member.repeat(120)],
        Some(now_ms()),
    )
    .await;
    let args = ["--inventory", manifest.as_str()];
    let (code, report, stderr, peak) = measured(command(&stack, &db, &stack.endpoint, &args)).await;
    refused("rows of one key", code, &report, &stderr, peak);
    assert!(
        stderr.contains("more than 1000000 rows for the key \"dp/same.txt\""),
        "{stderr}"
    );

    // One 256 MiB line without a newline.
    let member = gzip(&vec![b'a'; 1 << 20]).await;
    let manifest = inventory(
        &stack,
        &reports,
        CURRENT_SCHEMA,
        vec![member.repeat(256)],
        Some(now_ms()),
    )
    .await;
    let args = ["--inventory", manifest.as_str()];
    let (code, report, stderr, peak) = measured(command(&stack, &db, &stack.endpoint, &args)).await;
    refused("a line without end", code, &report, &stderr, peak);
    assert!(
        stderr.contains("line 1 is longer than 65536 bytes"),
        "{stderr}"
    );

    // A 40 MiB manifest.
    let mut big = b"{\"files\": [".to_vec();
    big.extend(std::iter::repeat_n(b' ', 40 << 20));
    big.extend(b"]}");
    upload(&stack, &reports, "inventory/big.json", big).await;
    let url = format!("s3://{reports}/inventory/big.json");
    let args = ["--inventory", url.as_str()];
    let (code, report, stderr, peak) = measured(command(&stack, &db, &stack.endpoint, &args)).await;
    refused("a huge manifest", code, &report, &stderr, peak);
    assert!(stderr.contains("is larger than 16777216 bytes"), "{stderr}");
}
