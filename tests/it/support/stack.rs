//! A bucket, a queue and its dead-letter queue per test, set up by [`super::emulator`] as the
//! demo's and production's are (S3 notifications to the queue, a redrive policy to the
//! dead-letter queue), and what the tests do with them: upload, send, inspect, wait.

use std::collections::HashMap;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};

use super::emulator::{self, queue_arn};
use super::wait_until;

pub struct Stack {
    pub endpoint: String,
    pub sdk: SdkConfig,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub bucket: String,
    pub queue_url: String,
    pub dlq_url: String,
}

impl Stack {
    /// Completes a multipart upload of `parts`. moto's answer has a root element the SDK does
    /// not parse; the upload completes anyway, so the answer is not read.
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<aws_sdk_s3::types::CompletedPart>,
    ) {
        let _ = self
            .s3
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
    }

    /// A bucket and queues of its own on the emulator at `endpoint`, set up as the demo's and
    /// production's are, starting from an empty queue.
    pub async fn new(endpoint: &str) -> Stack {
        let suffix = format!("{:x}", fastrand::u64(..));
        let sdk = emulator::sdk_config(endpoint);
        let bucket = format!("uploads-{suffix}");
        let origins = emulator::cors_origins().unwrap();
        let made = emulator::create(&sdk, &bucket, &format!("q-{suffix}"), &origins)
            .await
            .unwrap();
        let stack = Stack {
            endpoint: endpoint.to_owned(),
            s3: datapack_worker::aws::s3(&sdk),
            sqs: datapack_worker::aws::sqs(&sdk),
            sdk,
            bucket,
            queue_url: made.queue_url,
            dlq_url: made.dlq_url,
        };
        // The notification set-up sent an s3:TestEvent.
        stack.purge().await;
        stack
    }

    /// Empties the main queue.
    pub async fn purge(&self) {
        self.sqs
            .purge_queue()
            .queue_url(&self.queue_url)
            .send()
            .await
            .unwrap();
    }

    /// Replaces the bucket's CORS rule with the stack's rule for `origin` alone.
    pub async fn allow_origin(&self, origin: &str) {
        self.s3
            .put_bucket_cors()
            .bucket(&self.bucket)
            .cors_configuration(emulator::cors_rule(&[origin.to_owned()]))
            .send()
            .await
            .unwrap();
    }

    /// Uploads as the browser does after `presign`: with the presigned metadata.
    pub async fn put(&self, key: &str, body: &[u8]) -> String {
        self.put_with(key, body, Some(("Test Uploader", "uploader@example.com")))
            .await
    }

    /// Uploads with or without the presigned metadata; returns the ETag without quotes.
    pub async fn put_with(&self, key: &str, body: &[u8], uploader: Option<(&str, &str)>) -> String {
        let mut request = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body.to_vec()))
            .content_type("text/plain");
        if let Some((name, email)) = uploader {
            request = request
                .metadata("uploaded-by", "presigned-url")
                .metadata(
                    "uploader-name",
                    datapack_worker::process::metadata::encode(name),
                )
                .metadata(
                    "uploader-email",
                    datapack_worker::process::metadata::encode(email),
                );
        }
        let etag = request.send().await.unwrap().e_tag.unwrap();
        datapack_worker::process::event::unquote_etag(&etag)
    }

    /// Uploads `parts` as one multipart object with the presigned metadata. moto sends two
    /// events for it, and answers CompleteMultipartUpload with a root element the Rust SDK does
    /// not parse although the upload completes, so the object is checked instead of the answer.
    pub async fn put_multipart(&self, key: &str, parts: impl IntoIterator<Item = Vec<u8>>) {
        self.put_multipart_checked(key, parts, false).await;
    }

    /// [`Stack::put_multipart`], each part with its SHA-256 checksum when `sha256` (so S3 keeps
    /// the upload's composite checksum).
    pub async fn put_multipart_checked(
        &self,
        key: &str,
        parts: impl IntoIterator<Item = Vec<u8>>,
        sha256: bool,
    ) {
        use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedPart};
        let algorithm = sha256.then_some(ChecksumAlgorithm::Sha256);
        let id = self
            .s3
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .metadata("uploaded-by", "presigned-url")
            .set_checksum_algorithm(algorithm.clone())
            .send()
            .await
            .unwrap()
            .upload_id
            .unwrap();
        let mut done = Vec::new();
        for (n, body) in (1..).zip(parts) {
            let checksum = sha256.then(|| {
                use base64::Engine as _;
                use sha2::Digest as _;
                base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&body))
            });
            let etag = self
                .s3
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&id)
                .part_number(n)
                .body(body.into())
                .set_checksum_algorithm(algorithm.clone())
                .set_checksum_sha256(checksum.clone())
                .send()
                .await
                .unwrap()
                .e_tag
                .unwrap();
            let part = CompletedPart::builder().part_number(n).e_tag(etag);
            done.push(part.set_checksum_sha256(checksum).build());
        }
        self.complete_multipart(key, &id, done).await;
        self.s3
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .expect("the multipart upload completed");
    }

    /// Uploads through a presigned PUT URL made by the product's own `presign`.
    pub async fn put_presigned(
        &self,
        datapack: &str,
        path: &str,
        file: &str,
        name: &str,
        email: &str,
        body: &[u8],
    ) -> String {
        let args = datapack_worker::cli::PresignArgs {
            bucket: Some(self.bucket.clone()),
            datapack: datapack.into(),
            path: path.into(),
            file: file.into(),
            uploader_name: name.into(),
            uploader_email: email.into(),
            content_type: None,
            expires_secs: 300,
            json: true,
            sha256: None,
        };
        let signed = datapack_worker::commands::presign::presign(&self.s3, &self.bucket, &args)
            .await
            .unwrap();
        let client = reqwest::Client::new();
        let mut request = client.put(&signed.url).body(body.to_vec());
        for (name, value) in &signed.headers {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        assert!(
            response.status().is_success(),
            "presigned PUT failed: {}",
            response.status()
        );
        datapack_worker::process::event::unquote_etag(response.headers()["etag"].to_str().unwrap())
    }

    pub async fn delete(&self, key: &str) {
        self.s3
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .unwrap();
    }

    pub async fn send(&self, body: &str) {
        self.sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }

    /// (visible, in flight) on the main queue.
    pub async fn depth(&self) -> (u64, u64) {
        depth(&self.sqs, &self.queue_url).await
    }

    /// Whether the main queue holds nothing visible or in flight: every message was settled.
    /// Asked twice, because moto counts visible and in-flight messages at two instants, so a
    /// message whose visibility runs out in between is in neither count once.
    pub async fn is_drained(&self) -> bool {
        self.depth().await == (0, 0) && self.depth().await == (0, 0)
    }

    /// Waits until [`Stack::is_drained`].
    pub async fn wait_drained(&self, deadline: Duration) {
        wait_until("an empty main queue", deadline, || async {
            self.is_drained().await.then_some(())
        })
        .await;
    }

    /// Sets the main queue's redrive `maxReceiveCount` (the stack starts with
    /// [`emulator::MAX_RECEIVE_COUNT`]).
    pub async fn set_max_receive_count(&self, count: u32) {
        let dlq_arn = queue_arn(&self.sqs, &self.dlq_url).await.unwrap();
        let redrive = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": count})
            .to_string();
        self.sqs
            .set_queue_attributes()
            .queue_url(&self.queue_url)
            .attributes(QueueAttributeName::RedrivePolicy, redrive)
            .send()
            .await
            .unwrap();
    }

    pub async fn dlq_depth(&self) -> (u64, u64) {
        depth(&self.sqs, &self.dlq_url).await
    }

    /// Waits until `n` dead letters are visible.
    pub async fn wait_dead_letters(&self, n: u64, deadline: Duration) {
        wait_until(&format!("{n} dead letters"), deadline, || async {
            (self.dlq_depth().await.0 == n).then_some(())
        })
        .await;
    }

    /// Receives every message of `url` with their attributes, hiding each for 300 s (not
    /// deleted): what a test inspects stays out of the worker's way.
    pub async fn receive_all(&self, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
        let mut out = Vec::new();
        loop {
            let got = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .visibility_timeout(300)
                .message_attribute_names("All")
                .send()
                .await
                .unwrap()
                .messages
                .unwrap_or_default();
            if got.is_empty() {
                return out;
            }
            out.extend(got);
        }
    }

    /// Takes every dead-lettered message: (body, attributes).
    pub async fn take_dead_letters(&self) -> Vec<(String, HashMap<String, String>)> {
        let url = self.dlq_url.clone();
        self.receive_all(&url)
            .await
            .into_iter()
            .map(|m| {
                let attrs = m
                    .message_attributes
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.string_value.unwrap_or_default()))
                    .collect();
                (m.body.unwrap_or_default(), attrs)
            })
            .collect()
    }

    /// A bucket beside the test's own for S3 Inventory reports: its name.
    pub async fn inventory_bucket(&self) -> String {
        let reports = format!("{}-inventory", self.bucket);
        self.s3
            .create_bucket()
            .bucket(&reports)
            .send()
            .await
            .unwrap();
        reports
    }

    /// Removes up to ten messages from the main queue and returns their bodies (to inspect or
    /// replay what S3 sent).
    pub async fn take(&self) -> Vec<String> {
        let messages = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(300)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        let mut bodies = Vec::new();
        for m in messages {
            bodies.push(self.delete_received(&self.queue_url, m).await);
        }
        bodies
    }

    /// Deletes `message`, received from `url`: its body.
    pub async fn delete_received(&self, url: &str, message: aws_sdk_sqs::types::Message) -> String {
        self.sqs
            .delete_message()
            .queue_url(url)
            .receipt_handle(message.receipt_handle.unwrap())
            .send()
            .await
            .unwrap();
        message.body.unwrap_or_default()
    }

    /// The bucket's listing (its first page, up to 1,000 keys).
    pub async fn listing(&self) -> aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output {
        self.s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .send()
            .await
            .unwrap()
    }
}

async fn depth(sqs: &aws_sdk_sqs::Client, url: &str) -> (u64, u64) {
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap_or_default();
    let get = |n| attrs.get(&n).and_then(|v| v.parse().ok()).unwrap_or(0);
    (
        get(QueueAttributeName::ApproximateNumberOfMessages),
        get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

/// An S3 notification body, as S3 would send it, for events a test writes itself.
pub fn s3_event(
    name: &str,
    bucket: &str,
    key: &str,
    etag: Option<&str>,
    sequencer: Option<&str>,
    time: &str,
) -> String {
    let mut object = serde_json::json!({"key": form_encode(key), "size": 0});
    if let Some(e) = etag {
        object["eTag"] = e.into();
    }
    if let Some(s) = sequencer {
        object["sequencer"] = s.into();
    }
    serde_json::json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": time, "eventName": name,
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket, "arn": format!("arn:aws:s3:::{bucket}")}, "object": object}
    }]})
    .to_string()
}

/// Python's `quote_plus`, as moto and S3 encode keys.
pub fn form_encode(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
