//! An SQS brownout: DeleteMessage and ChangeMessageVisibility refused while GetQueueAttributes
//! (the probe's call) passes. The breaker fed by the worker's own settling calls trips, its deep
//! probe fails, SQS is reported down and receiving pauses; once SQS takes the calls again the
//! worker resumes and every message ends recorded once, nothing dead-lettered.

use std::time::Duration;

use crate::support::s3_proxy::{Action, Match, Rule, S3Proxy};
use crate::support::scrape::{metric, sum};
use crate::support::{Launch, Moto, setup, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);

const REFUSED: [&str; 4] = [
    "DeleteMessage",
    "DeleteMessageBatch",
    "ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch",
];

#[tokio::test(flavor = "multi_thread")]
async fn refused_deletes_trip_the_sqs_breaker_pause_receiving_and_recover() {
    let (stack, db) = setup("dp-1").await;
    // Redelivery during the brownout raises receive counts; SQS must not dead-letter for that.
    stack.set_max_receive_count(100).await;
    let proxy = S3Proxy::start(Moto::shared().addr).await;
    // A short visibility timeout, so a message whose delete was refused comes back quickly and
    // the refusals pile up across different messages and batches.
    let worker = Launch::new(&stack, &db, &["--sqs-visibility-timeout-secs", "2"])
        .via(&proxy.endpoint())
        .binary()
        .await;
    wait_until("ready", DEADLINE, || async {
        (worker.http.status("/readyz").await == Some(200)).then_some(())
    })
    .await;

    let rules: Vec<_> = REFUSED
        .into_iter()
        .map(|op| proxy.add(Rule::new(Match::sqs(op), Action::Deny)))
        .collect();
    let uploads = 6;
    for i in 0..uploads {
        stack
            .put(
                &format!("dp-1/brownout/{i}.txt"),
                format!("b{i}").as_bytes(),
            )
            .await;
    }

    // Rows are committed (the work itself succeeds), the deletes are refused, the breaker trips
    // and its deep probe, refused too, reports SQS down.
    wait_until("SQS reported down", DEADLINE, || async {
        let scrape = worker.http.try_scrape().await?;
        (metric(&scrape, "datapack_worker_dependency_up{dependency=\"sqs\"}") == 0.0).then_some(())
    })
    .await;
    let (status, body) = worker.http.get("/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("sqs"), "{body}");
    assert_eq!(
        metric(&worker.http.scrape().await, "datapack_worker_paused"),
        1.0
    );
    // Receiving has paused: once a poll in flight at the trip (1 s window) has answered, no
    // ReceiveMessage reaches SQS. The window below observes that nothing happens.
    let receives = || proxy.count(&Match::sqs("ReceiveMessage"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let paused_at = receives();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(receives(), paused_at, "no receive while SQS is down");
    assert_eq!(
        worker.http.status("/readyz").await,
        Some(503),
        "still down while the refusals last"
    );

    // SQS takes the calls again: the deep probe passes and the worker resumes.
    for rule in rules {
        proxy.remove(rule);
    }
    wait_until("ready again", DEADLINE, || async {
        (worker.http.status("/readyz").await == Some(200)).then_some(())
    })
    .await;
    db.wait_rows(uploads, DEADLINE).await;
    stack.wait_drained(DEADLINE).await;
    assert_eq!(db.count().await, uploads, "one row each");
    assert!(receives() > paused_at, "receiving resumed");
    assert_eq!(stack.dlq_depth().await, (0, 0), "nothing dead-lettered");
    let scrape = worker.http.scrape().await;
    assert_eq!(
        metric(&scrape, "datapack_worker_dependency_up{dependency=\"sqs\"}"),
        1.0
    );
    assert_eq!(
        sum(&scrape, "datapack_worker_dead_letters_total", ""),
        0.0,
        "{scrape}"
    );
}
