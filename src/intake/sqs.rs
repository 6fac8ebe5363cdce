//! The seam at the SQS boundary: the calls that receive and settle messages, as one small trait.
//!
//! [`Queue`](crate::intake::queue::Queue) is the real implementation; the pool, the lease, the
//! deleter and the visibility batcher only see this trait, so their handling of SQS's answers
//! can be unit-tested against [`memory::Memory`] without an emulator.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::disposition::{DeadLetterReason, Failure};

/// SQS's most entries per batch call (`DeleteMessageBatch`, `ChangeMessageVisibilityBatch`) and
/// most messages per `ReceiveMessage`.
pub(crate) const BATCH: usize = 10;

/// One call's answer, boxed so the trait can be used as `dyn Sqs` (one allocation per call, next
/// to a network round trip).
pub(crate) type Call<'a, T> = Pin<Box<dyn Future<Output = Result<T, Failure>> + Send + 'a>>;

/// A received message with the attributes the worker uses.
#[derive(Debug, Clone)]
pub struct Received {
    pub(crate) message_id: String,
    pub receipt_handle: String,
    pub body: String,
    pub(crate) receive_count: u32,
    pub(crate) sent_at: Option<DateTime<Utc>>,
    pub(crate) first_received_at: Option<DateTime<Utc>>,
}

/// One entry of a `ChangeMessageVisibilityBatch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VisibilityChange {
    pub(crate) receipt_handle: String,
    pub(crate) timeout: Duration,
}

/// Why a visibility change did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VisibilityError {
    /// The receipt handle no longer holds the message (it expired and was redelivered): a fact
    /// about this message, not about SQS.
    #[error("receipt handle is no longer valid")]
    Lost,
    #[error(transparent)]
    Failed(Failure),
}

impl VisibilityError {
    /// The same answer for another waiter (a failed call is told to every entry of its batch).
    pub(crate) fn copy(&self) -> Self {
        match self {
            Self::Lost => Self::Lost,
            Self::Failed(failure) => Self::Failed(failure.copy()),
        }
    }
}

/// A message on its way to the dead-letter queue: its body goes unchanged, with why it failed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeadLetter<'a> {
    pub(crate) message: &'a Received,
    pub(crate) reason: DeadLetterReason,
    /// A line for whoever reads the dead letter (an operator); truncated when sent.
    pub(crate) detail: &'a str,
}

/// The SQS calls the intake makes. Each is one request (the SDK's own retries aside), so what
/// the worker costs in requests is what its callers make of these.
pub(crate) trait Sqs: Send + Sync {
    /// One long poll for at most `max` messages (1..=[`BATCH`]).
    fn receive(&self, max: usize) -> Call<'_, Vec<Received>>;

    /// One `DeleteMessageBatch` of at most [`BATCH`] handles; answers the handles SQS refused.
    fn delete_batch<'a>(&'a self, receipt_handles: &'a [String]) -> Call<'a, Vec<String>>;

    /// One `ChangeMessageVisibilityBatch` of at most [`BATCH`] changes; answers each entry's
    /// outcome, in order. `Err` only when the call itself failed (no entry was changed).
    fn change_visibility_batch<'a>(
        &'a self,
        changes: &'a [VisibilityChange],
    ) -> Call<'a, Vec<Result<(), VisibilityError>>>;

    /// Sends the message's body, unchanged, to the dead-letter queue with why it failed.
    fn send_dead_letter<'a>(&'a self, letter: DeadLetter<'a>) -> Call<'a, ()>;
}

#[cfg(test)]
pub(crate) mod memory {
    //! An in-memory queue behind the [`Sqs`] seam, for unit tests of what the intake does with
    //! SQS's answers. It is a seam, not a mock of AWS: it imitates none of SQS's behaviour. It
    //! records every call, keeps the last visibility set for each handle, the deleted handles and
    //! the dead letters sent, and answers what the test told it to (refuse every call, refuse
    //! some entries, or call some handles lost); the emulator-backed integration tests cover
    //! SQS's own behaviour.

    use std::collections::{HashMap, HashSet, VecDeque};
    use std::sync::{Mutex, MutexGuard};

    use super::*;
    use crate::disposition::RetryReason;

    /// One call as the queue saw it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Seen {
        Receive(usize),
        DeleteBatch(Vec<String>),
        VisibilityBatch(Vec<VisibilityChange>),
        DeadLetter(String, DeadLetterReason),
    }

    #[derive(Default)]
    pub(crate) struct State {
        pub(crate) calls: Vec<Seen>,
        pub(crate) inbox: VecDeque<Received>,
        /// The last visibility set for each handle.
        pub(crate) visibility: HashMap<String, Duration>,
        pub(crate) deleted: Vec<String>,
        pub(crate) dead_letters: Vec<(String, DeadLetterReason, String)>,
        /// Every call fails (as a refused or unreachable SQS would), recorded all the same.
        pub(crate) refuse_calls: bool,
        /// Only the dead-letter send fails.
        pub(crate) refuse_dead_letters: bool,
        /// Entries refused inside a batch that succeeds.
        pub(crate) refuse_entries: HashSet<String>,
        /// Handles answered "no longer valid".
        pub(crate) lost: HashSet<String>,
    }

    #[derive(Default)]
    pub(crate) struct Memory {
        state: Mutex<State>,
    }

    fn refused() -> Failure {
        Failure::transient(RetryReason::SqsAccessDenied, "refused by the test")
    }

    impl Memory {
        pub(crate) fn state(&self) -> MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|p| p.into_inner())
        }

        pub(crate) fn calls(&self) -> Vec<Seen> {
            self.state().calls.clone()
        }

        /// The visibility batches sent, as the number of entries in each.
        pub(crate) fn visibility_batches(&self) -> Vec<usize> {
            self.calls()
                .iter()
                .filter_map(|c| match c {
                    Seen::VisibilityBatch(changes) => Some(changes.len()),
                    _ => None,
                })
                .collect()
        }

        /// Records `seen`; `Err` when every call is refused.
        fn call(&self, seen: Seen) -> Result<MutexGuard<'_, State>, Failure> {
            let mut state = self.state();
            state.calls.push(seen);
            if state.refuse_calls {
                return Err(refused());
            }
            Ok(state)
        }
    }

    impl Sqs for Memory {
        fn receive(&self, max: usize) -> Call<'_, Vec<Received>> {
            Box::pin(async move {
                let mut state = self.call(Seen::Receive(max))?;
                let n = max.min(state.inbox.len());
                Ok(state.inbox.drain(..n).collect())
            })
        }

        fn delete_batch<'a>(&'a self, handles: &'a [String]) -> Call<'a, Vec<String>> {
            Box::pin(async move {
                let mut state = self.call(Seen::DeleteBatch(handles.to_vec()))?;
                let (refused, deleted): (Vec<String>, Vec<String>) = handles
                    .iter()
                    .cloned()
                    .partition(|h| state.refuse_entries.contains(h));
                state.deleted.extend(deleted);
                Ok(refused)
            })
        }

        fn change_visibility_batch<'a>(
            &'a self,
            changes: &'a [VisibilityChange],
        ) -> Call<'a, Vec<Result<(), VisibilityError>>> {
            Box::pin(async move {
                let mut state = self.call(Seen::VisibilityBatch(changes.to_vec()))?;
                Ok(changes
                    .iter()
                    .map(|change| {
                        let handle = &change.receipt_handle;
                        if state.lost.contains(handle) {
                            Err(VisibilityError::Lost)
                        } else if state.refuse_entries.contains(handle) {
                            Err(VisibilityError::Failed(refused()))
                        } else {
                            state.visibility.insert(handle.clone(), change.timeout);
                            Ok(())
                        }
                    })
                    .collect())
            })
        }

        fn send_dead_letter<'a>(&'a self, letter: DeadLetter<'a>) -> Call<'a, ()> {
            Box::pin(async move {
                let DeadLetter {
                    message,
                    reason,
                    detail,
                } = letter;
                let seen = Seen::DeadLetter(message.message_id.clone(), reason);
                let mut state = self.call(seen)?;
                if state.refuse_dead_letters {
                    return Err(refused());
                }
                let sent = (message.message_id.clone(), reason, detail.to_owned());
                state.dead_letters.push(sent);
                Ok(())
            })
        }
    }

    /// A received message `id` (its receipt handle is `receipt-{id}`), delivered `receive_count`
    /// times.
    pub(crate) fn message(id: &str, receive_count: u32) -> Received {
        Received {
            message_id: id.to_owned(),
            receipt_handle: format!("receipt-{id}"),
            body: String::new(),
            receive_count,
            sent_at: None,
            first_received_at: None,
        }
    }
}
