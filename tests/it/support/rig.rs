//! The fault rig: a stack, a database and a proxy in front of each dependency, uploads with the
//! checksums they must be recorded with, and the check that nothing was lost or recorded twice.

use std::collections::HashMap;
use std::time::Duration;

use super::db::sha256_hex;
use super::proxy::{Proxy, url_addr, url_via};
use super::{Launch, Moto, Stack, TestDb, TestWorker, setup, wait_until};

/// A stack, a database, and a proxy in front of each dependency.
pub struct Rig {
    pub stack: Stack,
    pub db: TestDb,
    pub db_proxy: Proxy,
    pub moto_proxy: Proxy,
    /// key → sha256 of every upload made.
    pub expected: HashMap<String, String>,
}

impl Rig {
    pub async fn new() -> Rig {
        let (stack, db) = setup("dp-1").await;
        let db_proxy = Proxy::start(url_addr(&db.url)).await;
        let moto_proxy = Proxy::start(Moto::shared().addr).await;
        Rig {
            stack,
            db,
            db_proxy,
            moto_proxy,
            expected: HashMap::new(),
        }
    }

    /// An in-process worker whose database, S3 and SQS traffic all go through the proxies.
    pub async fn worker(&self, extra: &[&str]) -> TestWorker {
        self.launch(&self.moto_proxy.endpoint(), extra)
            .in_process()
            .await
    }

    /// A worker whose database traffic goes through its proxy, and S3 and SQS at `endpoint`.
    pub fn launch(&self, endpoint: &str, extra: &[&str]) -> Launch<'_> {
        let db_url = url_via(&self.db.url, self.db_proxy.addr);
        let mut extra = extra.to_vec();
        extra.extend(["--database-url", &db_url]);
        Launch::new(&self.stack, &self.db, &extra).via(endpoint)
    }

    /// Uploads one small, distinct object straight to moto (the browser is not behind the proxy).
    pub async fn upload(&mut self, n: usize) {
        let key = format!("dp-1/faults/{n:05}.txt");
        let body = format!("upload {n} of {}", self.stack.bucket);
        self.stack.put(&key, body.as_bytes()).await;
        self.expected.insert(key, sha256_hex(body.as_bytes()));
    }

    /// Uploads objects `numbers`, one after the other.
    pub async fn uploads(&mut self, numbers: std::ops::Range<usize>) {
        for n in numbers {
            self.upload(n).await;
        }
    }

    /// Waits until every upload has a row and the queue is empty, then checks the promise.
    pub async fn assert_nothing_lost(&self, deadline: Duration) {
        self.assert_recorded(deadline).await;
        let letters = self.stack.take_dead_letters().await;
        assert!(letters.is_empty(), "dead-lettered: {letters:?}");
    }

    /// The same, except for `count` dead letters, each with `reason`; returns them.
    pub async fn assert_nothing_lost_but_dead_letters(
        &self,
        deadline: Duration,
        count: usize,
        reason: &str,
    ) -> Vec<(String, HashMap<String, String>)> {
        self.assert_recorded(deadline).await;
        let all = self.stack.take_dead_letters().await;
        // Every copy carries the worker's reason: one moved by SQS's own redrive would not.
        for (_, attributes) in &all {
            assert_eq!(
                attributes.get("error_reason").map(String::as_str),
                Some(reason),
                "{all:?}"
            );
        }
        // Sending a dead letter is at-least-once (an SDK retry of a send that did land makes a
        // second copy, as the docs say): copies of one message share its `source_message_id`.
        let mut seen = std::collections::HashSet::new();
        let letters: Vec<_> = all
            .iter()
            .filter(|(_, attributes)| seen.insert(attributes.get("source_message_id").cloned()))
            .cloned()
            .collect();
        assert_eq!(letters.len(), count, "dead letters: {all:?}");
        letters
    }

    /// Every upload has exactly one live row with its sha256, and the queue is empty.
    pub async fn assert_recorded(&self, deadline: Duration) {
        let want = self.expected.len() as i64;
        wait_until(
            &format!("{want} rows and an empty queue"),
            deadline,
            || async {
                (self.db.count().await >= want && self.stack.is_drained().await).then_some(())
            },
        )
        .await;
        let rows = self.db.rows().await;
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for row in &rows {
            *seen.entry(row.object_key.as_str()).or_default() += 1;
            let sha = self
                .expected
                .get(&row.object_key)
                .unwrap_or_else(|| panic!("a row nobody uploaded: {}", row.object_key));
            assert_eq!(&row.sha256, sha, "sha256 of {}", row.object_key);
            assert!(!row.deleted, "{} is live", row.object_key);
        }
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "recorded more than once: {twice:?}");
        let lost: Vec<_> = self
            .expected
            .keys()
            .filter(|k| !seen.contains_key(k.as_str()))
            .collect();
        assert!(lost.is_empty(), "lost uploads: {lost:?}");
    }
}

/// The status of `/readyz`, or `None` if the endpoint does not answer.
pub async fn readyz(worker: &TestWorker) -> Option<u16> {
    worker.http.status("/readyz").await
}

/// Waits until `/readyz` answers `status`.
pub async fn wait_ready(worker: &TestWorker, status: u16, what: &str, deadline: Duration) {
    wait_until(what, deadline, || async {
        (readyz(worker).await == Some(status)).then_some(())
    })
    .await;
}
