//! SQS: receive, batched delete, batched visibility changes, the dead-letter send, queue depth,
//! the queue's own settings read at start, and the in-depth check that settling is allowed again.
//! [`Queue`] is the real side of the [`Sqs`] seam.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::operation::change_message_visibility_batch::ChangeMessageVisibilityBatchOutput;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
};
use chrono::{DateTime, Utc};

use crate::aws;
use crate::disposition::{Dependency, Failure};
pub(crate) use crate::intake::sqs::Received;
use crate::intake::sqs::{BATCH, Call, DeadLetter, Sqs, VisibilityChange, VisibilityError};

/// The message attributes a dead letter carries (the `dlq` commands read them back).
pub(crate) mod attribute {
    pub(crate) const REASON: &str = "error_reason";
    pub(crate) const DETAIL: &str = "error_detail";
    pub(crate) const SOURCE_MESSAGE_ID: &str = "source_message_id";
    pub(crate) const RECEIVE_COUNT: &str = "receive_count";
}

/// SQS's longest visibility timeout (12 h).
const MAX_VISIBILITY_SECS: u64 = 43_200;

#[derive(Debug, Clone)]
pub struct Queue {
    client: aws_sdk_sqs::Client,
    pub(crate) url: String,
    pub(crate) dead_letter_url: String,
    pub(crate) wait: Duration,
    pub(crate) visibility_timeout: Duration,
    max_receive_count: RedriveLimit,
    /// Whether the queue's attributes have been read once (see [`Queue::adopt`]).
    learned: Arc<std::sync::atomic::AtomicBool>,
    /// The oldest SentTimestamp received since the depth sampler last took it (see
    /// [`crate::intake::depth`]).
    oldest_received: Arc<Mutex<Option<DateTime<Utc>>>>,
}

/// The main queue's redrive `maxReceiveCount`, read from its attributes at start (or, if SQS did
/// not answer then, on the first probe that passed); shared by every clone of the queue.
#[derive(Debug, Clone, Default)]
pub(crate) struct RedriveLimit(Arc<AtomicU32>);

impl RedriveLimit {
    /// The limit, once the queue's attributes have been read; `None` before, or without a
    /// redrive policy.
    pub(crate) fn get(&self) -> Option<u32> {
        Some(self.0.load(Ordering::Relaxed)).filter(|n| *n > 0)
    }

    pub(crate) fn set(&self, limit: Option<u32>) {
        self.0.store(limit.unwrap_or(0), Ordering::Relaxed);
    }
}

/// The main queue's own settings, as the worker needs them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct QueueAttributes {
    /// The redrive policy's `maxReceiveCount`; `None` without a redrive policy.
    pub(crate) max_receive_count: Option<u32>,
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
pub(crate) fn max_receive_count_too_low(
    max_receive_count: Option<u32>,
    max_attempts: u32,
) -> Option<(u32, u32)> {
    let safe = max_attempts.saturating_add(5);
    max_receive_count
        .filter(|limit| *limit < safe)
        .map(|limit| (limit, safe))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Depth {
    pub(crate) visible: u64,
    pub(crate) in_flight: u64,
    pub(crate) delayed: u64,
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
            max_receive_count: RedriveLimit::default(),
            learned: Arc::default(),
            oldest_received: Arc::default(),
        }
    }

    /// The main queue's redrive `maxReceiveCount`, as [`Queue::adopt`] learns it.
    pub(crate) fn redrive_limit(&self) -> RedriveLimit {
        self.max_receive_count.clone()
    }

    /// One long poll for at most `max` messages (1..=10).
    pub async fn receive(&self, max: usize) -> Result<Vec<Received>, Failure> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, BATCH) as i32)
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
    pub(crate) fn take_oldest_received(&self) -> Option<DateTime<Utc>> {
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

    /// Changes the visibility of up to ten messages in one call; answers each entry's outcome,
    /// in order (see [`Sqs::change_visibility_batch`]).
    pub(crate) async fn change_visibility_batch(
        &self,
        changes: &[VisibilityChange],
    ) -> Result<Vec<Result<(), VisibilityError>>, Failure> {
        let result = self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.url)
            .set_entries(Some(visibility_entries(changes)))
            .send()
            .await;
        match result {
            Ok(output) => Ok(entry_outcomes(changes.len(), &output)),
            // An emulator may answer a lone entry's refusal for the whole call; with one entry
            // that is still an answer about that message.
            Err(e) if changes.len() == 1 && aws::code(&e).as_deref().is_some_and(is_lost) => {
                Ok(vec![Err(VisibilityError::Lost)])
            }
            Err(e) => Err(aws::classify(Dependency::Sqs, e)),
        }
    }

    /// Sends the original body, unchanged, to the dead-letter queue with why it failed.
    /// At-least-once: a crash between this send and the delete sends it again, so the source
    /// message id travels along to tell such copies apart.
    pub(crate) async fn dead_letter(&self, letter: DeadLetter<'_>) -> Result<(), Failure> {
        let DeadLetter {
            message,
            reason,
            detail,
        } = letter;
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
            .message_attributes(attribute::REASON, text(reason.as_str()))
            .message_attributes(
                attribute::DETAIL,
                text(if detail.is_empty() { "-" } else { &detail }),
            )
            .message_attributes(attribute::SOURCE_MESSAGE_ID, text(&message.message_id))
            .message_attributes(
                attribute::RECEIVE_COUNT,
                text(&message.receive_count.to_string()),
            )
            .send()
            .await
            .map_err(|e| aws::classify(Dependency::Sqs, e))?;
        Ok(())
    }

    pub(crate) async fn depth(&self, url: &str) -> Result<Depth, Failure> {
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
    pub(crate) async fn attributes(&self) -> Result<QueueAttributes, Failure> {
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
    pub(crate) fn adopt(&self, attributes: &QueueAttributes) {
        self.max_receive_count.set(attributes.max_receive_count);
        self.learned.store(true, Ordering::Relaxed);
    }

    /// Whether [`Queue::adopt`] has run.
    pub(crate) fn learned(&self) -> bool {
        self.learned.load(Ordering::Relaxed)
    }

    /// The in-depth SQS probe, for when the breaker says most settlements fail while the queue
    /// still answers GetQueueAttributes: are DeleteMessageBatch and ChangeMessageVisibilityBatch
    /// allowed again? Both are asked about a receipt handle that holds no message, so no message
    /// is touched: SQS checks the caller's permission before it looks at the handle, so "this
    /// handle is invalid" means the call would have worked, and a refusal means it still fails.
    pub(crate) async fn check_settling(&self) -> Result<(), Failure> {
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
        let change = VisibilityChange {
            receipt_handle: NO_MESSAGE.to_owned(),
            timeout: Duration::ZERO,
        };
        match self.change_visibility_batch(&[change]).await?.pop() {
            Some(Err(VisibilityError::Failed(failure))) => Err(failure),
            _ => Ok(()),
        }
    }
}

impl Sqs for Queue {
    fn receive(&self, max: usize) -> Call<'_, Vec<Received>> {
        Box::pin(Queue::receive(self, max))
    }

    fn delete_batch<'a>(&'a self, receipt_handles: &'a [String]) -> Call<'a, Vec<String>> {
        Box::pin(Queue::delete_batch(self, receipt_handles))
    }

    fn change_visibility_batch<'a>(
        &'a self,
        changes: &'a [VisibilityChange],
    ) -> Call<'a, Vec<Result<(), VisibilityError>>> {
        Box::pin(Queue::change_visibility_batch(self, changes))
    }

    fn send_dead_letter<'a>(&'a self, letter: DeadLetter<'a>) -> Call<'a, ()> {
        Box::pin(Queue::dead_letter(self, letter))
    }
}

/// The entries of one `ChangeMessageVisibilityBatch`, identified by their position.
pub(crate) fn visibility_entries(
    changes: &[VisibilityChange],
) -> Vec<ChangeMessageVisibilityBatchRequestEntry> {
    changes
        .iter()
        .enumerate()
        .map(|(i, change)| {
            let secs = change.timeout.as_secs().min(MAX_VISIBILITY_SECS);
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(&change.receipt_handle)
                .visibility_timeout(secs as i32)
                .build()
                .expect("id and receipt handle are set")
        })
        .collect()
}

/// Each of `entries` entries' outcome, from the batch's answer: refused entries are named by
/// their position; one SQS names in neither list is taken as changed (SQS lists every entry).
fn entry_outcomes(
    entries: usize,
    output: &ChangeMessageVisibilityBatchOutput,
) -> Vec<Result<(), VisibilityError>> {
    let mut outcomes: Vec<Result<(), VisibilityError>> = (0..entries).map(|_| Ok(())).collect();
    for failed in &output.failed {
        let Some(outcome) = failed
            .id
            .parse::<usize>()
            .ok()
            .and_then(|i| outcomes.get_mut(i))
        else {
            continue;
        };
        *outcome = Err(if is_lost(&failed.code) {
            VisibilityError::Lost
        } else {
            VisibilityError::Failed(Failure::transient(
                crate::disposition::RetryReason::SqsError,
                format!(
                    "ChangeMessageVisibilityBatch refused this entry: {}: {}",
                    failed.code,
                    failed.message.as_deref().unwrap_or("-")
                ),
            ))
        });
    }
    outcomes
}

/// Whether SQS's error code says the receipt handle no longer holds the message.
fn is_lost(code: &str) -> bool {
    matches!(
        code,
        "ReceiptHandleIsInvalid"
            | "MessageNotInflight"
            | "InvalidParameterValue"
            | "AWS.SimpleQueueService.MessageNotInflight"
    )
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
    fn a_batch_answer_is_read_entry_by_entry() {
        use aws_sdk_sqs::types::BatchResultErrorEntry;
        let refused = |id: &str, code: &str| {
            BatchResultErrorEntry::builder()
                .id(id)
                .code(code)
                .sender_fault(true)
                .build()
                .expect("id, code and sender fault are set")
        };
        let output = ChangeMessageVisibilityBatchOutput::builder()
            .set_successful(Some(Vec::new()))
            .failed(refused("1", "ReceiptHandleIsInvalid"))
            .failed(refused("2", "InternalError"))
            .failed(refused("3", "AWS.SimpleQueueService.MessageNotInflight"))
            .failed(refused("17", "InternalError"))
            .failed(refused("not a position", "InternalError"))
            .build()
            .expect("both lists are set");
        let outcomes = entry_outcomes(5, &output);
        let shape: Vec<&str> = outcomes
            .iter()
            .map(|o| match o {
                Ok(()) => "changed",
                Err(VisibilityError::Lost) => "lost",
                Err(VisibilityError::Failed(_)) => "failed",
            })
            .collect();
        assert_eq!(shape, ["changed", "lost", "failed", "lost", "changed"]);
        let Err(VisibilityError::Failed(failure)) = &outcomes[2] else {
            unreachable!("checked above");
        };
        assert_eq!(
            failure.dependency(),
            Some(Dependency::Sqs),
            "feeds the SQS breaker"
        );
    }

    #[test]
    fn visibility_entries_are_numbered_and_capped_at_twelve_hours() {
        let change = |handle: &str, secs| VisibilityChange {
            receipt_handle: handle.to_owned(),
            timeout: Duration::from_secs(secs),
        };
        let entries = visibility_entries(&[change("a", 0), change("b", 100_000)]);
        let seen: Vec<(&str, &str, i32)> = entries
            .iter()
            .map(|e| {
                (
                    e.id(),
                    e.receipt_handle(),
                    e.visibility_timeout().unwrap_or(-1),
                )
            })
            .collect();
        assert_eq!(seen, [("0", "a", 0), ("1", "b", 43_200)]);
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
