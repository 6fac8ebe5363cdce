//! How the worker reaches PostgreSQL: the pool, the password each *new* connection presents (the
//! URL's, a file read again for every connection, or an RDS IAM token), a gentle ramp when
//! connections open, and the one question every caller asks after a failed acquire: was that the
//! database refusing *more* connections (backpressure) or the database gone?
//!
//! Connections open on demand only (no minimum), close after `DATABASE_IDLE_TIMEOUT_SECS` idle,
//! and open at most one per [`RAMP_SPACING`] (jittered): after an outage a replica comes back
//! with the probe's one connection and grows with its work, not all at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_credential_types::provider::SharedCredentialsProvider;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, PgConnection, PgPool, Postgres};

use crate::store::PoolSettings;
use crate::store::iam::{Target, Tokens};

/// Least time between two connections this process opens (jittered ±50 %): ten a second at most.
pub(crate) const RAMP_SPACING: Duration = Duration::from_millis(100);

/// Where the password of a new connection comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Password {
    /// In the URL (or none: trust, a client certificate).
    InUrl,
    /// `DATABASE_PASSWORD_FILE`: read for every new connection, so a rotated Kubernetes Secret
    /// or CSI-mounted secret takes effect without a restart.
    File(PathBuf),
    /// `DATABASE_IAM_AUTH`: an RDS IAM token signed from the AWS credential chain.
    RdsIam,
}

/// What signs RDS IAM tokens: the AWS chain's credentials and region.
#[derive(Clone)]
pub(crate) struct AwsSigner {
    pub(crate) credentials: SharedCredentialsProvider,
    pub(crate) region: String,
}

/// Why a connection's credentials could not be made. Names files, never their contents.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CredentialError {
    #[error("DATABASE_PASSWORD_FILE {path}: {problem}")]
    File { path: String, problem: String },
    #[error("DATABASE_IAM_AUTH needs AWS credentials and a region (AWS_REGION) from the AWS chain")]
    NoSigner,
    #[error(transparent)]
    Token(#[from] crate::store::iam::TokenError),
}

/// Reads the password file: the whole file, less one trailing line end.
pub(crate) fn read_password_file(path: &Path) -> Result<String, CredentialError> {
    let problem = |problem: String| CredentialError::File {
        path: path.display().to_string(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| problem(e.kind().to_string()))?;
    let password = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if password.is_empty() {
        return Err(problem("the file is empty".into()));
    }
    Ok(password.to_owned())
}

enum Source {
    Fixed,
    File(PathBuf),
    Iam(Tokens),
}

struct Opener {
    /// The URL's options with the worker's session settings; the password is added per connection.
    base: PgConnectOptions,
    source: Source,
    max: u32,
    acquire_timeout: Duration,
    /// When the next connection may open.
    next_open: Mutex<Instant>,
    /// Connections handed out so far: a waiter that sees it grow knows the database is serving
    /// this process and merely refuses it *more* connections.
    handed: AtomicU64,
}

/// The pool and how its connections are opened. Cheap to clone.
#[derive(Clone)]
pub struct Database {
    pool: PgPool,
    opener: Arc<Opener>,
}

impl From<PgPool> for Database {
    /// A pool made elsewhere (tests, embedders), its options used as they are.
    fn from(pool: PgPool) -> Self {
        let base = (*pool.connect_options()).clone();
        let options = pool.options();
        let opener = Opener {
            base,
            source: Source::Fixed,
            max: options.get_max_connections(),
            acquire_timeout: options.get_acquire_timeout(),
            next_open: Mutex::new(Instant::now()),
            handed: AtomicU64::new(0),
        };
        Self {
            pool,
            opener: Arc::new(opener),
        }
    }
}

impl Database {
    /// A lazy pool (the worker starts, and reports not ready, while the database is down). With
    /// [`Password::RdsIam`], `signer` must be given.
    pub(crate) fn new(
        options: PgConnectOptions,
        password: &Password,
        settings: &PoolSettings,
        signer: Option<AwsSigner>,
    ) -> Result<Self, CredentialError> {
        let base = options.application_name("datapack-worker").options([(
            "statement_timeout",
            settings.statement_timeout.as_millis().to_string(),
        )]);
        let source = match password {
            Password::InUrl => Source::Fixed,
            Password::File(path) => Source::File(path.clone()),
            Password::RdsIam => {
                let signer = signer.ok_or(CredentialError::NoSigner)?;
                let target = Target {
                    host: base.get_host().to_owned(),
                    port: base.get_port(),
                    user: base.get_username().to_owned(),
                    region: signer.region,
                };
                Source::Iam(Tokens::new(target, signer.credentials))
            }
        };
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .min_connections(0)
            .idle_timeout(settings.idle_timeout)
            .acquire_timeout(settings.acquire_timeout)
            .test_before_acquire(true)
            .connect_lazy_with(base.clone());
        let opener = Opener {
            base,
            source,
            max: settings.max_connections,
            acquire_timeout: settings.acquire_timeout,
            next_open: Mutex::new(Instant::now()),
            handed: AtomicU64::new(0),
        };
        Ok(Self {
            pool,
            opener: Arc::new(opener),
        })
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Connections handed out so far (see [`Database::acquire`]).
    pub(crate) fn handed(&self) -> u64 {
        self.opener.handed.load(Ordering::Relaxed)
    }

    /// A connection from the pool. When none is idle and the pool may grow, the new connection
    /// waits its turn on the ramp and gets fresh credentials first.
    pub(crate) async fn acquire(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        if self.pool.num_idle() == 0 && self.pool.size() < self.opener.max {
            self.opener.ramp().await;
            self.refresh().await?;
        }
        let connection = match self.pool.acquire().await {
            // An idle connection was found dead (terminated, say, after a rotation) and its
            // replacement signed in with what the options held: fresh credentials, once more.
            Err(error)
                if signed_in_wrongly(&error) && !matches!(self.opener.source, Source::Fixed) =>
            {
                self.refresh().await?;
                self.pool.acquire().await?
            }
            other => other?,
        };
        self.opener.handed.fetch_add(1, Ordering::Relaxed);
        Ok(connection)
    }

    /// Options for a new connection, with the password as it is now.
    pub(crate) async fn current_options(&self) -> Result<PgConnectOptions, sqlx::Error> {
        let base = self.opener.base.clone();
        Ok(match &self.opener.source {
            Source::Fixed => base,
            Source::File(path) => {
                let path = path.clone();
                let password = tokio::task::spawn_blocking(move || read_password_file(&path))
                    .await
                    .map_err(|e| sqlx::Error::Configuration(e.into()))?
                    .map_err(configuration)?;
                base.password(&password)
            }
            Source::Iam(tokens) => {
                let token = tokens
                    .current()
                    .await
                    .map_err(|e| configuration(e.into()))?;
                base.password(token.expose())
            }
        })
    }

    /// Puts fresh credentials into the pool's options; the next connection it opens uses them.
    async fn refresh(&self) -> Result<(), sqlx::Error> {
        if matches!(self.opener.source, Source::Fixed) {
            return Ok(());
        }
        let options = self.current_options().await?;
        self.pool.set_connect_options(options);
        Ok(())
    }

    /// One connection outside the pool, with fresh credentials, to learn why the pool could not
    /// give one: its error is the cause ("connection refused", "too many connections for role",
    /// "password authentication failed") where the pool only says it timed out.
    pub(crate) async fn connect_directly(&self) -> Result<PgConnection, sqlx::Error> {
        let options = self.current_options().await?;
        match tokio::time::timeout(self.opener.acquire_timeout, options.connect()).await {
            Ok(result) => result,
            Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "connecting took longer than {:?}",
                    self.opener.acquire_timeout
                ),
            ))),
        }
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await
    }
}

fn configuration(error: CredentialError) -> sqlx::Error {
    sqlx::Error::Configuration(Box::new(error))
}

impl Opener {
    /// Waits for this connection's turn to open.
    async fn ramp(&self) {
        let wait = {
            let mut next = self
                .next_open
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let now = Instant::now();
            let at = (*next).max(now);
            *next = at + RAMP_SPACING.mul_f64(0.5 + fastrand::f64());
            at - now
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Whether a failed acquire is the database refusing this process *more* connections rather
/// than a failure: the database said so (`too_many_connections`, also the "remaining connection
/// slots are reserved" refusal), or the pool timed out while other acquires of this process were
/// served. Never the fault of the work that waited.
pub(crate) fn refused(error: &sqlx::Error, served_meanwhile: bool) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().as_deref() == Some("53300"),
        sqlx::Error::PoolTimedOut => served_meanwhile,
        _ => false,
    }
}

/// Whether the server refused the credentials (`invalid_password`, `invalid_authorization_specification`).
fn signed_in_wrongly(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("28")))
}

/// Whether the error lost the connection itself (terminated by an administrator, the server
/// restarting, the network): a transaction that failed so committed nothing and may be tried
/// again at once on another connection.
pub(crate) fn lost_connection(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            // admin_shutdown, crash_shutdown, connection exceptions
            code == "57P01" || code == "57P02" || code.starts_with("08")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_loses_only_its_line_end() {
        let dir = std::env::temp_dir().join(format!("dpw-pw-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("password");
        std::fs::write(&path, "s3cret with space \n").unwrap();
        assert_eq!(read_password_file(&path).unwrap(), "s3cret with space ");
        std::fs::write(&path, "crlf\r\n").unwrap();
        assert_eq!(read_password_file(&path).unwrap(), "crlf");
        std::fs::write(&path, "\n").unwrap();
        let empty = read_password_file(&path).unwrap_err().to_string();
        assert!(empty.contains("empty"), "{empty}");
        std::fs::write(&path, "hunter2").unwrap();
        assert_eq!(read_password_file(&path).unwrap(), "hunter2");
        let missing = read_password_file(&dir.join("nope"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("not found"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A server error with a SQLSTATE, as PostgreSQL sends them.
    #[derive(Debug)]
    struct Coded(&'static str);

    impl std::fmt::Display for Coded {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "sqlstate {}", self.0)
        }
    }

    impl std::error::Error for Coded {}

    impl sqlx::error::DatabaseError for Coded {
        fn message(&self) -> &str {
            "coded"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    /// `too_many_connections` (a role's or the server's limit, and "remaining connection slots
    /// are reserved") is backpressure whatever else happens; a lost connection is not.
    #[test]
    fn too_many_connections_is_backpressure_not_an_outage() {
        let refusal = || sqlx::Error::Database(Box::new(Coded("53300")));
        assert!(refused(&refusal(), false));
        assert!(refused(&refusal(), true));
        assert!(!lost_connection(&refusal()));
        let terminated = sqlx::Error::Database(Box::new(Coded("57P01")));
        assert!(!refused(&terminated, true));
        assert!(lost_connection(&terminated));
        let undefined_column = sqlx::Error::Database(Box::new(Coded("42703")));
        assert!(!refused(&undefined_column, true));
        assert!(!lost_connection(&undefined_column));
    }

    #[test]
    fn a_pool_timeout_is_backpressure_only_while_others_are_served() {
        assert!(refused(&sqlx::Error::PoolTimedOut, true));
        assert!(!refused(&sqlx::Error::PoolTimedOut, false));
        let refused_io = sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into());
        assert!(!refused(&refused_io, true));
        assert!(lost_connection(&refused_io));
        assert!(!lost_connection(&sqlx::Error::PoolTimedOut));
    }
}
