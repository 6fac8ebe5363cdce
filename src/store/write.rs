//! The idempotent, order-aware write of a batch of events, in one round trip.
//!
//! A batch of any size is one statement, `SELECT datapack_write_batch(...)` (the SQL function of
//! the migration `write_batch`), which is its own transaction: the client sends the writes as
//! parallel arrays and gets one outcome code per write back. Inside, in order: redeliveries are
//! found without a lock (the same object at the same position is a fact that stays true: a batch
//! of them writes nothing and takes no lock); the other keys' advisory locks are taken in
//! ascending order (as every writer takes them, so two batches never deadlock) before any
//! ordering decision, which makes "is there something newer for this key?" race-free across
//! replicas; then ties, ranks, datapacks, rows and removals; and last, only the keys something
//! changed are settled, every changed row announced from that same statement
//! ([`crate::store::notify`]) unless the deployment turned announcements off.
//!
//! The order of one key's events ([`order`] is the rule in Rust, and the SQL functions
//! `datapack_event_newer` and `datapack_event_same` are checked against it): S3's sequencers when
//! both events have one and they differ, else the event times, else a tie rank. Two different
//! objects that tie on both are not written: the write answers [`WriteOutcome::Tie`], the caller
//! asks S3 which object is current and writes again with a [`Tiebreak`], which ranks the write
//! above (current) or below (not) everything it tied with. The same object at the same position
//! again is a redelivery and changes nothing.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

pub mod order;

use order::Position;
pub use order::sequencer_cmp;

/// A resource row to record: the facts of one upload, hashed or vouched for by S3.
#[derive(Debug, Clone, PartialEq)]
pub struct NewResource {
    pub bucket: String,
    pub object_key: String,
    pub datapack: String,
    pub path: String,
    pub display: String,
    pub content_type: Option<String>,
    pub length: i64,
    pub etag: String,
    pub sha256: String,
    /// Whether `sha256` was computed from the bytes or taken from S3's stored checksum.
    pub sha256_source: Sha256Source,
    pub submitter_name: Option<String>,
    pub submitter_email: Option<String>,
    pub object_last_modified: Option<DateTime<Utc>>,
    pub version_id: Option<String>,
    pub sequencer: Option<String>,
    pub event_time: DateTime<Utc>,
    /// `None` on the first write; S3's word once the write answered [`WriteOutcome::Tie`].
    pub tiebreak: Option<Tiebreak>,
}

/// What S3 said when a write tied with a different object at the same position (equal or
/// missing sequencers, equal event times): whether the write's object is the key's current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tiebreak {
    /// S3 shows this write's object (for a removal: what the removal left, nothing or its
    /// survivor): it ranks above every event it tied with.
    Current,
    /// S3 shows something else: it ranks below every event it tied with.
    NotCurrent,
}

impl Tiebreak {
    /// How `datapack_write_batch` takes it: 1 above, -1 below what it tied with.
    fn code(tiebreak: Option<Self>) -> i16 {
        match tiebreak {
            None => 0,
            Some(Self::Current) => 1,
            Some(Self::NotCurrent) => -1,
        }
    }

    /// The `result` label of `order_ties_total`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Current => "current",
            Self::NotCurrent => "not_current",
        }
    }
}

/// Where a row's SHA-256 came from: the `sha256_source` column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sha256Source {
    /// The worker read the bytes and hashed them.
    #[default]
    Computed,
    /// S3's stored SHA-256 of a single-part upload, read with HeadObject, no byte read: only
    /// when the bucket's checksums are trusted (S3 verified them at upload).
    S3Checksum,
}

impl Sha256Source {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Computed => "computed",
            Self::S3Checksum => "s3_checksum",
        }
    }
}

/// A removal of a key or of one of its versions, as announced by `ObjectRemoved:*` or
/// `LifecycleExpiration:*`, ordered by the event's position.
#[derive(Debug, Clone, PartialEq)]
pub struct Removal {
    pub bucket: String,
    pub object_key: String,
    pub sequencer: Option<String>,
    pub event_time: DateTime<Utc>,
    /// The version or delete marker the event named, if any (kept for audit).
    pub version_id: Option<String>,
    /// What the key shows once this removal happened: `None` when nothing does (a plain delete,
    /// a delete marker, no version left), else the version S3 said is current.
    pub survivor: Option<Survivor>,
    /// `None` on the first write; S3's word once the write answered [`WriteOutcome::Tie`].
    pub tiebreak: Option<Tiebreak>,
}

/// The version of a key S3 shows after a removal: the rows at or before the removal converge to
/// it (its row live, every other deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Survivor {
    /// Without quotes. Rows are one per upload identity (bucket, key, etag): the row with these
    /// bytes is the one that lives.
    pub etag: String,
    pub version_id: Option<String>,
}

// Batches are mostly resources: boxing them would add an allocation per row and save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Resource(NewResource),
    Removal(Removal),
}

impl Write {
    pub(crate) fn key(&self) -> (&str, &str) {
        match self {
            Self::Resource(r) => (&r.bucket, &r.object_key),
            Self::Removal(r) => (&r.bucket, &r.object_key),
        }
    }

    /// The position in the key's order, before any tie rank.
    pub(crate) fn position(&self) -> Position<'_> {
        match self {
            Self::Resource(r) => (r.sequencer.as_deref(), r.event_time, 0),
            Self::Removal(r) => (r.sequencer.as_deref(), r.event_time, 0),
        }
    }

    pub(crate) fn tiebreak(&self) -> Option<Tiebreak> {
        match self {
            Self::Resource(r) => r.tiebreak,
            Self::Removal(r) => r.tiebreak,
        }
    }

    pub(crate) fn set_tiebreak(&mut self, tiebreak: Tiebreak) {
        match self {
            Self::Resource(r) => r.tiebreak = Some(tiebreak),
            Self::Removal(r) => r.tiebreak = Some(tiebreak),
        }
    }

    /// What the write is about at its position: a resource's bytes (its ETag); for a removal,
    /// the bytes it leaves live (its survivor's ETag), if any. Two writes of one key at one
    /// position with different identities are a tie; with the same, a redelivery.
    pub(crate) fn identity(&self) -> (bool, Option<&str>) {
        match self {
            Self::Resource(r) => (false, Some(r.etag.as_str())),
            Self::Removal(r) => (true, r.survivor.as_ref().map(|s| s.etag.as_str())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Recorded,
    Duplicate,
    UnknownDatapack,
    Removed,
    Stale,
    /// Not written: a different object of the key sits at the same position (sequencer and event
    /// time). Write it again with a [`Tiebreak`] from S3.
    Tie,
}

impl WriteOutcome {
    /// The code `datapack_write_batch` answers with (see its migration).
    fn from_code(code: i16) -> Option<Self> {
        Some(match code {
            0 => Self::Duplicate,
            1 => Self::Recorded,
            2 => Self::UnknownDatapack,
            3 => Self::Removed,
            4 => Self::Stale,
            5 => Self::Tie,
            _ => return None,
        })
    }
}

/// What a batch does besides writing: both are deployment choices, the same for every batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// Create a datapack a resource names when it does not exist (else: unknown datapack).
    pub create_datapacks: bool,
    /// Announce every changed row on [`crate::store::notify::CHANNEL`] (`NOTIFY_CHANGES`).
    pub notify: bool,
}

/// A stable 64-bit lock id for a key; collisions only serialise two keys, never corrupt.
fn key_lock(bucket: &str, key: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(bucket)
        .chain_update([0])
        .chain_update(key)
        .finalize();
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Writes a batch in one transaction on a connection of `pool` and says what became of each
/// write, in order.
pub async fn apply(
    pool: &PgPool,
    writes: &[Write],
    options: WriteOptions,
) -> Result<Vec<WriteOutcome>, sqlx::Error> {
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    let mut connection = pool.acquire().await?;
    apply_on(&mut connection, writes, options).await
}

/// The one statement of a batch; see the header and the migration `write_batch`.
const WRITE_BATCH: &str = "SELECT datapack_write_batch($1::bigint[], $2::boolean[], $3::text[],
    $4::text[], $5::text[], $6::timestamptz[], $7::text[], $8::smallint[], $9::text[], $10::text[],
    $11::text[], $12::text[], $13::bigint[], $14::text[], $15::text[], $16::text[], $17::text[],
    $18::timestamptz[], $19::text[], $20::text[], $21, $22)";

/// Writes a batch on `connection`, one statement that is its own transaction (see [`apply`]).
pub(crate) async fn apply_on(
    connection: &mut PgConnection,
    writes: &[Write],
    options: WriteOptions,
) -> Result<Vec<WriteOutcome>, sqlx::Error> {
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    macro_rules! column {
        ($w:ident => $e:expr) => {
            writes.iter().map(|$w| $e).collect::<Vec<_>>()
        };
    }
    let codes: Vec<i16> = sqlx::query_scalar(WRITE_BATCH)
        .bind(column!(w => { let (b, k) = w.key(); key_lock(b, k) }))
        .bind(column!(w => w.identity().0))
        .bind(column!(w => w.key().0))
        .bind(column!(w => w.key().1))
        .bind(column!(w => w.position().0))
        .bind(column!(w => w.position().1))
        .bind(column!(w => w.identity().1))
        .bind(column!(w => Tiebreak::code(w.tiebreak())))
        .bind(column!(w => resource(w).map(|r| r.datapack.as_str())))
        .bind(column!(w => resource(w).map(|r| r.path.as_str())))
        .bind(column!(w => resource(w).map(|r| r.display.as_str())))
        .bind(column!(w => resource(w).and_then(|r| r.content_type.as_deref())))
        .bind(column!(w => resource(w).map(|r| r.length)))
        .bind(column!(w => resource(w).map(|r| r.sha256.as_str())))
        .bind(column!(w => resource(w).map(|r| r.sha256_source.as_str())))
        .bind(column!(w => resource(w).and_then(|r| r.submitter_name.as_deref())))
        .bind(column!(w => resource(w).and_then(|r| r.submitter_email.as_deref())))
        .bind(column!(w => resource(w).and_then(|r| r.object_last_modified)))
        .bind(column!(w => version_id(w)))
        .bind(column!(w => survivor_version(w)))
        .bind(options.create_datapacks)
        .bind(options.notify)
        .fetch_one(connection)
        .await?;
    if codes.len() != writes.len() {
        return Err(sqlx::Error::Decode(
            format!(
                "datapack_write_batch answered {} outcomes for {} writes",
                codes.len(),
                writes.len()
            )
            .into(),
        ));
    }
    codes
        .into_iter()
        .map(|code| {
            WriteOutcome::from_code(code).ok_or_else(|| {
                sqlx::Error::Decode(format!("datapack_write_batch answered {code}").into())
            })
        })
        .collect()
}

/// The resource a write records, if it records one.
fn resource(write: &Write) -> Option<&NewResource> {
    match write {
        Write::Resource(r) => Some(r),
        Write::Removal(_) => None,
    }
}

/// The version a resource was recorded from, or the version (or delete marker) a removal named.
fn version_id(write: &Write) -> Option<&str> {
    match write {
        Write::Resource(r) => r.version_id.as_deref(),
        Write::Removal(r) => r.version_id.as_deref(),
    }
}

/// The version S3 showed after a removal, if something survived it.
fn survivor_version(write: &Write) -> Option<&str> {
    match write {
        Write::Resource(_) => None,
        Write::Removal(r) => r.survivor.as_ref().and_then(|s| s.version_id.as_deref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lock_is_stable_and_separates_bucket_from_key() {
        assert_eq!(key_lock("b", "k"), key_lock("b", "k"));
        assert_ne!(key_lock("ab", "c"), key_lock("a", "bc"));
    }
}
