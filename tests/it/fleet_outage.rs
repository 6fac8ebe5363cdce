//! A fleet against a database as a managed one behaves: TLS only (verify-full against a CA),
//! scram passwords read from a file, a worker role whose connection limit is below what the
//! replicas ask for. Three real worker processes ride out a password rotation with every
//! session terminated, a squeeze of the connection budget, and the server stopped and started:
//! every upload ends as one live row with the right SHA-256, nothing is dead-lettered, every
//! replica ingests again after each fault, and no log line carries a password.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use sqlx::ConnectOptions as _;
use sqlx::postgres::PgConnectOptions;

use crate::support::db::sha256_hex;
use crate::support::own_pg::{OwnPg, WORKER_ROLE, replace_file};
use crate::support::scrape::sum;
use crate::support::{BinaryWorker, Launch, Moto, Stack, TestDb, wait_until};

const DATAPACK: &str = "dp-fleet";
/// Three replicas at four connections each ask for twelve; the role allows eight.
const REPLICAS: usize = 3;
const MAX_CONNECTIONS: &str = "4";
const ROLE_LIMIT: u32 = 8;

/// Rows recorded by one replica so far, from its own scrape.
async fn recorded(worker: &BinaryWorker) -> f64 {
    match worker.http.try_scrape().await {
        Some(scrape) => sum(
            &scrape,
            "datapack_worker_records_total",
            r#"outcome="recorded""#,
        ),
        None => 0.0,
    }
}

struct Fleet {
    stack: Stack,
    workers: Vec<BinaryWorker>,
    /// Every upload: key → SHA-256 of its bytes.
    uploads: HashMap<String, String>,
}

impl Fleet {
    async fn upload(&mut self, phase: &str) {
        let key = format!("{DATAPACK}/{phase}/{}.txt", self.uploads.len());
        let body = format!(
            "{phase} upload {} {}",
            self.uploads.len(),
            fastrand::u64(..)
        );
        self.stack.put(&key, body.as_bytes()).await;
        self.uploads.insert(key, sha256_hex(body.as_bytes()));
    }

    async fn counts(&self) -> Vec<f64> {
        let mut counts = Vec::new();
        for worker in &self.workers {
            counts.push(recorded(worker).await);
        }
        counts
    }

    /// Uploads, a few at a time, until every replica has recorded rows since `before`: each
    /// one ingests again after the fault, not merely the fleet.
    async fn until_every_replica_ingests(&mut self, phase: &str, before: &[f64]) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut round = 0;
        loop {
            let now = self.counts().await;
            if now.iter().zip(before).all(|(n, b)| n > b) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{phase}: not every replica ingested again: {before:?} -> {now:?}"
            );
            if round % 10 == 0 {
                for _ in 0..REPLICAS {
                    self.upload(phase).await;
                }
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every upload so far is a live row with the right SHA-256, and only one.
    async fn all_recorded(&self, db: &TestDb, deadline: Duration) {
        let expected = &self.uploads;
        wait_until("every upload recorded once, live", deadline, || async {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT object_key, sha256 FROM datapack_resource WHERE deleted_at IS NULL",
            )
            .fetch_all(&db.pool)
            .await
            .ok()?;
            let mut seen: HashMap<String, String> = HashMap::new();
            for (key, sha) in rows {
                assert!(
                    seen.insert(key.clone(), sha).is_none(),
                    "two live rows for {key}"
                );
            }
            (&seen == expected).then_some(())
        })
        .await;
    }
}

/// Holds `n` sessions of the worker role (TLS, the password) until dropped.
async fn hold_sessions(pg: &OwnPg, password: &str, n: usize) -> Vec<sqlx::PgConnection> {
    let options = PgConnectOptions::new()
        .host("localhost")
        .port(pg.port)
        .username(WORKER_ROLE)
        .password(password)
        .database("datapack")
        .ssl_mode(sqlx::postgres::PgSslMode::VerifyFull)
        .ssl_root_cert(pg.ca());
    let mut held = Vec::new();
    while held.len() < n {
        // The workers hold slots too: take each one as it frees.
        match options.connect().await {
            Ok(connection) => held.push(connection),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_rides_out_rotation_termination_a_squeeze_and_a_restart() {
    let first = format!("first-{}", fastrand::u64(..));
    let second = format!("second-{}", fastrand::u64(..));
    let (pg, db) = OwnPg::start(&first, ROLE_LIMIT).await;
    db.add_datapack(DATAPACK).await;
    let stack = Stack::new(&Moto::shared().endpoint).await;
    let secret = pg.dir.join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    let password_file = secret.join("password");
    replace_file(&password_file, &first);

    let mut workers = Vec::new();
    for _ in 0..REPLICAS {
        workers.push(launch(&stack, &db, &password_file).await);
    }
    let mut fleet = Fleet {
        stack,
        workers,
        uploads: HashMap::new(),
    };

    // Steady state: every replica ingests.
    fleet
        .until_every_replica_ingests("steady", &[0.0; REPLICAS])
        .await;
    fleet.all_recorded(&db, Duration::from_secs(30)).await;

    // Rotation: a new password on the server and in the file (renamed in, as Kubernetes
    // does), every session ended, so every connection from now on signs in anew.
    let admin = &db.pool;
    pg.set_password(admin, &second).await;
    replace_file(&password_file, &second);
    let ended = pg.terminate_workers(admin).await;
    assert!(ended > 0, "the workers held sessions");
    let before = fleet.counts().await;
    fleet.until_every_replica_ingests("rotated", &before).await;
    fleet.all_recorded(&db, Duration::from_secs(30)).await;

    // A squeeze: the test takes six of the role's eight slots, so the replicas are refused
    // connections while the database is up. Uploads still end as rows; nothing is a dead letter.
    let held = hold_sessions(&pg, &second, 6).await;
    for _ in 0..9 {
        fleet.upload("squeezed").await;
    }
    fleet.all_recorded(&db, Duration::from_secs(60)).await;
    assert!(
        pg.worker_sessions(admin).await <= i64::from(ROLE_LIMIT),
        "the role's limit holds"
    );
    drop(held);

    // An outage: the server stopped (every session ends, the port refuses), uploads meanwhile.
    pg.stop();
    for _ in 0..6 {
        fleet.upload("outage").await;
    }
    for worker in &fleet.workers {
        wait_until(
            "each replica to notice the outage",
            Duration::from_secs(30),
            || async { (worker.http.status("/readyz").await != Some(200)).then_some(()) },
        )
        .await;
    }
    pg.start_again();
    let before = fleet.counts().await;
    fleet
        .until_every_replica_ingests("restarted", &before)
        .await;
    fleet.all_recorded(&db, Duration::from_secs(60)).await;

    wait_until("the queue drained", Duration::from_secs(30), || async {
        fleet.stack.is_drained().await.then_some(())
    })
    .await;
    assert_eq!(
        fleet.stack.dlq_depth().await,
        (0, 0),
        "nothing dead-lettered"
    );

    let refusals = pg.server_log();
    assert!(
        refusals.contains("too many connections for role"),
        "the role's connection limit refused connections during the test"
    );
    for (i, worker) in fleet.workers.iter().enumerate() {
        let log = worker.log();
        for password in [&first, &second] {
            assert!(
                !log.contains(password.as_str()),
                "replica {i} logged a password"
            );
        }
        assert!(
            log.contains("dependency down") && log.to_lowercase().contains("connection refused"),
            "replica {i} said why the database was down:\n{log}"
        );
        assert!(log.contains("dependency up again"), "replica {i}:\n{log}");
    }
}

async fn launch(stack: &Stack, db: &TestDb, password_file: &Path) -> BinaryWorker {
    Launch::new(
        stack,
        db,
        &[
            "--database-max-connections",
            MAX_CONNECTIONS,
            "--database-idle-timeout-secs",
            "2",
            "--worker-concurrency",
            "8",
        ],
    )
    .binary_keeping_log(&[
        ("DATABASE_PASSWORD_FILE", password_file.to_str().unwrap()),
        (
            "RUST_LOG",
            "info,aws_config=warn,aws_smithy_runtime=warn,sqlx=warn",
        ),
    ])
    .await
}
