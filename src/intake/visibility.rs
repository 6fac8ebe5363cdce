//! The visibility batcher: heartbeat extensions, retry delays and releases of the messages in
//! hand, gathered into `ChangeMessageVisibilityBatch` calls of up to ten (as
//! [`crate::intake::batch`] describes, with the deletes' wait), instead of one
//! `ChangeMessageVisibility` per message.
//!
//! The heartbeats of messages received together fall due together, so they share a call. The
//! wait is at most a tenth of the visibility timeout, and a heartbeat comes at half of it, so an
//! extension still lands long before the message could be handed to anyone else. From the
//! shutdown signal on nothing waits: releases go out at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::intake::batch::Sink;
use crate::intake::sqs::{BATCH, Received, Sqs, VisibilityChange, VisibilityError};
use crate::ops::health::Health;

/// A visibility change waiting for its batch.
pub(crate) struct VisibilityRequest {
    /// The message's id: how its answer is named to the SQS breaker.
    pub(crate) message_id: String,
    pub(crate) change: VisibilityChange,
    pub(crate) done: oneshot::Sender<Result<(), VisibilityError>>,
}

/// Batches visibility changes until every sender is gone.
pub(crate) async fn run_batcher(sink: Sink, requests: mpsc::Receiver<VisibilityRequest>) {
    sink.serve(requests, send).await;
}

/// One `ChangeMessageVisibilityBatch` for `batch`, each request told its own answer.
async fn send(sqs: Arc<dyn Sqs>, health: Health, batch: Vec<VisibilityRequest>) {
    let (ids, changes): (Vec<String>, Vec<VisibilityChange>) = batch
        .iter()
        .map(|r| (r.message_id.clone(), r.change.clone()))
        .unzip();
    let outcomes = change(sqs.as_ref(), &health, &ids, &changes).await;
    for (request, outcome) in batch.into_iter().zip(outcomes) {
        let _ = request.done.send(outcome);
    }
}

/// One call for `changes` (of the messages `ids`), and each entry's outcome. The answers feed
/// the SQS breaker: the call's once, named by its first message (as the deleter's: one batch of
/// ten is one outcome, not ten); each refused entry under its own message's name, since a
/// refused entry is a fact about that message; a lost receipt handle not at all (it says
/// nothing about SQS).
async fn change(
    sqs: &dyn Sqs,
    health: &Health,
    ids: &[String],
    changes: &[VisibilityChange],
) -> Vec<Result<(), VisibilityError>> {
    let result = sqs.change_visibility_batch(changes).await;
    if let Some(first) = ids.first() {
        health.observe_sqs(first, result.as_ref().map(drop));
    }
    match result {
        Ok(outcomes) => {
            for (id, outcome) in ids.iter().zip(&outcomes) {
                if let Err(VisibilityError::Failed(failure)) = outcome {
                    health.observe_sqs(id, Err(failure));
                }
            }
            outcomes
        }
        Err(failure) => {
            let failed = VisibilityError::Failed(failure);
            changes.iter().map(|_| Err(failed.copy())).collect()
        }
    }
}

/// Hands `messages` back at once (visibility 0), ten per call, without waiting for a batch: for
/// what a long poll returned at shutdown, which nobody here will work on. Returns how many SQS
/// took back, and the failures of the others.
pub(crate) async fn hand_back(
    sqs: &dyn Sqs,
    health: &Health,
    messages: &[Received],
) -> (usize, Vec<VisibilityError>) {
    let (mut handed_back, mut failed) = (0, Vec::new());
    for chunk in messages.chunks(BATCH) {
        let ids: Vec<String> = chunk.iter().map(|m| m.message_id.clone()).collect();
        let changes: Vec<VisibilityChange> = chunk
            .iter()
            .map(|m| VisibilityChange {
                receipt_handle: m.receipt_handle.clone(),
                timeout: Duration::ZERO,
            })
            .collect();
        for outcome in change(sqs, health, &ids, &changes).await {
            match outcome {
                Ok(()) => handed_back += 1,
                Err(e) => failed.push(e),
            }
        }
    }
    (handed_back, failed)
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::intake::sqs::memory::{self, Memory};

    fn request(
        id: &str,
        secs: u64,
    ) -> (
        VisibilityRequest,
        oneshot::Receiver<Result<(), VisibilityError>>,
    ) {
        let (done, answer) = oneshot::channel();
        let change = VisibilityChange {
            receipt_handle: format!("receipt-{id}"),
            timeout: Duration::from_secs(secs),
        };
        let message_id = id.to_owned();
        (
            VisibilityRequest {
                message_id,
                change,
                done,
            },
            answer,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn changes_queued_together_share_one_call_and_hear_their_own_answers() {
        let sqs = Arc::new(Memory::default());
        sqs.state().lost.insert("receipt-m1".into());
        sqs.state().refuse_entries.insert("receipt-m2".into());
        let (tx, rx) = mpsc::channel(32);
        let sink = Sink {
            sqs: sqs.clone(),
            health: Health::new(),
            linger: Duration::from_millis(200),
            stopping: CancellationToken::new(),
        };
        let batcher = tokio::spawn(run_batcher(sink, rx));
        let mut answers = Vec::new();
        for i in 0..4 {
            let (request, answer) = request(&format!("m{i}"), 60);
            tx.send(request).await.unwrap();
            answers.push(answer);
        }
        let mut outcomes = Vec::new();
        for answer in answers {
            outcomes.push(answer.await.unwrap());
        }
        assert_eq!(sqs.visibility_batches(), [4]);
        assert!(outcomes[0].is_ok());
        assert!(matches!(outcomes[1], Err(VisibilityError::Lost)));
        assert!(matches!(outcomes[2], Err(VisibilityError::Failed(_))));
        assert!(outcomes[3].is_ok());
        assert_eq!(
            sqs.state().visibility.get("receipt-m3"),
            Some(&Duration::from_secs(60))
        );
        drop(tx);
        batcher.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn from_shutdown_on_a_change_goes_out_without_waiting() {
        let sqs = Arc::new(Memory::default());
        let (tx, rx) = mpsc::channel(8);
        let stopping = CancellationToken::new();
        stopping.cancel();
        let sink = Sink {
            sqs: sqs.clone(),
            health: Health::new(),
            linger: Duration::from_secs(3600),
            stopping,
        };
        let batcher = tokio::spawn(run_batcher(sink, rx));
        let (request, answer) = request("m", 0);
        let queued = tokio::time::Instant::now();
        tx.send(request).await.unwrap();
        answer.await.unwrap().unwrap();
        assert_eq!(queued.elapsed(), Duration::ZERO, "no linger at shutdown");
        drop(tx);
        batcher.await.unwrap();
    }

    #[tokio::test]
    async fn a_hand_back_of_twelve_takes_two_calls() {
        let sqs = Memory::default();
        let messages: Vec<Received> = (0..12)
            .map(|i| memory::message(&format!("m{i}"), 1))
            .collect();
        sqs.state().lost.insert("receipt-m11".into());
        let (handed_back, failed) = hand_back(&sqs, &Health::new(), &messages).await;
        assert_eq!(sqs.visibility_batches(), [10, 2]);
        assert_eq!(handed_back, 11);
        assert!(matches!(failed[..], [VisibilityError::Lost]));
        assert!(sqs.state().visibility.values().all(|v| v.is_zero()));
    }

    #[tokio::test]
    async fn a_refused_call_is_every_entry_s_answer() {
        let sqs = Memory::default();
        sqs.state().refuse_calls = true;
        let messages = [memory::message("a", 1), memory::message("b", 1)];
        let (handed_back, failed) = hand_back(&sqs, &Health::new(), &messages).await;
        assert_eq!(handed_back, 0);
        assert_eq!(failed.len(), 2);
        assert!(
            failed
                .iter()
                .all(|f| matches!(f, VisibilityError::Failed(_)))
        );
    }
}
