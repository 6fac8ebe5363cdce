//! AWS clients with the timeouts a long-running worker needs, and the mapping of SDK errors.
//!
//! Credentials, region and endpoint come from the standard chain (env, profiles, web identity,
//! container and instance roles), unless the settings name them (config puts the seed's
//! `FILESYSTEM_S3_*` values there when the standard ones are absent). Every client counts the
//! requests it sends (`datapack_worker_aws_requests_total`).

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_types::timeout::TimeoutConfig;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::{Intercept, dyn_dispatch_hint};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::Response as HttpResponse;
use aws_smithy_types::config_bag::ConfigBag;

use crate::disposition::{DeadLetterReason, Dependency, Failure, RetryReason};
use crate::ops::metrics::{AwsOutcome, AwsService, aws_request};
use crate::secret::Secret;

#[derive(Debug, Clone)]
pub struct AwsSettings {
    /// Overrides the endpoint the chain would pick (`AWS_ENDPOINT_URL`).
    pub endpoint_url: Option<String>,
    /// Bound on one attempt of one call; longer than the 20 s long poll, so a silent peer cannot
    /// hang a worker forever (the SDK has no default).
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    /// Region to use instead of the chain's.
    pub region: Option<String>,
    /// Keys to use instead of the chain's.
    pub credentials: Option<StaticKeys>,
}

/// An access key pair given explicitly.
#[derive(Debug, Clone)]
pub struct StaticKeys {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: Secret,
}

impl Default for AwsSettings {
    fn default() -> Self {
        Self {
            endpoint_url: None,
            attempt_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
            region: None,
            credentials: None,
        }
    }
}

pub async fn load(settings: &AwsSettings) -> SdkConfig {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(settings.connect_timeout)
        .operation_attempt_timeout(settings.attempt_timeout)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts);
    if let Some(endpoint) = &settings.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(keys) = &settings.credentials {
        loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
            keys.access_key_id.clone(),
            keys.secret_access_key.expose().to_owned(),
            None,
            None,
            "seed-filesystem-s3",
        ));
    }
    loader.load().await
}

pub fn s3(config: &SdkConfig) -> aws_sdk_s3::Client {
    // Path style works with every endpoint (moto, MinIO, VPC endpoints) and with dotted bucket names.
    let s3_config = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(true)
        .interceptor(CountRequests(AwsService::S3))
        .build();
    aws_sdk_s3::Client::from_conf(s3_config)
}

pub fn sqs(config: &SdkConfig) -> aws_sdk_sqs::Client {
    let sqs_config = aws_sdk_sqs::config::Builder::from(config)
        .interceptor(CountRequests(AwsService::Sqs))
        .build();
    aws_sdk_sqs::Client::from_conf(sqs_config)
}

/// Counts every attempt a client sends, by operation and by how it ended. Attempts, not calls:
/// a retried call is two requests to AWS, and to its bill.
#[derive(Debug)]
struct CountRequests(AwsService);

#[dyn_dispatch_hint]
impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg.load::<Metadata>().map_or("", Metadata::name);
        let status = context.response().map(|r| r.status().as_u16());
        aws_request(self.0, operation, AwsOutcome::of_status(status));
        Ok(())
    }
}

/// The service's error code, or the HTTP status when the body had none.
pub(crate) fn code<E: ProvideErrorMetadata, R>(error: &SdkError<E, R>) -> Option<String> {
    match error {
        SdkError::ServiceError(e) => e.err().code().map(str::to_owned),
        _ => None,
    }
}

/// Maps an SDK error that no caller handled specially to a failure of the message at hand.
/// Nothing here declares the dependency down: transport failures, timeouts, permission faults
/// and server errors are retried, and the worker asks the dependency's probe before it charges
/// the message an attempt (see `health`). A request that cannot even be built from the message
/// (a header value S3 would never accept) can never succeed: dead-letter it.
pub(crate) fn classify<E>(dependency: Dependency, error: SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let reasons = Reasons::of(dependency);
    let reason = match &error {
        SdkError::ConstructionFailure(_) => {
            return Failure::permanent(
                DeadLetterReason::MalformedMessage,
                format!(
                    "no valid request can be built from this message: {}",
                    crate::disposition::chain(&error)
                ),
            );
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => reasons.unavailable,
        SdkError::ServiceError(_) => {
            let (code, status) = (code(&error).unwrap_or_default(), status(&error));
            if is_denied(&code, status) {
                reasons.denied
            } else if is_throttled(&code, status) {
                reasons.throttled
            } else {
                reasons.other
            }
        }
        _ => reasons.other,
    };
    Failure::transient(reason, error)
}

/// The retry reasons one dependency's failures map to.
struct Reasons {
    unavailable: RetryReason,
    denied: RetryReason,
    throttled: RetryReason,
    other: RetryReason,
}

impl Reasons {
    fn of(dependency: Dependency) -> Self {
        use RetryReason as R;
        let [unavailable, denied, throttled, other] = match dependency {
            Dependency::S3 => [
                R::S3Unavailable,
                R::S3AccessDenied,
                R::S3Throttled,
                R::S3Error,
            ],
            Dependency::Sqs => [
                R::SqsUnavailable,
                R::SqsAccessDenied,
                R::SqsThrottled,
                R::SqsError,
            ],
            Dependency::Postgres => [R::DatabaseError; 4],
        };
        Self {
            unavailable,
            denied,
            throttled,
            other,
        }
    }
}

fn is_denied(code: &str, status: Option<u16>) -> bool {
    matches!(
        code,
        "AccessDenied"
            | "AccessDeniedException"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "InvalidClientTokenId"
            | "KMS.AccessDeniedException"
            | "AWS.SimpleQueueService.NonExistentQueue"
            | "QueueDoesNotExist"
    ) || status == Some(403)
}

fn is_throttled(code: &str, status: Option<u16>) -> bool {
    matches!(
        code,
        "SlowDown"
            | "Throttling"
            | "ThrottlingException"
            | "RequestThrottled"
            | "RequestLimitExceeded"
    ) || status == Some(503)
}

/// The HTTP status of a service error, if the service answered at all.
pub(crate) fn status<E>(error: &SdkError<E, HttpResponse>) -> Option<u16> {
    error.raw_response().map(|r| r.status().as_u16())
}
