//! Fetches exactly the announced version of an object and hashes it as a stream.
//!
//! The GET names the version (`versionId`) or pins the bytes (`If-Match` on the event's ETag), so
//! the ETag and SHA-256 that end in a row always describe the same bytes. The body is never held
//! in memory: chunks go through SHA-256 as they arrive and are counted against Content-Length.
//!
//! Large objects (the event's size at or above [`Ranged::threshold`]) are read as ranged GETs:
//! the first part's response carries the metadata (checked before any body is read) and, in
//! Content-Range, the total size; the later parts are fetched in parallel, each pinned with
//! `If-Match` on the first response's ETag (and the `versionId` when the event named one), so all
//! parts are the same bytes, and fed into the hash strictly in order. A part answering 412 means
//! the object was overwritten mid-fetch: the result is [`Fetched::Superseded`], as for the first
//! GET. Memory is bounded: parts that arrive ahead of the hash are buffered, at most
//! `parallelism` of them per object and per process (one semaphore for all objects), so buffers
//! never exceed `parallelism × part_size` whatever the worker's concurrency; an object that finds
//! no free buffer streams its next part directly into the hash, exactly like a plain GET.

use std::collections::VecDeque;
use std::sync::Arc;

use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::operation::get_object::builders::GetObjectFluentBuilder;
use aws_sdk_s3::primitives::ByteStream;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::bytes::Bytes;
use tokio_util::task::AbortOnDropHandle;

use crate::aws;
use crate::disposition::{Dependency, Failure, RetryReason};
use crate::process::event::unquote_etag;
use crate::process::metadata::Uploader;

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

/// When and how to read an object as parallel ranged GETs.
#[derive(Debug, Clone)]
pub struct Ranged {
    /// Objects announced at least this large are read in parts; 0 turns ranged GETs off.
    pub threshold: u64,
    pub part_size: u64,
    /// Part GETs in flight for one object, and part buffers for the whole process.
    pub parallelism: usize,
    buffers: Arc<Semaphore>,
}

impl Ranged {
    pub fn new(threshold: u64, part_size: u64, parallelism: usize) -> Self {
        let parallelism = parallelism.max(1);
        Self {
            threshold,
            part_size: part_size.max(1),
            parallelism,
            buffers: Arc::new(Semaphore::new(parallelism)),
        }
    }

    /// One GET per object, whatever its size.
    pub fn off() -> Self {
        Self::new(0, 8 << 20, 1)
    }

    fn applies(&self, size: Option<u64>) -> bool {
        self.threshold > 0
            && self.parallelism > 1
            && size.is_some_and(|s| s >= self.threshold && s > self.part_size)
    }
}

impl Default for Ranged {
    /// The documented defaults: 8 MiB parts, 4 at once, for objects of 64 MiB and more.
    fn default() -> Self {
        Self::new(64 << 20, 8 << 20, 4)
    }
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

/// Why hashing stopped before the end: the object went away or changed (a part answered 404 or
/// 412), or a failure.
enum Stop {
    Gone,
    Superseded,
    Failed(Failure),
}

impl From<Failure> for Stop {
    fn from(failure: Failure) -> Self {
        Stop::Failed(failure)
    }
}

/// GETs the object and, if `required_uploaded_by` allows it, hashes the body.
pub async fn fetch(
    s3: &aws_sdk_s3::Client,
    target: Target<'_>,
    required_uploaded_by: Option<&str>,
    ranged: &Ranged,
) -> Result<Fetched, Failure> {
    let mut first_part = ranged.applies(target.size).then_some(ranged.part_size);
    let output = loop {
        let mut request = s3.get_object().bucket(target.bucket).key(target.key);
        if let Some(version) = target.version_id {
            request = request.version_id(version);
        } else if let Some(etag) = target.etag {
            request = request.if_match(format!("\"{etag}\""));
        }
        if let Some(part) = first_part {
            request = request.range(format!("bytes=0-{}", part - 1));
        }
        match request.send().await {
            Ok(output) => break output,
            // The event said large but the object is empty: S3 refuses any range. Read it whole.
            Err(error) if first_part.is_some() && aws::status(&error) == Some(416) => {
                first_part = None;
            }
            Err(error) => return classify_get(error),
        }
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
    let content_length = output.content_length().and_then(|n| u64::try_from(n).ok());
    let content_range = output.content_range().map(parse_content_range);
    let content_type = output.content_type().map(str::to_owned);
    let last_modified = output
        .last_modified()
        .and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()));
    let version_id = output
        .version_id()
        .filter(|v| *v != "null")
        .map(str::to_owned)
        .or_else(|| target.version_id.map(str::to_owned));

    let hashed = match (first_part, content_range) {
        (Some(_), Some(Ok((0, end, total)))) => {
            let pin = Pin {
                s3: s3.clone(),
                bucket: target.bucket.to_owned(),
                key: target.key.to_owned(),
                version_id: target.version_id.map(str::to_owned),
                if_match: format!("\"{etag}\""),
            };
            hash_ranged(pin, output.body, end + 1, total, ranged)
                .await
                .map(|(sha, length)| (sha, length, Some(total)))
        }
        (Some(_), Some(Ok((start, ..)))) => {
            return Err(Failure::transient(
                RetryReason::S3BadRange,
                format!("asked for bytes from 0, got a range starting at {start}"),
            ));
        }
        (Some(_), Some(Err(failure))) => return Err(failure),
        // No range asked, or the server ignored it (200 without Content-Range): the whole body.
        _ => hash(output.body)
            .await
            .map(|(sha, length)| (sha, length, content_length))
            .map_err(Stop::Failed),
    };
    let (sha256, length, expected) = match hashed {
        Ok(hashed) => hashed,
        Err(Stop::Gone) => return Ok(Fetched::Gone),
        Err(Stop::Superseded) => return Ok(Fetched::Superseded),
        Err(Stop::Failed(failure)) => return Err(failure),
    };
    if let Some(expected) = expected
        && expected != length
    {
        return Err(Failure::transient(
            RetryReason::S3ShortRead,
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
    while let Some(chunk) = next_chunk(&mut body).await? {
        feed(&mut hasher, &mut length, &chunk);
    }
    Ok((hex(&hasher.finalize()), length))
}

/// A body that breaks mid-read (reset, stall, a checksum the SDK found wrong) is a fact about
/// this read of this object: the message is retried, and a probe decides whether S3 is down.
async fn next_chunk(body: &mut ByteStream) -> Result<Option<Bytes>, Failure> {
    body.try_next().await.map_err(|e| {
        let text = crate::disposition::chain(&e).to_ascii_lowercase();
        let reason = if text.contains("checksum mismatch") {
            RetryReason::S3ChecksumMismatch
        } else {
            RetryReason::S3ReadFailed
        };
        Failure::transient(reason, e)
    })
}

fn feed(hasher: &mut Sha256, length: &mut u64, chunk: &[u8]) {
    hasher.update(chunk);
    *length += chunk.len() as u64;
    crate::ops::metrics::hashed_bytes(chunk.len());
}

/// What every part GET of one object names: the same key, version and bytes.
struct Pin {
    s3: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    version_id: Option<String>,
    if_match: String,
}

impl Pin {
    fn request(&self, part: Part) -> GetObjectFluentBuilder {
        let mut request = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .if_match(&self.if_match)
            .range(format!(
                "bytes={}-{}",
                part.start,
                part.start + part.len - 1
            ));
        if let Some(version) = &self.version_id {
            request = request.version_id(version);
        }
        request
    }
}

#[derive(Debug, Clone, Copy)]
struct Part {
    start: u64,
    len: u64,
}

/// Sends one part's GET and checks that the answer is that range.
async fn open_part(request: GetObjectFluentBuilder, part: Part) -> Result<ByteStream, Stop> {
    let output = match request.send().await {
        Ok(output) => output,
        Err(error) => {
            return Err(match classify_get(error) {
                Ok(Fetched::Superseded) => Stop::Superseded,
                // The only other outcome a failed GET has.
                Ok(_) => Stop::Gone,
                Err(failure) => Stop::Failed(failure),
            });
        }
    };
    match output.content_range().map(parse_content_range) {
        Some(Ok((start, end, _))) if start == part.start && end + 1 == part.start + part.len => {
            Ok(output.body)
        }
        Some(Err(failure)) => Err(failure.into()),
        other => Err(Failure::transient(
            RetryReason::S3BadRange,
            format!(
                "asked for bytes {}-{}, got {other:?}",
                part.start,
                part.start + part.len - 1
            ),
        )
        .into()),
    }
}

/// A part fetched ahead of the hash: its chunks wait in a channel (at most one part's bytes).
struct Buffered {
    part: Part,
    chunks: mpsc::UnboundedReceiver<Result<Bytes, Stop>>,
    _task: AbortOnDropHandle<()>,
    _buffer: OwnedSemaphorePermit,
}

enum Current {
    Stream(Part, ByteStream),
    Direct(Part),
    Buffered(Buffered),
}

async fn hash_ranged(
    pin: Pin,
    first: ByteStream,
    first_len: u64,
    total: u64,
    ranged: &Ranged,
) -> Result<(String, u64), Stop> {
    let mut hasher = Sha256::new();
    let mut length = 0u64;
    let pin = Arc::new(pin);
    let mut next = first_len.min(total);
    let mut pending: VecDeque<Buffered> = VecDeque::new();
    let mut current = Current::Stream(
        Part {
            start: 0,
            len: next,
        },
        first,
    );
    loop {
        // Fetch ahead while this process has buffers to spare; the current part counts as one.
        while pending.len() + 1 < ranged.parallelism && next < total {
            let Ok(buffer) = ranged.buffers.clone().try_acquire_owned() else {
                break;
            };
            let part = Part {
                start: next,
                len: ranged.part_size.min(total - next),
            };
            next += part.len;
            let (sender, chunks) = mpsc::unbounded_channel();
            let request = pin.request(part);
            let task = tokio::spawn(async move {
                let mut body = match open_part(request, part).await {
                    Ok(body) => body,
                    Err(stop) => {
                        let _ = sender.send(Err(stop));
                        return;
                    }
                };
                loop {
                    match next_chunk(&mut body).await {
                        Ok(Some(chunk)) => {
                            if sender.send(Ok(chunk)).is_err() {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(failure) => {
                            let _ = sender.send(Err(failure.into()));
                            return;
                        }
                    }
                }
            });
            pending.push_back(Buffered {
                part,
                chunks,
                _task: AbortOnDropHandle::new(task),
                _buffer: buffer,
            });
        }

        let (part, read) = match current {
            Current::Stream(part, mut body) => {
                let before = length;
                while let Some(chunk) = next_chunk(&mut body).await? {
                    feed(&mut hasher, &mut length, &chunk);
                }
                (part, length - before)
            }
            Current::Direct(part) => {
                let mut body = open_part(pin.request(part), part).await?;
                let before = length;
                while let Some(chunk) = next_chunk(&mut body).await? {
                    feed(&mut hasher, &mut length, &chunk);
                }
                (part, length - before)
            }
            Current::Buffered(mut buffered) => {
                let before = length;
                while let Some(chunk) = buffered.chunks.recv().await {
                    feed(&mut hasher, &mut length, &chunk?);
                }
                (buffered.part, length - before)
            }
        };
        if read != part.len {
            return Err(Failure::transient(
                RetryReason::S3ShortRead,
                format!(
                    "read {read} bytes of the part at {}, asked for {}",
                    part.start, part.len
                ),
            )
            .into());
        }
        current = match pending.pop_front() {
            Some(buffered) => Current::Buffered(buffered),
            None if next < total => {
                let part = Part {
                    start: next,
                    len: ranged.part_size.min(total - next),
                };
                next += part.len;
                Current::Direct(part)
            }
            None => break,
        };
    }
    Ok((hex(&hasher.finalize()), length))
}

/// `bytes START-END/TOTAL` → (start, end, total).
fn parse_content_range(value: &str) -> Result<(u64, u64, u64), Failure> {
    let parsed = value
        .trim()
        .strip_prefix("bytes ")
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(range, total)| {
            let (start, end) = range.split_once('-')?;
            Some((
                start.trim().parse().ok()?,
                end.trim().parse().ok()?,
                total.trim().parse().ok()?,
            ))
        });
    match parsed {
        Some((start, end, total)) if start <= end && end < total => Ok((start, end, total)),
        _ => Err(Failure::transient(
            RetryReason::S3BadRange,
            format!("unparseable Content-Range {value:?}"),
        )),
    }
}

/// One object the S3 probe may read in depth.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ObjectRef {
    bucket: String,
    key: String,
    version_id: Option<String>,
}

impl ObjectRef {
    fn of(target: &Target<'_>) -> Self {
        Self {
            bucket: target.bucket.to_owned(),
            key: target.key.to_owned(),
            version_id: target.version_id.map(str::to_owned),
        }
    }
}

/// Objects to read when the S3 breaker trips: the last object read whole, and a few that failed
/// since. HeadBucket alone cannot see a brownout (a bucket policy or a KMS grant that refuses
/// every GetObject while the bucket answers), but a real read of an object that was readable a
/// moment ago can: if it fails too, the fault is S3's or ours, not the objects'.
#[derive(Debug, Default)]
pub struct Canary {
    state: std::sync::Mutex<CanaryState>,
}

#[derive(Debug, Default)]
struct CanaryState {
    last_ok: Option<ObjectRef>,
    failed: VecDeque<ObjectRef>,
}

/// Failed objects kept for the probe: enough that one object that stays unreadable on its own
/// cannot keep the worker paused.
const CANARY_FAILED_KEPT: usize = 5;

impl Canary {
    fn state(&self) -> std::sync::MutexGuard<'_, CanaryState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn read_ok(&self, target: &Target<'_>) {
        self.state().last_ok = Some(ObjectRef::of(target));
    }

    pub fn read_failed(&self, target: &Target<'_>) {
        let object = ObjectRef::of(target);
        let mut state = self.state();
        state.failed.retain(|o| *o != object);
        state.failed.push_front(object);
        state.failed.truncate(CANARY_FAILED_KEPT);
    }

    /// Reads the first byte of the canary objects until one answers: any answer that shows S3
    /// authorised the read (the byte, 404, 412, 416) means reads work. With nothing to read yet,
    /// there is nothing to disprove.
    pub async fn probe(&self, s3: &aws_sdk_s3::Client) -> Result<(), Failure> {
        let candidates: Vec<ObjectRef> = {
            let state = self.state();
            state
                .last_ok
                .iter()
                .chain(state.failed.iter())
                .cloned()
                .collect()
        };
        let mut last = None;
        for object in candidates {
            let mut request = s3
                .get_object()
                .bucket(&object.bucket)
                .key(&object.key)
                .range("bytes=0-0");
            if let Some(version) = &object.version_id {
                request = request.version_id(version);
            }
            let answer = match request.send().await {
                Ok(output) => output
                    .body
                    .collect()
                    .await
                    .map(drop)
                    .map_err(|e| Failure::transient(RetryReason::S3ReadFailed, e)),
                Err(error) => match aws::status(&error) {
                    Some(404 | 412 | 416) => Ok(()),
                    status => Err(aws::classify(Dependency::S3, status, error)),
                },
            };
            match answer {
                Ok(()) => return Ok(()),
                Err(failure) => last = Some(failure),
            }
        }
        last.map_or(Ok(()), Err)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_range() {
        assert!(matches!(
            parse_content_range("bytes 0-99/1000"),
            Ok((0, 99, 1000))
        ));
        assert!(parse_content_range("bytes 0-99/*").is_err());
        assert!(parse_content_range("bytes 10-5/100").is_err());
        assert!(parse_content_range("items 0-1/2").is_err());
    }

    #[test]
    fn ranged_applies_only_to_large_announced_sizes() {
        let r = Ranged::new(64, 8, 4);
        assert!(r.applies(Some(64)));
        assert!(!r.applies(Some(63)));
        assert!(!r.applies(None));
        assert!(!Ranged::new(0, 8, 4).applies(Some(1 << 40)));
        assert!(!Ranged::new(64, 8, 1).applies(Some(1 << 40)));
        assert!(!Ranged::off().applies(Some(1 << 40)));
    }
}
