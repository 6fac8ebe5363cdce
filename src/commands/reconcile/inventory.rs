//! An S3 Inventory report as the listing: for buckets too large to list often.
//!
//! The report is a `manifest.json` (the source bucket, the CSV columns, the data files) and
//! gzipped CSV files in the destination bucket, in the shape AWS documents. Each file is streamed
//! and decompressed as it is read, never held whole. The comparison needs keys in S3's order:
//! the files are ordered by their first key, and every row must follow the one before it; a
//! report that is not in key order is refused (list the bucket instead) rather than compared
//! wrongly. Keys in the CSV are URL-encoded, as in event notifications. Only CSV is read: an
//! ORC or Parquet report is refused with that reason.
//!
//! A report is input like any other, and may be stale, corrupt or hostile. It is refused (with
//! the reason) when its `creationTimestamp` is missing or unreadable: the repairs it leads to
//! are stamped with that time, so they never beat what S3 announced after it. Memory does not
//! grow with the report: the manifest is read up to [`MAX_MANIFEST_BYTES`], a line up to
//! [`MAX_LINE_BYTES`], and a key's rows are folded as they come (one row kept), up to a number
//! of rows per key (`--inventory-max-rows-per-key`); past any of them the report is refused.

use std::pin::Pin;

use async_compression::tokio::bufread::GzipDecoder;
use aws_sdk_s3::primitives::ByteStream;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

/// The largest `manifest.json` read (AWS's lists a few hundred bytes per data file: this is
/// tens of thousands of files).
pub(crate) const MAX_MANIFEST_BYTES: u64 = 16 << 20;
/// The longest CSV line read (a key is at most 1,024 bytes, three times that URL-encoded; the
/// other columns are short).
pub(crate) const MAX_LINE_BYTES: usize = 64 << 10;

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

/// One data file's rows: its lines, decompressed as they are read, each at most
/// [`MAX_LINE_BYTES`].
struct RowLines {
    reader: Pin<Box<dyn AsyncBufRead + Send>>,
    /// `s3://bucket/key` of the file, for errors.
    name: String,
    line: Vec<u8>,
    number: u64,
}

impl RowLines {
    /// The next line without its end (`\n` or `\r\n`), or `None` at the end of the file.
    async fn next_line(&mut self) -> Result<Option<String>, Failure> {
        self.line.clear();
        loop {
            let available = self
                .reader
                .fill_buf()
                .await
                .map_err(|e| refuse(format!("reading {}: {e}", self.name)))?;
            if available.is_empty() {
                if self.line.is_empty() {
                    return Ok(None);
                }
                break;
            }
            let (take, end) = match available.iter().position(|b| *b == b'\n') {
                Some(i) => (i, Some(i + 1)),
                None => (available.len(), None),
            };
            if self.line.len() + take > MAX_LINE_BYTES {
                return Err(refuse(format!(
                    "{} line {} is longer than {MAX_LINE_BYTES} bytes: not an inventory report",
                    self.name,
                    self.number + 1
                )));
            }
            self.line.extend_from_slice(&available[..take]);
            let consumed = end.unwrap_or(take);
            self.reader.as_mut().consume(consumed);
            if end.is_some() {
                break;
            }
        }
        self.number += 1;
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        String::from_utf8(std::mem::take(&mut self.line))
            .map(Some)
            .map_err(|_| {
                refuse(format!(
                    "{} line {} is not UTF-8: not an inventory report",
                    self.name, self.number
                ))
            })
    }
}

/// The rows of the key being read, folded as they come: the current one, and how many.
#[derive(Debug)]
struct Pending {
    key: String,
    current: Option<Row>,
    rows: u64,
}

impl Pending {
    fn new(row: Row) -> Self {
        let mut pending = Self {
            key: row.key.clone(),
            current: None,
            rows: 0,
        };
        pending.add(row);
        pending
    }

    /// Folds in one more row of the key: the first row flagged latest (every row of a report
    /// of current versions) is the key's current one, unless it is a delete marker.
    fn add(&mut self, row: Row) {
        self.rows += 1;
        if self.current.is_none() && row.latest.unwrap_or(true) && !row.delete_marker {
            self.current = Some(row);
        }
    }

    fn listed(self) -> Option<Listed> {
        let row = self.current?;
        Some(Listed {
            key: row.key,
            etag: row.etag,
            version_id: row.version_id,
            size: row.size,
        })
    }
}

/// The report, read one page of complete keys at a time.
pub(crate) struct Inventory {
    s3: aws_sdk_s3::Client,
    start: Start,
    /// The bucket holding the manifest and the data files.
    report_bucket: String,
    columns: Columns,
    /// Data files still to read, in key order (first key first).
    files: std::vec::IntoIter<String>,
    lines: Option<RowLines>,
    /// The key whose rows are being read.
    pending: Option<Pending>,
    max_rows_per_key: u64,
    previous_key: Option<String>,
    /// When S3 began the report: rows written after it cannot be judged by it, and repairs are
    /// stamped with it.
    pub(crate) taken_at: DateTime<Utc>,
    done: bool,
}

impl Inventory {
    /// Reads the manifest at `s3://bucket/key`, checks it describes `start.bucket` in CSV, and
    /// orders its data files by their first key.
    pub(crate) async fn open(
        s3: aws_sdk_s3::Client,
        manifest_url: &str,
        start: Start,
        max_rows_per_key: u64,
    ) -> Result<Self, Failure> {
        let (report_bucket, manifest_key) = manifest_url
            .strip_prefix("s3://")
            .and_then(|rest| rest.split_once('/'))
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .ok_or_else(|| refuse(format!("{manifest_url:?} is not s3://BUCKET/KEY")))?;
        let body = read_manifest(&s3, report_bucket, manifest_key).await?;
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
        let taken_at = taken_at(manifest.creation_timestamp.as_deref())?;
        let mut firsts = Vec::with_capacity(manifest.files.len());
        for file in manifest.files {
            let mut lines = open_lines(&s3, report_bucket, &file.key).await?;
            let first = next_row(&mut lines, &columns).await?;
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
            pending: None,
            max_rows_per_key,
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
                if let Some(listed) = self.pending.take().and_then(Pending::listed) {
                    page.entries.push(listed);
                }
                self.done = true;
                page.upto = None;
                return Ok(Some(page));
            };
            match &mut self.pending {
                Some(pending) if pending.key == row.key => {
                    pending.add(row);
                    if pending.rows > self.max_rows_per_key {
                        return Err(refuse(format!(
                            "the inventory has more than {} rows for the key {:?}: refused \
                             (raise --inventory-max-rows-per-key if it has that many versions)",
                            self.max_rows_per_key,
                            super::report::printable(&pending.key)
                        )));
                    }
                }
                pending => {
                    if let Some(done) = pending.replace(Pending::new(row)) {
                        page.upto = Some(done.key.clone());
                        if let Some(listed) = done.listed() {
                            page.entries.push(listed);
                        }
                    }
                }
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
                    super::report::printable(&row.key),
                    super::report::printable(previous)
                )));
            }
            if self.previous_key.as_deref() != Some(row.key.as_str()) {
                self.previous_key = Some(row.key.clone());
            }
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
                self.lines = Some(lines);
            }
            let Some(lines) = self.lines.as_mut() else {
                continue;
            };
            match next_row(lines, &self.columns).await? {
                Some(row) => return Ok(Some(row)),
                None => self.lines = None,
            }
        }
    }
}

/// When the report was taken: its `creationTimestamp` (milliseconds since the epoch, as a
/// string). Required: the repairs are stamped with it.
fn taken_at(creation_timestamp: Option<&str>) -> Result<DateTime<Utc>, Failure> {
    let text = creation_timestamp.ok_or_else(|| {
        refuse(
            "manifest.json has no creationTimestamp: without the time the report was taken, \
             its repairs could undo newer changes (reconcile from a listing instead)"
                .into(),
        )
    })?;
    text.trim()
        .parse::<i64>()
        .ok()
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .ok_or_else(|| {
            refuse(format!(
                "manifest.json's creationTimestamp {text:?} is not a time in milliseconds since \
                 the epoch"
            ))
        })
}

/// The body of one object of the report, and its length; an error names the object.
async fn get(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<(ByteStream, Option<i64>), Failure> {
    let answer = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| naming(aws::classify(Dependency::S3, e), bucket, key))?;
    let length = answer.content_length();
    Ok((answer.body, length))
}

/// `failure`, its text naming the report's object it is about.
fn naming(failure: Failure, bucket: &str, key: &str) -> Failure {
    let name = format!("s3://{bucket}/{key}");
    match &failure {
        Failure::Permanent { reason, detail, .. } => {
            Failure::permanent(*reason, format!("{name}: {detail}"))
        }
        Failure::Transient { reason, .. } => Failure::transient(
            *reason,
            format!("{name}: {}", crate::disposition::chain(&failure)),
        ),
    }
    .about(bucket, key)
}

/// The manifest, read whole but never past [`MAX_MANIFEST_BYTES`].
async fn read_manifest(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Vec<u8>, Failure> {
    use tokio::io::AsyncReadExt as _;
    let too_big = || {
        refuse(format!(
            "s3://{bucket}/{key} is larger than {MAX_MANIFEST_BYTES} bytes: not an inventory manifest"
        ))
    };
    let (body, length) = get(s3, bucket, key).await?;
    if length.is_some_and(|n| u64::try_from(n).unwrap_or(0) > MAX_MANIFEST_BYTES) {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    body.into_async_read()
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| refuse(format!("reading s3://{bucket}/{key}: {e}")))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(too_big());
    }
    Ok(bytes)
}

/// A data file's lines, decompressed as they are read.
async fn open_lines(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<RowLines, Failure> {
    let (body, _) = get(s3, bucket, key).await?;
    let mut gunzip = GzipDecoder::new(BufReader::new(body.into_async_read()));
    gunzip.multiple_members(true);
    Ok(RowLines {
        reader: Box::pin(BufReader::new(gunzip)),
        name: format!("s3://{bucket}/{key}"),
        line: Vec::new(),
        number: 0,
    })
}

async fn next_row(lines: &mut RowLines, columns: &Columns) -> Result<Option<Row>, Failure> {
    loop {
        let Some(line) = lines.next_line().await? else {
            return Ok(None);
        };
        if line.trim().is_empty() {
            continue;
        }
        return parse_row(&line, columns)
            .map(Some)
            .map_err(|problem| refuse(format!("{} line {}: {problem}", lines.name, lines.number)));
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
        return Err(format!("no ETag for {:?}", super::report::printable(&key)));
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

    fn current(rows: Vec<Row>) -> Option<Listed> {
        let mut rows = rows.into_iter();
        let mut pending = Pending::new(rows.next()?);
        rows.for_each(|r| pending.add(r));
        pending.listed()
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

    #[test]
    fn a_report_without_a_readable_creation_time_is_refused() {
        assert!(
            taken_at(None)
                .unwrap_err()
                .to_string()
                .contains("no creationTimestamp")
        );
        assert!(taken_at(Some("yesterday")).is_err());
        assert_eq!(
            taken_at(Some("1764547200000")).unwrap(),
            DateTime::<Utc>::from_timestamp_millis(1_764_547_200_000).unwrap()
        );
    }

    #[tokio::test]
    async fn lines_are_read_up_to_the_cap_in_bounded_memory() {
        let text = format!("a,b\r\n{}\nrest", "x".repeat(MAX_LINE_BYTES + 1));
        let mut lines = RowLines {
            reader: Box::pin(BufReader::with_capacity(
                16,
                std::io::Cursor::new(text.into_bytes()),
            )),
            name: "s3://r/f".into(),
            line: Vec::new(),
            number: 0,
        };
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("a,b"));
        let error = lines.next_line().await.unwrap_err().to_string();
        assert!(error.contains("s3://r/f line 2 is longer than"), "{error}");
        assert!(lines.line.capacity() <= 2 * MAX_LINE_BYTES);
    }
}
