//! Large objects read as parallel ranged GETs, hashed strictly in order, with bounded buffers.
//!
//! Every part GET names the same bytes: `If-Match` on the first response's ETag, and the
//! `versionId` when the event named one. A part answering 412 means the object was overwritten
//! mid-fetch: the fetch ends as superseded. Parts that arrive ahead of the hash are buffered, at
//! most `parallelism` of them per object and per process (one semaphore for all objects), so
//! buffers never exceed `parallelism × part_size` whatever the worker's concurrency; an object
//! that finds no free buffer streams its next part directly into the hash, like a plain GET.
//!
//! **Adaptive (the default).** Ranged GETs only pay where one connection is slow (real S3 gives
//! each connection a share of its bandwidth); a server that re-reads the whole object for every
//! range (emulators, some S3-compatible stores) makes them many times slower than one GET. So
//! the object is first read as one GET. Once a part's worth has arrived, the stream's rate is
//! measured; at or above the floor it simply continues to the end. Below it, the rest of the
//! object is fetched ahead in parts while the stream goes on for two more parts' worth, and the
//! stream is abandoned for the parts only if the first of them has fully arrived by then (the
//! parts proved faster). Otherwise the parts are dropped and the stream reads on: the default is
//! never slower than one GET by more than that one probe.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::operation::get_object::builders::GetObjectFluentBuilder;
use aws_sdk_s3::primitives::ByteStream;
use sha2::Sha256;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::bytes::Bytes;
use tokio_util::task::AbortOnDropHandle;

use crate::disposition::{Failure, RetryReason};
use crate::process::body::{Stop, classify_get, feed, next_chunk};

/// When and how to read an object as parallel ranged GETs.
#[derive(Debug, Clone)]
pub struct Ranged {
    /// Objects at least this large may be read in parts; 0 turns ranged GETs off.
    pub(crate) threshold: u64,
    pub(crate) part_size: u64,
    /// Part GETs in flight for one object, and part buffers for the whole process.
    pub(crate) parallelism: usize,
    /// `Some(rate)`: adaptive, parts only when one GET streams slower than `rate` bytes/s and the
    /// parts prove faster. `None`: parts from the first byte on.
    pub(crate) stream_floor: Option<u64>,
    buffers: Arc<Semaphore>,
}

/// The default floor: above the ~85–90 MB/s AWS documents for one connection to S3, so real S3
/// gets parallel parts, and far below what a local emulator streams.
pub(crate) const DEFAULT_STREAM_FLOOR: u64 = 128 << 20;

impl Ranged {
    /// Parts from the first byte on for objects of `threshold` bytes and more.
    pub fn new(threshold: u64, part_size: u64, parallelism: usize) -> Self {
        let parallelism = parallelism.max(1);
        Self {
            threshold,
            part_size: part_size.max(1),
            parallelism,
            stream_floor: None,
            buffers: Arc::new(Semaphore::new(parallelism)),
        }
    }

    /// One GET first; parts only where that stream is slower than `floor` bytes/s.
    pub fn adaptive(mut self, floor: u64) -> Self {
        self.stream_floor = Some(floor);
        self
    }

    /// One GET per object, whatever its size.
    pub fn off() -> Self {
        Self::new(0, 8 << 20, 1)
    }

    /// Whether an object of `size` bytes may be read in parts.
    pub(crate) fn applies(&self, size: Option<u64>) -> bool {
        self.threshold > 0
            && self.parallelism > 1
            && size.is_some_and(|s| s >= self.threshold && s > self.part_size)
    }

    /// Whether the first GET already asks for the first part only.
    pub(crate) fn splits_from_start(&self, size: Option<u64>) -> bool {
        self.stream_floor.is_none() && self.applies(size)
    }
}

impl Default for Ranged {
    /// The documented defaults: adaptive, 8 MiB parts, 4 at once, for objects of 64 MiB and more.
    fn default() -> Self {
        Self::new(64 << 20, 8 << 20, 4).adaptive(DEFAULT_STREAM_FLOOR)
    }
}

/// What every part GET of one object names: the same key, version and bytes.
pub(crate) struct Pin {
    pub(crate) s3: aws_sdk_s3::Client,
    pub(crate) bucket: String,
    pub(crate) key: String,
    pub(crate) version_id: Option<String>,
    pub(crate) if_match: String,
}

impl Pin {
    fn request(&self, part: Part) -> GetObjectFluentBuilder {
        let mut request = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .if_match(&self.if_match)
            .range(format!("bytes={}-{}", part.start, part.end() - 1));
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

impl Part {
    fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// The parts of `[next, total)`, in order.
struct Parts {
    next: u64,
    total: u64,
    size: u64,
}

impl Iterator for Parts {
    type Item = Part;

    fn next(&mut self) -> Option<Part> {
        (self.next < self.total).then(|| {
            let part = Part {
                start: self.next,
                len: self.size.min(self.total - self.next),
            };
            self.next += part.len;
            part
        })
    }
}

/// A part fetched ahead of the hash: its chunks wait in a channel (at most one part's bytes).
struct Buffered {
    part: Part,
    chunks: mpsc::UnboundedReceiver<Result<Bytes, Stop>>,
    /// Set once every chunk of the part is in the channel.
    complete: Arc<AtomicBool>,
    _task: AbortOnDropHandle<()>,
    _buffer: OwnedSemaphorePermit,
}

/// Where the bytes of the part being hashed come from.
enum Source {
    Body(ByteStream),
    Buffered(Buffered),
}

impl Source {
    async fn next(&mut self) -> Result<Option<Bytes>, Stop> {
        match self {
            Source::Body(body) => Ok(next_chunk(body).await?),
            Source::Buffered(buffered) => buffered.chunks.recv().await.transpose(),
        }
    }
}

/// The running hash of one object and the parts still to read.
pub(crate) struct Ranges<'a> {
    pin: Arc<Pin>,
    ranged: &'a Ranged,
    parts: Parts,
    pending: VecDeque<Buffered>,
    hasher: Sha256,
    length: u64,
}

impl<'a> Ranges<'a> {
    /// For an object of `total` bytes whose first `first_len` bytes come from the first GET.
    pub(crate) fn new(pin: Pin, ranged: &'a Ranged, first_len: u64, total: u64) -> Self {
        Self {
            pin: Arc::new(pin),
            ranged,
            parts: Parts {
                next: first_len.min(total),
                total,
                size: ranged.part_size,
            },
            pending: VecDeque::new(),
            hasher: Sha256::default(),
            length: 0,
        }
    }

    /// Hashes `first` (the first part's body), then every later part in order, fetching ahead.
    pub(crate) async fn hash(mut self, first: ByteStream) -> Result<(Sha256, u64), Stop> {
        let first_part = Part {
            start: 0,
            len: self.parts.next,
        };
        self.drain(first_part, Source::Body(first)).await?;
        self.hash_rest().await
    }

    /// Adaptive: `body` is one GET of the whole object (see the module's header).
    pub(crate) async fn hash_adaptive(
        mut self,
        mut body: ByteStream,
        floor: u64,
    ) -> Result<(Sha256, u64), Stop> {
        let total = self.parts.total;
        let started = Instant::now();
        // The probation: one part's worth through the single stream.
        let carry = self
            .stream_until(&mut body, self.ranged.part_size.min(total))
            .await?;
        self.feed_carry(carry);
        if self.length >= total || rate(self.length, started.elapsed()) >= floor {
            return self.stream_to_end(body).await;
        }
        // Too slow: parts for what lies beyond two more parts' worth of the stream.
        let handover = (self.length + 2 * self.ranged.part_size).min(total);
        self.parts.next = handover;
        // One part as the probe: a server that re-reads the whole object for every range pays
        // for one such read, not `parallelism - 1`.
        self.fetch_ahead_up_to(1);
        let carry = self.stream_until(&mut body, handover).await?;
        let proved = self
            .pending
            .front()
            .is_some_and(|first| first.complete.load(Ordering::Acquire));
        if !proved {
            // The parts were no faster than the stream: drop them and read on.
            self.pending.clear();
            self.feed_carry(carry);
            return self.stream_to_end(body).await;
        }
        tracing::debug!(
            at = handover,
            "slow stream: reading the rest in parallel parts"
        );
        drop(body);
        self.hash_rest().await
    }

    /// Feeds the single stream into the hash up to byte `end`. A chunk crossing `end` is cut
    /// there; its remainder is returned, for the caller to feed if the stream goes on.
    async fn stream_until(
        &mut self,
        body: &mut ByteStream,
        end: u64,
    ) -> Result<Option<Bytes>, Stop> {
        while self.length < end {
            let Some(mut chunk) = next_chunk(body).await? else {
                return Err(short(self.length, Part { start: 0, len: end }));
            };
            let wanted = usize::try_from(end - self.length).unwrap_or(usize::MAX);
            if chunk.len() > wanted {
                let rest = chunk.split_off(wanted);
                feed(&mut self.hasher, &mut self.length, &chunk);
                return Ok(Some(rest));
            }
            feed(&mut self.hasher, &mut self.length, &chunk);
        }
        Ok(None)
    }

    fn feed_carry(&mut self, carry: Option<Bytes>) {
        if let Some(rest) = carry {
            feed(&mut self.hasher, &mut self.length, &rest);
        }
    }

    /// Reads the single stream to its end, which must be the object's end.
    async fn stream_to_end(mut self, mut body: ByteStream) -> Result<(Sha256, u64), Stop> {
        while let Some(chunk) = next_chunk(&mut body).await? {
            feed(&mut self.hasher, &mut self.length, &chunk);
        }
        let total = self.parts.total;
        if self.length != total {
            return Err(short(
                self.length,
                Part {
                    start: 0,
                    len: total,
                },
            ));
        }
        Ok((self.hasher, self.length))
    }

    async fn hash_rest(mut self) -> Result<(Sha256, u64), Stop> {
        loop {
            self.fetch_ahead();
            let (part, source) = match self.pending.pop_front() {
                Some(buffered) => (buffered.part, Source::Buffered(buffered)),
                None => match self.parts.next() {
                    Some(part) => (part, Source::Body(open_part(&self.pin, part).await?)),
                    None => break,
                },
            };
            self.drain(part, source).await?;
        }
        Ok((self.hasher, self.length))
    }

    /// Reads one part to its end into the hash; it must be exactly the part's length.
    async fn drain(&mut self, part: Part, mut source: Source) -> Result<(), Stop> {
        let before = self.length;
        while let Some(chunk) = source.next().await? {
            feed(&mut self.hasher, &mut self.length, &chunk);
        }
        let read = self.length - before;
        if read != part.len {
            return Err(short(read, part));
        }
        Ok(())
    }

    /// Starts part GETs while this process has buffers to spare; the part being hashed counts
    /// as one.
    fn fetch_ahead(&mut self) {
        self.fetch_ahead_up_to(self.ranged.parallelism - 1);
    }

    /// [`Ranges::fetch_ahead`], with at most `ahead` parts waiting.
    fn fetch_ahead_up_to(&mut self, ahead: usize) {
        while self.pending.len() < ahead.min(self.ranged.parallelism - 1) {
            let Ok(buffer) = self.ranged.buffers.clone().try_acquire_owned() else {
                return;
            };
            let Some(part) = self.parts.next() else {
                return;
            };
            let (sender, chunks) = mpsc::unbounded_channel();
            let complete = Arc::new(AtomicBool::new(false));
            let task = tokio::spawn(fill(self.pin.clone(), part, sender, complete.clone()));
            self.pending.push_back(Buffered {
                part,
                chunks,
                complete,
                _task: AbortOnDropHandle::new(task),
                _buffer: buffer,
            });
        }
    }
}

/// Fetches one part into its channel; marks it complete once the last chunk is in.
async fn fill(
    pin: Arc<Pin>,
    part: Part,
    sender: mpsc::UnboundedSender<Result<Bytes, Stop>>,
    complete: Arc<AtomicBool>,
) {
    let mut body = match open_part(&pin, part).await {
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
            Ok(None) => {
                complete.store(true, Ordering::Release);
                return;
            }
            Err(failure) => {
                let _ = sender.send(Err(failure.into()));
                return;
            }
        }
    }
}

/// Sends one part's GET and checks that the answer is that range.
async fn open_part(pin: &Pin, part: Part) -> Result<ByteStream, Stop> {
    // Boxed, as in `fetch`: keeps the SDK's large send future out of the caller's.
    let output = match Box::pin(pin.request(part).send()).await {
        Ok(output) => output,
        Err(error) => return Err(classify_get(error)),
    };
    match output.content_range().map(parse_content_range) {
        Some(Ok((start, end, _))) if start == part.start && end + 1 == part.end() => {
            Ok(output.body)
        }
        Some(Err(failure)) => Err(failure.into()),
        other => Err(Failure::transient(
            RetryReason::S3BadRange,
            format!(
                "asked for bytes {}-{}, got {other:?}",
                part.start,
                part.end() - 1
            ),
        )
        .into()),
    }
}

fn short(read: u64, part: Part) -> Stop {
    Failure::transient(
        RetryReason::S3ShortRead,
        format!(
            "read {read} bytes of the part at {}, asked for {}",
            part.start, part.len
        ),
    )
    .into()
}

fn rate(bytes: u64, elapsed: Duration) -> u64 {
    (bytes as f64 / elapsed.as_secs_f64().max(1e-6)) as u64
}

/// `bytes START-END/TOTAL` → (start, end, total).
pub(crate) fn parse_content_range(value: &str) -> Result<(u64, u64, u64), Failure> {
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
    fn ranged_applies_only_to_large_sizes() {
        let r = Ranged::new(64, 8, 4);
        assert!(r.applies(Some(64)));
        assert!(!r.applies(Some(63)));
        assert!(!r.applies(None));
        assert!(!Ranged::new(0, 8, 4).applies(Some(1 << 40)));
        assert!(!Ranged::new(64, 8, 1).applies(Some(1 << 40)));
        assert!(!Ranged::off().applies(Some(1 << 40)));
        assert!(r.splits_from_start(Some(64)));
        assert!(!Ranged::default().splits_from_start(Some(1 << 40)));
        assert!(Ranged::default().applies(Some(1 << 40)));
    }

    #[test]
    fn parts_cover_the_range_once_in_order() {
        let parts: Vec<(u64, u64)> = Parts {
            next: 3,
            total: 20,
            size: 8,
        }
        .map(|p| (p.start, p.len))
        .collect();
        assert_eq!(parts, [(3, 8), (11, 8), (19, 1)]);
        assert_eq!(
            Parts {
                next: 5,
                total: 5,
                size: 8
            }
            .count(),
            0
        );
    }
}
