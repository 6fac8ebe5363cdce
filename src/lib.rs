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
//! clients; [`shutdown`] is the value every wait races; `secret` holds what must never print.
//! [`commands`] holds the one-shot commands; [`reference`](mod@reference) renders the configuration reference
//! from the command line's definitions.
//!
//! ## The public surface
//!
//! What is `pub` here is what a user outside the crate needs, and nothing more: every item was
//! narrowed to `pub(crate)` and only what the binary, the tests, the examples or the fuzz targets
//! failed to compile without was given back. `unreachable_pub` (below) warns when that slips.
//!
//! - **the binary** (`main.rs`): [`cli`], [`app::run`], [`commands`] (`dlq`, `presign`,
//!   `reconcile`), [`config`], [`ops::telemetry`], [`shutdown`];
//! - **embedders and the integration tests**: [`app::run_supervised`] with [`app::ExtraTask`],
//!   [`aws::load`] and the SDK clients, the [`process`] parts a test drives alone
//!   ([`process::event`], [`process::key`], [`process::metadata`], [`process::fetch`],
//!   [`process::pipeline`]), the [`store`] write path ([`store::migrate`], [`store::writer`],
//!   [`store::write`] and its ordering rules) and its notification contract ([`store::notify`]),
//!   [`intake::queue::Queue`], [`ops::health`], [`ops::http`]'s limits, [`ops::watchdog`],
//!   [`reference`](mod@reference);
//! - **the benchmark examples**: the same write path and queue (`examples/db_write.rs`,
//!   `examples/ceiling.rs`);
//! - **the fuzz targets**: [`process::event::parse`], [`process::key`],
//!   [`store::write::sequencer_cmp`], [`process::metadata`]'s RFC 2047 decoding.
//!
//! Everything else (the lease, the pool, the settle verdicts, the metrics, the connection
//! manager, reconcile's parts, the secrets) is the crate's own.

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
