//! When S3's stored checksum may stand for the object's SHA-256, so the bytes need not be read.
//!
//! S3 verifies `x-amz-checksum-sha256` at upload (a mismatch is refused with BadDigest) and
//! returns it on HeadObject with `ChecksumMode=ENABLED`. Only a checksum of the whole object is
//! its SHA-256: a multipart upload's is a checksum of the part checksums (type COMPOSITE, with a
//! `-N` part-count suffix). Emulators differ: moto returns no `ChecksumType` at all, and for a
//! multipart upload the composite value without its suffix (only the ETag ends in `-N`). So a
//! checksum counts only when its type is FULL_OBJECT, or when it has no type and neither the
//! ETag nor the checksum carries a part count. Whether S3 is trusted to have verified it at all is
//! configuration ([`Checksums::trusted`]): an S3-compatible store or emulator may store any value.

use base64::Engine as _;

use crate::process::body::hex;

/// Whether S3's stored SHA-256 may stand for the bytes, and how often to check it anyway.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Checksums {
    /// Record single-part uploads that carry a SHA-256 from HeadObject alone. Off: every object
    /// is read and hashed, and no HeadObject is sent.
    pub(crate) trusted: bool,
    /// The share (0.0–1.0) of trusted objects read and hashed anyway, to catch a store that does
    /// not verify what it stores.
    pub(crate) audit_ratio: f64,
}

impl Checksums {
    /// Whether this object, found trusted, is read and hashed anyway: a fresh draw per object.
    pub(crate) fn audit(&self) -> bool {
        self.audit_ratio > 0.0 && fastrand::f64() < self.audit_ratio
    }
}

/// Why a stored checksum does not stand for the object's SHA-256; the object is read instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Untrusted {
    /// No SHA-256 stored: none was sent at upload, or another algorithm was (CRC32, CRC64NVME).
    Absent,
    /// A checksum of part checksums (a multipart upload), not of the bytes.
    Composite,
    /// Not the base64 of a 32-byte digest.
    Malformed,
}

impl Untrusted {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Absent => "no_sha256",
            Self::Composite => "composite",
            Self::Malformed => "malformed",
        }
    }
}

/// The object's SHA-256 in lower-case hex (the `sha256` column's form), from what HeadObject
/// returned: `ChecksumSHA256` (base64), `ChecksumType`, and the object's ETag.
pub(crate) fn full_object_sha256(
    checksum_sha256: Option<&str>,
    checksum_type: Option<&str>,
    etag: Option<&str>,
) -> Result<String, Untrusted> {
    let checksum = checksum_sha256
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .ok_or(Untrusted::Absent)?;
    match checksum_type {
        Some(t) if t.eq_ignore_ascii_case("FULL_OBJECT") => {}
        Some(_) => return Err(Untrusted::Composite),
        None if has_part_count(checksum) || etag.is_some_and(has_part_count) => {
            return Err(Untrusted::Composite);
        }
        None => {}
    }
    let digest = base64::engine::general_purpose::STANDARD
        .decode(checksum)
        .map_err(|_| Untrusted::Malformed)?;
    if digest.len() != 32 {
        return Err(Untrusted::Malformed);
    }
    Ok(hex(&digest))
}

/// Whether a value ends in `-N`, the part count S3 appends to multipart ETags and composite
/// checksums (base64 has no `-`, so a checksum never ends so by chance).
fn has_part_count(value: &str) -> bool {
    value
        .trim()
        .trim_matches('"')
        .rsplit_once('-')
        .is_some_and(|(head, count)| {
            !head.is_empty() && !count.is_empty() && count.bytes().all(|b| b.is_ascii_digit())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-256 of "hello world" × 100, as base64 (what S3 returns) and hex (what rows store).
    const B64: &str = "aM0Hczs7l5JlEtS76bZgu1vv8GdVeYM6UubgWVV9V/Y=";
    const HEX: &str = "68cd07733b3b97926512d4bbe9b660bb5beff0675579833a52e6e059557d57f6";
    const ETAG: &str = "\"3f23fe8690d92e25000fc77ddb0d2f52\"";

    #[test]
    fn a_full_object_sha256_is_the_digest_in_hex() {
        assert_eq!(
            full_object_sha256(Some(B64), Some("FULL_OBJECT"), Some(ETAG)),
            Ok(HEX.into())
        );
        // S3 sends the ETag quoted; events and rows carry it bare.
        assert_eq!(
            full_object_sha256(Some(B64), Some("FULL_OBJECT"), Some(&ETAG[1..33])),
            Ok(HEX.into())
        );
    }

    #[test]
    fn without_a_type_only_a_single_part_upload_counts() {
        // moto: no ChecksumType on HEAD.
        assert_eq!(
            full_object_sha256(Some(B64), None, Some(ETAG)),
            Ok(HEX.into())
        );
        assert_eq!(full_object_sha256(Some(B64), None, None), Ok(HEX.into()));
        // moto's multipart: the composite value without its suffix, the ETag with it.
        assert_eq!(
            full_object_sha256(
                Some(B64),
                None,
                Some("\"0c62823571cff39c8dddcc6a74e2569f-2\"")
            ),
            Err(Untrusted::Composite)
        );
        assert_eq!(
            full_object_sha256(Some(B64), None, Some("0c62823571cff39c8dddcc6a74e2569f-12")),
            Err(Untrusted::Composite)
        );
        // S3's composite form: the suffix on the checksum.
        assert_eq!(
            full_object_sha256(Some(&format!("{B64}-3")), None, Some(ETAG)),
            Err(Untrusted::Composite)
        );
    }

    #[test]
    fn a_composite_type_never_counts() {
        assert_eq!(
            full_object_sha256(Some(B64), Some("COMPOSITE"), Some(ETAG)),
            Err(Untrusted::Composite)
        );
        assert_eq!(
            full_object_sha256(Some(&format!("{B64}-2")), Some("COMPOSITE"), None),
            Err(Untrusted::Composite)
        );
        // A type this code does not know is not FULL_OBJECT.
        assert_eq!(
            full_object_sha256(Some(B64), Some("SOMETHING_NEW"), Some(ETAG)),
            Err(Untrusted::Composite)
        );
    }

    #[test]
    fn a_full_object_type_wins_over_a_multipart_etag() {
        assert_eq!(
            full_object_sha256(Some(B64), Some("FULL_OBJECT"), Some("\"abc-2\"")),
            Ok(HEX.into())
        );
    }

    #[test]
    fn no_checksum_or_another_algorithm_is_absent() {
        assert_eq!(
            full_object_sha256(None, Some("FULL_OBJECT"), Some(ETAG)),
            Err(Untrusted::Absent)
        );
        assert_eq!(
            full_object_sha256(Some(" "), None, None),
            Err(Untrusted::Absent)
        );
    }

    #[test]
    fn anything_but_32_bytes_of_base64_is_refused() {
        for bad in [
            // A CRC32 (4 bytes) where a SHA-256 belongs: never taken for one.
            "VARHDQ==",
            // SHA-1 (20 bytes).
            "Kq5sNclPz7QV2+lfQIuc6R7oRu0=",
            // 33 bytes.
            "aM0Hczs7l5JlEtS76bZgu1vv8GdVeYM6UubgWVV9V/YA",
            // Hex, not base64.
            HEX,
            "not base64!",
        ] {
            assert_eq!(
                full_object_sha256(Some(bad), Some("FULL_OBJECT"), Some(ETAG)),
                Err(Untrusted::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn part_counts_are_digits_after_a_dash() {
        assert!(has_part_count("\"abc-2\""));
        assert!(has_part_count("abc-10000"));
        assert!(!has_part_count("abc-"));
        assert!(!has_part_count("-2"));
        assert!(!has_part_count("abc-2x"));
        assert!(!has_part_count("3f23fe8690d92e25000fc77ddb0d2f52"));
        assert!(!has_part_count(B64));
    }

    #[test]
    fn audit_ratio_zero_never_and_one_always() {
        let never = Checksums {
            trusted: true,
            audit_ratio: 0.0,
        };
        let always = Checksums {
            trusted: true,
            audit_ratio: 1.0,
        };
        assert!((0..1000).all(|_| !never.audit() && always.audit()));
    }
}
