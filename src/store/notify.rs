//! The push to the app: one `pg_notify` per changed row, in the transaction that changed it.
//!
//! PostgreSQL delivers a transaction's notifications only when it commits, in commit order, and
//! never those of a transaction that rolls back: a listener learns of every committed change at
//! once and of nothing else. A batch that changes nothing (a redelivery) notifies nothing.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use serde::Serialize;

use crate::store::write::{Settled, Write, Written};

/// The channel an app `LISTEN`s on.
pub const CHANNEL: &str = "datapack_resource_changed";

/// PostgreSQL refuses a payload of 8000 bytes or more (with the default 8 KiB block size) and
/// fails the whole transaction with it; a larger one is sent without its long fields.
pub const PAYLOAD_MAX_BYTES: usize = 7999;

/// What happened to a row, as the payload's `change` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

/// The facts of a row a payload names.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RowFacts {
    pub datapack: String,
    pub object_key: String,
    pub etag: String,
    pub version_id: Option<String>,
}

/// One row's net change in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RowChange {
    pub id: i64,
    pub change: Change,
    /// Whether the row is live once the transaction commits.
    pub live: bool,
    pub facts: RowFacts,
}

/// Before and after of one row within the transaction.
struct Track {
    /// `None`: the row did not exist.
    was_live: Option<bool>,
    rewritten: bool,
    live: bool,
    facts: RowFacts,
}

/// The net change of every row the transaction touched, by row id: a row inserted and then
/// deleted by a newer removal in the same batch is one `created` (not live), never two messages.
pub(crate) fn changes(
    writes: &[Write],
    written: &[Written],
    settled: &[Settled],
) -> Vec<RowChange> {
    let mut rows: BTreeMap<i64, Track> = BTreeMap::new();
    for w in written {
        let Write::Resource(r) = &writes[w.index] else {
            continue;
        };
        rows.insert(
            w.id,
            Track {
                was_live: (!w.inserted).then_some(w.was_live),
                rewritten: true,
                // Inserted or refreshed rows are live until settling says otherwise.
                live: true,
                facts: RowFacts {
                    datapack: r.datapack.clone(),
                    object_key: r.object_key.clone(),
                    etag: r.etag.clone(),
                    version_id: r.version_id.clone(),
                },
            },
        );
    }
    for s in settled {
        match rows.entry(s.id) {
            // Written above: already counted as rewritten.
            Entry::Occupied(mut seen) => {
                let track = seen.get_mut();
                track.live = s.live;
                track.facts = s.facts.clone();
            }
            // Settling returns a row whose liveness did not change only when it renamed its
            // version (a survivor's row now names the version S3 shows).
            Entry::Vacant(new) => {
                new.insert(Track {
                    was_live: Some(s.was_live),
                    rewritten: s.was_live == s.live,
                    live: s.live,
                    facts: s.facts.clone(),
                });
            }
        }
    }
    rows.into_iter()
        .filter_map(|(id, track)| track.change(id))
        .collect()
}

impl Track {
    /// What happened to the row, if anything an app should hear of.
    fn change(self, id: i64) -> Option<RowChange> {
        let change = match (self.was_live, self.live) {
            (None, _) => Change::Created,
            (Some(true), false) => Change::Deleted,
            (Some(false), true) => Change::Restored,
            (Some(_), _) if self.rewritten => Change::Updated,
            (Some(_), _) => return None,
        };
        Some(RowChange {
            id,
            change,
            live: self.live,
            facts: self.facts,
        })
    }
}

#[derive(Serialize)]
struct Payload<'a> {
    id: i64,
    change: Change,
    live: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    datapack: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    etag: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version_id: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

/// The JSON a listener receives. A key (1,024 bytes) and a datapack identifier of control
/// characters escape to six bytes each, and a version id may be 1,024 bytes: past the limit the
/// payload keeps `id`, `change`, `live` and `etag`, says `"truncated": true`, and the app reads
/// the rest from the row by `id`.
pub(crate) fn payload(change: &RowChange) -> String {
    let facts = &change.facts;
    let full = Payload {
        id: change.id,
        change: change.change,
        live: change.live,
        datapack: Some(&facts.datapack),
        key: Some(&facts.object_key),
        etag: &facts.etag,
        version_id: Some(facts.version_id.as_deref()),
        truncated: false,
    };
    let text = serde_json::to_string(&full).expect("a payload serialises");
    if text.len() <= PAYLOAD_MAX_BYTES {
        return text;
    }
    serde_json::to_string(&Payload {
        datapack: None,
        key: None,
        version_id: None,
        truncated: true,
        ..full
    })
    .expect("a payload serialises")
}

/// Notifies every change, in row order, in the caller's transaction: one statement whatever the
/// batch size.
pub(crate) async fn send(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    changes: &[RowChange],
) -> Result<(), sqlx::Error> {
    if changes.is_empty() {
        return Ok(());
    }
    let payloads: Vec<String> = changes.iter().map(payload).collect();
    // unnest yields the array in order, and pg_notify queues in call order.
    sqlx::query("SELECT count(pg_notify($1, p)) FROM unnest($2::text[]) AS p")
        .bind(CHANNEL)
        .bind(&payloads)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(key: &str) -> RowFacts {
        RowFacts {
            datapack: "dp".into(),
            object_key: key.into(),
            etag: "e1".into(),
            version_id: None,
        }
    }

    #[test]
    fn payload_names_the_row_and_the_change() {
        let change = RowChange {
            id: 7,
            change: Change::Restored,
            live: true,
            facts: RowFacts {
                version_id: Some("v1".into()),
                ..facts("dp/a b.txt")
            },
        };
        let value: serde_json::Value = serde_json::from_str(&payload(&change)).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"id": 7, "change": "restored", "live": true, "datapack": "dp",
                "key": "dp/a b.txt", "etag": "e1", "version_id": "v1"})
        );
        let unversioned = payload(&RowChange {
            facts: facts("dp/x"),
            ..change
        });
        assert!(
            unversioned.contains(r#""version_id":null"#),
            "{unversioned}"
        );
    }

    #[test]
    fn the_largest_rows_still_fit_postgresql_s_limit() {
        // The worst case the limits allow: a 1,024-byte key of control characters (six bytes
        // each once escaped), the datapack identifier as long, a 1,024-byte version id of
        // backslashes, a 128-character ETag.
        let key = "\u{1}".repeat(1024);
        let change = RowChange {
            id: i64::MAX,
            change: Change::Created,
            live: false,
            facts: RowFacts {
                datapack: key.clone(),
                object_key: key,
                etag: "\\".repeat(128),
                version_id: Some("\\".repeat(1024)),
            },
        };
        let text = payload(&change);
        assert!(text.len() <= PAYLOAD_MAX_BYTES, "{} bytes", text.len());
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["truncated"], true);
        assert_eq!(value["id"], i64::MAX);
        assert!(value.get("key").is_none());
        // A long but ordinary key is sent whole.
        let ordinary = RowChange {
            facts: facts(&format!("dp/{}", "é".repeat(500))),
            ..change
        };
        let value: serde_json::Value = serde_json::from_str(&payload(&ordinary)).unwrap();
        assert!(value.get("truncated").is_none());
        assert_eq!(value["key"].as_str().unwrap().len(), 1003);
    }
}
