//! The count of AWS requests by service, operation and outcome: one per attempt the SDK sends
//! (what AWS bills and rate-limits), so requests per object can be read off the scrape.
//!
//! Fed by the SDK interceptor in `aws`. The label values are a closed set of static strings
//! (the operations the worker and its commands call, then `other`), and every series is
//! registered once at start-up, at 0, into a table of handles: counting a request is a short
//! string comparison and an atomic add, with no key built, hashed or looked up per call.

use std::sync::OnceLock;

use metrics::{Counter, Unit, counter, describe_counter};

pub(crate) const AWS_REQUESTS: &str = "datapack_worker_aws_requests_total";

/// The AWS service a client talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AwsService {
    S3,
    Sqs,
}

impl AwsService {
    pub(crate) const ALL: [AwsService; 2] = [AwsService::S3, AwsService::Sqs];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AwsService::S3 => "s3",
            AwsService::Sqs => "sqs",
        }
    }

    /// The operation label values, as the SDK names them; the last is `other`, for an
    /// operation not listed (so a new call site can never add a series of its own).
    pub(crate) fn operations(self) -> &'static [&'static str] {
        match self {
            AwsService::S3 => &[
                "GetObject",
                "HeadObject",
                "ListObjectsV2",
                "ListObjectVersions",
                "GetBucketVersioning",
                "HeadBucket",
                "PutObject",
                OTHER,
            ],
            AwsService::Sqs => &[
                "ReceiveMessage",
                "DeleteMessageBatch",
                "ChangeMessageVisibilityBatch",
                "ChangeMessageVisibility",
                "DeleteMessage",
                "SendMessage",
                "SendMessageBatch",
                "GetQueueAttributes",
                "GetQueueUrl",
                OTHER,
            ],
        }
    }

    /// The index of the SDK's operation name in `operations`, `other` when not listed.
    fn operation_index(self, sdk_name: &str) -> usize {
        let operations = self.operations();
        operations
            .iter()
            .position(|op| *op == sdk_name)
            .unwrap_or(operations.len() - 1)
    }
}

const OTHER: &str = "other";

/// How one attempt ended, from the HTTP status (or its absence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AwsOutcome {
    /// 1xx-3xx.
    Ok,
    /// 4xx: refused, not found, precondition failed (412 is how an overwritten object answers).
    ClientError,
    /// 5xx, throttling (503 Slow Down) included.
    ServerError,
    /// No HTTP response: connect failure, timeout, reset.
    NoResponse,
}

impl AwsOutcome {
    pub(crate) const ALL: [AwsOutcome; 4] = [
        AwsOutcome::Ok,
        AwsOutcome::ClientError,
        AwsOutcome::ServerError,
        AwsOutcome::NoResponse,
    ];

    pub(crate) fn of_status(status: Option<u16>) -> Self {
        match status {
            None => AwsOutcome::NoResponse,
            Some(s) if s < 400 => AwsOutcome::Ok,
            Some(s) if s < 500 => AwsOutcome::ClientError,
            Some(_) => AwsOutcome::ServerError,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AwsOutcome::Ok => "ok",
            AwsOutcome::ClientError => "client_error",
            AwsOutcome::ServerError => "server_error",
            AwsOutcome::NoResponse => "no_response",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Per service, per operation (in `operations` order), per outcome (in `ALL` order).
type Table = [Vec<[Counter; 4]>; 2];

static TABLE: OnceLock<Table> = OnceLock::new();

/// Describes the metric and registers every series at 0; called once the recorder is installed,
/// so the handles point into it.
pub(super) fn install() {
    describe_counter!(
        AWS_REQUESTS,
        Unit::Count,
        "AWS requests sent (each attempt, retries included), by service, operation and outcome \
         (ok, client_error, server_error, no_response)."
    );
    TABLE.get_or_init(|| {
        AwsService::ALL.map(|service| {
            service
                .operations()
                .iter()
                .map(|&operation| {
                    AwsOutcome::ALL.map(|outcome| {
                        let c = counter!(AWS_REQUESTS, "service" => service.as_str(),
                            "operation" => operation, "outcome" => outcome.as_str());
                        c.absolute(0);
                        c
                    })
                })
                .collect()
        })
    });
}

/// One attempt of `sdk_operation` (the SDK's operation name) ended with `outcome`. Nothing is
/// counted before `install` (a command that serves no metrics).
pub(crate) fn aws_request(service: AwsService, sdk_operation: &str, outcome: AwsOutcome) {
    let Some(table) = TABLE.get() else { return };
    let by_operation = &table[service as usize];
    if let Some(by_outcome) = by_operation.get(service.operation_index(sdk_operation)) {
        by_outcome[outcome.index()].increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_operations_share_one_series_per_service() {
        for service in AwsService::ALL {
            let last = service.operations().len() - 1;
            assert_eq!(service.operations()[last], OTHER);
            assert_eq!(service.operation_index("SomeFutureCall"), last);
            assert_eq!(service.operation_index(service.operations()[0]), 0);
        }
    }

    #[test]
    fn outcome_follows_the_status_class() {
        assert_eq!(AwsOutcome::of_status(Some(200)), AwsOutcome::Ok);
        assert_eq!(AwsOutcome::of_status(Some(304)), AwsOutcome::Ok);
        assert_eq!(AwsOutcome::of_status(Some(412)), AwsOutcome::ClientError);
        assert_eq!(AwsOutcome::of_status(Some(503)), AwsOutcome::ServerError);
        assert_eq!(AwsOutcome::of_status(None), AwsOutcome::NoResponse);
        for (i, outcome) in AwsOutcome::ALL.into_iter().enumerate() {
            assert_eq!(outcome.index(), i);
        }
    }
}
