//! datapack-worker: ingests browser uploads into datapacks.
//!
//! The crate is four layers under one composition root. Each layer only uses the ones below it:
//!
//! | layer | what it does |
//! |---|---|
//! | [`intake`] | long-polls SQS for idle slots, settles each message: delete, retry, dead-letter, release |
//! | [`process`] | parses a message, splits keys, fetches and hashes the object, decides a verdict |
//! | [`store`] | PostgreSQL: migrations, the idempotent order-aware write, the group commit |
//! | [`ops`] | health (probes, breakers, pause), metrics, HTTP, logs, task supervision |
//!
//! At the root: [`app`] wires the layers and [`config`] builds the typed settings from the
//! command line ([`cli`]) and environment; [`disposition`] is the failure vocabulary every layer
//! speaks (what a failure means: retry, dead-letter with a reason, skip); [`aws`] builds the SDK
//! clients; [`shutdown`] is the value every wait races; [`secret`] holds what must never print.
//! [`commands`] holds the one-shot commands; [`reference`] renders the configuration reference
//! from the command line's definitions.

#![warn(unreachable_pub)]

pub mod app;
pub mod aws;
pub mod cli;
pub mod commands;
pub mod config;
pub mod disposition;
pub mod intake;
pub mod ops;
pub mod process;
pub mod reference;
pub(crate) mod secret;
pub mod shutdown;
pub mod store;
