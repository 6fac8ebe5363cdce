//! The application side of an upload: a presigned PUT URL and the headers that get it recorded.
//!
//! The URL is signed with SigV4 in the query string; every header the browser is told to send
//! (`Content-Type`, the `x-amz-meta-*` metadata and, with a SHA-256, `x-amz-checksum-sha256`) is a
//! signed header, so S3 refuses the upload if any of them is changed or left out. With a SHA-256
//! S3 also refuses any body whose digest differs (`BadDigest`).
//!
//! What S3 would refuse anyway is refused here, before a URL is handed out: keys longer than
//! 1024 bytes, empty, `.` or `..` segments, control characters, user metadata over 2 KB. So is
//! what would reach the rows and every screen that shows them as a lie: control characters and
//! bidirectional overrides in the key, the uploader's name and email, and invisible characters in
//! the email. A refusal is [`PresignError::Invalid`], which the command exits with as 2.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::presigning::PresigningConfig;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;

use crate::cli::PresignArgs;
use crate::process::metadata;
use crate::{aws, config};

/// The header that makes S3 verify the body's SHA-256 (base64 of the 32-byte digest).
pub(crate) const CHECKSUM_SHA256: &str = "x-amz-checksum-sha256";

/// S3's limit on user metadata: the `x-amz-meta-*` header names and values, summed in bytes.
pub(crate) const MAX_USER_METADATA_BYTES: usize = 2048;

/// S3's limit on an object key, in bytes of UTF-8.
pub(crate) const MAX_KEY_BYTES: usize = 1024;

#[derive(Debug, Serialize)]
pub struct Presigned {
    pub url: String,
    pub(crate) method: String,
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PresignError {
    /// The request is refused: a flag out of range or a value S3 or the worker would refuse.
    /// The command exits 2, as for a refused configuration.
    #[error("{0}")]
    Invalid(String),
    /// Signing failed (no credentials, an SDK error): the command exits 1.
    #[error("could not presign: {0}")]
    Sdk(String),
}

impl PresignError {
    /// Whether the input was refused (exit 2) rather than the signing failing (exit 1).
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Invalid(_))
    }
}

fn invalid<T>(what: impl Into<String>) -> Result<T, PresignError> {
    Err(PresignError::Invalid(what.into()))
}

/// Refuses control characters (C0, DEL, C1), line and paragraph separators and bidirectional
/// overrides. S3 keys and metadata may hold them, but they break XML listings, logs and
/// notifications, a `\r\n` in a stored name splits the lines of every report that prints it,
/// and an override shows text reversed ("invoice\u{202E}fdp.exe" reads "invoiceexe.pdf"), so a
/// row could show a name or a file other than the one stored. No name needs them.
fn no_controls(flag: &str, value: &str) -> Result<(), PresignError> {
    if let Some(c) = value.chars().find(|&c| c.is_control() || is_line_break(c)) {
        return invalid(format!(
            "{flag} must not contain control characters (found U+{:04X})",
            u32::from(c)
        ));
    }
    match value.chars().find(|&c| is_bidi_override(c)) {
        Some(c) => invalid(format!(
            "{flag} must not contain bidirectional override or isolate characters (found U+{:04X})",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

/// U+2028 LINE SEPARATOR and U+2029 PARAGRAPH SEPARATOR: not `Cc`, but line breaks all the same
/// to JSON readers, editors and log viewers.
fn is_line_break(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}')
}

/// The embeddings, overrides and isolates (LRE, RLE, PDF, LRO, RLO; LRI, RLI, FSI, PDI) that
/// reorder the text around them ("Trojan Source"). The marks LRM, RLM and ALM are not among them:
/// they reorder nothing, only give a neutral character a direction, and right-to-left names use
/// them.
pub(crate) fn is_bidi_override(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters that show as nothing: zero-width space, non-joiner and joiner, the direction marks,
/// word joiner and invisible operators, the byte-order mark, the soft hyphen. Two email addresses
/// that differ only by them look the same; no address needs them. (A name may: Persian writes
/// with the zero-width non-joiner, Arabic and Hebrew with the marks.)
pub(crate) fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}' | '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}'
    )
}

/// The uploader's name and email, as they will be stored in `submitter_name` and
/// `submitter_email`: no control characters or overrides, and no invisible characters in the
/// email.
pub(crate) fn uploader(name: &str, email: &str) -> Result<(), PresignError> {
    no_controls("--uploader-name", name)?;
    no_controls("--uploader-email", email)?;
    match email.chars().find(|&c| is_invisible(c)) {
        Some(c) => invalid(format!(
            "--uploader-email must not contain invisible characters (found U+{:04X})",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

/// One key segment: non-empty, not `.` or `..` (S3 refuses keys made of those, and URL clients
/// would normalise them away), no `/`.
fn segment(flag: &str, value: &str) -> Result<(), PresignError> {
    no_controls(flag, value)?;
    if value.is_empty() || value.contains('/') {
        return invalid(format!("{flag} must be non-empty and contain no '/'"));
    }
    if value == "." || value == ".." {
        return invalid(format!("{flag} must not be '.' or '..'"));
    }
    Ok(())
}

/// `<datapack>/<path…>/<file>`, refusing what the worker could not split back and what S3 refuses.
pub(crate) fn object_key(datapack: &str, path: &str, file: &str) -> Result<String, PresignError> {
    segment("--datapack", datapack)?;
    segment("--file", file)?;
    no_controls("--path", path)?;
    let path = path.trim_matches('/');
    let key = if path.is_empty() {
        format!("{datapack}/{file}")
    } else {
        for part in path.split('/') {
            if part.is_empty() {
                return invalid("--path must not contain an empty segment ('//')");
            }
            if part == "." || part == ".." {
                return invalid("--path must not contain a '.' or '..' segment");
            }
        }
        format!("{datapack}/{path}/{file}")
    };
    if key.len() > MAX_KEY_BYTES {
        return invalid(format!(
            "the object key is {} bytes; S3 allows at most {MAX_KEY_BYTES}",
            key.len()
        ));
    }
    Ok(key)
}

/// `--sha256` (64 hex digits, either case) → the base64 value of `x-amz-checksum-sha256`.
pub(crate) fn checksum_sha256(hex: &str) -> Result<String, PresignError> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return invalid("--sha256 must be exactly 64 hexadecimal digits (a SHA-256 digest)");
    }
    let digest: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|_| PresignError::Invalid("--sha256 is not hexadecimal".into()))?;
    Ok(STANDARD.encode(digest))
}

/// The user metadata an upload carries, as `(name without "x-amz-meta-", header value)`.
pub(crate) fn user_metadata(name: &str, email: &str) -> Vec<(&'static str, String)> {
    vec![
        (metadata::UPLOADED_BY, metadata::PRESIGNED_URL.to_owned()),
        (metadata::UPLOADER_NAME, metadata::encode(name)),
        (metadata::UPLOADER_EMAIL, metadata::encode(email)),
    ]
}

/// Refuses metadata S3 would refuse: over 2 KB counting the whole `x-amz-meta-*` header names and
/// their values as sent (the stricter reading of S3's rule, so no URL handed out fails on it).
pub(crate) fn check_metadata_size(entries: &[(&str, String)]) -> Result<(), PresignError> {
    let total: usize = entries
        .iter()
        .map(|(name, value)| "x-amz-meta-".len() + name.len() + value.len())
        .sum();
    if total > MAX_USER_METADATA_BYTES {
        return invalid(format!(
            "the upload metadata is {total} bytes (header names and values, non-ASCII values \
             encoded); S3 allows at most {MAX_USER_METADATA_BYTES}: shorten --uploader-name or \
             --uploader-email"
        ));
    }
    Ok(())
}

pub(crate) fn guess_content_type(file: &str) -> &'static str {
    let ext = file
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "csv" => "text/csv",
        "txt" | "log" => "text/plain",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "parquet" => "application/vnd.apache.parquet",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        _ => "application/octet-stream",
    }
}

/// The `presign` command: signs with the AWS chain's credentials and prints the URL and the
/// headers, as text or, with `--json`, as `{"url", "method", "headers"}`.
pub async fn execute(args: PresignArgs) -> anyhow::Result<()> {
    let bucket = args.bucket()?;
    let s3 = aws::s3(&aws::load(&config::aws_from_env()).await);
    let signed = presign(&s3, &bucket, &args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&signed)?);
    } else {
        println!("{} {}", signed.method, signed.url);
        for (name, value) in &signed.headers {
            println!("{name}: {value}");
        }
    }
    Ok(())
}

/// A URL valid for `args.expires_secs` from now.
pub async fn presign(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    args: &PresignArgs,
) -> Result<Presigned, PresignError> {
    presign_at(s3, bucket, args, SystemTime::now()).await
}

/// A URL valid from `start` for `args.expires_secs` (a start in the past makes an expired URL,
/// for tests).
pub async fn presign_at(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    args: &PresignArgs,
    start: SystemTime,
) -> Result<Presigned, PresignError> {
    let (least, most) = crate::config::range_of("--expires-secs");
    if !(least..=most).contains(&args.expires_secs) {
        return invalid(format!(
            "--expires-secs must be between {least} and {most} (7 days)"
        ));
    }
    let upload = Upload::of(args)?;
    let config = PresigningConfig::builder()
        .start_time(start)
        .expires_in(Duration::from_secs(args.expires_secs))
        .build()
        .map_err(|e| PresignError::Invalid(e.to_string()))?;
    let mut request = s3
        .put_object()
        .bucket(bucket)
        .key(&upload.key)
        .content_type(&upload.content_type);
    for (name, value) in upload.metadata {
        request = request.metadata(name, value);
    }
    let mut request = request.customize();
    if let Some(checksum) = upload.checksum.clone() {
        // The SDK's presigner has dropped a `checksum_sha256` set on the builder
        // (awslabs/aws-sdk-rust#1103). Put on the request just before signing, the header is
        // signed like every other one, whatever the SDK does with the builder field; the check
        // below refuses a URL whose signature would not cover it.
        request = request.mutate_request(move |http| {
            http.headers_mut().insert(CHECKSUM_SHA256, checksum.clone());
        });
    }
    let request = request
        .presigned(config)
        .await
        .map_err(|e| PresignError::Sdk(crate::disposition::chain(&e)))?;
    let presigned = Presigned {
        url: request.uri().to_owned(),
        method: request.method().to_owned(),
        headers: request
            .headers()
            .filter(|(name, _)| !name.eq_ignore_ascii_case("host"))
            .map(|(name, value)| (canonical(name), value.to_owned()))
            .collect(),
    };
    presigned.check_signed(upload.checksum.as_deref())?;
    Ok(presigned)
}

/// What the browser will upload, checked as S3 would check it.
struct Upload {
    key: String,
    content_type: String,
    /// `x-amz-checksum-sha256`: base64 of the digest.
    checksum: Option<String>,
    metadata: Vec<(&'static str, String)>,
}

impl Upload {
    fn of(args: &PresignArgs) -> Result<Self, PresignError> {
        let key = object_key(&args.datapack, &args.path, &args.file)?;
        let content_type = args
            .content_type
            .clone()
            .unwrap_or_else(|| guess_content_type(&args.file).to_owned());
        if content_type.is_empty() || !content_type.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return invalid("--content-type must be non-empty printable ASCII");
        }
        let checksum = args.sha256.as_deref().map(checksum_sha256).transpose()?;
        uploader(&args.uploader_name, &args.uploader_email)?;
        let metadata = user_metadata(&args.uploader_name, &args.uploader_email);
        check_metadata_size(&metadata)?;
        Ok(Self {
            key,
            content_type,
            checksum,
            metadata,
        })
    }
}

impl Presigned {
    /// The whole point of the URL: a browser that sends other headers is refused. Never hand
    /// out one whose signature does not cover every header it tells the browser to send.
    fn check_signed(&self, checksum: Option<&str>) -> Result<(), PresignError> {
        if let Some(checksum) = checksum
            && self.headers.get(CHECKSUM_SHA256).map(String::as_str) != Some(checksum)
        {
            return Err(PresignError::Sdk(format!(
                "the presigned request lost its {CHECKSUM_SHA256} header"
            )));
        }
        let signed = signed_headers(&self.url).ok_or_else(|| {
            PresignError::Sdk("the presigned URL has no X-Amz-SignedHeaders".into())
        })?;
        match self
            .headers
            .keys()
            .find(|name| !signed.contains(&name.to_ascii_lowercase()))
        {
            Some(unsigned) => Err(PresignError::Sdk(format!(
                "the signature does not cover the header {unsigned}"
            ))),
            None => Ok(()),
        }
    }
}

/// The header names a presigned URL's signature covers (`X-Amz-SignedHeaders`, lower case).
pub fn signed_headers(url: &str) -> Option<Vec<String>> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.eq_ignore_ascii_case("X-Amz-SignedHeaders").then(|| {
            percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .split(';')
                .map(str::to_ascii_lowercase)
                .collect()
        })
    })
}

/// `content-type` → `Content-Type`; `x-amz-*` stay lower-case as S3 documents them.
fn canonical(name: &str) -> String {
    if name.eq_ignore_ascii_case("content-type") {
        "Content-Type".into()
    } else {
        name.to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_keys_the_worker_splits_back() {
        for (path, want) in [
            ("/", "dp/f.csv"),
            ("", "dp/f.csv"),
            ("raw data/2024", "dp/raw data/2024/f.csv"),
            ("/a/b/", "dp/a/b/f.csv"),
            ("ảnh/tài liệu", "dp/ảnh/tài liệu/f.csv"),
        ] {
            let key = object_key("dp", path, "f.csv").unwrap();
            assert_eq!(key, want);
            let split = crate::process::key::split(&key).unwrap();
            assert_eq!(split.path, format!("/{}", path.trim_matches('/')));
        }
        assert!(object_key("", "/", "f").is_err());
        assert!(object_key("a/b", "/", "f").is_err());
        assert!(object_key("dp", "/", "").is_err());
    }

    #[test]
    fn refuses_segments_s3_or_the_worker_would_refuse() {
        for (datapack, path, file) in [
            ("dp", "a//b", "f"),
            ("dp", "a/./b", "f"),
            ("dp", "a/../b", "f"),
            ("dp", "..", "f"),
            ("dp", "/./", "f"),
            (".", "/", "f"),
            ("..", "/", "f"),
            ("dp", "/", "."),
            ("dp", "/", ".."),
        ] {
            let err = object_key(datapack, path, file).unwrap_err().to_string();
            assert!(
                err.contains("segment") || err.contains("'.' or '..'"),
                "{datapack:?} {path:?} {file:?}: {err}"
            );
        }
        // Dots inside a name are ordinary.
        assert!(object_key("dp", "v1.2/..hidden", "...csv").is_ok());
    }

    #[test]
    fn refuses_control_characters() {
        for (datapack, path, file) in [
            ("d\np", "/", "f"),
            ("dp", "a\tb", "f"),
            ("dp", "/", "f\0.csv"),
            ("dp", "/", "f\u{7f}"),
            ("dp", "/", "f\u{85}"),
        ] {
            let err = object_key(datapack, path, file).unwrap_err().to_string();
            assert!(err.contains("control characters"), "{err}");
        }
    }

    #[test]
    fn refuses_bidi_overrides_and_line_separators_in_keys() {
        for (datapack, path, file) in [
            ("dp", "/", "invoice\u{202E}fdp.exe"),
            ("dp\u{2066}", "/", "f"),
            ("dp", "a\u{2069}b", "f"),
        ] {
            let err = object_key(datapack, path, file).unwrap_err().to_string();
            assert!(err.contains("bidirectional"), "{err}");
        }
        let err = object_key("dp", "a\u{2028}b", "f").unwrap_err().to_string();
        assert!(err.contains("control characters (found U+2028)"), "{err}");
        // Right-to-left text and its marks are ordinary.
        assert!(object_key("dp", "/", "\u{05E9}\u{05DC}\u{05D5}\u{05DD}\u{200F}.csv").is_ok());
    }

    #[test]
    fn refuses_control_characters_and_overrides_in_the_uploader() {
        for (name, email, flag, found) in [
            (
                "A\r\nB",
                "a@example.com",
                "--uploader-name",
                "control characters (found U+000D)",
            ),
            (
                "A\tB",
                "a@example.com",
                "--uploader-name",
                "control characters (found U+0009)",
            ),
            (
                "A\u{7f}",
                "a@example.com",
                "--uploader-name",
                "control characters (found U+007F)",
            ),
            (
                "A\u{85}",
                "a@example.com",
                "--uploader-name",
                "control characters (found U+0085)",
            ),
            (
                "A\u{9b}",
                "a@example.com",
                "--uploader-name",
                "control characters (found U+009B)",
            ),
            (
                "A\u{2029}",
                "a@example.com",
                "--uploader-name",
                "control characters (found U+2029)",
            ),
            (
                "A",
                "a@example.com\r\nBcc: b",
                "--uploader-email",
                "control characters",
            ),
            (
                "A",
                "a\0@example.com",
                "--uploader-email",
                "control characters (found U+0000)",
            ),
            (
                "\u{202E}nimda",
                "a@example.com",
                "--uploader-name",
                "bidirectional override",
            ),
            (
                "A\u{2067}B\u{2069}",
                "a@example.com",
                "--uploader-name",
                "bidirectional override",
            ),
            (
                "A",
                "moc.elpmaxe@\u{202E}a",
                "--uploader-email",
                "bidirectional override",
            ),
            (
                "A",
                "a\u{200B}@example.com",
                "--uploader-email",
                "invisible characters (found U+200B)",
            ),
            (
                "A",
                "a@example.com\u{200F}",
                "--uploader-email",
                "invisible characters (found U+200F)",
            ),
            (
                "A",
                "\u{FEFF}a@example.com",
                "--uploader-email",
                "invisible characters (found U+FEFF)",
            ),
        ] {
            let err = uploader(name, email).unwrap_err();
            assert!(err.is_refusal(), "{name:?} {email:?}");
            let err = err.to_string();
            assert!(
                err.starts_with(flag) && err.contains(found),
                "{name:?} {email:?}: {err}"
            );
        }
        // What people are called: accents, CJK, right-to-left with its marks, Persian's
        // zero-width non-joiner, an emoji made with joiners.
        for name in [
            "Nguyễn Văn A",
            "山田 太郎",
            "\u{05D3}\u{05E0}\u{05D4} \u{05DB}\u{05D4}\u{05DF}\u{200F} (2)",
            "\u{0645}\u{06CC}\u{200C}\u{0631}\u{0648}\u{062F}",
            "Zoë \u{1F469}\u{200D}\u{1F4BB}",
        ] {
            uploader(name, "a@example.com").unwrap();
        }
    }

    #[tokio::test]
    async fn a_refused_uploader_gets_no_url() {
        let mut bad = args(None);
        bad.uploader_name = "Mallory\r\nx-amz-meta-uploaded-by: presigned-url".into();
        let err = presign(&client(), "bucket", &bad).await.unwrap_err();
        assert!(err.is_refusal(), "{err}");
        assert!(err.to_string().contains("--uploader-name"), "{err}");
    }

    #[test]
    fn refuses_keys_longer_than_s3_allows() {
        let file = "é".repeat(600); // 1200 bytes
        let err = object_key("dp", "/", &file).unwrap_err().to_string();
        assert!(err.contains("1024"), "{err}");
        assert!(object_key("dp", "/", &"x".repeat(MAX_KEY_BYTES - 3)).is_ok());
        assert!(object_key("dp", "/", &"x".repeat(MAX_KEY_BYTES - 2)).is_err());
    }

    #[test]
    fn checksum_is_base64_of_the_digest() {
        // SHA-256 of "abc".
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let want = "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=";
        assert_eq!(checksum_sha256(hex).unwrap(), want);
        assert_eq!(checksum_sha256(&hex.to_uppercase()).unwrap(), want);
        for bad in [
            "",
            &hex[..63],
            &format!("{hex}0"),
            &format!("{}g", &hex[..63]),
            want,
            "ünicode-ünicode-ünicode-ünicode-ünicode-ünicode-ünicode-ünicode",
        ] {
            let err = checksum_sha256(bad).unwrap_err().to_string();
            assert!(err.contains("64 hexadecimal digits"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn refuses_metadata_over_two_kilobytes() {
        let fits = user_metadata(&"a".repeat(1900), "a@example.com");
        check_metadata_size(&fits).unwrap();
        let err = check_metadata_size(&user_metadata(&"a".repeat(2000), "a@example.com"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("2048"), "{err}");
        // Non-ASCII travels base64-encoded: 400 × "ễ" is 1200 bytes of UTF-8, 1612 encoded;
        // 700 × is 2100 bytes, 2812 encoded.
        assert!(check_metadata_size(&user_metadata(&"ễ".repeat(400), "e")).is_ok());
        assert!(check_metadata_size(&user_metadata(&"ễ".repeat(700), "e")).is_err());
    }

    #[test]
    fn reads_the_signed_headers_of_a_url() {
        let url = "http://h/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-SignedHeaders=content-type%3Bhost%3Bx-amz-checksum-sha256&X-Amz-Signature=0";
        assert_eq!(
            signed_headers(url).unwrap(),
            ["content-type", "host", "x-amz-checksum-sha256"]
        );
        assert!(signed_headers("http://h/b/k").is_none());
    }

    fn args(sha256: Option<&str>) -> PresignArgs {
        PresignArgs {
            bucket: None,
            datapack: "dp-1".into(),
            path: "báo cáo/2024".into(),
            file: "báo cáo.csv".into(),
            uploader_name: "Nguyễn Văn A".into(),
            uploader_email: "a@example.com".into(),
            content_type: None,
            expires_secs: 900,
            json: true,
            sha256: sha256.map(str::to_owned),
        }
    }

    fn client() -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("eu-west-1"))
            .endpoint_url("http://127.0.0.1:9")
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "AKIDEXAMPLE",
                "secret",
                Some("session-token".into()),
                None,
                "tests",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    #[tokio::test]
    async fn the_checksum_header_is_signed() {
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let signed = presign(&client(), "bucket", &args(Some(hex)))
            .await
            .unwrap();
        assert_eq!(
            signed.headers.get(CHECKSUM_SHA256).map(String::as_str),
            Some("ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=")
        );
        let names = signed_headers(&signed.url).unwrap();
        assert!(names.contains(&CHECKSUM_SHA256.to_owned()), "{names:?}");
        for header in signed.headers.keys() {
            assert!(names.contains(&header.to_ascii_lowercase()), "{header}");
        }
        // Not hoisted into the query string, where the browser's header would go unchecked.
        assert!(
            !signed
                .url
                .to_ascii_lowercase()
                .contains("x-amz-checksum-sha256=")
        );
        // The session token rides in the query, signed.
        assert!(signed.url.contains("X-Amz-Security-Token=session-token"));
    }

    #[tokio::test]
    async fn without_a_checksum_nothing_changes() {
        let signed = presign(&client(), "bucket", &args(None)).await.unwrap();
        let names: Vec<&str> = signed.headers.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "Content-Type",
                "x-amz-meta-uploaded-by",
                "x-amz-meta-uploader-email",
                "x-amz-meta-uploader-name"
            ]
        );
        assert_eq!(
            signed_headers(&signed.url).unwrap(),
            [
                "content-type",
                "host",
                "x-amz-meta-uploaded-by",
                "x-amz-meta-uploader-email",
                "x-amz-meta-uploader-name"
            ]
        );
        assert_eq!(signed.method, "PUT");
    }

    #[tokio::test]
    async fn a_start_in_the_past_signs_that_date() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let signed = presign_at(&client(), "bucket", &args(None), start)
            .await
            .unwrap();
        assert!(
            signed.url.contains("X-Amz-Date=20231114T221320Z"),
            "{}",
            signed.url
        );
    }
}
