//! Workers for tests, made one way: a [`Launch`] names the stack, the database and the flags,
//! then runs the worker in-process (the library's `run_supervised`) or as the real binary. Either
//! way the worker binds its HTTP endpoint to port 0, and the test learns the bound address from
//! the worker's own start-up report (the endpoint's `listening on http://ADDR` log event), so no
//! port is chosen first and bound later, when another process may have taken it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use aws_smithy_types::timeout::TimeoutConfig;
use clap::Parser;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::listen::{self, Lines, STARTUP};
use super::{Stack, TestDb, emulator};
use datapack_worker::app::ExtraTask;
use datapack_worker::cli::{Cli, Command as CliCommand};

/// A worker about to start: the stack and database it serves, and flags beyond the defaults.
pub struct Launch<'a> {
    stack: &'a Stack,
    db: &'a TestDb,
    endpoint: String,
    extra: Vec<String>,
}

impl<'a> Launch<'a> {
    pub fn new(stack: &'a Stack, db: &'a TestDb, extra: &[&str]) -> Launch<'a> {
        Launch {
            stack,
            db,
            endpoint: stack.endpoint.clone(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// S3 and SQS at `endpoint` (a proxy in front of moto) instead of the stack's own.
    pub fn via(mut self, endpoint: &str) -> Launch<'a> {
        self.endpoint = endpoint.to_owned();
        self
    }

    /// `run` and the flags every test worker runs with, then the extra ones; an extra flag
    /// replaces the default.
    pub fn argv(&self) -> Vec<String> {
        let defaults = [
            "--database-url",
            &self.db.url,
            "--sqs-queue-url",
            &self.stack.queue_url,
            "--sqs-dead-letter-queue-url",
            &self.stack.dlq_url,
            "--s3-bucket",
            &self.stack.bucket,
            "--metrics-addr",
            "127.0.0.1:0",
            "--sqs-wait-time-secs",
            "1",
            "--retry-base-secs",
            "1",
            "--retry-max-secs",
            "2",
            "--queue-sample-secs",
            "1",
            "--shutdown-grace-secs",
            "10",
        ];
        let mut out = vec!["run".to_owned()];
        for pair in defaults.chunks(2) {
            if !self.extra.iter().any(|e| e == pair[0]) {
                out.extend(pair.iter().map(|s| s.to_string()));
            }
        }
        out.extend(self.extra.iter().cloned());
        out
    }

    pub async fn in_process(self) -> TestWorker {
        self.supervised(Vec::new()).await
    }

    /// In-process, with `tasks` supervised beside the worker's own. The AWS settings are the
    /// test's, with the attempt timeout the flags ask for, as the binary's would be.
    pub async fn supervised(self, tasks: Vec<ExtraTask>) -> TestWorker {
        let argv = std::iter::once("datapack-worker".to_owned()).chain(self.argv());
        let cli = Cli::try_parse_from(argv).expect("valid test flags");
        let CliCommand::Run(args) = cli.command else {
            unreachable!()
        };
        let settings = args.into_settings().expect("valid test settings");
        let sdk = emulator::sdk_config(&self.endpoint)
            .to_builder()
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(settings.aws.attempt_timeout)
                    .build(),
            )
            .build();
        let (report, reported) = oneshot::channel();
        let shutdown = CancellationToken::new();
        let run = datapack_worker::app::run_supervised(settings, sdk, shutdown.clone(), tasks);
        let mut task = tokio::spawn(UntilListening::new(run, report));
        let addr = tokio::select! {
            addr = reported => match addr {
                Ok(addr) => addr,
                Err(_) => panic!("the worker ended before it listened: {:?}", (&mut task).await),
            },
            ended = &mut task => panic!("the worker ended before it listened: {ended:?}"),
            _ = tokio::time::sleep(STARTUP) => panic!("the worker did not listen within {STARTUP:?}"),
        };
        TestWorker {
            shutdown,
            task,
            http: Endpoint { addr },
        }
    }

    pub async fn binary(self) -> BinaryWorker {
        let command = Command::new(env!("CARGO_BIN_EXE_datapack-worker"));
        self.binary_via(command, &[], false).await
    }

    /// The real binary with its open-file limit (soft and hard) set to `nofile`, through
    /// util-linux `prlimit`, which sets the limit and then execs: the child's pid is the worker's.
    pub async fn binary_with_nofile(self, nofile: u64) -> BinaryWorker {
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={nofile}:{nofile}"))
            .arg(env!("CARGO_BIN_EXE_datapack-worker"));
        self.binary_via(command, &[], false).await
    }

    /// The real binary with `env` added, its log kept for [`BinaryWorker::log`] instead of
    /// passed on to the test's stderr. The log is in the format `env` asks for: `NO_COLOR` and
    /// `LOG_FORMAT` are not inherited from the test's environment.
    pub async fn binary_keeping_log(self, env: &[(&str, &str)]) -> BinaryWorker {
        let command = Command::new(env!("CARGO_BIN_EXE_datapack-worker"));
        self.binary_via(command, env, true).await
    }

    /// Runs `command` (the binary, or a launcher that execs it) with the flags, and waits for
    /// the worker to report its endpoint on stderr.
    async fn binary_via(
        self,
        mut command: Command,
        env: &[(&str, &str)],
        keep_log: bool,
    ) -> BinaryWorker {
        // The start-up line is logged at info: whatever else the log shows, it shows that.
        let filter = env
            .iter()
            .find(|(name, _)| *name == "RUST_LOG")
            .map(|(_, value)| value.to_string())
            .or_else(|| std::env::var("TEST_WORKER_LOG").ok())
            .unwrap_or_else(|| "warn".into());
        if keep_log {
            command.env_remove("NO_COLOR").env_remove("LOG_FORMAT");
        }
        let mut child = moto_env(&mut command, &self.endpoint)
            .args(self.argv())
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                format!("{filter},datapack_worker::ops::http=info"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn datapack-worker");
        let log = Arc::new(Mutex::new(String::new()));
        let lines = if keep_log {
            Lines::Keep(log.clone())
        } else {
            Lines::Forward
        };
        let stderr = child.stderr.take().unwrap();
        let (addr, reader) = listen::follow(stderr, listening, lines)
            .wait_async("datapack-worker")
            .await;
        BinaryWorker {
            child,
            http: Endpoint { addr },
            log,
            reader: Some(reader),
        }
    }
}

/// How the endpoint's start-up line begins; the address bound follows.
const LISTENING: &str = "listening on http://";

/// The address in the endpoint's start-up line, in either log format.
pub fn listening(line: &str) -> Option<SocketAddr> {
    listen::after(line, LISTENING)
}

/// Where the endpoint's address goes; empty once sent.
type Report = Arc<Mutex<Option<oneshot::Sender<SocketAddr>>>>;

/// Runs an in-process worker with a [`Reporter`] as its tracing dispatcher until the endpoint
/// has reported its address, then as it would run without.
struct UntilListening<F> {
    run: Pin<Box<F>>,
    reporter: Option<(tracing::Dispatch, Report)>,
}

impl<F: Future> UntilListening<F> {
    fn new(run: F, report: oneshot::Sender<SocketAddr>) -> Self {
        let report = Arc::new(Mutex::new(Some(report)));
        let reporter = Reporter {
            inner: tracing::dispatcher::get_default(tracing::Dispatch::clone),
            report: report.clone(),
        };
        UntilListening {
            run: Box::pin(run),
            reporter: Some((tracing::Dispatch::new(reporter), report)),
        }
    }
}

impl<F: Future> Future for UntilListening<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        if this
            .reporter
            .as_ref()
            .is_some_and(|(_, report)| report.lock().unwrap().is_none())
        {
            this.reporter = None;
        }
        match &this.reporter {
            Some((dispatch, _)) => {
                tracing::dispatcher::with_default(dispatch, || this.run.as_mut().poll(cx))
            }
            None => this.run.as_mut().poll(cx),
        }
    }
}

/// Passes every call on to the subscriber that was in force (so logging is what it would be
/// without this) and sends the address of the endpoint's start-up event. The current span is
/// not asked of it (start-up, before the endpoint listens, never asks).
struct Reporter {
    inner: tracing::Dispatch,
    report: Report,
}

/// Whether an event may be the endpoint's start-up line: one with an address and a message (the
/// message says which, in [`Reporter::event`]).
fn is_listening(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_event()
        && metadata.fields().field("addr").is_some()
        && metadata.fields().field("message").is_some()
}

/// The start-up line's address, read from an event's fields.
#[derive(Default)]
struct Listening {
    message: String,
    addr: Option<SocketAddr>,
}

impl tracing::field::Visit for Listening {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "addr" => self.addr = format!("{value:?}").parse().ok(),
            _ => {}
        }
    }
}

impl tracing::Subscriber for Reporter {
    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        let inner = self.inner.register_callsite(metadata);
        if is_listening(metadata) {
            tracing::subscriber::Interest::always()
        } else {
            inner
        }
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        is_listening(metadata) || self.inner.enabled(metadata)
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        self.inner.new_span(span)
    }

    fn record(&self, span: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        self.inner.record(span, values)
    }

    fn record_follows_from(&self, span: &tracing::span::Id, follows: &tracing::span::Id) {
        self.inner.record_follows_from(span, follows)
    }

    fn event(&self, event: &tracing::Event<'_>) {
        if is_listening(event.metadata()) {
            let mut seen = Listening::default();
            event.record(&mut seen);
            if let Some(addr) = seen.addr.filter(|_| seen.message.starts_with(LISTENING))
                && let Some(report) = self.report.lock().unwrap().take()
            {
                let _ = report.send(addr);
            }
        }
        if self.inner.enabled(event.metadata()) {
            self.inner.event(event)
        }
    }

    fn enter(&self, span: &tracing::span::Id) {
        self.inner.enter(span)
    }

    fn exit(&self, span: &tracing::span::Id) {
        self.inner.exit(span)
    }

    fn clone_span(&self, id: &tracing::span::Id) -> tracing::span::Id {
        self.inner.clone_span(id)
    }

    fn try_close(&self, id: tracing::span::Id) -> bool {
        self.inner.try_close(id)
    }
}

/// A worker's HTTP endpoint, at the address the worker reported.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub addr: SocketAddr,
}

impl Endpoint {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Status and body of `GET path`, or `None` while the endpoint does not answer.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        get(&self.url(path)).await
    }

    pub async fn status(&self, path: &str) -> Option<u16> {
        self.get(path).await.map(|(status, _)| status)
    }

    /// A scrape, or `None` while the endpoint does not answer (polls must not panic on that).
    pub async fn try_scrape(&self) -> Option<String> {
        self.get("/metrics")
            .await
            .filter(|(status, _)| *status == 200)
            .map(|(_, body)| body)
    }

    pub async fn scrape(&self) -> String {
        self.try_scrape().await.expect("a scrape")
    }
}

/// Status and body of `GET url`, or `None` if nothing answers within 5 s.
pub async fn get(url: &str) -> Option<(u16, String)> {
    let answer = async {
        let response = reqwest::get(url).await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    };
    tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .ok()
        .flatten()
}

/// A worker in this process.
pub struct TestWorker {
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub http: Endpoint,
}

impl TestWorker {
    pub async fn spawn(stack: &Stack, db: &TestDb, extra: &[&str]) -> TestWorker {
        Launch::new(stack, db, extra).in_process().await
    }

    /// Signals shutdown and waits for a clean stop.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("worker stops within 30 s")
            .expect("worker task")
            .expect("worker ends without error");
    }
}

/// Runs a one-shot command (the binary's `dlq`, `presign`, …) to its end; panics with what it said
/// on stderr unless it succeeded, and returns what it printed.
pub fn output_ok(command: &mut Command) -> String {
    let out = command.output().expect("spawn the command");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Points a child process's AWS chain at moto (or a proxy in front of it) with test credentials.
pub fn moto_env<'a>(command: &'a mut Command, endpoint: &str) -> &'a mut Command {
    command
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", emulator::ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", emulator::SECRET_ACCESS_KEY)
        .env("AWS_REGION", emulator::REGION)
}

/// The real binary, for what only a process shows: signals, exit codes, memory, exact metrics.
pub struct BinaryWorker {
    pub child: Child,
    pub http: Endpoint,
    log: Arc<Mutex<String>>,
    /// Reads stderr until the process (and so its end of the pipe) is gone.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl BinaryWorker {
    pub async fn spawn(stack: &Stack, db: &TestDb, extra: &[&str]) -> BinaryWorker {
        Launch::new(stack, db, extra).binary().await
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        status_kib(self.child.id(), "VmHWM:")
    }

    /// What the worker has logged so far (all of it once [`BinaryWorker::wait`] returned), if
    /// it was launched to keep its log.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for the process to exit, returning its status, and for its last words on stderr.
    pub async fn wait(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(reader) = self.reader.take() {
                    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
                }
                return status;
            }
            assert!(
                start.elapsed() < deadline,
                "worker did not exit within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, a clean exit within `deadline`, and everything the worker logged (if it was
    /// launched to keep its log).
    pub async fn stop(mut self, deadline: Duration) -> String {
        self.signal("TERM");
        let exited = self.wait(deadline).await;
        assert!(exited.success(), "clean exit: {exited}");
        self.log()
    }
}

impl Drop for BinaryWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A size field (`VmHWM:`, `VmRSS:`) of /proc/PID/status in KiB; 0 once the process is gone.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
