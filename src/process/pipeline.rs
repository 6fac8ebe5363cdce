//! One message, start to verdict: parse, fetch and hash each announced object, write, decide.
//!
//! The pipeline never touches the queue; it returns a [`Verdict`] and the worker settles it. That
//! keeps the rule "delete only after commit" in one place and lets tests drive one message.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tracing::{Instrument, Span};

use crate::disposition::{DeadLetterReason, Dependency, Failure, Outcome, RetryReason, SkipReason};
use crate::ops::health::Health;
use crate::process::event::{self, EventKind, Item, Message, ObjectEvent};
use crate::process::fetch::{self, Fetched, Target};
use crate::process::key;
use crate::process::versions;
use crate::store::writer::Writer;
use crate::store::{NewResource, Sha256Source, Write, WriteOutcome};

#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Buckets this worker serves; events for others are skipped. Empty: serve any.
    pub buckets: Vec<String>,
    /// Required `uploaded-by` metadata value; `None` records every upload.
    pub required_uploaded_by: Option<String>,
    /// When and how large objects are read as parallel ranged GETs.
    pub ranged: fetch::Ranged,
    /// Whether S3's stored SHA-256 may stand for the bytes (zero-read), and the audit sample.
    pub checksums: fetch::Checksums,
}

#[derive(Clone)]
pub struct Pipeline {
    pub s3: aws_sdk_s3::Client,
    pub writer: Writer,
    pub settings: PipelineSettings,
    /// Told the outcome of every fetch, for the S3 breaker.
    pub health: Health,
    /// Objects the S3 probe reads in depth when the breaker trips.
    pub canary: Arc<crate::process::canary::Canary>,
}

/// What to do with a message once processing ends.
#[derive(Debug)]
pub enum Verdict {
    /// Everything it announced is committed or skipped on purpose: delete it.
    Ack(Vec<Done>),
    /// It can never succeed: the good records are committed, the message goes to the DLQ.
    DeadLetter {
        outcomes: Vec<Done>,
        failure: Failure,
    },
    /// Try again later (after a backoff), or at once if a dependency is down.
    Retry(Failure),
}

/// One record's outcome and its `record` span: the outcome is reported only once the message is
/// settled, and that line must name the object like every line logged while it was worked on.
#[derive(Debug)]
pub struct Done {
    pub outcome: Outcome,
    pub(crate) span: Span,
}

impl Done {
    /// Logs (`record done`) and counts the outcome inside the record's span.
    pub(crate) fn report(self) {
        let Done { outcome, span } = self;
        span.in_scope(|| crate::ops::metrics::record_outcome(outcome));
    }
}

impl Pipeline {
    /// One message body → its verdict. The body is all the pipeline needs: receipt, receive
    /// count and timestamps stay with the intake, which settles the verdict.
    pub async fn process(&self, body: &str) -> Verdict {
        let items = match event::parse_noting(body).map(|parsed| {
            for problem in parsed.unusable_sequencers {
                crate::ops::metrics::sequencer_unusable(problem.as_str());
            }
            parsed.message
        }) {
            Ok(Message::Test) => {
                return Verdict::Ack(vec![Done {
                    outcome: Outcome::Skipped(SkipReason::TestEvent),
                    span: Span::none(),
                }]);
            }
            Ok(Message::Events(items)) => items,
            Err(e) => {
                return Verdict::DeadLetter {
                    outcomes: Vec::new(),
                    failure: Failure::permanent(e.reason, e.detail),
                };
            }
        };
        crate::ops::metrics::records_per_message(items.len());
        self.process_items(&items).await
    }

    /// Records already parsed → the verdict: what a message's body comes to, and what `reconcile`
    /// hands over for each difference it finds, so both take the same fetch, filters and write.
    pub(crate) async fn process_items(&self, items: &[Item]) -> Verdict {
        let mut tally = Tally::default();
        for item in items {
            let span = record_span(item);
            let prepared = self.prepare(item).instrument(span.clone()).await;
            if let ControlFlow::Break(verdict) = tally.take(item, span, prepared) {
                return verdict;
            }
        }
        let committed = self.commit(&mut tally).await;
        tally.conclude(committed)
    }

    /// Writes the message's writes in one group commit and adds what became of each.
    async fn commit(&self, tally: &mut Tally<'_>) -> Result<(), Failure> {
        if tally.writes.is_empty() {
            return Ok(());
        }
        let (writes, origins): (Vec<_>, Vec<_>) = std::mem::take(&mut tally.writes)
            .into_iter()
            .map(|(write, item, span)| {
                let at = event_time(&write);
                (write, (at, item, span))
            })
            .unzip();
        let written = self.write_settling_ties(writes).await?;
        let now = Utc::now();
        for (result, (at, item, span)) in written.into_iter().zip(origins) {
            let outcome = match result {
                WriteOutcome::Recorded => Outcome::Recorded,
                WriteOutcome::Duplicate => Outcome::Duplicate,
                WriteOutcome::Removed => Outcome::Removed,
                WriteOutcome::Stale => Outcome::Stale,
                // `write_settling_ties` answers none: it settles each with S3.
                WriteOutcome::Tie => Outcome::Stale,
                WriteOutcome::UnknownDatapack => {
                    tally.refuse(
                        item,
                        Failure::permanent(
                            DeadLetterReason::UnknownDatapack,
                            "no datapack row has this identifier (create it, then redrive)",
                        ),
                    );
                    continue;
                }
            };
            if matches!(outcome, Outcome::Recorded | Outcome::Removed) {
                crate::ops::metrics::event_to_commit((now - at).to_std().unwrap_or_default());
            }
            tally.outcomes.push(Done { outcome, span });
        }
        Ok(())
    }

    /// Writes, then settles the writes that tied with a different object of their key at the
    /// same position (sequencer and event time): S3 is asked which object the key shows now
    /// (one HeadObject per tie, none otherwise) and each is written again with that answer.
    async fn write_settling_ties(&self, writes: Vec<Write>) -> Result<Vec<WriteOutcome>, Failure> {
        let kept = writes.clone();
        let mut outcomes = self.writer.write(writes).await?;
        // The writer answers one outcome per write, in order.
        let tied: Vec<usize> = (0..outcomes.len().min(kept.len()))
            .filter(|&i| outcomes[i] == WriteOutcome::Tie)
            .collect();
        if tied.is_empty() {
            return Ok(outcomes);
        }
        let mut decided = Vec::with_capacity(tied.len());
        for &i in &tied {
            let write = &kept[i];
            let (bucket, key) = match write {
                Write::Resource(r) => (&r.bucket, &r.object_key),
                Write::Removal(r) => (&r.bucket, &r.object_key),
            };
            let current = self.current(bucket, key).await?;
            let tiebreak = versions::tiebreak(write, &current);
            crate::ops::metrics::order_tie(tiebreak.as_str());
            tracing::info!(
                ?tiebreak,
                "two objects tied on sequencer and event time: S3's current one wins"
            );
            let mut write = write.clone();
            write.set_tiebreak(tiebreak);
            decided.push(write);
        }
        let again = self.writer.write(decided).await?;
        for (i, outcome) in tied.into_iter().zip(again) {
            if outcome == WriteOutcome::Tie {
                return Err(Failure::transient(
                    RetryReason::DatabaseError,
                    "a write settled by S3 was answered as a tie again",
                ));
            }
            if let Some(slot) = outcomes.get_mut(i) {
                *slot = outcome;
            }
        }
        Ok(outcomes)
    }

    /// What S3 shows for `key` now (HeadObject, no version), feeding the S3 breaker as a fetch does.
    async fn current(&self, bucket: &str, key: &str) -> Result<versions::Current, Failure> {
        let asked = versions::current(&self.s3, bucket, key).await;
        match &asked {
            Ok(_) => self.health.observe(Dependency::S3, key, true),
            Err(failure) if failure.dependency() == Some(Dependency::S3) => {
                self.health.observe(Dependency::S3, key, false)
            }
            Err(_) => {}
        }
        asked.map_err(|failure| failure.about(bucket, key))
    }

    async fn prepare(&self, item: &Item) -> Result<Prepared, Failure> {
        let event = match item {
            Item::Unsupported { event_name } => {
                tracing::debug!(event_name, "ignoring an S3 event type we do not ingest");
                return Ok(Prepared::Done(Outcome::Skipped(
                    SkipReason::UnsupportedEvent,
                )));
            }
            Item::Object(event) => event,
        };
        self.prepare_object(event)
            .await
            .map_err(|failure| failure.about(&event.bucket, &event.key))
    }

    async fn prepare_object(&self, event: &ObjectEvent) -> Result<Prepared, Failure> {
        if !self.settings.buckets.is_empty() && !self.settings.buckets.contains(&event.bucket) {
            return Ok(Prepared::Done(Outcome::Skipped(SkipReason::ForeignBucket)));
        }
        match event.kind {
            EventKind::Removed | EventKind::DeleteMarkerCreated => self.removed(event).await,
            EventKind::Created => self.created(event).await,
        }
    }

    /// Reads the announced version (or S3's trusted checksum of it), and tells the S3 breaker
    /// and the canary how it went.
    async fn fetch(&self, target: &Target<'_>) -> Result<Fetched, Failure> {
        let started = Instant::now();
        let fetched = fetch::read(
            &self.s3,
            *target,
            self.settings.required_uploaded_by.as_deref(),
            &self.settings.ranged,
            &self.settings.checksums,
        )
        .await;
        crate::ops::metrics::phase("fetch_hash", started.elapsed());
        // Every answer from S3 feeds the breaker: a 404 or 412 shows reads work as well as the
        // bytes do. Refusals built from the message itself say nothing about S3.
        match &fetched {
            Ok(_) => {
                self.canary.read_ok(target);
                self.health.observe(Dependency::S3, target.key, true);
            }
            Err(failure) if failure.dependency() == Some(Dependency::S3) => {
                self.canary.read_failed(target);
                self.health.observe(Dependency::S3, target.key, false);
            }
            Err(_) => {}
        }
        fetched
    }

    async fn created(&self, event: &ObjectEvent) -> Result<Prepared, Failure> {
        let place = match key::split(&event.key) {
            Ok(place) => place,
            Err(refusal) => return Result::<Outcome, Failure>::from(refusal).map(Prepared::Done),
        };
        let target = Target {
            bucket: &event.bucket,
            key: &event.key,
            etag: event.etag.as_deref(),
            version_id: event.version_id.as_deref(),
            size: event.size,
        };
        let fetched = self.fetch(&target).await;
        let facts = match fetched? {
            Fetched::Object(facts) => facts,
            Fetched::NotPresigned => {
                return Ok(Prepared::Done(Outcome::Skipped(SkipReason::NotPresigned)));
            }
            Fetched::Gone => return Ok(Prepared::Done(Outcome::ObjectGone)),
            Fetched::Superseded => return Ok(Prepared::Done(Outcome::Superseded)),
        };
        // The size histogram counts hashed objects only, so its sum stays the hashed bytes.
        if facts.sha256_source == Sha256Source::Computed {
            crate::ops::metrics::object_size(facts.length);
        }
        Ok(Prepared::Write(Write::Resource(NewResource {
            bucket: event.bucket.clone(),
            object_key: event.key.clone(),
            datapack: place.datapack,
            path: place.path,
            display: place.display,
            content_type: facts.content_type,
            length: i64::try_from(facts.length).unwrap_or(i64::MAX),
            etag: facts.etag,
            sha256: facts.sha256,
            sha256_source: facts.sha256_source,
            submitter_name: facts.uploader.name,
            submitter_email: facts.uploader.email,
            object_last_modified: facts.last_modified,
            version_id: facts.version_id,
            sequencer: event.sequencer.clone(),
            event_time: event.event_time,
            tiebreak: None,
        })))
    }
}

impl Pipeline {
    /// A removal. A plain delete (no version) and a delete marker hide the key as of the event,
    /// with no request. The permanent deletion of one version (the event names it: an old
    /// version, a delete marker, a noncurrent version's expiry) leaves whatever version S3 now
    /// shows, which the event does not say: S3 is asked, and the key converges to its answer.
    async fn removed(&self, event: &ObjectEvent) -> Result<Prepared, Failure> {
        let current = match (event.kind, &event.version_id) {
            (EventKind::Removed, Some(_)) => self.current(&event.bucket, &event.key).await?,
            _ => versions::Current::Nothing,
        };
        Ok(Prepared::Write(Write::Removal(versions::converge(
            &event.bucket,
            &event.key,
            current,
            event.version_id.as_deref(),
            event.sequencer.as_deref(),
            event.event_time,
        ))))
    }
}

#[allow(clippy::large_enum_variant)] // short-lived, moved once
enum Prepared {
    Done(Outcome),
    Write(Write),
}

/// What a message's records came to so far: settled outcomes, writes still to commit (with the
/// item and span each came from), and the first refusal, which dead-letters the message.
#[derive(Default)]
struct Tally<'a> {
    outcomes: Vec<Done>,
    writes: Vec<(Write, &'a Item, Span)>,
    refused: Option<Failure>,
}

impl<'a> Tally<'a> {
    /// Adds what preparing one record came to; `Break` with the verdict when it settles the
    /// whole message: a failure that may pass (nothing later in the message can change a retry).
    fn take(
        &mut self,
        item: &'a Item,
        span: Span,
        prepared: Result<Prepared, Failure>,
    ) -> ControlFlow<Verdict> {
        match prepared {
            Ok(Prepared::Done(outcome)) => self.outcomes.push(Done { outcome, span }),
            Ok(Prepared::Write(write)) => self.writes.push((write, item, span)),
            Err(failure @ Failure::Permanent { .. }) => self.refuse(item, failure),
            Err(failure) => {
                blame(item);
                return ControlFlow::Break(Verdict::Retry(failure));
            }
        }
        ControlFlow::Continue(())
    }

    /// A record that can never succeed: the message is dead-lettered for the first one, named
    /// in the message span, once the rest is done.
    fn refuse(&mut self, item: &Item, failure: Failure) {
        if self.refused.is_none() {
            blame(item);
            self.refused = Some(failure);
        }
    }

    /// The verdict once the writes were committed, or not: a commit that can never succeed
    /// dead-letters the message, one that may yet succeed retries it; after a commit, the first
    /// refused record dead-letters it, with every other record's outcome kept.
    fn conclude(self, committed: Result<(), Failure>) -> Verdict {
        match (committed, self.refused) {
            (Err(failure @ Failure::Permanent { .. }), _) | (Ok(()), Some(failure)) => {
                Verdict::DeadLetter {
                    outcomes: self.outcomes,
                    failure,
                }
            }
            (Err(failure), _) => Verdict::Retry(failure),
            (Ok(()), None) => Verdict::Ack(self.outcomes),
        }
    }
}

/// The `record` span of one item. ERROR level, like the `message` span, so that a filter that
/// keeps only warnings still shows which object and message each line is about.
fn record_span(item: &Item) -> Span {
    match item {
        Item::Object(e) => {
            tracing::error_span!("record", bucket = %e.bucket, key = %e.key, etag = e.etag.as_deref().unwrap_or(""))
        }
        Item::Unsupported { event_name } => tracing::error_span!("record", event_name),
    }
}

/// Names the object a message fails on in the `message` span (its fields start empty): the
/// failure is logged once the message is settled, outside any `record` span.
fn blame(item: &Item) {
    if let Item::Object(e) = item {
        Span::current()
            .record("bucket", e.bucket.as_str())
            .record("key", e.key.as_str())
            .record("etag", e.etag.as_deref().unwrap_or(""));
    }
}

fn event_time(write: &Write) -> chrono::DateTime<Utc> {
    match write {
        Write::Resource(r) => r.event_time,
        Write::Removal(r) => r.event_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsupported(name: &str) -> Item {
        Item::Unsupported {
            event_name: name.into(),
        }
    }

    fn done(outcome: Outcome) -> Result<Prepared, Failure> {
        Ok(Prepared::Done(outcome))
    }

    fn refused(detail: &str) -> Result<Prepared, Failure> {
        Err(Failure::permanent(DeadLetterReason::InvalidKey, detail))
    }

    fn passing() -> Failure {
        Failure::transient(RetryReason::S3Unavailable, "S3 did not answer")
    }

    fn outcomes(verdict: &Verdict) -> Vec<Outcome> {
        match verdict {
            Verdict::Ack(done) | Verdict::DeadLetter { outcomes: done, .. } => {
                done.iter().map(|d| d.outcome).collect()
            }
            Verdict::Retry(_) => Vec::new(),
        }
    }

    #[test]
    fn records_that_all_end_well_ack_the_message_with_their_outcomes_in_order() {
        let (a, b) = (unsupported("a"), unsupported("b"));
        let mut tally = Tally::default();
        assert!(
            tally
                .take(&a, Span::none(), done(Outcome::Duplicate))
                .is_continue()
        );
        assert!(
            tally
                .take(&b, Span::none(), done(Outcome::Stale))
                .is_continue()
        );
        let verdict = tally.conclude(Ok(()));
        assert!(matches!(verdict, Verdict::Ack(_)));
        assert_eq!(outcomes(&verdict), [Outcome::Duplicate, Outcome::Stale]);
    }

    #[test]
    fn the_first_refused_record_dead_letters_the_message_and_the_others_keep_their_outcomes() {
        let items = [unsupported("a"), unsupported("b"), unsupported("c")];
        let mut tally = Tally::default();
        assert!(
            tally
                .take(&items[0], Span::none(), refused("first"))
                .is_continue()
        );
        assert!(
            tally
                .take(&items[1], Span::none(), done(Outcome::Removed))
                .is_continue()
        );
        assert!(
            tally
                .take(&items[2], Span::none(), refused("second"))
                .is_continue()
        );
        let verdict = tally.conclude(Ok(()));
        let Verdict::DeadLetter { failure, .. } = &verdict else {
            panic!("{verdict:?}");
        };
        assert!(failure.to_string().contains("first"), "{failure}");
        assert_eq!(outcomes(&verdict), [Outcome::Removed]);
    }

    #[test]
    fn a_failure_that_may_pass_retries_the_message_at_once() {
        let (a, b) = (unsupported("a"), unsupported("b"));
        let mut tally = Tally::default();
        assert!(tally.take(&a, Span::none(), refused("bad")).is_continue());
        let ControlFlow::Break(verdict) = tally.take(&b, Span::none(), Err(passing())) else {
            panic!("a retry ends the message's work");
        };
        assert!(matches!(verdict, Verdict::Retry(_)), "{verdict:?}");
    }

    #[test]
    fn a_commit_that_fails_retries_or_dead_letters_by_what_the_failure_is() {
        let a = unsupported("a");
        let with_one = || {
            let mut tally = Tally::default();
            let _ = tally.take(&a, Span::none(), done(Outcome::Duplicate));
            tally
        };
        assert!(matches!(
            with_one().conclude(Err(passing())),
            Verdict::Retry(_)
        ));
        let verdict = with_one().conclude(Err(Failure::permanent(
            DeadLetterReason::UnknownDatapack,
            "no datapack dp-9",
        )));
        assert!(matches!(verdict, Verdict::DeadLetter { .. }), "{verdict:?}");
        assert_eq!(outcomes(&verdict), [Outcome::Duplicate]);
    }
}
