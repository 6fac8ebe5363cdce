//! The deleter: batches the deletes of settled messages, so one call removes up to ten.

use tokio::sync::{mpsc, oneshot};

use crate::disposition::{Failure, RetryReason};
use crate::intake::queue::Queue;
use crate::ops::health::Health;

/// A delete request waiting for its batch.
pub(crate) struct DeleteRequest {
    pub receipt_handle: String,
    pub done: oneshot::Sender<Result<(), Failure>>,
}

/// Batches deletes: whatever is waiting (up to ten) goes in one call, so deletes batch under
/// load and add no delay when idle. Ends when every sender is gone and the channel is drained.
/// Each call's answer feeds the SQS breaker (a refused delete leaves the message to be processed
/// again and again while every probe passes).
pub(crate) async fn run_deleter(
    queue: Queue,
    health: Health,
    mut requests: mpsc::Receiver<DeleteRequest>,
) {
    let mut batch = Vec::with_capacity(10);
    while requests.recv_many(&mut batch, 10).await > 0 {
        let handles: Vec<String> = batch.iter().map(|r| r.receipt_handle.clone()).collect();
        let started = std::time::Instant::now();
        let result = queue.delete_batch(&handles).await;
        crate::ops::metrics::phase("sqs_delete", started.elapsed());
        // One outcome per call, named by its first handle: batches differ, so three refused
        // calls are three identities, while one batch of ten is not ten.
        if let Some(first) = handles.first() {
            health.observe_sqs(first, result.as_ref().map(drop));
        }
        for request in batch.drain(..) {
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
}
