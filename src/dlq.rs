//! Operating the dead-letter queue: list without consuming, and redrive once the cause is fixed.

use std::collections::HashSet;

use aws_sdk_sqs::types::MessageSystemAttributeName;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::disposition::{Dependency, Failure};
use crate::event::{self, Item, Message};

#[derive(Debug, Serialize)]
pub struct Entry {
    pub message_id: String,
    pub source_message_id: Option<String>,
    pub reason: String,
    pub detail: Option<String>,
    pub key: Option<String>,
    pub age_secs: Option<i64>,
}

fn first_key(body: &str) -> Option<String> {
    match event::parse(body).ok()? {
        Message::Events(items) => items.into_iter().find_map(|i| match i {
            Item::Object(e) => Some(e.key),
            Item::Unsupported { .. } => None,
        }),
        Message::Test => None,
    }
}

fn sqs_failure(e: impl Into<aws_sdk_sqs::Error>) -> Failure {
    Failure::unavailable(Dependency::Sqs, "sqs_error", e.into())
}

/// Peeks at up to `max` messages with a zero visibility timeout: nothing is consumed. SQS has no
/// true peek, so each look raises the message's receive count on the dead-letter queue, which
/// has no redrive policy of its own.
pub async fn list(
    client: &aws_sdk_sqs::Client,
    dlq_url: &str,
    max: usize,
) -> Result<Vec<Entry>, Failure> {
    let mut seen = HashSet::new();
    let mut entries = Vec::new();
    let mut fruitless = 0;
    while entries.len() < max && fruitless < 3 {
        let output = client
            .receive_message()
            .queue_url(dlq_url)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(sqs_failure)?;
        let mut new = 0;
        for m in output.messages.unwrap_or_default() {
            let id = m.message_id.clone().unwrap_or_default();
            if !seen.insert(id.clone()) || entries.len() >= max {
                continue;
            }
            new += 1;
            let attr = |name: &str| {
                m.message_attributes
                    .as_ref()
                    .and_then(|a| a.get(name))
                    .and_then(|v| v.string_value.clone())
            };
            let sent = m
                .attributes
                .as_ref()
                .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                .and_then(|t| t.parse::<i64>().ok())
                .and_then(DateTime::from_timestamp_millis);
            entries.push(Entry {
                message_id: id,
                source_message_id: attr("source_message_id"),
                reason: attr("error_reason").unwrap_or_else(|| "max_receive_count".into()),
                detail: attr("error_detail"),
                key: m.body.as_deref().and_then(first_key),
                age_secs: sent.map(|s| (Utc::now() - s).num_seconds()),
            });
        }
        fruitless = if new == 0 { fruitless + 1 } else { 0 };
    }
    Ok(entries)
}

/// Moves messages (optionally only those with `reason`) back to the main queue, body unchanged.
/// Each is sent before it is deleted, so a crash can duplicate but never lose one.
pub async fn redrive(
    client: &aws_sdk_sqs::Client,
    dlq_url: &str,
    main_url: &str,
    reason: Option<&str>,
    max: usize,
) -> Result<usize, Failure> {
    let mut moved = 0;
    let mut skipped = HashSet::new();
    let mut fruitless = 0;
    while moved < max && fruitless < 3 {
        let output = client
            .receive_message()
            .queue_url(dlq_url)
            .max_number_of_messages(10.min((max - moved) as i32).max(1))
            .visibility_timeout(30)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(sqs_failure)?;
        let messages = output.messages.unwrap_or_default();
        let mut progressed = false;
        for m in messages {
            let (Some(body), Some(handle)) = (m.body.as_deref(), m.receipt_handle.as_deref())
            else {
                continue;
            };
            let this_reason = m
                .message_attributes
                .as_ref()
                .and_then(|a| a.get("error_reason"))
                .and_then(|v| v.string_value.clone())
                .unwrap_or_else(|| "max_receive_count".into());
            if reason.is_some_and(|r| r != this_reason) {
                // Not ours to move: hand it back at once.
                if skipped.insert(m.message_id.clone().unwrap_or_default()) {
                    progressed = true;
                }
                client
                    .change_message_visibility()
                    .queue_url(dlq_url)
                    .receipt_handle(handle)
                    .visibility_timeout(0)
                    .send()
                    .await
                    .map_err(sqs_failure)?;
                continue;
            }
            client
                .send_message()
                .queue_url(main_url)
                .message_body(body)
                .send()
                .await
                .map_err(sqs_failure)?;
            client
                .delete_message()
                .queue_url(dlq_url)
                .receipt_handle(handle)
                .send()
                .await
                .map_err(sqs_failure)?;
            moved += 1;
            progressed = true;
        }
        fruitless = if progressed { 0 } else { fruitless + 1 };
    }
    Ok(moved)
}
