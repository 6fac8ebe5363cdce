//! What every GET of an object shares, whole or in parts: reading the next chunk of a body (a
//! broken body typed by its cause), feeding the hash, how a GET's error ends a read, and the hex
//! form of a digest.
//!
//! Both [`crate::process::fetch`] (the first GET) and [`crate::process::ranged`] (the part GETs)
//! build on these, so neither needs the other's internals.

use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::primitives::ByteStream;
use sha2::{Digest, Sha256};
use tokio_util::bytes::Bytes;

use crate::aws;
use crate::disposition::{Dependency, Failure, RetryReason};

/// Why a read stopped before the end: the object went away or changed (a GET answered 404 or
/// 412), or a failure.
pub(crate) enum Stop {
    Gone,
    Superseded,
    Failed(Failure),
}

impl From<Failure> for Stop {
    fn from(failure: Failure) -> Self {
        Stop::Failed(failure)
    }
}

/// A body that breaks mid-read (reset, stall, a checksum the SDK found wrong) is a fact about
/// this read of this object: the message is retried, and a probe decides whether S3 is down.
pub(crate) async fn next_chunk(body: &mut ByteStream) -> Result<Option<Bytes>, Failure> {
    body.try_next().await.map_err(|e| {
        let reason = if is_checksum_mismatch(&e) {
            RetryReason::S3ChecksumMismatch
        } else {
            RetryReason::S3ReadFailed
        };
        Failure::transient(reason, e)
    })
}

/// Whether the SDK's response-checksum check refused the body: its own error type, wherever it
/// sits in the chain (the byte stream wraps the body's error).
fn is_checksum_mismatch(error: &(dyn std::error::Error + 'static)) -> bool {
    use aws_smithy_checksums::body::validate::Error as Validation;
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(Validation::ChecksumMismatch { .. }) = e.downcast_ref::<Validation>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// One chunk into the hash and the running length.
pub(crate) fn feed(hasher: &mut Sha256, length: &mut u64, chunk: &[u8]) {
    hasher.update(chunk);
    *length += chunk.len() as u64;
    crate::ops::metrics::hashed_bytes(chunk.len());
}

/// A GET's error: 404 (a missing key or version, not a missing bucket) is gone, 412 superseded,
/// the rest fail as any S3 call's would.
pub(crate) fn classify_get(
    error: aws_sdk_s3::error::SdkError<GetObjectError, aws_smithy_runtime_api::http::Response>,
) -> Stop {
    if let aws_sdk_s3::error::SdkError::ServiceError(e) = &error
        && matches!(e.err(), GetObjectError::NoSuchKey(_))
    {
        return Stop::Gone;
    }
    let status = aws::status(&error);
    let code = aws::code(&error).unwrap_or_default();
    match (status, code.as_str()) {
        (_, "NoSuchKey" | "NoSuchVersion") => Stop::Gone,
        (Some(404), c) if c != "NoSuchBucket" => Stop::Gone,
        (Some(412), _) | (_, "PreconditionFailed") => Stop::Superseded,
        _ => Stop::Failed(aws::classify(Dependency::S3, error)),
    }
}

/// Lower-case hex, the form the `sha256` column stores.
pub fn hex(bytes: &[u8]) -> String {
    // A table, not `write!("{b:02x}")` per byte: the formatting machinery 32 times per object.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        // Both indexes are below 16 by construction.
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// A finished hash in hex.
pub(crate) fn digest_hex(hasher: Sha256) -> String {
    hex(&hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_checksums::ChecksumAlgorithm;
    use aws_smithy_checksums::body::validate::ChecksumBody;
    use aws_smithy_types::body::SdkBody;

    /// A body behind the SDK's own response-checksum check (the wrapper GetObject puts around a
    /// body that came with a checksum header), expecting `expected` as CRC32.
    fn checked(bytes: &'static [u8], expected: [u8; 4]) -> ByteStream {
        let algorithm: ChecksumAlgorithm = "crc32".parse().expect("crc32 is an algorithm");
        ByteStream::new(SdkBody::from_body_1_x(ChecksumBody::new(
            SdkBody::from(bytes),
            algorithm.into_impl(),
            Bytes::copy_from_slice(&expected),
        )))
    }

    async fn read_all(mut body: ByteStream) -> Result<Vec<u8>, Failure> {
        let mut out = Vec::new();
        while let Some(chunk) = next_chunk(&mut body).await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_body_the_checksum_check_refuses_is_a_checksum_mismatch() {
        let failure = read_all(checked(b"hello", [0, 0, 0, 0]))
            .await
            .expect_err("a wrong CRC32 fails the read");
        assert!(
            matches!(
                failure,
                Failure::Transient {
                    reason: RetryReason::S3ChecksumMismatch,
                    ..
                }
            ),
            "{failure:?}"
        );
    }

    #[tokio::test]
    async fn a_body_the_checksum_check_accepts_reads_whole() {
        // CRC32 of "hello" (big-endian, as the header carries it).
        let read = read_all(checked(b"hello", 0x3610_a686u32.to_be_bytes())).await;
        assert_eq!(read.ok().as_deref(), Some(&b"hello"[..]));
    }

    #[test]
    fn other_errors_are_not_checksum_mismatches() {
        let io = std::io::Error::other("body checksum mismatch (only the words)");
        assert!(!is_checksum_mismatch(&io));
    }

    #[test]
    fn hex_is_two_lower_case_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
    }
}
