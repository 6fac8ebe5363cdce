//! The intake layer: everything that talks to SQS. [`pool`] runs the pollers, which only ask
//! for as many messages as there are idle slots, and gives each message a [`lease`] (receipt,
//! slot, heartbeat and settlement in one value) that runs it through the process layer;
//! [`queue`] is the SQS client (receive, visibility, the dead-letter send, depth), and
//! [`deleter`] batches the deletes of settled messages; [`depth`] samples the queues' depth and
//! the oldest message's age.

pub(crate) mod deleter;
pub(crate) mod depth;
mod lease;
pub mod pool;
pub mod queue;
