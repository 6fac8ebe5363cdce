//! SQS's side of health: the queue's own settings read at start, and the probe that pauses the
//! fleet while SQS cannot serve it (in depth, the calls that settle messages, while the SQS
//! breaker is tripped).

use crate::disposition::Dependency;
use crate::intake::queue::{self, Queue, QueueAttributes};
use crate::ops::health::{Health, PROBE_TIMEOUT, Probe, probe};

/// Reads the queue's own settings once, at start, and warns about a redrive policy that would
/// dead-letter messages without a reason. If SQS does not answer now, [`sqs_probe`] reads them
/// on its first pass, and the warning comes then: the worker starts (not ready) while SQS is
/// down rather than refusing to start.
pub(crate) async fn read_queue_settings(queue: &Queue, max_attempts: u32) {
    match tokio::time::timeout(PROBE_TIMEOUT, queue.attributes()).await {
        Ok(Ok(attributes)) => adopt(queue, &attributes, max_attempts),
        Ok(Err(failure)) => tracing::warn!(
            error = %crate::disposition::chain(&failure),
            "could not read the queue's settings at start; they are read when SQS answers its probe"
        ),
        Err(_) => tracing::warn!(
            "the queue's settings did not arrive within {PROBE_TIMEOUT:?}; they are read when SQS answers its probe"
        ),
    }
}

/// The SQS probe: both queues answer, the queue's settings are known, and while the SQS
/// breaker is tripped, settling a message works again.
pub(crate) fn sqs_probe(queue: Queue, health: Health, max_attempts: u32) -> Probe {
    probe(move || {
        let (queue, health) = (queue.clone(), health.clone());
        async move {
            let attributes = queue.attributes().await?;
            if !queue.learned() {
                adopt(&queue, &attributes, max_attempts);
            }
            queue.depth(&queue.dead_letter_url).await?;
            // In depth only when the breaker says most deletes or visibility changes
            // fail: GetQueueAttributes passing says nothing about those.
            if health.tripped(Dependency::Sqs) {
                queue.check_settling().await?;
            }
            Ok(())
        }
    })
}

fn adopt(queue: &Queue, attributes: &QueueAttributes, max_attempts: u32) {
    queue.adopt(attributes);
    tracing::info!(
        max_receive_count = attributes.max_receive_count,
        max_attempts,
        "read the queue's settings"
    );
    if let Some((max_receive_count, safe)) =
        queue::max_receive_count_too_low(attributes.max_receive_count, max_attempts)
    {
        tracing::warn!(
            max_receive_count,
            max_attempts,
            "the queue's redrive maxReceiveCount ({max_receive_count}) is lower than MAX_ATTEMPTS \
             ({max_attempts}) + 5: releases during outages and shutdowns also count as receives, \
             so SQS can move a message to the dead-letter queue without a reason before the \
             worker dead-letters it with one; set maxReceiveCount to at least {safe}"
        );
    }
}
