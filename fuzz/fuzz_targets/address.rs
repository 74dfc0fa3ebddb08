//! The address parser: never panics, and what parses displays as text that
//! parses back to the same address.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(addr) = text.parse::<unixws::Address>() {
            let again: unixws::Address = addr.to_string().parse().expect("display re-parses");
            assert_eq!(again, addr);
        }
    }
});
