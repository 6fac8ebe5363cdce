//! The process layer: what one message means and what it asks the store to record. The
//! [`pipeline`] parses the body ([`event`]), splits each key ([`key`]), fetches and hashes the
//! announced version ([`fetch`]), filters on the upload's [`metadata`], and returns a verdict.
//! Nothing here talks to SQS; the store is reached only through the group-commit writer.

pub mod event;
pub mod fetch;
pub mod key;
pub mod metadata;
pub mod pipeline;

#[cfg(test)]
mod fuzz_regressions;
