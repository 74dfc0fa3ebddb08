//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same entry points as the cargo-fuzz targets, so a regression on any
//! input the fuzzers found interesting shows up in a plain `cargo test`.

use std::path::PathBuf;

use unixws::fuzzing::serve_bytes as serve_bytes_for_fuzzing;

use unixws::fuzzing::UPGRADE;

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
    let inputs = corpus("address");
    let mut parsed = 0;
    for (path, input) in &inputs {
        if let Ok(text) = std::str::from_utf8(input) {
            if let Ok(addr) = text.parse::<unixws::Address>() {
                parsed += 1;
                let again: unixws::Address = addr
                    .to_string()
                    .parse()
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_eq!(again, addr, "{}", path.display());
            }
        }
    }
    // The corpus holds the seeds (every address form) and what the fuzzer
    // kept; a parser that refused everything would pass the loop above.
    assert!(
        parsed >= 20 && parsed * 10 >= inputs.len(),
        "only {parsed} of {} corpus addresses parse",
        inputs.len()
    );
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

/// Each input's answer: the upgrade, then whole unmasked frames with at
/// most one close, last; and when tungstenite (the reference) finds a
/// protocol, UTF-8 or size error in the input, that close carries its code.
#[test]
fn frames_corpus_gets_the_close_code_it_is_owed() {
    let mut owed_a_code = 0;
    for (path, input) in corpus("frames") {
        let shown = path.display();
        let output = serve_bytes_for_fuzzing(UPGRADE, &input);
        assert!(
            output.starts_with(b"HTTP/1.1 101"),
            "{shown}: upgrade refused"
        );
        let head_end = output
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(output.len(), |at| at + 4);
        let answer = &output[head_end..];
        let frames = unixws_testkit::split_frames(answer);
        let framed: usize = frames
            .iter()
            .map(|(_, p)| unixws::frame::encode(0x80, p, None).len())
            .sum();
        assert_eq!(framed, answer.len(), "{shown}: bytes after the frames");
        let closes = frames.iter().filter(|(first, _)| first & 0x0f == 8).count();
        assert!(closes <= 1, "{shown}: {closes} close frames");
        let last_close = frames
            .last()
            .filter(|(first, _)| first & 0x0f == 8)
            .map(|(_, payload)| payload);
        assert_eq!(
            closes,
            usize::from(last_close.is_some()),
            "{shown}: a frame after the close"
        );
        if let Some(code) = unixws::fuzzing::expected_close(&input) {
            owed_a_code += 1;
            let sent = last_close
                .filter(|p| p.len() >= 2)
                .map(|p| u16::from_be_bytes([p[0], p[1]]));
            assert_eq!(sent, Some(code), "{shown}: the close code owed");
        }
    }
    assert!(owed_a_code > 0, "the corpus has no broken input at all");
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

#[test]
fn inflate_corpus_holds_its_properties() {
    let inputs = corpus("inflate");
    for (path, input) in &inputs {
        unixws::fuzzing::inflate(input).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}
