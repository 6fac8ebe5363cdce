//! What a reconcile found and did: the counts (checkpointed with the cursor, so a resumed run
//! reports the whole scope), the first keys of each kind of difference, the progress shown while
//! it runs (a bar on a terminal, log lines otherwise), and the final report (text or JSON).
//!
//! Keys enter the counts already escaped ([`printable`]): a key may hold any character S3
//! allows, and neither a terminal, a log line, nor the checkpoint's `jsonb` (which refuses
//! `\u0000`) should receive its control characters raw.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cli::ProgressMode;

/// The kinds of difference between S3 and the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// S3 shows an object; no row of the key is live.
    Missing,
    /// S3 shows an object; the key's live row is another upload (or it has several).
    Changed,
    /// Rows of the key are live; S3 shows nothing.
    Gone,
}

impl Kind {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Changed => "changed",
            Self::Gone => "gone",
        }
    }
}

/// What a repair came to, beside the difference it repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Made {
    /// A dry run: found, not repaired.
    Nothing,
    /// The pipeline's outcome: `recorded`, `removed`, `duplicate`, `stale`, `skipped:<reason>`…
    Done(String),
    /// It never can succeed as things are (the queue would dead-letter it).
    Refused(&'static str),
    /// It kept failing; the next run tries again.
    Failed(&'static str),
}

impl Made {
    /// The label counted in `outcomes`; `None` for a dry run.
    pub(crate) fn label(&self) -> Option<String> {
        match self {
            Self::Nothing => None,
            Self::Done(label) => Some(label.clone()),
            Self::Refused(reason) => Some(format!("refused:{reason}")),
            Self::Failed(reason) => Some(format!("failed:{reason}")),
        }
    }
}

/// The outcome counted for a key the database cannot hold (PostgreSQL text refuses NUL).
pub(crate) const UNSTORABLE: &str = "skipped:unstorable_key";

/// `key` with its control characters (and backslashes) escaped: `\n`, `\t`, `\x01`, `\u{85}`,
/// `\\`. Every other character, including non-ASCII letters, is kept.
pub(crate) fn printable(key: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() && u32::from(c) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// The counts and samples of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Counts {
    pub(crate) keys_listed: u64,
    pub(crate) pages: u64,
    /// Differences found, by kind: `missing`, `changed`, `gone` ([`Kind`]).
    pub(crate) differences: BTreeMap<String, u64>,
    /// The first keys of each kind (up to the report's limit), escaped ([`printable`]), and of
    /// the keys skipped because the database cannot hold them (`unstorable_key`).
    pub(crate) first_keys: BTreeMap<String, Vec<String>>,
    /// Keys the listing showed differently from the rows, where S3, asked before any change,
    /// agreed with the rows after all (the listing or the inventory was older than them): no
    /// difference.
    pub(crate) confirmed_present: u64,
    /// What the repairs came to: `recorded`, `removed`, `duplicate`, `stale`, `superseded`,
    /// `object_gone`, `skipped:<reason>` (`skipped:unstorable_key`: a key PostgreSQL cannot
    /// hold, never compared), `refused:<reason>` (the queue would dead-letter it) and
    /// `failed:<reason>` (it kept failing; the next run tries again).
    pub(crate) outcomes: BTreeMap<String, u64>,
    /// The first repairs refused or failed: key (escaped) and label.
    pub(crate) failures: Vec<(String, String)>,
}

impl Counts {
    pub(crate) fn found(&mut self, kind: Kind, key: &str, limit: usize) {
        *self
            .differences
            .entry(kind.as_str().to_owned())
            .or_default() += 1;
        self.sample(kind.as_str(), key, limit);
        crate::ops::metrics::reconcile_difference(kind.as_str());
    }

    /// A listed key the database cannot hold: skipped, counted, named.
    pub(crate) fn unstorable(&mut self, key: &str, limit: usize) {
        self.outcome(UNSTORABLE.to_owned());
        self.sample("unstorable_key", key, limit);
    }

    fn sample(&mut self, kind: &str, key: &str, limit: usize) {
        let keys = self.first_keys.entry(kind.to_owned()).or_default();
        if keys.len() < limit {
            keys.push(printable(key));
        }
    }

    pub(crate) fn outcome(&mut self, label: String) {
        *self.outcomes.entry(label).or_default() += 1;
    }

    /// A repair that did not succeed: `label` is `refused:<reason>` or `failed:<reason>`.
    pub(crate) fn failed(&mut self, key: &str, label: String, limit: usize) {
        if self.failures.len() < limit {
            self.failures.push((printable(key), label.clone()));
        }
        self.outcome(label);
    }

    /// A finished repair of `key`: the difference it turned out to be (`None`: S3 agreed with
    /// the rows after all) and what it made.
    pub(crate) fn repaired(&mut self, key: &str, kind: Option<Kind>, made: &Made, limit: usize) {
        let Some(kind) = kind else {
            self.confirmed_present += 1;
            return;
        };
        self.found(kind, key, limit);
        match made {
            Made::Nothing => {}
            Made::Done(label) => self.outcome(label.clone()),
            Made::Refused(_) | Made::Failed(_) => {
                if let Some(label) = made.label() {
                    self.failed(key, label, limit);
                }
            }
        }
    }

    /// A page of `keys` listed keys went through.
    pub(crate) fn paged(&mut self, keys: usize) {
        self.keys_listed += keys as u64;
        self.pages += 1;
    }

    pub(crate) fn failures_total(&self) -> u64 {
        self.outcomes
            .iter()
            .filter(|(k, _)| k.starts_with("failed:"))
            .map(|(_, n)| n)
            .sum()
    }

    pub(crate) fn differences_total(&self) -> u64 {
        self.differences.values().sum()
    }
}

/// The final report.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) bucket: String,
    pub(crate) prefix: String,
    pub(crate) source: String,
    pub(crate) dry_run: bool,
    /// The key the run continued after, when it resumed an interrupted one (escaped).
    pub(crate) resumed_after: Option<String>,
    /// Whether the whole scope was compared (false: interrupted; run again to continue).
    pub(crate) complete: bool,
    /// Set when another reconcile held an overlapping scope: this run did nothing.
    pub(crate) busy: Option<String>,
    /// How the run ended: `complete` (exit 0), `failed` (1), `refused` (2) or `busy` (3).
    pub(crate) ended: &'static str,
    /// Why it did not complete.
    pub(crate) error: Option<String>,
    pub(crate) elapsed_secs: f64,
    #[serde(flatten)]
    pub(crate) counts: Counts,
}

impl Report {
    /// The report of a run over `bucket`/`prefix` about to start: nothing found yet, ended
    /// `complete` until told otherwise.
    pub(crate) fn new(bucket: &str, prefix: &str, dry_run: bool) -> Self {
        Self {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            source: String::new(),
            dry_run,
            resumed_after: None,
            complete: false,
            busy: None,
            ended: "complete",
            error: None,
            elapsed_secs: 0.0,
            counts: Counts::default(),
        }
    }

    /// Prints the report on stdout. A stdout that is gone (a closed pipe) loses the report but
    /// never changes how the run ends: the exit status still tells.
    pub(crate) fn print(&self, json: bool) {
        use std::io::Write as _;
        let text = if json {
            serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into()) + "\n"
        } else {
            self.text()
        };
        let mut stdout = std::io::stdout().lock();
        let _ = stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush());
    }

    fn text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_text(&mut out);
        out
    }

    fn write_text(&self, out: &mut String) -> std::fmt::Result {
        use std::fmt::Write as _;
        if let Some(busy) = &self.busy {
            let prefix = printable(&self.prefix);
            return writeln!(out, "reconcile s3://{}/{prefix}: {busy}", self.bucket);
        }
        writeln!(
            out,
            "reconcile s3://{}/{} ({}){}{}",
            self.bucket,
            printable(&self.prefix),
            self.source,
            if self.dry_run {
                ", dry run: nothing changed"
            } else {
                ""
            },
            if self.complete {
                ""
            } else {
                ", INCOMPLETE: run again to continue"
            },
        )?;
        if let Some(error) = &self.error {
            writeln!(out, "  {}: {error}", self.ended.to_uppercase())?;
        }
        if let Some(after) = &self.resumed_after {
            writeln!(out, "  resumed after     {after}")?;
        }
        self.counts.write_text(out)?;
        writeln!(out, "  took {:.1} s", self.elapsed_secs)
    }
}

impl Counts {
    /// The counts' lines of the text report.
    fn write_text(&self, out: &mut String) -> std::fmt::Result {
        use std::fmt::Write as _;
        let c = self;
        let n = |kind: &str| c.differences.get(kind).copied().unwrap_or(0);
        writeln!(out, "  keys listed       {}", c.keys_listed)?;
        writeln!(
            out,
            "  missing rows      {}  (objects with no live row)",
            n("missing")
        )?;
        writeln!(
            out,
            "  changed objects   {}  (the live row is another upload)",
            n("changed")
        )?;
        writeln!(
            out,
            "  gone objects      {}  (live rows, no object)",
            n("gone")
        )?;
        writeln!(
            out,
            "  agree after all   {}  (S3 asked: the listing was older than the rows)",
            c.confirmed_present
        )?;
        if !c.outcomes.is_empty() {
            let outcomes: Vec<String> =
                c.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
            writeln!(out, "  repairs           {}", outcomes.join(", "))?;
        }
        for (kind, keys) in &c.first_keys {
            if !keys.is_empty() {
                writeln!(out, "  first {kind}: {}", keys.join(", "))?;
            }
        }
        for (key, reason) in &c.failures {
            writeln!(out, "  not repaired: {key} ({reason})")?;
        }
        Ok(())
    }
}

/// Progress while the run goes: a spinner line on a terminal, a log line every `every` otherwise.
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    every: Duration,
    last: Instant,
}

impl Progress {
    pub(crate) fn new(mode: ProgressMode, every: Duration) -> Self {
        let bar = match mode {
            ProgressMode::Bar => true,
            ProgressMode::Log => false,
            ProgressMode::Auto => std::io::stderr().is_terminal(),
        }
        .then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {elapsed_precise} {pos} keys ({per_sec}) {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self {
            bar,
            every,
            last: Instant::now(),
        }
    }

    /// After each page: where the run is and what it found.
    pub(crate) fn page(&mut self, counts: &Counts, at: &str) {
        let differences = counts.differences_total();
        let failed = counts.failures_total();
        match &self.bar {
            Some(bar) => {
                bar.set_position(counts.keys_listed);
                bar.set_message(format!(
                    "{differences} differences, {failed} failed, at {}",
                    printable(at)
                ));
            }
            None if self.last.elapsed() >= self.every => {
                self.last = Instant::now();
                tracing::info!(
                    keys_listed = counts.keys_listed,
                    differences,
                    failed,
                    at = printable(at),
                    "reconcile progress"
                );
            }
            None => {}
        }
    }

    pub(crate) fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(
            printable("dp/a\u{1}b\0c\n\td\\e"),
            r"dp/a\x01b\x00c\n\td\\e"
        );
        assert_eq!(printable("dp/\u{85}été 文.txt"), r"dp/\u{85}été 文.txt");
        let mut counts = Counts::default();
        counts.unstorable("dp/nul\0key", 5);
        let json = serde_json::to_string(&counts).unwrap();
        assert!(!json.contains("\\u0000"), "nothing jsonb refuses: {json}");
        assert_eq!(counts.outcomes[UNSTORABLE], 1);
    }

    #[test]
    fn repairs_are_counted_by_kind_and_outcome_and_only_failures_fail_the_run() {
        let mut counts = Counts::default();
        let recorded = Made::Done("recorded".into());
        counts.repaired("dp/a", Some(Kind::Missing), &recorded, 1);
        counts.repaired("dp/b", Some(Kind::Missing), &recorded, 1);
        counts.repaired("dp/c", Some(Kind::Gone), &Made::Done("removed".into()), 1);
        counts.repaired("dp/d", None, &Made::Nothing, 1);
        counts.repaired(
            "dp/e",
            Some(Kind::Changed),
            &Made::Refused("unknown_datapack"),
            1,
        );
        counts.repaired(
            "dp/f",
            Some(Kind::Changed),
            &Made::Failed("s3_unavailable"),
            1,
        );
        counts.repaired("dp/g", Some(Kind::Changed), &Made::Nothing, 1);
        assert_eq!(counts.differences["missing"], 2);
        assert_eq!(counts.differences["changed"], 3);
        assert_eq!(counts.differences_total(), 6);
        assert_eq!(counts.confirmed_present, 1);
        assert_eq!(counts.outcomes["recorded"], 2);
        assert_eq!(counts.outcomes["refused:unknown_datapack"], 1);
        assert_eq!(counts.failures_total(), 1, "a refusal is no failure");
        // The samples stop at the limit; the counts do not.
        assert_eq!(counts.first_keys["missing"], ["dp/a"]);
        assert_eq!(
            counts.failures,
            [("dp/e".into(), "refused:unknown_datapack".into())]
        );
        counts.paged(1000);
        counts.paged(7);
        assert_eq!((counts.keys_listed, counts.pages), (1007, 2));
    }

    #[test]
    fn the_text_report_names_each_kind_and_what_stopped_the_run() {
        let mut report = Report::new("b", "dp/\n", true);
        report
            .counts
            .repaired("dp/a", Some(Kind::Gone), &Made::Nothing, 5);
        report.ended = "failed";
        report.error = Some("interrupted".into());
        let text = report.text();
        assert!(
            text.starts_with("reconcile s3://b/dp/\\n (), dry run"),
            "{text}"
        );
        assert!(text.contains("INCOMPLETE"), "{text}");
        assert!(text.contains("  FAILED: interrupted\n"), "{text}");
        assert!(text.contains("gone objects      1"), "{text}");
        assert!(text.contains("first gone: dp/a"), "{text}");
    }
}
