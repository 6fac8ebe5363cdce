//! One difference repaired: S3 is asked what the key shows now before any row changes, and the
//! key's rows converge to that answer through the pipeline queue messages take.
//!
//! A listing is a picture of the past: seconds old for a listing page, a day or more for an S3
//! Inventory report, and a live row may have been written since by an event that knows better.
//! So no repair trusts the listing alone: each asks S3 (HeadObject, no version: the current
//! version or nothing) and [`plan`]s from the answer. When S3 still shows the listed version,
//! that version is recorded, stamped with the time of the listing (an inventory's
//! `creationTimestamp`; a listing page's, the moment of asking), so anything S3 announced after
//! the listing still wins. When S3 shows something else, the listing is out of date for the key:
//! what S3 shows now is recorded instead, stamped with the moment of asking, as a notification
//! of it would be. Retries of S3 and of the pipeline follow one policy ([`delays`]).

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::disposition::{Failure, Outcome};
use crate::process::event::{EventKind, Item, ObjectEvent};
use crate::process::pipeline::{Pipeline, Verdict};
use crate::process::versions::{self, Current};
use crate::store::reconcile::live::LiveRow;

use super::compare::Drift;
use super::listing::Listed;
use super::report::{Kind, Made};

/// Attempts a repair (or a listing request) gets within one run before it counts as failed; the
/// next run tries it again.
const ATTEMPTS: usize = 3;

/// The waits between attempts: 0.5 s, then 2 s (with jitter), then no more.
pub(crate) fn delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_factor(4.0)
        .with_jitter()
        .with_max_times(ATTEMPTS - 1)
        .build()
}

/// Waits for the next attempt; false when there is none left or the run is stopping.
pub(crate) async fn pause(
    delays: &mut impl Iterator<Item = Duration>,
    shutdown: &CancellationToken,
) -> bool {
    if shutdown.is_cancelled() {
        return false;
    }
    let Some(delay) = delays.next() else {
        return false;
    };
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = shutdown.cancelled() => false,
    }
}

/// What each repair needs.
pub(crate) struct Work {
    pub(crate) pipeline: Pipeline,
    pub(crate) s3: aws_sdk_s3::Client,
    pub(crate) bucket: String,
    pub(crate) dry_run: bool,
    pub(crate) shutdown: CancellationToken,
    /// When the listing was taken, for a source older than the run (an inventory report): the
    /// latest time a repair of what it lists may carry. `None`: the listing is read as the run
    /// goes.
    pub(crate) listed_at: Option<DateTime<Utc>>,
}

/// What one repair came to.
pub(crate) struct Repaired {
    pub(crate) key: String,
    /// The difference it turned out to be; `None`: S3 agrees with the rows after all.
    pub(crate) kind: Option<Kind>,
    pub(crate) made: Made,
}

/// What to do for a key, once S3 has said what it shows now.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// S3 and the live rows agree after all: nothing to repair.
    Agrees,
    /// Record this version. `as_listed`: it is the version the listing showed (stamped with the
    /// listing's time); otherwise what S3 showed when asked (stamped with the time of asking).
    Ingest {
        listed: Listed,
        kind: Kind,
        as_listed: bool,
    },
    /// Nothing in S3, rows live: retire them.
    Remove,
}

/// The repair for `key`, from what the listing showed (`None`: nothing), its live `rows` and
/// what S3 shows now.
fn plan(key: &str, listed: Option<&Listed>, rows: &[LiveRow], now: Current) -> Plan {
    let now = match now {
        Current::Nothing if rows.is_empty() => return Plan::Agrees,
        Current::Nothing => return Plan::Remove,
        Current::Version(now) => now,
    };
    if let [row] = rows
        && row.etag == now.etag
    {
        return Plan::Agrees;
    }
    let kind = if rows.is_empty() {
        Kind::Missing
    } else {
        Kind::Changed
    };
    match listed {
        Some(listed)
            if listed.etag == now.etag
                && (listed.version_id.is_none()
                    || now.version_id.is_none()
                    || listed.version_id == now.version_id) =>
        {
            Plan::Ingest {
                listed: listed.clone(),
                kind,
                as_listed: true,
            }
        }
        _ => Plan::Ingest {
            listed: Listed {
                key: key.to_owned(),
                etag: now.etag,
                version_id: now.version_id,
                size: None,
            },
            kind,
            as_listed: false,
        },
    }
}

/// Repairs one difference (in a dry run: only confirms it with S3).
pub(crate) async fn repair(work: Arc<Work>, drift: Drift) -> Repaired {
    let (key, listed, rows, found) = match drift {
        Drift::Missing(listed) => (listed.key.clone(), Some(listed), Vec::new(), Kind::Missing),
        Drift::Changed { listed, rows } => (listed.key.clone(), Some(listed), rows, Kind::Changed),
        Drift::Gone { key, rows } => (key, None, rows, Kind::Gone),
    };
    // Stamped before asking, so a change S3 announces after the answer still wins.
    let observed = Utc::now();
    let now = match current(&work, &key).await {
        Ok(now) => now,
        Err(failure) => {
            return Repaired {
                made: Made::Failed(not_made(&key, &failure)),
                kind: Some(found),
                key,
            };
        }
    };
    let (kind, event) = match plan(&key, listed.as_ref(), &rows, now) {
        Plan::Agrees => {
            return Repaired {
                key,
                kind: None,
                made: Made::Nothing,
            };
        }
        Plan::Ingest {
            listed,
            kind,
            as_listed,
        } => {
            let stamp = match work.listed_at {
                Some(listed_at) if as_listed => listed_at.min(observed),
                _ => observed,
            };
            (kind, created(&work.bucket, listed, kind, stamp))
        }
        Plan::Remove => (Kind::Gone, removed(&work.bucket, &key, observed)),
    };
    let made = if work.dry_run {
        Made::Nothing
    } else {
        settle(&work, Item::Object(event)).await
    };
    Repaired {
        key,
        kind: Some(kind),
        made,
    }
}

/// What S3 shows for `key` now, retrying a transient failure.
async fn current(work: &Work, key: &str) -> Result<Current, Failure> {
    let mut delays = delays();
    loop {
        let answer = versions::current(&work.s3, &work.bucket, key).await;
        if matches!(answer, Err(Failure::Transient { .. }))
            && pause(&mut delays, &work.shutdown).await
        {
            continue;
        }
        return answer;
    }
}

/// The listed version as if S3 had announced it at `stamp`: the read is pinned to its ETag (and
/// version), so an object changed or deleted since is not recorded.
fn created(bucket: &str, listed: Listed, kind: Kind, stamp: DateTime<Utc>) -> ObjectEvent {
    ObjectEvent {
        kind: EventKind::Created,
        event_name: format!("Reconcile:{}", kind.as_str()),
        bucket: bucket.to_owned(),
        key: listed.key,
        etag: Some(listed.etag),
        size: listed.size,
        version_id: listed.version_id,
        sequencer: None,
        event_time: stamp,
    }
}

fn removed(bucket: &str, key: &str, stamp: DateTime<Utc>) -> ObjectEvent {
    ObjectEvent {
        kind: EventKind::Removed,
        event_name: "Reconcile:gone".into(),
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        etag: None,
        size: None,
        version_id: None,
        sequencer: None,
        event_time: stamp,
    }
}

/// Runs one event through the pipeline, retrying a transient failure.
async fn settle(work: &Work, item: Item) -> Made {
    let key = match &item {
        Item::Object(e) => e.key.clone(),
        Item::Unsupported { .. } => String::new(),
    };
    let mut delays = delays();
    loop {
        match work
            .pipeline
            .process_items(std::slice::from_ref(&item))
            .await
        {
            Verdict::Ack(done) => {
                let mut made = Made::Nothing;
                for done in done {
                    made = Made::Done(outcome_label(done.outcome));
                    done.report();
                }
                return made;
            }
            Verdict::DeadLetter { outcomes, failure } => {
                for done in outcomes {
                    done.report();
                }
                return Made::Refused(not_made(&key, &failure));
            }
            Verdict::Retry(failure) => {
                if !pause(&mut delays, &work.shutdown).await {
                    return Made::Failed(not_made(&key, &failure));
                }
            }
        }
    }
}

/// Logs a repair that was not made; its reason code.
fn not_made(key: &str, failure: &Failure) -> &'static str {
    tracing::warn!(
        key = super::report::printable(key),
        reason = failure.reason(),
        error = %crate::disposition::chain(failure),
        "reconcile repair not made"
    );
    failure.reason()
}

fn outcome_label(outcome: Outcome) -> String {
    match outcome.label() {
        ("skipped", reason) => format!("skipped:{reason}"),
        (label, _) => label.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Survivor;

    fn listed(etag: &str, version: Option<&str>) -> Listed {
        Listed {
            key: "dp/k".into(),
            etag: etag.into(),
            version_id: version.map(str::to_owned),
            size: Some(1),
        }
    }

    fn row(etag: &str) -> LiveRow {
        LiveRow {
            etag: etag.into(),
            event_time: Utc::now(),
        }
    }

    fn now(etag: &str, version: Option<&str>) -> Current {
        Current::Version(Survivor {
            etag: etag.into(),
            version_id: version.map(str::to_owned),
        })
    }

    #[test]
    fn a_stale_listing_never_undoes_what_s3_shows_now() {
        // Listed V1, S3 and the row show V2: nothing to do.
        let v1 = listed("e1", Some("v1"));
        assert_eq!(
            plan("dp/k", Some(&v1), &[row("e2")], now("e2", Some("v2"))),
            Plan::Agrees
        );
        // Listed V1, deleted since (a marker): the missing row stays missing.
        assert_eq!(plan("dp/k", Some(&v1), &[], Current::Nothing), Plan::Agrees);
        // Listed V1, S3 shows V2, the row is V0: S3's answer is recorded, not the listing's.
        assert_eq!(
            plan("dp/k", Some(&v1), &[row("e0")], now("e2", Some("v2"))),
            Plan::Ingest {
                listed: Listed {
                    key: "dp/k".into(),
                    etag: "e2".into(),
                    version_id: Some("v2".into()),
                    size: None
                },
                kind: Kind::Changed,
                as_listed: false
            }
        );
    }

    #[test]
    fn a_listing_s3_confirms_is_recorded_as_listed() {
        let v1 = listed("e1", Some("v1"));
        assert_eq!(
            plan("dp/k", Some(&v1), &[], now("e1", Some("v1"))),
            Plan::Ingest {
                listed: v1.clone(),
                kind: Kind::Missing,
                as_listed: true
            }
        );
        let plain = listed("e1", None);
        assert!(matches!(
            plan("dp/k", Some(&plain), &[row("e0")], now("e1", None)),
            Plan::Ingest {
                kind: Kind::Changed,
                as_listed: true,
                ..
            }
        ));
        assert_eq!(
            plan("dp/k", None, &[row("e0")], Current::Nothing),
            Plan::Remove
        );
    }

    #[test]
    fn retries_wait_a_little_then_give_up() {
        let waits: Vec<Duration> = delays().collect();
        assert_eq!(waits.len(), ATTEMPTS - 1);
        assert!(waits[0] >= Duration::from_millis(500));
        assert!(waits[1] >= Duration::from_secs(2));
    }
}
