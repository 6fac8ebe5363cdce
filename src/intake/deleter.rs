//! The deleter: batches the deletes of settled messages, so one `DeleteMessageBatch` removes up
//! to ten (gathered as [`crate::intake::batch`] describes).
//!
//! The wait costs no row any latency (the row is committed before its delete is queued) and no
//! throughput (the message's slot is given back when its delete is queued).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::disposition::{Failure, RetryReason};
use crate::intake::batch::Sink;
use crate::intake::sqs::Sqs;
use crate::ops::health::Health;

/// A delete request waiting for its batch.
pub(crate) struct DeleteRequest {
    pub(crate) receipt_handle: String,
    pub(crate) done: oneshot::Sender<Result<(), Failure>>,
}

/// Batches deletes until every sender is gone. Each call's answer feeds the SQS breaker (a
/// refused delete leaves the message to be processed again and again while every probe passes).
pub(crate) async fn run_deleter(sink: Sink, requests: mpsc::Receiver<DeleteRequest>) {
    sink.serve(requests, send).await;
}

/// One `DeleteMessageBatch` for `batch`, each request told its own answer.
async fn send(sqs: Arc<dyn Sqs>, health: Health, batch: Vec<DeleteRequest>) {
    let handles: Vec<String> = batch.iter().map(|r| r.receipt_handle.clone()).collect();
    let started = Instant::now();
    let result = sqs.delete_batch(&handles).await;
    crate::ops::metrics::phase("sqs_delete", started.elapsed());
    // One outcome per call, named by its first handle: batches differ, so three refused calls
    // are three identities, while one batch of ten is not ten.
    if let Some(first) = handles.first() {
        health.observe_sqs(first, result.as_ref().map(drop));
    }
    for request in batch {
        let answer = match &result {
            Ok(failed) if failed.contains(&request.receipt_handle) => Err(Failure::transient(
                RetryReason::SqsDeleteFailed,
                "DeleteMessageBatch refused this entry",
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(e.copy()),
        };
        let _ = request.done.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::intake::sqs::memory::{Memory, Seen};

    /// Queues `handles` for deletion through a deleter on `sqs`, and returns each answer.
    async fn delete(sqs: Arc<Memory>, handles: &[&str]) -> Vec<Result<(), Failure>> {
        let (tx, rx) = mpsc::channel(32);
        let stopping = CancellationToken::new();
        let sink = Sink {
            sqs,
            health: Health::new(),
            linger: Duration::from_secs(60),
            stopping: stopping.clone(),
        };
        let deleter = tokio::spawn(run_deleter(sink, rx));
        let mut answers = Vec::new();
        for handle in handles {
            let (done, answer) = oneshot::channel();
            let receipt_handle = (*handle).to_owned();
            tx.send(DeleteRequest {
                receipt_handle,
                done,
            })
            .await
            .unwrap();
            answers.push(answer);
        }
        drop(tx);
        let mut results = Vec::new();
        for answer in answers {
            results.push(answer.await.unwrap());
        }
        deleter.await.unwrap();
        results
    }

    #[tokio::test(start_paused = true)]
    async fn twelve_deletes_take_two_calls_and_each_hears_its_own_answer() {
        let sqs = Arc::new(Memory::default());
        sqs.state().refuse_entries.insert("h3".into());
        let handles: Vec<String> = (0..12).map(|i| format!("h{i}")).collect();
        let refs: Vec<&str> = handles.iter().map(String::as_str).collect();
        let answers = delete(sqs.clone(), &refs).await;
        let calls = sqs.calls();
        assert_eq!(
            calls,
            [
                Seen::DeleteBatch(handles[..10].to_vec()),
                Seen::DeleteBatch(handles[10..].to_vec()),
            ]
        );
        for (handle, answer) in handles.iter().zip(&answers) {
            assert_eq!(answer.is_err(), handle == "h3", "{handle}: {answer:?}");
        }
        let refused = answers[3].as_ref().unwrap_err();
        assert_eq!(refused.reason(), "sqs_delete_failed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_call_is_every_entry_s_answer() {
        let sqs = Arc::new(Memory::default());
        sqs.state().refuse_calls = true;
        let answers = delete(sqs.clone(), &["a", "b"]).await;
        assert_eq!(sqs.calls().len(), 1);
        for answer in answers {
            assert_eq!(answer.unwrap_err().reason(), "sqs_access_denied");
        }
    }
}
