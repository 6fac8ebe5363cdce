//! Fuzz target: a raw (form-URL-encoded) object key from a notification, decoded and split into
//! datapack, path and file name, as the pipeline does before it fetches the object.
//!
//! Neither step may panic; a key that splits must rebuild the decoded key exactly (the object
//! key stays the identity of the row), and a NUL never reaches a row.

#![no_main]

use datapack_worker::process::{event, key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The raw key is a JSON string in the body, so it is always valid UTF-8.
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(decoded) = event::decode_key(raw) else {
        return;
    };
    if let Ok(place) = key::split(&decoded) {
        assert!(
            !place.datapack.is_empty(),
            "empty datapack from {decoded:?}"
        );
        for part in [&place.datapack, &place.path, &place.display] {
            assert!(!part.contains('\0'), "NUL in {part:?} from {decoded:?}");
        }
        let rebuilt = if place.path == "/" {
            // `dp//x` and `dp/x` both give path `/`: only the two shapes S3 allows.
            format!("{}/{}", place.datapack, place.display)
        } else {
            format!("{}{}/{}", place.datapack, place.path, place.display)
        };
        assert!(
            rebuilt == decoded || format!("{}//{}", place.datapack, place.display) == decoded,
            "{decoded:?} split into {place:?}"
        );
    }
});
