//! What a reconcile found and did: the counts (checkpointed with the cursor, so a resumed run
//! reports the whole scope), the first keys of each kind of difference, the progress shown while
//! it runs (a bar on a terminal, log lines otherwise), and the final report (text or JSON).

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The counts and samples of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Counts {
    pub keys_listed: u64,
    pub pages: u64,
    /// Differences found, by kind: `missing`, `changed`, `gone`.
    pub differences: BTreeMap<String, u64>,
    /// The first keys of each kind (up to the report's limit).
    pub first_keys: BTreeMap<String, Vec<String>>,
    /// Rows whose object the listing did not show but S3 answered for (written after the listing
    /// or the inventory was taken): no difference.
    pub confirmed_present: u64,
    /// What the repairs came to: `recorded`, `removed`, `duplicate`, `stale`, `superseded`,
    /// `object_gone`, `skipped:<reason>`, `refused:<reason>` (the queue would dead-letter it)
    /// and `failed:<reason>` (it kept failing; the next run tries again).
    pub outcomes: BTreeMap<String, u64>,
    /// The first repairs refused or failed: key and label.
    pub failures: Vec<(String, String)>,
}

impl Counts {
    pub(crate) fn found(&mut self, kind: &'static str, key: &str, limit: usize) {
        *self.differences.entry(kind.to_owned()).or_default() += 1;
        let keys = self.first_keys.entry(kind.to_owned()).or_default();
        if keys.len() < limit {
            keys.push(key.to_owned());
        }
        crate::ops::metrics::reconcile_difference(kind);
    }

    pub(crate) fn outcome(&mut self, label: String) {
        *self.outcomes.entry(label).or_default() += 1;
    }

    /// A repair that did not succeed: `label` is `refused:<reason>` or `failed:<reason>`.
    pub(crate) fn failed(&mut self, key: &str, label: String, limit: usize) {
        if self.failures.len() < limit {
            self.failures.push((key.to_owned(), label.clone()));
        }
        self.outcome(label);
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
    pub bucket: String,
    pub prefix: String,
    pub source: String,
    pub dry_run: bool,
    /// The key the run continued after, when it resumed an interrupted one.
    pub resumed_after: Option<String>,
    /// Whether the whole scope was compared (false: interrupted; run again to continue).
    pub complete: bool,
    /// Set when another reconcile held an overlapping scope: this run did nothing.
    pub busy: Option<String>,
    pub elapsed_secs: f64,
    #[serde(flatten)]
    pub counts: Counts,
}

impl Report {
    pub(crate) fn print(&self, json: bool) {
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into())
            );
            return;
        }
        if let Some(busy) = &self.busy {
            println!("reconcile s3://{}/{}: {busy}", self.bucket, self.prefix);
            return;
        }
        let c = &self.counts;
        let n = |kind: &str| c.differences.get(kind).copied().unwrap_or(0);
        println!(
            "reconcile s3://{}/{} ({}){}{}",
            self.bucket,
            self.prefix,
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
        );
        if let Some(after) = &self.resumed_after {
            println!("  resumed after     {after}");
        }
        println!("  keys listed       {}", c.keys_listed);
        println!(
            "  missing rows      {}  (objects with no live row)",
            n("missing")
        );
        println!(
            "  changed objects   {}  (the live row is another upload)",
            n("changed")
        );
        println!("  gone objects      {}  (live rows, no object)", n("gone"));
        println!(
            "  present after all {}  (rows newer than the listing)",
            c.confirmed_present
        );
        if !c.outcomes.is_empty() {
            let outcomes: Vec<String> =
                c.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!("  repairs           {}", outcomes.join(", "));
        }
        for (kind, keys) in &c.first_keys {
            if !keys.is_empty() {
                println!("  first {kind}: {}", keys.join(", "));
            }
        }
        for (key, reason) in &c.failures {
            println!("  not repaired: {key} ({reason})");
        }
        println!("  took {:.1} s", self.elapsed_secs);
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
                    "{differences} differences, {failed} failed, at {at}"
                ));
            }
            None if self.last.elapsed() >= self.every => {
                self.last = Instant::now();
                tracing::info!(
                    keys_listed = counts.keys_listed,
                    differences,
                    failed,
                    at,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar on a terminal, log lines otherwise.
    Auto,
    Bar,
    Log,
}
