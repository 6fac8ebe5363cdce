//! datapack-worker: ingests browser uploads into datapacks.
//!
//! How it fits together: [`worker`] long-polls SQS with pollers that only ask for as many
//! messages as there are idle slots; each message goes through the [`pipeline`], which parses
//! it ([`event`]), splits the key ([`key`]), fetches and hashes the announced object version
//! ([`object`]), and hands its rows to the group-commit [`writer`], which applies them with
//! [`store`] in one idempotent transaction. The pipeline returns a verdict; the worker settles
//! it on the queue ([`queue`]): delete after commit, dead-letter with a reason, or retry after a
//! backoff. [`disposition`] is the failure taxonomy that decides which; [`health`] pauses
//! receiving while a dependency is down. [`metrics`] and [`http`] expose what happens.

pub mod app;
pub mod aws;
pub mod cli;
pub mod config;
pub mod disposition;
pub mod dlq;
pub mod event;
pub mod health;
pub mod http;
pub mod key;
pub mod metadata;
pub mod metrics;
pub mod object;
pub mod pipeline;
pub mod presign;
pub mod queue;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod watchdog;
pub mod worker;
pub mod writer;

#[cfg(test)]
mod fuzz_regressions;
