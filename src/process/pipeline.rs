//! One message, start to verdict: parse, fetch and hash each announced object, write, decide.
//!
//! The pipeline never touches the queue; it returns a [`Verdict`] and the worker settles it. That
//! keeps the rule "delete only after commit" in one place and lets tests drive one message.

use std::time::Instant;

use std::sync::Arc;

use chrono::Utc;
use tracing::Instrument;

use crate::disposition::{DeadLetterReason, Dependency, Failure, Outcome, SkipReason};
use crate::ops::health::Health;
use crate::process::event::{self, EventKind, Item, Message, ObjectEvent};
use crate::process::fetch::{self, Fetched, Target};
use crate::process::key;
use crate::store::writer::Writer;
use crate::store::{NewResource, Removal, Sha256Source, Write, WriteOutcome};

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
    Ack(Vec<Outcome>),
    /// It can never succeed: the good records are committed, the message goes to the DLQ.
    DeadLetter {
        outcomes: Vec<Outcome>,
        failure: Failure,
    },
    /// Try again later (after a backoff), or at once if a dependency is down.
    Retry(Failure),
}

impl Pipeline {
    /// One message body → its verdict. The body is all the pipeline needs: receipt, receive
    /// count and timestamps stay with the intake, which settles the verdict.
    pub async fn process(&self, body: &str) -> Verdict {
        let items = match event::parse(body) {
            Ok(Message::Test) => {
                return Verdict::Ack(vec![Outcome::Skipped(SkipReason::TestEvent)]);
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

        let mut outcomes = Vec::with_capacity(items.len());
        let mut writes = Vec::new();
        let mut permanent: Option<Failure> = None;
        for item in &items {
            match self.prepare(item).await {
                Ok(Prepared::Done(outcome)) => outcomes.push(outcome),
                Ok(Prepared::Write(write)) => writes.push(write),
                Err(failure @ Failure::Permanent { .. }) => {
                    permanent.get_or_insert(failure);
                }
                // Nothing later in this message can change a retry: stop here.
                Err(failure) => return Verdict::Retry(failure),
            }
        }

        if !writes.is_empty() {
            let event_times: Vec<_> = writes.iter().map(event_time).collect();
            let written = match self.writer.write(writes).await {
                Ok(written) => written,
                Err(failure @ Failure::Permanent { .. }) => {
                    return Verdict::DeadLetter { outcomes, failure };
                }
                Err(failure) => return Verdict::Retry(failure),
            };
            let now = Utc::now();
            for (result, at) in written.into_iter().zip(event_times) {
                let outcome = match result {
                    WriteOutcome::Recorded => Outcome::Recorded,
                    WriteOutcome::Duplicate => Outcome::Duplicate,
                    WriteOutcome::Removed => Outcome::Removed,
                    WriteOutcome::Stale => Outcome::Stale,
                    WriteOutcome::UnknownDatapack => {
                        permanent.get_or_insert(Failure::permanent(
                            DeadLetterReason::UnknownDatapack,
                            "no datapack row has this identifier (create it, then redrive)",
                        ));
                        continue;
                    }
                };
                if matches!(outcome, Outcome::Recorded | Outcome::Removed) {
                    let lag = (now - at).to_std().unwrap_or_default();
                    crate::ops::metrics::event_to_commit(lag);
                }
                outcomes.push(outcome);
            }
        }
        match permanent {
            Some(failure) => Verdict::DeadLetter { outcomes, failure },
            None => Verdict::Ack(outcomes),
        }
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
        let span = tracing::info_span!("record", bucket = %event.bucket, key = %event.key, etag = event.etag.as_deref().unwrap_or(""));
        self.prepare_object(event)
            .instrument(span)
            .await
            .map_err(|failure| failure.about(&event.bucket, &event.key))
    }

    async fn prepare_object(&self, event: &ObjectEvent) -> Result<Prepared, Failure> {
        if !self.settings.buckets.is_empty() && !self.settings.buckets.contains(&event.bucket) {
            return Ok(Prepared::Done(Outcome::Skipped(SkipReason::ForeignBucket)));
        }
        match event.kind {
            EventKind::Removed => Ok(Prepared::Write(Write::Removal(Removal {
                bucket: event.bucket.clone(),
                object_key: event.key.clone(),
                sequencer: event.sequencer.clone(),
                event_time: event.event_time,
            }))),
            EventKind::Created => self.created(event).await,
        }
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
        let started = Instant::now();
        let fetched = fetch::read(
            &self.s3,
            target,
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
                self.canary.read_ok(&target);
                self.health.observe(Dependency::S3, &event.key, true);
            }
            Err(failure) if failure.dependency() == Some(Dependency::S3) => {
                self.canary.read_failed(&target);
                self.health.observe(Dependency::S3, &event.key, false);
            }
            Err(_) => {}
        }
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
        })))
    }
}

#[allow(clippy::large_enum_variant)] // short-lived, moved once
enum Prepared {
    Done(Outcome),
    Write(Write),
}

fn event_time(write: &Write) -> chrono::DateTime<Utc> {
    match write {
        Write::Resource(r) => r.event_time,
        Write::Removal(r) => r.event_time,
    }
}
