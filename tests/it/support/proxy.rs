//! A TCP proxy the test controls, to put faults between the worker and a dependency: cut the
//! line, make the peer silent, slow every chunk down, or reset the live connections once.
//!
//! It runs in the test's runtime and stops when dropped. Faults act on connections, not on
//! protocols, so the same proxy stands in front of PostgreSQL and of moto (S3 + SQS).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Forward both ways.
    Open,
    /// Live connections are reset, new ones are reset as soon as they are accepted.
    Cut,
    /// Accept, read and discard: nothing is forwarded and nothing is answered.
    Blackhole,
}

#[derive(Debug, Clone, Copy)]
struct Control {
    mode: Mode,
    /// Bumped to close every live connection once.
    generation: u64,
    latency: Duration,
    /// Bumped to stall the live connections that carried at least `stall_min_bytes` to the client.
    stall: u64,
    stall_min_bytes: u64,
}

pub struct Proxy {
    pub addr: SocketAddr,
    target: SocketAddr,
    control: watch::Sender<Control>,
    stop: CancellationToken,
    /// Bytes forwarded to clients, over every connection.
    delivered: Arc<AtomicU64>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (control, _) = watch::channel(Control {
            mode: Mode::Open,
            generation: 0,
            latency: Duration::ZERO,
            stall: 0,
            stall_min_bytes: 0,
        });
        let stop = CancellationToken::new();
        let delivered = Arc::new(AtomicU64::new(0));
        tokio::spawn(accept_loop(
            listener,
            target,
            control.clone(),
            stop.clone(),
            delivered.clone(),
        ));
        Proxy {
            addr,
            target,
            control,
            stop,
            delivered,
        }
    }

    /// An `http://` endpoint through the proxy (for the AWS SDK).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Bytes forwarded to clients so far, over every connection: evidence that this proxy's
    /// client (and no other) is reading an answer, where a metric would be shared by every
    /// worker in the test process.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Drops every live connection (with a reset) and resets new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.control.send_modify(|c| {
            c.mode = Mode::Cut;
            c.generation += 1;
        });
    }

    /// Becomes a silent peer: accepts, reads, never forwards and never answers, on live and new
    /// connections, until [`Proxy::restore`] (which closes the connections it swallowed data from,
    /// since their byte streams are no longer whole).
    pub fn blackhole(&self) {
        self.control.send_modify(|c| c.mode = Mode::Blackhole);
    }

    /// Forwards again; latency is kept.
    pub fn restore(&self) {
        self.control.send_modify(|c| c.mode = Mode::Open);
    }

    /// Delays every chunk, both ways, by `latency` (zero for none).
    pub fn set_latency(&self, latency: Duration) {
        self.control.send_modify(|c| c.latency = latency);
    }

    /// Freezes, for good, every live connection that has carried at least `min_bytes` to the
    /// client: nothing more is forwarded either way and the connection is never closed (a peer
    /// that hung mid-answer, a dropped NAT entry). New connections are forwarded as before.
    pub fn stall_streams(&self, min_bytes: u64) {
        self.control.send_modify(|c| {
            c.stall += 1;
            c.stall_min_bytes = min_bytes;
        });
    }

    /// Resets every live connection once; new connections are forwarded as before.
    pub fn reset_connections(&self) {
        self.control.send_modify(|c| c.generation += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Closes a socket with a TCP reset rather than a graceful FIN, as a crashed peer or a dropped
/// route does (at close, which the caller's drop brings).
pub fn reset(stream: &TcpStream) {
    // Linger zero only matters at close, which follows at once; the deprecation is about
    // non-zero lingers blocking the runtime.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    control: watch::Sender<Control>,
    stop: CancellationToken,
    total: Arc<AtomicU64>,
) {
    loop {
        let (client, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
            _ = stop.cancelled() => return,
        };
        let _ = client.set_nodelay(true);
        let rx = control.subscribe();
        let stop = stop.clone();
        let total = total.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = connection(client, target, rx, &total) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

async fn connection(
    client: TcpStream,
    target: SocketAddr,
    mut rx: watch::Receiver<Control>,
    total: &AtomicU64,
) {
    let start = *rx.borrow_and_update();
    match start.mode {
        Mode::Cut => return reset(&client),
        Mode::Blackhole => return swallow(client, rx).await,
        Mode::Open => {}
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return reset(&client);
    };
    let _ = server.set_nodelay(true);
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let tainted = AtomicBool::new(false);
    let stalled = AtomicBool::new(false);
    let delivered = AtomicU64::new(0);
    let to_client = [&delivered, total];
    let mut pumps = Box::pin(async {
        tokio::join!(
            pump(&mut client_rd, &mut server_wr, &rx, &tainted, &stalled, &[]),
            pump(
                &mut server_rd,
                &mut client_wr,
                &rx,
                &tainted,
                &stalled,
                &to_client
            ),
        )
    });
    let mut watcher = rx.clone();
    let mut seen_stall = start.stall;
    let mut pumps_done = false;
    loop {
        tokio::select! {
            _ = &mut pumps, if !pumps_done => {
                if !stalled.load(Ordering::Relaxed) {
                    return;
                }
                // A stalled connection stays open and silent until reset, cut or drop.
                pumps_done = true;
            }
            changed = watcher.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = *watcher.borrow_and_update();
                if now.stall != seen_stall {
                    seen_stall = now.stall;
                    if delivered.load(Ordering::Relaxed) >= now.stall_min_bytes {
                        stalled.store(true, Ordering::Relaxed);
                    }
                }
                let swallowed = tainted.load(Ordering::Relaxed) && now.mode != Mode::Blackhole;
                if now.generation != start.generation || swallowed {
                    break;
                }
            }
        }
    }
    // Killed: reset both sides. The pumps borrow the halves, so end them first.
    drop(pumps);
    reset(client_rd.as_ref());
    reset(server_rd.as_ref());
}

/// A connection accepted while black-holed: read and discard until the mode changes, then reset.
async fn swallow(mut client: TcpStream, mut rx: watch::Receiver<Control>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            read = client.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            changed = rx.changed() => {
                if changed.is_err() || rx.borrow_and_update().mode != Mode::Blackhole {
                    return reset(&client);
                }
            }
        }
    }
}

/// Copies one direction chunk by chunk, applying the latency and the black hole per chunk.
async fn pump(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    rx: &watch::Receiver<Control>,
    tainted: &AtomicBool,
    stalled: &AtomicBool,
    delivered: &[&AtomicU64],
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                // Pass the half-close on, so request/response protocols see the end (unless
                // stalled: a hung peer says nothing, not even goodbye).
                if !stalled.load(Ordering::Relaxed) {
                    let _ = to.shutdown().await;
                }
                return;
            }
            Ok(n) => n,
        };
        let latency = rx.borrow().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if stalled.load(Ordering::Relaxed) {
            continue;
        }
        if rx.borrow().mode == Mode::Blackhole {
            tainted.store(true, Ordering::Relaxed);
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        for counter in delivered {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// The address a `postgres://user@host:port/db` URL points at.
pub fn url_addr(url: &str) -> SocketAddr {
    let authority = authority(url).1;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    };
    use std::net::ToSocketAddrs;
    host_port
        .to_socket_addrs()
        .unwrap()
        .find(SocketAddr::is_ipv4)
        .expect("an IPv4 address")
}

/// The same URL pointed at `addr` (user, database and query kept).
pub fn url_via(url: &str, addr: SocketAddr) -> String {
    let (scheme, authority, tail) = authority(url);
    let user = authority
        .rsplit_once('@')
        .map(|(u, _)| format!("{u}@"))
        .unwrap_or_default();
    format!("{scheme}://{user}{addr}{tail}")
}

fn authority(url: &str) -> (&str, &str, &str) {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    (scheme, &rest[..end], &rest[end..])
}
