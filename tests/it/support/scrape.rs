//! Reading a Prometheus scrape: the text exposition format, as much of it as the worker writes
//! (no escapes in label values, no timestamps).

use std::collections::BTreeMap;

/// One sample line: `name{labels} value`.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The series as written, `name{labels}`, to match a series spelt out in full.
    pub series: String,
    pub value: f64,
}

/// Every sample of a scrape, comments and blank lines left out.
pub fn samples(scrape: &str) -> Vec<Sample> {
    scrape
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("label pair");
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            Sample {
                name: name.to_owned(),
                labels,
                series: series.to_owned(),
                value: value.parse().expect("numeric value"),
            }
        })
        .collect()
}

/// The value of one series spelt out as the worker writes it (`name{a="x",b="y"}`), 0 if absent.
pub fn metric(scrape: &str, series: &str) -> f64 {
    samples(scrape)
        .into_iter()
        .find(|s| s.series == series)
        .map_or(0.0, |s| s.value)
}

/// The sum of every sample of `name` whose labels contain `having` (`reason="x"`, or "" for
/// every sample), whatever other labels the series carries.
pub fn sum(scrape: &str, name: &str, having: &str) -> f64 {
    samples(scrape)
        .into_iter()
        .filter(|s| s.name == name && s.series[name.len()..].contains(having))
        .map(|s| s.value)
        .sum()
}
