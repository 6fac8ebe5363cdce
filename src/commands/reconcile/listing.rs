//! The bucket, one page at a time, in S3's key order: what each key shows now.
//!
//! A page holds complete keys only and covers a key range, `(after, upto]` (`upto: None` for the
//! rest of the scope), so the comparison can read the database's rows of exactly that range. A
//! key absent from a page's range has nothing live in S3. Sources: ListObjectsV2 (unversioned
//! buckets), ListObjectVersions (versioned ones: the current version of each key, a delete marker
//! on top meaning nothing), or an S3 Inventory report ([`super::inventory`]).
//!
//! Both listings ask S3 for URL-encoded keys (`encoding-type=url`): S3 accepts keys with
//! characters XML 1.0 cannot carry (`\x01`), and an answer holding one raw would not parse, so
//! one odd key would stop every run. Keys (and the next key marker) are decoded when the
//! answer says it was encoded. A page never ends on a key PostgreSQL cannot hold (one with a
//! NUL): [`Page::storable`] sets such keys aside, to be skipped and counted. Which source a run
//! reads is chosen in [`super::source`].

use aws_sdk_s3::operation::list_object_versions::ListObjectVersionsOutput;
use aws_sdk_s3::types::{DeleteMarkerEntry, EncodingType, ObjectVersion};

use crate::aws;
use crate::disposition::{DeadLetterReason, Dependency, Failure};
use crate::process::event::{decode_key, unquote_etag};
use crate::process::versions::Current;

/// One key and the version S3 shows for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    pub(crate) key: String,
    /// Without quotes.
    pub(crate) etag: String,
    /// `None` for an unversioned bucket (or the `null` version).
    pub(crate) version_id: Option<String>,
    pub(crate) size: Option<u64>,
}

/// Complete keys in S3's order, covering `(previous page's upto, upto]`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Page {
    pub(crate) entries: Vec<Listed>,
    /// The last key the page covers; `None`: everything to the end of the scope.
    pub(crate) upto: Option<String>,
}

impl Page {
    /// The page as the database can take it, and the keys it cannot hold (with a NUL), which
    /// are set aside. The range's end is cut before its first NUL: no storable key lies
    /// between the two (NUL is the smallest character), so the page covers the same rows and
    /// the checkpoint can store where it ended. A run resumed from there lists the cut key
    /// again, and skips it again.
    pub(crate) fn storable(self) -> (Page, Vec<String>) {
        let (entries, unstorable): (Vec<Listed>, Vec<Listed>) = self
            .entries
            .into_iter()
            .partition(|l| !l.key.contains('\0'));
        let upto = self
            .upto
            .map(|k| k.split('\0').next().unwrap_or_default().to_owned());
        (
            Page { entries, upto },
            unstorable.into_iter().map(|l| l.key).collect(),
        )
    }
}

/// A listing request for one page of the run's prefix: keys URL-encoded (a key with a control
/// character is unreadable in XML otherwise), `page_keys` of them at most. One macro for both
/// listings: the SDK's two builders share these setters but no trait.
macro_rules! page_of {
    ($request:expr, $start:expr) => {
        $request
            .bucket(&$start.bucket)
            .prefix(&$start.prefix)
            .encoding_type(EncodingType::Url)
            .max_keys($start.page_keys)
    };
}

/// The key S3 sent, decoded when the answer says keys are URL-encoded (`None`: not UTF-8,
/// which S3 never sends; such an entry is left out).
fn key_of(raw: Option<&str>, encoding: Option<&EncodingType>) -> Option<String> {
    let raw = raw?;
    if encoding != Some(&EncodingType::Url) {
        return Some(raw.to_owned());
    }
    match decode_key(raw) {
        Ok(key) => Some(key),
        Err(error) => {
            tracing::warn!(
                key = raw,
                error = error.detail,
                "a listed key does not decode: left out"
            );
            None
        }
    }
}

/// Where a listing starts: the scope's prefix, after the checkpoint's key.
#[derive(Debug, Clone)]
pub(crate) struct Start {
    pub(crate) bucket: String,
    pub(crate) prefix: String,
    pub(crate) after: Option<String>,
    pub(crate) page_keys: i32,
}

/// ListObjectsV2: each key once, with its current ETag.
pub(crate) struct Objects {
    s3: aws_sdk_s3::Client,
    start: Start,
    token: Option<String>,
    done: bool,
}

impl Objects {
    pub(crate) fn new(s3: aws_sdk_s3::Client, start: Start) -> Self {
        Self {
            s3,
            start,
            token: None,
            done: false,
        }
    }

    pub(crate) async fn next_page(&mut self) -> Result<Option<Page>, Failure> {
        while !self.done {
            // The next page: where the last one ended, else where the run starts.
            let start_after = match &self.token {
                Some(_) => None,
                None => self.start.after.clone(),
            };
            let answer = page_of!(self.s3.list_objects_v2(), self.start)
                .set_continuation_token(self.token.clone())
                .set_start_after(start_after)
                .send()
                .await
                .map_err(|e| aws::classify(Dependency::S3, e))?;
            let encoding = answer.encoding_type();
            let entries: Vec<Listed> = answer
                .contents()
                .iter()
                .filter_map(|o| {
                    Some(Listed {
                        key: key_of(o.key(), encoding)?,
                        etag: o.e_tag().map(unquote_etag).filter(|e| !e.is_empty())?,
                        version_id: None,
                        size: o.size().and_then(|s| u64::try_from(s).ok()),
                    })
                })
                .collect();
            let truncated = answer.is_truncated() == Some(true);
            self.token = answer.next_continuation_token().map(str::to_owned);
            if !truncated || self.token.is_none() {
                self.done = true;
                return Ok(Some(Page {
                    entries,
                    upto: None,
                }));
            }
            // A truncated page without keys covers nothing yet: ask for the next one.
            if let Some(last) = entries.last() {
                let upto = Some(last.key.clone());
                return Ok(Some(Page { entries, upto }));
            }
        }
        Ok(None)
    }
}

/// ListObjectVersions: every version and delete marker, grouped per key; the current entry of
/// each key decides. A key's entries may span two answers: its entries are held back until the
/// next answer shows the key is complete.
pub(crate) struct Versions {
    s3: aws_sdk_s3::Client,
    start: Start,
    markers: Option<(String, Option<String>)>,
    held: Held,
    done: bool,
}

/// The entries of the last key of an answer, which the next answer may continue.
#[derive(Default)]
struct Held {
    versions: Vec<ObjectVersion>,
    markers: Vec<DeleteMarkerEntry>,
}

/// Entries of one key held at most, when S3 does not flag the current one: past this the
/// listing is refused rather than held in memory without bound.
const MAX_HELD: usize = 100_000;

impl Held {
    /// The entries of one answer, their keys decoded (an entry whose key does not decode is
    /// left out).
    fn add(&mut self, answer: &ListObjectVersionsOutput) {
        let encoding = answer.encoding_type();
        self.versions
            .extend(answer.versions().iter().filter_map(|v| {
                let key = key_of(v.key(), encoding)?;
                Some(
                    ObjectVersion::builder()
                        .key(key)
                        .set_version_id(v.version_id().map(str::to_owned))
                        .set_e_tag(v.e_tag().map(str::to_owned))
                        .set_is_latest(v.is_latest())
                        .set_size(v.size())
                        .set_last_modified(v.last_modified().copied())
                        .build(),
                )
            }));
        self.markers
            .extend(answer.delete_markers().iter().filter_map(|m| {
                let key = key_of(m.key(), encoding)?;
                Some(
                    DeleteMarkerEntry::builder()
                        .key(key)
                        .set_version_id(m.version_id().map(str::to_owned))
                        .set_is_latest(m.is_latest())
                        .set_last_modified(m.last_modified().copied())
                        .build(),
                )
            }));
    }

    /// Keeps memory bounded for a key with many versions: once S3 has flagged the key's
    /// current entry (`IsLatest`, which S3 always sends), the older entries cannot change what
    /// is current and are dropped.
    fn prune(&mut self) -> Result<(), Failure> {
        let latest = self.versions.iter().any(|v| v.is_latest() == Some(true))
            || self.markers.iter().any(|m| m.is_latest() == Some(true));
        if latest {
            self.versions.retain(|v| v.is_latest() == Some(true));
            self.markers.retain(|m| m.is_latest() == Some(true));
        }
        if self.versions.len() + self.markers.len() > MAX_HELD {
            return Err(Failure::permanent(
                DeadLetterReason::ProcessingFailed,
                format!(
                    "ListObjectVersions sent more than {MAX_HELD} entries of one key without \
                     flagging its current one (IsLatest): reconcile with --listing objects"
                ),
            ));
        }
        Ok(())
    }
}

impl Versions {
    pub(crate) fn new(s3: aws_sdk_s3::Client, start: Start) -> Self {
        Self {
            s3,
            start,
            markers: None,
            held: Held::default(),
            done: false,
        }
    }

    pub(crate) async fn next_page(&mut self) -> Result<Option<Page>, Failure> {
        while !self.done {
            // The next page: after the last key and version seen, else where the run starts.
            let (key_marker, version_marker) = match &self.markers {
                Some((key, version)) => (Some(key.clone()), version.clone()),
                None => (self.start.after.clone(), None),
            };
            let answer = page_of!(self.s3.list_object_versions(), self.start)
                .set_key_marker(key_marker)
                .set_version_id_marker(version_marker)
                .send()
                .await
                .map_err(|e| aws::classify(Dependency::S3, e))?;
            let encoding = answer.encoding_type();
            let mut held = std::mem::take(&mut self.held);
            held.add(&answer);
            let truncated = answer.is_truncated() == Some(true);
            let next_key = key_of(answer.next_key_marker(), encoding);
            if truncated && next_key.is_some() {
                self.markers =
                    next_key.map(|k| (k, answer.next_version_id_marker().map(str::to_owned)));
            } else {
                self.done = true;
            }
            let last_key = if self.done {
                None
            } else {
                last_key(&held).map(str::to_owned)
            };
            let page = group(held, last_key.as_deref(), &mut self.held);
            self.held.prune()?;
            if self.done || !page.entries.is_empty() || page.upto.is_some() {
                return Ok(Some(page));
            }
        }
        Ok(None)
    }
}

/// The greatest key among the entries: the one the next answer may continue.
fn last_key(held: &Held) -> Option<&str> {
    held.versions
        .iter()
        .filter_map(ObjectVersion::key)
        .chain(held.markers.iter().filter_map(DeleteMarkerEntry::key))
        .max()
}

/// Groups entries per key and decides each key's current version; the entries of `hold_back`
/// (the last key, when more may follow) go back into `held` instead.
fn group(entries: Held, hold_back: Option<&str>, held: &mut Held) -> Page {
    let mut keys: Vec<&str> = entries
        .versions
        .iter()
        .filter_map(ObjectVersion::key)
        .chain(entries.markers.iter().filter_map(DeleteMarkerEntry::key))
        .filter(|k| Some(*k) != hold_back)
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let mut listed = Vec::with_capacity(keys.len());
    for key in &keys {
        if let Current::Version(survivor) =
            Current::from_listing(key, &entries.versions, &entries.markers)
        {
            let size = entries
                .versions
                .iter()
                .find(|v| {
                    v.key() == Some(key)
                        && v.e_tag().map(unquote_etag).as_deref() == Some(survivor.etag.as_str())
                })
                .and_then(|v| v.size())
                .and_then(|s| u64::try_from(s).ok());
            listed.push(Listed {
                key: (*key).to_owned(),
                etag: survivor.etag,
                version_id: survivor.version_id,
                size,
            });
        }
    }
    let upto = if hold_back.is_some() {
        keys.last().map(|k| (*k).to_owned())
    } else {
        None
    };
    if let Some(back) = hold_back {
        held.versions.extend(
            entries
                .versions
                .iter()
                .filter(|v| v.key() == Some(back))
                .cloned(),
        );
        held.markers.extend(
            entries
                .markers
                .iter()
                .filter(|m| m.key() == Some(back))
                .cloned(),
        );
    }
    Page {
        entries: listed,
        upto,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(key: &str, id: &str, etag: &str, latest: bool) -> ObjectVersion {
        ObjectVersion::builder()
            .key(key)
            .version_id(id)
            .e_tag(format!("\"{etag}\""))
            .is_latest(latest)
            .size(5)
            .build()
    }

    fn marker(key: &str, id: &str, latest: bool) -> DeleteMarkerEntry {
        DeleteMarkerEntry::builder()
            .key(key)
            .version_id(id)
            .is_latest(latest)
            .build()
    }

    fn listed(key: &str) -> Listed {
        Listed {
            key: key.into(),
            etag: "e".into(),
            version_id: None,
            size: None,
        }
    }

    #[test]
    fn keys_with_a_nul_are_set_aside_and_the_range_ends_before_it() {
        let page = Page {
            entries: vec![listed("dp/a"), listed("dp/b\0x"), listed("dp/c\0")],
            upto: Some("dp/c\0".into()),
        };
        let (page, unstorable) = page.storable();
        assert_eq!(page.entries, vec![listed("dp/a")]);
        assert_eq!(page.upto.as_deref(), Some("dp/c"));
        assert_eq!(unstorable, ["dp/b\0x", "dp/c\0"]);
    }

    #[test]
    fn keys_are_decoded_only_when_the_answer_says_they_were_encoded() {
        let url = Some(&EncodingType::Url);
        assert_eq!(
            key_of(Some("dp/a%01b+c%2B.txt"), url).unwrap(),
            "dp/a\u{1}b c+.txt"
        );
        assert_eq!(
            key_of(Some("dp/a+b%2B.txt"), None).unwrap(),
            "dp/a+b%2B.txt"
        );
        assert_eq!(key_of(Some("dp/%FF"), url), None);
    }

    #[test]
    fn held_versions_of_one_key_are_pruned_to_the_current_one() {
        let mut held = Held {
            versions: (0..10)
                .map(|i| version("dp/a", &format!("v{i}"), "e", i == 3))
                .collect(),
            markers: vec![marker("dp/a", "m", false)],
        };
        held.prune().unwrap();
        assert_eq!(held.versions.len(), 1);
        assert!(held.markers.is_empty());
    }

    #[test]
    fn a_key_split_across_answers_is_held_back_whole() {
        let answer = Held {
            versions: vec![
                version("dp/a", "a2", "ea2", true),
                version("dp/a", "a1", "ea1", false),
                version("dp/b", "b2", "eb2", false),
            ],
            markers: vec![marker("dp/b", "m1", true)],
        };
        let mut held = Held::default();
        let page = group(answer, Some("dp/c"), &mut held);
        assert_eq!(page.upto.as_deref(), Some("dp/b"));
        assert_eq!(page.entries.len(), 1, "dp/b is hidden by its marker");
        assert_eq!(page.entries[0].key, "dp/a");
        assert_eq!(page.entries[0].etag, "ea2");
        assert_eq!(page.entries[0].version_id.as_deref(), Some("a2"));
        assert_eq!(page.entries[0].size, Some(5));
        assert!(held.versions.is_empty(), "dp/c had no entries yet");
    }

    #[test]
    fn held_entries_join_the_next_answer() {
        let mut held = Held::default();
        let first = Held {
            versions: vec![
                version("dp/a", "a1", "ea1", true),
                version("dp/b", "b1", "eb1", false),
            ],
            markers: vec![],
        };
        let page = group(first, Some("dp/b"), &mut held);
        assert_eq!(page.entries.len(), 1);
        assert_eq!(held.versions.len(), 1, "dp/b is held back");
        let mut next = std::mem::take(&mut held);
        next.versions.push(version("dp/b", "b2", "eb2", true));
        let page = group(next, None, &mut held);
        assert_eq!(page.upto, None);
        assert_eq!(page.entries[0].key, "dp/b");
        assert_eq!(page.entries[0].etag, "eb2");
    }
}
