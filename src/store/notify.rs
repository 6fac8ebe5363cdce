//! The push to the app: one notification per changed row, raised by the write's own statement.
//!
//! PostgreSQL delivers a transaction's notifications only when it commits, in commit order, and
//! never those of a transaction that rolls back: a listener learns of every committed change at
//! once and of nothing else. A batch that changes nothing (a redelivery) notifies nothing. The
//! payloads are built in SQL, by the settling step of `datapack_write_batch` (migration
//! `write_batch`); this module holds the contract a listener reads: the channel, the shape of a
//! payload ([`Payload`]) and its size limit. Deployments with no listener turn announcements off
//! (`NOTIFY_CHANGES=false`), which saves the database their cost.

use serde::Deserialize;

/// The channel an app `LISTEN`s on.
pub const CHANNEL: &str = "datapack_resource_changed";

/// PostgreSQL refuses a payload of 8000 bytes or more (with the default 8 KiB block size) and
/// fails the whole transaction with it; a larger one is sent without its long fields.
pub const PAYLOAD_MAX_BYTES: usize = 7999;

/// What happened to a row, as the payload's `change` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// A new row (normally live; stored already deleted when a newer removal was known).
    Created,
    /// The row's upload was recorded again from a newer event, or it now names the version S3
    /// shows; whether it is live did not change.
    Updated,
    /// The row stopped being live: removed, hidden by a delete marker, or overwritten.
    Deleted,
    /// The row is live again: the same bytes uploaded again, or the delete marker or newer
    /// version that hid it removed.
    Restored,
}

/// The JSON a listener receives, in row order within a transaction, one per row whose state
/// changed (the net change of the batch: a row inserted and then ended by a newer removal in the
/// same batch is one `created`, not live).
///
/// A key (1,024 bytes) and a datapack identifier of control characters escape to six bytes each,
/// and a version id may be 1,024 bytes: past [`PAYLOAD_MAX_BYTES`] the payload keeps `id`,
/// `change`, `live` and `etag`, says `"truncated": true`, and the app reads the rest from the row
/// by `id`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Payload {
    pub(crate) id: i64,
    pub change: Change,
    /// Whether the row is live once the transaction committed.
    pub(crate) live: bool,
    pub(crate) datapack: Option<String>,
    pub key: Option<String>,
    pub etag: String,
    /// Present (possibly null) unless truncated.
    #[serde(default)]
    pub(crate) version_id: Option<String>,
    #[serde(default)]
    pub truncated: bool,
}
