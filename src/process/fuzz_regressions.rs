//! Regression tests for the crashes the fuzz targets found (`fuzz/`, `scripts/fuzz.sh`).
//!
//! Each test replays a minimised crash input through the public function the fuzzer called and
//! asserts what must happen instead of the panic: no input may take a worker down.

use std::cmp::Ordering;

use crate::process::{event, metadata};

/// A notification for one upload whose sequencer is `sequencer`.
fn body_with_sequencer(sequencer: &str) -> String {
    serde_json::json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2024-05-01T10:00:00.000Z", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "uploads"},
               "object": {"key": "dp%2Fa.txt", "size": 1, "eTag": "e", "sequencer": sequencer}}
    }]})
    .to_string()
}

/// parse_message (any seed with a sequencer, compared with itself padded by 70,000 zeros): a
/// sequencer longer than 65,535 characters made `sequencer_cmp` panic
/// ("Formatting argument out of range": the padding width of `format!` is a `u16`), which killed
/// the writer task that ordered the row. The comparison must work for any length, and the
/// parser must drop a sequencer no S3 would send before it reaches the writer (the event is
/// then ordered by its time; it is not refused).
#[test]
fn sequencer_longer_than_a_format_width_does_not_panic() {
    let long = format!("0055{}1", "0".repeat(70_000));
    assert_eq!(
        crate::store::write::sequencer_cmp(&long, &long),
        Ordering::Equal
    );
    assert_eq!(
        crate::store::write::sequencer_cmp(&long, "0055"),
        Ordering::Greater
    );
    assert_eq!(
        crate::store::write::sequencer_cmp("0055", &long),
        Ordering::Less
    );
    assert_eq!(
        crate::store::write::sequencer_cmp(&long, "0056"),
        Ordering::Less
    );

    let parsed = event::parse_noting(&body_with_sequencer(&long)).unwrap();
    assert_eq!(
        parsed.unusable_sequencers,
        vec![event::SequencerProblem::TooLong]
    );
    match parsed.message {
        event::Message::Events(items) => match &items[..] {
            [event::Item::Object(e)] => assert_eq!(e.sequencer, None),
            other => panic!("not one object event: {other:?}"),
        },
        other => panic!("not events: {other:?}"),
    }
}

/// rfc2047: an encoded word whose charset carries an RFC 2231 language tag
/// (`=?UTF-8*en?…?=`) was consumed short by the tag's length, so the rest of the word leaked
/// into the value (`é=?=`), and when the cut fell inside a multi-byte character the slice
/// panicked ("byte index … is not a char boundary"). The tag names a language, not a charset:
/// the word decodes as without it.
#[test]
fn language_tag_in_an_encoded_word_does_not_panic() {
    // The minimised failure of the rfc2047 target: an empty word with a tag gave "??=".
    assert_eq!(
        metadata::decode("=?UTF-8*en?B??="),
        metadata::decode("=?UTF-8?B??=")
    );
    assert_eq!(metadata::decode("=?UTF-8*en?B?w6k=?="), "é");
    assert_eq!(
        metadata::decode("=?utf-8*en-US?Q?caf=C3=A9?= ok"),
        "café ok"
    );
    // The panic (replayed through the rfc2047 target): raw UTF-8 in Q text is not RFC 2047, so
    // the word may be decoded or kept as it is, but never cut inside a character.
    let crash = "=?utf-8*xx?Q?éé?=";
    let decoded = metadata::decode(crash);
    assert!(decoded == "éé" || decoded == crash, "{decoded:?}");
}
