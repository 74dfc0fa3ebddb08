//! The protocol rows (6–13) of the robustness matrix: bytes written on a
//! raw socket after a real handshake, not through tungstenite, so the test
//! sees exactly what unixws answers — and the handshake rows (1–5, 14) of
//! the same matrix. Every case runs against both servers (blocking and
//! tokio), and each server must still echo for a new client afterwards.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use unixws::Limits;
use unixws_testkit::RunningServer;

const MAX_MESSAGE: usize = 64 << 10;

use unixws_testkit::client_frame as frame;

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

use unixws_testkit::raw_upgraded as raw_client;

/// Sends `bytes` and returns the close code of the first close frame the
/// server sends back (skipping anything before it).
fn close_code_for(path: &Path, bytes: &[u8]) -> u16 {
    let mut s = raw_client(path);
    // The server may close before reading everything: a write error is fine.
    let _ = s.write_all(bytes);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let frames = unixws_testkit::split_frames(&buf);
        if let Some((_, payload)) = frames.iter().find(|(first, _)| first & 0x0f == 8) {
            assert!(payload.len() >= 2, "close frame without a code");
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => panic!("the connection ended without a close frame; got {buf:?}"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    codes: &'static [u16],
}

fn cases() -> Vec<Case> {
    let text = |fin: bool| if fin { 0x81 } else { 0x01 };
    let mut huge = vec![0x82, 0x80 | 127];
    huge.extend_from_slice(&(i64::MAX as u64).to_be_bytes());
    huge.extend_from_slice(&[1, 2, 3, 4]);
    let mut huge_msb = vec![0x82, 0x80 | 127];
    huge_msb.extend_from_slice(&u64::MAX.to_be_bytes());
    huge_msb.extend_from_slice(&[1, 2, 3, 4]);
    let many_small: Vec<u8> = std::iter::once(frame(0x02, &[0u8; 1000], true))
        .chain((0..100).map(|_| frame(0x00, &[0u8; 1000], true)))
        .chain(std::iter::once(frame(0x80, &[0u8; 1000], true)))
        .flatten()
        .collect();
    vec![
        Case {
            name: "6: 2^63-1 payload length",
            bytes: huge,
            codes: &[1009],
        },
        Case {
            name: "6: length with the MSB set",
            bytes: huge_msb,
            codes: &[1002],
        },
        Case {
            name: "7: too long from small continuations",
            bytes: many_small,
            codes: &[1009],
        },
        Case {
            name: "8: unmasked client frame",
            bytes: frame(0x81, b"hi", false),
            codes: &[1002],
        },
        Case {
            name: "9: RSV1 without an extension",
            bytes: frame(0xC1, b"hi", true),
            codes: &[1002],
        },
        Case {
            name: "9: reserved data opcode 3",
            bytes: frame(0x83, b"hi", true),
            codes: &[1002],
        },
        Case {
            name: "9: reserved control opcode 11",
            bytes: frame(0x8B, b"", true),
            codes: &[1002],
        },
        Case {
            name: "10: ping over 125 bytes",
            bytes: frame(0x89, &[0u8; 126], true),
            codes: &[1002],
        },
        Case {
            name: "10: fragmented ping",
            bytes: frame(0x09, b"hi", true),
            codes: &[1002],
        },
        Case {
            name: "11: continuation with no start",
            bytes: frame(0x80, b"hi", true),
            codes: &[1002],
        },
        Case {
            name: "11: new data frame mid-fragment",
            bytes: [
                frame(text(false), b"a", true),
                frame(text(true), b"b", true),
            ]
            .concat(),
            codes: &[1002],
        },
        Case {
            name: "12: invalid UTF-8 text",
            bytes: frame(0x81, &[0xff, 0xfe], true),
            codes: &[1007],
        },
        Case {
            name: "12: invalid UTF-8 split across fragments",
            bytes: [
                frame(text(false), &[0xe2, 0x82], true),
                frame(0x80, &[0x41], true),
            ]
            .concat(),
            codes: &[1007],
        },
        Case {
            name: "12: invalid UTF-8 in a close reason",
            bytes: frame(0x88, &close_payload(1000, &[0xff]), true),
            codes: &[1007],
        },
        Case {
            name: "13: close with a 1-byte payload",
            bytes: frame(0x88, &[3], true),
            codes: &[1002],
        },
        Case {
            name: "13: close code 0",
            bytes: frame(0x88, &close_payload(0, b""), true),
            codes: &[1002],
        },
        Case {
            name: "13: close code 999",
            bytes: frame(0x88, &close_payload(999, b""), true),
            codes: &[1002],
        },
        Case {
            name: "13: close code 1005",
            bytes: frame(0x88, &close_payload(1005, b""), true),
            codes: &[1002],
        },
        Case {
            name: "13: close code 1006",
            bytes: frame(0x88, &close_payload(1006, b""), true),
            codes: &[1002],
        },
        Case {
            name: "13: close code 1015",
            bytes: frame(0x88, &close_payload(1015, b""), true),
            codes: &[1002],
        },
        Case {
            name: "13: close code 5000",
            bytes: frame(0x88, &close_payload(5000, b""), true),
            codes: &[1002],
        },
    ]
}

fn limits() -> Limits {
    let mut l = Limits::default();
    l.max_message_size = MAX_MESSAGE;
    l.max_frame_size = MAX_MESSAGE;
    l
}

fn run_cases(path: &Path) {
    let mut wrong = Vec::new();
    for case in cases() {
        let code = close_code_for(path, &case.bytes);
        if !case.codes.contains(&code) {
            wrong.push(format!(
                "{}: got {code}, want one of {:?}",
                case.name, case.codes
            ));
        }
    }
    assert!(wrong.is_empty(), "wrong close codes:\n{}", wrong.join("\n"));
}

/// Runs `check` against the blocking server, then against the tokio
/// server, each an echo server on a fresh socket with `limits`; afterwards
/// each must still echo for a new client.
fn each_server(limits: Limits, check: impl Fn(&Path, &dyn Fn() -> unixws::StatsSnapshot)) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("blocking.sock");
    let server = RunningServer::echo(&sock, limits.clone());
    check(&sock, &|| server.stats());
    assert_still_serving(&sock);
    drop(server);

    let sock = dir.path().join("tokio.sock");
    let server = RunningServer::echo_async(&sock, limits);
    check(&sock, &|| server.stats());
    assert_still_serving(&sock);
    server.stop();
}

fn assert_still_serving(path: &Path) {
    let mut conn = unixws::connect(path).unwrap();
    unixws_testkit::assert_echo(&mut conn, "still serving");
    conn.close(1000, "").unwrap();
}

/// Writes `request` on a fresh socket and returns everything the server
/// answers before closing.
fn answer_to(path: &Path, request: &[u8]) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(request);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn rows_6_to_13_protocol_violations_get_the_right_close_code() {
    each_server(limits(), |path, stats| {
        run_cases(path);
        // Invalid close codes are answered (1002) by tungstenite itself,
        // without an error reaching unixws, so not every case is counted.
        assert!(stats().protocol_errors >= 10, "{:?}", stats());
    });
}

#[test]
fn row_1_a_1_mib_header_line_in_1_byte_writes_stops_at_the_byte_cap() {
    each_server(limits(), |path, _| {
        let mut s = UnixStream::connect(path).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nX-Long: ").unwrap();
        let mut sent = 0usize;
        let mut answer = Vec::new();
        while sent < 1 << 20 {
            if s.write_all(b"a").is_err() {
                break;
            }
            sent += 1;
            if sent % 4096 == 0 {
                // Stop writing once the server has answered (or closed).
                s.set_nonblocking(true).unwrap();
                let mut first = [0u8; 1];
                let answered = match s.read(&mut first) {
                    Ok(n) => {
                        answer.extend_from_slice(&first[..n]);
                        true
                    }
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                };
                s.set_nonblocking(false).unwrap();
                if answered {
                    break;
                }
            }
        }
        assert!(
            sent < 256 << 10,
            "the server read {sent} bytes of one header line"
        );
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = s.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        // 431 from the byte cap, or 400 from tungstenite's check against
        // requests sent in many tiny pieces; never an upgrade.
        let refused = ["HTTP/1.1 431", "HTTP/1.1 400"]
            .iter()
            .any(|s| answer.starts_with(s));
        assert!(refused || answer.is_empty(), "{answer}");
        assert!(!answer.contains(" 101 "));
    });
}

#[test]
fn row_2_two_thousand_headers_get_431() {
    each_server(limits(), |path, _| {
        let many: String = (0..2000).map(|i| format!("X-H{i}: v\r\n")).collect();
        let request = unixws_testkit::upgrade_request("/", &many);
        let answer = answer_to(path, request.as_bytes());
        assert!(
            answer.starts_with("HTTP/1.1 431") || answer.starts_with("HTTP/1.1 400"),
            "{answer:.80}"
        );
    });
}

#[test]
fn row_3_slowloris_is_dropped_at_the_deadline_while_a_real_client_gets_in() {
    let mut l = limits();
    l.max_connections = 4;
    l.handshake_timeout = Duration::from_millis(600);
    each_server(l, |path, stats| {
        let slow: Vec<_> = (0..10)
            .map(|_| {
                let path = path.to_path_buf();
                std::thread::spawn(move || {
                    let mut s = UnixStream::connect(&path).unwrap();
                    let started = std::time::Instant::now();
                    for b in b"GET / HTTP/1.1\r\nHost: x\r\n".iter().cycle().take(200) {
                        if s.write_all(&[*b]).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    started.elapsed()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        // A legitimate client completes its handshake meanwhile.
        let mut real = unixws::connect(path).unwrap();
        unixws_testkit::assert_echo(&mut real, "not starved");
        real.close(1000, "").unwrap();
        for t in slow {
            let lasted = t.join().unwrap();
            assert!(
                lasted < Duration::from_secs(10),
                "a slow client lasted {lasted:?}"
            );
        }
        assert!(stats().bad_handshakes >= 10, "{:?}", stats());
    });
}

#[test]
fn row_4_bytes_that_are_not_http_are_closed() {
    // The start of a TLS 1.2 ClientHello.
    let client_hello: &[u8] = &[
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0xc3, 0x2a,
    ];
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    each_server(limits(), |path, _| {
        for garbage in [client_hello, &random[..], &[0u8; 512][..], b"HELLO\r\n\r\n"] {
            let answer = answer_to(path, garbage);
            assert!(
                answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
                "{answer:.80}"
            );
        }
    });
}

#[test]
fn row_5_bad_upgrade_requests_get_400_or_426() {
    each_server(limits(), |path, _| {
        let cases = [
            ("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n", "400"),
            ("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n", "426"),
            ("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", "400"),
            ("POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", "400"),
        ];
        for (request, status) in cases {
            let answer = answer_to(path, request.as_bytes());
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}")),
                "{request:?} -> {answer:.80}"
            );
            if status == "426" {
                assert!(answer.contains("Sec-WebSocket-Version: 13"), "{answer}");
            }
        }
    });
}

#[test]
fn row_14_a_peer_that_closes_then_goes_silent_is_let_go() {
    each_server(limits(), |path, _| {
        let mut s = raw_client(path);
        s.write_all(&frame(0x88, &close_payload(1000, b"bye"), true))
            .unwrap();
        // We never read until the server has finished with us: it answers
        // our close and ends the connection on its own.
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)
            .expect("the server ends the connection");
        assert_eq!(
            &answer[..2],
            &[0x88, 0x05],
            "the close is answered: {answer:?}"
        );
    });
}

/// A peer that dies mid-message: the kernel closes its socket as it does
/// for a SIGKILLed process. The connection must end (nothing stays open)
/// and the server carries on. (A half-open peer that never closes is the
/// keepalive tests' case.)
#[test]
fn row_15_a_peer_that_dies_mid_message_is_cleaned_up() {
    each_server(limits(), |path, stats| {
        let mut s = raw_client(path);
        let whole = frame(0x82, &[7u8; 1000], true);
        s.write_all(&whole[..500]).unwrap();
        assert!(
            unixws_testkit::wait_until(Duration::from_secs(5), || stats().open == 1),
            "{:?}",
            stats()
        );
        drop(s);
        assert!(
            unixws_testkit::wait_until(Duration::from_secs(5), || stats().open == 0),
            "the dead peer's connection stayed open: {:?}",
            stats()
        );
    });
}

/// The same with a real process killed by SIGKILL in the middle of a message.
#[test]
fn row_15_a_process_killed_mid_message_is_cleaned_up() {
    each_server(limits(), |path, stats| {
        let script = format!(
            "import socket, sys, time\ns = socket.socket(socket.AF_UNIX)\ns.connect({path:?})\ns.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n')\ns.recv(1024)\ns.sendall(bytes([0x82, 0xfe, 0x03, 0xe8, 1, 2, 3, 4]) + b'x' * 100)\nprint('sent', flush=True)\ntime.sleep(60)\n",
            path = path.display().to_string()
        );
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs the dying peer");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line, "sent\n");
        assert!(
            unixws_testkit::wait_until(Duration::from_secs(5), || stats().open == 1),
            "{:?}",
            stats()
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(
            unixws_testkit::wait_until(Duration::from_secs(5), || stats().open == 0),
            "the killed peer's connection stayed open: {:?}",
            stats()
        );
    });
}

#[test]
fn row_12_invalid_utf8_fails_at_the_bad_byte_before_the_frame_is_complete() {
    // A text frame that declares 1,000 bytes, of which only the first few
    // (with a byte that is never UTF-8) are sent: the 1007 must come
    // without waiting for the rest (Autobahn 6.4.3).
    let start = b"valid so far \xce\xba then \xff";
    let mut payload = start.to_vec();
    payload.resize(1000, b'x');
    let whole = frame(0x81, &payload, true);
    // The 8-byte header (2, the 16-bit length, the key) and the start only.
    let bytes = whole[..8 + start.len()].to_vec();
    each_server(limits(), |path, _| {
        assert_eq!(close_code_for(path, &bytes), 1007);
    });
}
