//! The shutdown signals, as values: a token cancelled on the first SIGTERM or SIGINT, and one
//! cancelled on the second (stop waiting, hand back what is held, exit).

use tokio_util::sync::CancellationToken;

/// What the signals ask for: `stop` (the first signal: finish or hand back what is in hand,
/// within the grace period) and `now` (a second signal: hand back at once, wait for nothing).
#[derive(Debug, Clone, Default)]
pub struct Signals {
    pub(crate) stop: CancellationToken,
    pub(crate) now: CancellationToken,
}

impl From<CancellationToken> for Signals {
    /// A stop that is never hurried: the grace period alone bounds it (embedders, tests).
    fn from(stop: CancellationToken) -> Self {
        Self {
            stop,
            now: CancellationToken::new(),
        }
    }
}

/// Returns a token that is cancelled when the process receives SIGTERM or SIGINT.
pub(crate) fn on_signals() -> CancellationToken {
    signals().stop
}

/// Listens for SIGTERM and SIGINT: the first cancels `stop`, the second `now`.
pub fn signals() -> Signals {
    let signals = Signals::default();
    let (stop, now) = (signals.stop.clone(), signals.now.clone());
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        let mut first = true;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            };
            if first {
                tracing::info!("{name} received: stopping (a second signal stops at once)");
                stop.cancel();
                first = false;
            } else {
                tracing::warn!("{name} received again: handing back what is held and stopping now");
                now.cancel();
                return;
            }
        }
    });
    signals
}
