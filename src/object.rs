//! Fetches exactly the announced version of an object and hashes it as a stream.
//!
//! The GET names the version (`versionId`) or pins the bytes (`If-Match` on the event's ETag), so
//! the ETag and SHA-256 that end in a row always describe the same bytes. The body is never held
//! in memory: chunks go through SHA-256 as they arrive and are counted against Content-Length.

use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::primitives::ByteStream;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::aws;
use crate::disposition::{Dependency, Failure};
use crate::event::unquote_etag;
use crate::metadata::Uploader;

/// What the event announced and we must fetch.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    pub etag: Option<&'a str>,
    pub version_id: Option<&'a str>,
}

/// The facts of the bytes we read.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub etag: String,
    pub sha256: String,
    pub length: u64,
    pub content_type: Option<String>,
    pub last_modified: Option<DateTime<Utc>>,
    pub version_id: Option<String>,
    pub uploader: Uploader,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    Object(Facts),
    /// The metadata filter refused it; the body was not read.
    NotPresigned,
    /// 404: deleted (or never there) by the time we looked.
    Gone,
    /// 412: overwritten since the event; the newer upload has its own event.
    Superseded,
}

/// GETs the object and, if `required_uploaded_by` allows it, hashes the body.
pub async fn fetch(
    s3: &aws_sdk_s3::Client,
    target: Target<'_>,
    required_uploaded_by: Option<&str>,
) -> Result<Fetched, Failure> {
    let mut request = s3.get_object().bucket(target.bucket).key(target.key);
    if let Some(version) = target.version_id {
        request = request.version_id(version);
    } else if let Some(etag) = target.etag {
        request = request.if_match(format!("\"{etag}\""));
    }
    let output = match request.send().await {
        Ok(output) => output,
        Err(error) => return classify_get(error),
    };
    let uploader = Uploader::from_metadata(output.metadata());
    if let Some(required) = required_uploaded_by
        && uploader.uploaded_by.as_deref() != Some(required)
    {
        return Ok(Fetched::NotPresigned);
    }
    let etag = output
        .e_tag()
        .map(unquote_etag)
        .or_else(|| target.etag.map(str::to_owned))
        .ok_or_else(|| Failure::transient("s3_error", "GetObject answered without an ETag"))?;
    let expected = output.content_length().and_then(|n| u64::try_from(n).ok());
    let content_type = output.content_type().map(str::to_owned);
    let last_modified = output
        .last_modified()
        .and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()));
    let version_id = output
        .version_id()
        .filter(|v| *v != "null")
        .map(str::to_owned)
        .or_else(|| target.version_id.map(str::to_owned));
    let (sha256, length) = hash(output.body).await?;
    if let Some(expected) = expected
        && expected != length
    {
        return Err(Failure::transient(
            "s3_short_read",
            format!("read {length} bytes, Content-Length said {expected}"),
        ));
    }
    Ok(Fetched::Object(Facts {
        etag,
        sha256,
        length,
        content_type,
        last_modified,
        version_id,
        uploader,
    }))
}

async fn hash(mut body: ByteStream) -> Result<(String, u64), Failure> {
    let mut hasher = Sha256::new();
    let mut length = 0u64;
    while let Some(chunk) = body
        .try_next()
        .await
        .map_err(|e| Failure::unavailable(Dependency::S3, "s3_read_failed", e))?
    {
        hasher.update(&chunk);
        length += chunk.len() as u64;
        crate::metrics::hashed_bytes(chunk.len());
    }
    Ok((hex(&hasher.finalize()), length))
}

/// Lower-case hex, the form the `sha256` column stores.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn classify_get(
    error: aws_sdk_s3::error::SdkError<GetObjectError, aws_smithy_runtime_api::http::Response>,
) -> Result<Fetched, Failure> {
    let status = aws::status(&error);
    let code = aws::code(&error).unwrap_or_default();
    if let aws_sdk_s3::error::SdkError::ServiceError(e) = &error
        && matches!(e.err(), GetObjectError::NoSuchKey(_))
    {
        return Ok(Fetched::Gone);
    }
    match (status, code.as_str()) {
        (_, "NoSuchKey" | "NoSuchVersion") => Ok(Fetched::Gone),
        (Some(404), c) if c != "NoSuchBucket" => Ok(Fetched::Gone),
        (Some(412), _) | (_, "PreconditionFailed") => Ok(Fetched::Superseded),
        _ => Err(aws::classify(Dependency::S3, status, error)),
    }
}
