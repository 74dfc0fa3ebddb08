//! `serve --broadcast` under uneven readers: one fast sender, four Python
//! `websockets` readers that each consume at a fraction of its pace, and
//! one reader that stalls (upgraded, then never reads). The live readers
//! get every message in order (the sender is held back instead), the
//! stalled one is closed with 1013 after the slow-consumer timeout (3 s
//! here: long enough that a loaded machine does not make a live reader
//! look stalled), and
//! the server's peak RSS stays within what its queues can hold, far below
//! what the messages add up to.

// The helpers unwrap as the tests do: a failure there is the test's failure.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use unixws::{CloseCode, Message};
use unixws_testkit::{client_frame, python, raw_upgraded, read_frame, wait_until, Process};

const T: Duration = Duration::from_secs(60);
const MESSAGES: usize = 8000;
const SIZE: usize = 16 << 10;
const READERS: [(&str, &str); 4] = [
    ("r1", "0.0001"),
    ("r2", "0.0002"),
    ("r3", "0.0003"),
    ("r4", "0.0004"),
];

/// The server's peak resident memory so far (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn uneven_readers_get_everything_in_order_and_only_the_stalled_one_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("room.sock");
    let server = Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_unixws"))
            .args(["serve", "--broadcast", "--slow-consumer-timeout", "3s"])
            .arg(&sock),
    );
    assert!(wait_until(T, || sock.exists()));

    // The sender joins first, so that it hears every other member's hello.
    let url = format!("ws+unix://{}", sock.display());
    let mut sender = unixws::connect(url.as_str()).unwrap();
    let readers: Vec<Process> = READERS
        .iter()
        .map(|(name, delay)| {
            Process::spawn(
                python("py_slow_reader.py")
                    .arg(&sock)
                    .arg(MESSAGES.to_string())
                    .arg(delay)
                    .arg(name),
            )
        })
        .collect();
    let mut stalled = raw_upgraded(&sock);
    stalled
        .write_all(&client_frame(0x81, b"hello stalled", true))
        .unwrap();
    let mut hellos = 0;
    while hellos < READERS.len() + 1 {
        match sender.recv().unwrap() {
            Some(Message::Text(t)) if t.starts_with("hello ") => hellos += 1,
            other => panic!("the sender heard {other:?}"),
        }
    }
    let before = peak_rss(server.id());

    let started = Instant::now();
    let padding = "x".repeat(SIZE - 8);
    for i in 0..MESSAGES {
        sender
            .feed(Message::text(format!("m{i:06} {padding}")))
            .unwrap();
        if i % 64 == 63 {
            sender.flush().unwrap();
        }
    }
    sender.flush().unwrap();
    for (mut reader, (name, _)) in readers.into_iter().zip(READERS) {
        reader.wait_for_line(&format!("ok {MESSAGES}"), T);
        let (ok, lines) = reader.finish(T);
        assert!(ok, "reader {name}: {lines:?}");
    }
    let took = started.elapsed();
    let peak = peak_rss(server.id());
    sender.close(CloseCode::Normal, "").unwrap();

    // The stalled reader: what it was sent, then 1013.
    let mut data = 0;
    let close = loop {
        let (first, payload) = read_frame(&mut stalled).expect("a frame, then the close");
        if first & 0x0f == 8 {
            break u16::from_be_bytes([payload[0], payload[1]]);
        }
        data += 1;
    };
    assert_eq!(
        close, 1013,
        "the stalled reader is closed as a slow consumer"
    );
    assert!(
        data < MESSAGES,
        "it got {data} before it stalled, not everything"
    );

    // Memory: each reader holds at most its queue (256 messages, payloads
    // shared) and the 1 MiB of output a connection takes before it waits;
    // the messages sent add up to 128 MiB.
    let bound = 5 * (256 * SIZE as u64 + (1 << 20)) + (16 << 20);
    let grew = peak.saturating_sub(before);
    assert!(
        grew < bound,
        "peak RSS grew by {} MiB (bound {} MiB) over {took:?}",
        grew >> 20,
        bound >> 20
    );
    let (ok, _) = server.terminate(T);
    assert!(ok);
}
