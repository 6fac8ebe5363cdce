//! Queue depth and the oldest-message age, sampled for the dashboard and alerts.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::intake::queue::Queue;
use crate::ops::metrics;

/// Samples both queues' depth, and the main queue's oldest-message age, for the dashboard and
/// alerts, at an interval, until stopped. The age is an approximation built from what the
/// pollers receive (see [`OldestAge`]); the dead-letter queue is never received from, so it
/// has no age.
pub(crate) async fn sample_queues(queue: Queue, every: Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    let mut oldest = OldestAge::default();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        for (name, url) in [
            ("main", &queue.url),
            ("dead_letter", &queue.dead_letter_url),
        ] {
            let Ok(depth) = queue.depth(url).await else {
                // A failed sample keeps the last values; the dependency gauge tells the story.
                continue;
            };
            for (state, value) in [
                ("visible", depth.visible),
                ("in_flight", depth.in_flight),
                ("delayed", depth.delayed),
            ] {
                metrics::queue_messages(name, state, value);
            }
            if name == "main" {
                // Taken only after a successful depth call, so a failed sample loses nothing.
                let received = queue.take_oldest_received();
                let waiting = depth.visible + depth.in_flight + depth.delayed;
                let age = oldest.sample(received, waiting, chrono::Utc::now());
                metrics::queue_oldest_age(name, age);
            }
        }
    }
}

/// The oldest-message-age approximation, one sample at a time (see [`QUEUE_OLDEST_AGE`]'s help).
///
/// SQS reports counts, not ages, so the age comes from what we receive: a message we receive is
/// at most as old as the oldest one still queued, and the oldest one received in an interval is
/// the head of the queue as far as we can see. Between receives the head can only get older, so
/// the last head's age keeps growing until the queue is empty.
#[derive(Debug, Default, Clone)]
pub(crate) struct OldestAge {
    /// SentTimestamp of the head as last seen (or the time the backlog was first noticed).
    head: Option<DateTime<Utc>>,
}

impl OldestAge {
    /// `received`: oldest SentTimestamp received since the last sample; `waiting`: messages in
    /// the queue in any state (visible, in flight, delayed). Returns the age in seconds.
    pub(crate) fn sample(
        &mut self,
        received: Option<DateTime<Utc>>,
        waiting: u64,
        now: DateTime<Utc>,
    ) -> f64 {
        if waiting == 0 {
            self.head = None;
            return 0.0;
        }
        // A fresh receive names the head; otherwise the old head stays (or, if we have never
        // received from this backlog, it starts now: a lower bound, never an overstatement).
        let head = *self.head.insert(received.or(self.head).unwrap_or(now));
        (now - head).to_std().unwrap_or_default().as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn oldest_age_follows_the_head_grows_while_idle_and_resets_when_empty() {
        let mut age = OldestAge::default();
        assert_eq!(age.sample(None, 0, at(0)), 0.0, "empty queue");
        // A backlog we have not received from yet: counted from when it was first seen.
        assert_eq!(age.sample(None, 5, at(10)), 0.0);
        assert_eq!(age.sample(None, 5, at(13)), 3.0);
        // A receive names the real head: sent at 2, so 14 s old at 16.
        assert_eq!(age.sample(Some(at(2)), 4, at(16)), 14.0);
        // Nothing received while messages wait: the head keeps ageing.
        assert_eq!(age.sample(None, 4, at(20)), 18.0);
        // The old head was processed; the next receive shows a younger head.
        assert_eq!(age.sample(Some(at(15)), 1, at(21)), 6.0);
        assert_eq!(age.sample(None, 0, at(22)), 0.0, "drained");
        assert_eq!(
            age.sample(None, 1, at(30)),
            0.0,
            "a new backlog starts over"
        );
    }
}
