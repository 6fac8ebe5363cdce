//! Operating the dead-letter queue: list without consuming, and redrive once the cause is fixed.
//!
//! Both stop cleanly on SIGINT or SIGTERM: the message in hand is finished (sent and deleted, so
//! it is never in both queues), a receive in flight is let finish (SQS hands it messages even if
//! the client has gone) and what it returned is held, every held message is handed back at
//! once, the summary is printed, and the command exits with [`INTERRUPTED_EXIT_CODE`].

use std::collections::HashSet;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::cli::DlqCommand;
use crate::disposition::{Failure, RetryReason};
use crate::process::event::{self, Item, Message};
use crate::{aws, config};

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

/// The exit code of a `dlq` command stopped by a signal (128 + SIGINT, as shells report it):
/// what it did is printed, and running it again picks up the rest.
pub const INTERRUPTED_EXIT_CODE: u8 = 130;

/// A `dlq` command stopped by a signal after finishing the message in hand.
#[derive(Debug, thiserror::Error)]
#[error("interrupted: stopped after the message in hand and handed back what was held")]
pub struct Interrupted;

fn sqs_failure(e: impl Into<aws_sdk_sqs::Error>) -> Failure {
    Failure::transient(RetryReason::SqsError, e.into())
}

/// How long a message looked at stays invisible while the command pages through the queue, so
/// each message is seen once; every held message is handed back (visibility 0) at the end.
const HOLD_SECS: i32 = 300;

/// Pages through the dead-letter queue: every receive holds what it returns, so the next one
/// returns new messages, until `enough` says stop, the queue's visible count (read at the start)
/// has been seen, or receives come back empty three times in a row. Messages are handed to
/// `each` once; handles it wants released are given back at the end, whatever happened.
struct Pager<'a> {
    client: &'a aws_sdk_sqs::Client,
    url: &'a str,
    /// Visible messages when the command started: new arrivals are not waited for.
    target: u64,
    seen: HashSet<String>,
    held: Vec<String>,
    /// A signal: no new receive starts, no new message is worked on.
    interrupted: CancellationToken,
}

impl<'a> Pager<'a> {
    async fn new(
        client: &'a aws_sdk_sqs::Client,
        url: &'a str,
        interrupted: CancellationToken,
    ) -> Result<Self, Failure> {
        let attributes = client
            .get_queue_attributes()
            .queue_url(url)
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

    fn interrupted(&self) -> bool {
        self.interrupted.is_cancelled()
    }

    /// The next page of messages not seen before; `None` once the queue is exhausted or a signal
    /// came. A receive is never dropped half-way: what it returns after a signal is held (and so
    /// handed back), instead of staying invisible for [`HOLD_SECS`].
    async fn next(
        &mut self,
        want: usize,
    ) -> Result<Option<Vec<aws_sdk_sqs::types::Message>>, Failure> {
        let mut fruitless = 0;
        while (self.seen.len() as u64) < self.target && fruitless < 3 && !self.interrupted() {
            let output = self
                .client
                .receive_message()
                .queue_url(self.url)
                .max_number_of_messages(want.clamp(1, 10) as i32)
                .visibility_timeout(HOLD_SECS)
                .wait_time_seconds(1)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
                .send()
                .await
                .map_err(sqs_failure)?;
            let fresh: Vec<_> = output
                .messages
                .unwrap_or_default()
                .into_iter()
                .filter(|m| {
                    let id = m.message_id.clone().unwrap_or_default();
                    self.seen.insert(id)
                })
                .collect();
            if self.interrupted() {
                for m in &fresh {
                    self.hold(m.receipt_handle.as_deref());
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

    fn hold(&mut self, handle: Option<&str>) {
        if let Some(handle) = handle {
            self.held.push(handle.to_owned());
        }
    }

    /// Sends one message's body to `main_url`, then deletes it here: a crash in between
    /// duplicates it, never loses it.
    async fn move_to(&self, main_url: &str, body: &str, handle: &str) -> Result<(), Failure> {
        self.client
            .send_message()
            .queue_url(main_url)
            .message_body(body)
            .send()
            .await
            .map_err(sqs_failure)?;
        self.client
            .delete_message()
            .queue_url(self.url)
            .receipt_handle(handle)
            .send()
            .await
            .map_err(sqs_failure)?;
        Ok(())
    }

    /// Hands every held message back at once; returns how many.
    async fn release(self) -> Result<usize, Failure> {
        for (n, chunk) in self.held.chunks(10).enumerate() {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, handle)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(format!("{n}-{i}"))
                        .receipt_handle(handle)
                        .visibility_timeout(0)
                        .build()
                        .map_err(sqs_failure)
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.client
                .change_message_visibility_batch()
                .queue_url(self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(sqs_failure)?;
        }
        Ok(self.held.len())
    }
}

fn attribute(m: &aws_sdk_sqs::types::Message, name: &str) -> Option<String> {
    m.message_attributes
        .as_ref()
        .and_then(|a| a.get(name))
        .and_then(|v| v.string_value.clone())
}

/// Why the worker dead-lettered a message; one without a reason was moved by SQS's own redrive.
fn reason_of(m: &aws_sdk_sqs::types::Message) -> String {
    attribute(m, "error_reason").unwrap_or_else(|| "max_receive_count".into())
}

/// Lists up to `max` dead-lettered messages without consuming any: each is held while the
/// command pages through the queue and handed back (visibility 0) at the end. SQS has no true
/// peek, so each look raises the message's receive count on the dead-letter queue, which has no
/// redrive policy of its own.
pub async fn list(
    client: &aws_sdk_sqs::Client,
    dlq_url: &str,
    max: usize,
    interrupted: CancellationToken,
) -> Result<Vec<Entry>, Failure> {
    let mut pager = Pager::new(client, dlq_url, interrupted).await?;
    let mut entries = Vec::new();
    let mut result = Ok(());
    while entries.len() < max {
        let page = match pager.next(max - entries.len()).await {
            Ok(Some(page)) => page,
            Ok(None) => break,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        for m in page {
            pager.hold(m.receipt_handle.as_deref());
            if entries.len() >= max {
                continue;
            }
            let sent = m
                .attributes
                .as_ref()
                .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                .and_then(|t| t.parse::<i64>().ok())
                .and_then(DateTime::from_timestamp_millis);
            entries.push(Entry {
                message_id: m.message_id.clone().unwrap_or_default(),
                source_message_id: attribute(&m, "source_message_id"),
                reason: reason_of(&m),
                detail: attribute(&m, "error_detail"),
                key: m.body.as_deref().and_then(first_key),
                age_secs: sent.map(|s| (Utc::now() - s).num_seconds()),
            });
        }
    }
    pager.release().await?;
    result.map(|()| entries)
}

/// What a redrive did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redriven {
    /// Messages moved to the main queue.
    pub moved: usize,
    /// Messages looked at and left in the dead-letter queue, handed back (visible) at the end.
    pub handed_back: usize,
    /// Whether a signal stopped it before the queue was exhausted or `max` reached.
    pub interrupted: bool,
}

/// Moves up to `max` messages (optionally only those with `reason`) back to the main queue, body
/// unchanged. Each is sent before it is deleted, so a crash can duplicate but never lose one
/// (and a signal, which lets the message in hand finish, neither); messages with another reason,
/// or seen after a signal, are held while the command pages and handed back at the end.
pub async fn redrive(
    client: &aws_sdk_sqs::Client,
    dlq_url: &str,
    main_url: &str,
    reason: Option<&str>,
    max: usize,
    interrupted: CancellationToken,
) -> Result<Redriven, Failure> {
    let mut pager = Pager::new(client, dlq_url, interrupted).await?;
    let mut moved = 0;
    let result = redrive_pages(&mut pager, main_url, reason, max, &mut moved).await;
    let interrupted = pager.interrupted();
    let handed_back = pager.release().await?;
    result.map(|()| Redriven {
        moved,
        handed_back,
        interrupted,
    })
}

/// Pages through the dead-letter queue moving what matches, counting into `moved` as it goes so
/// the count stays true when a page fails half-way.
async fn redrive_pages(
    pager: &mut Pager<'_>,
    main_url: &str,
    reason: Option<&str>,
    max: usize,
    moved: &mut usize,
) -> Result<(), Failure> {
    while *moved < max {
        let Some(page) = pager.next(10).await? else {
            break;
        };
        for m in page {
            let (Some(body), Some(handle)) = (m.body.as_deref(), m.receipt_handle.as_deref())
            else {
                continue;
            };
            if *moved >= max || pager.interrupted() || reason.is_some_and(|r| r != reason_of(&m)) {
                pager.hold(Some(handle));
                continue;
            }
            pager.move_to(main_url, body, handle).await?;
            *moved += 1;
        }
    }
    Ok(())
}

/// The `dlq` commands: list (as a table, or JSON) or redrive, printing what was done.
/// A signal ends it with [`Interrupted`] once what was done is printed.
pub async fn execute(command: DlqCommand) -> anyhow::Result<()> {
    // Before anything is held: a signal from here on is handled, never the default exit.
    let interrupted = crate::shutdown::on_signals();
    let sqs = aws::sqs(&aws::load(&config::aws_from_env()).await);
    match command {
        DlqCommand::List { queues, max, json } => {
            let entries = list(
                &sqs,
                &queues.sqs_dead_letter_queue_url,
                max,
                interrupted.clone(),
            )
            .await?;
            print_entries(&entries, json)?;
            if interrupted.is_cancelled() {
                return Err(Interrupted.into());
            }
            Ok(())
        }
        DlqCommand::Redrive {
            queues,
            reason,
            max,
        } => {
            let main_url = queues.main_url()?;
            let dlq_url = &queues.sqs_dead_letter_queue_url;
            let done =
                redrive(&sqs, dlq_url, main_url, reason.as_deref(), max, interrupted).await?;
            println!("redrove {} message(s)", done.moved);
            if done.interrupted {
                println!(
                    "interrupted: {} message(s) looked at and handed back to the dead-letter queue (visible now); run the command again for the rest",
                    done.handed_back
                );
                return Err(Interrupted.into());
            }
            Ok(())
        }
    }
}

fn print_entries(entries: &[Entry], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(entries)?);
        return Ok(());
    }
    println!("{:<20} {:>8}  {:<36}  key", "reason", "age_s", "message_id");
    for e in entries {
        let age = e
            .age_secs
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<20} {:>8}  {:<36}  {}",
            e.reason,
            age,
            e.message_id,
            e.key.as_deref().unwrap_or("-")
        );
    }
    println!("{} message(s)", entries.len());
    Ok(())
}
