//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same entry points as the cargo-fuzz targets, so a regression on any
//! input the fuzzers found interesting shows up in a plain `cargo test`.

use std::path::PathBuf;

use unixws::fuzzing::serve_bytes as serve_bytes_for_fuzzing;

const UPGRADE: &[u8] = b"GET /fuzz HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = unixws_testkit::repo_root().join("fuzz/corpus").join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("no fuzz corpus at {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "the {target} corpus is empty");
    inputs
}

#[test]
fn address_corpus_parses_and_round_trips() {
    for (path, input) in corpus("address") {
        if let Ok(text) = std::str::from_utf8(&input) {
            if let Ok(addr) = text.parse::<unixws::Address>() {
                let again: unixws::Address = addr
                    .to_string()
                    .parse()
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_eq!(again, addr, "{}", path.display());
            }
        }
    }
}

#[test]
fn handshake_corpus_is_answered_without_panic() {
    let mut upgraded = 0;
    for (_, input) in corpus("handshake") {
        let output = serve_bytes_for_fuzzing(&input, b"");
        upgraded += usize::from(output.starts_with(b"HTTP/1.1 101"));
    }
    assert!(upgraded > 0, "not even the valid seed request was upgraded");
}

#[test]
fn frames_corpus_is_handled_after_a_valid_upgrade() {
    for (path, input) in corpus("frames") {
        let output = serve_bytes_for_fuzzing(UPGRADE, &input);
        assert!(
            output.starts_with(b"HTTP/1.1 101"),
            "{}: upgrade refused",
            path.display()
        );
    }
}

/// The differential target's corpus: unixws's codec and tungstenite agree
/// on every input (feature `fuzzing`, which `scripts/test` turns on).
#[cfg(feature = "fuzzing")]
#[test]
fn codec_corpus_decodes_the_same_as_tungstenite() {
    for (path, input) in corpus("codec") {
        if let Err(disagreement) = unixws::fuzzing::codec_vs_tungstenite(&input) {
            panic!("{}: {disagreement}", path.display());
        }
    }
}
