//! The documentation against the code: the configuration reference is what the command line's
//! definitions generate, and every setting, command, metric and alert has exactly one reference
//! entry under `docs/`, so a new one without documentation (or documented twice, drifting apart)
//! fails here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use datapack_worker::reference;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `docs/*.md`, by file name.
fn docs() -> BTreeMap<String, String> {
    let dir = root().join("docs");
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("docs/") {
        let path = entry.expect("docs/ entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            files.insert(name, read(&path));
        }
    }
    files
}

/// The first cell of every markdown table row, as written (`| `x` | …` gives "`x`").
fn first_cells(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter_map(|line| line.trim_start().strip_prefix('|'))
        .filter_map(|row| row.split('|').next())
        .map(str::trim)
}

/// The first cell of every table row below a header row, with that header in lower case.
fn rows_with_header(text: &str) -> Vec<(&str, String)> {
    let mut rows = Vec::new();
    let mut header: Option<String> = None;
    for line in text.lines() {
        let Some(row) = line.trim_start().strip_prefix('|') else {
            header = None;
            continue;
        };
        match &header {
            None => header = Some(row.to_lowercase()),
            Some(h) if !row.starts_with(['-', ':']) => {
                rows.push((row.split('|').next().unwrap_or("").trim(), h.clone()));
            }
            Some(_) => {}
        }
    }
    rows
}

/// `(file, line)` of every reference entry `matches` accepts, over every docs file.
fn entries(docs: &BTreeMap<String, String>, matches: impl Fn(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for (file, text) in docs {
        for (n, line) in text.lines().enumerate() {
            if matches(line) {
                found.push(format!("docs/{file}:{}", n + 1));
            }
        }
    }
    found
}

#[test]
fn configuration_reference_is_what_the_code_generates() {
    let generated = reference::configuration();
    assert!(
        generated.unmatched_ranges.is_empty(),
        "src/config.rs's RANGES or RULES name settings no flag or environment variable has: {:?}",
        generated.unmatched_ranges
    );
    let path = root().join("docs/configuration.md");
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    if written == generated.markdown {
        return;
    }
    // A diff by line, enough to name the setting that differs.
    let old: Vec<&str> = written.lines().collect();
    let new: Vec<&str> = generated.markdown.lines().collect();
    let mut report = String::new();
    for line in &new {
        if !old.contains(line) {
            report.push_str(&format!("+ {line}\n"));
        }
    }
    for line in &old {
        if !new.contains(line) {
            report.push_str(&format!("- {line}\n"));
        }
    }
    panic!(
        "docs/configuration.md differs from the command line's definitions \
         (+ generated, - written):\n{report}\nregenerate it: {}",
        reference::REGENERATE
    );
}

#[test]
fn every_setting_and_command_has_one_reference_entry() {
    let docs = docs();
    let generated = reference::configuration();
    // Every setting's row is in the generated reference; no other page keeps a table of settings
    // (it would drift): no row elsewhere starts with a flag or with an environment variable the
    // reference documents.
    let config = &generated.markdown;
    let variables: Vec<String> = config
        .lines()
        .filter(|row| row.starts_with("| `--"))
        .filter_map(|row| row.split('|').nth(2).map(|c| c.trim().to_owned()))
        .filter(|cell| cell.starts_with('`'))
        .collect();
    for (file, text) in &docs {
        if file == "configuration.md" {
            continue;
        }
        for (cell, header) in rows_with_header(text) {
            let a_variable = variables.iter().any(|v| v == cell);
            let a_flag_with_default =
                cell.starts_with("`--") && !cell.contains(',') && header.contains("default");
            assert!(
                !a_variable && !a_flag_with_default,
                "docs/{file} has a table row for {cell}: settings are documented once, in the \
                 generated docs/configuration.md (link there instead)"
            );
        }
    }
    // Every command has one section.
    for command in [
        "run",
        "migrate",
        "presign",
        "dlq list",
        "dlq redrive",
        "reconcile",
    ] {
        let heading = format!("## `datapack-worker {command}`");
        let found = entries(&docs, |line| line == heading);
        assert_eq!(
            found.len(),
            1,
            "{heading}: expected one section, found {found:?}"
        );
    }
    // Every flag is documented once per command (the generator dedupes flags shared by several).
    let mut flags = generated.flags.clone();
    flags.sort();
    let before = flags.len();
    flags.dedup();
    assert_eq!(before, flags.len(), "a flag documented twice: {flags:?}");
}

/// Metric names as the code registers them: every `"datapack_worker_…"` literal in the metric
/// modules.
fn metric_names() -> Vec<String> {
    let mut sources = vec![root().join("src/ops/metrics.rs")];
    for entry in std::fs::read_dir(root().join("src/ops/metrics")).expect("src/ops/metrics/") {
        sources.push(entry.expect("entry").path());
    }
    let mut names = Vec::new();
    for source in sources {
        let text = read(&source);
        for piece in text.split('"').skip(1).step_by(2) {
            if piece.starts_with("datapack_worker_")
                && piece.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            {
                names.push(piece.to_owned());
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn every_metric_has_one_row_in_the_metrics_reference() {
    let docs = docs();
    let names = metric_names();
    assert!(names.len() > 20, "metric names not found: {names:?}");
    for name in &names {
        let short = name.trim_start_matches("datapack_worker_");
        let found = entries(&docs, |line| {
            first_cells(line)
                .next()
                .is_some_and(|cell| cell == format!("`{short}`") || cell == format!("`{name}`"))
        });
        assert_eq!(
            found.len(),
            1,
            "{name}: expected one row in the metrics reference (docs/operating.md), found {found:?}"
        );
    }
}

#[test]
fn every_alert_has_one_runbook_section() {
    let docs = docs();
    let alerts = read(&root().join("deploy/observability/alerts.yml"));
    let names: Vec<&str> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert!(!names.is_empty(), "no alert in alerts.yml");
    for name in names {
        let heading = format!("## {name}");
        let found = entries(&docs, |line| line == heading);
        assert_eq!(
            found,
            vec![format!(
                "docs/runbook.md:{}",
                docs["runbook.md"]
                    .lines()
                    .position(|l| l == heading)
                    .map_or(0, |n| n + 1)
            )],
            "{name}: expected one section in docs/runbook.md"
        );
    }
}

#[test]
fn relative_links_in_the_docs_resolve() {
    // README.md, docs/*.md and bench/README.md: every `](path)` that is not a URL names a file
    // that exists, and every `#anchor` into a markdown file names one of its headings.
    let mut files = vec![root().join("README.md"), root().join("bench/README.md")];
    files.extend(docs().keys().map(|f| root().join("docs").join(f)));
    let mut broken = Vec::new();
    for file in &files {
        let text = read(file);
        let dir = file.parent().expect("dir");
        for target in text.split("](").skip(1).filter_map(|s| s.split(')').next()) {
            if target.contains("://") || target.starts_with("mailto:") || target.contains(' ') {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                dir.join(path)
            };
            if !resolved.exists() {
                broken.push(format!("{}: {target} (no such file)", file.display()));
                continue;
            }
            if !anchor.is_empty() && resolved.extension().is_some_and(|e| e == "md") {
                let headings = read(&resolved);
                let known = headings
                    .lines()
                    .filter_map(|l| {
                        l.trim_start_matches('#')
                            .strip_prefix(' ')
                            .filter(|_| l.starts_with('#'))
                    })
                    .any(|h| slug(h) == anchor);
                if !known {
                    broken.push(format!("{}: {target} (no such heading)", file.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, punctuation dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}
