//! Dependency state: who is down, the pause it causes, and the probes that end it.
//!
//! A failure that would hit every message (a dependency unreachable or misconfigured) marks its
//! dependency down. While any is down the pollers stop receiving, so an outage burns no receive
//! counts and dead-letters nothing; a prober per dependency retries with jittered backoff and
//! marks it up again, and receiving resumes by itself. At start every dependency is unproven, so
//! the same probes gate the first receive.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::disposition::{Dependency, Failure};

pub type Probe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), Failure>> + Send>> + Send + Sync>;

/// Wraps an async closure as a [`Probe`].
pub fn probe<F, Fut>(f: F) -> Probe
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Failure>> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    /// Since when each down dependency has been down.
    down: Mutex<HashMap<Dependency, Instant>>,
    /// Number of dependencies down; pollers wait for zero.
    down_count: watch::Sender<usize>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Every dependency starts down (unproven) until its first probe passes.
    pub fn new() -> Self {
        let now = Instant::now();
        let down: HashMap<_, _> = Dependency::ALL.iter().map(|d| (*d, now)).collect();
        for d in Dependency::ALL {
            crate::metrics::dependency(d, false);
        }
        metrics::gauge!(crate::metrics::PAUSED).set(1.0);
        let (down_count, _) = watch::channel(down.len());
        Self {
            inner: Arc::new(Inner {
                down: Mutex::new(down),
                down_count,
            }),
        }
    }

    pub fn is_ready(&self) -> bool {
        *self.inner.down_count.borrow() == 0
    }

    /// Which part of the process can no longer make progress, if any. // stub
    pub fn failure(&self) -> Option<String> {
        None // stub
    }

    pub fn down(&self) -> Vec<Dependency> {
        let down = self.inner.down.lock().expect("health lock");
        Dependency::ALL
            .into_iter()
            .filter(|d| down.contains_key(d))
            .collect()
    }

    pub fn report_down(&self, dependency: Dependency, failure: &Failure) {
        let mut down = self.inner.down.lock().expect("health lock");
        if down.contains_key(&dependency) {
            return;
        }
        down.insert(dependency, Instant::now());
        tracing::error!(
            dependency = dependency.as_str(),
            error = %crate::disposition::chain(failure),
            "dependency down: pausing receives until it answers again"
        );
        crate::metrics::dependency(dependency, false);
        metrics::gauge!(crate::metrics::PAUSED).set(1.0);
        self.inner.down_count.send_replace(down.len());
    }

    fn report_up(&self, dependency: Dependency) {
        let mut down = self.inner.down.lock().expect("health lock");
        if let Some(since) = down.remove(&dependency) {
            crate::metrics::paused_for(dependency, since.elapsed());
            crate::metrics::dependency(dependency, true);
            tracing::info!(
                dependency = dependency.as_str(),
                down_for_secs = since.elapsed().as_secs_f64(),
                "dependency up"
            );
            if down.is_empty() {
                metrics::gauge!(crate::metrics::PAUSED).set(0.0);
            }
            self.inner.down_count.send_replace(down.len());
        }
    }

    /// Waits until every dependency is up. Returns false if shutdown came first.
    pub async fn wait_ready(&self, shutdown: &CancellationToken) -> bool {
        let mut count = self.inner.down_count.subscribe();
        tokio::select! {
            ready = count.wait_for(|n| *n == 0) => ready.is_ok(),
            _ = shutdown.cancelled() => false,
        }
    }

    async fn wait_down(&self, dependency: Dependency, shutdown: &CancellationToken) -> bool {
        let mut count = self.inner.down_count.subscribe();
        loop {
            if self
                .inner
                .down
                .lock()
                .expect("health lock")
                .contains_key(&dependency)
            {
                return true;
            }
            tokio::select! {
                changed = count.changed() => if changed.is_err() { return false },
                _ = shutdown.cancelled() => return false,
            }
        }
    }

    /// Probes one dependency whenever it is down, with jittered exponential backoff, until
    /// shutdown. Every wait is raced against shutdown.
    pub async fn run_prober(
        self,
        dependency: Dependency,
        probe: Probe,
        max_delay: Duration,
        shutdown: CancellationToken,
    ) {
        while self.wait_down(dependency, &shutdown).await {
            let mut delays = ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(max_delay)
                .with_jitter()
                .without_max_times()
                .build();
            loop {
                match probe().await {
                    Ok(()) => {
                        self.report_up(dependency);
                        break;
                    }
                    Err(failure) => {
                        tracing::debug!(dependency = dependency.as_str(), error = %crate::disposition::chain(&failure), "probe failed");
                    }
                }
                let delay = delays.next().unwrap_or(max_delay);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}
