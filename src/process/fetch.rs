//! Fetches exactly the announced version of an object and hashes it as a stream.
//!
//! The GET names the version (`versionId`) or pins the bytes (`If-Match` on the event's ETag), so
//! the ETag and SHA-256 that end in a row always describe the same bytes. The body is never held
//! in memory: chunks go through SHA-256 as they arrive and are counted against Content-Length.
//! The metadata filter is applied to the first response, before any body is read. Large objects
//! may be read as parallel ranged GETs ([`crate::process::ranged`]).
//!
//! When the bucket's checksums are trusted, [`read`] first asks HeadObject, pinned the same way,
//! for S3's stored SHA-256: a full-object one stands for the bytes, and nothing is read
//! ([`crate::process::checksum`]); a sample is read and hashed anyway, to audit the store.

use std::time::Instant;

use aws_sdk_s3::config::ResponseChecksumValidation;
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::operation::head_object::{HeadObjectError, HeadObjectOutput};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumMode;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::aws;
use crate::disposition::{Dependency, Failure, RetryReason};
pub use crate::process::body::hex;
use crate::process::body::{Stop, classify_get, digest_hex, feed, next_chunk};
pub(crate) use crate::process::checksum::Checksums;
use crate::process::checksum::full_object_sha256;
use crate::process::event::unquote_etag;
use crate::process::metadata::Uploader;
pub use crate::process::ranged::Ranged;
use crate::process::ranged::{Pin, Ranges, parse_content_range};
use crate::store::Sha256Source;

/// What the event announced and we must fetch.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    pub etag: Option<&'a str>,
    pub version_id: Option<&'a str>,
    /// The size the event announced: decides between one GET and ranged GETs.
    pub size: Option<u64>,
}

/// The facts of the bytes we read.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub etag: String,
    pub sha256: String,
    /// Hashed here, or S3's stored checksum (HeadObject alone).
    pub(crate) sha256_source: Sha256Source,
    pub length: u64,
    pub(crate) content_type: Option<String>,
    pub(crate) last_modified: Option<DateTime<Utc>>,
    pub(crate) version_id: Option<String>,
    pub(crate) uploader: Uploader,
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

/// Reads what the event announced. Trust off: [`fetch`], exactly as without zero-read (no
/// HeadObject is sent). Trust on: HeadObject first; a trusted SHA-256 makes the row without a GET
/// (unless the audit draws the object); anything else is fetched and hashed, the HEAD wasted.
pub(crate) async fn read(
    s3: &aws_sdk_s3::Client,
    target: Target<'_>,
    required_uploaded_by: Option<&str>,
    ranged: &Ranged,
    checksums: &Checksums,
) -> Result<Fetched, Failure> {
    if !checksums.trusted {
        return fetch(s3, target, required_uploaded_by, ranged).await;
    }
    let vouched = match head(s3, &target, required_uploaded_by).await? {
        Headed::Vouched(facts) => facts,
        Headed::Answered(fetched) => return Ok(fetched),
        Headed::Read(why) => {
            tracing::debug!(
                why,
                "no trusted SHA-256 from HeadObject: reading the object"
            );
            return fetch(s3, target, required_uploaded_by, ranged).await;
        }
    };
    if !checksums.audit() {
        return Ok(Fetched::Object(vouched));
    }
    // Boxed: a rare path (a sample of trusted objects) that should not size the common one.
    Box::pin(audit(s3, target, required_uploaded_by, ranged, &vouched)).await
}

/// What HeadObject told.
enum Headed {
    /// A trusted SHA-256 and every other fact of the row: nothing to read.
    Vouched(Facts),
    /// An answer that ends the read (refused on its metadata, superseded).
    Answered(Fetched),
    /// No trusted SHA-256 (why, for the log): read and hash.
    Read(&'static str),
}

/// HeadObject with `ChecksumMode=ENABLED`, pinned like the GET, with the metadata filter applied
/// to its answer.
async fn head(
    s3: &aws_sdk_s3::Client,
    target: &Target<'_>,
    required_uploaded_by: Option<&str>,
) -> Result<Headed, Failure> {
    let mut request = s3
        .head_object()
        .bucket(target.bucket)
        .key(target.key)
        .checksum_mode(ChecksumMode::Enabled);
    if let Some(version) = target.version_id {
        request = request.version_id(version);
    } else if let Some(etag) = target.etag {
        request = request.if_match(format!("\"{etag}\""));
    }
    let started = Instant::now();
    // Boxed: the SDK's send future is large, and inline it would grow every future that awaits
    // this one, up to the task spawned per message, which is copied when spawned and moved.
    let answer = Box::pin(request.send()).await;
    crate::ops::metrics::phase("s3_head", started.elapsed());
    let output = match answer {
        Ok(output) => output,
        Err(error) => return classify_head(error),
    };
    let uploader = Uploader::from_metadata(output.metadata());
    if let Some(required) = required_uploaded_by
        && uploader.uploaded_by.as_deref() != Some(required)
    {
        return Ok(Headed::Answered(Fetched::NotPresigned));
    }
    Ok(match vouched(&output, target, uploader) {
        Ok(facts) => Headed::Vouched(facts),
        Err(why) => Headed::Read(why),
    })
}

/// The row's facts from a HeadObject answer, when its SHA-256 stands for the bytes.
fn vouched(
    output: &HeadObjectOutput,
    target: &Target<'_>,
    uploader: Uploader,
) -> Result<Facts, &'static str> {
    let etag = output
        .e_tag()
        .map(unquote_etag)
        .or_else(|| target.etag.map(str::to_owned))
        .ok_or("no ETag")?;
    let sha256 = full_object_sha256(
        output.checksum_sha256(),
        output.checksum_type().map(|t| t.as_str()),
        Some(&etag),
    )
    .map_err(|untrusted| untrusted.as_str())?;
    let length = output
        .content_length()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or("no Content-Length")?;
    Ok(Facts {
        etag,
        sha256,
        sha256_source: Sha256Source::S3Checksum,
        length,
        content_type: output.content_type().map(str::to_owned),
        last_modified: timestamp(output.last_modified()),
        version_id: version_of(output.version_id(), target),
        uploader,
    })
}

/// A HeadObject error. 412: superseded. 404 is left to the GET, whose answer tells a deleted
/// object from a missing bucket (a HEAD answer has no body, so no error code). The rest fail as
/// a GET's would.
fn classify_head(
    error: aws_sdk_s3::error::SdkError<HeadObjectError, aws_smithy_runtime_api::http::Response>,
) -> Result<Headed, Failure> {
    match aws::status(&error) {
        Some(412) => Ok(Headed::Answered(Fetched::Superseded)),
        Some(404) => Ok(Headed::Read("HeadObject answered 404")),
        _ => Err(aws::classify(Dependency::S3, error)),
    }
}

/// Reads and hashes an object whose stored SHA-256 was trusted, and compares the two. The bytes
/// are the truth: on a mismatch the computed hash is recorded, and the mismatch is counted and
/// logged as a finding about the object and its store, not as a failed read. So this GET skips
/// the SDK's own response-checksum validation, which would turn the very mismatch looked for
/// into a body error and a retry.
async fn audit(
    s3: &aws_sdk_s3::Client,
    target: Target<'_>,
    required_uploaded_by: Option<&str>,
    ranged: &Ranged,
    vouched: &Facts,
) -> Result<Fetched, Failure> {
    let unvalidated = aws_sdk_s3::Client::from_conf(
        s3.config()
            .to_builder()
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build(),
    );
    let fetched = fetch(&unvalidated, target, required_uploaded_by, ranged).await?;
    if let Fetched::Object(read) = &fetched {
        crate::ops::metrics::checksum_audit(
            &format!("s3://{}/{}", target.bucket, target.key),
            &read.etag,
            &vouched.sha256,
            &read.sha256,
        );
    }
    Ok(fetched)
}

/// GETs the object and, if `required_uploaded_by` allows it, hashes the body.
pub async fn fetch(
    s3: &aws_sdk_s3::Client,
    target: Target<'_>,
    required_uploaded_by: Option<&str>,
    ranged: &Ranged,
) -> Result<Fetched, Failure> {
    let (mut output, first_part) = match first_get(s3, &target, ranged).await? {
        Ok(answer) => answer,
        Err(fetched) => return Ok(fetched),
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
        .ok_or_else(|| {
            Failure::transient(RetryReason::S3Error, "GetObject answered without an ETag")
        })?;
    let facts = Facts {
        etag,
        sha256: String::new(),
        sha256_source: Sha256Source::Computed,
        length: 0,
        // Taken, not copied: the answer is dropped here.
        content_type: output.content_type.take(),
        last_modified: timestamp(output.last_modified()),
        version_id: version_of(output.version_id(), &target),
        uploader,
    };
    // Only what the hash needs goes on: the whole answer (over a kilobyte of header fields)
    // would be copied into the hashing future and held while it runs.
    let opened = Opened {
        content_length: output.content_length().and_then(|n| u64::try_from(n).ok()),
        content_range: output.content_range.take(),
        body: output.body,
    };
    match hash_body(s3, &target, opened, first_part, &facts.etag, ranged).await {
        Ok((sha256, length)) => Ok(Fetched::Object(Facts {
            sha256,
            length,
            ..facts
        })),
        Err(stop) => answered(stop),
    }
}

/// What of a GET's answer the hash reads.
struct Opened {
    body: ByteStream,
    content_length: Option<u64>,
    content_range: Option<String>,
}

/// The first GET, pinned to the announced version: of the first part when parts are read from
/// the start, else of the whole object. `Err` holds an answer that ends the fetch (gone,
/// superseded). Returns the part length asked for, if any.
async fn first_get(
    s3: &aws_sdk_s3::Client,
    target: &Target<'_>,
    ranged: &Ranged,
) -> Result<Result<(GetObjectOutput, Option<u64>), Fetched>, Failure> {
    let mut first_part = ranged
        .splits_from_start(target.size)
        .then_some(ranged.part_size);
    loop {
        let mut request = s3.get_object().bucket(target.bucket).key(target.key);
        if let Some(version) = target.version_id {
            request = request.version_id(version);
        } else if let Some(etag) = target.etag {
            request = request.if_match(format!("\"{etag}\""));
        }
        if let Some(part) = first_part {
            request = request.range(format!("bytes=0-{}", part - 1));
        }
        // Boxed, as in `head`: keeps the SDK's large send future out of the caller's.
        match Box::pin(request.send()).await {
            Ok(output) => return Ok(Ok((output, first_part))),
            // The event said large but the object is empty: S3 refuses any range. Read it whole.
            Err(error) if first_part.is_some() && aws::status(&error) == Some(416) => {
                first_part = None;
            }
            Err(error) => return answered(classify_get(error)).map(Err),
        }
    }
}

/// Hashes what the first GET opened: the rest in parts when it was a first part, adaptively
/// when it is a large whole object, else as one stream checked against Content-Length.
async fn hash_body(
    s3: &aws_sdk_s3::Client,
    target: &Target<'_>,
    opened: Opened,
    first_part: Option<u64>,
    etag: &str,
    ranged: &Ranged,
) -> Result<(String, u64), Stop> {
    let Opened {
        body,
        content_length,
        content_range,
    } = opened;
    let pin = || Pin {
        s3: s3.clone(),
        bucket: target.bucket.to_owned(),
        key: target.key.to_owned(),
        version_id: target.version_id.map(str::to_owned),
        if_match: format!("\"{etag}\""),
    };
    let (hasher, length) = match (first_part, content_range.as_deref()) {
        (Some(_), Some(range)) => match parse_content_range(range)? {
            (0, end, total) => {
                Box::pin(Ranges::new(pin(), ranged, end + 1, total).hash(body)).await?
            }
            (start, ..) => {
                return Err(Failure::transient(
                    RetryReason::S3BadRange,
                    format!("asked for bytes from 0, got a range starting at {start}"),
                )
                .into());
            }
        },
        // A whole object (or a server that ignored the range: 200 without Content-Range).
        _ => match (ranged.stream_floor, content_length) {
            (Some(floor), Some(total)) if first_part.is_none() && ranged.applies(Some(total)) => {
                Box::pin(Ranges::new(pin(), ranged, 0, total).hash_adaptive(body, floor)).await?
            }
            _ => hash(body, content_length).await?,
        },
    };
    Ok((digest_hex(hasher), length))
}

/// S3's Last-Modified as a timestamp.
fn timestamp(t: Option<&aws_smithy_types::DateTime>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
}

/// The version S3 answered with (`null` is an unversioned object's), else the one announced.
fn version_of(answered: Option<&str>, target: &Target<'_>) -> Option<String> {
    answered
        .filter(|v| *v != "null")
        .map(str::to_owned)
        .or_else(|| target.version_id.map(str::to_owned))
}

/// One stream into the hash; its length must be Content-Length's, when given.
async fn hash(mut body: ByteStream, expected: Option<u64>) -> Result<(Sha256, u64), Failure> {
    let mut hasher = Sha256::new();
    let mut length = 0u64;
    while let Some(chunk) = next_chunk(&mut body).await? {
        feed(&mut hasher, &mut length, &chunk);
    }
    if let Some(expected) = expected
        && expected != length
    {
        return Err(Failure::transient(
            RetryReason::S3ShortRead,
            format!("read {length} bytes, Content-Length said {expected}"),
        ));
    }
    Ok((hasher, length))
}

/// What a GET's error means for the fetch: an answer (gone, superseded) or a failure.
fn answered(stop: Stop) -> Result<Fetched, Failure> {
    match stop {
        Stop::Gone => Ok(Fetched::Gone),
        Stop::Superseded => Ok(Fetched::Superseded),
        Stop::Failed(failure) => Err(failure),
    }
}
