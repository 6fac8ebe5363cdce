//! An S3 Inventory report as the listing: for buckets too large to list often.
//!
//! The report is a `manifest.json` (the source bucket, the CSV columns, the data files) and
//! gzipped CSV files in the destination bucket, in the shape AWS documents. Each file is streamed
//! and decompressed as it is read, never held whole. The comparison needs keys in S3's order:
//! the files are ordered by their first key, and every row must follow the one before it; a
//! report that is not in key order is refused (list the bucket instead) rather than compared
//! wrongly. Keys in the CSV are URL-encoded, as in event notifications. Only CSV is read: an
//! ORC or Parquet report is refused with that reason.

use std::pin::Pin;

use async_compression::tokio::bufread::GzipDecoder;
use aws_sdk_s3::primitives::ByteStream;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader, Lines};

use crate::aws;
use crate::disposition::{DeadLetterReason, Dependency, Failure};
use crate::process::event::{decode_key, unquote_etag};

use super::listing::{Listed, Page, Start};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    source_bucket: String,
    file_format: String,
    file_schema: String,
    #[serde(default)]
    creation_timestamp: Option<String>,
    files: Vec<ManifestFile>,
}

#[derive(Debug, Deserialize)]
struct ManifestFile {
    key: String,
}

/// Where each column the comparison reads is.
#[derive(Debug, Clone, Copy)]
struct Columns {
    key: usize,
    etag: usize,
    version_id: Option<usize>,
    is_latest: Option<usize>,
    is_delete_marker: Option<usize>,
    size: Option<usize>,
}

impl Columns {
    fn of(schema: &str) -> Result<Self, Failure> {
        let names: Vec<&str> = schema.split(',').map(str::trim).collect();
        let find = |name: &str| names.iter().position(|n| n.eq_ignore_ascii_case(name));
        let required = |name: &'static str| {
            find(name).ok_or_else(|| {
                refuse(format!(
                    "the inventory has no {name} column (fileSchema: {schema}); configure it with {name}"
                ))
            })
        };
        Ok(Self {
            key: required("Key")?,
            etag: required("ETag")?,
            version_id: find("VersionId"),
            is_latest: find("IsLatest"),
            is_delete_marker: find("IsDeleteMarker"),
            size: find("Size"),
        })
    }
}

/// One CSV row: a version (or the object) of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    key: String,
    etag: String,
    version_id: Option<String>,
    /// `None`: a report of current versions only, where every row is current.
    latest: Option<bool>,
    delete_marker: bool,
    size: Option<u64>,
}

type RowLines = Lines<Pin<Box<dyn AsyncBufRead + Send>>>;

/// The report, read one page of complete keys at a time.
pub(crate) struct Inventory {
    s3: aws_sdk_s3::Client,
    start: Start,
    /// The bucket holding the manifest and the data files.
    report_bucket: String,
    columns: Columns,
    /// Data files still to read, in key order (first key first).
    files: std::vec::IntoIter<String>,
    lines: Option<(String, RowLines)>,
    /// The key whose rows are being gathered, and its rows.
    pending: Vec<Row>,
    previous_key: Option<String>,
    /// When S3 began the report: rows written after it cannot be judged by it.
    pub(crate) taken_at: Option<DateTime<Utc>>,
    done: bool,
}

impl Inventory {
    /// Reads the manifest at `s3://bucket/key`, checks it describes `start.bucket` in CSV, and
    /// orders its data files by their first key.
    pub(crate) async fn open(
        s3: aws_sdk_s3::Client,
        manifest_url: &str,
        start: Start,
    ) -> Result<Self, Failure> {
        let (report_bucket, manifest_key) = manifest_url
            .strip_prefix("s3://")
            .and_then(|rest| rest.split_once('/'))
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .ok_or_else(|| refuse(format!("{manifest_url:?} is not s3://BUCKET/KEY")))?;
        let body = read_all(&s3, report_bucket, manifest_key).await?;
        let manifest: Manifest = serde_json::from_slice(&body)
            .map_err(|e| refuse(format!("manifest.json does not parse: {e}")))?;
        if !manifest.file_format.eq_ignore_ascii_case("CSV") {
            return Err(refuse(format!(
                "the inventory is {}: only CSV reports are read (configure a CSV inventory)",
                manifest.file_format
            )));
        }
        if manifest.source_bucket != start.bucket {
            return Err(refuse(format!(
                "the inventory lists bucket {}, not {}",
                manifest.source_bucket, start.bucket
            )));
        }
        let columns = Columns::of(&manifest.file_schema)?;
        let taken_at = manifest
            .creation_timestamp
            .as_deref()
            .and_then(|ms| ms.parse::<i64>().ok())
            .and_then(DateTime::<Utc>::from_timestamp_millis);
        let mut firsts = Vec::with_capacity(manifest.files.len());
        for file in manifest.files {
            let mut lines = open_lines(&s3, report_bucket, &file.key).await?;
            let first = next_row(&mut lines, &columns, &file.key).await?;
            // Files without a row list nothing.
            if let Some(row) = first {
                firsts.push((row.key, file.key));
            }
        }
        firsts.sort();
        Ok(Self {
            s3,
            start,
            report_bucket: report_bucket.to_owned(),
            columns,
            files: firsts
                .into_iter()
                .map(|(_, k)| k)
                .collect::<Vec<_>>()
                .into_iter(),
            lines: None,
            pending: Vec::new(),
            previous_key: None,
            taken_at,
            done: false,
        })
    }

    pub(crate) async fn next_page(&mut self) -> Result<Option<Page>, Failure> {
        if self.done {
            return Ok(None);
        }
        let mut page = Page::default();
        while page.entries.len() < usize::try_from(self.start.page_keys).unwrap_or(1000) {
            let Some(row) = self.next_in_scope().await? else {
                if let Some(listed) = current(std::mem::take(&mut self.pending)) {
                    page.entries.push(listed);
                }
                self.done = true;
                page.upto = None;
                return Ok(Some(page));
            };
            match self.pending.first() {
                Some(first) if first.key != row.key => {
                    let key = first.key.clone();
                    if let Some(listed) = current(std::mem::replace(&mut self.pending, vec![row])) {
                        page.entries.push(listed);
                    }
                    page.upto = Some(key);
                }
                _ => self.pending.push(row),
            }
        }
        Ok(Some(page))
    }

    /// The next row in the scope (the prefix, after the checkpoint), checking the order.
    async fn next_in_scope(&mut self) -> Result<Option<Row>, Failure> {
        loop {
            let Some(row) = self.next_any().await? else {
                return Ok(None);
            };
            if let Some(previous) = &self.previous_key
                && row.key.as_str() < previous.as_str()
            {
                return Err(refuse(format!(
                    "the inventory is not in key order ({:?} after {:?}): reconcile from a listing instead",
                    row.key, previous
                )));
            }
            self.previous_key = Some(row.key.clone());
            let in_prefix = row.key.starts_with(&self.start.prefix);
            let after = self
                .start
                .after
                .as_deref()
                .is_none_or(|a| row.key.as_str() > a);
            if in_prefix && after {
                return Ok(Some(row));
            }
        }
    }

    async fn next_any(&mut self) -> Result<Option<Row>, Failure> {
        loop {
            if self.lines.is_none() {
                let Some(file) = self.files.next() else {
                    return Ok(None);
                };
                let lines = open_lines(&self.s3, &self.report_bucket, &file).await?;
                self.lines = Some((file, lines));
            }
            let (file, lines) = self.lines.as_mut().expect("set above");
            match next_row(lines, &self.columns, file).await? {
                Some(row) => return Ok(Some(row)),
                None => self.lines = None,
            }
        }
    }
}

/// The version a key's rows say is current: the row flagged latest (every row in a report of
/// current versions), unless it is a delete marker.
fn current(rows: Vec<Row>) -> Option<Listed> {
    let row = rows
        .into_iter()
        .find(|r| r.latest.unwrap_or(true) && !r.delete_marker)?;
    Some(Listed {
        key: row.key,
        etag: row.etag,
        version_id: row.version_id,
        size: row.size,
    })
}

/// The body of one object of the report.
async fn get(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<ByteStream, Failure> {
    let answer = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| aws::classify(Dependency::S3, e))?;
    Ok(answer.body)
}

async fn read_all(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<Vec<u8>, Failure> {
    let body = get(s3, bucket, key)
        .await?
        .collect()
        .await
        .map_err(|e| refuse(format!("reading s3://{bucket}/{key}: {e}")))?;
    Ok(body.into_bytes().to_vec())
}

/// A data file's lines, decompressed as they are read.
async fn open_lines(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<RowLines, Failure> {
    let body = get(s3, bucket, key).await?;
    let mut gunzip = GzipDecoder::new(BufReader::new(body.into_async_read()));
    gunzip.multiple_members(true);
    let reader: Pin<Box<dyn AsyncBufRead + Send>> = Box::pin(BufReader::new(gunzip));
    Ok(reader.lines())
}

async fn next_row(
    lines: &mut RowLines,
    columns: &Columns,
    file: &str,
) -> Result<Option<Row>, Failure> {
    loop {
        let line = lines
            .next_line()
            .await
            .map_err(|e| refuse(format!("reading {file}: {e}")))?;
        let Some(line) = line else { return Ok(None) };
        if line.trim().is_empty() {
            continue;
        }
        return parse_row(&line, columns)
            .map(Some)
            .map_err(|problem| refuse(format!("{file}: {problem}")));
    }
}

fn parse_row(line: &str, columns: &Columns) -> Result<Row, String> {
    let fields = csv_fields(line)?;
    let field = |i: usize| fields.get(i).map(String::as_str);
    let optional = |i: Option<usize>| i.and_then(field).filter(|v| !v.is_empty());
    let key = field(columns.key).ok_or("a row without a key")?;
    let key = decode_key(key).map_err(|e| e.detail)?;
    let etag = unquote_etag(field(columns.etag).unwrap_or_default());
    let delete_marker = optional(columns.is_delete_marker).is_some_and(|v| v == "true");
    if etag.is_empty() && !delete_marker {
        return Err(format!("no ETag for {key:?}"));
    }
    Ok(Row {
        key,
        etag,
        version_id: optional(columns.version_id)
            .filter(|v| *v != "null")
            .map(str::to_owned),
        latest: optional(columns.is_latest).map(|v| v == "true"),
        delete_marker,
        size: optional(columns.size).and_then(|v| v.parse().ok()),
    })
}

/// The fields of one CSV line: quoted (`""` inside is a quote) or bare.
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("an unterminated quoted field".into()),
                }
            }
            if !matches!(chars.peek(), None | Some(',')) {
                return Err("text after a quoted field".into());
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                field.push(c);
                chars.next();
            }
        }
        fields.push(field);
        match chars.next() {
            Some(',') => continue,
            _ => return Ok(fields),
        }
    }
}

fn refuse(detail: String) -> Failure {
    Failure::permanent(DeadLetterReason::ProcessingFailed, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_quoted_and_bare_fields() {
        assert_eq!(
            csv_fields(r#""b","dp/a%2Cb+c.txt","12","""x""""#).unwrap(),
            ["b", "dp/a%2Cb+c.txt", "12", "\"x\""]
        );
        assert_eq!(csv_fields("a,,c").unwrap(), ["a", "", "c"]);
        assert!(csv_fields(r#""open"#).is_err());
    }

    #[test]
    fn reads_the_documented_columns() {
        let columns = Columns::of(
            "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag",
        )
        .unwrap();
        let row = parse_row(
            r#""b","dp/raw+data/%C3%A9t%C3%A9.csv","v1","true","false","42","2026-11-30T00:00:00.000Z","abc""#,
            &columns,
        )
        .unwrap();
        assert_eq!(row.key, "dp/raw data/été.csv");
        assert_eq!(row.etag, "abc");
        assert_eq!(row.version_id.as_deref(), Some("v1"));
        assert_eq!(row.latest, Some(true));
        assert_eq!(row.size, Some(42));
        let marker = parse_row(
            r#""b","dp/x","v2","true","true","","2026-11-30T00:00:00.000Z","""#,
            &columns,
        )
        .unwrap();
        assert!(marker.delete_marker);
        assert!(Columns::of("Bucket, Key, Size").is_err(), "no ETag column");
    }

    #[test]
    fn the_latest_row_that_is_no_marker_is_current() {
        let row = |v: &str, latest, marker| Row {
            key: "dp/a".into(),
            etag: format!("e{v}"),
            version_id: Some(v.into()),
            latest: Some(latest),
            delete_marker: marker,
            size: None,
        };
        assert_eq!(
            current(vec![row("1", false, false), row("2", true, false)])
                .unwrap()
                .etag,
            "e2"
        );
        assert_eq!(
            current(vec![row("3", true, true), row("2", false, false)]),
            None
        );
    }
}
