//! Fuzz target: RFC 2047 metadata values (`x-amz-meta-uploader-name` and friends).
//!
//! `metadata::decode` reads whatever a client put in a header and must never panic. What
//! `metadata::encode` writes must be ASCII (it travels in an HTTP header) and must decode to
//! exactly the text the user typed. An encoded word whose charset carries an RFC 2231 language
//! tag (`=?UTF-8*en?B?…?=`, which other clients send) must decode as the same word without it.

#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use datapack_worker::process::metadata;
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

    // The first line names a language tag (letters, digits and '-', as RFC 2231 allows), the
    // rest is the text of a word that carries it.
    let (tag, rest) = text.split_once('\n').unwrap_or(("en", text));
    let tag: String = tag
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(16)
        .collect();
    let tag = if tag.is_empty() { "en".to_owned() } else { tag };
    let word = STANDARD.encode(rest);
    let untagged = metadata::decode(&format!("=?UTF-8?B?{word}?="));
    if !rest.is_empty() {
        assert_eq!(untagged, rest, "encoded word {word:?}");
    }
    let tagged = format!("=?UTF-8*{tag}?B?{word}?=");
    assert_eq!(
        metadata::decode(&tagged),
        untagged,
        "language-tagged word {tagged:?}"
    );
});
