//! Upload metadata: the presigned-upload marker and the uploader's name and email.
//!
//! S3 user metadata travels in HTTP headers, which carry ASCII only. A name typed as
//! "Nguyễn Văn A" is therefore sent as an RFC 2047 encoded word (`=?UTF-8?B?…?=`), the form S3
//! itself uses when it returns non-ASCII metadata; `presign` encodes it and the worker decodes
//! it, so the row holds exactly what the user typed.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

pub(crate) const UPLOADED_BY: &str = "uploaded-by";
pub(crate) const UPLOADER_NAME: &str = "uploader-name";
pub(crate) const UPLOADER_EMAIL: &str = "uploader-email";
pub(crate) const PRESIGNED_URL: &str = "presigned-url";

/// Encodes a value for an `x-amz-meta-*` header: ASCII as is, anything else as one encoded word.
pub fn encode(value: &str) -> String {
    let plain = value.bytes().all(|b| (0x20..0x7f).contains(&b)) && !value.contains("=?");
    if plain {
        value.to_owned()
    } else {
        format!("=?UTF-8?B?{}?=", STANDARD.encode(value))
    }
}

/// Decodes RFC 2047 encoded words (B and Q, UTF-8 or ASCII charsets); other text is kept as is.
/// Whitespace between two adjacent encoded words is dropped, as the RFC says.
pub fn decode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    let mut last_was_word = false;
    while let Some(start) = rest.find("=?") {
        let (before, candidate) = rest.split_at(start);
        match decode_word(candidate) {
            Some((text, used)) => {
                if !(last_was_word && before.trim().is_empty()) {
                    out.push_str(before);
                }
                out.push_str(&text);
                rest = &candidate[used..];
                last_was_word = true;
            }
            None => {
                out.push_str(before);
                out.push_str("=?");
                rest = &candidate[2..];
                last_was_word = false;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Decodes one `=?charset?enc?text?=` at the start of `s`; returns the text and bytes consumed.
fn decode_word(s: &str) -> Option<(String, usize)> {
    let body = s.strip_prefix("=?")?;
    let (charset, body) = body.split_once('?')?;
    let (encoding, body) = body.split_once('?')?;
    let end = body.find("?=")?;
    let text = &body[..end];
    // RFC 2231 lets a language tag follow the charset (`UTF-8*en`): it counts towards the bytes
    // consumed, not towards the charset's name.
    let used = 2 + charset.len() + 1 + encoding.len() + 1 + end + 2;
    let charset = charset.split('*').next()?.to_ascii_lowercase();
    if !matches!(charset.as_str(), "utf-8" | "us-ascii") {
        return None;
    }
    let bytes = match encoding {
        "B" | "b" => STANDARD.decode(text).ok()?,
        "Q" | "q" => decode_q(text)?,
        _ => return None,
    };
    String::from_utf8(bytes).ok().map(|t| (t, used))
}

fn decode_q(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'_' => out.push(b' '),
            b'=' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            other => out.push(other),
        }
    }
    Some(out)
}

/// The metadata that decides whether and how an upload is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploader {
    pub(crate) uploaded_by: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) email: Option<String>,
}

impl Uploader {
    /// Reads from the SDK's metadata map, whose keys are lower-case without `x-amz-meta-`.
    pub(crate) fn from_metadata(metadata: Option<&HashMap<String, String>>) -> Self {
        let get = |k: &str| {
            metadata
                .and_then(|m| m.iter().find(|(key, _)| key.eq_ignore_ascii_case(k)))
                .map(|(_, v)| decode(v).replace('\0', ""))
        };
        Self {
            uploaded_by: get(UPLOADED_BY),
            name: get(UPLOADER_NAME),
            email: get(UPLOADER_EMAIL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_what_users_type() {
        for name in [
            "Nguyễn Văn A",
            "山田 太郎",
            "Plain Name",
            "a=?b",
            "Zoë <zoe@example.com>",
        ] {
            let encoded = encode(name);
            assert!(encoded.is_ascii(), "{encoded}");
            assert_eq!(decode(&encoded), name);
        }
        assert_eq!(encode("Plain Name"), "Plain Name");
    }

    #[test]
    fn decodes_q_words_and_joins_adjacent_words() {
        assert_eq!(decode("=?utf-8?Q?Nguy=E1=BB=85n_V=C4=83n?="), "Nguyễn Văn");
        assert_eq!(
            decode("=?UTF-8?B?Tmd1eeG7hW4=?= =?UTF-8?B?IFbEg24=?="),
            "Nguyễn Văn"
        );
        assert_eq!(decode("a =?UTF-8?B?w6k=?= b"), "a é b");
    }

    #[test]
    fn a_language_tag_after_the_charset_is_consumed_with_the_word() {
        assert_eq!(decode("=?UTF-8*en?B?w6k=?="), "é");
        assert_eq!(decode("a =?utf-8*vi?Q?=C3=A9?= b"), "a é b");
    }

    #[test]
    fn keeps_text_that_is_not_an_encoded_word() {
        assert_eq!(decode("=?broken"), "=?broken");
        assert_eq!(decode("=?latin9?B?AAAA?="), "=?latin9?B?AAAA?=");
        assert_eq!(decode("x=?UTF-8?B?***?="), "x=?UTF-8?B?***?=");
    }
}
