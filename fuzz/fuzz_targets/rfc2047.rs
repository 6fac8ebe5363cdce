//! Fuzz target: RFC 2047 metadata values (`x-amz-meta-uploader-name` and friends).
//!
//! `metadata::decode` reads whatever a client put in a header and must never panic. What
//! `metadata::encode` writes must be ASCII (it travels in an HTTP header) and must decode to
//! exactly the text the user typed.

#![no_main]

use datapack_worker::metadata;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = metadata::decode(text);
    let encoded = metadata::encode(text);
    assert!(
        encoded.is_ascii(),
        "encode({text:?}) = {encoded:?} is not ASCII"
    );
    assert_eq!(
        metadata::decode(&encoded),
        text,
        "round trip through {encoded:?}"
    );
});
