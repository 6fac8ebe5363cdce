//! The HTTP endpoint: `/metrics` (Prometheus), `/healthz` (alive), `/readyz` (can make progress),
//! on a thread and runtime of its own, with every resource a client can hold bounded.
//!
//! Anyone who can reach the port is a client: the kubelet, Prometheus, or an attacker. So:
//! - It runs on its own OS thread with a current-thread runtime. Scrapes never take a worker
//!   thread from ingestion, and a busy ingestion runtime cannot delay the probes.
//! - At most [`MAX_CONNECTIONS`] connections are open. The listener keeps accepting (so a
//!   probe never waits behind a full kernel backlog); at the cap the connection that has waited
//!   longest without sending a request is closed to make room. A probe sends its request at
//!   once, so it is never that connection, and descriptors stay at the cap plus one.
//! - A request head must arrive within [`HEADER_READ_TIMEOUT`] (which also ends idle
//!   keep-alive connections) and fit in [`MAX_HEADER_BYTES`] (else `431` and close), and no
//!   connection lives longer than [`MAX_CONNECTION_LIFETIME`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service as _;

use crate::ops::health::Health;

/// Open connections at most. Normal life needs three or four at once (the kubelet's liveness
/// and readiness probes, one or two Prometheus servers); 64 is over ten times that, yet only 6%
/// of a 1,024 descriptor limit, so the endpoint can never take the descriptors S3, SQS and
/// PostgreSQL connections need.
pub const MAX_CONNECTIONS: usize = 64;

/// Time allowed to send a complete request head, from the connection's start or from the end of
/// the previous response (so it is the keep-alive idle timeout too). Probes and scrapers send
/// their whole request in one packet right after connecting; 5 s covers any congested network,
/// while a client that sends nothing, or dribbles a header, holds its slot no longer. A scraper
/// whose interval is longer simply reconnects, which costs one handshake per scrape.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest request head, in bytes: the connection's read buffer never grows past it (hyper
/// answers `431` and closes). Probe and scrape requests are well under 1 KiB; 8 KiB is the
/// smallest buffer hyper accepts. 64 connections × 8 KiB bound header memory to 512 KiB.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Longest life of one connection, however busy. Bounds what the header timeout cannot see: a
/// client that reads its response very slowly, or sends a request body forever. A scraper
/// reusing its connection reconnects once a minute.
pub(crate) const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// When a connection is ended (stop, or its lifetime is over), time given to finish the
/// response in progress before the socket is closed regardless. Responses are rendered in
/// memory and small, so 1 s is plenty and keeps shutdown prompt.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Pause after an accept fails for lack of descriptors or memory. The pending connection stays
/// in the backlog, so retrying at once would spin a core; 100 ms keeps probes answered soon
/// after descriptors free up.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// How often, at most, a summary of cut-off connections is logged: an attack would otherwise
/// log a line per connection.
const CUT_OFF_LOG_INTERVAL: Duration = Duration::from_secs(60);

const THREAD_NAME: &str = "http-endpoint";

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    health: Health,
    shutdown: CancellationToken,
}

/// Binds now (so a taken port fails start-up) and serves on a thread of its own until `stop`
/// fires. The returned task, on the caller's runtime, ends once the server has stopped, and
/// panics with the cause if the server's thread dies.
pub(crate) async fn serve(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    health: Health,
    shutdown: CancellationToken,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let listener = {
        let _entered = runtime.enter();
        TcpListener::from_std(listener)?
    };
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(healthz))
        .route("/readyz", get(ready))
        .with_state(AppState {
            metrics,
            health,
            shutdown,
        });
    let (done, finished) = oneshot::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                runtime.block_on(accept_loop(listener, app, stop));
                drop(runtime);
            }));
            let _ = done.send(ran.map_err(|panic| crate::disposition::panic_text(panic.as_ref())));
        })?;
    // The address actually bound: with port 0 in METRICS_ADDR the kernel picks a free port, and
    // this line is how the operator (or a test, or the demo) learns it.
    tracing::info!(addr = %local, "listening on http://{local} for /metrics, /healthz and /readyz");
    Ok(tokio::spawn(async move {
        match finished.await {
            Ok(Ok(())) => {}
            Ok(Err(cause)) => panic!("the HTTP endpoint's thread panicked: {cause}"),
            Err(_) => panic!("the HTTP endpoint's thread ended without reporting"),
        }
    }))
}

async fn render(State(state): State<AppState>) -> ([(&'static str, &'static str); 1], String) {
    (
        [("content-type", "text/plain; version=0.0.4")],
        crate::ops::metrics::render(&state.metrics, &state.health.paused()),
    )
}

/// 200 while every part of the process can make progress; 503 naming the part that cannot.
async fn healthz(State(state): State<AppState>) -> (StatusCode, String) {
    match state.health.failure() {
        None => (StatusCode::OK, "ok\n".into()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        ),
    }
}

/// 200 while every dependency answers and no shutdown is under way; 503 with the reason otherwise.
async fn ready(State(state): State<AppState>) -> (StatusCode, String) {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    let down = state.health.down();
    if down.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        let names: Vec<&str> = down.iter().map(|d| d.as_str()).collect();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("paused; down: {}\n", names.join(", ")),
        )
    }
}

/// Accepts until `stop`, then waits for every connection to end.
async fn accept_loop(listener: TcpListener, app: Router, stop: CancellationToken) {
    let slots = Slots::new(MAX_CONNECTIONS);
    let cut = Arc::new(CutOff::default());
    let connections = TaskTracker::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    let mut report = tokio::time::interval(CUT_OFF_LOG_INTERVAL);
    loop {
        let stream = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = report.tick() => {
                cut.log();
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if out_of_resources(&e) {
                        cut.accept_errors.fetch_add(1, Ordering::Relaxed);
                        tokio::select! {
                            _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                            _ = stop.cancelled() => break,
                        }
                    }
                    continue;
                }
            },
        };
        let Some(slot) = slots.admit(&stop).await else {
            cut.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        connections.spawn(connection(
            http.clone(),
            stream,
            app.clone(),
            slot,
            stop.clone(),
            cut.clone(),
        ));
    }
    // Closing the listener refuses new connections at once; live ones end within CLOSE_GRACE.
    drop(listener);
    connections.close();
    connections.wait().await;
    cut.log();
}

/// Accept failures that a retry cannot fix until something is released.
fn out_of_resources(e: &std::io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM on Linux; any other error concerns one connection only.
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

/// Serves one connection until the client leaves, a limit cuts it off, or `stop`.
async fn connection(
    http: http1::Builder,
    stream: TcpStream,
    app: Router,
    slot: Slot,
    stop: CancellationToken,
    cut: Arc<CutOff>,
) {
    let touched = slot.clone_handle();
    let service = hyper::service::service_fn(move |request| {
        touched.touch();
        app.clone().call(request)
    });
    let evicted = slot.evicted.clone();
    let conn = http.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => {
            cut.count(served);
            return;
        }
        _ = evicted.cancelled() => {
            cut.evicted.fetch_add(1, Ordering::Relaxed);
            return;
        }
        _ = tokio::time::sleep(MAX_CONNECTION_LIFETIME) => {
            cut.lifetime.fetch_add(1, Ordering::Relaxed);
        }
        _ = stop.cancelled() => {}
    }
    // Finish the response in progress, if any, then close; never wait longer than CLOSE_GRACE.
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = evicted.cancelled() => {}
        _ = tokio::time::sleep(CLOSE_GRACE) => {}
    }
}

/// The open connections, each with when it last started a request, so the one that has waited
/// longest can be closed to make room.
struct Slots {
    max: usize,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
    /// Number of open connections, for waiting until an evicted one has closed its socket.
    count: watch::Sender<usize>,
}

struct Entry {
    last_active: Instant,
    evicted: CancellationToken,
}

/// One open connection's place; dropping it (when the connection's task ends, so after its
/// socket is closed) frees the place.
struct Slot {
    slots: Arc<Slots>,
    id: u64,
    evicted: CancellationToken,
}

impl Slots {
    fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max,
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            count: watch::channel(0).0,
        })
    }

    /// A place for a new connection. At the cap, closes the connection that has waited longest
    /// without a request and waits for its socket to close, so at most `max` connections plus
    /// the one just accepted hold a descriptor. `None` if none can make room, or on `stop`.
    async fn admit(self: &Arc<Self>, stop: &CancellationToken) -> Option<Slot> {
        if *self.count.borrow() >= self.max {
            if !self.evict_longest_waiting() {
                return None;
            }
            let mut count = self.count.subscribe();
            tokio::select! {
                freed = count.wait_for(|n| *n < self.max) => { freed.ok()?; }
                _ = stop.cancelled() => return None,
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evicted = CancellationToken::new();
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.insert(
            id,
            Entry {
                last_active: Instant::now(),
                evicted: evicted.clone(),
            },
        );
        self.count.send_replace(open.len());
        Some(Slot {
            slots: self.clone(),
            id,
            evicted,
        })
    }

    /// Signals the connection with the oldest activity that is not already closing. False if
    /// every open connection is already closing.
    fn evict_longest_waiting(&self) -> bool {
        let open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let oldest = open
            .values()
            .filter(|e| !e.evicted.is_cancelled())
            .min_by_key(|e| e.last_active);
        match oldest {
            Some(entry) => {
                entry.evicted.cancel();
                true
            }
            None => open.values().any(|e| e.evicted.is_cancelled()),
        }
    }
}

impl Slot {
    fn clone_handle(&self) -> Touch {
        Touch {
            slots: self.slots.clone(),
            id: self.id,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.remove(&self.id);
        self.slots.count.send_replace(open.len());
    }
}

/// Marks a connection active when a request arrives on it.
struct Touch {
    slots: Arc<Slots>,
    id: u64,
}

impl Touch {
    fn touch(&self) {
        if let Some(entry) = self
            .slots
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(&self.id)
        {
            entry.last_active = Instant::now();
        }
    }
}

/// Connections cut off by a limit, logged as one summary line per interval.
#[derive(Default)]
struct CutOff {
    /// Closed at the cap to make room for a new connection.
    evicted: AtomicU64,
    /// New connections closed at once: the cap was reached and nothing could make room.
    refused: AtomicU64,
    /// No complete request head in time; this includes idle keep-alive connections.
    header_timeout: AtomicU64,
    header_too_large: AtomicU64,
    malformed: AtomicU64,
    lifetime: AtomicU64,
    accept_errors: AtomicU64,
}

impl CutOff {
    fn count(&self, served: Result<(), hyper::Error>) {
        let Err(e) = served else { return };
        let counter = if e.is_timeout() {
            &self.header_timeout
        } else if e.is_parse_too_large() {
            &self.header_too_large
        } else if e.is_parse() {
            &self.malformed
        } else {
            // The client went away mid-request: nothing of ours was cut off.
            tracing::debug!(error = %e, "HTTP connection ended with an error");
            return;
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Logs, and resets, the counts since the last summary. A warning only when a client was
    /// cut off in a way normal probes and scrapers never are: idle keep-alive connections end
    /// by the header timeout every scrape, and a fast scraper reaches the lifetime.
    fn log(&self) {
        let take = |c: &AtomicU64| c.swap(0, Ordering::Relaxed);
        #[rustfmt::skip]
        let [evicted, refused, header_timeout, header_too_large, malformed, lifetime, accept_errors] = [
            &self.evicted, &self.refused, &self.header_timeout, &self.header_too_large,
            &self.malformed, &self.lifetime, &self.accept_errors,
        ]
        .map(take);
        macro_rules! summary {
            ($level:ident) => {
                tracing::$level!(
                    evicted,
                    refused,
                    header_timeout,
                    header_too_large,
                    malformed,
                    lifetime,
                    accept_errors,
                    max_connections = MAX_CONNECTIONS,
                    "HTTP endpoint cut off clients at its limits"
                )
            };
        }
        if evicted + refused + header_too_large + malformed + accept_errors > 0 {
            summary!(warn);
        } else if header_timeout + lifetime > 0 {
            summary!(debug);
        }
    }
}
