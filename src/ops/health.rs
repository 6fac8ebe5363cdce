//! Dependency state: who is down, the probes that decide it, the breakers that call for them,
//! and whether the process itself can still make progress.
//!
//! The rule: **only a probe declares a dependency down.** A failure met while working on one
//! message is a fact about that message; the worker asks for a fresh probe ([`Health::confirm`])
//! before it charges the message an attempt. If the probe fails too, the dependency is down:
//! receiving pauses (an outage burns no receive counts and dead-letters nothing), and a prober
//! retries with jittered backoff until it answers again.
//!
//! A probe alone cannot see a brownout where the dependency answers its probe but refuses the
//! real work (S3 answers HeadBucket but every GetObject is denied). A [`Breaker`] per dependency
//! watches the outcomes of the real work across *different* objects; when most recent ones fail
//! it trips, which asks for a probe in its deep form (for S3: a real GetObject of an object that
//! was readable before; for SQS: a delete and a visibility change, the calls that settle
//! messages, which GetQueueAttributes passing says nothing about). At start every dependency is
//! unproven, so the same probes gate the first receive.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::disposition::{Dependency, Failure, RetryReason};

pub(crate) type Probe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), Failure>> + Send>> + Send + Sync>;

/// Wraps an async closure as a [`Probe`].
pub(crate) fn probe<F, Fut>(f: F) -> Probe
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Failure>> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// A probe that has not answered by then counts as failed: a dependency that needs longer for
/// HeadBucket or `SELECT 1` cannot serve work either, and a message waits on the answer.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a fresh probe said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Up,
    Down,
}

/// When a breaker trips: at least `min_failed_identities` different objects (or batches, or
/// messages) failed among the last `window` outcomes seen within `horizon`, and failures are
/// the majority of them. One bad object can never trip it, however often it is retried.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BreakerSettings {
    pub(crate) window: usize,
    pub(crate) horizon: Duration,
    pub(crate) min_failed_identities: usize,
}

impl BreakerSettings {
    /// The documented thresholds (docs/operating.md, failure taxonomy).
    pub(crate) const fn for_dependency(dependency: Dependency) -> Self {
        match dependency {
            // Objects: five different keys failing, most of the last twenty fetches, in a minute.
            Dependency::S3 => Self {
                window: 20,
                horizon: Duration::from_secs(60),
                min_failed_identities: 5,
            },
            // Batches and SQS calls each serve many messages: three failing is already telling.
            Dependency::Postgres | Dependency::Sqs => Self {
                window: 10,
                horizon: Duration::from_secs(60),
                min_failed_identities: 3,
            },
        }
    }
}

/// Recent outcomes of real work against one dependency.
#[derive(Debug)]
pub(crate) struct Breaker {
    settings: BreakerSettings,
    outcomes: VecDeque<(Instant, String, bool)>,
    tripped: bool,
}

impl Breaker {
    pub(crate) fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            outcomes: VecDeque::with_capacity(settings.window),
            tripped: false,
        }
    }

    /// Adds one outcome; returns true when this outcome trips the breaker.
    pub(crate) fn record(&mut self, identity: &str, ok: bool, now: Instant) -> bool {
        self.outcomes.push_back((now, identity.to_owned(), ok));
        while self.outcomes.len() > self.settings.window
            || self
                .outcomes
                .front()
                .is_some_and(|(at, ..)| now.duration_since(*at) > self.settings.horizon)
        {
            self.outcomes.pop_front();
        }
        if self.tripped || ok {
            return false;
        }
        let failed: Vec<&str> = self
            .outcomes
            .iter()
            .filter(|(_, _, ok)| !ok)
            .map(|(_, id, _)| id.as_str())
            .collect();
        let distinct: HashSet<&str> = failed.iter().copied().collect();
        self.tripped = distinct.len() >= self.settings.min_failed_identities
            && failed.len() * 2 > self.outcomes.len();
        self.tripped
    }

    pub(crate) fn tripped(&self) -> bool {
        self.tripped
    }

    /// A probe in its deep form passed: the failures were about the objects, start over.
    pub(crate) fn reset(&mut self) {
        self.outcomes.clear();
        self.tripped = false;
    }
}

struct State {
    /// Since when the dependency has been down (unproven counts as down).
    down_since: Option<Instant>,
    /// Time spent down in earlier, closed pauses (the pause clock: `paused` adds the open one).
    paused: Duration,
    /// Probe requests: bumped by [`Health::confirm`] and by a tripping breaker. A probe started
    /// at generation `g` answers every request up to `g`, and no request made after it started.
    requested: u64,
    finished: u64,
    last_up: bool,
    breaker: Breaker,
    /// Why the last failed probe failed, while down: logged once per change, not per probe.
    cause: Option<String>,
}

#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    states: Mutex<HashMap<Dependency, State>>,
    /// Bumped on every change; waiters re-read the state under the lock.
    changed: watch::Sender<u64>,
    /// Set once a part of the process can no longer make progress (a supervised task ended).
    failure: Mutex<Option<String>>,
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
        let states = Dependency::ALL
            .iter()
            .map(|d| {
                (
                    *d,
                    State {
                        down_since: Some(now),
                        paused: Duration::ZERO,
                        requested: 0,
                        finished: 0,
                        last_up: false,
                        breaker: Breaker::new(BreakerSettings::for_dependency(*d)),
                        cause: None,
                    },
                )
            })
            .collect();
        for d in Dependency::ALL {
            crate::ops::metrics::dependency(d, false);
        }
        crate::ops::metrics::paused(true);
        let (changed, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                states: Mutex::new(states),
                changed,
                failure: Mutex::new(None),
            }),
        }
    }

    fn states(&self) -> MutexGuard<'_, HashMap<Dependency, State>> {
        // A panic while holding this lock cannot leave the map half-written (every update is a
        // few field stores), so a poisoned lock is still the truth.
        self.inner
            .states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn notify(&self) {
        self.inner.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.states().values().all(|s| s.down_since.is_none())
    }

    pub(crate) fn down(&self) -> Vec<Dependency> {
        let states = self.states();
        Dependency::ALL
            .into_iter()
            .filter(|d| states.get(d).is_some_and(|s| s.down_since.is_some()))
            .collect()
    }

    /// Records that a part of the process can no longer make progress; `/healthz` reports it.
    pub(crate) fn fail(&self, part: &str, cause: &str) {
        let mut failure = self
            .inner
            .failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        failure.get_or_insert_with(|| format!("{part}: {cause}"));
    }

    /// Which part of the process can no longer make progress, if any.
    pub(crate) fn failure(&self) -> Option<String> {
        self.inner
            .failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Feeds the dependency's breaker with the outcome of real work on `identity` (an object, a
    /// batch, a message). A trip asks for a probe at once.
    pub(crate) fn observe(&self, dependency: Dependency, identity: &str, ok: bool) {
        let tripped = {
            let mut states = self.states();
            let Some(state) = states.get_mut(&dependency) else {
                return;
            };
            let tripped = state.breaker.record(identity, ok, Instant::now());
            if tripped {
                state.requested += 1;
            }
            tripped
        };
        if tripped {
            tracing::warn!(
                dependency = dependency.as_str(),
                "most recent work against this dependency failed across different objects: \
                 probing it in depth"
            );
            self.notify();
        }
    }

    /// Feeds the SQS breaker with the answer to a call that settles messages (a delete, a
    /// visibility change) made for `identity` (a message, or a delete batch). Refusals met while
    /// the probe's GetQueueAttributes passes are a brownout only these calls can show. A
    /// throttle is backpressure, not a failure, and says nothing either way; an answer about the
    /// message itself (its receipt handle expired) is not a failure of SQS.
    pub(crate) fn observe_sqs(&self, identity: &str, outcome: Result<(), &Failure>) {
        match outcome {
            Ok(()) => self.observe(Dependency::Sqs, identity, true),
            Err(Failure::Transient {
                reason: RetryReason::SqsThrottled,
                ..
            }) => {}
            Err(failure) if failure.dependency() == Some(Dependency::Sqs) => {
                self.observe(Dependency::Sqs, identity, false)
            }
            Err(_) => {}
        }
    }

    /// Whether the dependency's breaker has tripped and no deep probe has passed since.
    pub(crate) fn tripped(&self, dependency: Dependency) -> bool {
        self.states()
            .get(&dependency)
            .is_some_and(|s| s.breaker.tripped())
    }

    /// Asks for a probe that starts after this call and waits for its answer. A dependency
    /// already down answers `Down` at once. `None` if `cancel` fired first.
    pub(crate) async fn confirm(
        &self,
        dependency: Dependency,
        cancel: &CancellationToken,
    ) -> Option<Verdict> {
        let target = {
            let mut states = self.states();
            let state = states.get_mut(&dependency)?;
            if state.down_since.is_some() {
                return Some(Verdict::Down);
            }
            state.requested += 1;
            state.requested
        };
        let mut changed = self.inner.changed.subscribe();
        self.notify();
        loop {
            {
                let states = self.states();
                let state = states.get(&dependency)?;
                if state.down_since.is_some() {
                    return Some(Verdict::Down);
                }
                if state.finished >= target {
                    return Some(if state.last_up {
                        Verdict::Up
                    } else {
                        Verdict::Down
                    });
                }
            }
            tokio::select! {
                c = changed.changed() => if c.is_err() { return None },
                _ = cancel.cancelled() => return None,
            }
        }
    }

    /// A failed probe: logged (with its cause, at warn) when the dependency goes down and when
    /// the cause changes while it stays down, never once per probe.
    fn report_down(&self, dependency: Dependency, failure: &Failure) {
        let cause = crate::disposition::chain(failure);
        let mut states = self.states();
        let Some(state) = states.get_mut(&dependency) else {
            return;
        };
        if state.cause.as_deref() == Some(cause.as_str()) {
            return;
        }
        let newly = state.cause.replace(cause.clone()).is_none();
        state.down_since.get_or_insert_with(Instant::now);
        drop(states);
        if newly {
            tracing::warn!(
                dependency = dependency.as_str(),
                error = %cause,
                "dependency down (its probe failed): pausing receives until it answers again"
            );
        } else {
            tracing::warn!(
                dependency = dependency.as_str(),
                error = %cause,
                "dependency still down, for another cause: receives stay paused"
            );
        }
        crate::ops::metrics::dependency(dependency, false);
        crate::ops::metrics::paused(true);
    }

    fn report_up(&self, dependency: Dependency) {
        let mut states = self.states();
        let Some(state) = states.get_mut(&dependency) else {
            return;
        };
        let Some(since) = state.down_since.take() else {
            return;
        };
        let was_failing = state.cause.take().is_some();
        state.paused += since.elapsed();
        let all_up = states.values().all(|s| s.down_since.is_none());
        drop(states);
        crate::ops::metrics::dependency(dependency, true);
        if was_failing {
            tracing::info!(
                dependency = dependency.as_str(),
                down_for_secs = since.elapsed().as_secs_f64(),
                "dependency up again"
            );
        } else {
            tracing::info!(dependency = dependency.as_str(), "dependency up");
        }
        if all_up {
            crate::ops::metrics::paused(false);
        }
    }

    /// Time each dependency has kept receiving paused, the open pause included: grows while it
    /// is down, never goes backwards.
    pub(crate) fn paused(&self) -> Vec<(Dependency, Duration)> {
        let states = self.states();
        Dependency::ALL
            .iter()
            .filter_map(|d| {
                let state = states.get(d)?;
                let open = state.down_since.map(|s| s.elapsed()).unwrap_or_default();
                Some((*d, state.paused + open))
            })
            .collect()
    }

    /// Waits until every dependency is up. Returns false if shutdown came first.
    pub(crate) async fn wait_ready(&self, shutdown: &CancellationToken) -> bool {
        let mut changed = self.inner.changed.subscribe();
        loop {
            if self.is_ready() {
                return true;
            }
            tokio::select! {
                c = changed.changed() => if c.is_err() { return false },
                _ = shutdown.cancelled() => return false,
            }
        }
    }

    /// Waits until the dependency is down or a probe was asked for; returns the generation the
    /// next probe answers for, or `None` on shutdown.
    async fn wait_for_work(
        &self,
        dependency: Dependency,
        shutdown: &CancellationToken,
    ) -> Option<u64> {
        let mut changed = self.inner.changed.subscribe();
        loop {
            {
                let states = self.states();
                let state = states.get(&dependency)?;
                if state.down_since.is_some() || state.requested > state.finished {
                    return Some(state.requested);
                }
            }
            tokio::select! {
                c = changed.changed() => if c.is_err() { return None },
                _ = shutdown.cancelled() => return None,
            }
        }
    }

    /// Probes one dependency whenever it is down or a probe was asked for, until shutdown. While
    /// it is down, probes repeat with jittered exponential backoff. Every wait is raced against
    /// shutdown.
    pub(crate) async fn run_prober(
        self,
        dependency: Dependency,
        probe: Probe,
        max_delay: Duration,
        shutdown: CancellationToken,
    ) {
        let new_delays = || {
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(max_delay)
                .with_jitter()
                .without_max_times()
                .build()
        };
        let mut delays = new_delays();
        while let Some(generation) = self.wait_for_work(dependency, &shutdown).await {
            let result = tokio::select! {
                r = tokio::time::timeout(PROBE_TIMEOUT, probe()) => r.unwrap_or_else(|_| {
                    Err(Failure::transient(
                        probe_timeout_reason(dependency),
                        format!("the probe did not answer within {PROBE_TIMEOUT:?}"),
                    ))
                }),
                _ = shutdown.cancelled() => return,
            };
            let up = result.is_ok();
            {
                let mut states = self.states();
                if let Some(state) = states.get_mut(&dependency) {
                    state.finished = state.finished.max(generation);
                    state.last_up = up;
                    if up {
                        state.breaker.reset();
                    }
                }
            }
            match result {
                Ok(()) => {
                    self.report_up(dependency);
                    delays = new_delays();
                }
                Err(failure) => {
                    tracing::debug!(dependency = dependency.as_str(), error = %crate::disposition::chain(&failure), "probe failed");
                    self.report_down(dependency, &failure);
                }
            }
            self.notify();
            if !up {
                let delay = delays.next().unwrap_or(max_delay);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

fn probe_timeout_reason(dependency: Dependency) -> RetryReason {
    match dependency {
        Dependency::Postgres => RetryReason::DatabaseUnavailable,
        Dependency::S3 => RetryReason::S3Unavailable,
        Dependency::Sqs => RetryReason::SqsUnavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[test]
    fn one_object_never_trips_the_breaker_many_do() {
        let mut breaker = Breaker::new(BreakerSettings::for_dependency(Dependency::S3));
        let now = Instant::now();
        for _ in 0..50 {
            assert!(!breaker.record("bad-object", false, now));
        }
        let mut breaker = Breaker::new(BreakerSettings::for_dependency(Dependency::S3));
        let tripped: Vec<bool> = (0..5)
            .map(|i| breaker.record(&format!("object-{i}"), false, now))
            .collect();
        assert_eq!(tripped, [false, false, false, false, true]);
        breaker.reset();
        assert!(!breaker.tripped());
    }

    #[test]
    fn failures_among_mostly_successes_do_not_trip() {
        let mut breaker = Breaker::new(BreakerSettings::for_dependency(Dependency::S3));
        let now = Instant::now();
        for i in 0..40 {
            let ok = i % 3 != 0;
            assert!(!breaker.record(&format!("object-{i}"), ok, now), "at {i}");
        }
    }

    #[test]
    fn old_failures_leave_the_window() {
        let mut breaker = Breaker::new(BreakerSettings::for_dependency(Dependency::S3));
        let start = Instant::now();
        for i in 0..4 {
            breaker.record(&format!("old-{i}"), false, start);
        }
        let later = start + Duration::from_secs(120);
        assert!(
            !breaker.record("new", false, later),
            "four failures a while ago do not count"
        );
    }

    /// A failure reported while an older probe is running must get a probe of its own: the
    /// older probe may have started before the dependency broke.
    #[tokio::test]
    async fn a_confirm_during_a_running_probe_waits_for_a_newer_probe() {
        let health = Health::new();
        let shutdown = CancellationToken::new();
        let probes = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(0usize);
        let p = {
            let (probes, healthy) = (probes.clone(), healthy.clone());
            probe(move || {
                let (probes, healthy, mut gate) =
                    (probes.clone(), healthy.clone(), gate_rx.clone());
                async move {
                    let n = probes.fetch_add(1, Ordering::SeqCst) + 1;
                    // Each probe sees the health it started with, then waits to be let go.
                    let ok = healthy.load(Ordering::SeqCst);
                    let _ = gate.wait_for(|g| *g >= n).await;
                    if ok {
                        Ok(())
                    } else {
                        Err(Failure::transient(RetryReason::S3Error, "down"))
                    }
                }
            })
        };
        tokio::spawn(health.clone().run_prober(
            Dependency::S3,
            p,
            Duration::from_millis(50),
            shutdown.clone(),
        ));
        // Start-up probe: let it pass.
        gate_tx.send_replace(1);
        let ready = health.clone();
        tokio::time::timeout(Duration::from_secs(5), async move {
            while ready.down().contains(&Dependency::S3) {
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("S3 proven");
        // A first confirm starts probe 2 while S3 is still healthy; it is held at the gate.
        let first = {
            let h = health.clone();
            let c = shutdown.clone();
            tokio::spawn(async move { h.confirm(Dependency::S3, &c).await })
        };
        tokio::time::timeout(Duration::from_secs(5), async {
            while probes.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("probe 2 started");
        // Now S3 breaks, and a second failure asks for confirmation while probe 2 runs.
        healthy.store(false, Ordering::SeqCst);
        let second = {
            let h = health.clone();
            let c = shutdown.clone();
            tokio::spawn(async move { h.confirm(Dependency::S3, &c).await })
        };
        gate_tx.send_replace(2);
        assert_eq!(first.await.unwrap(), Some(Verdict::Up), "probe 2 passed");
        gate_tx.send_replace(3);
        assert_eq!(
            second.await.unwrap(),
            Some(Verdict::Down),
            "the second confirm was answered by probe 3, which saw the outage"
        );
        assert!(health.down().contains(&Dependency::S3));
        shutdown.cancel();
    }
}
