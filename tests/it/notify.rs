//! The push to the app: a real `LISTEN` connection hears of every committed change of a row,
//! once, after the commit, in commit order, and of nothing that changed nothing.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use datapack_worker::store::notify::CHANNEL;
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgListener;

use crate::support::s3_proxy::{Match, S3Proxy};
use crate::support::stack::s3_event;
use crate::support::{Moto, Stack, TestDb, TestWorker, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);

async fn setup() -> (Stack, TestDb, PgListener) {
    let (stack, db) = crate::support::setup("dp").await;
    let mut listener = PgListener::connect(&db.url).await.unwrap();
    listener.listen(CHANNEL).await.unwrap();
    (stack, db, listener)
}

/// Uploads `body` as `key` and announces it with the event S3 would send, at `(sequencer,
/// time)`, once the queue holds nothing else; returns the ETag.
async fn upload_announced(stack: &Stack, key: &str, body: &[u8], at: (&str, &str)) -> String {
    let etag = stack.put(key, body).await;
    stack.purge().await;
    let event = s3_event(
        "ObjectCreated:Put",
        &stack.bucket,
        key,
        Some(&etag),
        Some(at.0),
        at.1,
    );
    deliver(stack, &event).await;
    etag
}

/// The next notification's payload, within the deadline.
async fn next(listener: &mut PgListener) -> Value {
    let n = tokio::time::timeout(DEADLINE, listener.recv())
        .await
        .expect("a notification within the deadline")
        .unwrap();
    assert_eq!(n.channel(), CHANNEL);
    serde_json::from_str(n.payload()).unwrap_or_else(|_| Value::String(n.payload().to_owned()))
}

/// The row a payload names, as another connection sees it now: (live, etag).
async fn row(db: &TestDb, id: i64) -> Option<(bool, String)> {
    sqlx::query("SELECT deleted_at IS NULL, etag FROM datapack_resource WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
}

/// Checks a payload against what it must say, and that its change is already committed: the
/// row is visible from another connection, in the state the payload announces.
async fn expect(db: &TestDb, payload: &Value, change: &str, key: &str, etag: &str, live: bool) {
    assert_eq!(payload["change"], change, "{payload}");
    assert_eq!(payload["key"], key, "{payload}");
    assert_eq!(payload["etag"], etag, "{payload}");
    assert_eq!(payload["live"], live, "{payload}");
    assert_eq!(payload["datapack"], "dp", "{payload}");
    assert!(payload["version_id"].is_null(), "{payload}");
    let id = payload["id"].as_i64().unwrap();
    assert_eq!(
        row(db, id).await,
        Some((live, etag.to_owned())),
        "the change is committed when its notification arrives"
    );
}

async fn deliver(stack: &Stack, body: &str) {
    stack.send(body).await;
    wait_until("the queue settled", DEADLINE, || async {
        (stack.depth().await == (0, 0)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_change_is_announced_once_in_commit_order_and_a_duplicate_not_at_all() {
    let (stack, db, mut listener) = setup().await;
    let key = "dp/raw data/notes.txt";
    let e1 = stack.put(key, b"first").await;
    let e2 = stack.put(key, b"second").await;
    stack.purge().await;
    let worker = TestWorker::spawn(&stack, &db, &[]).await;
    let b = stack.bucket.clone();
    let create1 = s3_event(
        "ObjectCreated:Put",
        &b,
        key,
        Some(&e1),
        Some("10"),
        "2024-05-01T10:00:01Z",
    );
    let create2 = s3_event(
        "ObjectCreated:Put",
        &b,
        key,
        Some(&e2),
        Some("20"),
        "2024-05-01T10:00:02Z",
    );
    let remove = s3_event(
        "ObjectRemoved:Delete",
        &b,
        key,
        None,
        Some("30"),
        "2024-05-01T10:00:03Z",
    );

    deliver(&stack, &create2).await;
    let created = next(&mut listener).await;
    expect(&db, &created, "created", key, &e2, true).await;

    // The same event again, and the older create (its bytes are overwritten in the bucket:
    // superseded): neither changes anything.
    deliver(&stack, &create2).await;
    deliver(&stack, &create1).await;
    // The removal is the next thing announced: the duplicate announced nothing.
    deliver(&stack, &remove).await;
    let deleted = next(&mut listener).await;
    expect(&db, &deleted, "deleted", key, &e2, false).await;
    assert_eq!(deleted["id"], created["id"]);

    // The same bytes uploaded again after the removal: the row comes back.
    let again = upload_announced(&stack, key, b"second", ("40", "2024-05-01T10:00:04Z")).await;
    assert_eq!(again, e2);
    let restored = next(&mut listener).await;
    expect(&db, &restored, "restored", key, &e2, true).await;
    assert_eq!(restored["id"], created["id"]);

    // An overwrite: the old row ends and the new one starts, in one transaction, in row order.
    let e3 = upload_announced(&stack, key, b"third", ("50", "2024-05-01T10:00:05Z")).await;
    let ended = next(&mut listener).await;
    expect(&db, &ended, "deleted", key, &e2, false).await;
    let started = next(&mut listener).await;
    expect(&db, &started, "created", key, &e3, true).await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_announced_while_the_transaction_is_open() {
    let (stack, db, mut listener) = setup().await;
    let key = "dp/held.txt";
    let etag = stack.put(key, b"held").await;
    stack.purge().await;
    let worker = TestWorker::spawn(&stack, &db, &[]).await;

    // Hold the table so the worker's write transaction opens and waits inside.
    let mut hold = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE datapack_resource IN SHARE MODE")
        .execute(&mut *hold)
        .await
        .unwrap();
    stack
        .send(&s3_event(
            "ObjectCreated:Put",
            &stack.bucket,
            key,
            Some(&etag),
            None,
            "2024-05-01T10:00:01Z",
        ))
        .await;
    wait_until(
        "the worker's transaction waits on the table",
        DEADLINE,
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'datapack-worker'
               AND wait_event_type = 'Lock' AND state = 'active'",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            (waiting > 0).then_some(())
        },
    )
    .await;
    // A notification committed now, while the worker's transaction is open, must arrive first:
    // delivery follows commit order, so the worker's cannot have been sent yet.
    sqlx::query("SELECT pg_notify($1, 'probe')")
        .bind(CHANNEL)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(next(&mut listener).await, Value::String("probe".into()));
    hold.commit().await.unwrap();
    let created = next(&mut listener).await;
    expect(&db, &created, "created", key, &etag, true).await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_group_committed_changes_announces_each_once() {
    const N: usize = 120;
    let moto = Moto::shared();
    let (stack, db, mut listener) = setup().await;
    for i in 0..N {
        stack
            .put(
                &format!("dp/burst/{i}.txt"),
                format!("burst {i}").as_bytes(),
            )
            .await;
    }
    // Hold the table while every message is received and read, so the writer has them all
    // waiting when it is released and commits them in few transactions.
    let mut hold = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE datapack_resource IN SHARE MODE")
        .execute(&mut *hold)
        .await
        .unwrap();
    let proxy = S3Proxy::start(crate::support::proxy::url_addr(&moto.endpoint)).await;
    let worker = crate::support::worker::Launch::new(
        &stack,
        &db,
        &["--worker-concurrency", "256", "--db-writers", "1"],
    )
    .via(&proxy.endpoint())
    .in_process()
    .await;
    let gets = Match {
        method: Some("GET"),
        ..Match::key("dp/burst/")
    };
    wait_until("every object read", DEADLINE, || async {
        (proxy.count(&gets) >= N).then_some(())
    })
    .await;
    hold.commit().await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..N {
        let payload = next(&mut listener).await;
        assert_eq!(payload["change"], "created", "{payload}");
        assert_eq!(payload["live"], true, "{payload}");
        seen.push(payload["id"].as_i64().unwrap());
    }
    let distinct: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), N, "each row announced once");
    wait_until("the queue settled", DEADLINE, || async {
        (stack.depth().await == (0, 0)).then_some(())
    })
    .await;

    // Nothing more: the next announcement is the sentinel's.
    let key = "dp/burst/0.txt";
    deliver(
        &stack,
        &s3_event(
            "ObjectRemoved:Delete",
            &stack.bucket,
            key,
            None,
            None,
            "2099-01-01T00:00:00Z",
        ),
    )
    .await;
    let sentinel = next(&mut listener).await;
    assert_eq!(sentinel["change"], "deleted");
    assert_eq!(sentinel["key"], key);

    // Group commit: one transaction announced several rows, and each transaction's
    // announcements arrived together (the row's xmin is the transaction that created it; the
    // sentinel's row is rewritten since, so it is left out).
    let xmins: HashMap<i64, String> = db
        .pairs(
            "SELECT id, xmin::text FROM datapack_resource WHERE object_key LIKE 'dp/burst/%' AND object_key <> $1",
            key,
        )
        .await
        .into_iter()
        .collect();
    let order: Vec<&String> = seen.iter().filter_map(|id| xmins.get(id)).collect();
    let mut runs: Vec<(&String, usize)> = Vec::new();
    for x in order {
        match runs.last_mut() {
            Some((last, n)) if *last == x => *n += 1,
            _ => runs.push((x, 1)),
        }
    }
    let transactions: HashSet<&String> = runs.iter().map(|(x, _)| *x).collect();
    assert_eq!(
        transactions.len(),
        runs.len(),
        "each transaction's announcements arrive together: {runs:?}"
    );
    assert!(
        runs.iter().any(|(_, n)| *n > 1),
        "the writer batched several changes into one transaction: {runs:?}"
    );
    worker.stop().await;
}
