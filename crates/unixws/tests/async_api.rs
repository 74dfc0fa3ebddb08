//! The async API's conventions, over real Unix sockets: `Stream`/`Sink`
//! as tokio-tungstenite has them, `Connection::accept`/`client` on sockets
//! the caller made (with a real Python `websockets` peer, and frames glued
//! to the handshake), `split` halves used by two tasks at once, and
//! cancel-safety of `recv` against input that arrives one byte at a time.

use std::io::{Read, Write};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use unixws::tokio::Connection;
use unixws::CloseCode;
use unixws::{Limits, Message};
use unixws_testkit::client_frame;

/// An echo server made with `Connection::accept` on the test's own
/// listener; `close:REASON` makes it close with 4000 and REASON (the
/// convention of `tests/peers/py_client.py`).
async fn own_echo_server(listener: tokio::net::UnixListener) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut ws = Connection::accept(socket, Limits::default())
                .await
                .expect("upgrade");
            while let Some(message) = ws.next().await {
                let message = message.expect("a message");
                if let Message::Text(t) = &message {
                    if let Some(reason) = t.strip_prefix("close:") {
                        ws.close(4000, reason).await.expect("close");
                        return;
                    }
                }
                ws.send(message).await.expect("echo");
            }
        });
    }
}

#[tokio::test]
async fn stream_and_sink_work_as_in_tokio_tungstenite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    tokio::spawn(own_echo_server(
        tokio::net::UnixListener::bind(&path).unwrap(),
    ));
    let mut ws = unixws::tokio::connect(&path).await.unwrap();
    for i in 0..3 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    ws.feed(Message::binary(vec![7u8; 100_000])).await.unwrap();
    SinkExt::flush(&mut ws).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(ws.next().await.unwrap().unwrap());
    }
    assert_eq!(
        &got[..3],
        &[
            Message::text("m0"),
            Message::text("m1"),
            Message::text("m2")
        ]
    );
    assert_eq!(got[3], Message::binary(vec![7u8; 100_000]));
    SinkExt::close(&mut ws).await.unwrap();
    assert!(
        ws.next().await.is_none(),
        "the stream ends after the close handshake"
    );
    assert_eq!(ws.peer_close().map(|c| c.code), Some(CloseCode::Normal));
}

#[tokio::test]
async fn accept_serves_a_python_websockets_client_on_a_socket_the_caller_made() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("py.sock");
    tokio::spawn(own_echo_server(
        tokio::net::UnixListener::bind(&path).unwrap(),
    ));
    let path_arg = path.clone();
    let output = tokio::task::spawn_blocking(move || {
        unixws_testkit::python("py_client.py")
            .arg(&path_arg)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("ok"),
        "python client: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn frames_glued_to_the_request_reach_the_accepting_side() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let peer = std::thread::spawn(move || {
        let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let mut bytes = unixws_testkit::upgrade_request("/glued?x=1", "").into_bytes();
        bytes.extend(client_frame(0x81, b"first, in the same write", true));
        s.write_all(&bytes).unwrap();
        let mut answer = vec![0u8; 4096];
        let n = s.read(&mut answer).unwrap();
        String::from_utf8_lossy(&answer[..n]).to_string()
    });
    let (socket, _) = listener.accept().await.unwrap();
    let mut ws = Connection::accept(socket, Limits::default()).await.unwrap();
    assert_eq!(ws.info().path, "/glued");
    assert_eq!(ws.info().query.as_deref(), Some("x=1"));
    assert_eq!(
        ws.recv().await.unwrap(),
        Some(Message::text("first, in the same write"))
    );
    assert!(peer.join().unwrap().starts_with("HTTP/1.1 101"));
}

#[tokio::test]
async fn client_reads_frames_glued_to_the_response() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut byte = [0u8; 1];
        while !request.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            request.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&request).to_string();
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap()
            .trim()
            .to_string();
        let accept = unixws::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let mut answer = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").into_bytes();
        answer.extend(client_frame(0x82, &[1, 2, 3], false));
        s.write_all(&answer).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    });
    let socket = tokio::net::UnixStream::connect(dir.path().join("c.sock"))
        .await
        .unwrap();
    let mut ws = Connection::client(socket, "ws://localhost/chat", Limits::default())
        .await
        .unwrap();
    assert_eq!(ws.info().path, "/chat");
    assert_eq!(
        ws.recv().await.unwrap(),
        Some(Message::binary(vec![1, 2, 3]))
    );
    server.join().unwrap();
}

#[tokio::test]
async fn split_halves_send_while_the_reader_waits_and_keep_answering_pings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("split.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    // The peer: pings once, then reads five ticks before it says anything.
    let peer = std::thread::spawn(move || {
        let mut s = unixws_testkit::raw_upgraded(&path);
        s.write_all(&client_frame(0x89, b"are you there", true))
            .unwrap();
        read_until(&mut s, "five ticks and a pong", |seen| {
            count_text_frames(seen) >= 5 && has_pong(seen)
        });
        s.write_all(&client_frame(0x81, b"got five", true)).unwrap();
        s.write_all(&client_frame(0x88, &1000u16.to_be_bytes(), true))
            .unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let (socket, _) = listener.accept().await.unwrap();
    let ws = Connection::accept(socket, Limits::default()).await.unwrap();
    let (mut reader, mut writer) = ws.split();
    let ticking = tokio::spawn(async move {
        for i in 0..5 {
            writer
                .send(Message::text(format!("tick {i}")))
                .await
                .unwrap();
        }
        writer
    });
    // The reader is busy: it receives only once the peer got all five.
    assert_eq!(
        reader.recv().await.unwrap(),
        Some(Message::text("got five"))
    );
    assert_eq!(reader.recv().await.unwrap(), None);
    assert_eq!(reader.peer_close().map(|c| c.code), Some(CloseCode::Normal));
    let writer = ticking.await.unwrap();
    assert!(reader.unsplit(writer).is_some());
    peer.join().unwrap();
}

/// Reads from `s` until `done` holds for everything read so far, which it
/// returns; a hang-up or a read error first fails with `what` was awaited.
fn read_until(
    s: &mut std::os::unix::net::UnixStream,
    what: &str,
    done: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&seen) {
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
        assert!(n > 0, "the server hung up before {what}: {seen:?}");
        seen.extend_from_slice(&buf[..n]);
    }
    seen
}

/// Text frames (server frames are unmasked) in `bytes`, whole ones only.
fn count_text_frames(bytes: &[u8]) -> usize {
    unixws_testkit::split_frames(bytes)
        .iter()
        .filter(|(op, _)| *op == 0x81)
        .count()
}

fn has_pong(bytes: &[u8]) -> bool {
    unixws_testkit::split_frames(bytes)
        .iter()
        .any(|(op, payload)| *op == 0x8a && payload == b"are you there")
}

#[tokio::test]
async fn recv_is_cancel_safe_when_input_arrives_one_byte_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cancel.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let texts: Vec<String> = (0..20)
        .map(|i| format!("message {i}: {}", "ü".repeat(i * 7)))
        .collect();
    let to_send = texts.clone();
    let peer = std::thread::spawn(move || {
        let mut s = unixws_testkit::raw_upgraded(&path);
        for text in &to_send {
            for byte in client_frame(0x81, text.as_bytes(), true) {
                s.write_all(&[byte]).unwrap();
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        s.write_all(&client_frame(0x88, &1000u16.to_be_bytes(), true))
            .unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let (socket, _) = listener.accept().await.unwrap();
    let mut ws = Connection::accept(socket, Limits::default()).await.unwrap();
    let mut got = Vec::new();
    let mut cancelled = 0;
    loop {
        tokio::select! {
            message = ws.recv() => match message.unwrap() {
                Some(Message::Text(t)) => got.push(t.to_string()),
                Some(other) => panic!("unexpected {other:?}"),
                None => break,
            },
            // Drops the recv future, mid-frame most of the time.
            _ = tokio::task::yield_now() => cancelled += 1,
        }
    }
    assert_eq!(
        got, texts,
        "nothing lost or reordered across {cancelled} cancelled receives"
    );
    assert!(
        cancelled > 100,
        "the receives were hardly ever cancelled ({cancelled})"
    );
    peer.join().unwrap();
}

/// Messages queued through an `Outbox` go out while no task is inside
/// `recv`: the handler only reads once the peer has told it, on a channel
/// beside the socket, that it got them all; if the outbox waited for
/// `recv`, both would wait (bounded by the peer's read timeout: a
/// failure). Both `send` and `try_send`.
#[tokio::test]
async fn outbox_messages_go_out_while_nobody_is_in_recv() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (got_them, all_arrived) = tokio::sync::oneshot::channel();
    let peer = std::thread::spawn(move || {
        let mut s = unixws_testkit::raw_upgraded(&path);
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let seen = read_until(
            &mut s,
            "the ticks, while the handler is not in recv",
            |seen| count_text_frames(seen) >= 6,
        );
        let frames = unixws_testkit::split_frames(&seen);
        let ticks: Vec<&[u8]> = frames.iter().map(|(_, p)| &p[..]).collect();
        assert_eq!(
            ticks,
            [
                &b"send 0"[..],
                b"send 1",
                b"send 2",
                b"try 0",
                b"try 1",
                b"try 2"
            ]
        );
        got_them.send(()).unwrap();
        s.write_all(&client_frame(0x81, b"got six", true)).unwrap();
        s.write_all(&client_frame(0x88, &1000u16.to_be_bytes(), true))
            .unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let (socket, _) = listener.accept().await.unwrap();
    let mut ws = Connection::accept(socket, Limits::default()).await.unwrap();
    let outbox = ws.outbox().unwrap();
    let ticker = tokio::spawn(async move {
        for i in 0..3 {
            outbox
                .send(Message::text(format!("send {i}")))
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
        for i in 0..3 {
            outbox.try_send(Message::text(format!("try {i}"))).unwrap();
            tokio::task::yield_now().await;
        }
    });
    ticker.await.unwrap();
    // The handler reads only once the peer has everything.
    let peer = tokio::task::spawn_blocking(move || peer.join());
    if all_arrived.await.is_err() {
        // The peer's thread ended without the ticks: its panic says why.
        peer.await.unwrap().unwrap();
        panic!("the peer ended without reporting");
    }
    let got = ws.recv().await.unwrap();
    assert_eq!(got, Some(Message::text("got six")));
    assert_eq!(ws.recv().await.unwrap(), None);
    assert_eq!(ws.peer_close().map(|c| c.code), Some(CloseCode::Normal));
    peer.await.unwrap().unwrap();
}

/// A handler that returns with its connection open and an outbox in use:
/// the outbox's writer task closes the connection (1000), the peer sees
/// the close, and messages queued before are delivered first.
#[tokio::test]
async fn an_abandoned_connection_with_an_outbox_is_closed_after_its_queue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("abandoned.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let peer = std::thread::spawn(move || {
        let mut s = unixws_testkit::raw_upgraded(&path);
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let seen = read_until(&mut s, "a close", |seen| {
            unixws_testkit::split_frames(seen)
                .iter()
                .any(|(op, _)| *op == 0x88)
        });
        let got = unixws_testkit::split_frames(&seen);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], (0x81, b"last words".to_vec()));
        assert_eq!(got[1].0, 0x88);
        assert_eq!(&got[1].1[..2], &1000u16.to_be_bytes());
        s.write_all(&client_frame(0x88, &1000u16.to_be_bytes(), true))
            .unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)
            .expect("the server closes its side");
    });
    let (socket, _) = listener.accept().await.unwrap();
    let mut ws = Connection::accept(socket, Limits::default()).await.unwrap();
    let outbox = ws.outbox().unwrap();
    outbox.try_send(Message::text("last words")).unwrap();
    drop(ws);
    tokio::task::spawn_blocking(move || peer.join())
        .await
        .unwrap()
        .unwrap();
    assert!(
        outbox.send(Message::text("too late")).await.is_err(),
        "the outbox of a closed connection refuses messages"
    );
}

/// The tokio prelude names the async types: `Server::builder(..)` then
/// `bind_async()` give the `Server` it names, and `next`/`send` come with
/// it.
mod with_the_prelude {
    use unixws::tokio::prelude::*;

    #[tokio::test]
    async fn one_import_serves_and_connects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prelude.sock");
        let server: Server = Server::builder(&path).unwrap().bind_async().unwrap();
        let shutdown: ShutdownHandle = server.shutdown_handle();
        let serving = tokio::spawn(server.serve(|mut conn: Connection| async move {
            while let Some(message) = conn.next().await {
                conn.send(message?).await?;
            }
            Ok(())
        }));
        let mut ws: Connection = connect(&path).await.unwrap();
        SinkExt::send(&mut ws, Message::text("hi")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
        ws.close(CloseCode::Normal, "").await.unwrap();
        shutdown.shutdown();
        serving.await.unwrap().unwrap();
    }
}

/// The close timeout counts from the close, not from the last time the
/// connection read the clock: a handler that works for 300 ms after a
/// message and then closes (with `close`, or by sending a close message),
/// with a 200 ms close timeout, still gets the peer's answer that comes
/// 100 ms later.
#[tokio::test]
async fn the_close_timeout_counts_from_the_close() {
    for by_message in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("late-close.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let peer = std::thread::spawn(move || {
            let mut s = unixws_testkit::raw_upgraded(&path);
            s.write_all(&client_frame(0x81, b"work on this", true))
                .unwrap();
            let (first, _) = unixws_testkit::read_frame(&mut s).unwrap();
            assert_eq!(first, 0x88, "the server's close");
            std::thread::sleep(Duration::from_millis(100));
            s.write_all(&client_frame(0x88, &1000u16.to_be_bytes(), true))
                .unwrap();
        });
        let (socket, _) = listener.accept().await.unwrap();
        let limits = Limits::default().close_timeout(Duration::from_millis(200));
        let mut ws = Connection::accept(socket, limits).await.unwrap();
        assert_eq!(
            ws.recv().await.unwrap(),
            Some(Message::text("work on this"))
        );
        tokio::time::sleep(Duration::from_millis(300)).await; // the handler's work
        if by_message {
            ws.send(Message::Close(None)).await.unwrap();
            while ws.recv().await.unwrap().is_some() {}
        } else {
            ws.close(CloseCode::Normal, "done").await.unwrap();
        }
        assert_eq!(
            ws.peer_close().map(|c| c.code),
            Some(CloseCode::Normal),
            "closed by message: {by_message}; the answer 100 ms after the close was awaited"
        );
        peer.join().unwrap();
    }
}

/// `Listener::into_tokio_unix`: a safely bound socket served by code of
/// one's own on tokio (here `Connection::accept`, as hyper or axum would
/// take it); outside a runtime it is a clear error, not a panic.
#[test]
fn into_tokio_unix_serves_and_needs_a_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokio.sock");
    let bind = || {
        let addr = unixws::Address::unix(&path).unwrap();
        unixws::Listener::bind(&addr, &unixws::BindOptions::new()).unwrap()
    };
    let err = bind().into_tokio_unix().unwrap_err();
    assert!(matches!(err, unixws::Error::NoRuntime { .. }), "{err:?}");
    assert!(
        !path.exists(),
        "the refused listener's file is gone with it"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (listener, guard) = bind().into_tokio_unix().unwrap();
        tokio::spawn(own_echo_server(listener));
        let client_path = path.clone();
        let echoed = tokio::task::spawn_blocking(move || {
            let mut conn = unixws::connect(&client_path).unwrap();
            conn.send(Message::text("through tokio")).unwrap();
            conn.recv().unwrap()
        })
        .await
        .unwrap();
        assert_eq!(echoed, Some(Message::text("through tokio")));
        drop(guard);
        assert!(!path.exists());
    });
}

/// More than the output's high-water mark (1 MiB) queued in an outbox,
/// read by a peer that keeps reading: the queue drains steadily. (It used
/// to stop once the output drained below the mark, until some unrelated
/// wake-up, such as the 30 s keepalive: a broadcast reader that was only
/// behind was then closed as a slow consumer.)
#[test]
fn an_outbox_queue_beyond_the_high_water_mark_keeps_draining() {
    const MESSAGES: usize = 100;
    const SIZE: usize = 64 << 10;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("q.sock");
    let builder = unixws::Server::builder(path.as_path())
        .expect("address")
        .limits(Limits::default().send_queue(MESSAGES));
    let _server = unixws_testkit::RunningServer::start_async(builder, |mut conn| async move {
        let outbox = conn.outbox()?;
        tokio::spawn(async move {
            for i in 0..MESSAGES {
                let mut payload = vec![0u8; SIZE];
                payload[0] = i as u8;
                if outbox.send(Message::binary(payload)).await.is_err() {
                    return;
                }
            }
        });
        while conn.recv().await?.is_some() {}
        Ok(())
    });
    let mut client = unixws::ClientBuilder::new(path.as_path())
        .expect("address")
        .read_timeout(Duration::from_secs(5))
        .connect()
        .expect("connect");
    for i in 0..MESSAGES {
        match client.recv().expect("the queue keeps draining") {
            Some(Message::Binary(b)) => assert_eq!((b.len(), b[0]), (SIZE, i as u8)),
            other => panic!("message {i}: {other:?}"),
        }
    }
}
