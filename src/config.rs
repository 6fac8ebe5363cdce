//! Settings: flags and environment variables (units in the names) checked once and turned into
//! typed [`Settings`], with secrets that never print.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::aws::{AwsSettings, StaticKeys};
use crate::intake::pool::WorkerSettings;
use crate::process::fetch::Ranged;
use crate::process::pipeline::PipelineSettings;
pub(crate) use crate::secret::Secret;
use crate::store::writer::WriterSettings;
use crate::store::{Password, PoolSettings, WriteOptions};

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is required (set the environment variable or the flag)")]
    Missing(&'static str),
    #[error("{name}: {problem}")]
    Invalid { name: &'static str, problem: String },
}

fn invalid(name: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        problem: problem.into(),
    }
}

/// Least and most of every value with a range of its own, by environment variable (or by flag,
/// for a flag without one). The commands check their values against this table and the
/// configuration reference (`docs/configuration.md`) prints it, so the two cannot differ.
#[rustfmt::skip]
pub(crate) const RANGES: &[(&str, u64, u64)] = &[
    ("WORKER_CONCURRENCY", 1, 4096),
    ("RUNTIME_THREADS", 1, 256),
    ("WORKER_POLLERS", 1, 1024),
    ("SQS_WAIT_TIME_SECS", 0, 20), // SQS's own maximum
    ("SQS_VISIBILITY_TIMEOUT_SECS", 2, 43_200), // SQS's maximum: 12 hours
    ("MAX_PROCESSING_SECS", 2, 43_200),
    ("RETRY_BASE_SECS", 1, 43_200),
    ("RETRY_MAX_SECS", 1, 43_200),
    ("MAX_ATTEMPTS", 1, 1000),
    ("SHUTDOWN_GRACE_SECS", 0, 3600),
    ("SQS_RECEIVE_BATCH_WAIT_MS", 0, 1000),
    ("SQS_DELETE_BATCH_WAIT_MS", 0, 1000),
    ("DB_WRITERS", 1, 64),
    ("DB_MAX_BATCH", 1, 10_000),
    ("DATABASE_MAX_CONNECTIONS", 1, 1000),
    ("DATABASE_ACQUIRE_TIMEOUT_SECS", 1, 3600),
    ("DATABASE_STATEMENT_TIMEOUT_SECS", 1, 3600),
    ("DATABASE_IDLE_TIMEOUT_SECS", 1, 86_400),
    ("AWS_ATTEMPT_TIMEOUT_SECS", 1, 3600),
    ("QUEUE_SAMPLE_SECS", 1, 3600),
    ("RANGED_GET_PART_BYTES", 1 << 20, 5 << 30),
    ("RANGED_GET_PARALLELISM", 1, 64),
    ("RANGED_GET_STREAM_FLOOR_MIBPS", 0, 100_000),
    ("RECONCILE_CONCURRENCY", 1, 256),
    ("--page-keys", 1, 1000), // S3 lists at most 1,000 keys a page
    ("--inventory-max-rows-per-key", 1, u64::MAX),
    ("--expires-secs", 1, 604_800), // SigV4's maximum: 7 days
];

/// `CHECKSUM_AUDIT_RATIO`'s range, a share.
pub(crate) const CHECKSUM_AUDIT_RATIO_RANGE: (f64, f64) = (0.0, 1.0);

/// Rules that tie a value to another, as the configuration reference prints them; checked where
/// the value is ([`RunArgs`]' `check_rules`).
pub(crate) const RULES: &[(&str, &str)] = &[
    (
        "MAX_PROCESSING_SECS",
        "at least `SQS_VISIBILITY_TIMEOUT_SECS`",
    ),
    ("RETRY_MAX_SECS", "at least `RETRY_BASE_SECS`"),
    (
        "AWS_ATTEMPT_TIMEOUT_SECS",
        "longer than `SQS_WAIT_TIME_SECS`",
    ),
];

/// The range [`RANGES`] gives `name`; a name it lacks has no bound. (`tests/it/docs.rs` refuses
/// an entry of the table that no flag or environment variable carries.)
pub(crate) fn range_of(name: &str) -> (u64, u64) {
    RANGES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map_or((0, u64::MAX), |&(_, least, most)| (least, most))
}

/// Refuses `value` out of `name`'s range in [`RANGES`], naming both.
pub(crate) fn check_range(name: &'static str, value: u64) -> Result<(), ConfigError> {
    let (least, most) = range_of(name);
    if (least..=most).contains(&value) {
        Ok(())
    } else if most == u64::MAX {
        Err(invalid(
            name,
            format!("{value} is out of range: must be at least {least}"),
        ))
    } else {
        Err(invalid(
            name,
            format!("{value} is out of range: must be between {least} and {most}"),
        ))
    }
}

/// Everything `run` is built from, checked and in typed units: made once by
/// [`RunArgs::into_settings`] and passed down; nothing below reads the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub(crate) database: DatabaseSettings,
    /// Apply pending migrations before starting.
    pub(crate) migrate_on_start: bool,
    pub(crate) queue: QueueSettings,
    pub aws: AwsSettings,
    pub(crate) worker: WorkerSettings,
    pub(crate) pipeline: PipelineSettings,
    pub(crate) writer: WriterSettings,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub(crate) metrics_addr: SocketAddr,
}

/// What ingesting an object needs, queue aside: built by [`RunArgs::ingest_settings`].
#[derive(Debug, Clone)]
pub(crate) struct IngestSettings {
    pub(crate) database: DatabaseSettings,
    pub(crate) aws: AwsSettings,
    pub(crate) pipeline: PipelineSettings,
    pub(crate) writer: WriterSettings,
}

/// PostgreSQL: where to connect (the URL checked to name its user), where each new connection's
/// password comes from, and the pool's limits.
#[derive(Clone)]
pub struct DatabaseSettings {
    pub(crate) connect: PgConnectOptions,
    /// The URL with its password replaced, for logs.
    pub(crate) redacted_url: String,
    pub(crate) password: Password,
    pub(crate) pool: PoolSettings,
}

impl fmt::Debug for DatabaseSettings {
    // By hand: the connect options hold the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &self.redacted_url)
            .field("password", &self.password)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// The main queue and its dead-letter queue, and how the worker talks to them.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub(crate) url: String,
    pub(crate) dead_letter_url: String,
    /// Long-poll wait of one receive.
    pub(crate) wait: Duration,
    pub(crate) visibility_timeout: Duration,
    /// How often both queues' depth is sampled for the dashboard and alerts.
    pub(crate) sample_every: Duration,
}

/// An environment variable's value, unless unset or empty. Only the seed's fallback names are
/// read this way, and only here; clap reads the rest as it parses.
fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The seed's `FILESYSTEM_S3_BUCKET`, for when no bucket is given under the standard name.
pub(crate) fn seed_bucket() -> Option<String> {
    env_value("FILESYSTEM_S3_BUCKET")
}

/// AWS settings for the standard chain, with the seed's `FILESYSTEM_S3_REGION`,
/// `FILESYSTEM_S3_ACCESS_KEY` and `FILESYSTEM_S3_SECRET_KEY` put in only where the standard
/// variables are absent.
pub fn aws_from_env() -> AwsSettings {
    let region = (env_value("AWS_REGION").is_none() && env_value("AWS_DEFAULT_REGION").is_none())
        .then(|| env_value("FILESYSTEM_S3_REGION"))
        .flatten();
    let credentials = match (
        env_value("AWS_ACCESS_KEY_ID"),
        env_value("FILESYSTEM_S3_ACCESS_KEY"),
        env_value("FILESYSTEM_S3_SECRET_KEY"),
    ) {
        (None, Some(access_key_id), Some(secret)) => Some(StaticKeys {
            access_key_id,
            secret_access_key: Secret(secret),
        }),
        _ => None,
    };
    AwsSettings {
        region,
        credentials,
        ..AwsSettings::default()
    }
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Required. `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`, the user named (sqlx would otherwise
    /// connect as "anonymous"); never printed with its password. TLS through
    /// `sslmode=verify-full&sslrootcert=PATH`; a password with `@:/?#` percent-encoded, or in
    /// `DATABASE_PASSWORD_FILE`. The seed's `DB_DSN` is read when this is unset.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub(crate) database_url: Option<Secret>,
    /// A file holding the password, read again for every new connection (a rotated Kubernetes
    /// Secret takes effect without a restart). Not with a password in the URL.
    #[arg(long, env = "DATABASE_PASSWORD_FILE")]
    pub(crate) database_password_file: Option<PathBuf>,
    /// Sign in with an RDS IAM token from the AWS credential chain (needs sslmode=require or
    /// verify-*). Not with a password in the URL or DATABASE_PASSWORD_FILE.
    #[arg(long, env = "DATABASE_IAM_AUTH", default_value_t = false)]
    pub(crate) database_iam_auth: bool,
    /// Connections per replica at most: the writers' plus the probe's (DB_WRITERS + 1).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 3)]
    pub(crate) database_max_connections: u32,
    /// How long a write waits for a free connection before the attempt fails.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT_SECS", default_value_t = 5)]
    pub(crate) database_acquire_timeout_secs: u64,
    /// Bound on every statement, set on each connection; a transaction is also bounded client-side
    /// (this + 5 s), so a silent database cannot hold a worker.
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT_SECS", default_value_t = 30)]
    pub(crate) database_statement_timeout_secs: u64,
    /// A connection idle this long is closed, giving its slot back to the fleet.
    #[arg(long, env = "DATABASE_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub(crate) database_idle_timeout_secs: u64,
}

impl DatabaseArgs {
    /// The URL from the flag or `DATABASE_URL`, else the seed's `DB_DSN`.
    fn url(&self) -> Result<Secret, ConfigError> {
        chosen_url(self.database_url.clone(), env_value("DB_DSN"))
    }

    /// Checks the URL and the credentials' settings and turns the flags into what the pool
    /// needs. The limits are only raised to at least 1 here; `run` refuses values out of range
    /// (see [`RunArgs::into_settings`]).
    pub(crate) fn to_settings(&self) -> Result<DatabaseSettings, ConfigError> {
        let url = self.url()?;
        let connect = connect_options(&url)?;
        let password = self.password(&url, &connect)?;
        let secs = |s: u64| Duration::from_secs(s.max(1));
        Ok(DatabaseSettings {
            connect,
            redacted_url: redact_url(url.expose()),
            password,
            pool: PoolSettings {
                max_connections: self.database_max_connections.max(1),
                acquire_timeout: secs(self.database_acquire_timeout_secs),
                statement_timeout: secs(self.database_statement_timeout_secs),
                idle_timeout: secs(self.database_idle_timeout_secs),
            },
        })
    }

    /// Where new connections get their password: one source only, and IAM only over TLS.
    fn password(&self, url: &Secret, connect: &PgConnectOptions) -> Result<Password, ConfigError> {
        let in_url = url_has_password(url.expose());
        match (&self.database_password_file, self.database_iam_auth) {
            (Some(_), true) => Err(invalid(
                "DATABASE_IAM_AUTH",
                "choose one: an IAM token or DATABASE_PASSWORD_FILE",
            )),
            (Some(_), false) if in_url => Err(invalid(
                "DATABASE_PASSWORD_FILE",
                "DATABASE_URL holds a password too: remove it from the URL",
            )),
            (Some(path), false) => {
                // Read once now, so a wrong path stops the start with exit 2 rather than
                // failing every connection later; read again for each connection.
                crate::store::connect::read_password_file(path)
                    .map_err(|e| invalid("DATABASE_PASSWORD_FILE", e.to_string()))?;
                Ok(Password::File(path.clone()))
            }
            (None, true) if in_url => Err(invalid(
                "DATABASE_IAM_AUTH",
                "DATABASE_URL holds a password: remove it, the IAM token is the password",
            )),
            (None, true) => match connect.get_ssl_mode() {
                PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull => {
                    Ok(Password::RdsIam)
                }
                _ => Err(invalid(
                    "DATABASE_IAM_AUTH",
                    "RDS accepts IAM tokens over TLS only: add sslmode=verify-full \
                     (with sslrootcert=the RDS CA bundle) or sslmode=require to DATABASE_URL",
                )),
            },
            (None, false) => Ok(Password::InUrl),
        }
    }
}

/// The flag's (or `DATABASE_URL`'s) URL unless empty, else the seed's `DB_DSN`: an empty
/// `DATABASE_URL=` (a template's placeholder) counts as unset.
fn chosen_url(flag: Option<Secret>, dsn: Option<String>) -> Result<Secret, ConfigError> {
    flag.filter(|url| !url.expose().trim().is_empty())
        .or_else(|| dsn.filter(|d| !d.trim().is_empty()).map(Secret))
        .ok_or(ConfigError::Missing("DATABASE_URL (or DB_DSN)"))
}

/// Whether the URL carries a password (in its authority or as `?password=`).
fn url_has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let in_authority = rest
        .rfind('@')
        .and_then(|at| rest[..at].split_once(':'))
        .is_some_and(|(_, password)| !password.is_empty());
    in_authority
        || rest.split_once('?').is_some_and(|(_, q)| {
            q.split('&')
                .any(|p| p.strip_prefix("password=").is_some_and(|v| !v.is_empty()))
        })
}

/// What to do about a URL that does not parse; never the URL itself, which may hold the password.
const PERCENT_ENCODE_HINT: &str = "if the password holds any of @ : / ? # % & or a space, \
    percent-encode it in the URL (@ is %40, : is %3A, / is %2F, ? is %3F, # is %23, % is %25), \
    or leave it out of the URL and set DATABASE_PASSWORD_FILE";

fn connect_options(url: &Secret) -> Result<PgConnectOptions, ConfigError> {
    if !names_user(url.expose()) {
        // An '@' that is not where the user ends is most likely a raw one in the password.
        let hint = if url.expose().contains('@') {
            format!("; {PERCENT_ENCODE_HINT}")
        } else {
            String::new()
        };
        return Err(invalid(
            "DATABASE_URL",
            format!("name the user, as in postgres://USER@HOST/DB{hint}"),
        ));
    }
    PgConnectOptions::from_str(url.expose()).map_err(|e| {
        invalid(
            "DATABASE_URL",
            format!(
                "does not parse ({}); {PERCENT_ENCODE_HINT}",
                scrub(&e.to_string(), url.expose())
            ),
        )
    })
}

/// Does a PostgreSQL URL name its user (in the authority or as `?user=`)?
fn names_user(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let in_authority = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| !userinfo.split(':').next().unwrap_or_default().is_empty());
    in_authority
        || rest
            .split_once('?')
            .is_some_and(|(_, q)| q.split('&').any(|p| p.starts_with("user=") && p.len() > 5))
}

/// The URL with its password replaced, for messages. Whatever the password holds (`/`, `?`,
/// `@`, `#`, `:`), it ends at the last `@` of the URL's authority: everything between the first
/// `:` after the user and that `@` goes.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparseable url>".into();
    };
    // The host never contains '@', so the userinfo ends at the last '@' before the path begins
    // *after* that '@'; a password may contain '/' or '?', so search for '@' first.
    let (authority, tail) = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let after = &rest[at + 1..];
            let user = userinfo.split(':').next().unwrap_or_default();
            let redacted = if userinfo.contains(':') {
                format!("{user}:***@")
            } else {
                format!("{user}@")
            };
            let host_end = after.find(['/', '?']).unwrap_or(after.len());
            (redacted + &after[..host_end], &after[host_end..])
        }
        None => {
            let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
            (rest[..host_end].to_owned(), &rest[host_end..])
        }
    };
    let tail = tail
        .split('&')
        .map(|p| match p.find("password=") {
            Some(i) => format!("{}password=***", &p[..i]),
            None => p.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&");
    format!("{scheme}://{authority}{tail}")
}

/// Removes every appearance of the URL's password (raw or percent-decoded) from `text`, for
/// error messages written by libraries that may echo what they parsed.
fn scrub(text: &str, url: &str) -> String {
    let Some((_, rest)) = url.split_once("://") else {
        return text.to_owned();
    };
    let mut secrets: Vec<String> = Vec::new();
    if let Some(at) = rest.rfind('@')
        && let Some((_, password)) = rest[..at].split_once(':')
        && !password.is_empty()
    {
        secrets.push(password.to_owned());
    }
    if let Some((_, query)) = rest.split_once('?') {
        for pair in query.split('&') {
            if let Some(password) = pair.strip_prefix("password=")
                && !password.is_empty()
            {
                secrets.push(password.to_owned());
            }
        }
    }
    let decoded: Vec<String> = secrets
        .iter()
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    secrets.extend(decoded);
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.iter().fold(text.to_owned(), |text, secret| {
        text.replace(secret.as_str(), "***")
    })
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub(crate) database: DatabaseArgs,
    /// The queue S3 notifies. Required by `run`; `dlq redrive` moves messages back to it.
    #[arg(long, env = "SQS_QUEUE_URL")]
    pub(crate) sqs_queue_url: Option<String>,
    /// Where messages that can never succeed go, with their reason. Required; must differ from
    /// `SQS_QUEUE_URL`.
    #[arg(long, env = "SQS_DEAD_LETTER_QUEUE_URL")]
    pub(crate) sqs_dead_letter_queue_url: Option<String>,
    /// Required. Buckets served, comma-separated; events for other buckets are skipped
    /// (`foreign_bucket`). The seed's `FILESYSTEM_S3_BUCKET` is read when this is unset.
    #[arg(long, env = "S3_BUCKET", value_delimiter = ',')]
    pub(crate) s3_bucket: Vec<String>,
    /// Messages processed at once (worker slots); pollers ask SQS only for as many as are idle.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 16)]
    pub(crate) worker_concurrency: usize,
    /// Concurrent long polls; default one per ten worker slots, rounded up.
    #[arg(long, env = "WORKER_POLLERS")]
    pub(crate) worker_pollers: Option<usize>,
    /// Address of `/metrics`, `/healthz` and `/readyz` (plain HTTP). Port 0 lets the kernel pick
    /// one; the `listening on` log line names it.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9898")]
    pub(crate) metrics_addr: SocketAddr,
    /// Long-poll wait of each ReceiveMessage.
    #[arg(long, env = "SQS_WAIT_TIME_SECS", default_value_t = 20)]
    pub(crate) sqs_wait_time_secs: u64,
    /// Visibility set at receive; extended every half of it while a message is worked on.
    #[arg(long, env = "SQS_VISIBILITY_TIMEOUT_SECS", default_value_t = 60)]
    pub(crate) sqs_visibility_timeout_secs: u64,
    /// While receives come back full, how long a poller waits for ten free slots before it
    /// receives for fewer; 0 receives for whatever is free.
    #[arg(long, env = "SQS_RECEIVE_BATCH_WAIT_MS", default_value_t = 100)]
    pub(crate) sqs_receive_batch_wait_ms: u64,
    /// How long a delete or a visibility change waits for nine others to share its
    /// DeleteMessageBatch or ChangeMessageVisibilityBatch (never more than a tenth of the
    /// visibility timeout; none once shutdown begins); 0 sends whatever is waiting.
    #[arg(long, env = "SQS_DELETE_BATCH_WAIT_MS", default_value_t = 200)]
    pub(crate) sqs_delete_batch_wait_ms: u64,
    /// Cap on how long one message's visibility is extended while it is worked on.
    #[arg(long, env = "MAX_PROCESSING_SECS", default_value_t = 3600)]
    pub(crate) max_processing_secs: u64,
    /// Retry backoff: the first delay, doubled per receive, jittered, capped at `RETRY_MAX_SECS`.
    #[arg(long, env = "RETRY_BASE_SECS", default_value_t = 5)]
    pub(crate) retry_base_secs: u64,
    /// Retry backoff: the longest delay.
    #[arg(long, env = "RETRY_MAX_SECS", default_value_t = 900)]
    pub(crate) retry_max_secs: u64,
    /// Attempts a message gets before a failure dead-letters it with its reason; capped by the
    /// queue's redrive maxReceiveCount.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 10)]
    pub(crate) max_attempts: u32,
    /// Time given after SIGTERM to the long polls in flight (they finish, at most
    /// `SQS_WAIT_TIME_SECS` + 5 s, and what they return is handed back at once) and to in-flight
    /// work; a second signal stops at once. Keep below Kubernetes' `terminationGracePeriodSeconds`.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 25)]
    pub(crate) shutdown_grace_secs: u64,
    /// Required `uploaded-by` metadata value; `off` (or empty) records every upload.
    #[arg(long, env = "REQUIRE_UPLOADED_BY", default_value = "presigned-url")]
    pub(crate) require_uploaded_by: String,
    /// Create a datapack row for an unknown identifier instead of dead-lettering.
    #[arg(long, env = "CREATE_MISSING_DATAPACKS", default_value_t = false)]
    pub(crate) create_missing_datapacks: bool,
    /// Announce every changed row on the channel `datapack_resource_changed` (LISTEN/NOTIFY, in
    /// the writing transaction). `false` saves the database that work where nothing listens.
    #[arg(long, env = "NOTIFY_CHANGES", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) notify_changes: bool,
    /// Apply pending migrations before starting.
    #[arg(long, env = "MIGRATE_ON_START", default_value_t = false)]
    pub(crate) migrate_on_start: bool,
    /// Group commit: concurrent write transactions. Two by default: fewer writers commit larger
    /// batches, which cost the database less per row (docs/performance.md), and hold fewer of its
    /// connections per replica; a fleet's replicas already write in parallel.
    #[arg(long, env = "DB_WRITERS", default_value_t = 2)]
    pub(crate) db_writers: usize,
    /// Group commit: messages per transaction at most.
    #[arg(long, env = "DB_MAX_BATCH", default_value_t = 256)]
    pub(crate) db_max_batch: usize,
    /// Bound on every AWS call attempt; must exceed the long poll (the SDK has none by default, and
    /// a silent peer would hang forever).
    #[arg(long, env = "AWS_ATTEMPT_TIMEOUT_SECS", default_value_t = 30)]
    pub(crate) aws_attempt_timeout_secs: u64,
    /// How often queue depth is sampled for the metrics.
    #[arg(long, env = "QUEUE_SAMPLE_SECS", default_value_t = 15)]
    pub(crate) queue_sample_secs: u64,
    /// Endpoint for S3 and SQS (MinIO, moto, a VPC endpoint); the AWS chain reads it too.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub(crate) aws_endpoint_url: Option<String>,
    /// Objects announced at least this large are read as parallel ranged GETs; 0 turns that off.
    #[arg(long, env = "RANGED_GET_THRESHOLD_BYTES", default_value_t = 64 << 20)]
    pub(crate) ranged_get_threshold_bytes: u64,
    /// Size of one ranged GET part.
    #[arg(long, env = "RANGED_GET_PART_BYTES", default_value_t = 8 << 20)]
    pub(crate) ranged_get_part_bytes: u64,
    /// Part GETs in flight per object; also the process-wide number of part buffers, so part
    /// memory stays under RANGED_GET_PARALLELISM × RANGED_GET_PART_BYTES.
    #[arg(long, env = "RANGED_GET_PARALLELISM", default_value_t = 4)]
    pub(crate) ranged_get_parallelism: usize,
    /// Large objects are first read as one GET; only if that stream is slower than this many MiB/s
    /// (and a part proves faster) is the rest read in parallel parts. 0: parts from the first byte.
    #[arg(long, env = "RANGED_GET_STREAM_FLOOR_MIBPS", default_value_t = 64)]
    pub(crate) ranged_get_stream_floor_mibps: u64,
    /// Record a single-part upload's SHA-256 from S3's stored checksum (HeadObject) without
    /// reading the object. Only where the store verifies checksums at upload (AWS S3 does; an
    /// S3-compatible store or emulator may not). Off: every object is read and hashed.
    #[arg(long, env = "S3_CHECKSUMS_TRUSTED", default_value_t = false)]
    pub(crate) s3_checksums_trusted: bool,
    /// Share of trusted objects read and hashed anyway to audit the store (0.0–1.0).
    #[arg(long, env = "CHECKSUM_AUDIT_RATIO", default_value_t = 0.01)]
    pub(crate) checksum_audit_ratio: f64,
}

impl RunArgs {
    /// Checks everything that can be checked without a network, once, and turns the flags and
    /// the environment into the settings `run` is built from.
    pub fn into_settings(self) -> Result<Settings, ConfigError> {
        let (url, dead_letter_url) = self.queue_urls()?;
        self.check_rules()?;
        let IngestSettings {
            database,
            aws,
            pipeline,
            writer,
        } = self.ingest_settings()?;
        let secs = Duration::from_secs;
        Ok(Settings {
            database,
            migrate_on_start: self.migrate_on_start,
            queue: QueueSettings {
                url,
                dead_letter_url,
                wait: secs(self.sqs_wait_time_secs),
                visibility_timeout: secs(self.sqs_visibility_timeout_secs),
                sample_every: secs(self.queue_sample_secs.max(1)),
            },
            aws,
            worker: self.worker_settings(),
            pipeline,
            writer,
            metrics_addr: self.metrics_addr,
        })
    }

    /// What ingesting an object needs, without a queue: the database, S3, the pipeline's rules
    /// and the writer. `reconcile` is built from this, with the same checks as `run`.
    pub(crate) fn ingest_settings(&self) -> Result<IngestSettings, ConfigError> {
        let database = self.database.to_settings()?;
        let buckets = self.buckets();
        if buckets.is_empty() {
            return Err(ConfigError::Missing("S3_BUCKET (or FILESYSTEM_S3_BUCKET)"));
        }
        self.check_ranges()?;
        let secs = Duration::from_secs;
        Ok(IngestSettings {
            writer: WriterSettings {
                writers: self.db_writers,
                max_batch: self.db_max_batch,
                options: WriteOptions {
                    create_datapacks: self.create_missing_datapacks,
                    notify: self.notify_changes,
                },
                timeout: database.pool.statement_timeout + secs(5),
            },
            database,
            aws: AwsSettings {
                endpoint_url: self.aws_endpoint_url.clone(),
                attempt_timeout: secs(self.aws_attempt_timeout_secs),
                ..aws_from_env()
            },
            pipeline: PipelineSettings {
                buckets,
                required_uploaded_by: self.required_uploaded_by(),
                ranged: self.ranged(),
                checksums: crate::process::fetch::Checksums {
                    trusted: self.s3_checksums_trusted,
                    audit_ratio: self.checksum_audit_ratio,
                },
            },
        })
    }

    /// The buckets from the flag or `S3_BUCKET`, else the seed's `FILESYSTEM_S3_BUCKET`.
    pub(crate) fn buckets(&self) -> Vec<String> {
        let buckets: Vec<String> = self
            .s3_bucket
            .iter()
            .map(|b| b.trim().to_owned())
            .filter(|b| !b.is_empty())
            .collect();
        if buckets.is_empty() {
            return seed_bucket().into_iter().collect();
        }
        buckets
    }

    fn required_uploaded_by(&self) -> Option<String> {
        let v = self.require_uploaded_by.trim();
        (!v.is_empty() && !v.eq_ignore_ascii_case("off")).then(|| v.to_owned())
    }

    /// Both queue URLs, present, shaped like URLs and distinct.
    fn queue_urls(&self) -> Result<(String, String), ConfigError> {
        let checked = |name: &'static str, url: &Option<String>| {
            let url = url.clone().ok_or(ConfigError::Missing(name))?;
            if url.starts_with("https://") || url.starts_with("http://") {
                Ok(url)
            } else {
                Err(invalid(name, format!("{url:?} is not a queue URL")))
            }
        };
        let main = checked("SQS_QUEUE_URL", &self.sqs_queue_url)?;
        let dead_letter = checked("SQS_DEAD_LETTER_QUEUE_URL", &self.sqs_dead_letter_queue_url)?;
        if main == dead_letter {
            return Err(invalid(
                "SQS_DEAD_LETTER_QUEUE_URL",
                "must differ from SQS_QUEUE_URL",
            ));
        }
        Ok((main, dead_letter))
    }

    /// The rules that tie settings to each other (each value's own range is in [`RANGES`]).
    fn check_rules(&self) -> Result<(), ConfigError> {
        if self.aws_attempt_timeout_secs <= self.sqs_wait_time_secs {
            return Err(invalid(
                "AWS_ATTEMPT_TIMEOUT_SECS",
                "must be longer than SQS_WAIT_TIME_SECS, or every idle long poll times out",
            ));
        }
        if self.retry_max_secs < self.retry_base_secs {
            return Err(invalid(
                "RETRY_MAX_SECS",
                "must be at least RETRY_BASE_SECS",
            ));
        }
        if self.max_processing_secs < self.sqs_visibility_timeout_secs {
            return Err(invalid(
                "MAX_PROCESSING_SECS",
                "must be at least SQS_VISIBILITY_TIMEOUT_SECS",
            ));
        }
        Ok(())
    }

    /// Every value with a range of its own, against [`RANGES`].
    fn check_ranges(&self) -> Result<(), ConfigError> {
        let db = &self.database;
        // A table: one line per value reads better than rustfmt's one line per field.
        #[rustfmt::skip]
        let values = [
            ("WORKER_CONCURRENCY", self.worker_concurrency as u64),
            ("SQS_WAIT_TIME_SECS", self.sqs_wait_time_secs),
            ("SQS_VISIBILITY_TIMEOUT_SECS", self.sqs_visibility_timeout_secs),
            ("MAX_PROCESSING_SECS", self.max_processing_secs),
            ("RETRY_BASE_SECS", self.retry_base_secs),
            ("RETRY_MAX_SECS", self.retry_max_secs),
            ("MAX_ATTEMPTS", self.max_attempts.into()),
            ("SHUTDOWN_GRACE_SECS", self.shutdown_grace_secs),
            ("SQS_RECEIVE_BATCH_WAIT_MS", self.sqs_receive_batch_wait_ms),
            ("SQS_DELETE_BATCH_WAIT_MS", self.sqs_delete_batch_wait_ms),
            ("DB_WRITERS", self.db_writers as u64),
            ("DB_MAX_BATCH", self.db_max_batch as u64),
            ("DATABASE_MAX_CONNECTIONS", db.database_max_connections.into()),
            ("DATABASE_ACQUIRE_TIMEOUT_SECS", db.database_acquire_timeout_secs),
            ("DATABASE_STATEMENT_TIMEOUT_SECS", db.database_statement_timeout_secs),
            ("DATABASE_IDLE_TIMEOUT_SECS", db.database_idle_timeout_secs),
            ("AWS_ATTEMPT_TIMEOUT_SECS", self.aws_attempt_timeout_secs),
            ("QUEUE_SAMPLE_SECS", self.queue_sample_secs),
            ("RANGED_GET_PART_BYTES", self.ranged_get_part_bytes),
            ("RANGED_GET_PARALLELISM", self.ranged_get_parallelism as u64),
            ("RANGED_GET_STREAM_FLOOR_MIBPS", self.ranged_get_stream_floor_mibps),
        ];
        let (least, most) = CHECKSUM_AUDIT_RATIO_RANGE;
        if !(least..=most).contains(&self.checksum_audit_ratio) {
            return Err(invalid(
                "CHECKSUM_AUDIT_RATIO",
                format!(
                    "{} is out of range: must be between {least:.1} and {most:.1}",
                    self.checksum_audit_ratio
                ),
            ));
        }
        let pollers = self.worker_pollers.map(|p| ("WORKER_POLLERS", p as u64));
        for (name, value) in pollers.into_iter().chain(values) {
            check_range(name, value)?;
        }
        Ok(())
    }

    /// Ranged reads: adaptive unless the floor is 0, which splits large objects from the first
    /// byte on.
    fn ranged(&self) -> Ranged {
        let ranged = Ranged::new(
            self.ranged_get_threshold_bytes,
            self.ranged_get_part_bytes,
            self.ranged_get_parallelism,
        );
        match self.ranged_get_stream_floor_mibps {
            0 => ranged,
            floor => ranged.adaptive(floor << 20),
        }
    }

    fn worker_settings(&self) -> WorkerSettings {
        WorkerSettings {
            concurrency: self.worker_concurrency,
            pollers: self
                .worker_pollers
                .unwrap_or(self.worker_concurrency.div_ceil(10)),
            retry_base: Duration::from_secs(self.retry_base_secs),
            retry_max: Duration::from_secs(self.retry_max_secs),
            max_extension: Duration::from_secs(self.max_processing_secs),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            max_attempts: self.max_attempts,
            receive_batch_wait: Duration::from_millis(self.sqs_receive_batch_wait_ms),
            delete_batch_wait: Duration::from_millis(self.sqs_delete_batch_wait_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:hunter2@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(redact_url("postgres://u@db/x"), "postgres://u@db/x");
        assert!(!redact_url("postgres://u@db/x?password=hunter2").contains("hunter2"));
        assert!(!format!("{:?}", Secret("hunter2".into())).contains("hunter2"));
    }

    #[test]
    fn redacts_passwords_holding_any_character() {
        for password in ["a/b", "a?b", "p@ss", "x:y", "a#b", "%2F/?@:#&="] {
            let url = format!("postgres://user:{password}@db.example:5432/app?sslmode=require");
            let redacted = redact_url(&url);
            assert_eq!(
                redacted, "postgres://user:***@db.example:5432/app?sslmode=require",
                "{password:?}"
            );
            let scrubbed = scrub(&format!("failed near {password} in {url}"), &url);
            assert!(!scrubbed.contains(password), "{password:?}: {scrubbed}");
        }
        let query = "postgres://user@h/db?sslmode=require&password=s/e?cret";
        assert!(!redact_url(query).contains("s/e"));
    }

    #[test]
    fn a_url_that_does_not_parse_never_shows_its_password() {
        let args = DatabaseArgs {
            database_url: Some(Secret(
                "postgres://user:pa/ss?wo@rd@host:notaport/db".into(),
            )),
            ..database_args()
        };
        let message = args.to_settings().unwrap_err().to_string();
        assert!(!message.contains("pa/ss"), "{message}");
        assert!(!message.contains("wo@rd"), "{message}");
        assert!(message.contains("percent-encode"), "{message}");
        assert!(!message.contains("host"), "never the URL: {message}");
    }

    fn database_args() -> DatabaseArgs {
        DatabaseArgs {
            database_url: Some(Secret("postgres://app@db.example/app".into())),
            database_password_file: None,
            database_iam_auth: false,
            database_max_connections: 1,
            database_acquire_timeout_secs: 1,
            database_statement_timeout_secs: 1,
            database_idle_timeout_secs: 1,
        }
    }

    #[test]
    fn an_empty_database_url_does_not_hide_db_dsn() {
        let dsn = Some("postgres://seed@db/app".to_owned());
        let chosen = chosen_url(Some(Secret(String::new())), dsn.clone()).unwrap();
        assert_eq!(chosen.expose(), "postgres://seed@db/app");
        let chosen = chosen_url(Some(Secret("postgres://u@h/d".into())), dsn).unwrap();
        assert_eq!(chosen.expose(), "postgres://u@h/d");
        assert!(matches!(
            chosen_url(Some(Secret(" ".into())), Some(String::new())),
            Err(ConfigError::Missing(_))
        ));
    }

    #[test]
    fn a_raw_special_character_in_the_password_gets_a_hint_not_an_echo() {
        let args = DatabaseArgs {
            database_url: Some(Secret(
                "postgres://app:p@ss:w#rd@db.example:5432/app".into(),
            )),
            ..database_args()
        };
        let message = args.to_settings().unwrap_err().to_string();
        assert!(message.contains("percent-encode"), "{message}");
        for secret in ["p@ss", "w#rd", "ss:w"] {
            assert!(!message.contains(secret), "{message}");
        }
    }

    #[test]
    fn credentials_come_from_one_source_and_iam_only_over_tls() {
        let dir = std::env::temp_dir().join(format!("dpw-cfg-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "from-the-file\n").unwrap();
        let with = |url: &str, file: Option<&std::path::Path>, iam: bool| DatabaseArgs {
            database_url: Some(Secret(url.into())),
            database_password_file: file.map(|f| f.to_path_buf()),
            database_iam_auth: iam,
            ..database_args()
        };
        let refused = |args: DatabaseArgs, name: &str| {
            let error = args.to_settings().unwrap_err();
            let text = error.to_string();
            assert!(
                matches!(&error, ConfigError::Invalid { name: n, .. } if *n == name),
                "{text}"
            );
            assert!(
                !text.contains("hunter2") && !text.contains("from-the-file"),
                "{text}"
            );
        };
        let tls = "postgres://app@db.example/app?sslmode=verify-full&sslrootcert=/ca.pem";
        let settings = with("postgres://app@db/app", Some(&file), false)
            .to_settings()
            .unwrap();
        assert_eq!(settings.password, Password::File(file.clone()));
        assert!(!format!("{settings:?}").contains("from-the-file"));
        assert_eq!(
            with(tls, None, true).to_settings().unwrap().password,
            Password::RdsIam
        );
        let require = "postgres://app@db.example/app?sslmode=require";
        assert!(with(require, None, true).to_settings().is_ok());
        refused(
            with("postgres://app@db/app", None, true),
            "DATABASE_IAM_AUTH",
        );
        refused(
            with("postgres://app@db/app?sslmode=prefer", None, true),
            "DATABASE_IAM_AUTH",
        );
        refused(with(tls, Some(&file), true), "DATABASE_IAM_AUTH");
        refused(
            with("postgres://app:hunter2@db/app?sslmode=require", None, true),
            "DATABASE_IAM_AUTH",
        );
        refused(
            with("postgres://app:hunter2@db/app", Some(&file), false),
            "DATABASE_PASSWORD_FILE",
        );
        refused(
            with("postgres://app@db/app?password=hunter2", Some(&file), false),
            "DATABASE_PASSWORD_FILE",
        );
        refused(
            with("postgres://app@db/app", Some(&dir.join("absent")), false),
            "DATABASE_PASSWORD_FILE",
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn settings_carry_units_and_never_print_the_password() {
        use clap::Parser as _;
        let argv = [
            "datapack-worker",
            "run",
            "--database-url",
            "postgres://app:hunter2@db/app",
            "--sqs-queue-url",
            "http://sqs/1/main",
            "--sqs-dead-letter-queue-url",
            "http://sqs/1/dead",
            "--s3-bucket",
            " uploads , ,archive",
            "--worker-concurrency",
            "25",
            "--database-statement-timeout-secs",
            "7",
        ];
        let crate::cli::Command::Run(args) = crate::cli::Cli::try_parse_from(argv).unwrap().command
        else {
            unreachable!()
        };
        let settings = args.into_settings().unwrap();
        assert_eq!(settings.pipeline.buckets, ["uploads", "archive"]);
        assert_eq!(settings.worker.pollers, 3, "one poller per ten slots");
        assert_eq!(settings.writer.timeout, Duration::from_secs(12));
        assert_eq!(settings.queue.visibility_timeout, Duration::from_secs(60));
        assert_eq!(settings.database.redacted_url, "postgres://app:***@db/app");
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    #[test]
    fn requires_a_named_user() {
        assert!(names_user("postgres://root@127.0.0.1:5432/db"));
        assert!(names_user("postgres://u:p@h/db"));
        assert!(names_user("postgres://h/db?user=app"));
        assert!(!names_user("postgres://127.0.0.1:5432/db"));
        assert!(!names_user("postgres://:pw@h/db"));
    }
}
