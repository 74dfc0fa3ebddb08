//! The frame path of an upgraded server connection: a valid upgrade
//! request, then any bytes as frames.
#![no_main]

use libfuzzer_sys::fuzz_target;

use unixws::fuzzing::UPGRADE;

fuzz_target!(|data: &[u8]| {
    let output = unixws::fuzzing::serve_bytes(UPGRADE, data);
    assert!(output.starts_with(b"HTTP/1.1 101"), "a valid upgrade was refused");
});
