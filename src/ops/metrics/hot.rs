//! Handles for the metrics emitted once or more per object, registered once at start-up.
//!
//! `counter!(NAME, "label" => value)` builds a key (a vector of labels, when a value is not a
//! literal), hashes it and looks it up in the recorder's registry under a lock, on every call. For
//! the series every object touches, that is done once here: emitting is then an atomic add (a
//! counter) or a push into the histogram's sample buffer. A label pair the table does not hold
//! (a value added since) falls back to the macro, so nothing is ever dropped.

use std::collections::HashMap;
use std::sync::OnceLock;

use metrics::{Counter, Histogram, counter, histogram};

use crate::disposition::MessageDisposition;

pub(super) struct Hot {
    pub(super) hashed_bytes: Counter,
    pub(super) object_processing: Histogram,
    pub(super) queue_wait: Histogram,
    pub(super) event_to_commit: Histogram,
    pub(super) object_size: Histogram,
    pub(super) records_per_message: Histogram,
    records: HashMap<(&'static str, &'static str), Counter>,
    /// Indexed by `MessageDisposition as usize`: every value has its handle.
    messages: Vec<Counter>,
    phases: Vec<(&'static str, Histogram)>,
}

/// The phases observed per object or per batch (`phase`'s label values).
const PHASES: [&str; 4] = ["fetch_hash", "s3_head", "db_write", "sqs_delete"];

static HOT: OnceLock<Hot> = OnceLock::new();

/// Registers the handles; `records` are the label values `zero` created.
pub(super) fn install(records: impl IntoIterator<Item = (&'static str, &'static str)>) {
    use super::*;
    HOT.get_or_init(|| Hot {
        hashed_bytes: counter!(HASHED_BYTES),
        object_processing: histogram!(OBJECT_PROCESSING),
        queue_wait: histogram!(QUEUE_WAIT),
        event_to_commit: histogram!(EVENT_TO_COMMIT),
        object_size: histogram!(OBJECT_SIZE),
        records_per_message: histogram!(RECORDS_PER_MESSAGE),
        records: records
            .into_iter()
            .map(|(outcome, reason)| {
                let c = counter!(RECORDS, "outcome" => outcome, "reason" => reason);
                ((outcome, reason), c)
            })
            .collect(),
        messages: MessageDisposition::ALL
            .iter()
            .map(|d| counter!(MESSAGES, "disposition" => d.as_str()))
            .collect(),
        phases: PHASES
            .iter()
            .map(|&p| (p, histogram!(PHASE, "phase" => p)))
            .collect(),
    });
}

/// The handles, once installed (before that there is no recorder: emitting is a no-op).
pub(super) fn get() -> Option<&'static Hot> {
    HOT.get()
}

impl Hot {
    pub(super) fn record(&self, outcome: &'static str, reason: &'static str) {
        match self.records.get(&(outcome, reason)) {
            Some(c) => c.increment(1),
            None => counter!(super::RECORDS, "outcome" => outcome, "reason" => reason).increment(1),
        }
    }

    pub(super) fn message(&self, disposition: MessageDisposition) {
        self.messages[disposition as usize].increment(1);
    }

    pub(super) fn phase(&self, name: &'static str, seconds: f64) {
        match self.phases.iter().find(|(p, _)| *p == name) {
            Some((_, h)) => h.record(seconds),
            None => histogram!(super::PHASE, "phase" => name).record(seconds),
        }
    }
}
