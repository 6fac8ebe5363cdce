//! Integration tests: one binary, real moto (S3 + SQS) and real PostgreSQL, no mocks.

mod support;

mod browser;
mod chaos;
mod dlq;
mod faults;
mod fixtures;
mod http_limits;
mod ingest;
mod isolation;
mod logs;
mod notify;
mod observability;
mod ordering;
mod poison;
mod presign_sigv4;
mod process;
mod ranged;
mod reconcile;
mod roles;
mod s3_proxy_selftest;
mod versioned;
mod zero_read;
