//! Hostile clients on the HTTP endpoint cannot stop ingestion: the real binary, under a 1,024
//! descriptor limit, keeps recording uploads and answering its probes while 1,100 idle
//! connections press on its port, and stays small in memory while hundreds of clients send
//! slow or huge request heads.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datapack_worker::ops::http::{HEADER_READ_TIMEOUT, MAX_CONNECTIONS, MAX_HEADER_BYTES};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::db::sha256_hex;
use crate::support::scrape::{metric, sum};
use crate::support::worker::status_kib;
use crate::support::{Launch, Stack, TestDb, setup, wait_until};

/// The worker's open-file limit: a common default, and the one the idle clients exhaust.
const NOFILE: u64 = 1024;
const IDLE_CLIENTS: usize = 1100;
const SLOW_CLIENTS: usize = 500;
const UPLOADS_PER_PHASE: usize = 20;
const RSS_LIMIT_KIB: u64 = 64 * 1024;
const DEADLINE: Duration = Duration::from_secs(90);
/// A kubelet probe's timeout is 1 s by default; allow twice that on a shared CI machine.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The head a slow client never finishes.
const HEAD_START: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: worker\r\nX-Padding: ";

#[tokio::test(flavor = "multi_thread")]
async fn idle_and_slow_clients_cannot_exhaust_descriptors_or_memory_nor_stop_ingestion() {
    raise_own_open_file_limit(IDLE_CLIENTS as u64 + SLOW_CLIENTS as u64 + 1024);
    let (stack, db) = setup("dp-1").await;
    let mut worker = Launch::new(&stack, &db, &[])
        .binary_with_nofile(NOFILE)
        .await;
    let pid = worker.child.id();
    let addr = worker.http.addr;
    let probe = Probe::new(addr);
    wait_until("the worker ready", DEADLINE, || async {
        (probe.status("/readyz").await == Some(200)).then_some(())
    })
    .await;
    let start_up_pause = paused_seconds(&probe.scrape().await);
    let sampler = Sampler::start(pid, addr.port());

    // Baseline: how long a batch takes with nobody attacking.
    let quiet = ingest(&stack, &db, &probe, "quiet", 0).await;

    // 1,100 idle connections, reopened as soon as the worker closes them.
    let idle = IdleClients::start(addr, IDLE_CLIENTS);
    wait_until("1,100 idle connections opened", DEADLINE, || async {
        (idle.stats.opened.load(Ordering::Relaxed) >= IDLE_CLIENTS as u64).then_some(())
    })
    .await;
    let under_idle = ingest(&stack, &db, &probe, "idle", UPLOADS_PER_PHASE).await;
    let idle = idle.stop();
    let held_idle = sampler.peak_port_sockets.load(Ordering::Relaxed);
    println!(
        "idle clients: {} connections opened ({} failed to connect), {} closed by the worker; \
         worker held at most {held_idle} on its port and {} descriptors in all (limit {NOFILE})",
        idle.opened,
        idle.connect_failed,
        idle.closed_by_server,
        sampler.peak_fds.load(Ordering::Relaxed),
    );

    // Waves of 500 slow or huge request heads, until a batch of uploads is recorded.
    let slow = SlowClients::start(addr, SLOW_CLIENTS);
    let under_slow = ingest(&stack, &db, &probe, "slow", 2 * UPLOADS_PER_PHASE).await;
    let waves = slow.stop().await;

    let sampled = sampler.stop().await;
    let hwm_kib = worker.peak_rss_kib();
    println!(
        "uploads recorded in: {quiet:?} quiet, {under_idle:?} under 1,100 idle connections, \
         {under_slow:?} under {SLOW_CLIENTS} slow clients"
    );
    println!(
        "worker memory: VmRSS peak sampled {} MiB, VmHWM {} MiB (limit {} MiB); \
         peak descriptors {}, peak connections on the metrics port {}",
        sampled.peak_rss_kib / 1024,
        hwm_kib / 1024,
        RSS_LIMIT_KIB / 1024,
        sampled.peak_fds,
        sampled.peak_port_sockets
    );
    println!(
        "probes: {} answered, slowest {:?}",
        probe.answered(),
        probe.slowest()
    );
    waves.print();

    // Descriptors stayed bounded: the cap, plus the connection being decided on, plus a few
    // the sampler may catch while the kernel is still closing them.
    assert!(
        sampled.peak_port_sockets <= MAX_CONNECTIONS as u64 + 4,
        "the worker held {} connections on its metrics port",
        sampled.peak_port_sockets
    );
    // Every idle client got in (none was refused at the door); how many of them have noticed
    // their close by the end of the phase depends on timing, so it is printed, not asserted:
    // the bound on the port's sockets above is what proves they were closed.
    assert!(idle.opened >= IDLE_CLIENTS as u64);
    // Memory stayed bounded.
    assert!(
        hwm_kib < RSS_LIMIT_KIB,
        "peak RSS {hwm_kib} KiB with {SLOW_CLIENTS} slow clients"
    );
    // Never paused: the start-up pause is all there is, and every dependency stayed up.
    let scrape = probe.scrape().await;
    assert_eq!(
        paused_seconds(&scrape),
        start_up_pause,
        "the worker paused during the attack"
    );
    assert_eq!(metric(&scrape, "datapack_worker_paused"), 0.0);
    // The slow clients were all cut off, some by each limit.
    waves.assert_cut_off();

    // Shutdown is prompt with connections held open.
    let held: Vec<TcpStream> = (0..MAX_CONNECTIONS)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    let stopping = Instant::now();
    worker.signal("TERM");
    let status = worker.wait(Duration::from_secs(20)).await;
    assert!(status.success(), "exit status {status:?}");
    println!(
        "SIGTERM with {} connections held: exited in {:?}",
        held.len(),
        stopping.elapsed()
    );
}

/// Uploads `n` objects and waits until each is recorded with its SHA-256, probing `/readyz`,
/// `/healthz` and `/metrics` all along (each on a fresh connection, as the kubelet does).
/// Returns how long recording took.
async fn ingest(stack: &Stack, db: &TestDb, probe: &Probe, phase: &str, n: usize) -> Duration {
    let n = if n == 0 { UPLOADS_PER_PHASE / 2 } else { n };
    let started = Instant::now();
    let mut want = Vec::new();
    for i in 0..n {
        let key = format!("dp-1/{phase}/object-{i}.txt");
        let body = format!("{phase} object {i}: {}", fastrand::u64(..)).into_bytes();
        stack.put(&key, &body).await;
        want.push((key, sha256_hex(&body)));
    }
    wait_until(
        &format!("{n} uploads recorded ({phase})"),
        DEADLINE,
        || async {
            probe.check_all().await;
            let rows = db.rows().await;
            let found: HashSet<(&str, &str)> = rows
                .iter()
                .map(|r| (r.object_key.as_str(), r.sha256.as_str()))
                .collect();
            want.iter()
                .all(|(key, sha)| found.contains(&(key.as_str(), sha.as_str())))
                .then_some(())
        },
    )
    .await;
    started.elapsed()
}

/// What the kubelet and Prometheus do: a fresh connection per request, with a timeout.
struct Probe {
    base: String,
    client: reqwest::Client,
    answered: AtomicU64,
    slowest_ms: AtomicU64,
}

impl Probe {
    fn new(addr: SocketAddr) -> Probe {
        Probe {
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(PROBE_TIMEOUT)
                .build()
                .unwrap(),
            answered: AtomicU64::new(0),
            slowest_ms: AtomicU64::new(0),
        }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let started = Instant::now();
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        let body = response.text().await.ok()?;
        self.answered.fetch_add(1, Ordering::Relaxed);
        self.slowest_ms
            .fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        Some((status, body))
    }

    async fn status(&self, path: &str) -> Option<u16> {
        self.get(path).await.map(|(status, _)| status)
    }

    async fn scrape(&self) -> String {
        self.get("/metrics").await.expect("a scrape").1
    }

    /// Every endpoint answers within the probe timeout, healthy, ready, no dependency down.
    async fn check_all(&self) {
        let ready = self.get("/readyz").await;
        assert_eq!(
            ready.as_ref().map(|(s, b)| (*s, b.as_str())),
            Some((200, "ready\n")),
            "/readyz"
        );
        let alive = self.get("/healthz").await;
        assert_eq!(
            alive.as_ref().map(|(s, b)| (*s, b.as_str())),
            Some((200, "ok\n")),
            "/healthz"
        );
        let scrape = self.scrape().await;
        for dependency in ["postgres", "s3", "sqs"] {
            let series = format!("datapack_worker_dependency_up{{dependency=\"{dependency}\"}}");
            assert_eq!(metric(&scrape, &series), 1.0, "{series}");
        }
    }

    fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    fn slowest(&self) -> Duration {
        Duration::from_millis(self.slowest_ms.load(Ordering::Relaxed))
    }
}

/// The sum over dependencies of `datapack_worker_paused_seconds_total`.
fn paused_seconds(scrape: &str) -> f64 {
    sum(scrape, "datapack_worker_paused_seconds_total", "")
}

/// Raises this test process's soft (and if need be hard) open-file limit: it holds the idle
/// and slow clients' sockets itself.
fn raise_own_open_file_limit(want: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    let parse = |v: &str| v.parse::<u64>().unwrap_or(u64::MAX);
    if parse(soft) >= want {
        return;
    }
    let hard = parse(hard).max(want);
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={want}:{hard}"),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "raising the test's open-file limit");
}

/// The worker's descriptors, and how many of them are connections on its metrics port: socket
/// inodes from /proc/PID/fd matched against the local ports in /proc/net/tcp{,6}.
fn descriptors(pid: u32, port: u16) -> (u64, u64) {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, 0);
    };
    let mut total = 0;
    let mut sockets = HashSet::new();
    for fd in fds.flatten() {
        total += 1;
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let target = target.to_string_lossy().into_owned();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
            {
                sockets.insert(inode.to_owned());
            }
        }
    }
    let mut on_port = 0;
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // 0A is LISTEN: the listener itself is not a connection.
            if local_port == Some(port) && *state != "0A" && sockets.contains(*inode) {
                on_port += 1;
            }
        }
    }
    (total, on_port)
}

/// Samples the worker's descriptors and resident memory every 20 ms, keeping the peaks.
struct Sampler {
    peak_fds: Arc<AtomicU64>,
    peak_port_sockets: Arc<AtomicU64>,
    peak_rss_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

struct Sampled {
    peak_fds: u64,
    peak_port_sockets: u64,
    peak_rss_kib: u64,
}

impl Sampler {
    fn start(pid: u32, port: u16) -> Sampler {
        let peak_fds = Arc::new(AtomicU64::new(0));
        let peak_port_sockets = Arc::new(AtomicU64::new(0));
        let peak_rss_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (fds, on_port, rss, stopped) = (
            peak_fds.clone(),
            peak_port_sockets.clone(),
            peak_rss_kib.clone(),
            stop.clone(),
        );
        let task = tokio::task::spawn_blocking(move || {
            while !stopped.load(Ordering::Relaxed) {
                let (total, port_sockets) = descriptors(pid, port);
                fds.fetch_max(total, Ordering::Relaxed);
                on_port.fetch_max(port_sockets, Ordering::Relaxed);
                rss.fetch_max(status_kib(pid, "VmRSS:"), Ordering::Relaxed);
                // Sampling rate, not synchronisation.
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler {
            peak_fds,
            peak_port_sockets,
            peak_rss_kib,
            stop,
            task,
        }
    }

    async fn stop(self) -> Sampled {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        Sampled {
            peak_fds: self.peak_fds.load(Ordering::Relaxed),
            peak_port_sockets: self.peak_port_sockets.load(Ordering::Relaxed),
            peak_rss_kib: self.peak_rss_kib.load(Ordering::Relaxed),
        }
    }
}

/// `n` connections that never send a byte; whichever the worker closes is opened again, once
/// a second, as a determined client would.
struct IdleClients {
    stats: Arc<IdleStats>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

#[derive(Default)]
struct IdleStats {
    opened: AtomicU64,
    connect_failed: AtomicU64,
    closed_by_server: AtomicU64,
}

struct IdleTotals {
    opened: u64,
    connect_failed: u64,
    closed_by_server: u64,
}

impl IdleClients {
    fn start(addr: SocketAddr, n: usize) -> IdleClients {
        let stats = Arc::new(IdleStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (counts, stopped) = (stats.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut open: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
            while !stopped.load(Ordering::Relaxed) {
                for slot in open.iter_mut() {
                    if let Some(stream) = slot
                        && closed_by_peer(stream)
                    {
                        counts.closed_by_server.fetch_add(1, Ordering::Relaxed);
                        *slot = None;
                    }
                    if slot.is_none() {
                        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                            Ok(stream) => {
                                stream.set_nonblocking(true).unwrap();
                                counts.opened.fetch_add(1, Ordering::Relaxed);
                                *slot = Some(stream);
                            }
                            Err(_) => {
                                counts.connect_failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                // The attacker's pace: one round a second.
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        IdleClients {
            stats,
            stop,
            thread,
        }
    }

    fn stop(self) -> IdleTotals {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        IdleTotals {
            opened: self.stats.opened.load(Ordering::Relaxed),
            connect_failed: self.stats.connect_failed.load(Ordering::Relaxed),
            closed_by_server: self.stats.closed_by_server.load(Ordering::Relaxed),
        }
    }
}

/// Whether the other end closed (FIN or RST) a non-blocking stream that never sent anything.
fn closed_by_peer(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.peek(&mut byte) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// How a slow client writes its never-finished request head.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// One byte every 200 ms: never large, only slow; the header timeout must end it.
    Dribble,
    /// 512 bytes every 50 ms, growing towards the ~390 KB heads that once cost 292 MiB.
    Growing,
    /// 390 KB at once.
    Huge,
}

#[derive(Debug)]
enum End {
    /// The worker answered with this status, then closed.
    Answered(u16, Duration),
    /// The worker closed (or reset) the connection without an answer.
    Closed(Duration),
    /// Still open when the client gave up: no limit ended it.
    NotCut,
    ConnectFailed,
}

/// Waves of `n` slow clients started together; each wave ends when every client was cut off.
struct SlowClients {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Vec<(Kind, End)>>>,
}

struct Waves(Vec<Vec<(Kind, End)>>);

impl SlowClients {
    fn start(addr: SocketAddr, n: usize) -> SlowClients {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut waves = Vec::new();
            while waves.is_empty() || !stopped.load(Ordering::Relaxed) {
                let clients: Vec<_> = (0..n)
                    .map(|i| {
                        let kind = [Kind::Dribble, Kind::Growing, Kind::Huge][i % 3];
                        tokio::spawn(async move { (kind, slow_client(addr, kind).await) })
                    })
                    .collect();
                let mut wave = Vec::new();
                for client in clients {
                    wave.push(client.await.unwrap());
                }
                waves.push(wave);
            }
            waves
        });
        SlowClients { stop, task }
    }

    async fn stop(self) -> Waves {
        self.stop.store(true, Ordering::Relaxed);
        Waves(self.task.await.unwrap())
    }
}

/// Longer than any limit of the worker should let a client live: the header timeout, plus
/// room for a loaded machine.
fn give_up_after() -> Duration {
    HEADER_READ_TIMEOUT * 3
}

/// One slow client: writes its head as its kind does until the worker answers or closes.
async fn slow_client(addr: SocketAddr, kind: Kind) -> End {
    let started = Instant::now();
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        return End::ConnectFailed;
    };
    let (mut read, mut write) = stream.into_split();
    let (chunk, every) = match kind {
        Kind::Dribble => (vec![b'a'; 1], Duration::from_millis(200)),
        Kind::Growing => (vec![b'a'; 512], Duration::from_millis(50)),
        Kind::Huge => (vec![b'a'; 390 * 1024], Duration::from_secs(3600)),
    };
    let writer = async move {
        if write.write_all(HEAD_START).await.is_err() {
            return;
        }
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            if write.write_all(&chunk).await.is_err() {
                // Cut off; keep the half open so the reader sees what the worker sent.
                std::future::pending::<()>().await;
            }
        }
    };
    let reader = async move {
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        let elapsed = started.elapsed();
        match status_of(&answer) {
            Some(status) => End::Answered(status, elapsed),
            None => End::Closed(elapsed),
        }
    };
    tokio::select! {
        end = reader => end,
        _ = writer => unreachable!("the writer never ends by itself"),
        _ = tokio::time::sleep(give_up_after()) => End::NotCut,
    }
}

fn status_of(answer: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(answer.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

impl Waves {
    fn all(&self) -> impl Iterator<Item = &(Kind, End)> {
        self.0.iter().flatten()
    }

    fn print(&self) {
        let count = |f: &dyn Fn(&(Kind, End)) -> bool| self.all().filter(|e| f(e)).count();
        let too_large = count(&|(_, e)| matches!(e, End::Answered(431, _)));
        let timed_out = count(
            &|(_, e)| matches!(e, End::Closed(t) if *t >= HEADER_READ_TIMEOUT - Duration::from_millis(500)),
        );
        let early = count(
            &|(_, e)| matches!(e, End::Closed(t) if *t < HEADER_READ_TIMEOUT - Duration::from_millis(500)),
        );
        let slowest = self
            .all()
            .filter_map(|(_, e)| match e {
                End::Answered(_, t) | End::Closed(t) => Some(*t),
                _ => None,
            })
            .max()
            .unwrap_or_default();
        println!(
            "slow clients: {} waves of {SLOW_CLIENTS}, {} clients: {too_large} answered 431 \
             (head over {MAX_HEADER_BYTES} bytes), {timed_out} closed by the {HEADER_READ_TIMEOUT:?} \
             header timeout, {early} closed earlier (made room at the cap of {MAX_CONNECTIONS}, or \
             reset while sending), {} not cut off, {} failed to connect; the last cut off after {slowest:?}",
            self.0.len(),
            self.all().count(),
            count(&|(_, e)| matches!(e, End::NotCut)),
            count(&|(_, e)| matches!(e, End::ConnectFailed)),
        );
    }

    fn assert_cut_off(&self) {
        for (kind, end) in self.all() {
            assert!(
                matches!(end, End::Answered(431, _) | End::Closed(_)),
                "a {kind:?} client ended {end:?}"
            );
        }
        // The survivors of each wave met the limits themselves: the size limit for the large
        // heads, the timeout for the dribbled ones.
        assert!(
            self.all()
                .any(|(kind, e)| *kind != Kind::Dribble && matches!(e, End::Answered(431, _))),
            "no large head was answered 431"
        );
        assert!(
            self.all().any(|(kind, e)| *kind == Kind::Dribble
                && matches!(e, End::Closed(t) if *t >= HEADER_READ_TIMEOUT - Duration::from_millis(500))),
            "no dribbled head was ended by the header timeout"
        );
    }
}
