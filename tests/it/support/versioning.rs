//! Versioned buckets for tests: turning versioning on, and uploads that return the version made.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};

use super::Stack;

/// Turns versioning on for the stack's bucket.
pub async fn enable_versioning(stack: &Stack) {
    stack
        .s3
        .put_bucket_versioning()
        .bucket(&stack.bucket)
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
}

/// One upload as the browser makes it; its ETag (bare) and version id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub etag: String,
    pub id: String,
    pub size: usize,
}

/// Uploads `body` as `key` the way the browser does; the version S3 made of it.
pub async fn put(stack: &Stack, key: &str, body: &[u8]) -> Version {
    let out = stack
        .s3
        .put_object()
        .bucket(&stack.bucket)
        .key(key)
        .body(ByteStream::from(body.to_vec()))
        .metadata("uploaded-by", "presigned-url")
        .send()
        .await
        .unwrap();
    Version {
        etag: datapack_worker::process::event::unquote_etag(out.e_tag().unwrap()),
        id: out.version_id().expect("a versioned bucket").to_owned(),
        size: body.len(),
    }
}
