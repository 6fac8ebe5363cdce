//! The database write path alone: many concurrent tasks submit one resource each through the
//! worker's own group-commit writer (`writer::Writer` → `store::apply`), as messages finishing
//! together would. Runs two passes over the same rows; the second must be all `Duplicate`
//! (idempotency). Prints one JSON line with resources/s per pass.
//!
//! The second pass goes over the rows `--again` times (5 by default): redeliveries are several
//! times cheaper than new rows, and one round of 50,000 lasted about half a second, so a
//! hiccup of a few hundred milliseconds (a writer's first connection, autovacuum starting on
//! the new rows) made its rate vary two to four times from run to run.
//!
//!     DATABASE_URL=postgres://postgres@127.0.0.1/db cargo run --release --example db_write -- \
//!         --resources 50000 --tasks 64
//!
//! The database must be fresh (this migrates it). Writer settings are the worker's defaults
//! (DB_WRITERS=2, DB_MAX_BATCH=256, DATABASE_MAX_CONNECTIONS=3) unless given as flags;
//! `--no-notify` measures with announcements off (`NOTIFY_CHANGES=false`).

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use datapack_worker::store::writer::{Writer, WriterSettings};
use datapack_worker::store::{self, NewResource, PoolSettings, Write, WriteOutcome};
use sqlx::postgres::PgConnectOptions;

fn flag(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

fn flag_set(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

fn resource(i: usize, at: DateTime<Utc>) -> Write {
    let datapack = format!("dp-bench-{}", i % 50);
    let display = format!("file-{i}.bin");
    Write::Resource(NewResource {
        bucket: "bench-bucket".into(),
        object_key: format!("{datapack}/db/{display}"),
        datapack,
        path: "/db".into(),
        display,
        content_type: Some("application/octet-stream".into()),
        length: 1024,
        etag: format!("{:032x}", i),
        sha256: format!("{:064x}", i),
        sha256_source: Default::default(),
        submitter_name: Some("Bench Uploader".into()),
        submitter_email: Some("bench@example.org".into()),
        object_last_modified: Some(at),
        version_id: None,
        sequencer: Some(format!("{:016X}", i + 1)),
        event_time: at,
        tiebreak: None,
    })
}

/// The worker's allocator (src/main.rs): this measures the worker's write path, and on two cores
/// its CPU is taken from the database it drives.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let resources = flag("--resources", 50_000);
    let tasks = flag("--tasks", 64);
    let writers = flag("--writers", 2);
    let max_batch = flag("--max-batch", 256);
    let connections = flag("--connections", 3) as u32;
    let again = flag("--again", 5).max(1);
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let pool = store::pool(
        PgConnectOptions::from_str(&url).expect("DATABASE_URL parses"),
        &PoolSettings {
            max_connections: connections,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        },
    );
    store::migrate(&pool).await.expect("migrations");
    let at = Utc::now();
    let mut passes = Vec::new();
    let health = datapack_worker::ops::health::Health::new();
    for pass in 0..2 {
        let writes = if pass == 0 {
            resources
        } else {
            resources * again
        };
        let watchdog = datapack_worker::ops::watchdog::Watchdog::new(health.clone());
        let (writer, writer_tasks) = Writer::spawn(
            pool.clone(),
            WriterSettings {
                writers,
                max_batch,
                options: store::WriteOptions {
                    create_datapacks: true,
                    notify: !flag_set("--no-notify"),
                },
                timeout: Duration::from_secs(35),
            },
            health.clone(),
            &watchdog,
        );
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..tasks {
            let (writer, next) = (writer.clone(), next.clone());
            set.spawn(async move {
                let mut counts = [0usize; 5];
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= writes {
                        return counts;
                    }
                    let i = n % resources;
                    let outcome = writer.write(vec![resource(i, at)]).await.expect("write");
                    let index = match outcome[0] {
                        WriteOutcome::Recorded => 0,
                        WriteOutcome::Duplicate => 1,
                        WriteOutcome::UnknownDatapack => 2,
                        WriteOutcome::Removed => 3,
                        WriteOutcome::Stale | WriteOutcome::Tie => 4,
                    };
                    counts[index] += 1;
                }
            });
        }
        let mut counts = [0usize; 5];
        while let Some(c) = set.join_next().await {
            for (total, n) in counts.iter_mut().zip(c.unwrap()) {
                *total += n;
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        // The writers are meant to end now; the next pass gets a watchdog of its own.
        watchdog.stopping();
        drop(writer);
        for task in writer_tasks {
            let _ = task.await;
        }
        let expected = if pass == 0 { 0 } else { 1 };
        assert_eq!(
            counts[expected], writes,
            "pass {pass}: outcomes recorded/duplicate/unknown/removed/stale = {counts:?}"
        );
        passes.push(format!(
            "{{\"pass\": {pass}, \"resources\": {writes}, \"seconds\": {elapsed:.4}, \"per_s\": {:.1}, \"recorded\": {}, \"duplicate\": {}}}",
            writes as f64 / elapsed,
            counts[0],
            counts[1]
        ));
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM datapack_resource")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        rows as usize, resources,
        "one row per resource after two passes"
    );
    println!(
        "{{\"tasks\": {tasks}, \"writers\": {writers}, \"max_batch\": {max_batch}, \"passes\": [{}]}}",
        passes.join(", ")
    );
}
