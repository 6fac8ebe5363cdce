//! The lease against the in-memory queue behind the SQS seam (see `sqs::memory`), with the
//! real deleter, visibility batcher and health, on paused time: what it asks of SQS for each
//! way a message's work ends.

use tokio::sync::Semaphore;

use super::*;
use crate::disposition::{DeadLetterReason, Dependency};
use crate::intake::batch::Sink;
use crate::intake::sqs::memory::{self, Memory, Seen};
use crate::intake::{deleter, visibility};

const S: Duration = Duration::from_secs(1);

struct Rig {
    sqs: Arc<Memory>,
    context: Arc<Context>,
    slots: Arc<Semaphore>,
}

/// Every dependency starts down (as `Health::new` has it) except those in `up`, whose probe
/// passes.
fn rig(up: &[Dependency]) -> Rig {
    let sqs = Arc::new(Memory::default());
    let health = Health::new();
    for dependency in up {
        let probe = health::probe(|| async { Ok(()) });
        let prober = health
            .clone()
            .run_prober(*dependency, probe, S, CancellationToken::new());
        tokio::spawn(prober);
    }
    let (deletes, delete_requests) = mpsc::channel(32);
    let (visibility, visibility_requests) = mpsc::channel(32);
    let linger = Duration::from_millis(200);
    let stopping = CancellationToken::new();
    let sink = Sink {
        sqs: sqs.clone(),
        health: health.clone(),
        linger,
        stopping,
    };
    tokio::spawn(deleter::run_deleter(sink.clone(), delete_requests));
    tokio::spawn(visibility::run_batcher(sink, visibility_requests));
    let context = Arc::new(Context {
        sqs: sqs.clone(),
        health,
        deletes,
        visibility,
        visibility_timeout: 60 * S,
        max_extension: 3600 * S,
        limits: Limits {
            max_attempts: 5,
            retry_base: 5 * S,
            retry_max: 900 * S,
        },
        redrive: RedriveLimit::default(),
        hard_stop: CancellationToken::new(),
    });
    Rig {
        sqs,
        context,
        slots: Arc::new(Semaphore::new(16)),
    }
}

impl Rig {
    async fn lease(&self, id: &str, receive_count: u32) -> Lease {
        let permit = self.slots.clone().acquire_owned().await.unwrap();
        Lease::new(
            self.context.clone(),
            memory::message(id, receive_count),
            permit,
        )
    }

    /// Works message `id` to its settlement with `work`.
    async fn work(
        &self,
        id: &str,
        receive_count: u32,
        work: impl Future<Output = Verdict> + Send + 'static,
    ) {
        self.lease(id, receive_count).await.work(work).await;
    }

    fn visibility(&self, id: &str) -> Option<Duration> {
        let handle = format!("receipt-{id}");
        self.sqs.state().visibility.get(&handle).copied()
    }

    fn deleted(&self, id: &str) -> bool {
        let handle = format!("receipt-{id}");
        self.sqs.state().deleted.contains(&handle)
    }
}

async fn after(delay: Duration, verdict: impl FnOnce() -> Verdict + Send + 'static) -> Verdict {
    tokio::time::sleep(delay).await;
    verdict()
}

/// A permanent failure: the message is dead-lettered on any attempt.
fn invalid_key() -> Verdict {
    Verdict::DeadLetter {
        outcomes: Vec::new(),
        failure: Failure::permanent(DeadLetterReason::InvalidKey, "no datapack"),
    }
}

fn failed(reason: RetryReason) -> Verdict {
    Verdict::Retry(Failure::transient(reason, "it failed"))
}

#[tokio::test(start_paused = true)]
async fn a_done_message_is_deleted_and_its_slot_given_back() {
    let rig = rig(&[]);
    rig.work("m", 1, async { Verdict::Ack(Vec::new()) }).await;
    assert!(rig.deleted("m"));
    assert_eq!(rig.sqs.visibility_batches(), [0usize; 0]);
    assert_eq!(rig.slots.available_permits(), 16);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_of_messages_worked_on_together_share_one_call() {
    let rig = rig(&[]);
    let mut leases = Vec::new();
    for i in 0..10 {
        let lease = rig.lease(&format!("m{i}"), 1).await;
        leases.push(tokio::spawn(
            lease.work(after(70 * S, || Verdict::Ack(Vec::new()))),
        ));
    }
    for lease in leases {
        lease.await.unwrap();
    }
    // Two heartbeats each (at 30 s and 60 s), ten messages per call, then the deletes.
    assert_eq!(rig.sqs.visibility_batches(), [10, 10]);
    for i in 0..10 {
        assert_eq!(rig.visibility(&format!("m{i}")), Some(60 * S));
        assert!(rig.deleted(&format!("m{i}")));
    }
    let deletes = rig
        .sqs
        .calls()
        .iter()
        .filter(|c| matches!(c, Seen::DeleteBatch(_)))
        .count();
    assert_eq!(deletes, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failure_of_a_dependency_that_is_down_releases_the_message() {
    let rig = rig(&[]);
    rig.work("m", 1, async { failed(RetryReason::S3Unavailable) })
        .await;
    assert_eq!(rig.visibility("m"), Some(Duration::ZERO));
    assert!(!rig.deleted("m"));
}

#[tokio::test(start_paused = true)]
async fn a_failure_of_a_dependency_that_is_up_backs_off() {
    let rig = rig(&[Dependency::S3]);
    rig.work("m", 2, async { failed(RetryReason::S3Error) })
        .await;
    let delay = rig.visibility("m").unwrap();
    assert!((10 * S..=20 * S).contains(&delay), "{delay:?}");
}

#[tokio::test(start_paused = true)]
async fn a_panic_is_a_failure_of_this_message_and_its_last_attempt_dead_letters_it() {
    let rig = rig(&[]);
    let panics = || async { panic!("bad data") };
    rig.work("first", 1, panics()).await;
    let delay = rig.visibility("first").unwrap();
    assert!((5 * S..=10 * S).contains(&delay), "{delay:?}");

    rig.work("last", 5, panics()).await;
    let letters = rig.sqs.state().dead_letters.clone();
    assert_eq!(letters.len(), 1);
    let (id, reason, detail) = &letters[0];
    assert_eq!(
        (id.as_str(), *reason),
        ("last", DeadLetterReason::ProcessingFailed)
    );
    assert!(detail.contains("failed on attempt 5 of 5"), "{detail}");
    assert!(detail.contains("bad data"), "{detail}");
    assert!(rig.deleted("last"));
    assert_eq!(rig.visibility("last"), None);
}

#[tokio::test(start_paused = true)]
async fn the_queue_redrive_limit_brings_the_last_attempt_forward() {
    let rig = rig(&[]);
    rig.context.redrive.set(Some(3));
    rig.work("m", 3, async { panic!("bad data") }).await;
    assert_eq!(rig.sqs.state().dead_letters.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_that_cannot_be_sent_is_sent_once_and_the_message_kept() {
    let rig = rig(&[Dependency::Sqs]);
    rig.sqs.state().refuse_dead_letters = true;
    let verdict = invalid_key();
    rig.work("m", 5, async { verdict }).await;
    let sends = rig
        .sqs
        .calls()
        .iter()
        .filter(|c| matches!(c, Seen::DeadLetter(..)))
        .count();
    assert_eq!(sends, 1, "never sent again on this attempt");
    assert!(!rig.deleted("m"));
    assert!(rig.visibility("m").is_some_and(|d| d >= 80 * S));
}

#[tokio::test(start_paused = true)]
async fn a_lost_receipt_stops_the_work_and_settles_nothing() {
    let rig = rig(&[]);
    rig.sqs.state().lost.insert("receipt-m".into());
    rig.work("m", 1, after(3600 * S, || Verdict::Ack(Vec::new())))
        .await;
    assert!(!rig.deleted("m"));
    assert_eq!(rig.sqs.visibility_batches(), [1], "the one heartbeat");
}

#[tokio::test(start_paused = true)]
async fn the_end_of_the_grace_period_releases_what_is_in_hand() {
    let rig = rig(&[]);
    let lease = rig.lease("m", 1).await;
    let working = tokio::spawn(lease.work(after(3600 * S, || Verdict::Ack(Vec::new()))));
    tokio::time::sleep(10 * S).await;
    rig.context.hard_stop.cancel();
    working.await.unwrap();
    assert_eq!(rig.visibility("m"), Some(Duration::ZERO));
    assert!(!rig.deleted("m"));
}

#[tokio::test(start_paused = true)]
async fn the_processing_cap_ends_the_attempt_as_a_failure() {
    let mut rig = rig(&[]);
    Arc::get_mut(&mut rig.context).unwrap().max_extension = 100 * S;
    rig.work("m", 1, after(3600 * S, || Verdict::Ack(Vec::new())))
        .await;
    // Heartbeats at 30 s (30 + 60 <= 100) only; at 60 s the cap ends it: a retry.
    assert_eq!(rig.sqs.visibility_batches(), [1, 1]);
    let delay = rig.visibility("m").unwrap();
    assert!((5 * S..=10 * S).contains(&delay), "{delay:?}");
}

#[tokio::test(start_paused = true)]
async fn a_lease_dropped_unsettled_hands_its_message_back() {
    let rig = rig(&[]);
    let lease = rig.lease("m", 1).await;
    drop(lease);
    // Nobody waits for that answer: poll for it, on paused time, with a deadline.
    let deadline = Instant::now() + 10 * S;
    while rig.sqs.visibility_batches().is_empty() {
        assert!(Instant::now() < deadline, "no hand-back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rig.visibility("m"), Some(Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_after_the_processing_cap_holds_the_message_until_it_is_deleted() {
    let mut rig = rig(&[]);
    Arc::get_mut(&mut rig.context).unwrap().max_extension = 100 * S;
    rig.work("m", 5, after(3600 * S, || Verdict::Ack(Vec::new())))
        .await;
    // The heartbeat at 30 s (60 s), then at 60 s the cap: half a timeout left, so the message
    // is held for the dead letter before it is sent, then deleted.
    let calls: Vec<String> = rig
        .sqs
        .calls()
        .iter()
        .map(|call| match call {
            Seen::VisibilityBatch(changes) => format!("visibility {:?}", changes[0].timeout),
            Seen::DeadLetter(..) => "dead letter".to_owned(),
            Seen::DeleteBatch(_) => "delete".to_owned(),
            Seen::Receive(_) => "receive".to_owned(),
        })
        .collect();
    assert_eq!(
        calls,
        ["visibility 60s", "visibility 60s", "dead letter", "delete"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_with_time_left_is_sent_without_asking_for_more() {
    let rig = rig(&[]);
    let verdict = invalid_key();
    rig.work("m", 1, async { verdict }).await;
    assert!(rig.sqs.visibility_batches().is_empty());
    assert_eq!(rig.sqs.state().dead_letters.len(), 1);
    assert!(rig.deleted("m"));
}

#[tokio::test(start_paused = true)]
async fn a_message_another_receiver_took_is_not_dead_lettered_from_here() {
    let rig = rig(&[]);
    // The heartbeat at 30 s fails, so the visibility is not moved on; by the verdict at 45 s
    // the message has gone to another receiver.
    rig.sqs.state().refuse_entries.insert("receipt-m".into());
    let lease = rig.lease("m", 5).await;
    let verdict = invalid_key();
    let working = tokio::spawn(lease.work(after(45 * S, || verdict)));
    tokio::time::sleep(31 * S).await;
    {
        let mut state = rig.sqs.state();
        state.refuse_entries.clear();
        state.lost.insert("receipt-m".into());
    }
    working.await.unwrap();
    assert_eq!(
        rig.sqs.visibility_batches(),
        [1, 1],
        "the heartbeat, then the hold"
    );
    assert!(rig.sqs.state().dead_letters.is_empty());
    assert!(!rig.deleted("m"));
}
