//! The write of a batch as one statement (`datapack_write_batch`), against a real PostgreSQL:
//! its ordering rule is the Rust rule, a redelivery writes nothing, a batch of new uploads (the
//! function's short path) is answered and announced as the general path would, announcements
//! can be turned off, and the largest rows still fit PostgreSQL's payload limit.

use chrono::{DateTime, Utc};
use datapack_worker::store::notify::{CHANNEL, Change, PAYLOAD_MAX_BYTES, Payload};
use datapack_worker::store::write::order::{newer, same_position, ties_with};
use datapack_worker::store::{
    self, NewResource, Removal, Sha256Source, Survivor, Write, WriteOptions, WriteOutcome,
};
use sqlx::postgres::PgListener;

use crate::support::TestDb;

const ANNOUNCED: WriteOptions = WriteOptions {
    create_datapacks: true,
    notify: true,
};

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(secs, 0).unwrap()
}

fn resource(key: &str, etag: &str, sequencer: Option<&str>, secs: i64) -> Write {
    Write::Resource(NewResource {
        bucket: "b".into(),
        object_key: key.into(),
        datapack: "dp".into(),
        path: "/".into(),
        display: key.rsplit('/').next().unwrap_or(key).into(),
        content_type: None,
        length: 1,
        etag: etag.into(),
        sha256: "0".repeat(64),
        sha256_source: Sha256Source::Computed,
        submitter_name: None,
        submitter_email: None,
        object_last_modified: None,
        version_id: None,
        sequencer: sequencer.map(str::to_owned),
        event_time: at(secs),
        tiebreak: None,
    })
}

fn removal(key: &str, survivor: Option<&str>, sequencer: Option<&str>, secs: i64) -> Write {
    Write::Removal(Removal {
        bucket: "b".into(),
        object_key: key.into(),
        sequencer: sequencer.map(str::to_owned),
        event_time: at(secs),
        version_id: None,
        survivor: survivor.map(|etag| Survivor {
            etag: etag.into(),
            version_id: None,
        }),
        tiebreak: None,
    })
}

/// The SQL functions decide every pair of positions as the Rust rule does: sequencers of
/// different lengths and cases, missing ones, equal and different times, ranks.
#[tokio::test(flavor = "multi_thread")]
async fn the_sql_ordering_is_the_rust_rule() {
    let db = TestDb::new().await;
    let sequencers = [
        None,
        Some("0055"),
        Some("005500"),
        Some("0055aed6"),
        Some("0055AED6"),
        Some("0056"),
        Some("00"),
    ];
    let positions: Vec<(Option<&str>, DateTime<Utc>, i32)> = sequencers
        .iter()
        .flat_map(|s| {
            [
                (*s, at(10), 0),
                (*s, at(11), 0),
                (*s, at(10), 1),
                (*s, at(10), -1),
            ]
        })
        .collect();
    let mut cases = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for a in &positions {
        for b in &positions {
            cases.0.push(a.0);
            cases.1.push(a.1);
            cases.2.push(a.2);
            cases.3.push(b.0);
            cases.4.push(b.1);
            cases.5.push(b.2);
        }
    }
    let answers: Vec<(bool, bool)> = sqlx::query_as(
        "SELECT datapack_event_newer(a_s, a_t, a_r, b_s, b_t, b_r),
                datapack_event_same(a_s, a_t, b_s, b_t)
         FROM unnest($1::text[], $2::timestamptz[], $3::int[], $4::text[], $5::timestamptz[],
                     $6::int[]) WITH ORDINALITY AS c (a_s, a_t, a_r, b_s, b_t, b_r, n)
         ORDER BY n",
    )
    .bind(&cases.0)
    .bind(&cases.1)
    .bind(&cases.2)
    .bind(&cases.3)
    .bind(&cases.4)
    .bind(&cases.5)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut n = 0;
    for a in &positions {
        for b in &positions {
            let (sql_newer, sql_same) = answers[n];
            assert_eq!(sql_newer, newer(*a, *b), "newer({a:?}, {b:?})");
            assert_eq!(sql_same, same_position(*a, *b), "same({a:?}, {b:?})");
            n += 1;
        }
    }
}

/// A batch of redeliveries is answered without writing: no row changes, nothing is announced,
/// and the rows keep the transaction id of their first write.
#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_batch_writes_nothing() {
    let db = TestDb::new().await;
    let writes: Vec<Write> = (0..20)
        .map(|i| resource(&format!("dp/{i}"), &format!("e{i}"), Some("0A"), 10))
        .collect();
    let first = store::apply(&db.pool, &writes, ANNOUNCED).await.unwrap();
    assert!(
        first.iter().all(|o| *o == WriteOutcome::Recorded),
        "{first:?}"
    );
    let xmin = |db: &TestDb| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT string_agg(xmin::text, ',' ORDER BY id) FROM datapack_resource",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let before = xmin(&db).await;
    let mut listener = PgListener::connect(&db.url).await.unwrap();
    listener.listen(CHANNEL).await.unwrap();
    let again = store::apply(&db.pool, &writes, ANNOUNCED).await.unwrap();
    assert!(
        again.iter().all(|o| *o == WriteOutcome::Duplicate),
        "{again:?}"
    );
    assert_eq!(xmin(&db).await, before, "a redelivery rewrote rows");
    // A marker write after it: the first announcement heard must be the marker's.
    store::apply(
        &db.pool,
        &[resource("dp/marker", "m", Some("0A"), 10)],
        ANNOUNCED,
    )
    .await
    .unwrap();
    let heard: Payload = serde_json::from_str(listener.recv().await.unwrap().payload()).unwrap();
    assert_eq!(heard.key.as_deref(), Some("dp/marker"));
}

/// With announcements off the rows are the same and nothing is heard.
#[tokio::test(flavor = "multi_thread")]
async fn announcements_can_be_turned_off() {
    let db = TestDb::new().await;
    let mut listener = PgListener::connect(&db.url).await.unwrap();
    listener.listen(CHANNEL).await.unwrap();
    let quiet = WriteOptions {
        notify: false,
        ..ANNOUNCED
    };
    let outcomes = store::apply(
        &db.pool,
        &[
            resource("dp/a", "e1", Some("0A"), 10),
            removal("dp/a", None, Some("0B"), 11),
        ],
        quiet,
    )
    .await
    .unwrap();
    assert_eq!(outcomes, [WriteOutcome::Recorded, WriteOutcome::Removed]);
    assert_eq!(db.rows().await.len(), 1);
    assert!(db.rows().await[0].deleted);
    store::apply(&db.pool, &[resource("dp/b", "e2", None, 12)], ANNOUNCED)
        .await
        .unwrap();
    let heard: Payload = serde_json::from_str(listener.recv().await.unwrap().payload()).unwrap();
    assert_eq!(
        heard.key.as_deref(),
        Some("dp/b"),
        "the quiet batch was announced"
    );
    assert_eq!(heard.change, Change::Created);
}

/// A batch of new uploads (distinct fresh keys, no tiebreak) is written by the function's short
/// path, any other batch by its general path: the same write is answered and announced alike by
/// both, byte for byte, and each batch announces its rows in row order.
#[tokio::test(flavor = "multi_thread")]
async fn new_uploads_take_the_short_path_and_announce_as_the_general_one() {
    let db = TestDb::new().await;
    db.add_datapack("dp").await;
    let mut listener = PgListener::connect(&db.url).await.unwrap();
    listener.listen(CHANNEL).await.unwrap();
    let strict = WriteOptions {
        create_datapacks: false,
        ..ANNOUNCED
    };
    let versioned = |key: &str| {
        let mut write = resource(key, "same-etag", Some("0A"), 10);
        if let Write::Resource(r) = &mut write {
            r.version_id = Some("v1".into());
        }
        write
    };
    let mut unknown = resource("elsewhere/x", "e9", None, 10);
    if let Write::Resource(r) = &mut unknown {
        r.datapack = "elsewhere".into();
    }
    let mut heard = Vec::new();

    // Only fresh keys: the short path.
    let short = [
        resource("dp/a", "e1", Some("0A"), 10),
        unknown,
        versioned("dp/x1"),
    ];
    let outcomes = store::apply(&db.pool, &short, strict).await.unwrap();
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Recorded,
            WriteOutcome::UnknownDatapack,
            WriteOutcome::Recorded
        ]
    );
    for _ in 0..2 {
        heard.push(listener.recv().await.unwrap().payload().to_owned());
    }
    // A key with a row already: the general path, for the batch's fresh key too.
    let general = [resource("dp/a", "e2", Some("0B"), 11), versioned("dp/x2")];
    let outcomes = store::apply(&db.pool, &general, strict).await.unwrap();
    assert_eq!(outcomes, [WriteOutcome::Recorded, WriteOutcome::Recorded]);
    for _ in 0..3 {
        heard.push(listener.recv().await.unwrap().payload().to_owned());
    }

    let payloads: Vec<serde_json::Value> = heard
        .iter()
        .map(|text| serde_json::from_str(text).unwrap())
        .collect();
    let field = |p: &serde_json::Value, name: &str| p[name].as_str().unwrap().to_owned();
    let id = |p: &serde_json::Value| p["id"].as_i64().unwrap();
    for batch in [&payloads[..2], &payloads[2..]] {
        assert!(batch.windows(2).all(|w| id(&w[0]) < id(&w[1])), "{batch:?}");
    }
    let mut changes: Vec<_> = payloads
        .iter()
        .map(|p| {
            (
                field(p, "key"),
                field(p, "change"),
                p["live"].as_bool().unwrap(),
            )
        })
        .collect();
    changes[2..].sort();
    let expected = [
        ("dp/a", "created", true),
        ("dp/x1", "created", true),
        ("dp/a", "created", true),
        ("dp/a", "deleted", false),
        ("dp/x2", "created", true),
    ]
    .map(|(k, c, l)| (k.to_owned(), c.to_owned(), l));
    assert_eq!(changes, expected);
    // The same write, one through each path: the same text but for its id and key.
    let as_template = |text: &str, p: &serde_json::Value| {
        text.replacen(&format!("\"id\":{}", id(p)), "\"id\":ID", 1)
            .replacen(&field(p, "key"), "KEY", 1)
    };
    let x2 = payloads
        .iter()
        .position(|p| field(p, "key") == "dp/x2")
        .unwrap();
    assert_eq!(
        as_template(&heard[1], &payloads[1]),
        as_template(&heard[x2], &payloads[x2])
    );
}

/// The worst case the limits allow (a 1,024-byte key of control characters, six bytes each once
/// escaped, a datapack identifier as long, a 1,024-byte version id) is announced truncated and
/// under the limit; a long but ordinary key is sent whole.
#[tokio::test(flavor = "multi_thread")]
async fn the_largest_rows_still_fit_postgresql_s_limit() {
    let db = TestDb::new().await;
    let mut listener = PgListener::connect(&db.url).await.unwrap();
    listener.listen(CHANNEL).await.unwrap();
    let controls = "\u{1}".repeat(1024);
    let mut huge = resource(&controls, &"\\".repeat(128), None, 10);
    if let Write::Resource(r) = &mut huge {
        r.datapack = controls.clone();
        r.version_id = Some("\\".repeat(1024));
    }
    let ordinary_key = format!("dp/{}", "é".repeat(500));
    let ordinary = resource(&ordinary_key, "e2", None, 10);
    let outcomes = store::apply(&db.pool, &[huge, ordinary], ANNOUNCED)
        .await
        .unwrap();
    assert_eq!(outcomes, [WriteOutcome::Recorded, WriteOutcome::Recorded]);
    let mut payloads = Vec::new();
    for _ in 0..2 {
        let text = listener.recv().await.unwrap().payload().to_owned();
        assert!(text.len() <= PAYLOAD_MAX_BYTES, "{} bytes", text.len());
        payloads.push(serde_json::from_str::<Payload>(&text).unwrap());
    }
    assert!(payloads[0].truncated && payloads[0].key.is_none());
    assert_eq!(payloads[0].etag, "\\".repeat(128));
    assert!(!payloads[1].truncated);
    assert_eq!(payloads[1].key.as_deref(), Some(ordinary_key.as_str()));
}

/// Inside one batch, a different object at the same position as an earlier write of the key is
/// a tie (the Rust rule decides which), the same object twice is one write.
#[tokio::test(flavor = "multi_thread")]
async fn ties_inside_a_batch_follow_the_rust_rule() {
    let db = TestDb::new().await;
    let writes = [
        resource("dp/k", "e1", Some("0A"), 10),
        resource("dp/k", "e2", Some("0A"), 10),
        resource("dp/k", "e1", Some("0A"), 10),
        removal("dp/k", Some("e1"), Some("0A"), 10),
        removal("dp/k", None, Some("0A"), 10),
    ];
    let outcomes = store::apply(&db.pool, &writes, ANNOUNCED).await.unwrap();
    // Expected from the Rust rule: a write ties when it ties with an earlier one not set aside.
    let mut aside = [false; 5];
    for i in 0..writes.len() {
        aside[i] = (0..i).any(|j| !aside[j] && ties_with(&writes[i], &writes[j]));
    }
    for (i, outcome) in outcomes.iter().enumerate() {
        assert_eq!(
            aside[i],
            *outcome == WriteOutcome::Tie,
            "write {i}: {outcomes:?}"
        );
    }
    assert_eq!(outcomes[0], WriteOutcome::Recorded);
}

/// The table keeps its digest rule (64 lower-case hex digits) for writers other than the
/// worker: the check that replaced the regex accepts and refuses exactly what the regex did.
#[tokio::test(flavor = "multi_thread")]
async fn the_digest_column_holds_64_lower_case_hex_digits() {
    let db = TestDb::new().await;
    store::apply(&db.pool, &[resource("dp/ok", "e", None, 10)], ANNOUNCED)
        .await
        .unwrap();
    let candidates = [
        ("a".repeat(64), true),
        ("0123456789abcdef".repeat(4), true),
        ("A".repeat(64), false),
        ("a".repeat(63), false),
        ("a".repeat(65), false),
        (format!("{}é", "a".repeat(62)), false),
        (format!("{}\n", "a".repeat(63)), false),
        (format!("{} ", "a".repeat(63)), false),
        (String::new(), false),
    ];
    for (digest, accepted) in candidates {
        let regex: bool = sqlx::query_scalar("SELECT $1 ~ '^[0-9a-f]{64}$'")
            .bind(&digest)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(regex, accepted, "{digest:?}: the old rule");
        let written =
            sqlx::query("UPDATE datapack_resource SET sha256 = $1 WHERE object_key = 'dp/ok'")
                .bind(&digest)
                .execute(&db.pool)
                .await;
        match written {
            Ok(_) => assert!(accepted, "{digest:?} was accepted"),
            Err(error) => {
                assert!(!accepted, "{digest:?} was refused: {error}");
                let code = error.as_database_error().and_then(|e| e.code());
                assert_eq!(code.as_deref(), Some("23514"), "a check violation: {error}");
            }
        }
    }
}
