//! The server's connection path from the first byte: any bytes in, an
//! answer (or a closed connection) out, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = unixws::fuzzing::serve_bytes(data, b"");
});
