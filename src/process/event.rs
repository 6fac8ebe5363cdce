//! Turns a queue message body into the object events it announces, whatever envelope S3 used.
//!
//! Four shapes reach the queue: S3's own notification (`Records[]`), the same wrapped in an SNS
//! notification, an EventBridge event (`detail-type` + `detail`), and the `s3:TestEvent` S3 sends
//! when a notification is configured. Parsing is total: every body ends as events, a test event,
//! or a [`ParseError`] whose reason code says why it was dead-lettered.
//!
//! A sequencer is an ordering hint, not the upload: one that is not text, empty, not hexadecimal
//! or too long is dropped (the event is ordered by its time) and noted ([`SequencerProblem`]),
//! never a reason to refuse the record.

use crate::disposition::DeadLetterReason;
use chrono::{DateTime, NaiveDateTime, Utc};

mod json;
use json::Json;

/// What a message body announces.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `s3:TestEvent`: proof the notification is wired; acknowledged, never recorded.
    Test,
    /// One or more object events (S3 sends one per message, but the format allows many).
    Events(Vec<Item>),
}

/// One entry of a message: an event we act on, or an S3 event type we deliberately ignore.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Object(ObjectEvent),
    /// A real S3 event family we do not ingest (restore, tagging, ACL, replication…).
    Unsupported {
        event_name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    /// The object is gone (unversioned bucket), or the version (or delete marker) the event
    /// names was permanently deleted: `ObjectRemoved:Delete`, `LifecycleExpiration:Delete`,
    /// EventBridge `Object Deleted` with `deletion-type: Permanently Deleted`.
    Removed,
    /// A delete marker now hides the key; every version still exists:
    /// `ObjectRemoved:DeleteMarkerCreated`, `LifecycleExpiration:DeleteMarkerCreated`,
    /// EventBridge `Object Deleted` with `deletion-type: Delete Marker Created`.
    DeleteMarkerCreated,
}

/// An object event with its key already decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectEvent {
    pub(crate) kind: EventKind,
    pub(crate) event_name: String,
    pub bucket: String,
    pub key: String,
    /// Without quotes.
    pub etag: Option<String>,
    pub(crate) size: Option<u64>,
    pub(crate) version_id: Option<String>,
    pub sequencer: Option<String>,
    pub(crate) event_time: DateTime<Utc>,
}

/// Why an event's sequencer cannot order it (the `reason` of `sequencer_unusable_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SequencerProblem {
    /// A JSON value that is not a string.
    NotText,
    Empty,
    /// AWS's sequencers are hexadecimal; AWS's own sample event says `"Happy Sequencer"`.
    NotHex,
    /// Longer than [`limits::SEQUENCER_CHARS`].
    TooLong,
}

impl SequencerProblem {
    /// Every problem: a test holds them equal to the metric's pre-registered labels.
    #[cfg(test)]
    pub(crate) const ALL: [Self; 4] = [Self::NotText, Self::Empty, Self::NotHex, Self::TooLong];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::NotText => "not_text",
            Self::Empty => "empty",
            Self::NotHex => "not_hex",
            Self::TooLong => "too_long",
        }
    }
}

/// A parsed body, with the sequencers the parser had to drop (one per event that carried one).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Parsed {
    pub(crate) message: Message,
    pub(crate) unusable_sequencers: Vec<SequencerProblem>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct ParseError {
    pub(crate) reason: DeadLetterReason,
    pub(crate) detail: String,
}

/// What a message may carry. Anything beyond is `malformed_message`: no real S3 notification
/// comes near these, and every later step (headers, SQL, comparisons) can rely on them.
pub(crate) mod limits {
    /// SQS's own maximum message size.
    pub(crate) const BODY_BYTES: usize = 1 << 20;
    /// S3 sends one record per message; the format allows more.
    pub(crate) const RECORDS: usize = 100;
    /// S3's limit on a key, in bytes of UTF-8, after decoding.
    pub(crate) const KEY_BYTES: usize = 1024;
    /// Bucket names: 3–63 today, up to 255 for legacy us-east-1 buckets.
    pub(crate) const BUCKET_CHARS: usize = 255;
    /// An ETag: 32 hex digits, `-N` for multipart; other stores use other forms of similar size.
    pub(crate) const ETAG_CHARS: usize = 128;
    /// S3 version ids are at most 1,024 bytes.
    pub(crate) const VERSION_ID_CHARS: usize = 1024;
    /// S3 sequencers are 16–18 hex digits today. A longer one is dropped, not refused.
    pub(crate) const SEQUENCER_CHARS: usize = 64;
    /// S3's largest object (50 TB).
    pub(crate) const OBJECT_BYTES: u64 = 50_000_000_000_000;
    pub(crate) const EVENT_NAME_CHARS: usize = 128;
}

fn malformed(detail: impl Into<String>) -> ParseError {
    ParseError {
        reason: DeadLetterReason::MalformedMessage,
        detail: detail.into(),
    }
}

/// Parses a message body. SNS envelopes are unwrapped once (SNS never nests).
pub fn parse(body: &str) -> Result<Message, ParseError> {
    parse_noting(body).map(|parsed| parsed.message)
}

/// [`parse`], saying which sequencers were unusable (the worker counts them).
pub(crate) fn parse_noting(body: &str) -> Result<Parsed, ParseError> {
    let mut unusable_sequencers = Vec::new();
    let message = parse_body(body, &mut unusable_sequencers)?;
    Ok(Parsed {
        message,
        unusable_sequencers,
    })
}

fn parse_body(body: &str, notes: &mut Vec<SequencerProblem>) -> Result<Message, ParseError> {
    if body.len() > limits::BODY_BYTES {
        return Err(malformed(format!(
            "body of {} bytes is over the limit of {}",
            body.len(),
            limits::BODY_BYTES
        )));
    }
    // Borrowed from the body: the records' strings are read, never copied, until the few kept.
    let value: Json<'_> =
        serde_json::from_str(body).map_err(|e| malformed(format!("body is not JSON: {e}")))?;
    if value.get("Type").and_then(Json::as_str) == Some("Notification") {
        let inner = value
            .get("Message")
            .and_then(Json::as_str)
            .ok_or_else(|| malformed("SNS notification without a string Message"))?;
        let inner: Json<'_> = serde_json::from_str(inner)
            .map_err(|e| malformed(format!("SNS Message is not JSON: {e}")))?;
        return parse_value(&inner, notes);
    }
    parse_value(&value, notes)
}

fn parse_value(value: &Json<'_>, notes: &mut Vec<SequencerProblem>) -> Result<Message, ParseError> {
    if !value.is_object() {
        return Err(malformed("body is not a JSON object"));
    }
    let object = value;
    if object.get("Event").and_then(Json::as_str) == Some("s3:TestEvent") {
        return Ok(Message::Test);
    }
    if let Some(records) = object.get("Records") {
        let records = records
            .as_array()
            .ok_or_else(|| malformed("Records is not an array"))?;
        if records.is_empty() {
            return Err(malformed("Records is empty"));
        }
        if records.len() > limits::RECORDS {
            return Err(malformed(format!(
                "{} records, more than the limit of {}",
                records.len(),
                limits::RECORDS
            )));
        }
        return records
            .iter()
            .map(|record| parse_record(record, notes))
            .collect::<Result<_, _>>()
            .map(Message::Events);
    }
    if object.get("detail-type").is_some() {
        return parse_eventbridge(value, notes).map(|item| Message::Events(vec![item]));
    }
    Err(malformed(
        "not an S3, SNS or EventBridge notification (no Records, detail-type or Event)",
    ))
}

/// Classifies an S3 notification event name. `None` means it is not an S3 event name at all.
fn classify_s3_name(name: &str) -> Option<Option<EventKind>> {
    const IGNORED: [&str; 7] = [
        "ObjectRestore:",
        "ObjectTagging:",
        "ObjectAcl:",
        "Replication:",
        "IntelligentTiering",
        "LifecycleTransition",
        "ReducedRedundancyLostObject",
    ];
    if name.starts_with("ObjectCreated:") {
        Some(Some(EventKind::Created))
    } else if name == "ObjectRemoved:DeleteMarkerCreated"
        || name == "LifecycleExpiration:DeleteMarkerCreated"
    {
        Some(Some(EventKind::DeleteMarkerCreated))
    } else if name.starts_with("ObjectRemoved:") || name.starts_with("LifecycleExpiration:") {
        Some(Some(EventKind::Removed))
    } else if IGNORED.iter().any(|p| name.starts_with(p)) {
        Some(None)
    } else {
        None
    }
}

fn parse_record(record: &Json<'_>, notes: &mut Vec<SequencerProblem>) -> Result<Item, ParseError> {
    let name =
        str_at(record, &["eventName"]).ok_or_else(|| malformed("record without eventName"))?;
    check_len("eventName", name, limits::EVENT_NAME_CHARS)?;
    if let Some(source) = str_at(record, &["eventSource"])
        && source != "aws:s3"
    {
        return Err(malformed(format!("record from {source:?}, not aws:s3")));
    }
    let kind = match classify_s3_name(name) {
        Some(Some(kind)) => kind,
        Some(None) => {
            return Ok(Item::Unsupported {
                event_name: name.to_owned(),
            });
        }
        None => {
            return Err(ParseError {
                reason: DeadLetterReason::UnknownEvent,
                detail: format!("unknown S3 event name {name:?}"),
            });
        }
    };
    let s3 = record
        .get("s3")
        .ok_or_else(|| malformed("record without s3"))?;
    let time =
        str_at(record, &["eventTime"]).ok_or_else(|| malformed("record without eventTime"))?;
    object_event(
        kind,
        name,
        s3,
        &["object", "eTag"],
        &["object", "versionId"],
        time,
        notes,
    )
}

fn parse_eventbridge(
    value: &Json<'_>,
    notes: &mut Vec<SequencerProblem>,
) -> Result<Item, ParseError> {
    let detail_type = str_at(value, &["detail-type"]).unwrap_or_default();
    if let Some(source) = str_at(value, &["source"])
        && source != "aws.s3"
    {
        return Err(malformed(format!(
            "EventBridge event from {source:?}, not aws.s3"
        )));
    }
    check_len("detail-type", detail_type, limits::EVENT_NAME_CHARS)?;
    let kind = match detail_type {
        "Object Created" => EventKind::Created,
        "Object Deleted"
            if str_at(value, &["detail", "deletion-type"]) == Some("Delete Marker Created") =>
        {
            EventKind::DeleteMarkerCreated
        }
        "Object Deleted" => EventKind::Removed,
        other if other.starts_with("Object ") => {
            return Ok(Item::Unsupported {
                event_name: other.to_owned(),
            });
        }
        other => {
            return Err(ParseError {
                reason: DeadLetterReason::UnknownEvent,
                detail: format!("unknown EventBridge detail-type {other:?}"),
            });
        }
    };
    let detail = value
        .get("detail")
        .ok_or_else(|| malformed("EventBridge event without detail"))?;
    let time =
        str_at(value, &["time"]).ok_or_else(|| malformed("EventBridge event without time"))?;
    let name = str_at(detail, &["reason"]).unwrap_or(detail_type);
    object_event(
        kind,
        name,
        detail,
        &["object", "etag"],
        &["object", "version-id"],
        time,
        notes,
    )
}

/// Reads the fields both S3-event shapes share once the caller located them.
fn bucket_of<'v>(s3: &'v Json<'_>) -> Result<&'v str, ParseError> {
    let bucket = str_at(s3, &["bucket", "name"]).ok_or_else(|| malformed("no bucket name"))?;
    check_len("bucket name", bucket, limits::BUCKET_CHARS)?;
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(malformed(format!(
            "bucket name {bucket:?} is not a bucket name"
        )));
    }
    Ok(bucket)
}

fn key_of(s3: &Json<'_>) -> Result<String, ParseError> {
    let raw_key = str_at(s3, &["object", "key"]).ok_or_else(|| malformed("no object key"))?;
    // Percent-encoding at most triples a key: anything longer cannot decode to a valid one.
    check_len("object key", raw_key, limits::KEY_BYTES * 3)?;
    let key = decode_key(raw_key)?;
    check_len("decoded object key", &key, limits::KEY_BYTES)?;
    Ok(key)
}

fn size_of(s3: &Json<'_>) -> Result<Option<u64>, ParseError> {
    match s3.get("object").and_then(|o| o.get("size")) {
        None | Some(Json::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| *n <= limits::OBJECT_BYTES)
            .map(Some)
            .ok_or_else(|| malformed(format!("object size {v} is not a size S3 can have"))),
    }
}

/// The event's sequencer if it can order events; else `None`, noting why.
fn sequencer_of(s3: &Json<'_>) -> Result<Option<String>, SequencerProblem> {
    match s3.get("object").and_then(|o| o.get("sequencer")) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) if s.is_empty() => Err(SequencerProblem::Empty),
        Some(Json::String(s)) if s.len() > limits::SEQUENCER_CHARS => {
            Err(SequencerProblem::TooLong)
        }
        Some(Json::String(s)) if !s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Err(SequencerProblem::NotHex)
        }
        Some(Json::String(s)) => Ok(Some(s.as_ref().to_owned())),
        Some(_) => Err(SequencerProblem::NotText),
    }
}

fn object_event(
    kind: EventKind,
    event_name: &str,
    s3: &Json<'_>,
    etag_at: &[&str],
    version_at: &[&str],
    time: &str,
    notes: &mut Vec<SequencerProblem>,
) -> Result<Item, ParseError> {
    let bucket = bucket_of(s3)?;
    let key = key_of(s3)?;
    let size = size_of(s3)?;
    let etag = str_at(s3, etag_at)
        .map(unquote_etag)
        .filter(|e| !e.is_empty());
    if let Some(etag) = &etag {
        check_token("eTag", etag, limits::ETAG_CHARS)?;
    }
    let version_id = str_at(s3, version_at)
        .filter(|v| !v.is_empty() && *v != "null")
        .map(str::to_owned);
    if let Some(version) = &version_id {
        check_token("versionId", version, limits::VERSION_ID_CHARS)?;
    }
    let event_time = parse_time(time)?;
    let sequencer = sequencer_of(s3).unwrap_or_else(|problem| {
        notes.push(problem);
        None
    });
    Ok(Item::Object(ObjectEvent {
        kind,
        event_name: event_name.to_owned(),
        bucket: bucket.to_owned(),
        key,
        etag,
        size,
        version_id,
        sequencer,
        event_time,
    }))
}

/// Refuses a field longer than `max` (in bytes), naming it and showing only its start.
fn check_len(field: &str, value: &str, max: usize) -> Result<(), ParseError> {
    if value.len() <= max {
        return Ok(());
    }
    let start: String = value.chars().take(40).collect();
    Err(malformed(format!(
        "{field} of {} bytes is over the limit of {max} ({start:?}…)",
        value.len()
    )))
}

/// A value that travels in an HTTP header (`If-Match`, `versionId`): visible ASCII only, no
/// quotes, so no message can produce a request that cannot be sent.
fn check_token(field: &str, value: &str, max: usize) -> Result<(), ParseError> {
    check_len(field, value, max)?;
    if value.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
        Ok(())
    } else {
        Err(malformed(format!(
            "{field} {value:?} holds characters no HTTP header may carry"
        )))
    }
}

fn str_at<'v>(value: &'v Json<'_>, path: &[&str]) -> Option<&'v str> {
    path.iter()
        .try_fold(value, |v, field| v.get(field))
        .and_then(Json::as_str)
}

/// Keys in notifications are form-URL-encoded: `+` is a space, then percent-decoding, then UTF-8.
pub fn decode_key(raw: &str) -> Result<String, ParseError> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|e| ParseError {
            reason: DeadLetterReason::InvalidKey,
            detail: format!("key {raw:?} does not decode to UTF-8: {e}"),
        })
}

/// ETags travel with quotes in HTTP headers and without them in events; rows store them bare.
pub fn unquote_etag(etag: &str) -> String {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_owned()
}

/// Accepts RFC 3339 and the zone-less form moto sends (read as UTC, as S3 times are).
fn parse_time(text: &str) -> Result<DateTime<Utc>, ParseError> {
    check_len("eventTime", text, 64)?;
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|t| t.and_utc())
        .map_err(|e| malformed(format!("eventTime {text:?} is not a timestamp: {e}")))
}

#[cfg(test)]
mod tests;
