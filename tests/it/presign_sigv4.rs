//! Presigned URLs against a server that checks SigV4: s3s-fs (moto checks no signature).
//!
//! The real `presign` command signs; reqwest PUTs as a browser would. A URL is accepted with
//! exactly the headers it returned, and refused when a header, the key or the checksum is changed,
//! when the body does not match the signed SHA-256, and once it has expired.
//!
//! s3s-fs comes from `scripts/ensure-s3s.sh` (the test command exports its path as `S3S_FS`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::types::ChecksumMode;
use base64::Engine;

use crate::support::db::sha256_hex;
use crate::support::listen::{self, Lines};
use crate::support::wait_until;

const ACCESS_KEY: &str = "AKIAS3SFSTESTKEY0001";
const SECRET_KEY: &str = "s3s-fs-test-secret-key-0000000000000000";
const BUCKET: &str = "signed-uploads";

/// An s3s-fs server with authentication on, on a free loopback port, over a temporary directory.
struct S3sFs {
    endpoint: String,
    child: Child,
    root: PathBuf,
    s3: aws_sdk_s3::Client,
}

fn s3s_fs_path() -> PathBuf {
    let path = std::env::var_os("S3S_FS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/datapack-worker/tools/bin/s3s-fs")
        });
    assert!(
        path.is_file(),
        "s3s-fs not found at {} (scripts/ensure-s3s.sh installs it; S3S_FS names it)",
        path.display()
    );
    path
}

impl S3sFs {
    async fn start() -> S3sFs {
        let root = std::env::temp_dir().join(format!("dpw-s3s-{:x}", fastrand::u64(..)));
        std::fs::create_dir_all(&root).unwrap();
        let mut child = Command::new(s3s_fs_path())
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&root)
            // At info it says where it listens (on stdout), and little else.
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let stdout = child.stdout.take().unwrap();
        let (addr, _) = listen::follow(
            stdout,
            |line| listen::after(line, "running at http://"),
            Lines::Discard,
        )
        .wait_async("s3s-fs")
        .await;
        let endpoint = format!("http://{addr}");
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&endpoint)
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                ACCESS_KEY, SECRET_KEY, None, None, "tests",
            ))
            .build();
        let server = S3sFs {
            endpoint,
            child,
            root,
            s3: aws_sdk_s3::Client::from_conf(config),
        };
        server
            .s3
            .create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .expect("create a bucket on s3s-fs (signed with the same keys)");
        server
    }

    /// Runs the real `datapack-worker presign --json` against this server.
    fn presign(&self, extra: &[&str]) -> Signed {
        let output = Command::new(env!("CARGO_BIN_EXE_datapack-worker"))
            .args([
                "presign",
                "--json",
                "--bucket",
                BUCKET,
                "--datapack",
                "dp-1",
            ])
            .args(["--path", "báo cáo/2024", "--file", "báo cáo.csv"])
            .args(["--uploader-name", "Nguyễn Văn A"])
            .args(["--uploader-email", "a@example.com"])
            .args(extra)
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .output()
            .expect("run datapack-worker presign");
        assert!(
            output.status.success(),
            "presign failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        Signed {
            url: json["url"].as_str().unwrap().to_owned(),
            headers: json["headers"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect(),
        }
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[derive(Debug, Clone)]
struct Signed {
    url: String,
    headers: BTreeMap<String, String>,
}

/// PUTs `body` to `url` with `headers`; returns the status and the S3 error code, if any.
async fn put(url: &str, headers: &BTreeMap<String, String>, body: &[u8]) -> (u16, String) {
    let mut request = reqwest::Client::new().put(url).body(body.to_vec());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.send().await.expect("reach s3s-fs");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let code = text
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code.to_owned())
        .unwrap_or_default();
    let message = text
        .split_once("<Message>")
        .and_then(|(_, rest)| rest.split_once("</Message>"))
        .map(|(m, _)| m.to_owned())
        .unwrap_or_default();
    (status, format!("{code} {message}").trim().to_owned())
}

const BODY: &[u8] = "ngày,số tiền\n2024-01-02,100\n".as_bytes();
const KEY: &str = "dp-1/báo cáo/2024/báo cáo.csv";

fn checksum_b64(body: &[u8]) -> String {
    use sha2::Digest;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(body))
}

#[tokio::test(flavor = "multi_thread")]
async fn presigned_put_with_a_signed_checksum_is_accepted_as_signed() {
    let server = S3sFs::start().await;
    let signed = server.presign(&["--sha256", &sha256_hex(BODY)]);
    let signed_names = datapack_worker::commands::presign::signed_headers(&signed.url).unwrap();
    assert!(
        signed_names.contains(&"x-amz-checksum-sha256".to_owned()),
        "{signed_names:?}"
    );
    assert_eq!(
        signed.headers.get("x-amz-checksum-sha256"),
        Some(&checksum_b64(BODY))
    );

    let (status, error) = put(&signed.url, &signed.headers, BODY).await;
    assert_eq!(status, 200, "the presigned PUT was refused: {error}");

    // Stored as sent: the bytes, the metadata, and the checksum s3s-fs verified.
    let head = server
        .s3
        .head_object()
        .bucket(BUCKET)
        .key(KEY)
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .expect("the object exists under the signed key");
    assert_eq!(head.content_length, Some(BODY.len() as i64));
    assert_eq!(head.content_type.as_deref(), Some("text/csv"));
    let metadata = head.metadata.unwrap_or_default();
    assert_eq!(
        metadata
            .get("uploader-name")
            .map(|v| datapack_worker::process::metadata::decode(v)),
        Some("Nguyễn Văn A".to_owned())
    );
    assert_eq!(
        metadata.get("uploaded-by").map(String::as_str),
        Some("presigned-url")
    );
    assert_eq!(head.checksum_sha256, Some(checksum_b64(BODY)));
}

/// What was changed, the URL, the headers, the body, and the S3 error code expected.
type Case<'a> = (&'a str, String, BTreeMap<String, String>, &'a [u8], &'a str);

#[tokio::test(flavor = "multi_thread")]
async fn tampered_requests_are_refused() {
    let server = S3sFs::start().await;
    let signed = server.presign(&["--sha256", &sha256_hex(BODY)]);

    let mut cases: Vec<Case> = Vec::new();
    for (header, value) in [
        ("x-amz-meta-uploader-name", "Mallory"),
        ("x-amz-meta-uploaded-by", "someone-else"),
        ("Content-Type", "text/html"),
    ] {
        let mut headers = signed.headers.clone();
        headers.insert(header.to_owned(), value.to_owned());
        cases.push((
            "a changed header",
            signed.url.clone(),
            headers,
            BODY,
            "SignatureDoesNotMatch",
        ));
    }
    let other_key = signed.url.replacen("/dp-1/", "/dp-2/", 1);
    assert_ne!(other_key, signed.url);
    cases.push((
        "a changed key",
        other_key,
        signed.headers.clone(),
        BODY,
        "SignatureDoesNotMatch",
    ));

    let mut wrong_checksum = signed.headers.clone();
    wrong_checksum.insert("x-amz-checksum-sha256".into(), checksum_b64(b"other bytes"));
    cases.push((
        "the checksum header of other bytes, with those bytes",
        signed.url.clone(),
        wrong_checksum,
        b"other bytes",
        "SignatureDoesNotMatch",
    ));
    let mut no_checksum = signed.headers.clone();
    no_checksum.remove("x-amz-checksum-sha256");
    cases.push((
        "no checksum header",
        signed.url.clone(),
        no_checksum,
        b"other bytes",
        "",
    ));

    for (what, url, headers, body, want) in cases {
        let (status, error) = put(&url, &headers, body).await;
        assert!(
            (400..500).contains(&status) && error.contains(want),
            "{what}: want a 4xx {want}, got {status} {error}"
        );
    }
    // A refused signature stores nothing.
    let listed = server
        .s3
        .list_objects_v2()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.key_count, Some(0), "{:?}", listed.contents);

    // Right headers, other bytes: the signature holds, the checksum does not. S3 answers
    // BadDigest and stores nothing; s3s-fs answers BadDigest too, but only after writing the
    // bytes to its file (it verifies after the copy), so what it stored is not asserted here.
    let (status, error) = put(&signed.url, &signed.headers, b"other bytes").await;
    assert_eq!(status, 400, "{error}");
    assert!(error.contains("BadDigest"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_url_is_refused() {
    let server = S3sFs::start().await;
    // From the command: valid for one second; refused once that second is over.
    let signed = server.presign(&["--sha256", &sha256_hex(BODY), "--expires-secs", "1"]);
    let start = Instant::now();
    let error = wait_until(
        "the one-second URL to expire",
        Duration::from_secs(15),
        || async {
            let (status, error) = put(&signed.url, &signed.headers, BODY).await;
            (status == 403).then_some(error)
        },
    )
    .await;
    assert!(
        error.contains("AccessDenied") && error.contains("expired"),
        "{error}"
    );
    eprintln!(
        "a 1 s URL was refused as expired after {:?}",
        start.elapsed()
    );

    // From the library: signed an hour ago for a minute, refused at once.
    let args = datapack_worker::cli::PresignArgs {
        bucket: Some(BUCKET.into()),
        datapack: "dp-1".into(),
        path: "/".into(),
        file: "late.csv".into(),
        uploader_name: "Nguyễn Văn A".into(),
        uploader_email: "a@example.com".into(),
        content_type: None,
        expires_secs: 60,
        json: true,
        sha256: Some(sha256_hex(BODY)),
    };
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let late = datapack_worker::commands::presign::presign_at(&server.s3, BUCKET, &args, hour_ago)
        .await
        .unwrap();
    let (status, error) = put(&late.url, &late.headers, BODY).await;
    assert_eq!(status, 403, "{error}");
    assert!(error.contains("expired"), "{error}");
}
