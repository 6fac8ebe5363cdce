//! How a reconcile that did not complete ended ([`Stopped`]), and the decision of whether it
//! did ([`ending`]): `main` turns it into the exit status (the table is in
//! `docs/operating.md`, "Reconcile: safe against every input").

use crate::disposition::Failure;

use super::report::Report;

/// How a reconcile that did not complete ended.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    /// Interrupted, failed part-way, or some repairs kept failing: the next run continues.
    #[error("{0}")]
    Failed(String),
    /// The settings or the input (an inventory report) cannot be used: running again as it
    /// is cannot succeed.
    #[error("refused: {0}")]
    Refused(String),
    /// Another reconcile holds an overlapping scope: nothing was done.
    #[error("busy: {0}")]
    Busy(String),
}

impl Stopped {
    /// 1 failed, 2 refused, 3 busy (0 is a complete run).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Failed(_) => 1,
            Self::Refused(_) => 2,
            Self::Busy(_) => 3,
        }
    }

    /// How the report names the ending.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Failed(_) => "failed",
            Self::Refused(_) => "refused",
            Self::Busy(_) => "busy",
        }
    }

    pub(crate) fn failed(error: impl std::fmt::Display) -> Self {
        Self::Failed(error.to_string())
    }

    /// A listing (or inventory) failure: one that can never succeed as it is is a refusal.
    pub(crate) fn listing(what: &str, failure: &Failure) -> Self {
        let text = format!("{what}: {}", crate::disposition::chain(failure));
        match failure {
            Failure::Permanent { .. } => Self::Refused(text),
            Failure::Transient { .. } => Self::Failed(text),
        }
    }
}

/// How a run ended, from what it returned and what it counted: a run that stopped short of its
/// scope's end, or whose repairs kept failing, did not complete (`None`: it did).
pub(crate) fn ending(result: Result<(), Stopped>, report: &Report) -> Option<Stopped> {
    let stopped = result.err();
    if stopped.is_some() {
        return stopped;
    }
    let failed = report.counts.failures_total();
    if !report.complete {
        Some(Stopped::Failed(
            "the reconcile stopped before the end of its scope: run it again to continue".into(),
        ))
    } else if failed > 0 {
        Some(Stopped::Failed(format!(
            "{failed} repairs failed (listed in the report); run again once the cause is fixed"
        )))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disposition::{DeadLetterReason, RetryReason};

    fn report(complete: bool, failed: &[&str]) -> Report {
        let mut report = Report::new("b", "dp/", false);
        report.complete = complete;
        for label in failed {
            report.counts.failed("dp/k", (*label).to_owned(), 10);
        }
        report
    }

    #[test]
    fn only_a_whole_scope_without_failed_repairs_completes() {
        assert!(ending(Ok(()), &report(true, &[])).is_none());
        // A refusal (the queue would dead-letter it) is reported, not failed.
        assert!(ending(Ok(()), &report(true, &["refused:unknown_datapack"])).is_none());
        let failed = ending(Ok(()), &report(true, &["failed:s3_unavailable"])).unwrap();
        assert_eq!((failed.exit_code(), failed.label()), (1, "failed"));
        assert!(
            failed.to_string().starts_with("1 repairs failed"),
            "{failed}"
        );
        let short = ending(Ok(()), &report(false, &[])).unwrap();
        assert!(short.to_string().contains("run it again"), "{short}");
    }

    #[test]
    fn how_the_run_stopped_outranks_what_it_counted() {
        let busy = ending(Err(Stopped::Busy("held".into())), &report(false, &[])).unwrap();
        assert_eq!((busy.exit_code(), busy.label()), (3, "busy"));
    }

    #[test]
    fn a_listing_failure_that_cannot_pass_is_a_refusal() {
        let permanent = Failure::permanent(DeadLetterReason::ProcessingFailed, "no such report");
        let refused = Stopped::listing("opening the inventory", &permanent);
        assert_eq!(refused.exit_code(), 2);
        assert!(
            refused.to_string().contains("opening the inventory"),
            "{refused}"
        );
        let transient = Failure::transient(RetryReason::S3Unavailable, "timed out");
        assert_eq!(Stopped::listing("listing", &transient).exit_code(), 1);
    }
}
