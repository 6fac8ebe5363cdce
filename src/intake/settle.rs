//! What becomes of a message, decided apart from carrying it out: a pure function of how its work
//! ended, its receive count, the probe's answer and the limits. The lease asks the probe, calls
//! [`decide`], and carries the [`Settlement`] out against SQS.

use std::time::Duration;

use crate::disposition::{Dependency, Failure};

/// The limits a decision is made within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The attempt on which a failure dead-letters the message (see [`max_attempts`]).
    pub(crate) max_attempts: u32,
    /// The first retry's delay; each later one doubles it, up to `retry_max`.
    pub(crate) retry_base: Duration,
    pub(crate) retry_max: Duration,
}

/// How the work on a message ended, as far as its settlement is concerned.
#[derive(Debug)]
pub(crate) enum Ended {
    /// Everything it announced is committed or skipped on purpose.
    Done,
    /// The work failed this way (permanent or transient).
    Failed(Failure),
    /// Its dead letter could not be sent (this is why): it is not dead-lettered again on this
    /// attempt, so a dead-letter queue that refuses sends cannot keep the lease sending forever.
    DeadLetterUnsent(Failure),
    /// The grace period is over: the work was abandoned.
    Stopped,
    /// Another receiver owns the message now (its receipt handle expired).
    Lost,
}

/// What the dependency's probe said, when the failure names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// No probe was needed: the failure names no dependency.
    NotAsked,
    Up,
    /// Down, or no answer (shutdown came first): either way the message is not charged.
    Down,
}

/// What the lease does with the message.
#[derive(Debug)]
pub(crate) enum Settlement {
    /// Delete it.
    Delete,
    /// Send it to the dead-letter queue with this permanent failure's reason and detail, then
    /// delete it.
    DeadLetter(Failure),
    /// Count `failure` against it and leave it invisible for `delay`.
    Retry { delay: Duration, failure: Failure },
    /// Hand it back at once (visibility 0), without charging it an attempt; the failure, when
    /// there was one, is still logged and counted.
    Release(Option<Failure>),
    /// Nothing: it is not ours any more.
    Abandon,
}

/// The dependency to probe before deciding, if any: a transient failure is charged to the
/// message only once a fresh probe has said its dependency is up.
pub(crate) fn probe_for(ended: &Ended) -> Option<Dependency> {
    match ended {
        Ended::Failed(failure) | Ended::DeadLetterUnsent(failure) => failure.dependency(),
        Ended::Done | Ended::Stopped | Ended::Lost => None,
    }
}

/// The settlement of a message delivered `receive_count` times whose work ended as `ended`.
/// `jitter` (0..1, drawn by the caller) spreads the retry delay, so messages that failed together
/// do not come back together.
pub(crate) fn decide(
    ended: Ended,
    receive_count: u32,
    probe: Probe,
    limits: &Limits,
    jitter: f64,
) -> Settlement {
    let failure = match ended {
        Ended::Done => return Settlement::Delete,
        Ended::Stopped => return Settlement::Release(None),
        Ended::Lost => return Settlement::Abandon,
        Ended::Failed(failure @ Failure::Permanent { .. }) => {
            return Settlement::DeadLetter(failure);
        }
        Ended::Failed(failure) => {
            if probe == Probe::Down {
                return Settlement::Release(Some(failure));
            }
            if receive_count >= limits.max_attempts {
                return Settlement::DeadLetter(exhausted(&failure, receive_count, limits));
            }
            failure
        }
        Ended::DeadLetterUnsent(failure) => {
            if probe == Probe::Down {
                return Settlement::Release(Some(failure));
            }
            failure
        }
    };
    Settlement::Retry {
        delay: backoff(limits, receive_count, jitter),
        failure,
    }
}

/// The permanent failure a transient one becomes on the message's last attempt.
fn exhausted(failure: &Failure, receive_count: u32, limits: &Limits) -> Failure {
    let mut exhausted = Failure::permanent(
        failure.dead_letter_reason(),
        format!(
            "failed on attempt {receive_count} of {}: {}",
            limits.max_attempts,
            crate::disposition::chain(failure)
        ),
    );
    if let Some(object) = failure.object() {
        exhausted = exhausted.about(&object.bucket, &object.key);
    }
    exhausted
}

/// The dead letter's `error_detail`: what failed and why, naming the object when the failure is
/// about one (a message may announce several).
pub(crate) fn dead_letter_detail(failure: &Failure) -> String {
    let detail = match failure {
        Failure::Permanent { detail, .. } => detail.clone(),
        other => crate::disposition::chain(other),
    };
    match failure.object() {
        Some(object) => format!("{object}: {detail}"),
        None => detail,
    }
}

/// The visibility delay before the next attempt: `retry_base` doubled for each earlier receive,
/// capped at `retry_max`, plus up to as much again by `jitter` (0..1), capped again.
pub(crate) fn backoff(limits: &Limits, receive_count: u32, jitter: f64) -> Duration {
    let factor = 2u32
        .checked_pow(receive_count.saturating_sub(1))
        .unwrap_or(u32::MAX);
    let delay = limits
        .retry_base
        .saturating_mul(factor)
        .min(limits.retry_max);
    delay
        .saturating_add(delay.mul_f64(jitter.clamp(0.0, 1.0)))
        .min(limits.retry_max)
}

/// The attempt on which a failure dead-letters the message: the configured number, but never
/// beyond the queue's own redrive `maxReceiveCount` (SQS would move it without a reason).
pub(crate) fn max_attempts(configured: u32, max_receive_count: Option<u32>) -> u32 {
    match max_receive_count {
        Some(limit) => configured.min(limit),
        None => configured,
    }
    .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disposition::{DeadLetterReason, RetryReason};

    const S: Duration = Duration::from_secs(1);

    fn limits() -> Limits {
        Limits {
            max_attempts: 5,
            retry_base: 5 * S,
            retry_max: 900 * S,
        }
    }

    fn transient(reason: RetryReason) -> Failure {
        Failure::transient(reason, "it failed").about("bucket", "dp-1/a.txt")
    }

    fn permanent() -> Failure {
        Failure::permanent(DeadLetterReason::InvalidKey, "no datapack").about("b", "k")
    }

    /// A settlement as plain data: kind, dead-letter reason, retry delay.
    fn shape(s: &Settlement) -> (&'static str, Option<DeadLetterReason>, Option<Duration>) {
        match s {
            Settlement::Delete => ("delete", None, None),
            Settlement::DeadLetter(f) => ("dead_letter", Some(f.dead_letter_reason()), None),
            Settlement::Retry { delay, .. } => ("retry", None, Some(*delay)),
            Settlement::Release(_) => ("release", None, None),
            Settlement::Abandon => ("abandon", None, None),
        }
    }

    #[test]
    fn each_ending_settles_as_documented() {
        use DeadLetterReason as D;
        use RetryReason as R;
        type Case = (
            &'static str,
            fn() -> Ended,
            u32,
            Probe,
            (&'static str, Option<DeadLetterReason>, Option<Duration>),
        );
        let cases: [Case; 14] = [
            (
                "done",
                || Ended::Done,
                1,
                Probe::NotAsked,
                ("delete", None, None),
            ),
            (
                "done on the last attempt",
                || Ended::Done,
                9,
                Probe::NotAsked,
                ("delete", None, None),
            ),
            (
                "stopped",
                || Ended::Stopped,
                1,
                Probe::NotAsked,
                ("release", None, None),
            ),
            (
                "lost",
                || Ended::Lost,
                3,
                Probe::NotAsked,
                ("abandon", None, None),
            ),
            (
                "permanent: dead-lettered on any attempt",
                || Ended::Failed(permanent()),
                1,
                Probe::NotAsked,
                ("dead_letter", Some(D::InvalidKey), None),
            ),
            (
                "transient, dependency up: backoff",
                || Ended::Failed(transient(R::S3Error)),
                1,
                Probe::Up,
                ("retry", None, Some(5 * S)),
            ),
            (
                "transient, dependency down: released, not charged",
                || Ended::Failed(transient(R::S3Error)),
                1,
                Probe::Down,
                ("release", None, None),
            ),
            (
                "dependency down on the last attempt: still released",
                || Ended::Failed(transient(R::DatabaseTimeout)),
                5,
                Probe::Down,
                ("release", None, None),
            ),
            (
                "second attempt: doubled",
                || Ended::Failed(transient(R::S3Error)),
                2,
                Probe::Up,
                ("retry", None, Some(10 * S)),
            ),
            (
                "last attempt: dead-lettered with the exhausted reason",
                || Ended::Failed(transient(R::S3AccessDenied)),
                5,
                Probe::Up,
                ("dead_letter", Some(D::ObjectAccessDenied), None),
            ),
            (
                "past the last attempt (SQS counts releases too)",
                || Ended::Failed(transient(R::DatabaseConstraint)),
                8,
                Probe::Up,
                ("dead_letter", Some(D::WriteFailed), None),
            ),
            (
                "no dependency to ask: a panic is charged at once",
                || Ended::Failed(transient(R::ProcessingPanicked)),
                5,
                Probe::NotAsked,
                ("dead_letter", Some(D::ProcessingFailed), None),
            ),
            (
                "dead letter unsent on the last attempt: retried, never sent again now",
                || Ended::DeadLetterUnsent(transient(R::SqsError)),
                5,
                Probe::Up,
                ("retry", None, Some(80 * S)),
            ),
            (
                "dead letter unsent and SQS down: released",
                || Ended::DeadLetterUnsent(transient(R::SqsUnavailable)),
                5,
                Probe::Down,
                ("release", None, None),
            ),
        ];
        for (name, ended, receive_count, probe, want) in cases {
            let got = decide(ended(), receive_count, probe, &limits(), 0.0);
            assert_eq!(shape(&got), want, "{name}");
        }
    }

    #[test]
    fn a_released_failure_is_kept_for_its_log_line() {
        let got = decide(
            Ended::Failed(transient(RetryReason::S3Unavailable)),
            1,
            Probe::Down,
            &limits(),
            0.0,
        );
        match got {
            Settlement::Release(Some(failure)) => assert_eq!(failure.reason(), "s3_unavailable"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_exhausted_failure_says_which_attempt_and_names_its_object() {
        let got = decide(
            Ended::Failed(transient(RetryReason::S3ReadFailed)),
            5,
            Probe::Up,
            &limits(),
            0.0,
        );
        match got {
            Settlement::DeadLetter(failure) => assert_eq!(
                dead_letter_detail(&failure),
                "s3://bucket/dp-1/a.txt: failed on attempt 5 of 5: s3_read_failed: it failed"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_dead_letter_detail_names_the_object_when_there_is_one() {
        assert_eq!(dead_letter_detail(&permanent()), "s3://b/k: no datapack");
        let bare = Failure::permanent(DeadLetterReason::MalformedMessage, "not JSON");
        assert_eq!(dead_letter_detail(&bare), "not JSON");
        let transient = Failure::transient(RetryReason::SqsError, "refused");
        assert_eq!(dead_letter_detail(&transient), "sqs_error: refused");
    }

    #[test]
    fn only_failures_naming_a_dependency_ask_its_probe() {
        let cases = [
            (Ended::Done, None),
            (Ended::Stopped, None),
            (Ended::Lost, None),
            (Ended::Failed(permanent()), None),
            (
                Ended::Failed(transient(RetryReason::S3Throttled)),
                Some(Dependency::S3),
            ),
            (Ended::Failed(transient(RetryReason::WriterStopped)), None),
            (
                Ended::DeadLetterUnsent(transient(RetryReason::SqsError)),
                Some(Dependency::Sqs),
            ),
        ];
        for (ended, want) in cases {
            assert_eq!(probe_for(&ended), want, "{ended:?}");
        }
    }

    #[test]
    fn backoff_doubles_per_receive_within_its_jitter_and_stays_capped() {
        let l = limits();
        let cases = [
            (1, 0.0, 5 * S),
            (1, 0.5, Duration::from_millis(7500)),
            (1, 0.999, Duration::from_millis(9995)),
            (2, 0.0, 10 * S),
            (5, 0.0, 80 * S),
            (5, 1.0, 160 * S),
            (8, 0.0, 640 * S),
            (8, 0.9, 900 * S),
            (9, 0.0, 900 * S),
            (30, 0.7, 900 * S),
            (u32::MAX, 0.3, 900 * S),
            (0, 0.0, 5 * S),
        ];
        for (receive_count, jitter, want) in cases {
            assert_eq!(
                backoff(&l, receive_count, jitter),
                want,
                "receive {receive_count}, jitter {jitter}"
            );
        }
    }

    #[test]
    fn the_queue_redrive_limit_caps_the_attempts() {
        let cases = [
            (10, None, 10),
            (10, Some(15), 10),
            (10, Some(4), 4),
            (0, None, 1),
            (5, Some(0), 1),
        ];
        for (configured, redrive, want) in cases {
            assert_eq!(
                max_attempts(configured, redrive),
                want,
                "{configured} {redrive:?}"
            );
        }
    }
}
