//! What becomes of a message: the outcome codes and the failure taxonomy that decides them.
//!
//! Every record ends in exactly one [`Outcome`]; every failure is a [`Failure`] that carries its
//! disposition, so the place that meets an error decides once whether it is retried, dead-lettered
//! or pauses the worker, and nobody downstream re-guesses from a message string.

use std::fmt;

/// Why a message was dead-lettered: the stable `error_reason` attribute and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    MalformedMessage,
    UnknownEvent,
    InvalidKey,
    UnknownDatapack,
    InvalidData,
    /// S3 refused to let us read this object (403) on every attempt while other objects read.
    ObjectAccessDenied,
    /// The object's bytes could not be read whole (resets, stalls, checksum mismatches, server
    /// errors) on every attempt while other objects read.
    ObjectUnreadable,
    /// The database refused this message's writes on every attempt while it accepted others.
    WriteFailed,
    /// Working on this message panicked or outlived `MAX_PROCESSING_SECS` on every attempt.
    ProcessingFailed,
}

impl DeadLetterReason {
    pub(crate) const ALL: [DeadLetterReason; 9] = [
        Self::MalformedMessage,
        Self::UnknownEvent,
        Self::InvalidKey,
        Self::UnknownDatapack,
        Self::InvalidData,
        Self::ObjectAccessDenied,
        Self::ObjectUnreadable,
        Self::WriteFailed,
        Self::ProcessingFailed,
    ];

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::MalformedMessage => "malformed_message",
            Self::UnknownEvent => "unknown_event",
            Self::InvalidKey => "invalid_key",
            Self::UnknownDatapack => "unknown_datapack",
            Self::InvalidData => "invalid_data",
            Self::ObjectAccessDenied => "object_access_denied",
            Self::ObjectUnreadable => "object_unreadable",
            Self::WriteFailed => "write_failed",
            Self::ProcessingFailed => "processing_failed",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message is tried again: the `reason` label of `records_total{outcome="retried"}`.
/// One closed set, so every series can start at 0 and a typo cannot become a new label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryReason {
    S3Error,
    S3Throttled,
    S3AccessDenied,
    S3Unavailable,
    S3ReadFailed,
    S3ShortRead,
    S3BadRange,
    S3ChecksumMismatch,
    SqsError,
    SqsThrottled,
    SqsAccessDenied,
    SqsUnavailable,
    SqsDeleteFailed,
    DatabaseError,
    DatabaseUnavailable,
    DatabaseMisconfigured,
    DatabaseTimeout,
    DatabaseConstraint,
    WriterStopped,
    ProcessingPanicked,
    ProcessingTimeout,
}

impl RetryReason {
    pub(crate) const ALL: [RetryReason; 21] = [
        Self::S3Error,
        Self::S3Throttled,
        Self::S3AccessDenied,
        Self::S3Unavailable,
        Self::S3ReadFailed,
        Self::S3ShortRead,
        Self::S3BadRange,
        Self::S3ChecksumMismatch,
        Self::SqsError,
        Self::SqsThrottled,
        Self::SqsAccessDenied,
        Self::SqsUnavailable,
        Self::SqsDeleteFailed,
        Self::DatabaseError,
        Self::DatabaseUnavailable,
        Self::DatabaseMisconfigured,
        Self::DatabaseTimeout,
        Self::DatabaseConstraint,
        Self::WriterStopped,
        Self::ProcessingPanicked,
        Self::ProcessingTimeout,
    ];

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::S3Error => "s3_error",
            Self::S3Throttled => "s3_throttled",
            Self::S3AccessDenied => "s3_access_denied",
            Self::S3Unavailable => "s3_unavailable",
            Self::S3ReadFailed => "s3_read_failed",
            Self::S3ShortRead => "s3_short_read",
            Self::S3BadRange => "s3_bad_range",
            Self::S3ChecksumMismatch => "s3_checksum_mismatch",
            Self::SqsError => "sqs_error",
            Self::SqsThrottled => "sqs_throttled",
            Self::SqsAccessDenied => "sqs_access_denied",
            Self::SqsUnavailable => "sqs_unavailable",
            Self::SqsDeleteFailed => "sqs_delete_failed",
            Self::DatabaseError => "database_error",
            Self::DatabaseUnavailable => "database_unavailable",
            Self::DatabaseMisconfigured => "database_misconfigured",
            Self::DatabaseTimeout => "database_timeout",
            Self::DatabaseConstraint => "database_constraint",
            Self::WriterStopped => "writer_stopped",
            Self::ProcessingPanicked => "processing_panicked",
            Self::ProcessingTimeout => "processing_timeout",
        }
    }

    /// The dependency a probe must ask before this failure may count against the message: if
    /// the probe fails too, the dependency is down and the message is released, not charged.
    pub(crate) const fn dependency(self) -> Option<Dependency> {
        match self {
            Self::S3Error
            | Self::S3Throttled
            | Self::S3AccessDenied
            | Self::S3Unavailable
            | Self::S3ReadFailed
            | Self::S3ShortRead
            | Self::S3BadRange
            | Self::S3ChecksumMismatch => Some(Dependency::S3),
            Self::SqsError
            | Self::SqsThrottled
            | Self::SqsAccessDenied
            | Self::SqsUnavailable
            | Self::SqsDeleteFailed => Some(Dependency::Sqs),
            Self::DatabaseError
            | Self::DatabaseUnavailable
            | Self::DatabaseMisconfigured
            | Self::DatabaseTimeout
            | Self::DatabaseConstraint => Some(Dependency::Postgres),
            Self::WriterStopped | Self::ProcessingPanicked | Self::ProcessingTimeout => None,
        }
    }

    /// The dead-letter reason once the message has failed this way on its last attempt.
    pub(crate) const fn exhausted(self) -> DeadLetterReason {
        match self {
            Self::S3AccessDenied => DeadLetterReason::ObjectAccessDenied,
            Self::S3Error
            | Self::S3Throttled
            | Self::S3Unavailable
            | Self::S3ReadFailed
            | Self::S3ShortRead
            | Self::S3BadRange
            | Self::S3ChecksumMismatch => DeadLetterReason::ObjectUnreadable,
            Self::DatabaseError
            | Self::DatabaseUnavailable
            | Self::DatabaseMisconfigured
            | Self::DatabaseTimeout
            | Self::DatabaseConstraint
            | Self::WriterStopped => DeadLetterReason::WriteFailed,
            Self::SqsError
            | Self::SqsThrottled
            | Self::SqsAccessDenied
            | Self::SqsUnavailable
            | Self::SqsDeleteFailed
            | Self::ProcessingPanicked
            | Self::ProcessingTimeout => DeadLetterReason::ProcessingFailed,
        }
    }
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a record was acknowledged without a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    TestEvent,
    NotPresigned,
    FolderPlaceholder,
    ForeignBucket,
    UnsupportedEvent,
}

impl SkipReason {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::TestEvent => "test_event",
            Self::NotPresigned => "not_presigned",
            Self::FolderPlaceholder => "folder_placeholder",
            Self::ForeignBucket => "foreign_bucket",
            Self::UnsupportedEvent => "unsupported_event",
        }
    }
}

/// The end of one record once its message is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new row, or a newer event for an existing (bucket, key, etag).
    Recorded,
    /// This upload was already recorded (redelivery, another replica, moto's second multipart event).
    Duplicate,
    /// The object was overwritten before we read it (412): the newer upload has its own event.
    Superseded,
    /// The object no longer exists (deleted before we read it).
    ObjectGone,
    /// A removal that marked the key deleted.
    Removed,
    /// A removal older than what the database already knows: changes nothing.
    Stale,
    Skipped(SkipReason),
}

impl Outcome {
    pub const fn label(self) -> (&'static str, &'static str) {
        match self {
            Self::Recorded => ("recorded", "none"),
            Self::Duplicate => ("duplicate", "none"),
            Self::Superseded => ("superseded", "none"),
            Self::ObjectGone => ("object_gone", "none"),
            Self::Removed => ("removed", "none"),
            Self::Stale => ("stale", "none"),
            Self::Skipped(r) => ("skipped", r.as_str()),
        }
    }
}

/// How a received message was settled: the `disposition` label of `messages_total`. One closed
/// set, so every series starts at 0 and the intake and the metric cannot spell a label apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum MessageDisposition {
    /// Deleted after its commit (or skipped on purpose).
    Ack = 0,
    /// Left invisible for a backoff, or its delete failed after the commit.
    Retry = 1,
    /// Copied to the dead-letter queue with its reason, then deleted.
    DeadLetter = 2,
    /// Handed back at once (visibility 0): a dependency is down, or the grace period ran out.
    Release = 3,
    /// Its receipt handle expired while it was worked on: another receiver owns it.
    Lost = 4,
    /// Returned by a long poll in flight at shutdown and handed back unworked.
    HandedBack = 5,
}

impl MessageDisposition {
    /// Every value, in the order of the discriminants (a table indexed by `self as usize`).
    pub(crate) const ALL: [MessageDisposition; 6] = [
        Self::Ack,
        Self::Retry,
        Self::DeadLetter,
        Self::Release,
        Self::Lost,
        Self::HandedBack,
    ];

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Ack => "ack",
            Self::Retry => "retry",
            Self::DeadLetter => "dead_letter",
            Self::Release => "release",
            Self::Lost => "lost",
            Self::HandedBack => "handed_back",
        }
    }
}

/// The dependencies whose loss pauses the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Dependency {
    Postgres,
    S3,
    Sqs,
}

impl Dependency {
    pub(crate) const ALL: [Dependency; 3] = [Self::Postgres, Self::S3, Self::Sqs];

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::S3 => "s3",
            Self::Sqs => "sqs",
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error that stops a record from reaching an [`Outcome`], with what to do about it.
///
/// There is no "dependency down" variant on purpose: a failure met while working on one message
/// is a fact about that message. Only a probe of the dependency (see `health`) may declare it
/// down and pause the worker.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Will never succeed as it is: send the message to the dead-letter queue.
    #[error("{reason}: {detail}")]
    Permanent {
        reason: DeadLetterReason,
        detail: String,
        object: Option<Box<ObjectName>>,
    },
    /// May succeed later: leave the message for redelivery after a backoff, after a probe of
    /// [`RetryReason::dependency`] has said the dependency itself is up.
    #[error("{reason}")]
    Transient {
        reason: RetryReason,
        #[source]
        source: BoxError,
        object: Option<Box<ObjectName>>,
    },
}

/// The object a failure is about, when it is about one: for the log line that decides, never
/// for a metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectName {
    pub(crate) bucket: String,
    pub(crate) key: String,
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Failure {
    pub(crate) fn permanent(reason: DeadLetterReason, detail: impl Into<String>) -> Self {
        Self::Permanent {
            reason,
            detail: detail.into(),
            object: None,
        }
    }

    pub(crate) fn transient(reason: RetryReason, source: impl Into<BoxError>) -> Self {
        Self::Transient {
            reason,
            source: source.into(),
            object: None,
        }
    }

    /// Names the object this failure is about.
    pub(crate) fn about(mut self, bucket: &str, key: &str) -> Self {
        let name = Some(Box::new(ObjectName {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        }));
        match &mut self {
            Self::Permanent { object, .. } | Self::Transient { object, .. } => *object = name,
        }
        self
    }

    /// The object this failure is about, if it is about one.
    pub(crate) fn object(&self) -> Option<&ObjectName> {
        match self {
            Self::Permanent { object, .. } | Self::Transient { object, .. } => object.as_deref(),
        }
    }

    /// The stable code for logs and the `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Permanent { reason, .. } => reason.as_str(),
            Self::Transient { reason, .. } => reason.as_str(),
        }
    }

    /// The reason a dead letter for this failure carries: its own when permanent, the reason a
    /// transient failure comes to once it has used up its attempts otherwise.
    pub(crate) fn dead_letter_reason(&self) -> DeadLetterReason {
        match self {
            Self::Permanent { reason, .. } => *reason,
            Self::Transient { reason, .. } => reason.exhausted(),
        }
    }

    /// The dependency to probe before this failure counts against the message.
    pub(crate) fn dependency(&self) -> Option<Dependency> {
        match self {
            Self::Permanent { .. } => None,
            Self::Transient { reason, .. } => reason.dependency(),
        }
    }

    /// Whether a group-commit batch that failed this way should be retried job by job, so only
    /// the job that caused it fails: data refused (class 22, 23) or a panic on someone's data.
    pub(crate) fn isolates(&self) -> bool {
        matches!(
            self,
            Self::Permanent { .. }
                | Self::Transient {
                    reason: RetryReason::DatabaseConstraint | RetryReason::ProcessingPanicked,
                    ..
                }
        )
    }

    /// The same failure told to several waiters: same disposition, the cause kept as text.
    pub(crate) fn copy(&self) -> Failure {
        match self {
            Self::Permanent {
                reason,
                detail,
                object,
            } => Self::Permanent {
                reason: *reason,
                detail: detail.clone(),
                object: object.clone(),
            },
            Self::Transient { reason, object, .. } => Self::Transient {
                reason: *reason,
                source: chain(self).into(),
                object: object.clone(),
            },
        }
    }
}

/// The text of a panic payload, for the log line and the dead letter's detail.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Renders an error with its whole cause chain on one line, for the one log line that decides.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_dispositions_are_listed_in_the_order_of_their_discriminants() {
        for (i, disposition) in MessageDisposition::ALL.into_iter().enumerate() {
            assert_eq!(disposition as usize, i, "{disposition:?}");
        }
        let labels: Vec<&str> = MessageDisposition::ALL
            .map(MessageDisposition::as_str)
            .into();
        assert_eq!(
            labels,
            [
                "ack",
                "retry",
                "dead_letter",
                "release",
                "lost",
                "handed_back"
            ],
            "the label values dashboards and alerts use"
        );
    }
}
