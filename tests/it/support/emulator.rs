//! The emulated AWS side: moto_server on a port it picks itself, and a bucket, queues and
//! notification set up as production has them. One implementation for the tests and for the
//! `emulated_stack` example, which the demo and the benchmark run.

use std::time::Duration;

use anyhow::Context as _;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::types::{
    CorsConfiguration, CorsRule, Event, NotificationConfiguration, PublicAccessBlockConfiguration,
    QueueConfiguration,
};
use aws_sdk_sqs::types::QueueAttributeName;

pub const REGION: &str = "us-east-1";
/// moto accepts any credentials; these are the conventional dummy ones.
pub const ACCESS_KEY_ID: &str = "testing";
pub const SECRET_ACCESS_KEY: &str = "testing";

/// Receives before SQS moves a message to the dead-letter queue by itself.
pub const MAX_RECEIVE_COUNT: u32 = 5;
const VISIBILITY_TIMEOUT_SECS: u32 = 60;
/// Long polling by default, as production configures the queue.
const RECEIVE_WAIT_TIME_SECS: u32 = 20;
/// The SQS maximum: failures are kept for inspection.
const DLQ_RETENTION_SECS: u32 = 14 * 24 * 3600;
const DEFAULT_CORS_ORIGINS: &str = "http://localhost:3000";

/// How to start moto_server on a loopback port of its choosing: `MOTO_SERVER` names the
/// executable, else it is looked up on PATH. Port 0 lets the kernel pick a free port at bind time,
/// so no port is reserved first and bound later by another process.
pub fn moto_command() -> (String, [&'static str; 4]) {
    let program = std::env::var("MOTO_SERVER")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "moto_server".into());
    (program, ["-H", "127.0.0.1", "-p", "0"])
}

/// The port in moto's start-up line (werkzeug's ` * Running on http://127.0.0.1:PORT`, printed
/// once the socket listens).
pub fn announced_port(line: &str) -> Option<u16> {
    let (_, rest) = line.split_once("Running on http://127.0.0.1:")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// SDK settings for moto (or a proxy in front of it), with the dummy credentials.
pub fn sdk_config(endpoint: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(
            aws_sdk_s3::config::Credentials::new(
                ACCESS_KEY_ID,
                SECRET_ACCESS_KEY,
                None,
                None,
                "emulator",
            ),
        ))
        .timeout_config(
            aws_smithy_types::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        )
        .sleep_impl(aws_smithy_async::rt::sleep::default_async_sleep().expect("a tokio sleep"))
        .time_source(aws_smithy_async::time::SystemTimeSource::new())
        .build()
}

/// The origins browser uploads may come from: `CORS_ALLOWED_ORIGINS`, comma-separated.
pub fn cors_origins() -> anyhow::Result<Vec<String>> {
    let raw = std::env::var("CORS_ALLOWED_ORIGINS").unwrap_or_else(|_| DEFAULT_CORS_ORIGINS.into());
    let origins: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect();
    anyhow::ensure!(
        !origins.is_empty(),
        "CORS_ALLOWED_ORIGINS is set but names no origin"
    );
    Ok(origins)
}

/// The bucket's CORS rule for browser uploads from `origins`: the methods a page uses, any
/// request header, and the ETag readable by the page.
pub fn cors_rule(origins: &[String]) -> CorsConfiguration {
    let rule = CorsRule::builder()
        .set_allowed_origins(Some(origins.to_vec()))
        .allowed_methods("PUT")
        .allowed_methods("POST")
        .allowed_methods("GET")
        .allowed_methods("HEAD")
        .allowed_headers("*")
        .expose_headers("ETag")
        .max_age_seconds(3000)
        .build()
        .expect("a complete CORS rule");
    CorsConfiguration::builder()
        .cors_rules(rule)
        .build()
        .expect("a CORS configuration")
}

/// What [`create`] made.
pub struct Resources {
    pub queue_url: String,
    pub dlq_url: String,
}

/// Creates bucket `bucket` (CORS for browser uploads from `origins`, public access blocked), the
/// dead-letter queue `QUEUE-dlq`, the queue `queue` (redrive to it after [`MAX_RECEIVE_COUNT`]
/// receives, 60 s visibility, long polling, a policy letting S3 send) and the bucket's
/// notification of every creation and removal to the queue. Configuring the notification makes
/// S3 (and moto) send one `s3:TestEvent` to the queue.
pub async fn create(
    sdk: &SdkConfig,
    bucket: &str,
    queue: &str,
    origins: &[String],
) -> anyhow::Result<Resources> {
    let s3 = datapack_worker::aws::s3(sdk);
    let sqs = datapack_worker::aws::sqs(sdk);

    // us-east-1: no location constraint.
    s3.create_bucket()
        .bucket(bucket)
        .send()
        .await
        .with_context(|| format!("creating bucket {bucket}"))?;
    s3.put_bucket_cors()
        .bucket(bucket)
        .cors_configuration(cors_rule(origins))
        .send()
        .await
        .context("setting the bucket's CORS rule")?;
    let blocked = PublicAccessBlockConfiguration::builder()
        .block_public_acls(true)
        .ignore_public_acls(true)
        .block_public_policy(true)
        .restrict_public_buckets(true)
        .build();
    s3.put_public_access_block()
        .bucket(bucket)
        .public_access_block_configuration(blocked)
        .send()
        .await
        .context("blocking public access")?;

    let dlq = format!("{queue}-dlq");
    let dlq_url = create_queue(
        &sqs,
        &dlq,
        [(
            QueueAttributeName::MessageRetentionPeriod,
            DLQ_RETENTION_SECS.to_string(),
        )],
    )
    .await?;
    let dlq_arn = queue_arn(&sqs, &dlq_url).await?;
    let redrive =
        serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVE_COUNT});
    let queue_url = create_queue(
        &sqs,
        queue,
        [
            (
                QueueAttributeName::VisibilityTimeout,
                VISIBILITY_TIMEOUT_SECS.to_string(),
            ),
            (
                QueueAttributeName::ReceiveMessageWaitTimeSeconds,
                RECEIVE_WAIT_TIME_SECS.to_string(),
            ),
            (QueueAttributeName::RedrivePolicy, redrive.to_string()),
        ],
    )
    .await?;
    let queue_arn = queue_arn(&sqs, &queue_url).await?;

    // AWS refuses the notification unless S3 may send to the queue; moto ignores queue policies,
    // so this only keeps the stack as production has it.
    let account = queue_arn.split(':').nth(4).unwrap_or_default();
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "AllowS3BucketNotifications",
            "Effect": "Allow",
            "Principal": {"Service": "s3.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {
                "ArnLike": {"aws:SourceArn": format!("arn:aws:s3:::{bucket}")},
                "StringEquals": {"aws:SourceAccount": account},
            },
        }],
    });
    sqs.set_queue_attributes()
        .queue_url(&queue_url)
        .attributes(QueueAttributeName::Policy, policy.to_string())
        .send()
        .await
        .context("setting the queue's policy")?;

    let notification = NotificationConfiguration::builder()
        .queue_configurations(
            QueueConfiguration::builder()
                .id("datapack-worker")
                .queue_arn(&queue_arn)
                .events(Event::from("s3:ObjectCreated:*"))
                .events(Event::from("s3:ObjectRemoved:*"))
                .build()
                .expect("a complete queue configuration"),
        )
        .build();
    s3.put_bucket_notification_configuration()
        .bucket(bucket)
        .notification_configuration(notification)
        .send()
        .await
        .context("configuring the bucket's notification")?;

    Ok(Resources { queue_url, dlq_url })
}

/// Creates queue `name` with `attributes`; returns its URL.
async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    attributes: impl IntoIterator<Item = (QueueAttributeName, String)>,
) -> anyhow::Result<String> {
    sqs.create_queue()
        .queue_name(name)
        .set_attributes(Some(attributes.into_iter().collect()))
        .send()
        .await
        .with_context(|| format!("creating queue {name}"))?
        .queue_url
        .context("CreateQueue answered without a URL")
}

pub async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> anyhow::Result<String> {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .with_context(|| format!("reading the ARN of {url}"))?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .context("GetQueueAttributes answered without the ARN")
}
