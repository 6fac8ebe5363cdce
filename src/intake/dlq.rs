//! The dead-letter queue as the `dlq` commands see it: paging through it without consuming,
//! moving a message to the main queue, and handing every message looked at back at the end.
//!
//! SQS has no true peek: each message looked at is held (invisible for [`HOLD_SECS`]) so the
//! next receive returns new ones, and handed back (visibility 0) at the end, whatever happened.

use std::collections::HashSet;

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName, QueueAttributeName};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::disposition::{Failure, RetryReason};
use crate::intake::queue::{attribute, visibility_entries};
use crate::intake::sqs::{BATCH, VisibilityChange};

/// How long a message looked at stays invisible while the command pages through the queue, so
/// each message is seen once; every held message is handed back (visibility 0) at the end.
const HOLD_SECS: i32 = 300;

/// Receives that come back with nothing new before the pager gives up on reaching its target.
const FRUITLESS_RECEIVES: u32 = 3;

/// One dead-lettered message, with what the worker wrote on it.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub(crate) message_id: String,
    pub(crate) receipt_handle: String,
    pub(crate) body: String,
    /// Why the worker dead-lettered it; `None` when SQS's own redrive moved it.
    pub(crate) reason: Option<String>,
    pub(crate) detail: Option<String>,
    /// The id the message had in the main queue (copies sent twice share it).
    pub(crate) source_message_id: Option<String>,
    pub(crate) sent_at: Option<DateTime<Utc>>,
}

impl DeadLetter {
    /// `None` for a message without a receipt handle (it could not be handed back; SQS never
    /// sends one).
    fn from_message(m: Message) -> Option<Self> {
        let attribute = |name: &str| {
            m.message_attributes
                .as_ref()
                .and_then(|a| a.get(name))
                .and_then(|v| v.string_value.clone())
        };
        let sent_at = m
            .attributes
            .as_ref()
            .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
            .and_then(|t| t.parse::<i64>().ok())
            .and_then(DateTime::from_timestamp_millis);
        Some(Self {
            reason: attribute(attribute::REASON),
            detail: attribute(attribute::DETAIL),
            source_message_id: attribute(attribute::SOURCE_MESSAGE_ID),
            sent_at,
            message_id: m.message_id.unwrap_or_default(),
            receipt_handle: m.receipt_handle?,
            body: m.body.unwrap_or_default(),
        })
    }
}

fn sqs_failure(e: impl Into<aws_sdk_sqs::Error>) -> Failure {
    Failure::transient(RetryReason::SqsError, e.into())
}

/// Pages through the dead-letter queue: every receive holds what it returns, so the next one
/// returns new messages, until the queue's visible count (read at the start) has been seen,
/// receives come back with nothing new three times in a row, or a signal comes. What the caller
/// holds is handed back by [`Pager::release`].
pub(crate) struct Pager {
    client: aws_sdk_sqs::Client,
    url: String,
    /// Visible messages when the command started: new arrivals are not waited for.
    target: u64,
    seen: HashSet<String>,
    held: Vec<String>,
    /// A signal: no new receive starts.
    interrupted: CancellationToken,
}

impl Pager {
    pub(crate) async fn open(
        client: aws_sdk_sqs::Client,
        url: String,
        interrupted: CancellationToken,
    ) -> Result<Self, Failure> {
        let attributes = client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(sqs_failure)?;
        let target = attributes
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(Self {
            client,
            url,
            target,
            seen: HashSet::new(),
            held: Vec::new(),
            interrupted,
        })
    }

    pub(crate) fn interrupted(&self) -> bool {
        self.interrupted.is_cancelled()
    }

    /// The next page of at most `want` messages not seen before; `None` once the queue is
    /// exhausted or a signal came. A receive is never dropped half-way: what it returns after a
    /// signal is held (and so handed back), instead of staying invisible for [`HOLD_SECS`].
    pub(crate) async fn next(&mut self, want: usize) -> Result<Option<Vec<DeadLetter>>, Failure> {
        let mut fruitless = 0;
        while (self.seen.len() as u64) < self.target
            && fruitless < FRUITLESS_RECEIVES
            && !self.interrupted()
        {
            let fresh = self.receive(want).await?;
            if self.interrupted() {
                for letter in &fresh {
                    self.hold(letter);
                }
                return Ok(None);
            }
            if fresh.is_empty() {
                fruitless += 1;
                continue;
            }
            return Ok(Some(fresh));
        }
        Ok(None)
    }

    /// One receive (held for [`HOLD_SECS`]), keeping the messages not seen before.
    async fn receive(&mut self, want: usize) -> Result<Vec<DeadLetter>, Failure> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(want.clamp(1, BATCH) as i32)
            .visibility_timeout(HOLD_SECS)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(sqs_failure)?;
        Ok(output
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(DeadLetter::from_message)
            .filter(|letter| self.seen.insert(letter.message_id.clone()))
            .collect())
    }

    /// Keeps `letter` to hand back at the end.
    pub(crate) fn hold(&mut self, letter: &DeadLetter) {
        self.held.push(letter.receipt_handle.clone());
    }

    /// Sends `letter`'s body, unchanged, to `main_url`, then deletes it here: a crash in between
    /// duplicates it, never loses it.
    pub(crate) async fn move_to(&self, main_url: &str, letter: &DeadLetter) -> Result<(), Failure> {
        self.client
            .send_message()
            .queue_url(main_url)
            .message_body(&letter.body)
            .send()
            .await
            .map_err(sqs_failure)?;
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(&letter.receipt_handle)
            .send()
            .await
            .map_err(sqs_failure)?;
        Ok(())
    }

    /// Hands every held message back at once, ten per call; returns how many.
    pub(crate) async fn release(self) -> Result<usize, Failure> {
        for chunk in self.held.chunks(BATCH) {
            let changes: Vec<VisibilityChange> = chunk
                .iter()
                .map(|handle| VisibilityChange {
                    receipt_handle: handle.clone(),
                    timeout: std::time::Duration::ZERO,
                })
                .collect();
            self.client
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(visibility_entries(&changes)))
                .send()
                .await
                .map_err(sqs_failure)?;
        }
        Ok(self.held.len())
    }
}
