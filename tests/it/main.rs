//! Integration tests: one binary, real moto (S3 + SQS) and real PostgreSQL, no mocks.

mod support;

mod batching;
mod browser;
mod chaos;
mod db_credentials;
mod dlq;
mod docs;
mod faults;
mod fixtures;
mod fleet_outage;
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
mod reconcile_hostile;
mod roles;
mod s3_proxy_selftest;
mod scale_in;
mod sqs_brownout;
mod versioned;
mod write_path;
mod zero_read;
