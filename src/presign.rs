//! The application side of an upload: a presigned PUT URL and the headers that get it recorded.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use serde::Serialize;

use crate::cli::PresignArgs;
use crate::metadata;

#[derive(Debug, Serialize)]
pub struct Presigned {
    pub url: String,
    pub method: String,
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PresignError {
    #[error("{0}")]
    Invalid(String),
    #[error("could not presign: {0}")]
    Sdk(String),
}

/// `<datapack>/<path…>/<file>`, refusing what the worker could not split back.
pub fn object_key(datapack: &str, path: &str, file: &str) -> Result<String, PresignError> {
    let bad = |what: &str| Err(PresignError::Invalid(what.to_owned()));
    if datapack.is_empty() || datapack.contains('/') {
        return bad("--datapack must be non-empty and contain no '/'");
    }
    if file.is_empty() || file.contains('/') {
        return bad("--file must be non-empty and contain no '/'");
    }
    let path = path.trim_matches('/');
    Ok(if path.is_empty() {
        format!("{datapack}/{file}")
    } else {
        format!("{datapack}/{path}/{file}")
    })
}

pub fn guess_content_type(file: &str) -> &'static str {
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

pub async fn presign(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    args: &PresignArgs,
) -> Result<Presigned, PresignError> {
    if !(1..=604_800).contains(&args.expires_secs) {
        return Err(PresignError::Invalid(
            "--expires-secs must be between 1 and 604800 (7 days)".into(),
        ));
    }
    let key = object_key(&args.datapack, &args.path, &args.file)?;
    let content_type = args
        .content_type
        .clone()
        .unwrap_or_else(|| guess_content_type(&args.file).to_owned());
    let config = PresigningConfig::expires_in(Duration::from_secs(args.expires_secs))
        .map_err(|e| PresignError::Invalid(e.to_string()))?;
    let request = s3
        .put_object()
        .bucket(bucket)
        .key(&key)
        .content_type(&content_type)
        .metadata(metadata::UPLOADED_BY, metadata::PRESIGNED_URL)
        .metadata(
            metadata::UPLOADER_NAME,
            metadata::encode(&args.uploader_name),
        )
        .metadata(
            metadata::UPLOADER_EMAIL,
            metadata::encode(&args.uploader_email),
        )
        .presigned(config)
        .await
        .map_err(|e| PresignError::Sdk(crate::disposition::chain(&e)))?;
    let headers = request
        .headers()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("host"))
        .map(|(name, value)| (canonical(name), value.to_owned()))
        .collect();
    Ok(Presigned {
        url: request.uri().to_owned(),
        method: request.method().to_owned(),
        headers,
    })
}

/// `content-type` → `Content-Type`; `x-amz-meta-*` stay lower-case as S3 documents them.
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
            ("raw data/2024", "dp/raw data/2024/f.csv"),
            ("/a/b/", "dp/a/b/f.csv"),
        ] {
            let key = object_key("dp", path, "f.csv").unwrap();
            assert_eq!(key, want);
            let split = crate::key::split(&key).unwrap();
            assert_eq!(split.path, format!("/{}", path.trim_matches('/')));
        }
        assert!(object_key("", "/", "f").is_err());
        assert!(object_key("a/b", "/", "f").is_err());
        assert!(object_key("dp", "/", "").is_err());
    }
}
