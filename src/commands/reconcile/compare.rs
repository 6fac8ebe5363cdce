//! One listing page against the database's live rows of the same key range: the differences.
//!
//! Both sides come in S3's key order (the rows from [`crate::store::reconcile::live`]), so they
//! are merged a key at a time and neither is ever held whole.

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
