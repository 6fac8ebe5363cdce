//! Settings from environment variables and flags (units in the names), validated at start, with
//! secrets that never print.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use sqlx::postgres::PgConnectOptions;

/// A value that must never reach a log, an error message or a metric label.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

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

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL with the user named (postgres://USER[:PASSWORD]@HOST/DB). `DB_DSN` is accepted too.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 8)]
    pub database_max_connections: u32,
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT_SECS", default_value_t = 5)]
    pub database_acquire_timeout_secs: u64,
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT_SECS", default_value_t = 30)]
    pub database_statement_timeout_secs: u64,
}

impl DatabaseArgs {
    pub fn url(&self) -> Result<Secret, ConfigError> {
        self.database_url
            .clone()
            .or_else(|| {
                std::env::var("DB_DSN")
                    .ok()
                    .filter(|v| !v.is_empty())
                    .map(Secret)
            })
            .ok_or(ConfigError::Missing("DATABASE_URL (or DB_DSN)"))
    }

    pub fn connect_options(&self) -> Result<PgConnectOptions, ConfigError> {
        let url = self.url()?;
        if !names_user(url.expose()) {
            return Err(invalid(
                "DATABASE_URL",
                scrub(
                    &format!(
                        "name the user, as in postgres://USER@HOST/DB (got {})",
                        redact_url(url.expose())
                    ),
                    url.expose(),
                ),
            ));
        }
        PgConnectOptions::from_str(url.expose()).map_err(|e| {
            invalid(
                "DATABASE_URL",
                scrub(
                    &format!("{} does not parse: {e}", redact_url(url.expose())),
                    url.expose(),
                ),
            )
        })
    }

    pub fn pool_settings(&self) -> crate::store::PoolSettings {
        crate::store::PoolSettings {
            max_connections: self.database_max_connections.max(1),
            acquire_timeout: Duration::from_secs(self.database_acquire_timeout_secs.max(1)),
            statement_timeout: Duration::from_secs(self.database_statement_timeout_secs.max(1)),
        }
    }
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
pub fn redact_url(url: &str) -> String {
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
    pub database: DatabaseArgs,
    #[arg(long, env = "SQS_QUEUE_URL")]
    pub sqs_queue_url: Option<String>,
    #[arg(long, env = "SQS_DEAD_LETTER_QUEUE_URL")]
    pub sqs_dead_letter_queue_url: Option<String>,
    /// Buckets served, comma-separated; events for other buckets are skipped. `FILESYSTEM_S3_BUCKET` too.
    #[arg(long, env = "S3_BUCKET", value_delimiter = ',')]
    pub s3_bucket: Vec<String>,
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 16)]
    pub worker_concurrency: usize,
    /// Pollers; default one per ten worker slots.
    #[arg(long, env = "WORKER_POLLERS")]
    pub worker_pollers: Option<usize>,
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9898")]
    pub metrics_addr: SocketAddr,
    #[arg(long, env = "SQS_WAIT_TIME_SECS", default_value_t = 20)]
    pub sqs_wait_time_secs: u64,
    #[arg(long, env = "SQS_VISIBILITY_TIMEOUT_SECS", default_value_t = 60)]
    pub sqs_visibility_timeout_secs: u64,
    /// Cap on how long one message's visibility is extended while it is worked on.
    #[arg(long, env = "MAX_PROCESSING_SECS", default_value_t = 3600)]
    pub max_processing_secs: u64,
    #[arg(long, env = "RETRY_BASE_SECS", default_value_t = 5)]
    pub retry_base_secs: u64,
    #[arg(long, env = "RETRY_MAX_SECS", default_value_t = 900)]
    pub retry_max_secs: u64,
    /// Attempts a message gets before a failure dead-letters it with its reason; capped by the
    /// queue's redrive maxReceiveCount.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 10)]
    pub max_attempts: u32,
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 25)]
    pub shutdown_grace_secs: u64,
    /// Required `uploaded-by` metadata value; `off` (or empty) records every upload.
    #[arg(long, env = "REQUIRE_UPLOADED_BY", default_value = "presigned-url")]
    pub require_uploaded_by: String,
    /// Create a datapack row for an unknown identifier instead of dead-lettering.
    #[arg(long, env = "CREATE_MISSING_DATAPACKS", default_value_t = false)]
    pub create_missing_datapacks: bool,
    /// Apply pending migrations before starting.
    #[arg(long, env = "MIGRATE_ON_START", default_value_t = false)]
    pub migrate_on_start: bool,
    #[arg(long, env = "DB_WRITERS", default_value_t = 4)]
    pub db_writers: usize,
    #[arg(long, env = "DB_MAX_BATCH", default_value_t = 256)]
    pub db_max_batch: usize,
    #[arg(long, env = "AWS_ATTEMPT_TIMEOUT_SECS", default_value_t = 30)]
    pub aws_attempt_timeout_secs: u64,
    #[arg(long, env = "QUEUE_SAMPLE_SECS", default_value_t = 15)]
    pub queue_sample_secs: u64,
    /// Endpoint for S3 and SQS (MinIO, moto, a VPC endpoint); the AWS chain reads it too.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,
    /// Objects announced at least this large are read as parallel ranged GETs; 0 turns that off.
    #[arg(long, env = "RANGED_GET_THRESHOLD_BYTES", default_value_t = 64 << 20)]
    pub ranged_get_threshold_bytes: u64,
    /// Size of one ranged GET part.
    #[arg(long, env = "RANGED_GET_PART_BYTES", default_value_t = 8 << 20)]
    pub ranged_get_part_bytes: u64,
    /// Part GETs in flight per object; also the process-wide number of part buffers, so part
    /// memory stays under RANGED_GET_PARALLELISM × RANGED_GET_PART_BYTES.
    #[arg(long, env = "RANGED_GET_PARALLELISM", default_value_t = 4)]
    pub ranged_get_parallelism: usize,
    /// Record a single-part upload's SHA-256 from S3's stored checksum (HeadObject) without
    /// reading the object. Only where the store verifies checksums at upload (AWS S3 does; an
    /// S3-compatible store or emulator may not). Off: every object is read and hashed.
    #[arg(long, env = "S3_CHECKSUMS_TRUSTED", default_value_t = false)]
    pub s3_checksums_trusted: bool,
    /// Share of trusted objects read and hashed anyway to audit the store (0.0–1.0).
    #[arg(long, env = "CHECKSUM_AUDIT_RATIO", default_value_t = 0.01)]
    pub checksum_audit_ratio: f64,
}

impl RunArgs {
    pub fn buckets(&self) -> Vec<String> {
        let mut buckets: Vec<String> = self
            .s3_bucket
            .iter()
            .map(|b| b.trim().to_owned())
            .filter(|b| !b.is_empty())
            .collect();
        if buckets.is_empty()
            && let Ok(seed) = std::env::var("FILESYSTEM_S3_BUCKET")
            && !seed.is_empty()
        {
            buckets.push(seed);
        }
        buckets
    }

    pub fn required_uploaded_by(&self) -> Option<String> {
        let v = self.require_uploaded_by.trim();
        (!v.is_empty() && !v.eq_ignore_ascii_case("off")).then(|| v.to_owned())
    }

    /// Checks everything that can be checked without a network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.database.connect_options()?;
        for (name, url) in [
            ("SQS_QUEUE_URL", &self.sqs_queue_url),
            ("SQS_DEAD_LETTER_QUEUE_URL", &self.sqs_dead_letter_queue_url),
        ] {
            let url = url.as_deref().ok_or(ConfigError::Missing(name))?;
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(invalid(name, format!("{url:?} is not a queue URL")));
            }
        }
        if self.sqs_queue_url == self.sqs_dead_letter_queue_url {
            return Err(invalid(
                "SQS_DEAD_LETTER_QUEUE_URL",
                "must differ from SQS_QUEUE_URL",
            ));
        }
        if self.buckets().is_empty() {
            return Err(ConfigError::Missing("S3_BUCKET (or FILESYSTEM_S3_BUCKET)"));
        }
        if !(1..=4096).contains(&self.worker_concurrency) {
            return Err(invalid("WORKER_CONCURRENCY", "must be between 1 and 4096"));
        }
        if self.sqs_wait_time_secs > 20 {
            return Err(invalid("SQS_WAIT_TIME_SECS", "SQS allows at most 20"));
        }
        if !(2..=43_200).contains(&self.sqs_visibility_timeout_secs) {
            return Err(invalid(
                "SQS_VISIBILITY_TIMEOUT_SECS",
                "must be between 2 and 43200",
            ));
        }
        if self.aws_attempt_timeout_secs <= self.sqs_wait_time_secs {
            return Err(invalid(
                "AWS_ATTEMPT_TIMEOUT_SECS",
                "must be longer than SQS_WAIT_TIME_SECS, or every idle long poll times out",
            ));
        }
        if self.retry_base_secs == 0
            || self.retry_max_secs < self.retry_base_secs
            || self.retry_max_secs > 43_200
        {
            return Err(invalid(
                "RETRY_MAX_SECS",
                "need 0 < RETRY_BASE_SECS <= RETRY_MAX_SECS <= 43200",
            ));
        }
        let within = |name: &'static str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(invalid(
                    name,
                    format!("{value} is out of range: must be between {min} and {max}"),
                ))
            }
        };
        if let Some(pollers) = self.worker_pollers {
            within("WORKER_POLLERS", pollers as u64, 1, 1024)?;
        }
        within(
            "MAX_PROCESSING_SECS",
            self.max_processing_secs,
            self.sqs_visibility_timeout_secs,
            43_200,
        )?;
        within("MAX_ATTEMPTS", self.max_attempts.into(), 1, 1000)?;
        within("SHUTDOWN_GRACE_SECS", self.shutdown_grace_secs, 0, 3600)?;
        within("DB_WRITERS", self.db_writers as u64, 1, 64)?;
        within("DB_MAX_BATCH", self.db_max_batch as u64, 1, 10_000)?;
        within(
            "DATABASE_MAX_CONNECTIONS",
            self.database.database_max_connections.into(),
            1,
            1000,
        )?;
        within(
            "DATABASE_ACQUIRE_TIMEOUT_SECS",
            self.database.database_acquire_timeout_secs,
            1,
            3600,
        )?;
        within(
            "DATABASE_STATEMENT_TIMEOUT_SECS",
            self.database.database_statement_timeout_secs,
            1,
            3600,
        )?;
        within(
            "AWS_ATTEMPT_TIMEOUT_SECS",
            self.aws_attempt_timeout_secs,
            1,
            3600,
        )?;
        within("QUEUE_SAMPLE_SECS", self.queue_sample_secs, 1, 3600)?;
        within(
            "RANGED_GET_PART_BYTES",
            self.ranged_get_part_bytes,
            1 << 20,
            5 << 30,
        )?;
        within(
            "RANGED_GET_PARALLELISM",
            self.ranged_get_parallelism as u64,
            1,
            64,
        )?;
        if !(0.0..=1.0).contains(&self.checksum_audit_ratio) {
            return Err(invalid(
                "CHECKSUM_AUDIT_RATIO",
                format!(
                    "{} is out of range: must be between 0.0 and 1.0",
                    self.checksum_audit_ratio
                ),
            ));
        }
        Ok(())
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
            database_max_connections: 1,
            database_acquire_timeout_secs: 1,
            database_statement_timeout_secs: 1,
        };
        let message = args.connect_options().unwrap_err().to_string();
        assert!(!message.contains("pa/ss"), "{message}");
        assert!(!message.contains("wo@rd"), "{message}");
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
