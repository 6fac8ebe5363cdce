//! Zero-read ingestion against moto: a trusted single-part SHA-256 makes the row from HeadObject
//! alone, with no GET; every other case (trust off, multipart, another algorithm) is read and
//! hashed as before; and the audit records the bytes' hash when the stored checksum lies.
//!
//! The worker's S3 traffic goes through the request-recording proxy, so each test counts exactly
//! the HEADs and GETs the worker sent for its keys (uploads go to moto directly).

use std::net::SocketAddr;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode};
use base64::Engine as _;
use sha2::Digest;
use sqlx::Row as _;

use crate::support::db::sha256_hex;
use crate::support::s3_proxy::{Match, S3Proxy};
use crate::support::scrape::metric;
use crate::support::{Moto, Stack, TestDb, TestWorker, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);
const TRUSTED: &[&str] = &["--s3-checksums-trusted", "--checksum-audit-ratio", "0"];

struct Rig {
    stack: Stack,
    db: TestDb,
    proxy: S3Proxy,
}

impl Rig {
    async fn new() -> Rig {
        let moto = Moto::shared();
        let stack = Stack::new(&moto.endpoint).await;
        let db = TestDb::new().await;
        db.add_datapack("dp-1").await;
        let target: SocketAddr = moto.addr;
        let proxy = S3Proxy::start(target).await;
        Rig { stack, db, proxy }
    }

    /// A worker whose S3 and SQS calls go through the proxy.
    async fn worker(&self, extra: &[&str]) -> TestWorker {
        crate::support::worker::Launch::new(&self.stack, &self.db, extra)
            .via(&self.proxy.endpoint())
            .in_process()
            .await
    }

    /// A single-part upload with the presigned metadata that declares `checksum` (base64) as its
    /// SHA-256. moto stores it only with `x-amz-sdk-checksum-algorithm` (which the SDK sends with
    /// the algorithm set), and never checks it against the bytes.
    async fn put_declaring(&self, key: &str, body: &[u8], checksum: &str) -> String {
        let etag = self
            .presigned_put(key, body)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(checksum)
            .send()
            .await
            .unwrap()
            .e_tag
            .unwrap();
        datapack_worker::process::event::unquote_etag(&etag)
    }

    fn presigned_put(
        &self,
        key: &str,
        body: &[u8],
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        self.stack
            .s3
            .put_object()
            .bucket(&self.stack.bucket)
            .key(key)
            .body(ByteStream::from(body.to_vec()))
            .content_type("text/csv")
            .metadata("uploaded-by", "presigned-url")
            .metadata("uploader-name", "Test Uploader")
            .metadata("uploader-email", "uploader@example.com")
    }

    /// What HeadObject with `ChecksumMode=ENABLED` tells about `key`: (SHA-256, CRC32, ETag).
    async fn stored(&self, key: &str) -> (Option<String>, Option<String>, String) {
        let head = self
            .stack
            .s3
            .head_object()
            .bucket(&self.stack.bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .unwrap();
        (
            head.checksum_sha256,
            head.checksum_crc32,
            head.e_tag.unwrap(),
        )
    }

    /// HEAD and GET requests the worker sent for `key` (ranged GETs each count).
    fn requests(&self, key: &str) -> (usize, usize) {
        let head = Match {
            method: Some("HEAD"),
            ..Match::key(key)
        };
        (self.proxy.count(&head), self.proxy.count(&Match::get(key)))
    }

    async fn wait_drained(&self) {
        wait_until("an empty queue", DEADLINE, || async {
            (self.stack.depth().await == (0, 0)).then_some(())
        })
        .await;
    }

    /// The row of `key`, once written.
    async fn row(&self, key: &str) -> Recorded {
        wait_until(&format!("the row of {key}"), DEADLINE, || async {
            sqlx::query(
                "SELECT sha256, sha256_source, length, content_type, submitter_name,
                        submitter_email, etag, object_last_modified IS NOT NULL
                 FROM datapack_resource WHERE object_key = $1",
            )
            .bind(key)
            .fetch_optional(&self.db.pool)
            .await
            .unwrap()
            .map(|r| Recorded {
                sha256: r.get(0),
                source: r.get(1),
                length: r.get(2),
                content_type: r.get(3),
                submitter_name: r.get(4),
                submitter_email: r.get(5),
                etag: r.get(6),
                has_last_modified: r.get(7),
            })
        })
        .await
    }
}

/// What a test checks of a row.
#[derive(Debug)]
struct Recorded {
    sha256: String,
    source: String,
    length: i64,
    content_type: Option<String>,
    submitter_name: Option<String>,
    submitter_email: Option<String>,
    etag: String,
    has_last_modified: bool,
}

fn base64_sha256(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_read_a_trusted_single_part_sha256_is_recorded_from_the_head_alone() {
    let rig = Rig::new().await;
    let key = "dp-1/reports/zero read.csv";
    let body = b"id,value\n1,2\n3,4\n";
    let etag = rig.put_declaring(key, body, &base64_sha256(body)).await;
    let (sha256, _, _) = rig.stored(key).await;
    assert_eq!(sha256.as_deref(), Some(base64_sha256(body).as_str()));
    // Refused on its metadata from the HEAD too: never read.
    let foreign = "dp-1/reports/not presigned.csv";
    rig.stack
        .s3
        .put_object()
        .bucket(&rig.stack.bucket)
        .key(foreign)
        .body(ByteStream::from_static(b"no metadata"))
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .checksum_sha256(base64_sha256(b"no metadata"))
        .send()
        .await
        .unwrap();

    let worker = rig.worker(TRUSTED).await;
    let row = rig.row(key).await;
    rig.wait_drained().await;
    worker.stop().await;

    assert_eq!(row.sha256, sha256_hex(body));
    assert_eq!(row.source, "s3_checksum");
    assert_eq!(row.length, body.len() as i64);
    assert_eq!(row.content_type.as_deref(), Some("text/csv"));
    assert_eq!(row.submitter_name.as_deref(), Some("Test Uploader"));
    assert_eq!(row.submitter_email.as_deref(), Some("uploader@example.com"));
    assert_eq!(row.etag, etag);
    assert!(row.has_last_modified);
    assert_eq!(rig.requests(key), (1, 0), "one HEAD, no GET");
    assert_eq!(rig.requests(foreign), (1, 0), "refused from the HEAD");
    assert_eq!(rig.db.count().await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_read_trust_off_reads_and_hashes_without_a_head() {
    let rig = Rig::new().await;
    let key = "dp-1/reports/trust off.csv";
    let body = b"the same checksummed upload";
    rig.put_declaring(key, body, &base64_sha256(body)).await;

    let worker = rig.worker(&[]).await;
    let row = rig.row(key).await;
    rig.wait_drained().await;
    worker.stop().await;

    assert_eq!(row.sha256, sha256_hex(body));
    assert_eq!(row.source, "computed");
    assert_eq!(
        rig.requests(key),
        (0, 1),
        "no HEAD, one GET: what it cost before"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_read_a_multipart_sha256_is_composite_and_read() {
    let rig = Rig::new().await;
    let key = "dp-1/big/multipart.bin";
    let parts = [vec![7u8; 5 * 1024 * 1024], b"the end".to_vec()];
    rig.stack
        .put_multipart_checked(key, parts.iter().cloned(), true)
        .await;
    let (sha256, _, etag) = rig.stored(key).await;
    // moto: the composite value, without the `-N` a real S3 would append; only the ETag says
    // multipart. It is not the SHA-256 of the object.
    let whole = parts.concat();
    assert!(sha256.is_some(), "moto stored the composite checksum");
    assert_ne!(sha256.as_deref(), Some(base64_sha256(&whole).as_str()));
    assert!(etag.trim_matches('"').ends_with("-2"), "{etag}");

    let worker = rig.worker(TRUSTED).await;
    let row = rig.row(key).await;
    rig.wait_drained().await;
    worker.stop().await;

    assert_eq!(row.sha256, sha256_hex(&whole));
    assert_eq!(row.source, "computed");
    let (heads, gets) = rig.requests(key);
    assert!(
        heads >= 1 && gets >= 1,
        "HEAD, then read: {heads} HEAD, {gets} GET"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_read_another_algorithm_is_never_taken_for_sha256() {
    let rig = Rig::new().await;
    let key = "dp-1/reports/crc32.csv";
    let body = b"checksummed with CRC32 only";
    rig.presigned_put(key, body)
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .send()
        .await
        .unwrap();
    let (sha256, crc32, _) = rig.stored(key).await;
    assert_eq!(sha256, None);
    assert!(crc32.is_some(), "moto stored the CRC32");

    let worker = rig.worker(TRUSTED).await;
    let row = rig.row(key).await;
    rig.wait_drained().await;
    worker.stop().await;

    assert_eq!(row.sha256, sha256_hex(body));
    assert_eq!(row.source, "computed");
    assert_eq!(rig.requests(key), (1, 1), "the HEAD found no SHA-256: read");
}

/// moto stores whatever checksum an upload declares. With the audit reading every trusted
/// object, a checksum declared for other bytes is found out: the row gets the bytes' hash, the
/// mismatch is counted, and the message is settled at once (no checksum-mismatch retry).
#[tokio::test(flavor = "multi_thread")]
async fn zero_read_the_audit_records_the_computed_hash_when_the_stored_checksum_lies() {
    let rig = Rig::new().await;
    let lying = "dp-1/audit/lying.csv";
    let honest = "dp-1/audit/honest.csv";
    let body = b"the bytes that arrived";
    rig.put_declaring(lying, body, &base64_sha256(b"other bytes"))
        .await;
    rig.put_declaring(honest, b"honest bytes", &base64_sha256(b"honest bytes"))
        .await;
    assert_eq!(
        rig.stored(lying).await.0.as_deref(),
        Some(base64_sha256(b"other bytes").as_str()),
        "moto kept the wrong checksum"
    );

    let worker = rig
        .worker(&["--s3-checksums-trusted", "--checksum-audit-ratio", "1"])
        .await;
    let scrape = || async { worker.http.scrape().await };
    let lying_row = rig.row(lying).await;
    let honest_row = rig.row(honest).await;
    rig.wait_drained().await;
    let metrics = scrape().await;
    worker.stop().await;

    assert_eq!(
        lying_row.sha256,
        sha256_hex(body),
        "the bytes are the truth"
    );
    assert_eq!(lying_row.source, "computed");
    assert_eq!(honest_row.sha256, sha256_hex(b"honest bytes"));
    assert_eq!(honest_row.source, "computed");
    assert_eq!(
        rig.requests(lying),
        (1, 1),
        "one HEAD, one audit GET, no retry"
    );
    assert_eq!(rig.requests(honest), (1, 1));
    // In-process workers share one registry; no other test audits, but count at least.
    let audits = |result: &str| {
        metric(
            &metrics,
            &format!("datapack_worker_checksum_audit_total{{result=\"{result}\"}}"),
        )
    };
    assert!(audits("mismatch") >= 1.0, "mismatch counted");
    assert!(audits("match") >= 1.0, "match counted");
}
