//! A local emulated AWS stack for the demo and the benchmark: moto_server (S3 + SQS) on a port it
//! picks, with the bucket, queues and notification the tests use, plus the two ways the outside
//! world uploads (a browser's presigned PUT, a direct PutObject).
//!
//!     emulated_stack up   --state-dir DIR [--bucket NAME] [--queue NAME]
//!     emulated_stack down --state-dir DIR
//!     datapack-worker presign … --json | emulated_stack put-presigned --file FILE
//!     emulated_stack put --key KEY --file FILE        (AWS_ENDPOINT_URL and S3_BUCKET set)
//!
//! `up` starts moto_server in a process group of its own (log in DIR/moto.log, pid in
//! DIR/moto.pid), creates the stack (see `tests/it/support/emulator.rs`) and writes DIR/env,
//! `export` lines to source from a shell: AWS_ENDPOINT_URL, AWS_REGION, AWS_DEFAULT_REGION,
//! AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, S3_BUCKET, SQS_QUEUE_URL,
//! SQS_DEAD_LETTER_QUEUE_URL. The notification's `s3:TestEvent` is left in the queue on purpose:
//! the worker acknowledges it. `down` ends the process group. Both are safe to repeat.
//! Environment: CORS_ALLOWED_ORIGINS (comma-separated, default http://localhost:3000),
//! MOTO_SERVER (the moto_server executable, default: looked up on PATH).

#[path = "../tests/it/support/emulator.rs"]
mod emulator;

use std::fs::OpenOptions;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::{Parser, Subcommand};

const DEFAULT_NAME: &str = "datapack-uploads";
const STARTUP: Duration = Duration::from_secs(30);
const SHUTDOWN: Duration = Duration::from_secs(10);
const PID_FILE: &str = "moto.pid";
const LOG_FILE: &str = "moto.log";
const ENV_FILE: &str = "env";

#[derive(Parser)]
#[command(about = "A local emulated S3 + SQS stack (moto) for datapack-worker")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start moto and create the bucket, queues and notification.
    Up {
        /// Directory for moto.pid, moto.log and env.
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long, default_value = DEFAULT_NAME)]
        bucket: String,
        /// The main queue; its dead-letter queue is QUEUE-dlq.
        #[arg(long, default_value = DEFAULT_NAME)]
        queue: String,
    },
    /// Stop the moto server `up` started.
    Down {
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// PUT FILE as a browser does, to the URL and with exactly the headers `presign --json`
    /// printed (read from stdin); prints the HTTP status.
    PutPresigned {
        #[arg(long)]
        file: PathBuf,
    },
    /// PutObject FILE as KEY into S3_BUCKET, without the presigned metadata.
    Put {
        #[arg(long)]
        key: String,
        #[arg(long)]
        file: PathBuf,
    },
}

fn log(message: &str) {
    eprintln!("emulated_stack: {message}");
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Cmd::Up {
            state_dir,
            bucket,
            queue,
        } => up(&state_dir, &bucket, &queue).await,
        Cmd::Down { state_dir } => down(&state_dir),
        Cmd::PutPresigned { file } => put_presigned(&file).await,
        Cmd::Put { key, file } => put(&key, &file).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log(&format!("error: {e:#}"));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn up(state_dir: &Path, bucket: &str, queue: &str) -> anyhow::Result<()> {
    check_names(bucket, queue)?;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let state_dir = state_dir.canonicalize()?;
    if let Some(pid) = read_pid(&state_dir).filter(|pid| is_our_moto(*pid)) {
        bail!(
            "moto is already running for {} (pid {pid}); run `emulated_stack down --state-dir {}` first",
            state_dir.display(),
            state_dir.display()
        );
    }
    let _ = std::fs::remove_file(state_dir.join(PID_FILE));
    let origins = emulator::cors_origins()?;

    let (pid, port) = start_moto(&state_dir)?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let made = async {
        let sdk = emulator::sdk_config(&endpoint);
        let made = emulator::create(&sdk, bucket, queue, &origins).await?;
        let queue_arn =
            emulator::queue_arn(&datapack_worker::aws::sqs(&sdk), &made.queue_url).await?;
        let env = write_env(
            &state_dir,
            &[
                ("AWS_ENDPOINT_URL", &endpoint),
                ("AWS_REGION", emulator::REGION),
                ("AWS_DEFAULT_REGION", emulator::REGION),
                ("AWS_ACCESS_KEY_ID", emulator::ACCESS_KEY_ID),
                ("AWS_SECRET_ACCESS_KEY", emulator::SECRET_ACCESS_KEY),
                ("S3_BUCKET", bucket),
                ("SQS_QUEUE_URL", &made.queue_url),
                ("SQS_DEAD_LETTER_QUEUE_URL", &made.dlq_url),
            ],
        )?;
        anyhow::Ok((made, queue_arn, env))
    }
    .await;
    let (made, queue_arn, env) = match made {
        Ok(made) => made,
        Err(e) => {
            log("setup failed; stopping moto");
            stop_moto(&state_dir);
            return Err(e);
        }
    };
    let log_path = state_dir.join(LOG_FILE);
    println!(
        "moto server    {endpoint}  (pid {pid}, log {})",
        log_path.display()
    );
    println!(
        "bucket         {bucket}  (CORS origins: {})",
        origins.join(", ")
    );
    println!("queue          {}", made.queue_url);
    println!(
        "dead letters   {}  (after {} receives)",
        made.dlq_url,
        emulator::MAX_RECEIVE_COUNT
    );
    println!("notifications  s3:ObjectCreated:*, s3:ObjectRemoved:* -> {queue_arn}");
    println!(
        "env file       {}  (region {}, access key id {})",
        env.display(),
        emulator::REGION,
        emulator::ACCESS_KEY_ID
    );
    Ok(())
}

fn down(state_dir: &Path) -> anyhow::Result<()> {
    let pid = read_pid(state_dir);
    match (stop_moto(state_dir), pid) {
        (true, Some(pid)) => println!("moto server (pid {pid}) stopped"),
        _ => println!("moto server not running for {}", state_dir.display()),
    }
    Ok(())
}

/// S3's bucket rules, and SQS's queue rules with room for the `-dlq` suffix.
fn check_names(bucket: &str, queue: &str) -> anyhow::Result<()> {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && edge(bucket.chars().next())
        && edge(bucket.chars().last())
        && !bucket.contains("..");
    ensure!(
        bucket_ok,
        "invalid bucket name {bucket:?}: 3-63 chars, lowercase letters, digits, '.' and '-', \
         starting and ending with a letter or digit"
    );
    let queue_ok = (1..=76).contains(&queue.len())
        && queue
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    ensure!(
        queue_ok,
        "invalid queue name {queue:?}: 1-76 chars of letters, digits, '-' and '_'"
    );
    Ok(())
}

/// Starts moto_server in a process group of its own (so a Ctrl-C in the caller's terminal does
/// not reach it, and `down` can end it with whatever it started), and waits for the port it
/// announces in its log.
fn start_moto(state_dir: &Path) -> anyhow::Result<(u32, u16)> {
    let (program, args) = emulator::moto_command();
    let log_path = state_dir.join(LOG_FILE);
    let mut log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    // Earlier runs' lines stay in the log; only what this one writes counts.
    let start = log_file.seek(SeekFrom::End(0))?;
    let mut child = Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .process_group(0)
        .spawn()
        .with_context(|| {
            format!(
                "starting {program}: run scripts/ensure-moto.sh (or: pip install 'moto[server]==5.2.1')"
            )
        })?;
    std::fs::write(state_dir.join(PID_FILE), format!("{}\n", child.id()))?;
    let deadline = Instant::now() + STARTUP;
    loop {
        let mut text = String::new();
        let mut log = std::fs::File::open(&log_path)?;
        log.seek(SeekFrom::Start(start))?;
        log.read_to_string(&mut text)?;
        if let Some(port) = text.lines().find_map(emulator::announced_port) {
            return Ok((child.id(), port));
        }
        if let Some(status) = child.try_wait()? {
            let _ = std::fs::remove_file(state_dir.join(PID_FILE));
            bail!(
                "moto_server exited with {status} during startup; see {}",
                log_path.display()
            );
        }
        if Instant::now() > deadline {
            stop_moto(state_dir);
            bail!(
                "moto_server did not say where it listens within {STARTUP:?}; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn read_pid(state_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(state_dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is alive and looks like a moto server (a pid file can outlive its process, and
/// the pid be reused).
fn is_our_moto(pid: u32) -> bool {
    if !signal("-0", &pid.to_string()) {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => cmdline.windows(4).any(|w| w == b"moto"),
        // No procfs (macOS): trust the pid file.
        Err(_) => true,
    }
}

/// `kill SIGNAL TARGET` (a negative target is a process group); whether it succeeded.
fn signal(signal: &str, target: &str) -> bool {
    Command::new("kill")
        .args([signal, "--", target])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether any process of group `pgid` is alive. A zombie leader counts as gone: `down` is not
/// its parent, so it cannot reap it.
fn group_alive(pgid: u32) -> bool {
    if !signal("-0", &format!("-{pgid}")) {
        return false;
    }
    let zombie = std::fs::read_to_string(format!("/proc/{pgid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, after) = stat.rsplit_once(')')?;
            Some(after.split_whitespace().next()? == "Z")
        })
        .unwrap_or(false);
    !zombie
}

/// Ends the moto process group (SIGTERM, then SIGKILL after [`SHUTDOWN`]); whether there was one.
fn stop_moto(state_dir: &Path) -> bool {
    let Some(pid) = read_pid(state_dir) else {
        return false;
    };
    let ours = is_our_moto(pid);
    if ours {
        let group = format!("-{pid}");
        signal("-TERM", &group);
        let deadline = Instant::now() + SHUTDOWN;
        while Instant::now() < deadline && group_alive(pid) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if group_alive(pid) {
            log(&format!(
                "moto (pgid {pid}) ignored SIGTERM; sending SIGKILL"
            ));
            signal("-KILL", &group);
        }
    }
    let _ = std::fs::remove_file(state_dir.join(PID_FILE));
    ours
}

/// Writes DIR/env (owner-only: it names credentials, if dummy ones) in one rename.
fn write_env(state_dir: &Path, values: &[(&str, &str)]) -> anyhow::Result<PathBuf> {
    let path = state_dir.join(ENV_FILE);
    let tmp = state_dir.join(format!("{ENV_FILE}.tmp"));
    let mut text = String::from("# Written by `emulated_stack up`; source it: . ./env\n");
    for (name, value) in values {
        text.push_str(&format!("export {name}={}\n", shell_quote(value)));
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    drop(file);
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// A word the shell reads back as `value` (Python's `shlex.quote`).
fn shell_quote(value: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c);
    if !value.is_empty() && value.chars().all(safe) {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r#"'"'"'"#))
    }
}

/// The part of `presign --json` a browser uses.
#[derive(serde::Deserialize)]
struct Signed {
    method: String,
    url: String,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

async fn put_presigned(file: &Path) -> anyhow::Result<()> {
    let mut json = String::new();
    std::io::stdin().read_to_string(&mut json)?;
    let signed: Signed =
        serde_json::from_str(&json).context("reading `presign --json` on stdin")?;
    ensure!(
        signed.method.eq_ignore_ascii_case("PUT"),
        "presign returned method {:?}, expected PUT",
        signed.method
    );
    ensure!(
        signed
            .headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("content-type")),
        "presign returned no Content-Type header"
    );
    let body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let mut request = reqwest::Client::new().put(&signed.url).body(body);
    for (name, value) in &signed.headers {
        request = request.header(name, value);
    }
    let response = request.send().await.context("the presigned PUT")?;
    let status = response.status();
    ensure!(
        status.is_success(),
        "the presigned PUT answered {status}: {}",
        response.text().await.unwrap_or_default()
    );
    println!("{}", status.as_u16());
    Ok(())
}

async fn put(key: &str, file: &Path) -> anyhow::Result<()> {
    let endpoint =
        std::env::var("AWS_ENDPOINT_URL").context("AWS_ENDPOINT_URL (source DIR/env)")?;
    let bucket = std::env::var("S3_BUCKET").context("S3_BUCKET (source DIR/env)")?;
    let body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    datapack_worker::aws::s3(&emulator::sdk_config(&endpoint))
        .put_object()
        .bucket(&bucket)
        .key(key)
        .body(body.into())
        .content_type("text/plain")
        .send()
        .await
        .with_context(|| format!("PutObject {key}"))?;
    Ok(())
}
