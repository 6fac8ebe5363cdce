//! The process layer: what one message means and what it asks the store to record. The
//! [`pipeline`] parses the body ([`event`]), splits each key ([`key`]), fetches and hashes the
//! announced version ([`fetch`], large objects in parallel [`ranged`] parts, both reading bodies
//! through [`body`]; or takes S3's trusted SHA-256 from HeadObject, [`checksum`]), filters on
//! the upload's [`metadata`], and returns a verdict; for a version's deletion it asks S3 what the key shows now ([`versions`]).
//! [`canary`] remembers objects for S3's deep probe.
//! Nothing here talks to SQS; the store is reached only through the group-commit writer.

pub(crate) mod body;
pub(crate) mod canary;
pub(crate) mod checksum;
pub mod event;
pub mod fetch;
pub mod key;
pub mod metadata;
pub mod pipeline;
pub(crate) mod ranged;
pub(crate) mod versions;

#[cfg(test)]
mod fuzz_regressions;
