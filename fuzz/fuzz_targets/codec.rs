//! Differential: unixws's codec and tungstenite's frame engine over the
//! same bytes, split at the same fuzzer-chosen points; they must produce
//! the same messages and end with the same class of error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(disagreement) = unixws::fuzzing::codec_vs_tungstenite(data) {
        panic!("{disagreement}");
    }
});
