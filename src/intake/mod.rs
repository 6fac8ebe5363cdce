//! The intake layer: everything that talks to SQS. [`pool`] runs the pollers, which only ask
//! for as many messages as there are idle slots, and gives each message a lease (receipt, slot,
//! heartbeat and settlement in one value) that runs it through the process layer; what becomes
//! of a message is decided apart from carrying it out (`settle`, pure). The SQS calls go through
//! one small seam (`sqs`), which [`queue`] (the SQS client: receive, visibility, the dead-letter
//! send, depth) implements; the deleter and the visibility batcher gather the settling calls
//! into batches of ten. [`dlq`] pages through the dead-letter queue for the `dlq` commands, and
//! [`depth`] samples the queues' depth and the oldest message's age; [`probe`] reads the queue's
//! settings at start and probes SQS for the health of the fleet.

mod batch;
mod deleter;
pub(crate) mod depth;
pub(crate) mod dlq;
mod lease;
pub(crate) mod pool;
pub(crate) mod probe;
pub mod queue;
mod settle;
mod sqs;
mod visibility;
