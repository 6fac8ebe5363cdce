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
}

impl DeadLetterReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MalformedMessage => "malformed_message",
            Self::UnknownEvent => "unknown_event",
            Self::InvalidKey => "invalid_key",
            Self::UnknownDatapack => "unknown_datapack",
            Self::InvalidData => "invalid_data",
        }
    }
}

impl fmt::Display for DeadLetterReason {
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
    pub const fn as_str(self) -> &'static str {
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

/// The dependencies whose loss pauses the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dependency {
    Postgres,
    S3,
    Sqs,
}

impl Dependency {
    pub const ALL: [Dependency; 3] = [Self::Postgres, Self::S3, Self::Sqs];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::S3 => "s3",
            Self::Sqs => "sqs",
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error that stops a record from reaching an [`Outcome`], with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Will never succeed as it is: send the message to the dead-letter queue.
    #[error("{reason}: {detail}")]
    Permanent {
        reason: DeadLetterReason,
        detail: String,
    },
    /// May succeed later: leave the message for redelivery after a backoff.
    #[error("{reason}")]
    Transient {
        reason: &'static str,
        #[source]
        source: BoxError,
    },
    /// A dependency is unreachable or misconfigured for every message (connection refused,
    /// timeouts, AccessDenied, a missing table): release the message and pause receiving, so the
    /// outage burns no receive counts and dead-letters nothing.
    #[error("{dependency} unavailable ({reason})")]
    Unavailable {
        dependency: Dependency,
        reason: &'static str,
        #[source]
        source: BoxError,
    },
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Failure {
    pub fn permanent(reason: DeadLetterReason, detail: impl Into<String>) -> Self {
        Self::Permanent {
            reason,
            detail: detail.into(),
        }
    }

    pub fn transient(reason: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Transient {
            reason,
            source: source.into(),
        }
    }

    pub fn unavailable(
        dependency: Dependency,
        reason: &'static str,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Unavailable {
            dependency,
            reason,
            source: source.into(),
        }
    }

    /// Orders failures of one message: the most conservative disposition wins.
    pub fn severity(&self) -> u8 {
        match self {
            Self::Permanent { .. } => 1,
            Self::Transient { .. } => 2,
            Self::Unavailable { .. } => 3,
        }
    }

    /// The stable code for logs and the `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Permanent { reason, .. } => reason.as_str(),
            Self::Transient { reason, .. } | Self::Unavailable { reason, .. } => reason,
        }
    }
}

/// Renders an error with its whole cause chain on one line, for the one log line that decides.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
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
