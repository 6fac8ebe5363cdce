//! The live rows of a bucket's key range, in S3's key order: what a reconcile compares a listing
//! page with.
//!
//! The rows are read in S3's key order (`COLLATE "C"`: bytes, as S3 orders UTF-8 keys), a chunk
//! at a time, one key (with all its live rows) handed out at a time, so a range is never held
//! whole: a range that holds a million rows of deleted objects is still read a chunk at a time.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

/// Live rows read per query.
const CHUNK_ROWS: i64 = 1000;

/// A live row's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LiveRow {
    pub(crate) etag: String,
    pub(crate) event_time: DateTime<Utc>,
}

/// The live rows of `bucket` in the key range `(after, upto]` within `prefix`, one key (with all
/// its live rows) at a time.
pub(crate) struct LiveRows<'a> {
    pool: &'a PgPool,
    bucket: &'a str,
    prefix: &'a str,
    upto: Option<&'a str>,
    /// Rows are read from this key on; `inclusive` says whether the key itself is still to come.
    from: String,
    inclusive: bool,
    /// Complete keys only: a chunk's last key, which may continue, is read again with the next.
    buffer: VecDeque<(String, LiveRow)>,
    exhausted: bool,
}

/// A chunk of live rows in byte order after `$2` (`CHUNK_FROM`: from it), up to `$3` when set,
/// found through the partial index on live rows (`datapack_resource_live_key_idx`).
const CHUNK_AFTER: &str = "SELECT object_key, etag, event_time FROM datapack_resource
     WHERE bucket = $1 AND deleted_at IS NULL
       AND object_key COLLATE \"C\" > $2
       AND ($3::text IS NULL OR object_key COLLATE \"C\" <= $3)
       AND starts_with(object_key, $4)
     ORDER BY object_key COLLATE \"C\" LIMIT $5";
const CHUNK_FROM: &str = "SELECT object_key, etag, event_time FROM datapack_resource
     WHERE bucket = $1 AND deleted_at IS NULL
       AND object_key COLLATE \"C\" >= $2
       AND ($3::text IS NULL OR object_key COLLATE \"C\" <= $3)
       AND starts_with(object_key, $4)
     ORDER BY object_key COLLATE \"C\" LIMIT $5";

impl<'a> LiveRows<'a> {
    pub(crate) fn new(
        pool: &'a PgPool,
        bucket: &'a str,
        prefix: &'a str,
        after: Option<&str>,
        upto: Option<&'a str>,
    ) -> Self {
        let (from, inclusive) = match after {
            Some(after) => (after.to_owned(), false),
            None => (prefix.to_owned(), true),
        };
        Self {
            pool,
            bucket,
            prefix,
            upto,
            from,
            inclusive,
            buffer: VecDeque::new(),
            exhausted: false,
        }
    }

    /// The next key in order with its live rows, or `None` past the range.
    pub(crate) async fn next_key(&mut self) -> Result<Option<(String, Vec<LiveRow>)>, sqlx::Error> {
        if self.buffer.is_empty() {
            self.fill().await?;
        }
        let Some((key, row)) = self.buffer.pop_front() else {
            return Ok(None);
        };
        let mut rows = vec![row];
        while self.buffer.front().is_some_and(|(k, _)| *k == key) {
            rows.push(self.buffer.pop_front().expect("front checked").1);
        }
        Ok(Some((key, rows)))
    }

    async fn fill(&mut self) -> Result<(), sqlx::Error> {
        if self.exhausted {
            return Ok(());
        }
        let query = if self.inclusive {
            CHUNK_FROM
        } else {
            CHUNK_AFTER
        };
        let rows = sqlx::query(query)
            .bind(self.bucket)
            .bind(&self.from)
            .bind(self.upto)
            .bind(self.prefix)
            .bind(CHUNK_ROWS)
            .fetch_all(self.pool)
            .await?;
        let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= CHUNK_ROWS;
        for row in rows {
            let live = LiveRow {
                etag: row.try_get("etag")?,
                event_time: row.try_get("event_time")?,
            };
            self.buffer.push_back((row.try_get("object_key")?, live));
        }
        if !full {
            self.exhausted = true;
            return Ok(());
        }
        let last = self
            .buffer
            .back()
            .map(|(k, _)| k.clone())
            .unwrap_or_default();
        if self.buffer.iter().all(|(k, _)| *k == last) {
            // One key filled the chunk: take all of its rows, then go on after it.
            self.buffer = self.whole_key(&last).await?;
            self.from = last;
            self.inclusive = false;
            return Ok(());
        }
        while self.buffer.back().is_some_and(|(k, _)| *k == last) {
            self.buffer.pop_back();
        }
        self.from = last;
        self.inclusive = true;
        Ok(())
    }

    async fn whole_key(&self, key: &str) -> Result<VecDeque<(String, LiveRow)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT etag, event_time FROM datapack_resource
             WHERE bucket = $1 AND deleted_at IS NULL AND object_key = $2 ORDER BY etag",
        )
        .bind(self.bucket)
        .bind(key)
        .fetch_all(self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    key.to_owned(),
                    LiveRow {
                        etag: row.try_get("etag")?,
                        event_time: row.try_get("event_time")?,
                    },
                ))
            })
            .collect()
    }
}
