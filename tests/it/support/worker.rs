//! Workers for tests: in-process (the library's `run_with`) or the real binary as a child.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use super::moto::free_port;
use super::{Stack, TestDb};
use datapack_worker::cli::{Cli, Command as CliCommand};

pub struct TestWorker {
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub metrics_addr: String,
}

/// The default flags alone.
pub fn base_args(stack: &Stack, db: &TestDb, metrics_addr: &str) -> Vec<String> {
    args(stack, db, metrics_addr, &[])
}

/// The flags every test worker runs with, then `extra`; a flag in `extra` replaces the default.
pub fn args(stack: &Stack, db: &TestDb, metrics_addr: &str, extra: &[&str]) -> Vec<String> {
    let defaults = [
        "--database-url",
        &db.url,
        "--sqs-queue-url",
        &stack.queue_url,
        "--sqs-dead-letter-queue-url",
        &stack.dlq_url,
        "--s3-bucket",
        &stack.bucket,
        "--metrics-addr",
        metrics_addr,
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
    let mut out: Vec<String> = Vec::new();
    for pair in defaults.chunks(2) {
        if !extra.contains(&pair[0]) {
            out.extend(pair.iter().map(|s| s.to_string()));
        }
    }
    out.extend(extra.iter().map(|s| s.to_string()));
    out
}

impl TestWorker {
    pub fn spawn(stack: &Stack, db: &TestDb, extra: &[&str]) -> TestWorker {
        Self::spawn_at(stack, &stack.endpoint, db, extra)
    }

    /// Runs against `endpoint` (for instance a proxy in front of moto).
    pub fn spawn_at(stack: &Stack, endpoint: &str, db: &TestDb, extra: &[&str]) -> TestWorker {
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let mut argv = vec!["datapack-worker".to_owned(), "run".to_owned()];
        argv.extend(args(stack, db, &metrics_addr, extra));
        let cli = Cli::try_parse_from(argv).expect("valid test flags");
        let CliCommand::Run(args) = cli.command else {
            unreachable!()
        };
        let settings = args.into_settings().expect("valid test settings");
        let shutdown = CancellationToken::new();
        let sdk = super::stack::sdk_config(endpoint);
        let task = tokio::spawn(datapack_worker::app::run_with(
            settings,
            sdk,
            shutdown.clone(),
        ));
        TestWorker {
            shutdown,
            task,
            metrics_addr,
        }
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

/// Points a child process's AWS chain at moto (or a proxy in front of it) with test credentials.
pub fn moto_env<'a>(command: &'a mut Command, endpoint: &str) -> &'a mut Command {
    command
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
}

/// The real binary, for what only a process shows: signals, exit codes, memory, exact metrics.
pub struct BinaryWorker {
    pub child: Child,
    pub metrics_addr: String,
}

impl BinaryWorker {
    pub fn spawn(stack: &Stack, db: &TestDb, extra: &[&str]) -> BinaryWorker {
        Self::spawn_via(
            Command::new(env!("CARGO_BIN_EXE_datapack-worker")),
            stack,
            db,
            extra,
        )
    }

    /// The real binary with its open-file limit (soft and hard) set to `nofile`, through
    /// util-linux `prlimit`, which sets the limit and then execs: the child's pid is the worker's.
    pub fn spawn_with_nofile(
        stack: &Stack,
        db: &TestDb,
        extra: &[&str],
        nofile: u64,
    ) -> BinaryWorker {
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={nofile}:{nofile}"))
            .arg(env!("CARGO_BIN_EXE_datapack-worker"));
        Self::spawn_via(command, stack, db, extra)
    }

    /// Runs `command` (the binary, or a launcher that execs it) with `run` and the test flags.
    fn spawn_via(mut command: Command, stack: &Stack, db: &TestDb, extra: &[&str]) -> BinaryWorker {
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let child = moto_env(&mut command, &stack.endpoint)
            .arg("run")
            .args(args(stack, db, &metrics_addr, extra))
            .env(
                "RUST_LOG",
                std::env::var("TEST_WORKER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn datapack-worker");
        BinaryWorker {
            child,
            metrics_addr,
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Peak resident memory (VmHWM) in KiB, read from /proc.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics_addr))
            .await
            .map(|r| r.text())
            .unwrap()
            .await
            .unwrap()
    }

    /// Waits for the process to exit, returning its status.
    pub async fn wait(mut self, deadline: Duration) -> std::process::ExitStatus {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < deadline,
                "worker did not exit within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for BinaryWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one sample line of a Prometheus scrape (`name{labels} value`), 0 if absent.
pub fn metric(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
