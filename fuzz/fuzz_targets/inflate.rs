//! The permessage-deflate path: inflating a peer's bytes within the
//! limit, our own deflate round trip, and the decoder with compression
//! negotiated (see `unixws::fuzzing::inflate`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(finding) = unixws::fuzzing::inflate(data) {
        panic!("{finding}");
    }
});
