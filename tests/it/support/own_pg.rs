//! A PostgreSQL server of the test's own, for what the shared one cannot show: TLS only (a CA
//! made here, the server's certificate naming `localhost` and `127.0.0.1`), scram passwords, a
//! worker role with a connection limit, and a server the test stops and starts.
//!
//! `initdb` and `pg_ctl` come from the PostgreSQL that scripts/ensure-postgres.sh installs
//! (`PG_BINDIR` overrides where); `openssl` makes the certificates. Run as root, the server runs
//! as the OS user `postgres`. Administration goes through the Unix socket in the server's own
//! directory (trust there), the worker through TCP with TLS and its password.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};

use super::TestDb;

const ROLES_SQL: &str = include_str!("../../../deploy/sql/roles.sql");
const GRANTS_SQL: &str = include_str!("../../../deploy/sql/grants.sql");

/// The role the workers sign in as (deploy/sql/roles.sql).
pub const WORKER_ROLE: &str = "datapack_worker";
const DATABASE: &str = "datapack";

pub struct OwnPg {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    /// Run the server's tools as `postgres` (the test runs as root).
    as_postgres: bool,
}

/// The directory holding `initdb`: `PG_BINDIR`, else the newest /usr/lib/postgresql/*/bin.
fn bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server tools (scripts/ensure-postgres.sh), or set PG_BINDIR")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().expect("initdb under /usr/lib/postgresql/*/bin")
}

fn run(command: &mut Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl OwnPg {
    /// A fresh cluster, started, with the schema migrated, the roles and grants of
    /// deploy/sql applied, and the worker role given `password` and `connection_limit`.
    pub async fn start(password: &str, connection_limit: u32) -> (OwnPg, TestDb) {
        let dir = std::env::temp_dir().join(format!(
            "dpw-own-pg-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(dir.join("socket")).unwrap();
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let pg = OwnPg {
            port: free_port(),
            bin: bindir(),
            as_postgres,
            dir,
        };
        pg.certificates();
        if as_postgres {
            run(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&pg.dir),
                "chown",
            );
        }
        pg.tool("initdb")
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=reject",
                "-D",
            ])
            .arg(pg.dir.join("data"))
            .output()
            .map(|o| {
                assert!(
                    o.status.success(),
                    "initdb: {}",
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .expect("initdb");
        pg.configure();
        pg.pg_ctl_start();
        let db = pg.prepare(password, connection_limit).await;
        (pg, db)
    }

    fn tool(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A CA, and the server's key and certificate signed by it for `localhost` and `127.0.0.1`.
    fn certificates(&self) {
        let d = |f: &str| self.dir.join(f);
        let openssl = |args: &[&str]| {
            run(
                Command::new("openssl").args(args).current_dir(&self.dir),
                "openssl",
            )
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=datapack test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            d("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ]);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// TLS only over TCP with scram passwords; trust on the Unix socket for the test itself.
    fn configure(&self) {
        let data = self.dir.join("data");
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n\
             hostssl all all ::1/128 scram-sha-256\n",
        )
        .unwrap();
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{socket}'\n\
             ssl = on\nssl_cert_file = '{dir}/server.crt'\nssl_key_file = '{dir}/server.key'\n\
             password_encryption = 'scram-sha-256'\nmax_connections = 40\nfsync = off\n\
             synchronous_commit = off\nfull_page_writes = off\n",
            port = self.port,
            socket = self.dir.join("socket").display(),
            dir = self.dir.display(),
        );
        let mut text = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        text.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), text).unwrap();
    }

    fn pg_ctl_start(&self) {
        run(
            self.tool("pg_ctl")
                .args(["-w", "-t", "30", "-l"])
                .arg(self.dir.join("server.log"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("start"),
            "pg_ctl start",
        );
    }

    /// Starts the server again after [`OwnPg::stop`].
    pub fn start_again(&self) {
        self.pg_ctl_start();
    }

    /// Stops the server: fast shutdown, every session ended (a real outage).
    pub fn stop(&self) {
        run(
            self.tool("pg_ctl")
                .args(["-w", "-m", "fast", "-D"])
                .arg(self.dir.join("data"))
                .arg("stop"),
            "pg_ctl stop",
        );
    }

    /// The superuser, through the Unix socket.
    fn admin_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(self.dir.join("socket"))
            .port(self.port)
            .username("postgres")
            .database(database)
    }

    /// A pool of the superuser on the workers' database (lazy: it outlives outages).
    pub fn admin(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(self.admin_options(DATABASE))
    }

    /// The URL the workers use: TLS verified against the test's CA, no password (it is in the
    /// password file).
    pub fn worker_url(&self) -> String {
        format!(
            "postgres://{WORKER_ROLE}@localhost:{}/{DATABASE}?sslmode=verify-full&sslrootcert={}",
            self.port,
            self.ca().display()
        )
    }

    async fn prepare(&self, password: &str, connection_limit: u32) -> TestDb {
        let server = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(self.admin_options("postgres"))
            .await
            .expect("the test's own PostgreSQL");
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {DATABASE}")))
            .execute(&server)
            .await
            .unwrap();
        server.close().await;
        let admin = self.admin();
        sqlx::raw_sql(ROLES_SQL).execute(&admin).await.unwrap();
        datapack_worker::store::migrate(&admin).await.unwrap();
        sqlx::raw_sql(GRANTS_SQL).execute(&admin).await.unwrap();
        self.set_password(&admin, password).await;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "ALTER ROLE {WORKER_ROLE} CONNECTION LIMIT {connection_limit}"
        )))
        .execute(&admin)
        .await
        .unwrap();
        TestDb {
            url: self.worker_url(),
            pool: admin,
        }
    }

    /// Gives the worker role a new password (the server keeps only its scram verifier).
    pub async fn set_password(&self, admin: &PgPool, password: &str) {
        assert!(
            password
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        );
        sqlx::raw_sql(AssertSqlSafe(format!(
            "ALTER ROLE {WORKER_ROLE} PASSWORD '{password}'"
        )))
        .execute(admin)
        .await
        .unwrap();
    }

    /// Ends every session of the worker role; returns how many there were.
    pub async fn terminate_workers(&self, admin: &PgPool) -> i64 {
        sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1",
        )
        .bind(WORKER_ROLE)
        .fetch_one(admin)
        .await
        .unwrap()
    }

    /// Sessions of the worker role now.
    pub async fn worker_sessions(&self, admin: &PgPool) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE usename = $1")
            .bind(WORKER_ROLE)
            .fetch_one(admin)
            .await
            .unwrap()
    }

    /// What the server logged (connection refusals, authentication failures).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

/// Writes `contents` to `path` the way Kubernetes updates a mounted Secret: a new file renamed
/// over the old one, so a reader sees the old or the new password, never half of one.
pub fn replace_file(path: &Path, contents: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, contents).unwrap();
    std::fs::rename(&next, path).unwrap();
}

impl Drop for OwnPg {
    fn drop(&mut self) {
        let _ = self
            .tool("pg_ctl")
            .args(["-w", "-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop")
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
