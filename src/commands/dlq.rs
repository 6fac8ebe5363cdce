//! Operating the dead-letter queue: list without consuming, and redrive once the cause is fixed.
//!
//! Both stop cleanly on SIGINT or SIGTERM: the message in hand is finished (sent and deleted, so
//! it is never in both queues), a receive in flight is let finish (SQS hands it messages even if
//! the client has gone) and what it returned is held, every held message is handed back at
//! once, the summary is printed, and the command exits with [`INTERRUPTED_EXIT_CODE`].

use chrono::Utc;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::cli::DlqCommand;
use crate::disposition::Failure;
use crate::intake::dlq::{DeadLetter, Pager};
use crate::process::event::{self, Item, Message};
use crate::{aws, config};

/// Messages asked for per receive while redriving: SQS's most.
const BATCH: usize = 10;

#[derive(Debug, Serialize)]
pub(crate) struct Entry {
    pub(crate) message_id: String,
    pub(crate) source_message_id: Option<String>,
    pub(crate) reason: String,
    pub(crate) detail: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) age_secs: Option<i64>,
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

/// Why the worker dead-lettered a message; one without a reason was moved by SQS's own redrive.
fn reason_of(letter: &DeadLetter) -> String {
    letter
        .reason
        .clone()
        .unwrap_or_else(|| "max_receive_count".into())
}

/// Lists up to `max` dead-lettered messages without consuming any: each is held while the
/// command pages through the queue and handed back (visibility 0) at the end. SQS has no true
/// peek, so each look raises the message's receive count on the dead-letter queue, which has no
/// redrive policy of its own.
pub(crate) async fn list(
    client: &aws_sdk_sqs::Client,
    dlq_url: &str,
    max: usize,
    interrupted: CancellationToken,
) -> Result<Vec<Entry>, Failure> {
    let mut pager = Pager::open(client.clone(), dlq_url.to_owned(), interrupted).await?;
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
        for letter in page {
            pager.hold(&letter);
            if entries.len() >= max {
                continue;
            }
            entries.push(Entry {
                reason: reason_of(&letter),
                key: first_key(&letter.body),
                age_secs: letter.sent_at.map(|s| (Utc::now() - s).num_seconds()),
                message_id: letter.message_id,
                source_message_id: letter.source_message_id,
                detail: letter.detail,
            });
        }
    }
    pager.release().await?;
    result.map(|()| entries)
}

/// What a redrive did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Redriven {
    /// Messages moved to the main queue.
    pub(crate) moved: usize,
    /// Messages looked at and left in the dead-letter queue, handed back (visible) at the end.
    pub(crate) handed_back: usize,
    /// Whether a signal stopped it before the queue was exhausted or `max` reached.
    pub(crate) interrupted: bool,
}

/// Moves up to `max` messages (optionally only those with `reason`) back to the main queue, body
/// unchanged. Each is sent before it is deleted, so a crash can duplicate but never lose one
/// (and a signal, which lets the message in hand finish, neither); messages with another reason,
/// or seen after a signal, are held while the command pages and handed back at the end.
pub(crate) async fn redrive(
    client: &aws_sdk_sqs::Client,
    dlq_url: &str,
    main_url: &str,
    reason: Option<&str>,
    max: usize,
    interrupted: CancellationToken,
) -> Result<Redriven, Failure> {
    let mut pager = Pager::open(client.clone(), dlq_url.to_owned(), interrupted).await?;
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
    pager: &mut Pager,
    main_url: &str,
    reason: Option<&str>,
    max: usize,
    moved: &mut usize,
) -> Result<(), Failure> {
    while *moved < max {
        let Some(page) = pager.next(BATCH).await? else {
            break;
        };
        for letter in page {
            if *moved >= max
                || pager.interrupted()
                || reason.is_some_and(|r| r != reason_of(&letter))
            {
                pager.hold(&letter);
                continue;
            }
            pager.move_to(main_url, &letter).await?;
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
