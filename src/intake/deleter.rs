//! The deleter: batches the deletes of settled messages, so one call removes up to ten.
//!
//! A delete waits until ten are queued or the oldest has waited [`linger`] (a tenth of the
//! visibility timeout at most, so a delete always reaches SQS long before the message could be
//! handed to another receiver), then goes out in one `DeleteMessageBatch`. Under load that is
//! ten per call; at light load a few. The wait costs no row any latency (the row is committed
//! before its delete is queued) and no throughput (the message's slot is given back when its
//! delete is queued). Once shutdown begins, nothing waits: every delete goes out at once.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::disposition::{Failure, RetryReason};
use crate::intake::queue::Queue;
use crate::ops::health::Health;

/// SQS's most entries per `DeleteMessageBatch`.
const BATCH: usize = 10;

/// A delete request waiting for its batch.
pub(crate) struct DeleteRequest {
    pub receipt_handle: String,
    pub done: oneshot::Sender<Result<(), Failure>>,
}

/// When the deletes queued so far go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flush {
    Now,
    /// Unless the batch fills first.
    In(Duration),
}

/// Whether `queued` deletes, the oldest of which has waited `oldest_age`, go out now: when the
/// batch is full, when the oldest has waited `linger`, or when shutdown has begun (`stopping`).
pub(crate) fn flush(
    queued: usize,
    oldest_age: Duration,
    linger: Duration,
    stopping: bool,
) -> Flush {
    if queued >= BATCH || stopping || oldest_age >= linger {
        Flush::Now
    } else {
        Flush::In(linger - oldest_age)
    }
}

/// How long a delete may wait for its batch: the configured wait, but never more than a tenth of
/// the visibility timeout. The message's visibility runs from its receive (or last heartbeat);
/// its work may have used most of it, and a delete that arrives after it ran out fails (the
/// message is processed again, harmlessly but for nothing).
pub(crate) fn linger(configured: Duration, visibility_timeout: Duration) -> Duration {
    configured.min(visibility_timeout / 10)
}

/// Batches deletes (see the module header). Ends when every sender is gone and the channel is
/// drained; what is queued then goes out first. From `stopping` on, every delete goes out at
/// once. Each call's answer feeds the SQS breaker (a refused delete leaves the message to be
/// processed again and again while every probe passes).
pub(crate) async fn run_deleter(
    queue: Queue,
    health: Health,
    mut requests: mpsc::Receiver<DeleteRequest>,
    linger: Duration,
    stopping: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    // When the oldest delete in `batch` was taken from the channel.
    let mut oldest = Instant::now();
    let mut open = true;
    loop {
        if batch.is_empty() {
            if !open || requests.recv_many(&mut batch, BATCH).await == 0 {
                return;
            }
            oldest = Instant::now();
        }
        let wait = match flush(
            batch.len(),
            oldest.elapsed(),
            linger,
            stopping.is_cancelled(),
        ) {
            Flush::In(wait) if open => wait,
            _ => {
                send(&queue, &health, &mut batch).await;
                continue;
            }
        };
        let room = BATCH - batch.len();
        tokio::select! {
            n = requests.recv_many(&mut batch, room) => open = n > 0,
            _ = tokio::time::sleep(wait) => {}
            _ = stopping.cancelled() => {}
        }
    }
}

/// One `DeleteMessageBatch` for `batch` (drained), each request told its own answer.
async fn send(queue: &Queue, health: &Health, batch: &mut Vec<DeleteRequest>) {
    let handles: Vec<String> = batch.iter().map(|r| r.receipt_handle.clone()).collect();
    let started = Instant::now();
    let result = queue.delete_batch(&handles).await;
    crate::ops::metrics::phase("sqs_delete", started.elapsed());
    // One outcome per call, named by its first handle: batches differ, so three refused calls
    // are three identities, while one batch of ten is not ten.
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_full_batch_goes_out_at_once() {
        assert_eq!(flush(10, Duration::ZERO, 200 * MS, false), Flush::Now);
        assert_eq!(flush(11, Duration::ZERO, 200 * MS, false), Flush::Now);
    }

    #[test]
    fn a_partial_batch_waits_for_what_is_left_of_the_linger() {
        assert_eq!(
            flush(1, Duration::ZERO, 200 * MS, false),
            Flush::In(200 * MS)
        );
        assert_eq!(flush(9, 150 * MS, 200 * MS, false), Flush::In(50 * MS));
        assert_eq!(flush(3, 200 * MS, 200 * MS, false), Flush::Now);
        assert_eq!(flush(3, 5 * MS, 200 * MS, true), Flush::Now);
    }

    #[test]
    fn a_zero_linger_sends_whatever_is_waiting() {
        assert_eq!(flush(1, Duration::ZERO, Duration::ZERO, false), Flush::Now);
    }

    #[test]
    fn the_linger_stays_far_below_the_visibility_timeout() {
        let timeout = Duration::from_secs(60);
        assert_eq!(linger(200 * MS, timeout), 200 * MS);
        assert_eq!(linger(200 * MS, Duration::from_secs(2)), 200 * MS);
        assert_eq!(
            linger(Duration::from_secs(5), timeout),
            Duration::from_secs(5)
        );
        assert_eq!(
            linger(Duration::from_secs(30), timeout),
            Duration::from_secs(6)
        );
    }
}
