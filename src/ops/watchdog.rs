//! Supervision: every long-lived task of the process is spawned here and watched in one place.
//!
//! Pollers, writers, the deleter, probers, the sampler and the HTTP server each run for the
//! life of the process. If one ends or panics before shutdown was asked for, the process can no
//! longer make progress (a dead writer makes every later message fail), so the watchdog logs the
//! cause, marks the process unhealthy (`/healthz` answers 503) and fires [`Watchdog::fatal`]:
//! the application releases what it holds and exits non-zero, and the orchestrator restarts it.
//! Work on one message is not supervised here: its failures, panics included, are facts about
//! that message (see `worker`).

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ops::health::Health;

#[derive(Clone)]
pub struct Watchdog {
    health: Health,
    fatal: CancellationToken,
    stopping: CancellationToken,
    cause: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Watchdog {
    pub fn new(health: Health) -> Self {
        Self {
            health,
            fatal: CancellationToken::new(),
            stopping: CancellationToken::new(),
            cause: Default::default(),
        }
    }

    /// Fired when a supervised task ended unexpectedly.
    pub fn fatal(&self) -> &CancellationToken {
        &self.fatal
    }

    /// Which task ended and why, once [`Watchdog::fatal`] fired.
    pub(crate) fn cause(&self) -> Option<String> {
        self.cause
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// From now on tasks are expected to end: shutdown has begun.
    pub fn stopping(&self) {
        self.stopping.cancel();
    }

    /// Spawns `task` under supervision. The returned handle finishes when the task does.
    pub(crate) fn spawn<F>(&self, name: &'static str, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let inner = tokio::spawn(task);
        self.watch(name, inner)
    }

    /// Watches a task spawned elsewhere (for instance on another runtime's handle).
    pub(crate) fn watch(&self, name: &'static str, inner: JoinHandle<()>) -> JoinHandle<()> {
        let watchdog = self.clone();
        tokio::spawn(async move {
            let ended = inner.await;
            if watchdog.stopping.is_cancelled() {
                return;
            }
            let cause = match ended {
                Ok(()) => "ended while the process was running".to_owned(),
                Err(e) if e.is_panic() => format!(
                    "panicked: {}",
                    crate::disposition::panic_text(e.into_panic().as_ref())
                ),
                Err(e) => format!("was cancelled: {e}"),
            };
            watchdog.fail(name, &cause);
        })
    }

    fn fail(&self, name: &'static str, cause: &str) {
        tracing::error!(
            task = name,
            cause,
            "a supervised task stopped: the process cannot make progress; releasing what it holds and exiting"
        );
        self.health.fail(name, cause);
        self.cause
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get_or_insert_with(|| format!("{name} {cause}"));
        self.fatal.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_fires_fatal_and_marks_health() {
        let health = Health::new();
        let watchdog = Watchdog::new(health.clone());
        let handle = watchdog.spawn("writer", async { panic!("boom") });
        handle.await.unwrap();
        assert!(watchdog.fatal().is_cancelled());
        assert!(watchdog.cause().unwrap().contains("boom"));
        assert!(health.failure().unwrap().starts_with("writer"));
    }

    #[tokio::test]
    async fn a_task_ending_during_shutdown_is_expected() {
        let health = Health::new();
        let watchdog = Watchdog::new(health.clone());
        watchdog.stopping();
        watchdog.spawn("poller", async {}).await.unwrap();
        assert!(!watchdog.fatal().is_cancelled());
        assert!(health.failure().is_none());
    }

    #[tokio::test]
    async fn a_task_ending_early_is_fatal() {
        let watchdog = Watchdog::new(Health::new());
        watchdog.spawn("deleter", async {}).await.unwrap();
        assert!(watchdog.fatal().is_cancelled());
        assert!(watchdog.cause().unwrap().contains("deleter ended"));
    }
}
