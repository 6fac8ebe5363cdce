//! Fuzz target: a queue message body, as SQS delivers it, through everything the worker does
//! with it before any network call.
//!
//! `event::parse` must give events, a test event or a reason for every body; for each object
//! event the worker then splits the key, compares sequencers (against every other record, as the
//! store orders events of one key, and against itself padded with zeros) and unquotes the ETag.
//! None of it may panic, and the sequencer order must be an order (reflexive, antisymmetric).

#![no_main]

use std::cmp::Ordering;

use datapack_worker::process::event::{self, Item, Message};
use datapack_worker::process::key;
use datapack_worker::store::write::sequencer_cmp;
use libfuzzer_sys::fuzz_target;

/// Zeros appended to a sequencer to compare it with a long one: a stored sequencer may be as
/// long as a message allows (256 KiB), far past 64 Ki characters.
const PADDING: usize = 70_000;

fuzz_target!(|data: &[u8]| {
    // SQS bodies are Unicode text: bytes that are not UTF-8 never reach the parser.
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(Message::Events(items)) = event::parse(body) else {
        return;
    };
    let events: Vec<_> = items
        .iter()
        .filter_map(|item| match item {
            Item::Object(e) => Some(e),
            Item::Unsupported { .. } => None,
        })
        .collect();
    for e in &events {
        let _ = key::split(&e.key);
        if let Some(etag) = &e.etag {
            let bare = event::unquote_etag(etag);
            assert!(
                !bare.starts_with('"') && !bare.ends_with('"'),
                "unquoted ETag {bare:?} still carries a quote"
            );
        }
        if let Some(s) = &e.sequencer {
            assert_eq!(sequencer_cmp(s, s), Ordering::Equal, "{s:?} vs itself");
            // AWS's rule pads the shorter with zeros on the right, so trailing zeros never
            // change the order, however long the other sequencer is.
            let padded = format!("{s}{}", "0".repeat(PADDING));
            assert_eq!(
                sequencer_cmp(s, &padded),
                Ordering::Equal,
                "{s:?} vs itself with {PADDING} trailing zeros"
            );
        }
    }
    for a in events.iter().filter_map(|e| e.sequencer.as_deref()) {
        for b in events.iter().filter_map(|e| e.sequencer.as_deref()) {
            assert_eq!(
                sequencer_cmp(a, b),
                sequencer_cmp(b, a).reverse(),
                "{a:?} vs {b:?} is not antisymmetric"
            );
        }
    }
});
