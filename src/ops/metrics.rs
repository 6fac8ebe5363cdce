//! Metric names, their help text, and the functions that emit each event's log line and metric
//! together, so the two can never disagree.
//!
//! Labels are low-cardinality by construction: outcomes, reason codes, dependencies, phases,
//! audit results. Never a key, ETag or message id.

use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::disposition::{DeadLetterReason, Dependency, Failure, MessageDisposition, Outcome};

mod aws_requests;
mod hot;
pub(crate) use aws_requests::{AwsOutcome, AwsService, aws_request};

pub(crate) const MESSAGES_RECEIVED: &str = "datapack_worker_messages_received_total";
pub(crate) const MESSAGES: &str = "datapack_worker_messages_total";
pub(crate) const RECORDS: &str = "datapack_worker_records_total";
pub(crate) const DEAD_LETTERS: &str = "datapack_worker_dead_letters_total";
pub(crate) const HASHED_BYTES: &str = "datapack_worker_hashed_bytes_total";
pub(crate) const RECEIVES: &str = "datapack_worker_receives_total";
pub(crate) const EMPTY_RECEIVES: &str = "datapack_worker_empty_receives_total";
pub(crate) const VISIBILITY_EXTENSIONS: &str = "datapack_worker_visibility_extensions_total";
pub(crate) const PAUSED_SECONDS: &str = "datapack_worker_paused_seconds_total";
pub(crate) const DB_COMMITS: &str = "datapack_worker_db_commits_total";
pub(crate) const RECORDS_PER_MESSAGE: &str = "datapack_worker_records_per_message";
pub(crate) const OBJECT_SIZE: &str = "datapack_worker_object_size_bytes";
pub(crate) const OBJECT_PROCESSING: &str = "datapack_worker_object_processing_seconds";
pub(crate) const PHASE: &str = "datapack_worker_phase_seconds";
pub(crate) const EVENT_TO_COMMIT: &str = "datapack_worker_event_to_commit_seconds";
pub(crate) const QUEUE_WAIT: &str = "datapack_worker_queue_wait_seconds";
pub(crate) const DB_BATCH_SIZE: &str = "datapack_worker_db_batch_size";
pub(crate) const IN_FLIGHT: &str = "datapack_worker_in_flight_messages";
pub(crate) const WORKERS_BUSY: &str = "datapack_worker_workers_busy";
pub(crate) const CONCURRENCY: &str = "datapack_worker_worker_concurrency";
pub(crate) const POLLERS_IDLE: &str = "datapack_worker_pollers_idle";
pub(crate) const POLLERS_RECEIVING: &str = "datapack_worker_pollers_receiving";
pub(crate) const DEPENDENCY_UP: &str = "datapack_worker_dependency_up";
pub(crate) const PAUSED: &str = "datapack_worker_paused";
pub(crate) const QUEUE_MESSAGES: &str = "datapack_worker_queue_messages";
pub(crate) const QUEUE_OLDEST_AGE: &str = "datapack_worker_queue_oldest_message_age_seconds";
pub(crate) const BUILD_INFO: &str = "datapack_worker_build_info";
pub(crate) const CHECKSUM_AUDITS: &str = "datapack_worker_checksum_audit_total";
pub(crate) const RECONCILE_KEYS: &str = "datapack_worker_reconcile_keys_listed_total";
pub(crate) const RECONCILE_PAGES: &str = "datapack_worker_reconcile_pages_total";
pub(crate) const RECONCILE_DIFFERENCES: &str = "datapack_worker_reconcile_differences_total";
pub(crate) const SEQUENCER_UNUSABLE: &str = "datapack_worker_sequencer_unusable_total";
pub(crate) const ORDER_TIES: &str = "datapack_worker_order_ties_total";

/// The `reason` values of [`SEQUENCER_UNUSABLE`] (the parser's `SequencerProblem::as_str`).
pub(crate) const SEQUENCER_PROBLEMS: [&str; 4] = ["not_text", "empty", "not_hex", "too_long"];
/// The `result` values of [`ORDER_TIES`].
pub(crate) const TIE_RESULTS: [&str; 2] = ["current", "not_current"];

// Fine below 100 ms (1 ms steps to 5 ms, then 2.5-10 ms), where a healthy worker's latencies
// sit: a p99 of 11 ms and one of 17 ms must not both read as "10-25 ms". Coarse above.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
    0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
const BYTES_BUCKETS: &[f64] = &[
    1024.0,
    16384.0,
    262144.0,
    1048576.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
    5368709120.0,
    17179869184.0,
];
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Installs the process-wide recorder (once) and returns the handle that renders `/metrics`.
pub(crate) fn install() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(RECORDS_PER_MESSAGE.into()),
                        COUNT_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(DB_BATCH_SIZE.into()), COUNT_BUCKETS)
                })
                .expect("bucket lists are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // A second recorder (another worker in the same test process) keeps the first.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            zero();
            aws_requests::install();
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The recorder keeps every histogram sample until it is folded into its buckets, which only a
/// scrape (or this upkeep) does: a worker nobody scrapes, or scrapes rarely, would otherwise
/// grow by every latency it observes (about 8 bytes per sample, several samples per object).
/// A plain thread, not a task of the supervisor: it holds no resource, cannot fail (the
/// recorder recovers poisoned locks), and if it ever stopped only memory would tell, as before.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "metrics upkeep thread not started: histograms drain at scrape only");
    }
}

/// Every metric's description and unit, in one list on purpose: it reads as the table of what
/// the worker exports.
fn describe() {
    describe_counter!(
        RECONCILE_KEYS,
        Unit::Count,
        "Keys a reconcile listed (and compared with the database)."
    );
    describe_counter!(
        RECONCILE_PAGES,
        Unit::Count,
        "Listing pages a reconcile compared, repaired and checkpointed."
    );
    describe_counter!(
        RECONCILE_DIFFERENCES,
        Unit::Count,
        "Differences a reconcile found between the bucket and the database, by kind (missing, changed, gone)."
    );
    describe_counter!(
        SEQUENCER_UNUSABLE,
        Unit::Count,
        "Object events whose S3 sequencer could not be used (ordered by event time instead), by \
         reason: not_text, empty, not_hex, too_long."
    );
    describe_counter!(
        ORDER_TIES,
        Unit::Count,
        "Writes that tied with a different object of their key on sequencer and event time, \
         settled by asking S3 for the key's current object; result: current (it won) or \
         not_current (it lost)."
    );
    describe_counter!(MESSAGES_RECEIVED, Unit::Count, "SQS messages received.");
    describe_counter!(
        MESSAGES,
        Unit::Count,
        "SQS messages by final disposition (ack, retry, dead_letter, release, lost, handed_back: returned by a long poll in flight at shutdown and handed back unworked)."
    );
    describe_counter!(
        RECORDS,
        Unit::Count,
        "Records (object events) by outcome and reason."
    );
    describe_counter!(
        DEAD_LETTERS,
        Unit::Count,
        "Messages sent to the dead-letter queue, by reason."
    );
    describe_counter!(
        HASHED_BYTES,
        Unit::Bytes,
        "Object bytes read from S3 and hashed."
    );
    describe_counter!(RECEIVES, Unit::Count, "ReceiveMessage calls that answered.");
    describe_counter!(
        EMPTY_RECEIVES,
        Unit::Count,
        "ReceiveMessage calls that returned no message."
    );
    describe_counter!(
        VISIBILITY_EXTENSIONS,
        Unit::Count,
        "Visibility timeouts extended for long work."
    );
    // PAUSED_SECONDS is rendered by `render` (fractional seconds; see `PAUSE`), not here.
    describe_counter!(DB_COMMITS, Unit::Count, "Database transactions committed.");
    describe_histogram!(RECORDS_PER_MESSAGE, Unit::Count, "Records in each message.");
    describe_histogram!(OBJECT_SIZE, Unit::Bytes, "Size of each hashed object.");
    describe_histogram!(
        OBJECT_PROCESSING,
        Unit::Seconds,
        "Time to handle one message, from the start of work to settlement (ack, dead-letter, retry or release)."
    );
    describe_histogram!(
        PHASE,
        Unit::Seconds,
        "Time spent in each phase (fetch_hash, s3_head, db_write, sqs_delete); s3_head is observed \
         once per HeadObject, so its count is the HEAD requests sent."
    );
    describe_histogram!(
        EVENT_TO_COMMIT,
        Unit::Seconds,
        "Lag from the S3 event time to the committed row."
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Lag from the SQS send to the first receive (observed once per message, on its first delivery)."
    );
    describe_histogram!(
        DB_BATCH_SIZE,
        Unit::Count,
        "Writes committed in each database transaction."
    );
    describe_gauge!(
        IN_FLIGHT,
        Unit::Count,
        "Messages received and not yet settled."
    );
    describe_gauge!(WORKERS_BUSY, Unit::Count, "Worker slots in use.");
    describe_gauge!(
        CONCURRENCY,
        Unit::Count,
        "Worker slots configured (WORKER_CONCURRENCY)."
    );
    describe_gauge!(
        POLLERS_IDLE,
        Unit::Count,
        "Pollers waiting for a free worker slot."
    );
    describe_gauge!(
        POLLERS_RECEIVING,
        Unit::Count,
        "Pollers inside a ReceiveMessage call."
    );
    describe_gauge!(
        DEPENDENCY_UP,
        Unit::Count,
        "1 while a dependency answers, 0 while it is down."
    );
    describe_gauge!(
        PAUSED,
        Unit::Count,
        "1 while receiving is paused for a dependency outage."
    );
    describe_gauge!(
        QUEUE_MESSAGES,
        Unit::Count,
        "Approximate messages in each queue, by state."
    );
    describe_gauge!(
        QUEUE_OLDEST_AGE,
        Unit::Seconds,
        "Approximate age of the oldest message in the main queue: now minus the SentTimestamp of \
         the oldest message received during the last sampling interval; while the queue holds \
         messages but none is received, the last value keeps growing (a lower bound when nothing \
         was received yet); 0 when the queue is empty. SQS has no such attribute; on AWS, \
         CloudWatch ApproximateAgeOfOldestMessage is the exact figure."
    );
    describe_counter!(
        CHECKSUM_AUDITS,
        Unit::Count,
        "Objects whose trusted S3 checksum was checked by reading and hashing them \
         (CHECKSUM_AUDIT_RATIO), by result: match, or mismatch (the computed hash was recorded)."
    );
    describe_gauge!(
        BUILD_INFO,
        Unit::Count,
        "Always 1; labels carry the version and git commit."
    );
}

/// Creates every series whose label values are known in advance, at 0. A counter that first
/// appears at 1 shows no increase to `rate()`/`increase()` (its first sample is the baseline),
/// so the first dead letter of a process would never fire the alert; and a dashboard panel
/// over a series that does not exist yet says "No data" instead of 0.
fn zero() {
    use crate::disposition::{DeadLetterReason as D, SkipReason as S};
    for name in [
        MESSAGES_RECEIVED,
        HASHED_BYTES,
        RECEIVES,
        EMPTY_RECEIVES,
        VISIBILITY_EXTENSIONS,
        DB_COMMITS,
    ] {
        counter!(name).absolute(0);
    }
    for name in [IN_FLIGHT, WORKERS_BUSY, POLLERS_IDLE, POLLERS_RECEIVING] {
        gauge!(name).set(0.0);
    }
    for result in ["match", "mismatch"] {
        counter!(CHECKSUM_AUDITS, "result" => result).absolute(0);
    }
    for reason in SEQUENCER_PROBLEMS {
        counter!(SEQUENCER_UNUSABLE, "reason" => reason).absolute(0);
    }
    for result in TIE_RESULTS {
        counter!(ORDER_TIES, "result" => result).absolute(0);
    }
    for disposition in MessageDisposition::ALL {
        counter!(MESSAGES, "disposition" => disposition.as_str()).absolute(0);
    }
    let mut records = Vec::new();
    for reason in D::ALL {
        counter!(DEAD_LETTERS, "reason" => reason.as_str()).absolute(0);
        records.push(("dead_lettered", reason.as_str()));
    }
    for reason in crate::disposition::RetryReason::ALL {
        records.push(("retried", reason.as_str()));
    }
    let skips = [
        S::TestEvent,
        S::NotPresigned,
        S::FolderPlaceholder,
        S::ForeignBucket,
        S::UnsupportedEvent,
    ];
    let outcomes = [
        Outcome::Recorded,
        Outcome::Duplicate,
        Outcome::Superseded,
        Outcome::ObjectGone,
        Outcome::Removed,
        Outcome::Stale,
    ]
    .into_iter()
    .chain(skips.map(Outcome::Skipped));
    records.extend(outcomes.map(Outcome::label));
    for &(outcome, reason) in &records {
        counter!(RECORDS, "outcome" => outcome, "reason" => reason).absolute(0);
    }
    hot::install(records);
}

/// An object event's sequencer could not be used (`reason`, one of [`SEQUENCER_PROBLEMS`]): it
/// is ordered by its event time instead.
pub(crate) fn sequencer_unusable(reason: &'static str) {
    tracing::debug!(
        reason,
        "the event's sequencer is unusable; ordering by event time"
    );
    counter!(SEQUENCER_UNUSABLE, "reason" => reason).increment(1);
}

/// A write tied with a different object and S3's answer settled it (`result`, one of
/// [`TIE_RESULTS`]).
pub(crate) fn order_tie(result: &'static str) {
    counter!(ORDER_TIES, "result" => result).increment(1);
}

/// A reconcile finished a page of `keys` keys (compared, repaired, checkpointed).
pub(crate) fn reconcile_page(keys: usize) {
    counter!(RECONCILE_PAGES).increment(1);
    counter!(RECONCILE_KEYS).increment(keys as u64);
}

/// A reconcile found a difference of this kind; the repair's outcome is counted as a record's.
pub(crate) fn reconcile_difference(kind: &'static str) {
    counter!(RECONCILE_DIFFERENCES, "kind" => kind).increment(1);
}

pub(crate) fn build_info(version: &'static str, git_commit: &'static str) {
    gauge!(BUILD_INFO, "version" => version, "git_commit" => git_commit).set(1.0);
}

pub(crate) fn record_outcome(outcome: Outcome) {
    let (label, reason) = outcome.label();
    tracing::info!(outcome = label, reason, "record done");
    if let Some(hot) = hot::get() {
        hot.record(label, reason);
    }
}

/// Logs a failure once, with its cause chain, where its disposition is decided.
pub(crate) fn record_failure(failure: &Failure, dead_lettered: bool) {
    let reason = failure.reason();
    let detail = crate::disposition::chain(failure);
    let outcome = if dead_lettered {
        "dead_lettered"
    } else {
        "retried"
    };
    match failure {
        Failure::Permanent { .. } => {
            tracing::warn!(outcome, reason, error = %detail, "record failed")
        }
        _ => tracing::warn!(outcome, reason, error = %detail, "record will be retried"),
    }
    if let Some(hot) = hot::get() {
        hot.record(outcome, reason);
    }
}

/// One message settled this way.
pub(crate) fn message_disposition(disposition: MessageDisposition) {
    if let Some(hot) = hot::get() {
        hot.message(disposition);
    }
}

pub(crate) fn dead_lettered(reason: DeadLetterReason) {
    counter!(DEAD_LETTERS, "reason" => reason.as_str()).increment(1);
}

pub(crate) fn hashed_bytes(n: usize) {
    if let Some(hot) = hot::get() {
        hot.hashed_bytes.increment(n as u64);
    }
}

/// One audit of a trusted S3 checksum: the SHA-256 S3 stored against the one computed from the
/// bytes. A mismatch is logged loudly, naming the object: S3 (or the store behind the endpoint)
/// kept a checksum it did not verify, so rows taken from its checksums alone may be wrong.
pub(crate) fn checksum_audit(object: &str, etag: &str, stored: &str, computed: &str) {
    if stored == computed {
        tracing::debug!(object, etag, sha256 = computed, "checksum audit: match");
        counter!(CHECKSUM_AUDITS, "result" => "match").increment(1);
    } else {
        tracing::error!(
            object,
            etag,
            s3_sha256 = stored,
            computed_sha256 = computed,
            "checksum audit mismatch: S3's stored SHA-256 is not the bytes' (the computed hash is \
             recorded); rows with sha256_source = s3_checksum from this store may be wrong"
        );
        counter!(CHECKSUM_AUDITS, "result" => "mismatch").increment(1);
    }
}

/// One answered ReceiveMessage call that returned `messages` messages.
pub(crate) fn received(messages: usize) {
    counter!(RECEIVES).increment(1);
    if messages == 0 {
        counter!(EMPTY_RECEIVES).increment(1);
    }
    counter!(MESSAGES_RECEIVED).increment(messages as u64);
}

/// One depth sample: `queue` is `main` or `dead_letter`, `state` one of SQS's three counts.
pub(crate) fn queue_messages(queue: &'static str, state: &'static str, value: u64) {
    gauge!(QUEUE_MESSAGES, "queue" => queue, "state" => state).set(value as f64);
}

pub(crate) fn queue_oldest_age(queue: &'static str, age_secs: f64) {
    gauge!(QUEUE_OLDEST_AGE, "queue" => queue).set(age_secs);
}

pub(crate) fn records_per_message(records: usize) {
    if let Some(hot) = hot::get() {
        hot.records_per_message.record(records as f64);
    }
}

/// From the event's time to the commit of what it announced.
pub(crate) fn event_to_commit(lag: Duration) {
    if let Some(hot) = hot::get() {
        hot.event_to_commit.record(lag.as_secs_f64());
    }
}

pub(crate) fn object_size(bytes: u64) {
    if let Some(hot) = hot::get() {
        hot.object_size.record(bytes as f64);
    }
}

/// One committed group-commit transaction of `writes` writes.
pub(crate) fn db_commit(writes: usize) {
    counter!(DB_COMMITS).increment(1);
    histogram!(DB_BATCH_SIZE).record(writes as f64);
}

pub(crate) fn concurrency(slots: usize) {
    gauge!(CONCURRENCY).set(slots as f64);
}

/// From SentTimestamp to the start of processing.
pub(crate) fn queue_wait(wait: Duration) {
    if let Some(hot) = hot::get() {
        hot.queue_wait.record(wait.as_secs_f64());
    }
}

pub(crate) fn visibility_extended() {
    counter!(VISIBILITY_EXTENSIONS).increment(1);
}

/// From the start of a message's work to its settlement.
pub(crate) fn object_processing(elapsed: Duration) {
    if let Some(hot) = hot::get() {
        hot.object_processing.record(elapsed.as_secs_f64());
    }
}

pub(crate) fn phase(name: &'static str, elapsed: Duration) {
    if let Some(hot) = hot::get() {
        hot.phase(name, elapsed.as_secs_f64());
    }
}

pub(crate) fn dependency(dependency: Dependency, up: bool) {
    gauge!(DEPENDENCY_UP, "dependency" => dependency.as_str()).set(if up { 1.0 } else { 0.0 });
}

/// Whether receiving is paused (some dependency down or unproven).
pub(crate) fn paused(paused: bool) {
    gauge!(PAUSED).set(if paused { 1.0 } else { 0.0 });
}

/// Renders the scrape: everything the recorder holds, plus the paused-seconds counter from
/// `paused` (per dependency, as measured by the health tracker, which owns the pause clock).
///
/// The `metrics` crate's counters are whole numbers, and adding a pause only when it ends would
/// leave the counter flat during an outage; so it is written here at scrape time: it grows
/// while paused, in fractional seconds, and never goes backwards.
pub(crate) fn render(handle: &PrometheusHandle, paused: &[(Dependency, Duration)]) -> String {
    use std::fmt::Write;
    let mut out = handle.render();
    if paused.is_empty() {
        return out;
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "# HELP {PAUSED_SECONDS} Time spent not receiving because a dependency was down or not yet \
         proven (start-up counts), growing while paused.\n# TYPE {PAUSED_SECONDS} counter"
    );
    for (dependency, total) in paused {
        let _ = writeln!(
            out,
            "{PAUSED_SECONDS}{{dependency=\"{}\"}} {}",
            dependency.as_str(),
            total.as_secs_f64()
        );
    }
    out
}

/// A gauge raised for as long as the guard lives (busy workers, in-flight messages, pollers).
pub(crate) struct Raised(&'static str);

impl Raised {
    pub(crate) fn new(name: &'static str) -> Self {
        gauge!(name).increment(1.0);
        Self(name)
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        gauge!(self.0).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paused_seconds_are_rendered_fractional_per_dependency() {
        let handle = PrometheusBuilder::new().build_recorder().handle();
        let text = render(&handle, &[(Dependency::S3, Duration::from_millis(1500))]);
        assert!(text.contains("# TYPE datapack_worker_paused_seconds_total counter"));
        assert!(text.contains("datapack_worker_paused_seconds_total{dependency=\"s3\"} 1.5\n"));
        assert!(!render(&handle, &[]).contains("paused_seconds"));
    }
}
