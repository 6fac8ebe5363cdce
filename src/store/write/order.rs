//! The order of one key's events, and the writes that cannot be applied yet because of it.
//!
//! Events are ordered by S3's sequencers when both have one and they differ, else by their event
//! times, else by a tie rank ([`order`]; the SQL function `datapack_event_newer` is the same
//! rule). Before a batch is applied, [`set_aside`] finds, under the keys' locks, the writes that
//! are a redelivery (the same object already at that position: nothing to do) and those that tie
//! with a different object (answered [`WriteOutcome::Tie`] for the caller to settle with S3);
//! [`rank`] places a write S3 settled above or below everything it tied with.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Tiebreak, Tx, Write, WriteOutcome};

/// (sequencer, event time, tie rank).
pub(crate) type Position<'a> = (Option<&'a str>, DateTime<Utc>, i32);

/// The order of two events of one key, the same rule as the SQL function `datapack_event_newer`:
/// sequencers when both have one and they differ, else event times, else tie ranks. A missing
/// sequencer (or one the parser found unusable) orders by time alone.
pub(crate) fn order(a: Position<'_>, b: Position<'_>) -> std::cmp::Ordering {
    if let (Some(x), Some(y)) = (a.0, b.0) {
        let by_sequencer = sequencer_cmp(x, y);
        if by_sequencer.is_ne() {
            return by_sequencer;
        }
    }
    a.1.cmp(&b.1).then(a.2.cmp(&b.2))
}

pub(super) fn newer(a: Position<'_>, b: Position<'_>) -> bool {
    order(a, b).is_gt()
}

/// Whether two events share a position before tie ranks: a tie when they are different objects.
pub(crate) fn same_position(a: Position<'_>, b: Position<'_>) -> bool {
    order((a.0, a.1, 0), (b.0, b.1, 0)).is_eq()
}

/// SQL for "a and b share a position before tie ranks", for the table aliases given.
macro_rules! same {
    ($a:literal, $b:literal) => {
        concat!(
            "NOT datapack_event_newer(",
            $a,
            ".sequencer, ",
            $a,
            ".event_time, 0, ",
            $b,
            ".sequencer, ",
            $b,
            ".event_time, 0) AND NOT datapack_event_newer(",
            $b,
            ".sequencer, ",
            $b,
            ".event_time, 0, ",
            $a,
            ".sequencer, ",
            $a,
            ".event_time, 0)"
        )
    };
}

/// For every write without a tiebreak: is it a redelivery (the same object, or the key's removal,
/// already at its position) or a tie (a different object there)?
const DETECT: &str = concat!(
    "WITH w AS (
         SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
             $6::text[], $7::bool[])
           AS w (i, bucket, object_key, sequencer, event_time, identity, removal))
     SELECT w.i,
         CASE WHEN w.removal THEN EXISTS (SELECT 1 FROM datapack_object_removal t
                 WHERE t.bucket = w.bucket AND t.object_key = w.object_key AND ",
    same!("t", "w"),
    ")
              ELSE EXISTS (SELECT 1 FROM datapack_resource r
                 WHERE r.bucket = w.bucket AND r.object_key = w.object_key
                   AND r.etag = w.identity AND ",
    same!("r", "w"),
    ")
         END AS repeated,
         EXISTS (SELECT 1 FROM datapack_resource r
                 WHERE r.bucket = w.bucket AND r.object_key = w.object_key
                   AND r.etag IS DISTINCT FROM w.identity AND ",
    same!("r", "w"),
    ")
         OR (NOT w.removal AND EXISTS (SELECT 1 FROM datapack_object_removal t
                 WHERE t.bucket = w.bucket AND t.object_key = w.object_key
                   AND t.current_etag IS DISTINCT FROM w.identity AND ",
    same!("t", "w"),
    ")) AS tied
     FROM w"
);

/// The highest and lowest tie rank among the events of a key at a write's position, other than
/// the write's own object.
const TIED_RANKS: &str = concat!(
    "WITH w AS (SELECT $1::text AS bucket, $2::text AS object_key, $3::text AS sequencer,
                       $4::timestamptz AS event_time, $5::text AS identity, $6::bool AS removal)
     SELECT coalesce(max(rank), 0), coalesce(min(rank), 0) FROM (
         SELECT r.tie_rank AS rank FROM w JOIN datapack_resource r
           ON r.bucket = w.bucket AND r.object_key = w.object_key
         WHERE r.etag IS DISTINCT FROM w.identity AND ",
    same!("r", "w"),
    "
         UNION ALL
         SELECT t.tie_rank FROM w JOIN datapack_object_removal t
           ON t.bucket = w.bucket AND t.object_key = w.object_key
         WHERE NOT w.removal AND ",
    same!("t", "w"),
    ") AS tied"
);

/// Sets aside the writes that must not be applied now: a redelivery (answered as the duplicate or
/// stale write it is, and never re-ranked) and a tie with a different object, in the database or
/// earlier in this batch (answered [`WriteOutcome::Tie`]). Writes carrying a tiebreak are
/// applied: S3 decided them.
pub(super) async fn set_aside(
    tx: &mut Tx<'_>,
    writes: &[Write],
    outcomes: &mut [WriteOutcome],
) -> Result<Vec<bool>, sqlx::Error> {
    let mut aside = vec![false; writes.len()];
    let open: Vec<usize> = (0..writes.len())
        .filter(|&i| writes[i].tiebreak().is_none())
        .collect();
    if open.is_empty() {
        return Ok(aside);
    }
    macro_rules! column {
        ($w:ident => $e:expr) => {
            open.iter()
                .map(|&i| {
                    let $w = &writes[i];
                    $e
                })
                .collect::<Vec<_>>()
        };
    }
    let rows = sqlx::query(DETECT)
        .bind(open.iter().map(|&i| i as i32).collect::<Vec<_>>())
        .bind(column!(w => w.key().0))
        .bind(column!(w => w.key().1))
        .bind(column!(w => w.position().0))
        .bind(column!(w => w.position().1))
        .bind(column!(w => w.identity().1))
        .bind(column!(w => w.identity().0))
        .fetch_all(&mut **tx)
        .await?;
    for row in &rows {
        let (i, repeated, tied): (i32, bool, bool) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let i = usize::try_from(i).unwrap_or(usize::MAX);
        let (Some(write), Some(outcome)) = (writes.get(i), outcomes.get_mut(i)) else {
            continue;
        };
        if repeated {
            aside[i] = true;
            *outcome = match write {
                Write::Resource(_) => WriteOutcome::Duplicate,
                Write::Removal(_) => WriteOutcome::Stale,
            };
        } else if tied {
            aside[i] = true;
            *outcome = WriteOutcome::Tie;
        }
    }
    // Ties inside the batch: a later write against an earlier one that will be applied.
    for &i in &open {
        if aside[i] {
            continue;
        }
        let tied = (0..i).any(|j| !aside[j] && ties_with(&writes[i], &writes[j]));
        if tied {
            aside[i] = true;
            outcomes[i] = WriteOutcome::Tie;
        }
    }
    Ok(aside)
}

/// Whether two writes of one batch tie: one key, one position, different objects (two removals
/// at one position are one removal delivered twice).
fn ties_with(a: &Write, b: &Write) -> bool {
    let (a_removal, a_identity) = a.identity();
    let (b_removal, b_identity) = b.identity();
    a.key() == b.key()
        && !(a_removal && b_removal)
        && a_identity != b_identity
        && same_position(a.position(), b.position())
}

/// The tie rank of each write: 0, or for a write S3 decided, one above (current) or one below
/// (not current) every event of its key at its position, other than itself.
pub(super) async fn rank(tx: &mut Tx<'_>, writes: &[Write]) -> Result<Vec<i32>, sqlx::Error> {
    let mut ranks = vec![0; writes.len()];
    for (i, write) in writes.iter().enumerate() {
        let Some(tiebreak) = write.tiebreak() else {
            continue;
        };
        let (bucket, key) = write.key();
        let (sequencer, time, _) = write.position();
        let (removal, identity) = write.identity();
        let (max, min): (i32, i32) = sqlx::query_as(TIED_RANKS)
            .bind(bucket)
            .bind(key)
            .bind(sequencer)
            .bind(time)
            .bind(identity)
            .bind(removal)
            .fetch_one(&mut **tx)
            .await?;
        ranks[i] = match tiebreak {
            Tiebreak::Current => max.saturating_add(1),
            Tiebreak::NotCurrent => min.saturating_sub(1),
        };
    }
    Ok(ranks)
}

/// AWS's rule for S3 sequencers: pad the shorter with zeros on the right, compare as strings.
/// Padded lazily: no allocation, and no format width that a long input could overflow.
pub fn sequencer_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn padded(s: &str, width: usize) -> impl Iterator<Item = u8> + '_ {
        s.bytes()
            .map(|b| b.to_ascii_uppercase())
            .chain(std::iter::repeat(b'0'))
            .take(width)
    }
    let width = a.len().max(b.len());
    padded(a, width).cmp(padded(b, width))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewResource, Removal, Sha256Source, Survivor};

    #[test]
    fn newer_prefers_sequencers_then_times_then_ranks() {
        let t0 = DateTime::<Utc>::from_timestamp(100, 0).unwrap();
        let t1 = DateTime::<Utc>::from_timestamp(200, 0).unwrap();
        assert!(newer((Some("0056"), t0, 0), (Some("0055FF"), t1, 0)));
        assert!(!newer((Some("0055"), t0, 0), (Some("0056"), t1, 0)));
        assert!(newer((None, t1, 0), (Some("00FF"), t0, 0)));
        assert!(!newer((None, t0, 0), (None, t0, 0)));
        // Equal sequencers (LocalStack's constant one) are no proof of one event: time decides.
        assert!(newer((Some("0055"), t1, 0), (Some("0055"), t0, 0)));
        assert!(!newer((Some("0055"), t0, 0), (Some("0055"), t1, 0)));
        // "0055" and "005500" are one sequencer padded.
        assert!(newer((Some("005500"), t1, 0), (Some("0055"), t0, 0)));
        // Equal on both: the rank S3's answer gave.
        assert!(newer((Some("0055"), t0, 1), (Some("0055"), t0, 0)));
        assert!(newer((None, t0, 0), (Some("0055"), t0, -1)));
        assert!(!newer((Some("0055"), t0, 0), (Some("0055"), t0, 0)));
    }

    fn resource(etag: &str, sequencer: Option<&str>, secs: i64) -> Write {
        Write::Resource(NewResource {
            bucket: "b".into(),
            object_key: "dp/k".into(),
            datapack: "dp".into(),
            path: "/".into(),
            display: "k".into(),
            content_type: None,
            length: 1,
            etag: etag.into(),
            sha256: "0".repeat(64),
            sha256_source: Sha256Source::Computed,
            submitter_name: None,
            submitter_email: None,
            object_last_modified: None,
            version_id: None,
            sequencer: sequencer.map(str::to_owned),
            event_time: DateTime::<Utc>::from_timestamp(secs, 0).unwrap(),
            tiebreak: None,
        })
    }

    fn removal(survivor: Option<&str>, sequencer: Option<&str>, secs: i64) -> Write {
        Write::Removal(Removal {
            bucket: "b".into(),
            object_key: "dp/k".into(),
            sequencer: sequencer.map(str::to_owned),
            event_time: DateTime::<Utc>::from_timestamp(secs, 0).unwrap(),
            version_id: None,
            survivor: survivor.map(|etag| Survivor {
                etag: etag.into(),
                version_id: None,
            }),
            tiebreak: None,
        })
    }

    #[test]
    fn different_objects_at_one_position_tie_and_one_object_twice_does_not() {
        let a = resource("e1", Some("0A"), 10);
        // Another object, same constant sequencer and time: a tie.
        assert!(ties_with(&resource("e2", Some("0A"), 10), &a));
        // Without sequencers, or with one missing, the time alone places them.
        assert!(ties_with(&resource("e2", None, 10), &a));
        // The same bytes again: a redelivery, never a tie.
        assert!(!ties_with(&resource("e1", Some("0A"), 10), &a));
        // A later time, or a different sequencer, orders them.
        assert!(!ties_with(&resource("e2", Some("0A"), 11), &a));
        assert!(!ties_with(&resource("e2", Some("0B"), 10), &a));
        // A removal at the same position ties with a create, unless it leaves that create.
        assert!(ties_with(&removal(None, Some("0A"), 10), &a));
        assert!(!ties_with(&removal(Some("e1"), Some("0A"), 10), &a));
        // Two removals at one position are one removal.
        assert!(!ties_with(
            &removal(None, Some("0A"), 10),
            &removal(Some("e2"), Some("0A"), 10)
        ));
    }

    #[test]
    fn orders_sequencers_like_aws() {
        use std::cmp::Ordering::*;
        assert_eq!(
            sequencer_cmp("0055AED6DCD90281E5", "0055AED6DCD90281E6"),
            Less
        );
        assert_eq!(sequencer_cmp("0055AED6DCD9028", "0055AED6DCD90281E5"), Less);
        assert_eq!(sequencer_cmp("0056", "0055AED6DCD90281E5"), Greater);
        assert_eq!(sequencer_cmp("00ab", "00AB"), Equal);
    }

    #[test]
    fn a_sequencer_of_any_length_compares_without_panicking() {
        use std::cmp::Ordering::*;
        let long = "F".repeat(70_000);
        assert_eq!(sequencer_cmp(&long, "00"), Greater);
        assert_eq!(sequencer_cmp("00", &long), Less);
        assert_eq!(sequencer_cmp(&long, &long), Equal);
    }
}
