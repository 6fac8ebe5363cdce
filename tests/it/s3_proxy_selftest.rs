//! The sabotaging S3/SQS proxy, proved action by action against real moto through the AWS SDK.
//! Each test also pins the error shape the SDK reports for the fault, which is what the worker
//! has to classify: a service error with a code, a dispatch failure, or a failed body read.

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::StalledStreamProtectionConfig;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::byte_stream::error::Error as BodyError;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use crate::support::emulator::sdk_config;
use crate::support::s3_proxy::{Action, Match, Rule, S3Proxy};
use crate::support::{Moto, Stack};

/// Large enough that a cut after `CUT` bytes lands mid-body.
const BIG: usize = 64 * 1024;
const CUT: u64 = 1000;

/// A bucket with a small good object and a large bad one, and a proxy in front of moto.
struct Rig {
    stack: Stack,
    proxy: S3Proxy,
    /// Through the proxy, one attempt per call, so each fault shows as the SDK reports it.
    s3: aws_sdk_s3::Client,
    big: Vec<u8>,
}

/// How a GetObject failed: before the answer's head (the call) or while reading the body.
#[derive(Debug)]
enum Failed {
    Send(Box<SdkError<GetObjectError, HttpResponse>>),
    Body(BodyError),
}

impl Failed {
    fn send_error(&self) -> Option<&SdkError<GetObjectError, HttpResponse>> {
        match self {
            Failed::Send(e) => Some(e),
            Failed::Body(_) => None,
        }
    }
}

impl Rig {
    async fn new() -> Rig {
        let moto = Moto::shared();
        let stack = Stack::new(&moto.endpoint).await;
        let big: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
        stack.put("dp/good.txt", b"good bytes").await;
        stack.put("dp/bad.bin", &big).await;
        let proxy = S3Proxy::start(moto.addr).await;
        let s3 = datapack_worker::aws::s3(&client_config(&proxy.endpoint(), 1));
        Rig {
            stack,
            proxy,
            s3,
            big,
        }
    }

    async fn get_with(&self, s3: &aws_sdk_s3::Client, key: &str) -> Result<Vec<u8>, Failed> {
        let output = s3
            .get_object()
            .bucket(&self.stack.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| Failed::Send(Box::new(e)))?;
        let body = output.body.collect().await.map_err(Failed::Body)?;
        Ok(body.to_vec())
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, Failed> {
        self.get_with(&self.s3, key).await
    }

    /// The other object and the bucket probe are untouched by a rule on `dp/bad.bin`.
    async fn assert_others_pass(&self) {
        assert_eq!(self.get("dp/good.txt").await.unwrap(), b"good bytes");
        let head = self
            .s3
            .head_bucket()
            .bucket(&self.stack.bucket)
            .send()
            .await;
        head.expect("HeadBucket passes");
    }
}

/// The tests' SDK settings with `attempts` attempts per call (short backoffs), and a 1 s
/// stalled-stream grace period (the SDK's default is 5 s) so a stall is detected quickly.
fn client_config(endpoint: &str, attempts: u32) -> aws_config::SdkConfig {
    sdk_config(endpoint)
        .to_builder()
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(attempts)
                .with_initial_backoff(Duration::from_millis(20)),
        )
        .stalled_stream_protection(
            StalledStreamProtectionConfig::enabled()
                .grace_period(Duration::from_secs(1))
                .build(),
        )
        .build()
}

/// An error and its sources, one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(&format!(": {e}"));
        source = e.source();
    }
    out
}

/// The kind of the I/O error somewhere in an error's sources.
fn io_kind(error: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        next = e.source();
    }
    None
}

/// The (status, code) of a service error; panics on any other shape.
fn service_error(failed: Failed) -> (u16, String) {
    match failed.send_error() {
        Some(SdkError::ServiceError(e)) => (
            e.raw().status().as_u16(),
            e.err().code().unwrap_or_default().to_owned(),
        ),
        _ => panic!("expected a service error, got {failed:?}"),
    }
}

/// The body read error; panics if the call itself failed or the body was read whole.
fn body_error(got: Result<Vec<u8>, Failed>) -> BodyError {
    match got {
        Err(Failed::Body(e)) => e,
        other => panic!("expected a failed body read, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_proxy_passes_everything_through_on_kept_alive_connections() {
    let rig = Rig::new().await;
    let key = "dp/a b/é+&.bin";
    let body: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    rig.s3
        .put_object()
        .bucket(&rig.stack.bucket)
        .key(key)
        .body(body.clone().into())
        .send()
        .await
        .expect("PutObject through the proxy");
    assert_eq!(
        rig.get(key).await.unwrap(),
        body,
        "GetObject, checksum valid"
    );
    let part = rig
        .s3
        .get_object()
        .bucket(&rig.stack.bucket)
        .key(key)
        .range("bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.content_range.as_deref(), Some("bytes 10-19/3145728"));
    assert_eq!(part.body.collect().await.unwrap().to_vec(), body[10..20]);
    let head = rig.s3.head_object().bucket(&rig.stack.bucket).key(key);
    assert_eq!(
        head.send().await.unwrap().content_length,
        Some(body.len() as i64)
    );
    let list = rig
        .s3
        .list_objects_v2()
        .bucket(&rig.stack.bucket)
        .send()
        .await
        .unwrap();
    assert_eq!(list.key_count, Some(3));
    rig.assert_others_pass().await;

    let seen = rig.proxy.seen();
    assert_eq!(seen.len(), 7);
    assert!(seen.iter().all(|s| s.action.is_none()));
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(seen[0].key.as_deref(), Some(key), "the key is decoded");
    assert_eq!(seen[0].bucket.as_deref(), Some(rig.stack.bucket.as_str()));
    assert_eq!(rig.proxy.count(&Match::get("a b/é")), 2);
    assert_eq!(rig.proxy.count(&Match::head_bucket()), 1);
    assert_eq!(
        rig.proxy.count(&Match {
            bucket_only: true,
            ..Match::default()
        }),
        2
    );
    assert!(
        rig.proxy.connections() < 7,
        "the client kept its connection alive"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_proxy_denies_one_key_only() {
    let rig = Rig::new().await;
    let id = rig.proxy.add(Rule::new(Match::get("bad"), Action::Deny));
    let (status, code) = service_error(rig.get("dp/bad.bin").await.unwrap_err());
    assert_eq!((status, code.as_str()), (403, "AccessDenied"));
    rig.assert_others_pass().await;

    // HeadBucket answered 403 has no body, so the SDK has a status and no code.
    rig.proxy.add(Rule::new(Match::head_bucket(), Action::Deny));
    let head = rig.s3.head_bucket().bucket(&rig.stack.bucket).send().await;
    let SdkError::ServiceError(e) = head.unwrap_err() else {
        panic!("expected a service error");
    };
    assert_eq!(e.raw().status().as_u16(), 403);
    assert_eq!(e.err().code(), None);
    println!("HeadBucket denied: {:?}", e.err());

    rig.proxy.clear();
    assert_eq!(rig.get("dp/bad.bin").await.unwrap(), rig.big);
    let denied: Vec<_> = rig
        .proxy
        .seen()
        .into_iter()
        .filter(|s| s.action == Some(Action::Deny))
        .collect();
    assert_eq!(denied.len(), 2);
    assert_eq!(denied[0].key.as_deref(), Some("dp/bad.bin"));
    assert_eq!(denied[1].key, None);
    rig.proxy.remove(id);
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_proxy_status_once_is_retried_by_the_sdk() {
    let rig = Rig::new().await;
    let server_error = Action::Status {
        status: 500,
        code: "InternalError",
    };
    rig.proxy
        .add(Rule::new(Match::get("bad"), server_error.clone()).times(1));
    let (status, code) = service_error(rig.get("dp/bad.bin").await.unwrap_err());
    assert_eq!((status, code.as_str()), (500, "InternalError"));
    assert_eq!(rig.get("dp/bad.bin").await.unwrap(), rig.big, "once only");
    rig.assert_others_pass().await;

    // With the SDK's default three attempts, one 500 or one 503 SlowDown is invisible.
    let retrying = datapack_worker::aws::s3(&client_config(&rig.proxy.endpoint(), 3));
    rig.proxy
        .add(Rule::new(Match::get("bad"), server_error).times(1));
    let slow_down = Action::Status {
        status: 503,
        code: "SlowDown",
    };
    rig.proxy
        .add(Rule::new(Match::get("bad"), slow_down).times(1));
    assert_eq!(
        rig.get_with(&retrying, "dp/bad.bin").await.unwrap(),
        rig.big
    );
    assert_eq!(rig.proxy.count(&Match::get("bad")), 2 + 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_proxy_reset_before_answer_is_a_dispatch_failure() {
    let rig = Rig::new().await;
    rig.proxy
        .add(Rule::new(Match::get("bad"), Action::ResetBeforeAnswer).times(1));
    let failed = rig.get("dp/bad.bin").await.unwrap_err();
    println!("reset before answer: {failed:?}");
    let Some(SdkError::DispatchFailure(e)) = failed.send_error() else {
        panic!("expected a dispatch failure, got {failed:?}");
    };
    assert!(e.is_io(), "an I/O failure: {e:?}");
    assert_eq!(
        io_kind(e.as_connector_error().unwrap()),
        Some(ErrorKind::ConnectionReset)
    );
    rig.assert_others_pass().await;
    assert_eq!(rig.get("dp/bad.bin").await.unwrap(), rig.big);

    // The SDK retries it (three attempts by default), so only a lasting reset surfaces.
    let retrying = datapack_worker::aws::s3(&client_config(&rig.proxy.endpoint(), 3));
    rig.proxy
        .add(Rule::new(Match::get("bad"), Action::ResetBeforeAnswer).times(1));
    assert_eq!(
        rig.get_with(&retrying, "dp/bad.bin").await.unwrap(),
        rig.big
    );
    rig.proxy
        .add(Rule::new(Match::get("bad"), Action::ResetBeforeAnswer));
    let failed = rig.get_with(&retrying, "dp/bad.bin").await.unwrap_err();
    assert!(matches!(
        failed.send_error(),
        Some(SdkError::DispatchFailure(_))
    ));
    assert_eq!(rig.proxy.count(&Match::get("bad")), 2 + 2 + 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_proxy_reset_after_body_bytes_fails_the_body_read() {
    let rig = Rig::new().await;
    rig.proxy.add(Rule::new(
        Match::get("bad"),
        Action::ResetAfterBodyBytes(CUT),
    ));
    let error = body_error(rig.get("dp/bad.bin").await);
    let text = chain(&error);
    println!("reset after {CUT} body bytes: {text} / {error:?}");
    assert_eq!(io_kind(&error), Some(ErrorKind::ConnectionReset), "{text}");
    rig.assert_others_pass().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_proxy_stall_after_body_bytes_is_caught_by_stalled_stream_protection() {
    let rig = Rig::new().await;
    rig.proxy.add(Rule::new(
        Match::get("bad"),
        Action::StallAfterBodyBytes(CUT),
    ));
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(10), rig.get("dp/bad.bin"))
        .await
        .expect("the stall is detected within 10 s");
    let error = body_error(got);
    let text = chain(&error);
    println!(
        "stall after {CUT} body bytes, after {:?}: {text} / {error:?}",
        started.elapsed()
    );
    assert!(text.contains("throughput"), "{text}");
    rig.assert_others_pass().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_proxy_corrupt_byte_fails_the_checksum() {
    let rig = Rig::new().await;
    rig.proxy
        .add(Rule::new(Match::get("bad"), Action::CorruptBodyByte(10)));
    let error = body_error(rig.get("dp/bad.bin").await);
    let text = chain(&error);
    println!("corrupted body byte: {text} / {error:?}");
    assert!(text.contains("body checksum mismatch"), "{text}");
    rig.assert_others_pass().await;

    // A ranged GET carries no checksum of its own: the SDK cannot see the corruption.
    let part = rig
        .s3
        .get_object()
        .bucket(&rig.stack.bucket)
        .key("dp/bad.bin")
        .range("bytes=0-99")
        .send()
        .await
        .unwrap();
    let got = part.body.collect().await.expect("read whole").to_vec();
    assert_eq!(got[10], rig.big[10] ^ 0xff);
    assert_eq!(got[..10], rig.big[..10]);
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_proxy_delay_holds_one_answer_back() {
    let rig = Rig::new().await;
    let delay = Duration::from_millis(400);
    rig.proxy
        .add(Rule::new(Match::get("bad"), Action::Delay(delay)));
    let started = Instant::now();
    rig.assert_others_pass().await;
    assert!(started.elapsed() < delay, "other requests are not delayed");
    let started = Instant::now();
    assert_eq!(rig.get("dp/bad.bin").await.unwrap(), rig.big);
    assert!(started.elapsed() >= delay);

    // Longer than the attempt timeout, it is a timeout error (the worker's "silent peer").
    let config = client_config(&rig.proxy.endpoint(), 1)
        .to_builder()
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_millis(200))
                .build(),
        )
        .build();
    let impatient = datapack_worker::aws::s3(&config);
    let failed = rig.get_with(&impatient, "dp/bad.bin").await.unwrap_err();
    println!("answer delayed past the attempt timeout: {failed:?}");
    assert!(
        matches!(failed.send_error(), Some(SdkError::TimeoutError(_))),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_proxy_sqs_rules_act_on_one_operation() {
    let rig = Rig::new().await;
    let sqs = datapack_worker::aws::sqs(&client_config(&rig.proxy.endpoint(), 1));
    rig.stack.send("hello").await;
    let receive = || {
        sqs.receive_message()
            .queue_url(&rig.stack.queue_url)
            .wait_time_seconds(0)
            .max_number_of_messages(10)
            .send()
    };
    rig.proxy
        .add(Rule::new(Match::sqs("ReceiveMessage"), Action::Deny).times(1));
    rig.proxy
        .add(Rule::new(Match::sqs("ReceiveMessage"), Action::ResetBeforeAnswer).times(1));
    let SdkError::ServiceError(e) = receive().await.unwrap_err() else {
        panic!("expected a service error");
    };
    assert_eq!(e.raw().status().as_u16(), 403);
    assert_eq!(e.err().code(), Some("AccessDenied"));
    let reset = receive().await.unwrap_err();
    println!("ReceiveMessage reset: {reset:?}");
    assert!(matches!(reset, SdkError::DispatchFailure(_)), "{reset:?}");
    // Other operations pass meanwhile, and the rules are spent.
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&rig.stack.queue_url)
        .send()
        .await;
    attrs.expect("GetQueueAttributes passes");
    // The queue also holds the uploads' notifications.
    let got = receive().await.unwrap().messages.unwrap_or_default();
    assert!(
        got.iter().any(|m| m.body.as_deref() == Some("hello")),
        "{got:?}"
    );
    assert_eq!(rig.proxy.count(&Match::sqs("ReceiveMessage")), 3);
    assert_eq!(rig.proxy.count(&Match::sqs("GetQueueAttributes")), 1);
    let actions: Vec<_> = rig.proxy.seen().into_iter().map(|s| s.action).collect();
    assert_eq!(
        actions,
        [
            Some(Action::Deny),
            Some(Action::ResetBeforeAnswer),
            None,
            None
        ]
    );
}
