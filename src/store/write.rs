//! The idempotent, order-aware write of a batch of events.
//!
//! One call writes the events of many messages in one transaction with a handful of set-based
//! statements, whatever the batch size. Keys are locked (transaction advisory locks, taken in a
//! fixed order so two batches never deadlock) before any ordering decision, which makes "is there
//! something newer for this key?" race-free across replicas. Every row the batch changes is
//! announced to listeners in the same transaction ([`crate::store::notify`]).
//!
//! The order of one key's events ([`order`], and the SQL function `datapack_event_newer`): S3's
//! sequencers when both events have one and they differ, else the event times, else a tie rank.
//! Two different objects that tie on both are not written: the write answers
//! [`WriteOutcome::Tie`], the caller asks S3 which object is current and writes again with a
//! [`Tiebreak`], which ranks the write above (current) or below (not) everything it tied with.
//! The same object at the same position again is a redelivery and changes nothing.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Row};

use crate::store::notify;

mod order;

use order::Position;
pub use order::sequencer_cmp;
use order::{newer, rank, set_aside};

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
    /// The `result` label of `order_ties_total`.
    pub fn as_str(self) -> &'static str {
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
    pub fn as_str(self) -> &'static str {
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
    fn key(&self) -> (&str, &str) {
        match self {
            Self::Resource(r) => (&r.bucket, &r.object_key),
            Self::Removal(r) => (&r.bucket, &r.object_key),
        }
    }

    /// The position in the key's order, before any tie rank.
    fn position(&self) -> Position<'_> {
        match self {
            Self::Resource(r) => (r.sequencer.as_deref(), r.event_time, 0),
            Self::Removal(r) => (r.sequencer.as_deref(), r.event_time, 0),
        }
    }

    pub fn tiebreak(&self) -> Option<Tiebreak> {
        match self {
            Self::Resource(r) => r.tiebreak,
            Self::Removal(r) => r.tiebreak,
        }
    }

    pub fn set_tiebreak(&mut self, tiebreak: Tiebreak) {
        match self {
            Self::Resource(r) => r.tiebreak = Some(tiebreak),
            Self::Removal(r) => r.tiebreak = Some(tiebreak),
        }
    }

    /// What the write is about at its position: a resource's bytes (its ETag); for a removal,
    /// the bytes it leaves live (its survivor's ETag), if any. Two writes of one key at one
    /// position with different identities are a tie; with the same, a redelivery.
    fn identity(&self) -> (bool, Option<&str>) {
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
    create_datapacks: bool,
) -> Result<Vec<WriteOutcome>, sqlx::Error> {
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    let mut connection = pool.acquire().await?;
    apply_on(&mut connection, writes, create_datapacks).await
}

/// Writes a batch in one transaction on `connection` (see [`apply`]).
pub async fn apply_on(
    connection: &mut PgConnection,
    writes: &[Write],
    create_datapacks: bool,
) -> Result<Vec<WriteOutcome>, sqlx::Error> {
    let mut outcomes = vec![WriteOutcome::Duplicate; writes.len()];
    if writes.is_empty() {
        return Ok(outcomes);
    }
    let mut tx = sqlx::Connection::begin(connection).await?;
    lock_keys(&mut tx, writes).await?;
    let set_aside = set_aside(&mut tx, writes, &mut outcomes).await?;
    let ranks = rank(&mut tx, writes).await?;
    let datapacks = resolve_datapacks(&mut tx, writes, create_datapacks).await?;
    let (resources, removals) = choose(writes, &ranks, &set_aside, &datapacks, &mut outcomes);
    let written = insert_resources(&mut tx, &resources, &ranks, &datapacks).await?;
    for row in &written {
        outcomes[row.index] = WriteOutcome::Recorded;
    }
    for i in upsert_removals(&mut tx, &removals, &ranks).await? {
        outcomes[i] = WriteOutcome::Removed;
    }
    let settled = settle(&mut tx, writes).await?;
    notify::send(&mut tx, &notify::changes(writes, &written, &settled)).await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// Takes every key's advisory lock, in a fixed order so two batches never deadlock.
async fn lock_keys(tx: &mut Tx<'_>, writes: &[Write]) -> Result<(), sqlx::Error> {
    let mut locks: Vec<i64> = writes
        .iter()
        .map(|w| {
            let (b, k) = w.key();
            key_lock(b, k)
        })
        .collect();
    locks.sort_unstable();
    locks.dedup();
    sqlx::query("SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::bigint[]) AS k")
        .bind(&locks)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

type Chosen<'a, T> = Vec<(usize, &'a T)>;

/// Within one batch, keeps the newest write per upload (resources) or per key (removals): the
/// others are duplicates by construction, and ON CONFLICT may touch a row only once. Marks
/// resources of unknown datapacks, and every removal as stale until it is applied. Writes set
/// aside (redeliveries, ties) are left as they were answered.
fn choose<'a>(
    writes: &'a [Write],
    ranks: &[i32],
    set_aside: &[bool],
    datapacks: &HashMap<String, i64>,
    outcomes: &mut [WriteOutcome],
) -> (Chosen<'a, NewResource>, Chosen<'a, Removal>) {
    let position = |i: usize| {
        let (sequencer, time, _) = writes[i].position();
        (sequencer, time, ranks[i])
    };
    let mut resources: HashMap<(&str, &str, &str), usize> = HashMap::new();
    let mut removals: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, write) in writes.iter().enumerate() {
        if set_aside[i] {
            continue;
        }
        let slot = match write {
            Write::Resource(r) if !datapacks.contains_key(r.datapack.as_str()) => {
                outcomes[i] = WriteOutcome::UnknownDatapack;
                continue;
            }
            Write::Resource(r) => resources
                .entry((&r.bucket, &r.object_key, &r.etag))
                .or_insert(i),
            Write::Removal(r) => {
                outcomes[i] = WriteOutcome::Stale;
                removals.entry((&r.bucket, &r.object_key)).or_insert(i)
            }
        };
        if newer(position(i), position(*slot)) {
            *slot = i;
        }
    }
    let pick = |i: usize| (i, &writes[i]);
    (
        resources
            .into_values()
            .map(pick)
            .filter_map(|(i, w)| match w {
                Write::Resource(r) => Some((i, r)),
                Write::Removal(_) => None,
            })
            .collect(),
        removals
            .into_values()
            .map(pick)
            .filter_map(|(i, w)| match w {
                Write::Removal(r) => Some((i, r)),
                Write::Resource(_) => None,
            })
            .collect(),
    )
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Postgres>;

async fn resolve_datapacks(
    tx: &mut Tx<'_>,
    writes: &[Write],
    create: bool,
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let mut identifiers: Vec<&str> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Resource(r) => Some(r.datapack.as_str()),
            Write::Removal(_) => None,
        })
        .collect();
    identifiers.sort_unstable();
    identifiers.dedup();
    if identifiers.is_empty() {
        return Ok(HashMap::new());
    }
    if create {
        sqlx::query("INSERT INTO datapack (identifier) SELECT unnest($1::text[]) ON CONFLICT (identifier) DO NOTHING")
            .bind(&identifiers)
            .execute(&mut **tx)
            .await?;
    }
    let rows =
        sqlx::query("SELECT identifier, id FROM datapack WHERE identifier = ANY($1::text[])")
            .bind(&identifiers)
            .fetch_all(&mut **tx)
            .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("identifier")?, row.try_get("id")?)))
        .collect()
}

/// A row the insert wrote: a new upload, or an existing one refreshed by a newer event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Written {
    /// The write it came from.
    pub index: usize,
    pub id: i64,
    /// Whether the row is new; else whether it was live before this transaction.
    pub inserted: bool,
    pub was_live: bool,
}

/// Inserts (or refreshes, when newer) one row per upload, saying which were new and which live.
const INSERT_RESOURCES: &str = "WITH prior AS (
             SELECT r.id, r.deleted_at IS NULL AS live
             FROM unnest($2::text[], $3::text[], $8::text[]) AS k (bucket, object_key, etag)
             JOIN datapack_resource r
               ON r.bucket = k.bucket AND r.object_key = k.object_key AND r.etag = k.etag),
         written AS (
             INSERT INTO datapack_resource AS r (datapack_id, bucket, object_key, path, display,
                 content_type, length, etag, sha256, submitter_name, submitter_email,
                 object_last_modified, version_id, sequencer, event_time, sha256_source, tie_rank)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                 $6::text[], $7::bigint[], $8::text[], $9::text[], $10::text[], $11::text[],
                 $12::timestamptz[], $13::text[], $14::text[], $15::timestamptz[], $16::text[],
                 $17::int[])
             ON CONFLICT ON CONSTRAINT datapack_resource_upload_key DO UPDATE SET
                 datapack_id = EXCLUDED.datapack_id, path = EXCLUDED.path, display = EXCLUDED.display,
                 content_type = EXCLUDED.content_type, length = EXCLUDED.length, sha256 = EXCLUDED.sha256,
                 sha256_source = EXCLUDED.sha256_source,
                 submitter_name = EXCLUDED.submitter_name, submitter_email = EXCLUDED.submitter_email,
                 object_last_modified = EXCLUDED.object_last_modified, version_id = EXCLUDED.version_id,
                 sequencer = EXCLUDED.sequencer, event_time = EXCLUDED.event_time,
                 tie_rank = EXCLUDED.tie_rank, ingested_at = now(), deleted_at = NULL
               WHERE datapack_event_newer(EXCLUDED.sequencer, EXCLUDED.event_time, EXCLUDED.tie_rank,
                                          r.sequencer, r.event_time, r.tie_rank)
             RETURNING id, bucket, object_key, etag)
         SELECT w.id, w.bucket, w.object_key, w.etag, p.id IS NULL AS inserted,
                coalesce(p.live, false) AS was_live
         FROM written w LEFT JOIN prior p ON p.id = w.id";

/// Inserts new uploads; refreshes an existing upload only from a newer event (the same bytes
/// uploaded again after a removal). Returns the rows that changed, with what they were before.
async fn insert_resources(
    tx: &mut Tx<'_>,
    resources: &[(usize, &NewResource)],
    ranks: &[i32],
    datapacks: &HashMap<String, i64>,
) -> Result<Vec<Written>, sqlx::Error> {
    if resources.is_empty() {
        return Ok(Vec::new());
    }
    macro_rules! column {
        ($r:ident => $e:expr) => {
            resources.iter().map(|(_, $r)| $e).collect::<Vec<_>>()
        };
    }
    // `prior` reads the rows as they were before the statement (one snapshot for the whole
    // statement), so a refreshed row says whether it was live: the difference between a row made
    // live again and one merely rewritten, for the listeners.
    let rows = sqlx::query(INSERT_RESOURCES)
        .bind(column!(r => datapacks[r.datapack.as_str()]))
        .bind(column!(r => r.bucket.as_str()))
        .bind(column!(r => r.object_key.as_str()))
        .bind(column!(r => r.path.as_str()))
        .bind(column!(r => r.display.as_str()))
        .bind(column!(r => r.content_type.as_deref()))
        .bind(column!(r => r.length))
        .bind(column!(r => r.etag.as_str()))
        .bind(column!(r => r.sha256.as_str()))
        .bind(column!(r => r.submitter_name.as_deref()))
        .bind(column!(r => r.submitter_email.as_deref()))
        .bind(column!(r => r.object_last_modified))
        .bind(column!(r => r.version_id.as_deref()))
        .bind(column!(r => r.sequencer.as_deref()))
        .bind(column!(r => r.event_time))
        .bind(column!(r => r.sha256_source.as_str()))
        .bind(resources.iter().map(|(i, _)| ranks[*i]).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
    let index: HashMap<(&str, &str, &str), usize> = resources
        .iter()
        .map(|(i, r)| {
            (
                (r.bucket.as_str(), r.object_key.as_str(), r.etag.as_str()),
                *i,
            )
        })
        .collect();
    rows.iter()
        .map(|row| {
            let key: (String, String, String) = (
                row.try_get("bucket")?,
                row.try_get("object_key")?,
                row.try_get("etag")?,
            );
            Ok(Written {
                index: index[&(key.0.as_str(), key.1.as_str(), key.2.as_str())],
                id: row.try_get("id")?,
                inserted: row.try_get("inserted")?,
                was_live: row.try_get("was_live")?,
            })
        })
        .collect()
}

/// Records each key's newest removal, with what survived it. Returns the indexes that were newer
/// than what was known.
async fn upsert_removals(
    tx: &mut Tx<'_>,
    removals: &[(usize, &Removal)],
    ranks: &[i32],
) -> Result<Vec<usize>, sqlx::Error> {
    if removals.is_empty() {
        return Ok(Vec::new());
    }
    macro_rules! column {
        ($r:ident => $e:expr) => {
            removals.iter().map(|(_, $r)| $e).collect::<Vec<_>>()
        };
    }
    let rows = sqlx::query(
        "INSERT INTO datapack_object_removal AS t (bucket, object_key, sequencer, event_time,
             version_id, current_etag, current_version_id, tie_rank)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[],
             $6::text[], $7::text[], $8::int[])
         ON CONFLICT (bucket, object_key) DO UPDATE SET
             sequencer = EXCLUDED.sequencer, event_time = EXCLUDED.event_time,
             version_id = EXCLUDED.version_id, current_etag = EXCLUDED.current_etag,
             current_version_id = EXCLUDED.current_version_id, tie_rank = EXCLUDED.tie_rank,
             recorded_at = now()
           WHERE datapack_event_newer(EXCLUDED.sequencer, EXCLUDED.event_time, EXCLUDED.tie_rank,
                                      t.sequencer, t.event_time, t.tie_rank)
         RETURNING bucket, object_key",
    )
    .bind(column!(r => r.bucket.as_str()))
    .bind(column!(r => r.object_key.as_str()))
    .bind(column!(r => r.sequencer.as_deref()))
    .bind(column!(r => r.event_time))
    .bind(column!(r => r.version_id.as_deref()))
    .bind(column!(r => r.survivor.as_ref().map(|s| s.etag.as_str())))
    .bind(column!(r => r.survivor.as_ref().and_then(|s| s.version_id.as_deref())))
    .bind(removals.iter().map(|(i, _)| ranks[*i]).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    let index: HashMap<(&str, &str), usize> = removals
        .iter()
        .map(|(i, r)| ((r.bucket.as_str(), r.object_key.as_str()), *i))
        .collect();
    rows.iter()
        .map(|row| {
            let key: (String, String) = (row.try_get(0)?, row.try_get(1)?);
            Ok(index[&(key.0.as_str(), key.1.as_str())])
        })
        .collect()
}

/// A row whose state settling changed, as it is now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settled {
    pub id: i64,
    pub was_live: bool,
    pub live: bool,
    pub facts: notify::RowFacts,
}

/// Settles every touched key: which of its rows are live after this batch (see `settle`).
const SETTLE_KEYS: &str = "WITH candidate AS MATERIALIZED (
             SELECT r.id, r.bucket, r.object_key, r.etag, r.version_id, r.sequencer, r.event_time,
                    r.tie_rank, r.deleted_at
             FROM (SELECT DISTINCT * FROM unnest($1::text[], $2::text[])) AS k (bucket, object_key)
             JOIN datapack_resource r ON r.bucket = k.bucket AND r.object_key = k.object_key),
         placed AS (
             SELECT c.*, t.current_etag, t.current_version_id,
                    t.object_key IS NOT NULL
                      AND NOT datapack_event_newer(c.sequencer, c.event_time, c.tie_rank,
                                                   t.sequencer, t.event_time, t.tie_rank)
                      AS before_removal,
                    t.sequencer AS t_sequencer, t.event_time AS t_event_time, t.tie_rank AS t_tie_rank
             FROM candidate c
             LEFT JOIN datapack_object_removal t
               ON t.bucket = c.bucket AND t.object_key = c.object_key
             WHERE c.deleted_at IS NULL OR c.etag = t.current_etag),
         decided AS (
             SELECT p.id, p.deleted_at IS NULL AS was_live, p.current_version_id,
                    p.before_removal AND p.etag = p.current_etag AS survivor,
                    CASE WHEN p.before_removal THEN
                        p.etag IS NOT DISTINCT FROM p.current_etag
                        AND NOT EXISTS (SELECT 1 FROM datapack_resource n
                            WHERE n.bucket = p.bucket AND n.object_key = p.object_key
                              AND datapack_event_newer(n.sequencer, n.event_time, n.tie_rank,
                                                       p.t_sequencer, p.t_event_time, p.t_tie_rank))
                    ELSE
                        NOT EXISTS (SELECT 1 FROM datapack_resource n
                            WHERE n.bucket = p.bucket AND n.object_key = p.object_key AND n.id <> p.id
                              AND datapack_event_newer(n.sequencer, n.event_time, n.tie_rank,
                                                       p.sequencer, p.event_time, p.tie_rank))
                    END AS live
             FROM placed p)
         UPDATE datapack_resource r SET
             deleted_at = CASE WHEN d.live THEN NULL ELSE coalesce(r.deleted_at, now()) END,
             -- The survivor's row names the version S3 shows: the same bytes may have been
             -- recorded from a version that is gone now.
             version_id = CASE WHEN d.live AND d.survivor
                               THEN coalesce(d.current_version_id, r.version_id)
                               ELSE r.version_id END
         FROM decided d
         WHERE r.id = d.id
           AND (d.live <> d.was_live
                OR (d.live AND d.survivor AND d.current_version_id IS DISTINCT FROM r.version_id
                    AND d.current_version_id IS NOT NULL))
         RETURNING r.id, d.was_live, r.deleted_at IS NULL AS live, r.object_key, r.etag, r.version_id,
                   (SELECT identifier FROM datapack WHERE id = r.datapack_id) AS datapack";

/// Decides, for every touched key, which of its rows is live, and changes the rows whose state
/// differs. The key's newest removal splits its rows: those at or before it are live only as the
/// version S3 said survived it (none for a plain delete or a delete marker) and only while no
/// upload newer than the removal exists; among those after it, the newest upload is live. Without
/// a survivor this is the per-key tombstone unversioned buckets have always had.
async fn settle(tx: &mut Tx<'_>, writes: &[Write]) -> Result<Vec<Settled>, sqlx::Error> {
    let (buckets, keys): (Vec<&str>, Vec<&str>) = writes.iter().map(Write::key).unzip();
    // The touched keys' rows are found first, through the (bucket, object_key, etag) key, and
    // only those are tested: written as one UPDATE with `deleted_at IS NULL` beside the tests,
    // a database without statistics yet (a fresh one: IS NULL is guessed selective) plans a walk
    // over every live row, running the tests on each, for every batch. Only live rows can end and
    // only a survivor can come back (a row made live by a refresh above is live here already),
    // so the other deleted rows of a key with a long history are never tested.
    let rows = sqlx::query(SETTLE_KEYS)
        .bind(buckets)
        .bind(keys)
        // Planned at each execution: a cached generic plan made while the table was small (a fresh
        // database) walks every live row for each batch as the table grows, until an ANALYZE.
        .persistent(false)
        .fetch_all(&mut **tx)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Settled {
                id: row.try_get("id")?,
                was_live: row.try_get("was_live")?,
                live: row.try_get("live")?,
                facts: notify::RowFacts {
                    datapack: row.try_get("datapack")?,
                    object_key: row.try_get("object_key")?,
                    etag: row.try_get("etag")?,
                    version_id: row.try_get("version_id")?,
                },
            })
        })
        .collect()
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
