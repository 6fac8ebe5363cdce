//! Test support: a moto server, a database per test, a bucket and queues per test, workers
//! (in-process or the real binary), reading scrapes, and waiting on conditions with a deadline.

pub mod db;
pub mod emulator;
pub mod listen;
pub mod moto;
pub mod own_pg;
pub mod proxy;
pub mod reconcile_run;
pub mod rig;
pub mod s3_proxy;
pub mod scrape;
pub mod stack;
pub mod versioning;
pub mod wait;
pub mod worker;

pub use db::TestDb;
pub use moto::Moto;
pub use stack::Stack;
pub use wait::wait_until;
pub use worker::{BinaryWorker, Launch, TestWorker};

/// A stack of its own on the shared moto, and a fresh database holding datapack `datapack`.
pub async fn setup(datapack: &str) -> (Stack, TestDb) {
    let stack = Stack::new(&Moto::shared().endpoint).await;
    let db = TestDb::new().await;
    db.add_datapack(datapack).await;
    (stack, db)
}

/// Whether `v` has a UUID's shape (five groups of hex digits), as SQS message ids do.
pub fn looks_like_uuid(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_hexdigit()))
}
