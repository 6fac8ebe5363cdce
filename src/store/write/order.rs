//! The order of one key's events, as a rule in Rust: the specification the SQL functions
//! `datapack_event_newer` and `datapack_event_same` implement (a test runs both on the same cases).
//!
//! Events are ordered by S3's sequencers when both have one and they differ, else by their event
//! times, else by a tie rank ([`order`]). Two writes of one key at one position (before ranks)
//! are the same event delivered again when they are the same object, and a tie when they are
//! different objects ([`ties_with`]): the write path answers the second [`super::WriteOutcome::Tie`]
//! for the caller to settle with S3.

use chrono::{DateTime, Utc};

use super::Write;

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

/// Whether `a` comes after `b` in its key's order.
pub fn newer(a: Position<'_>, b: Position<'_>) -> bool {
    order(a, b).is_gt()
}

/// Whether two events share a position before tie ranks: a tie when they are different objects.
pub fn same_position(a: Position<'_>, b: Position<'_>) -> bool {
    order((a.0, a.1, 0), (b.0, b.1, 0)).is_eq()
}

/// Whether two writes of one batch tie: one key, one position, different objects (two removals
/// at one position are one removal delivered twice).
pub fn ties_with(a: &Write, b: &Write) -> bool {
    let (a_removal, a_identity) = a.identity();
    let (b_removal, b_identity) = b.identity();
    a.key() == b.key()
        && !(a_removal && b_removal)
        && a_identity != b_identity
        && same_position(a.position(), b.position())
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
