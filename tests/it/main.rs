//! Integration tests: one binary, real moto (S3 + SQS) and real PostgreSQL, no mocks.

mod support;

mod chaos;
mod dlq;
mod faults;
mod ingest;
mod observability;
mod ordering;
mod poison;
mod process;
mod ranged;
mod roles;
