//! `cargo +nightly fuzz run normalize_path`: the router's path normalisation on arbitrary
//! strings. It must never panic; a normalised path is normal (normalising it again changes
//! nothing) and holds no dot segment and no encoded separator.
#![no_main]

use gateway_router::normalize_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    let Ok(normal) = normalize_path(raw) else { return };
    assert_eq!(normalize_path(&normal).as_deref(), Ok(&*normal), "idempotent");
    for segment in normal.split('/') {
        let segment = segment.split(';').next().unwrap_or_default();
        assert!(segment != "." && segment != "..", "dot segment left in {normal:?}");
    }
    let upper = normal.to_ascii_uppercase();
    assert!(!upper.contains("%2F") && !upper.contains("%5C") && !upper.contains("%00"), "{normal:?}");
    assert!(!upper.contains("%2E"), "an encoded dot survived: {normal:?}");
});
