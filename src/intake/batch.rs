//! Gathering settled messages' calls into SQS batches of up to ten, for the deleter and the
//! visibility batcher alike.
//!
//! A request waits until ten are queued or the oldest has waited [`linger`] (a tenth of the
//! visibility timeout at most, so it always reaches SQS long before the message could be handed
//! to another receiver), then goes out in one call. Under load that is ten per call; at light
//! load a few. Once shutdown begins nothing waits: what is queued goes out at once, and what
//! queues up while a call is under way goes out together in the next.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::intake::sqs::{BATCH, Sqs};
use crate::ops::health::Health;

/// What the deleter and the visibility batcher share: the SQS seam their calls go to, the
/// health their answers feed (the SQS breaker), how long a request waits for its batch, and
/// when waiting stops.
#[derive(Clone)]
pub(crate) struct Sink {
    pub(crate) sqs: Arc<dyn Sqs>,
    pub(crate) health: Health,
    pub(crate) linger: Duration,
    pub(crate) stopping: CancellationToken,
}

impl Sink {
    /// Gathers `requests` into batches and makes one call of each with `send`, until every
    /// sender is gone.
    pub(crate) async fn serve<R, F, Sent>(self, requests: mpsc::Receiver<R>, send: F)
    where
        F: Fn(Arc<dyn Sqs>, Health, Vec<R>) -> Sent,
        Sent: Future<Output = ()>,
    {
        let Self {
            sqs,
            health,
            linger,
            stopping,
        } = self;
        gather(requests, linger, stopping, |batch| {
            send(sqs.clone(), health.clone(), batch)
        })
        .await;
    }
}

/// When the requests queued so far go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flush {
    Now,
    /// Unless the batch fills first.
    In(Duration),
}

/// Whether `queued` requests, the oldest of which has waited `oldest_age`, go out now: when the
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

/// How long a request may wait for its batch: the configured wait, but never more than a tenth
/// of the visibility timeout. The message's visibility runs from its receive (or last
/// heartbeat); its work may have used most of it, and a delete that arrives after it ran out
/// fails (the message is processed again, harmlessly but for nothing).
pub(crate) fn linger(configured: Duration, visibility_timeout: Duration) -> Duration {
    configured.min(visibility_timeout / 10)
}

/// Gathers `requests` into batches and hands each to `send` (see the module header). Ends when
/// every sender is gone and the channel is drained; what is queued then goes out first. From
/// `stopping` on, nothing waits.
pub(crate) async fn gather<R, F, Sent>(
    mut requests: mpsc::Receiver<R>,
    linger: Duration,
    stopping: CancellationToken,
    mut send: F,
) where
    F: FnMut(Vec<R>) -> Sent,
    Sent: Future<Output = ()>,
{
    let mut batch = Vec::with_capacity(BATCH);
    // When the oldest request in `batch` was taken from the channel.
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
                send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH))).await;
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

    /// Sizes of the batches `gather` hands on for `sent` requests queued before it runs.
    async fn batches(sent: usize, linger: Duration, stopping: bool) -> Vec<usize> {
        let (tx, rx) = mpsc::channel(64);
        for i in 0..sent {
            tx.send(i).await.unwrap();
        }
        drop(tx);
        let token = CancellationToken::new();
        if stopping {
            token.cancel();
        }
        let mut seen = Vec::new();
        gather(rx, linger, token, |batch: Vec<usize>| {
            seen.push(batch.len());
            async {}
        })
        .await;
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn queued_requests_go_out_ten_per_batch_and_the_rest_when_the_senders_are_gone() {
        assert_eq!(
            batches(23, Duration::from_secs(60), false).await,
            [10, 10, 3]
        );
        assert_eq!(
            batches(23, Duration::from_secs(60), true).await,
            [10, 10, 3]
        );
        assert!(batches(0, Duration::from_secs(60), false).await.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_request_waits_the_linger_then_goes_out_alone() {
        let (tx, rx) = mpsc::channel(8);
        let linger = 200 * MS;
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let gathered = {
            let sent = sent.clone();
            tokio::spawn(gather(
                rx,
                linger,
                CancellationToken::new(),
                move |b: Vec<u8>| {
                    sent.lock().unwrap().push((Instant::now(), b.len()));
                    async {}
                },
            ))
        };
        let queued = Instant::now();
        tx.send(1).await.unwrap();
        // Paused time only moves when every task waits: by then the batch has gone out.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sent_at = sent.lock().unwrap().clone();
        assert_eq!(sent_at.len(), 1);
        assert_eq!(sent_at[0].1, 1);
        let waited = sent_at[0].0 - queued;
        assert!(
            waited >= linger && waited < linger + 10 * MS,
            "it waited the linger: {waited:?}"
        );
        drop(tx);
        gathered.await.unwrap();
    }
}
