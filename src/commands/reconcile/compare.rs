//! One listing page against the database's live rows of the same key range: the differences.
//!
//! Both sides come in S3's key order (the rows from [`crate::store::reconcile::live`]), so they
//! are merged a key at a time and neither is ever held whole.

use chrono::{DateTime, Utc};

use crate::store::reconcile::live::LiveRow;

use super::listing::Listed;

/// What differs between S3 and the database for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Drift {
    /// S3 shows this version; no row of the key is live.
    Missing(Listed),
    /// S3 shows this version; the key's live row is another upload (or it has several).
    Changed { listed: Listed, rows: Vec<LiveRow> },
    /// Rows of the key are live; the listing shows nothing for it.
    Gone { key: String, rows: Vec<LiveRow> },
}

/// The difference for one key S3 lists and the key's live rows (none when the database has none).
pub(crate) fn compare(listed: &Listed, rows: &[LiveRow]) -> Option<Drift> {
    match rows {
        [] => Some(Drift::Missing(listed.clone())),
        [row] if row.etag == listed.etag => None,
        _ => Some(Drift::Changed {
            listed: listed.clone(),
            rows: rows.to_vec(),
        }),
    }
}

/// A page's listed keys merged with the live keys of its range, both in S3's key order (bytes,
/// as Rust orders strings): each live key handed in yields the differences up to it.
pub(crate) struct Merge<'a> {
    entries: std::iter::Peekable<std::slice::Iter<'a, Listed>>,
    /// When the listing was taken, for a source older than the run (an inventory report): rows
    /// written after it cannot be judged by it.
    listed_at: Option<DateTime<Utc>>,
}

impl<'a> Merge<'a> {
    pub(crate) fn new(entries: &'a [Listed], listed_at: Option<DateTime<Utc>>) -> Self {
        Self {
            entries: entries.iter().peekable(),
            listed_at,
        }
    }

    /// The differences of the listed keys before `key`, then of `key` itself with its `live`
    /// rows.
    pub(crate) fn key(&mut self, key: String, live: Vec<LiveRow>) -> Vec<Drift> {
        let mut drifts: Vec<Drift> = std::iter::from_fn(|| self.entries.next_if(|l| l.key < key))
            .map(|listed| Drift::Missing(listed.clone()))
            .collect();
        if let Some(listed) = self.entries.next_if(|l| l.key == key) {
            drifts.extend(compare(listed, &live));
            return drifts;
        }
        let rows: Vec<LiveRow> = live
            .into_iter()
            .filter(|r| self.listed_at.is_none_or(|t| r.event_time <= t))
            .collect();
        if !rows.is_empty() {
            drifts.push(Drift::Gone { key, rows });
        }
        drifts
    }

    /// The listed keys past the last live key: none has a live row.
    pub(crate) fn rest(self) -> impl Iterator<Item = Drift> + 'a {
        self.entries.map(|listed| Drift::Missing(listed.clone()))
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    fn listed(key: &str, etag: &str) -> Listed {
        Listed {
            key: key.into(),
            etag: etag.into(),
            version_id: None,
            size: None,
        }
    }

    fn row(etag: &str, event_time: DateTime<Utc>) -> LiveRow {
        LiveRow {
            etag: etag.into(),
            event_time,
        }
    }

    #[test]
    fn one_live_row_of_the_listed_upload_agrees() {
        let now = Utc::now();
        let a = listed("dp/a", "e1");
        assert_eq!(compare(&a, &[row("e1", now)]), None);
        assert_eq!(compare(&a, &[]), Some(Drift::Missing(a.clone())));
        for rows in [vec![row("e0", now)], vec![row("e1", now), row("e2", now)]] {
            assert_eq!(
                compare(&a, &rows),
                Some(Drift::Changed {
                    listed: a.clone(),
                    rows
                })
            );
        }
    }

    #[test]
    fn both_sides_merge_in_key_order() {
        let now = Utc::now();
        let entries = [
            listed("dp/a", "ea"),
            listed("dp/c", "ec"),
            listed("dp/d", "ed"),
            listed("dp/f", "ef"),
        ];
        let mut merge = Merge::new(&entries, None);
        assert_eq!(
            merge.key("dp/b".into(), vec![row("eb", now)]),
            [
                Drift::Missing(entries[0].clone()),
                Drift::Gone {
                    key: "dp/b".into(),
                    rows: vec![row("eb", now)]
                }
            ]
        );
        assert_eq!(
            merge.key("dp/d".into(), vec![row("ed", now)]),
            [Drift::Missing(entries[1].clone())]
        );
        assert_eq!(
            merge.rest().collect::<Vec<_>>(),
            [Drift::Missing(entries[3].clone())]
        );
    }

    #[test]
    fn keys_compare_as_bytes_like_s3_orders_them() {
        // Upper case before lower case, and a multi-byte character after both.
        let entries = [listed("dp/B", "e"), listed("dp/é", "e")];
        let mut merge = Merge::new(&entries, None);
        let drifts = merge.key("dp/a".into(), vec![row("x", Utc::now())]);
        assert!(matches!(&drifts[..], [Drift::Missing(b), Drift::Gone { .. }] if b.key == "dp/B"));
        assert_eq!(merge.rest().count(), 1);
    }

    #[test]
    fn an_old_listing_cannot_judge_rows_written_after_it() {
        let taken = Utc::now();
        let (before, after) = (taken - TimeDelta::hours(1), taken + TimeDelta::hours(1));
        let mut merge = Merge::new(&[], Some(taken));
        assert_eq!(merge.key("dp/new".into(), vec![row("e", after)]), []);
        assert_eq!(
            merge.key("dp/old".into(), vec![row("e", before), row("f", after)]),
            [Drift::Gone {
                key: "dp/old".into(),
                rows: vec![row("e", before)]
            }]
        );
    }
}
