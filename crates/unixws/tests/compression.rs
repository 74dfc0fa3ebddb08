//! permessage-deflate (RFC 7692) over real Unix sockets: negotiated with
//! Python `websockets` and Node `ws` both ways and checked on the wire
//! (RSV1 on the data frames, through a byte tap); off unless asked for;
//! and the bad-input rows (RSV1 where it may not be, invalid deflate data,
//! a decompression bomb) on both servers, with another connection
//! unaffected.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use unixws::{CloseCode, Limits, Message};
use unixws_testkit::{
    client_frame, node, python, raw_upgraded_with, read_frame, FrontEnd, Process, RunningServer,
    Tap, FRONT_ENDS,
};

fn compressing() -> Limits {
    Limits::default()
        .compression(true)
        .compression_threshold(64)
}

fn echo_server(front: FrontEnd, path: &Path, limits: Limits) -> RunningServer {
    RunningServer::echo_on(front, path, limits)
}

/// An echo server of `front` with `limits` behind a byte tap, and the
/// peer client `client` makes run against the tap's socket (it must exit
/// successfully): its stdout, and (data frames, of them with RSV1) up and
/// down.
fn peer_client_through_tap(
    front: FrontEnd,
    limits: Limits,
    client: impl FnOnce(&Path) -> std::process::Command,
) -> (String, (usize, usize), (usize, usize)) {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = dir.path().join("echo.sock");
    let front_path = dir.path().join("tap.sock");
    let _server = echo_server(front, &backend, limits);
    let tap = Tap::start(&front_path, &backend);
    let out = client(&front_path).output().expect("the peer client");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{front:?}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let up = Tap::rsv1_count(&Tap::frames(&tap.upstream));
    let down = Tap::rsv1_count(&Tap::frames(&tap.downstream));
    (stdout, up, down)
}

fn python_client(path: &Path) -> std::process::Command {
    let mut cmd = python("py_compress_client.py");
    cmd.arg(path);
    cmd
}

#[test]
fn python_websockets_negotiates_compression_with_both_servers_and_rsv1_is_on_the_wire() {
    for front in FRONT_ENDS {
        let (stdout, (up, up_rsv1), (down, down_rsv1)) =
            peer_client_through_tap(front, compressing(), python_client);
        assert!(
            stdout.contains("extensions ['permessage-deflate']"),
            "{front:?}: {stdout}"
        );
        // "short" goes uncompressed from us (under the threshold).
        assert_eq!((up, down), (4, 4), "{front:?}");
        assert!(
            up_rsv1 >= 3,
            "{front:?}: Python compressed {up_rsv1} of {up}"
        );
        assert_eq!(
            down_rsv1, 3,
            "{front:?}: unixws compressed {down_rsv1} of {down}"
        );
    }
}

#[test]
fn node_ws_with_per_message_deflate_gets_compressed_frames() {
    let (stdout, (up, up_rsv1), (down, down_rsv1)) =
        peer_client_through_tap(FrontEnd::Tokio, compressing(), |path| {
            let mut cmd = node("node_compress_client.js");
            cmd.arg(path);
            cmd
        });
    assert!(stdout.contains("extensions permessage-deflate"), "{stdout}");
    assert_eq!((up, down), (3, 3));
    assert_eq!(down_rsv1, 2, "unixws compressed {down_rsv1} of {down}");
    assert!(up_rsv1 >= 2, "Node compressed {up_rsv1} of {up}");
}

/// The unixws client, compressing, against the echo server `start` runs
/// on the socket it is given: both messages go compressed both ways.
fn client_compresses_to(name: &str, start: impl FnOnce(&Path) -> Process) {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = dir.path().join("peer.sock");
    let front_path = dir.path().join("tap.sock");
    let mut server = start(&backend);
    server.wait_for_line("ready", Duration::from_secs(20));
    let tap = Tap::start(&front_path, &backend);
    let mut conn = unixws::ClientBuilder::new(front_path.as_path())
        .expect("address")
        .limits(compressing())
        .connect()
        .expect("connect");
    let text = "{\"k\":\"compressible value\"},".repeat(200);
    for message in [
        Message::text(text.clone()),
        Message::binary(text.clone().into_bytes()),
    ] {
        conn.send(message.clone()).expect("send");
        assert_eq!(conn.recv().expect("recv"), Some(message));
    }
    conn.close(CloseCode::Normal, "").expect("close");
    let (up, up_rsv1) = Tap::rsv1_count(&Tap::frames(&tap.upstream));
    let (down, down_rsv1) = Tap::rsv1_count(&Tap::frames(&tap.downstream));
    assert_eq!((up, up_rsv1), (2, 2), "the unixws client compressed both");
    assert_eq!((down, down_rsv1), (2, 2), "{name} compressed both");
}

#[test]
fn the_unixws_client_compresses_to_a_python_websockets_server() {
    client_compresses_to("Python", |path| {
        Process::spawn(python("py_server.py").arg(path))
    });
}

#[test]
fn the_unixws_client_compresses_to_a_node_ws_server() {
    client_compresses_to("Node", |path| {
        Process::spawn(node("node_server.js").arg(path).env("WS_DEFLATE", "1"))
    });
}

#[test]
fn compression_is_off_unless_asked_for() {
    let (stdout, (_, up_rsv1), (_, down_rsv1)) =
        peer_client_through_tap(FrontEnd::Tokio, Limits::default(), python_client);
    assert!(stdout.contains("extensions []"), "declined: {stdout}");
    assert_eq!((up_rsv1, down_rsv1), (0, 0));
}

/// The close code a server answers one bad frame with, on a connection
/// that negotiated compression (or not); another connection goes on.
fn close_code_for(front: FrontEnd, negotiate: bool, frames: &[Vec<u8>]) -> u16 {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.sock");
    let server = echo_server(front, &path, compressing().max_message_size(1 << 20));
    let extra = if negotiate {
        "Sec-WebSocket-Extensions: permessage-deflate\r\n"
    } else {
        ""
    };
    let mut bad = raw_upgraded_with(&path, extra);
    let mut bystander = unixws::ClientBuilder::new(path.as_path())
        .expect("address")
        .limits(compressing())
        .connect()
        .expect("connect");
    for frame in frames {
        bad.write_all(frame).expect("write");
    }
    let code = loop {
        let (first, payload) = read_frame(&mut bad).expect("a close frame");
        if first & 0x0f == 8 {
            break u16::from_be_bytes([payload[0], payload[1]]);
        }
    };
    drop(bad);
    unixws_testkit::assert_echo(&mut bystander, &"unaffected ".repeat(20));
    bystander.close(CloseCode::Normal, "").expect("close");
    drop(server);
    code
}

/// `payload` deflated with an empty-window raw stream: a stored block.
fn stored(payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u16;
    let mut out = vec![0x00];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

#[test]
fn bad_compressed_input_gets_its_close_code_on_both_servers() {
    // A real bomb: 8 MiB of zeros deflated, against a 1 MiB limit.
    let bomb = {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&vec![0u8; 8 << 20]).expect("deflate");
        let mut b = e.finish().expect("deflate");
        b.truncate(b.len());
        b
    };
    for front in FRONT_ENDS {
        let rows: [(&str, bool, Vec<Vec<u8>>, u16); 6] = [
            (
                "RSV1 on a control frame",
                true,
                vec![client_frame(0x80 | 0x40 | 9, b"", true)],
                1002,
            ),
            (
                "RSV1 on a continuation frame",
                true,
                vec![
                    client_frame(0x01 | 0x40, &stored(b"half"), true),
                    client_frame(0x80 | 0x40, &stored(b"half"), true),
                ],
                1002,
            ),
            (
                "RSV1 without negotiation",
                false,
                vec![client_frame(0x81 | 0x40, &stored(b"x"), true)],
                1002,
            ),
            (
                "an invalid deflate stream",
                true,
                vec![client_frame(0x81 | 0x40, &[0xff, 0xff, 0x13, 0x37], true)],
                1002,
            ),
            (
                "a decompression bomb",
                true,
                vec![client_frame(0x82 | 0x40, &bomb, true)],
                1009,
            ),
            (
                "compressed text that is not UTF-8",
                true,
                vec![client_frame(0x81 | 0x40, &stored(&[0xc3, 0x28]), true)],
                1007,
            ),
        ];
        for (row, negotiate, frames, want) in rows {
            assert_eq!(
                close_code_for(front, negotiate, &frames),
                want,
                "{front:?}: {row}"
            );
        }
    }
}

#[test]
fn a_compressed_message_from_a_raw_client_is_inflated_and_answered_compressed() {
    for front in FRONT_ENDS {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ok.sock");
        let _server = echo_server(front, &path, compressing());
        let mut raw = raw_upgraded_with(&path, "Sec-WebSocket-Extensions: permessage-deflate\r\n");
        let text = "abc".repeat(100);
        // Two stored blocks, fragmented over two frames (RSV1 on the first).
        raw.write_all(&client_frame(
            0x01 | 0x40,
            &stored(&text.as_bytes()[..150]),
            true,
        ))
        .expect("write");
        raw.write_all(&client_frame(0x80, &stored(&text.as_bytes()[150..]), true))
            .expect("write");
        let (first, payload) = read_frame(&mut raw).expect("the echo");
        assert_eq!(
            first,
            0x80 | 0x40 | 1,
            "{front:?}: one compressed text frame"
        );
        let mut inflated = Vec::new();
        let mut d = flate2::write::DeflateDecoder::new(&mut inflated);
        d.write_all(&payload).expect("inflate");
        d.write_all(&[0, 0, 0xff, 0xff]).expect("inflate");
        drop(d);
        assert_eq!(String::from_utf8(inflated).expect("text"), text);
    }
}

/// A server that answers the upgrade with `extensions` (a correct 101
/// otherwise).
fn answering_server(path: &Path, extensions: &'static str) {
    let listener = std::os::unix::net::UnixListener::bind(path).expect("bind");
    std::thread::spawn(move || {
        use std::io::{BufRead, BufReader};
        let (mut s, _) = listener.accept().expect("accept");
        let mut key = String::new();
        let mut reader = BufReader::new(s.try_clone().expect("dup"));
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            if let Some(k) = line.to_ascii_lowercase().strip_prefix("sec-websocket-key:") {
                // The key is case-sensitive: take it from the line as sent.
                key = line[line.len() - k.len()..].trim().to_string();
            }
        }
        let accept = unixws::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let _ = write!(
            s,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Extensions: {extensions}\r\n\r\n"
        );
        std::thread::sleep(Duration::from_secs(2));
    });
}

#[test]
fn a_client_fails_the_handshake_on_an_answer_it_did_not_offer() {
    for (answer, offer) in [
        ("permessage-deflate; client_max_window_bits=8", true),
        ("permessage-deflate; client_max_window_bits", true),
        ("permessage-deflate; bogus", true),
        ("permessage-deflate", false),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("liar.sock");
        answering_server(&path, answer);
        let err = unixws::ClientBuilder::new(path.as_path())
            .expect("address")
            .limits(Limits::default().compression(offer))
            .connect()
            .expect_err("a wrong answer");
        assert!(
            matches!(err, unixws::Error::BadExtension { .. }),
            "{answer}: {err}"
        );
        assert!(err.to_string().contains("Limits::compression"), "{err}");
    }
}
