//! What only a real process shows: signals and exit codes, memory while hashing a large
//! object, and start-up errors that never print a secret.

use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::support::scrape::metric;
use crate::support::worker::output_ok;
use crate::support::{BinaryWorker, Stack, setup, wait_until};

const MIB: usize = 1024 * 1024;

/// Uploads `parts` × `part_mib` MiB of pseudo-random bytes as one multipart object and returns
/// its SHA-256. Generated part by part, so the test itself stays small too.
async fn upload_large(stack: &Stack, key: &str, parts: usize, part_mib: usize) -> String {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut hasher = Sha256::new();
    let bodies = (0..parts).map(|_| {
        let mut body = vec![0u8; part_mib * MIB];
        rng.fill(&mut body);
        hasher.update(&body);
        body
    });
    stack.put_multipart(key, bodies).await;
    datapack_worker::process::fetch::hex(&hasher.finalize())
}

/// Waits until the worker reports a message in flight (it is hashing the object).
async fn wait_in_flight(worker: &BinaryWorker) {
    wait_until("a message in flight", Duration::from_secs(60), || async {
        let scrape = worker.http.try_scrape().await?;
        (metric(&scrape, "datapack_worker_in_flight_messages") >= 1.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_releases_or_finishes_in_flight_work_and_a_256_mib_object_hashes_in_bounded_memory()
{
    let (stack, db) = setup("dp").await;
    let want = upload_large(&stack, "dp/large/256mib.bin", 8, 32).await;
    // moto sends two events for a multipart upload; both name the same bytes.

    // No grace: SIGTERM while hashing hands the message back at once and exits 0.
    let mut impatient = BinaryWorker::spawn(
        &stack,
        &db,
        &["--shutdown-grace-secs", "0", "--worker-concurrency", "16"],
    )
    .await;
    wait_in_flight(&impatient).await;
    impatient.signal("TERM");
    let status = impatient.wait(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(db.count().await, 0, "nothing committed");
    wait_until(
        "the released message visible again",
        Duration::from_secs(10),
        || async { (stack.depth().await.0 >= 1).then_some(()) },
    )
    .await;

    // With a grace period: SIGTERM while hashing finishes the object, commits, exits 0.
    let mut patient = BinaryWorker::spawn(
        &stack,
        &db,
        &["--shutdown-grace-secs", "60", "--worker-concurrency", "16"],
    )
    .await;
    wait_in_flight(&patient).await;
    patient.signal("TERM");
    let mut peak_kib = 0;
    let status = loop {
        if let Some(status) = patient.child.try_wait().unwrap() {
            break status;
        }
        peak_kib = peak_kib.max(patient.peak_rss_kib());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status:?}");
    let rows = db.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].sha256, want);
    assert_eq!(rows[0].length, 256 * MIB as i64);
    println!("peak RSS while hashing 256 MiB: {} MiB", peak_kib / 1024);
    assert!(
        peak_kib < 96 * 1024,
        "peak RSS {peak_kib} KiB: the body must stream, not buffer"
    );
}

/// `reconcile` reads the bucket as `run` does: `S3_BUCKET`, else the seed's `FILESYSTEM_S3_BUCKET`;
/// its own ranges come from the same table as `run`'s.
#[test]
fn reconcile_reads_the_seed_bucket_and_checks_its_ranges() {
    let bin = env!("CARGO_BIN_EXE_datapack-worker");
    let reconcile = |envs: &[(&str, &str)]| bare(bin, &["reconcile", "--dry-run"], envs);
    let url = ("DATABASE_URL", "postgres://app@127.0.0.1:1/db");
    // A value checked only after the bucket is known: refused by name once the bucket is found.
    let late = ("WORKER_CONCURRENCY", "0");

    let (code, err) = reconcile(&[url, late]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("S3_BUCKET"),
        "no bucket must be refused: {err}"
    );

    let (code, err) = reconcile(&[url, late, ("FILESYSTEM_S3_BUCKET", "uploads")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("WORKER_CONCURRENCY") && !err.contains("S3_BUCKET"),
        "the seed's bucket must be read: {err}"
    );

    for (name, value) in [
        ("RECONCILE_CONCURRENCY", "0"),
        ("RECONCILE_CONCURRENCY", "257"),
    ] {
        let (code, err) = reconcile(&[url, ("S3_BUCKET", "uploads"), (name, value)]);
        assert_eq!(code, Some(2), "{name}={value}: {err}");
        assert!(err.contains(name), "{name}={value}: {err}");
    }
}

/// `RUNTIME_THREADS` is checked before any command starts, and a value in range lets it start.
#[test]
fn runtime_threads_out_of_range_are_refused_before_any_command() {
    let bin = env!("CARGO_BIN_EXE_datapack-worker");
    for args in [&["run"][..], &["migrate"], &["dlq", "list"]] {
        for value in ["0", "257", "two"] {
            let (code, err) = bare(bin, args, &[("RUNTIME_THREADS", value)]);
            assert_eq!(code, Some(2), "{args:?} RUNTIME_THREADS={value}: {err}");
            assert!(
                err.contains("RUNTIME_THREADS") || err.contains("runtime-threads"),
                "{err}"
            );
        }
    }
    // One thread: the runtime starts and `run` goes on to refuse what is missing.
    let (code, err) = bare(
        bin,
        &["run"],
        &[
            ("RUNTIME_THREADS", "1"),
            ("SQS_QUEUE_URL", "http://127.0.0.1:1/1/q"),
            ("SQS_DEAD_LETTER_QUEUE_URL", "http://127.0.0.1:1/1/dlq"),
            ("S3_BUCKET", "uploads"),
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("DATABASE_URL") && !err.contains("RUNTIME_THREADS"),
        "{err}"
    );
}

#[test]
fn refuses_bad_configuration_without_printing_secrets() {
    let bin = env!("CARGO_BIN_EXE_datapack-worker");
    let run = |envs: &[(&str, &str)]| bare(bin, &["run"], envs);
    let queue = ("SQS_QUEUE_URL", "http://127.0.0.1:1/1/q");
    let dlq = ("SQS_DEAD_LETTER_QUEUE_URL", "http://127.0.0.1:1/1/dlq");
    let bucket = ("S3_BUCKET", "uploads");

    let (code, err) = run(&[queue, dlq, bucket]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("DATABASE_URL"), "{err}");

    // No user named: refused, and the password never shows.
    let (code, err) = run(&[
        ("DATABASE_URL", "postgres://:hunter2@127.0.0.1/db"),
        queue,
        dlq,
        bucket,
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("name the user"), "{err}");
    assert!(!err.contains("hunter2"), "secret printed: {err}");

    // The seed's names are accepted: DB_DSN and FILESYSTEM_S3_BUCKET; then the queue is checked.
    let (code, err) = run(&[
        ("DB_DSN", "postgres://app:hunter2@127.0.0.1/db"),
        ("FILESYSTEM_S3_BUCKET", "uploads"),
        dlq,
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("SQS_QUEUE_URL"), "{err}");
    assert!(!err.contains("hunter2"), "secret printed: {err}");

    let (code, err) = run(&[
        ("DATABASE_URL", "postgres://app@127.0.0.1/db"),
        queue,
        dlq,
        bucket,
        ("SQS_WAIT_TIME_SECS", "25"),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("SQS_WAIT_TIME_SECS"), "{err}");

    // Every limit is refused at start with the variable named, never accepted or panicked on.
    let url = ("DATABASE_URL", "postgres://app@127.0.0.1/db");
    for (name, value) in [
        ("WORKER_CONCURRENCY", "0"),
        ("WORKER_POLLERS", "0"),
        ("MAX_PROCESSING_SECS", "0"),
        ("MAX_ATTEMPTS", "0"),
        ("RANGED_GET_PART_BYTES", "0"),
        ("RANGED_GET_PARALLELISM", "0"),
        ("DB_MAX_BATCH", "2305843009213693952"),
        ("DB_WRITERS", "100000"),
        ("DATABASE_MAX_CONNECTIONS", "0"),
        ("QUEUE_SAMPLE_SECS", "0"),
        ("SHUTDOWN_GRACE_SECS", "99999999"),
        ("CHECKSUM_AUDIT_RATIO", "1.5"),
        ("CHECKSUM_AUDIT_RATIO", "-0.1"),
        ("CHECKSUM_AUDIT_RATIO", "NaN"),
    ] {
        let (code, err) = run(&[url, queue, dlq, bucket, (name, value)]);
        assert_eq!(code, Some(2), "{name}={value}: {err}");
        assert!(err.contains(name), "{name}={value}: {err}");
        assert!(!err.contains("panicked"), "{name}={value}: {err}");
    }

    // A password holding URL delimiters is still never printed.
    for (password, fragment) in [
        ("s3cr/et", "s3cr"),
        ("s3cr?et", "s3cr"),
        ("s3@cr:et/x?y", "cr:et"),
    ] {
        let bad = format!("postgres://app:{password}@127.0.0.1:notaport/db");
        let (code, err) = run(&[("DATABASE_URL", &bad), queue, dlq, bucket]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("DATABASE_URL"), "{err}");
        assert!(!err.contains(fragment), "secret printed: {err}");
    }
}

#[test]
fn presign_prints_the_url_and_the_headers_the_browser_must_send() {
    let stdout = output_ok(
        Command::new(env!("CARGO_BIN_EXE_datapack-worker"))
            .args([
                "presign",
                "--bucket",
                "uploads",
                "--datapack",
                "dp-1",
                "--path",
                "raw data/2024",
            ])
            .args([
                "--file",
                "ghi chú.csv",
                "--uploader-name",
                "Nguyễn Văn A",
                "--uploader-email",
                "a@example.com",
            ])
            .args(["--expires-secs", "600", "--json"])
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
            .env("AWS_SECRET_ACCESS_KEY", "do-not-print-me")
            .env("AWS_REGION", "us-east-1"),
    );
    assert!(!stdout.contains("do-not-print-me"), "secret key printed");
    let signed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(signed["method"], "PUT");
    let url = signed["url"].as_str().unwrap();
    assert!(
        url.contains("/uploads/dp-1/raw%20data/2024/ghi%20ch%C3%BA.csv?"),
        "{url}"
    );
    assert!(
        url.contains("X-Amz-Expires=600") && url.contains("X-Amz-Signature="),
        "{url}"
    );
    let headers = &signed["headers"];
    assert_eq!(headers["Content-Type"], "text/csv");
    assert_eq!(headers["x-amz-meta-uploaded-by"], "presigned-url");
    let name = headers["x-amz-meta-uploader-name"].as_str().unwrap();
    assert!(name.is_ascii());
    assert_eq!(
        datapack_worker::process::metadata::decode(name),
        "Nguyễn Văn A"
    );
}

/// The exit codes for `presign` (docs/operating.md): 2 when it refuses what it was asked (a flag
/// S3 or the worker would refuse, a missing bucket), 1 when it cannot sign (no credentials anywhere in the
/// chain); never a URL, never a panic.
#[test]
fn presign_exits_2_on_refused_input_and_1_when_it_cannot_sign() {
    let home = std::env::temp_dir().join(format!("dpw-presign-home-{:x}", fastrand::u64(..)));
    std::fs::create_dir_all(&home).unwrap();
    let run = |extra: &[&str], credentials: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_datapack-worker"));
        command
            .arg("presign")
            .args(["--datapack", "dp-1", "--file", "f.csv"])
            .args(extra)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            // No profile, no instance or container role: the chain can only fail.
            .env("HOME", &home)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .stdin(Stdio::null());
        if credentials {
            command
                .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
                .env("AWS_SECRET_ACCESS_KEY", "do-not-print-me");
        }
        let out = command.output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(stdout.is_empty(), "no URL is printed on failure: {stdout}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            !stderr.contains("do-not-print-me"),
            "secret printed: {stderr}"
        );
        (out.status.code(), stderr)
    };
    let who = ["--uploader-name", "A", "--uploader-email", "a@example.com"];
    let bucket = ["--bucket", "uploads"];

    for (flags, says) in [
        (
            vec![
                "--uploader-name",
                "A\r\nB",
                "--uploader-email",
                "a@example.com",
            ],
            "--uploader-name must not contain control characters (found U+000D)",
        ),
        (
            vec![
                "--uploader-name",
                "\u{202E}A",
                "--uploader-email",
                "a@example.com",
            ],
            "--uploader-name must not contain bidirectional override",
        ),
        (
            vec![
                "--uploader-name",
                "A",
                "--uploader-email",
                "a\u{200B}@example.com",
            ],
            "--uploader-email must not contain invisible characters (found U+200B)",
        ),
        (
            [&who[..], &["--sha256", "abc"]].concat(),
            "--sha256 must be exactly 64 hexadecimal digits",
        ),
        (
            [&who[..], &["--expires-secs", "0"]].concat(),
            "--expires-secs must be between",
        ),
    ] {
        let (code, err) = run(&[&bucket[..], &flags].concat(), true);
        assert_eq!(code, Some(2), "{flags:?}: {err}");
        assert!(err.contains(says), "{flags:?}: {err}");
    }
    let (code, err) = run(&who, true);
    assert_eq!(code, Some(2), "no bucket: {err}");
    assert!(err.contains("S3_BUCKET"), "{err}");

    // Valid input, no credentials: signing fails, which is not the caller's input.
    let (code, err) = run(&[&bucket[..], &who].concat(), false);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("could not presign"), "{err}");
    std::fs::remove_dir_all(&home).ok();
}

/// Runs the binary with `args` and only `envs` (and PATH) in its environment: its exit code and
/// its standard error.
fn bare(bin: &str, args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(bin)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
