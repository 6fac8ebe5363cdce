//! SQS: receive, batched delete, visibility changes, the dead-letter send, queue depth, the
//! queue's own settings read at start, and the in-depth check that settling is allowed again.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
};
use chrono::{DateTime, Utc};

use crate::aws;
use crate::disposition::{Dependency, Failure};

/// A received message with the attributes the worker uses.
#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    pub receive_count: u32,
    pub sent_at: Option<DateTime<Utc>>,
    pub first_received_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct Queue {
    client: aws_sdk_sqs::Client,
    pub url: String,
    pub dead_letter_url: String,
    pub wait: Duration,
    pub visibility_timeout: Duration,
    /// The main queue's redrive `maxReceiveCount`, read from its attributes at start (or, if
    /// SQS did not answer then, on the first probe that passed). 0: unknown, or no redrive.
    max_receive_count: Arc<AtomicU32>,
    /// Whether the queue's attributes have been read once (see [`Queue::adopt`]).
    learned: Arc<std::sync::atomic::AtomicBool>,
    /// The oldest SentTimestamp received since the depth sampler last took it (see
    /// [`crate::intake::depth`]).
    oldest_received: Arc<Mutex<Option<DateTime<Utc>>>>,
}

/// Why a visibility change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum VisibilityError {
    /// The receipt handle no longer holds the message (it expired and was redelivered).
    #[error("receipt handle is no longer valid")]
    Lost,
    #[error(transparent)]
    Failed(Failure),
}

/// The main queue's own settings, as the worker needs them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueAttributes {
    /// The redrive policy's `maxReceiveCount`; `None` without a redrive policy.
    pub max_receive_count: Option<u32>,
}

/// `maxReceiveCount` from a redrive policy (SQS writes it as a number; some tools as a string).
fn max_receive_count(policy: &str) -> Option<u32> {
    let policy = serde_json::from_str::<serde_json::Value>(policy).ok()?;
    let n = match &policy["maxReceiveCount"] {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }?;
    u32::try_from(n).ok().filter(|n| *n > 0)
}

/// The start-up warning about a queue that dead-letters before the worker does: Some((the
/// queue's maxReceiveCount, the smallest safe one)) when it is below `max_attempts` + 5. Every
/// receive counts, and a message is also received, without being charged an attempt, when it
/// is released during an outage or a shutdown; five receives of slack keep those from making
/// SQS move a message to the dead-letter queue without a reason.
pub fn max_receive_count_too_low(
    max_receive_count: Option<u32>,
    max_attempts: u32,
) -> Option<(u32, u32)> {
    let safe = max_attempts.saturating_add(5);
    max_receive_count
        .filter(|limit| *limit < safe)
        .map(|limit| (limit, safe))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

fn millis(
    attributes: Option<&std::collections::HashMap<MessageSystemAttributeName, String>>,
    name: MessageSystemAttributeName,
) -> Option<DateTime<Utc>> {
    attributes?
        .get(&name)?
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_millis)
}

impl Queue {
    pub fn new(
        client: aws_sdk_sqs::Client,
        url: String,
        dead_letter_url: String,
        wait: Duration,
        visibility_timeout: Duration,
    ) -> Self {
        Self {
            client,
            url,
            dead_letter_url,
            wait,
            visibility_timeout,
            max_receive_count: Arc::new(AtomicU32::new(0)),
            learned: Arc::default(),
            oldest_received: Arc::default(),
        }
    }

    /// The main queue's redrive `maxReceiveCount`, once its attributes have been read.
    pub fn max_receive_count(&self) -> Option<u32> {
        Some(self.max_receive_count.load(Ordering::Relaxed)).filter(|n| *n > 0)
    }

    /// One long poll for at most `max` messages (1..=10).
    pub async fn receive(&self, max: usize) -> Result<Vec<Received>, Failure> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(self.wait.as_secs() as i32)
            .visibility_timeout(self.visibility_timeout.as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(|e| aws::classify(Dependency::Sqs, e))?;
        let messages: Vec<Received> = output
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let attributes = m.attributes.as_ref();
                Some(Received {
                    receive_count: attributes
                        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(1),
                    sent_at: millis(attributes, MessageSystemAttributeName::SentTimestamp),
                    first_received_at: millis(
                        attributes,
                        MessageSystemAttributeName::ApproximateFirstReceiveTimestamp,
                    ),
                    message_id: m.message_id.unwrap_or_default(),
                    // A message without a handle cannot be settled; SQS never sends one.
                    receipt_handle: m.receipt_handle?,
                    body: m.body.unwrap_or_default(),
                })
            })
            .collect();
        if let Some(sent) = messages.iter().filter_map(|m| m.sent_at).min() {
            let mut oldest = self.oldest_lock();
            *oldest = Some(oldest.map_or(sent, |o| o.min(sent)));
        }
        Ok(messages)
    }

    /// Takes (and clears) the oldest SentTimestamp received since the last call.
    pub fn take_oldest_received(&self) -> Option<DateTime<Utc>> {
        self.oldest_lock().take()
    }

    fn oldest_lock(&self) -> std::sync::MutexGuard<'_, Option<DateTime<Utc>>> {
        // A plain value: a panic elsewhere cannot leave it half-written.
        self.oldest_received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Deletes up to ten messages in one call; returns the handles that failed.
    pub async fn delete_batch(&self, handles: &[String]) -> Result<Vec<String>, Failure> {
        let entries = handles
            .iter()
            .enumerate()
            .map(|(i, h)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(h)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect::<Vec<_>>();
        let output = self
            .client
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| aws::classify(Dependency::Sqs, e))?;
        Ok(output
            .failed
            .iter()
            .filter_map(|f| f.id.parse::<usize>().ok())
            .filter_map(|i| handles.get(i).cloned())
            .collect())
    }

    pub async fn set_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), VisibilityError> {
        let result = self
            .client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(timeout.as_secs().min(43_200) as i32)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => match aws::code(&e).as_deref() {
                Some("ReceiptHandleIsInvalid" | "MessageNotInflight" | "InvalidParameterValue")
                | Some("AWS.SimpleQueueService.MessageNotInflight") => Err(VisibilityError::Lost),
                _ => Err(VisibilityError::Failed(aws::classify(Dependency::Sqs, e))),
            },
        }
    }

    /// Sends the original body, unchanged, to the dead-letter queue with why it failed.
    /// At-least-once: a crash between this send and the delete sends it again, so the source
    /// message id travels along to tell such copies apart.
    pub async fn dead_letter(
        &self,
        message: &Received,
        reason: &str,
        detail: &str,
    ) -> Result<(), Failure> {
        let text = |v: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .expect("data type is set")
        };
        let detail: String = detail.chars().take(1024).collect();
        self.client
            .send_message()
            .queue_url(&self.dead_letter_url)
            .message_body(&message.body)
            .message_attributes("error_reason", text(reason))
            .message_attributes(
                "error_detail",
                text(if detail.is_empty() { "-" } else { &detail }),
            )
            .message_attributes("source_message_id", text(&message.message_id))
            .message_attributes("receive_count", text(&message.receive_count.to_string()))
            .send()
            .await
            .map_err(|e| aws::classify(Dependency::Sqs, e))?;
        Ok(())
    }

    pub async fn depth(&self, url: &str) -> Result<Depth, Failure> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| aws::classify(Dependency::Sqs, e))?;
        let get = |name| {
            output
                .attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(Depth {
            visible: get(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }

    /// Reads the main queue's own settings (its redrive policy). Nothing is stored: see
    /// [`Queue::adopt`]. Asks for one attribute only, since an emulator recomputes every
    /// attribute for each one asked; so the SQS probe can use it as its call on the main queue.
    pub async fn attributes(&self) -> Result<QueueAttributes, Failure> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| aws::classify(Dependency::Sqs, e))?;
        let max_receive_count = output
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
            .and_then(|policy| max_receive_count(policy));
        Ok(QueueAttributes { max_receive_count })
    }

    /// Keeps what [`Queue::attributes`] read, for the worker's lifetime (a changed redrive policy
    /// is picked up at the next start, as every other setting is).
    pub fn adopt(&self, attributes: &QueueAttributes) {
        self.max_receive_count
            .store(attributes.max_receive_count.unwrap_or(0), Ordering::Relaxed);
        self.learned.store(true, Ordering::Relaxed);
    }

    /// Whether [`Queue::adopt`] has run.
    pub fn learned(&self) -> bool {
        self.learned.load(Ordering::Relaxed)
    }

    /// Hands messages back at once (visibility 0), ten per call. Returns how many SQS accepted.
    /// For what a long poll returned after shutdown: nobody here will work on it.
    pub async fn release_batch(&self, handles: &[String]) -> Result<usize, Failure> {
        let mut released = 0;
        for chunk in handles.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(h)
                        .visibility_timeout(0)
                        .build()
                        .expect("id and receipt handle are set")
                })
                .collect::<Vec<_>>();
            let output = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| aws::classify(Dependency::Sqs, e))?;
            released += output.successful.len();
        }
        Ok(released)
    }

    /// The in-depth SQS probe, for when the breaker says most settlements fail while the queue
    /// still answers GetQueueAttributes: are DeleteMessageBatch and ChangeMessageVisibility
    /// allowed again? Both are asked about a receipt handle that holds no message, so no message
    /// is touched: SQS checks the caller's permission before it looks at the handle, so "this
    /// handle is invalid" means the call would have worked, and a refusal means it still fails.
    pub async fn check_settling(&self) -> Result<(), Failure> {
        const NO_MESSAGE: &str = "datapack-worker-probe-holds-no-message";
        let entry = DeleteMessageBatchRequestEntry::builder()
            .id("probe")
            .receipt_handle(NO_MESSAGE)
            .build()
            .expect("id and receipt handle are set");
        self.client
            .delete_message_batch()
            .queue_url(&self.url)
            .entries(entry)
            .send()
            .await
            .map_err(|e| aws::classify(Dependency::Sqs, e))?;
        match self.set_visibility(NO_MESSAGE, Duration::ZERO).await {
            Ok(()) | Err(VisibilityError::Lost) => Ok(()),
            Err(VisibilityError::Failed(failure)) => Err(failure),
        }
    }

    pub fn client(&self) -> &aws_sdk_sqs::Client {
        &self.client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redrive_policy_max_receive_count_as_number_or_string() {
        assert_eq!(max_receive_count(r#"{"maxReceiveCount":10}"#), Some(10));
        assert_eq!(max_receive_count(r#"{"maxReceiveCount":"15"}"#), Some(15));
        assert_eq!(max_receive_count(r#"{"maxReceiveCount":0}"#), None);
        assert_eq!(max_receive_count("not json"), None);
        assert_eq!(max_receive_count(r#"{"deadLetterTargetArn":"x"}"#), None);
    }

    #[test]
    fn warns_below_max_attempts_plus_five_only() {
        assert_eq!(max_receive_count_too_low(Some(10), 10), Some((10, 15)));
        assert_eq!(max_receive_count_too_low(Some(14), 10), Some((14, 15)));
        assert_eq!(max_receive_count_too_low(Some(15), 10), None);
        assert_eq!(
            max_receive_count_too_low(None, 10),
            None,
            "no redrive policy"
        );
        assert_eq!(
            max_receive_count_too_low(Some(3), u32::MAX),
            Some((3, u32::MAX))
        );
    }
}
