//! What S3 shows for a key now, for removals whose event alone cannot tell, and the write that
//! converges the key's rows to it.
//!
//! The permanent deletion of one version (an old version, a delete marker, a noncurrent
//! version's expiry) leaves whichever version S3 then shows, and the event does not say which.
//! So S3 is asked (one HeadObject, no version: the current one), and the answer is recorded as
//! what survived the removal, at the removal's position in the key's order: the store makes the
//! rows at or before it converge to that version, and anything newer still wins. A plain delete
//! and a delete marker need no request: nothing is live as of them.
//!
//! The same question settles a tie: two different objects of one key at one position (equal or
//! missing sequencers, equal event times). Whichever S3 shows now wins ([`tiebreak`]).

use aws_sdk_s3::types::{DeleteMarkerEntry, ObjectVersion};
use chrono::{DateTime, Utc};

use crate::aws;
use crate::disposition::{Dependency, Failure, RetryReason};
use crate::process::event::unquote_etag;
use crate::store::write::Tiebreak;
use crate::store::{Removal, Survivor, Write};

/// What S3 shows for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Current {
    /// No version, or a delete marker on top: nothing is live.
    Nothing,
    /// This version is current.
    Version(Survivor),
}

impl Current {
    /// From a ListObjectVersions listing of `Prefix = key` (any number of pages, in S3's order):
    /// only entries of exactly `key` count (the prefix also lists `key.bak`). The current entry
    /// is the one S3 flags `IsLatest`; a listing without the flag (some stores omit it) falls
    /// back to the entry with the newest LastModified, S3's own rule.
    pub(crate) fn from_listing(
        key: &str,
        versions: &[ObjectVersion],
        markers: &[DeleteMarkerEntry],
    ) -> Self {
        struct Entry<'a> {
            latest: bool,
            modified: Option<&'a aws_smithy_types::DateTime>,
            version: Option<&'a ObjectVersion>,
        }
        let entries = versions
            .iter()
            .filter(|v| v.key() == Some(key))
            .map(|v| Entry {
                latest: v.is_latest() == Some(true),
                modified: v.last_modified(),
                version: Some(v),
            })
            .chain(
                markers
                    .iter()
                    .filter(|m| m.key() == Some(key))
                    .map(|m| Entry {
                        latest: m.is_latest() == Some(true),
                        modified: m.last_modified(),
                        version: None,
                    }),
            );
        let mut best: Option<Entry> = None;
        for entry in entries {
            let better = match &best {
                None => true,
                Some(b) if b.latest => false,
                Some(_) if entry.latest => true,
                Some(b) => {
                    entry.modified.map(|t| (t.secs(), t.subsec_nanos()))
                        > b.modified.map(|t| (t.secs(), t.subsec_nanos()))
                }
            };
            if better {
                best = Some(entry);
            }
        }
        match best.and_then(|e| e.version) {
            Some(version) => match version.e_tag().map(unquote_etag) {
                Some(etag) if !etag.is_empty() => Self::Version(Survivor {
                    etag,
                    version_id: real_version(version.version_id()),
                }),
                // A version S3 lists without an ETag cannot be matched to a row: none lives.
                _ => Self::Nothing,
            },
            None => Self::Nothing,
        }
    }
}

/// S3 calls the version of an object written while versioning was off `null`.
fn real_version(version: Option<&str>) -> Option<String> {
    version
        .filter(|v| !v.is_empty() && *v != "null")
        .map(str::to_owned)
}

/// Asks S3 which version of `key` is current: HeadObject without a version. A 404 means no
/// version, or a delete marker on top (S3 answers `x-amz-delete-marker: true`): nothing is live.
pub(crate) async fn current(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Current, Failure> {
    // Boxed, as in `fetch`: inline, the SDK's large send future would grow every future that
    // awaits this one (the pipeline's, and the task spawned per message, copied when spawned).
    match Box::pin(s3.head_object().bucket(bucket).key(key).send()).await {
        Ok(head) => {
            let etag = head
                .e_tag()
                .map(unquote_etag)
                .filter(|e| !e.is_empty())
                .ok_or_else(|| {
                    Failure::transient(RetryReason::S3Error, "HeadObject answered without an ETag")
                })?;
            Ok(Current::Version(Survivor {
                etag,
                version_id: real_version(head.version_id()),
            }))
        }
        Err(error) if aws::status(&error) == Some(404) => Ok(Current::Nothing),
        Err(error) => Err(aws::classify(Dependency::S3, error)),
    }
}

/// The write that converges `key`'s rows to `current`, ordered as the removal that asked: an
/// older event never undoes it, a newer one still wins. `removed_version` is the version or
/// delete marker the removal named (kept for audit). For a removal of the whole key (a plain
/// delete, a delete marker) pass [`Current::Nothing`].
pub(crate) fn converge(
    bucket: &str,
    key: &str,
    current: Current,
    removed_version: Option<&str>,
    sequencer: Option<&str>,
    event_time: DateTime<Utc>,
) -> Removal {
    Removal {
        bucket: bucket.to_owned(),
        object_key: key.to_owned(),
        sequencer: sequencer.map(str::to_owned),
        event_time,
        version_id: removed_version.map(str::to_owned),
        survivor: match current {
            Current::Nothing => None,
            Current::Version(survivor) => Some(survivor),
        },
        tiebreak: None,
    }
}

/// Settles a write that tied with a different object, from what S3 shows for the key now: a
/// create wins if its bytes (and version, when both are known) are current; a removal wins if
/// what it left is (nothing, or its survivor).
pub(crate) fn tiebreak(write: &Write, current: &Current) -> Tiebreak {
    let wins = match (write, current) {
        (Write::Resource(r), Current::Version(now)) => {
            r.etag == now.etag
                && match (&r.version_id, &now.version_id) {
                    (Some(mine), Some(theirs)) => mine == theirs,
                    _ => true,
                }
        }
        (Write::Resource(_), Current::Nothing) => false,
        (Write::Removal(r), Current::Nothing) => r.survivor.is_none(),
        (Write::Removal(r), Current::Version(now)) => {
            r.survivor.as_ref().is_some_and(|s| s.etag == now.etag)
        }
    };
    if wins {
        Tiebreak::Current
    } else {
        Tiebreak::NotCurrent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> aws_smithy_types::DateTime {
        aws_smithy_types::DateTime::from_secs(secs)
    }

    fn version(key: &str, id: &str, etag: &str, latest: Option<bool>, secs: i64) -> ObjectVersion {
        let mut v = ObjectVersion::builder()
            .key(key)
            .version_id(id)
            .e_tag(format!("\"{etag}\""))
            .last_modified(at(secs));
        if let Some(latest) = latest {
            v = v.is_latest(latest);
        }
        v.build()
    }

    fn marker(key: &str, id: &str, latest: Option<bool>, secs: i64) -> DeleteMarkerEntry {
        let mut m = DeleteMarkerEntry::builder()
            .key(key)
            .version_id(id)
            .last_modified(at(secs));
        if let Some(latest) = latest {
            m = m.is_latest(latest);
        }
        m.build()
    }

    fn survivor(etag: &str, version: &str) -> Current {
        Current::Version(Survivor {
            etag: etag.into(),
            version_id: Some(version.into()),
        })
    }

    #[test]
    fn the_latest_entry_of_exactly_the_key_decides() {
        let versions = [
            version("dp/a", "v2", "e2", Some(true), 20),
            version("dp/a", "v1", "e1", Some(false), 10),
            // Listed by the prefix, newer, but another key.
            version("dp/a.bak", "w1", "e9", Some(true), 30),
        ];
        assert_eq!(
            Current::from_listing("dp/a", &versions, &[]),
            survivor("e2", "v2")
        );
        let markers = [marker("dp/a", "m1", Some(true), 25)];
        let hidden = [
            version("dp/a", "v2", "e2", Some(false), 20),
            version("dp/a", "v1", "e1", Some(false), 10),
        ];
        assert_eq!(
            Current::from_listing("dp/a", &hidden, &markers),
            Current::Nothing
        );
        assert_eq!(
            Current::from_listing("dp/a", &[], &[]),
            Current::Nothing,
            "no version left"
        );
        assert_eq!(
            Current::from_listing("dp/a", &versions[2..], &[]),
            Current::Nothing,
            "only another key"
        );
    }

    #[test]
    fn without_is_latest_the_newest_entry_is_current() {
        let versions = [
            version("dp/a", "v1", "e1", None, 10),
            version("dp/a", "v2", "e2", None, 20),
        ];
        assert_eq!(
            Current::from_listing("dp/a", &versions, &[]),
            survivor("e2", "v2")
        );
        let markers = [marker("dp/a", "m1", None, 30)];
        assert_eq!(
            Current::from_listing("dp/a", &versions, &markers),
            Current::Nothing
        );
    }

    #[test]
    fn the_null_version_is_no_version_id() {
        let versions = [version("dp/a", "null", "e1", Some(true), 10)];
        assert_eq!(
            Current::from_listing("dp/a", &versions, &[]),
            Current::Version(Survivor {
                etag: "e1".into(),
                version_id: None
            })
        );
    }

    #[test]
    fn converge_orders_the_write_as_the_removal() {
        let t = DateTime::<Utc>::from_timestamp(100, 0).unwrap();
        let removal = converge(
            "b",
            "dp/a",
            survivor("e2", "v2"),
            Some("v1"),
            Some("00AB"),
            t,
        );
        assert_eq!(removal.sequencer.as_deref(), Some("00AB"));
        assert_eq!(removal.event_time, t);
        assert_eq!(removal.version_id.as_deref(), Some("v1"));
        assert_eq!(removal.survivor.unwrap().etag, "e2");
        let hidden = converge("b", "dp/a", Current::Nothing, Some("m1"), None, t);
        assert_eq!(hidden.survivor, None);
    }

    #[test]
    fn a_tie_goes_to_what_s3_shows() {
        let t = DateTime::<Utc>::from_timestamp(100, 0).unwrap();
        let create = |etag: &str, version: Option<&str>| {
            Write::Resource(crate::store::NewResource {
                bucket: "b".into(),
                object_key: "dp/a".into(),
                datapack: "dp".into(),
                path: "/".into(),
                display: "a".into(),
                content_type: None,
                length: 1,
                etag: etag.into(),
                sha256: "0".repeat(64),
                sha256_source: Default::default(),
                submitter_name: None,
                submitter_email: None,
                object_last_modified: None,
                version_id: version.map(str::to_owned),
                sequencer: Some("00AB".into()),
                event_time: t,
                tiebreak: None,
            })
        };
        let now = survivor("e2", "v2");
        assert_eq!(tiebreak(&create("e2", Some("v2")), &now), Tiebreak::Current);
        assert_eq!(tiebreak(&create("e2", None), &now), Tiebreak::Current);
        assert_eq!(
            tiebreak(&create("e2", Some("v1")), &now),
            Tiebreak::NotCurrent,
            "the same bytes, an older version"
        );
        assert_eq!(tiebreak(&create("e1", None), &now), Tiebreak::NotCurrent);
        assert_eq!(
            tiebreak(&create("e2", None), &Current::Nothing),
            Tiebreak::NotCurrent
        );
        let plain = Write::Removal(converge("b", "dp/a", Current::Nothing, None, None, t));
        assert_eq!(tiebreak(&plain, &Current::Nothing), Tiebreak::Current);
        assert_eq!(tiebreak(&plain, &now), Tiebreak::NotCurrent);
        let left_e2 = Write::Removal(converge("b", "dp/a", now.clone(), Some("v1"), None, t));
        assert_eq!(tiebreak(&left_e2, &now), Tiebreak::Current);
        assert_eq!(tiebreak(&left_e2, &Current::Nothing), Tiebreak::NotCurrent);
    }
}
