//! The command line: `run`, `migrate`, `presign`, `dlq list`, `dlq redrive`, `reconcile`, and
//! the flags of each (the commands themselves live in `commands`, which reads these).

use clap::{Args, Parser, Subcommand};

use crate::config::{self, ConfigError, DatabaseArgs, RunArgs};

#[derive(Debug, Parser)]
#[command(
    name = "datapack-worker",
    version,
    about = "Ingests browser uploads into datapacks: S3 notifications from SQS, streamed SHA-256, rows in PostgreSQL."
)]
pub struct Cli {
    /// `text` (default) or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
    pub(crate) log_format: String,
    /// Which lines to log, in `tracing`'s filter syntax (default: info, SDK and sqlx at warn).
    #[arg(long, env = "RUST_LOG", global = true, hide = true)]
    pub(crate) log_filter: Option<String>,
    /// Any non-empty value turns colour off even on a terminal (no-color.org).
    #[arg(long, env = "NO_COLOR", global = true, hide = true)]
    pub(crate) no_color: Option<String>,
    /// Threads that run the work (tokio's workers); default: the CPUs the process may use (a
    /// container's CPU limit counts). One costs the least CPU per small object; more hash more
    /// large objects at once (docs/performance.md, "Runtime threads").
    #[arg(long, env = "RUNTIME_THREADS", global = true)]
    pub(crate) runtime_threads: Option<u64>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The runtime the command runs on, with `RUNTIME_THREADS` workers when set.
    pub fn runtime(&self) -> Result<tokio::runtime::Runtime, anyhow::Error> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(threads) = self.runtime_threads {
            config::check_range("RUNTIME_THREADS", threads)?;
            builder.worker_threads(usize::try_from(threads)?);
        }
        Ok(builder.enable_all().build()?)
    }

    /// How to log, from the flags and their environment variables.
    pub fn log_settings(&self) -> crate::ops::telemetry::LogSettings {
        crate::ops::telemetry::LogSettings {
            json: self.log_format.eq_ignore_ascii_case("json"),
            filter: self.log_filter.clone().filter(|f| !f.is_empty()),
            no_color: self.no_color.as_deref().is_some_and(|v| !v.is_empty()),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Long-poll the queue and ingest until SIGTERM or SIGINT.
    Run(Box<RunArgs>),
    /// Apply the database migrations and exit.
    Migrate(DatabaseArgs),
    /// Print a presigned PUT URL and the headers the browser must send.
    Presign(PresignArgs),
    /// Inspect or redrive the dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Compare the bucket with the database and repair the difference (lost notifications,
    /// objects from before the worker, rows of objects deleted behind its back).
    Reconcile(Box<ReconcileArgs>),
}

#[derive(Debug, Clone, Args)]
pub struct PresignArgs {
    /// The bucket the URL uploads into; the seed's `FILESYSTEM_S3_BUCKET` is read when unset.
    #[arg(long, env = "S3_BUCKET")]
    pub bucket: Option<String>,
    /// The datapack identifier: the key's first segment.
    #[arg(long)]
    pub datapack: String,
    /// Folder inside the datapack, e.g. `raw data/2024`; `/` for the top.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// The file name: the key's last segment.
    #[arg(long)]
    pub file: String,
    /// Signed as `x-amz-meta-uploader-name` (RFC 2047-encoded when not ASCII).
    #[arg(long)]
    pub uploader_name: String,
    /// Signed as `x-amz-meta-uploader-email`.
    #[arg(long)]
    pub uploader_email: String,
    /// Content-Type the upload must carry; guessed from the file name when absent.
    #[arg(long)]
    pub content_type: Option<String>,
    /// How long the URL stays valid; S3 answers 403 `AccessDenied` after.
    #[arg(long, default_value_t = 900)]
    pub expires_secs: u64,
    /// Print `{"url", "method", "headers"}`.
    #[arg(long)]
    pub json: bool,
    /// SHA-256 of the file, 64 hex digits: the browser must then send `x-amz-checksum-sha256`
    /// (signed), and S3 refuses any other bytes.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
}

impl PresignArgs {
    /// The bucket from `--bucket` or `S3_BUCKET`, else the seed's `FILESYSTEM_S3_BUCKET`.
    pub(crate) fn bucket(&self) -> Result<String, ConfigError> {
        self.bucket
            .clone()
            .or_else(config::seed_bucket)
            .ok_or(ConfigError::Missing("S3_BUCKET (or --bucket)"))
    }
}

#[derive(Debug, Clone, Args)]
pub struct DlqArgs {
    /// The main queue, where `redrive` moves messages back to (`list` does not need it).
    #[arg(long, env = "SQS_QUEUE_URL")]
    pub(crate) sqs_queue_url: Option<String>,
    /// The dead-letter queue to read.
    #[arg(long, env = "SQS_DEAD_LETTER_QUEUE_URL")]
    pub(crate) sqs_dead_letter_queue_url: String,
}

impl DlqArgs {
    /// The main queue, which only a redrive needs.
    pub(crate) fn main_url(&self) -> Result<&str, ConfigError> {
        self.sqs_queue_url
            .as_deref()
            .ok_or(ConfigError::Missing("SQS_QUEUE_URL"))
    }
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Show dead-lettered messages (reason, key, age) without consuming them.
    List {
        #[command(flatten)]
        queues: DlqArgs,
        /// Messages shown at most.
        #[arg(long, default_value_t = 100)]
        max: usize,
        /// One JSON object per message instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Move dead-lettered messages back to the main queue once the cause is fixed.
    Redrive {
        #[command(flatten)]
        queues: DlqArgs,
        /// Only messages dead-lettered for this reason (e.g. unknown_datapack).
        #[arg(long)]
        reason: Option<String>,
        /// Messages moved at most.
        #[arg(long, default_value_t = 1000)]
        max: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListingMode {
    /// ListObjectVersions when the bucket has versioning (enabled or suspended), else ListObjectsV2.
    Auto,
    Objects,
    Versions,
}

impl ListingMode {
    /// The name in the report and the checkpoint.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Objects => "objects",
            Self::Versions => "versions",
        }
    }
}

/// `reconcile` reads the same settings as `run` (so it runs from the worker's environment
/// file), plus its own flags.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub(crate) run: RunArgs,
    /// The bucket to reconcile (default: the one `S3_BUCKET`, or the seed's `FILESYSTEM_S3_BUCKET`,
    /// names).
    #[arg(long)]
    pub(crate) bucket: Option<String>,
    /// Only keys starting with this.
    #[arg(long, default_value = "")]
    pub(crate) prefix: String,
    /// Only this datapack's keys (the prefix `DATAPACK/`).
    #[arg(long, conflicts_with = "prefix")]
    pub(crate) datapack: Option<String>,
    /// Find and report the differences; change nothing (no write, no checkpoint).
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// How many keys of each kind of difference (and of failures) the report names.
    #[arg(long, default_value_t = 20)]
    pub(crate) report_keys: usize,
    /// Differences checked and repaired at once.
    #[arg(long, env = "RECONCILE_CONCURRENCY", default_value_t = 16)]
    pub(crate) concurrency: usize,
    /// Keys per listing page (S3 answers at most 1,000); also the checkpoint's step.
    #[arg(long, default_value_t = 1000)]
    pub(crate) page_keys: i32,
    /// Read the listing from an S3 Inventory report (CSV) instead of listing the bucket:
    /// `s3://BUCKET/PATH/manifest.json`.
    #[arg(long, value_name = "S3_URL")]
    pub(crate) inventory: Option<String>,
    /// How to list the bucket.
    #[arg(long, value_enum, default_value = "auto")]
    pub(crate) listing: ListingMode,
    /// Rows of one key an inventory report may hold (one per version); a report with more is
    /// refused. Rows are folded as they are read, so this bounds time, not memory.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) inventory_max_rows_per_key: u64,
    /// Start the scope over instead of continuing an interrupted run from its checkpoint.
    #[arg(long)]
    pub(crate) restart: bool,
    /// Serve /metrics (and the health endpoints) on METRICS_ADDR while reconciling.
    #[arg(long)]
    pub(crate) serve_metrics: bool,
    /// A progress line on a terminal (`auto`), always (`bar`), or log lines only (`log`).
    #[arg(long, value_enum, default_value = "auto")]
    pub(crate) progress: ProgressMode,
    /// Seconds between progress log lines (when there is no bar).
    #[arg(long, default_value_t = 10)]
    pub(crate) progress_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar on a terminal, log lines otherwise.
    Auto,
    Bar,
    Log,
}
