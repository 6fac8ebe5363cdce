//! Test support: a moto server, a database per test, a bucket and queues per test, workers
//! (in-process or the real binary), and waiting on conditions with a deadline.

#![allow(dead_code)]

pub mod db;
pub mod moto;
pub mod proxy;
pub mod s3_proxy;
pub mod stack;
pub mod wait;
pub mod worker;

pub use db::TestDb;
pub use moto::Moto;
pub use stack::Stack;
pub use wait::wait_until;
pub use worker::{BinaryWorker, TestWorker};
