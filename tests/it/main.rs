//! Integration tests: one binary, real moto (S3 + SQS) and real PostgreSQL, no mocks.

mod support;

mod ingest;
mod ordering;
