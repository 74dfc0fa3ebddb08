//! The tokio server over real sockets: keepalive, graceful shutdown
//! that flushes queued messages, bounded queues that close a slow consumer
//! without slowing the others, and 2,000 concurrent connections.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use unixws::tokio::{Connection, Outbox};
use unixws::CloseCode;
use unixws::{Error, Limits, Message, OutboxError, Server};
use unixws_testkit::{assert_echo_async, wait_until, RunningServer};

/// A server whose handlers hand their outbox to the test and then just read.
fn start_outbox_server(path: &Path, limits: Limits) -> (RunningServer, Arc<Mutex<Vec<Outbox>>>) {
    let outboxes: Arc<Mutex<Vec<Outbox>>> = Arc::default();
    let record = outboxes.clone();
    let builder = Server::builder(path).unwrap().limits(limits);
    let server = RunningServer::start_async(builder, move |mut conn: Connection| {
        record.lock().unwrap().push(conn.outbox().unwrap());
        async move {
            while conn.recv().await?.is_some() {}
            Ok(())
        }
    });
    (server, outboxes)
}

fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = Limits::default();
    f(&mut l);
    l
}

// The message and connection limits run over both front ends in limits.rs.

#[tokio::test]
async fn keepalive_closes_a_peer_that_stops_answering() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("k.sock");
    let server = RunningServer::echo_async(
        &sock,
        limits(|l| {
            l.ping_interval = Some(Duration::from_millis(200));
            l.pong_timeout = Duration::from_millis(200);
        }),
    );
    let path = sock.clone();
    let (bytes, waited) = tokio::task::spawn_blocking(move || unixws_testkit::silent_peer(&path))
        .await
        .unwrap();
    assert_eq!(bytes.first(), Some(&0x89), "pinged first: {bytes:?}");
    // 400 ms (ping + pong) less the skew between the server's clocks,
    // which start at its end of the handshake, and ours.
    assert!(waited >= Duration::from_millis(350), "{waited:?}");
    assert!(
        unixws_testkit::wait_until(Duration::from_secs(5), || server.stats().keepalive_timeouts
            == 1),
        "the keepalive drop is counted: {:?}",
        server.stats()
    );
    server.stop_async().await;
}

#[tokio::test]
async fn shutdown_flushes_queued_messages_then_closes_with_1001() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let (server, outboxes) = start_outbox_server(&sock, Limits::default());
    let mut client = unixws::tokio::connect(&sock).await.unwrap();
    let outbox = loop {
        if let Some(o) = outboxes.lock().unwrap().first().cloned() {
            break o;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    for i in 0..100 {
        outbox
            .try_send(Message::text(format!("queued {i}")))
            .unwrap();
    }
    server.shutdown_handle().shutdown();
    for i in 0..100 {
        assert_eq!(
            client.recv().await.unwrap(),
            Some(Message::text(format!("queued {i}")))
        );
    }
    assert_eq!(client.recv().await.unwrap(), None);
    assert_eq!(client.peer_close().map(|c| c.code), Some(CloseCode::Away));
    server.stop_async().await;
    assert!(!sock.exists(), "socket file removed");
}

#[tokio::test]
async fn slow_consumer_is_closed_at_its_queue_bound_and_others_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("b.sock");
    let bounded = limits(|l| {
        l.send_queue = 8;
        l.close_timeout = Duration::from_millis(500);
        l.write_timeout = None;
    });
    let (server, outboxes) = start_outbox_server(&sock, bounded.clone());
    let slow = unixws::ClientBuilder::new(&sock)
        .unwrap()
        .limits(bounded.clone())
        .connect_async()
        .await
        .unwrap();
    let mut fast = unixws::ClientBuilder::new(&sock)
        .unwrap()
        .limits(bounded)
        .connect_async()
        .await
        .unwrap();
    while outboxes.lock().unwrap().len() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (slow_box, fast_box) = {
        let o = outboxes.lock().unwrap();
        (o[0].clone(), o[1].clone())
    };
    // 64 KiB messages fill the slow client's socket buffer, then its queue.
    let chunk = Message::binary(vec![0u8; 64 << 10]);
    let started = Instant::now();
    let mut full = false;
    for i in 0..10_000 {
        match slow_box.try_send(chunk.clone()) {
            Ok(()) => {}
            Err(OutboxError::Full) => {
                full = true;
                break;
            }
            Err(OutboxError::Closed) => panic!("closed before the queue filled (after {i})"),
        }
        // The fast client keeps getting its messages meanwhile.
        fast_box
            .try_send(Message::text(format!("fast {i}")))
            .unwrap();
        assert_eq!(
            fast.recv().await.unwrap(),
            Some(Message::text(format!("fast {i}")))
        );
        tokio::task::yield_now().await;
    }
    assert!(full, "the slow consumer's queue never filled");
    // The slow connection goes away within the close timeout.
    while slow_box.try_send(Message::text("x")) != Err(OutboxError::Closed) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "slow consumer never closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.stats().slow_consumers, 1);
    fast_box.try_send(Message::text("after")).unwrap();
    assert_eq!(fast.recv().await.unwrap(), Some(Message::text("after")));
    drop(slow);
    fast.close(1000, "").await.unwrap();
    server.stop_async().await;
}

/// Raises this process's descriptor limit: 2,000 connections need 4,000+
/// descriptors here, since both ends live in the test process.
fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    assert!(
        lim.rlim_cur >= want,
        "cannot raise RLIMIT_NOFILE to {want} (hard limit {})",
        lim.rlim_max
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_connections_all_get_their_echo() {
    const N: usize = 2000;
    raise_nofile(3 * N as u64 + 256);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("many.sock");
    let server = RunningServer::echo_async(
        &sock,
        limits(|l| {
            l.ping_interval = None;
            l.max_connections = N;
        }),
    );
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        let sock = sock.clone();
        clients.push(tokio::spawn(async move {
            unixws::ClientBuilder::new(&sock)
                .unwrap()
                .retry(unixws::RetryPolicy::attempts(10))
                .connect_async()
                .await
        }));
    }
    let mut conns = Vec::with_capacity(N);
    for c in clients {
        conns.push(c.await.unwrap().expect("connect"));
    }
    // Every connection is open at once; now one message each.
    let mut echoes = Vec::with_capacity(N);
    for (i, mut conn) in conns.into_iter().enumerate() {
        echoes.push(tokio::spawn(async move {
            let text = format!("message {i}");
            conn.send(Message::text(text.clone())).await.unwrap();
            let got = conn.recv().await.unwrap();
            (got == Some(Message::text(text)), conn)
        }));
    }
    let mut ok = 0;
    let mut keep = Vec::with_capacity(N);
    for e in echoes {
        let (same, conn) = e.await.unwrap();
        ok += usize::from(same);
        keep.push(conn);
    }
    assert_eq!(ok, N);
    drop(keep);
    server.stop_async().await;
}

#[tokio::test]
async fn an_idle_connection_that_released_its_buffers_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("park.sock");
    let server = RunningServer::echo_async(&sock, limits(|_| {}));
    let mut conn = unixws::tokio::connect(&sock).await.unwrap();
    let big = Message::binary(vec![3u8; 1 << 20]);
    for round in 0..3 {
        assert_echo_async(&mut conn, &format!("small {round}")).await;
        conn.send(big.clone()).await.unwrap();
        assert_eq!(conn.recv().await.unwrap(), Some(big.clone()));
        // Long enough for the server connection to hand its buffers back.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    conn.close(1000, "").await.unwrap();
    server.stop_async().await;
}

#[tokio::test]
async fn a_fragmented_message_split_by_an_idle_pause_arrives_whole() {
    use unixws::tungstenite::protocol::frame::coding::{Data, OpCode};
    use unixws::tungstenite::protocol::frame::Frame;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("frag.sock");
    let server = RunningServer::echo_async(&sock, limits(|_| {}));
    let path = sock.clone();
    let echoed = tokio::task::spawn_blocking(move || {
        let mut conn = unixws::connect(&path).unwrap();
        conn.send(Message::Frame(Frame::message(
            b"first half, ".to_vec(),
            OpCode::Data(Data::Text),
            false,
        )))
        .unwrap();
        std::thread::sleep(Duration::from_millis(150));
        conn.send(Message::Frame(Frame::message(
            b"second half".to_vec(),
            OpCode::Data(Data::Continue),
            true,
        )))
        .unwrap();
        let echoed = conn.recv().unwrap();
        conn.close(1000, "").unwrap();
        echoed
    })
    .await
    .unwrap();
    assert_eq!(echoed, Some(Message::text("first half, second half")));
    server.stop_async().await;
}

#[tokio::test]
async fn parked_connections_keep_answering_pings_and_queued_messages() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ping.sock");
    let (server, outboxes) = start_outbox_server(
        &sock,
        limits(|l| {
            l.ping_interval = Some(Duration::from_millis(100));
            l.pong_timeout = Duration::from_millis(300);
        }),
    );
    let mut client = unixws::ClientBuilder::new(&sock)
        .unwrap()
        .read_timeout(Duration::from_millis(800))
        .connect_async()
        .await
        .unwrap();
    // Several ping rounds pass while the server side parks in between; the
    // client answers inside recv, so the server must not give up on it.
    assert!(matches!(client.recv().await, Err(Error::Timeout { .. })));
    let outbox = outboxes.lock().unwrap()[0].clone();
    outbox.try_send(Message::text("while parked")).unwrap();
    assert_eq!(
        client.recv().await.unwrap(),
        Some(Message::text("while parked"))
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.shutdown_handle().shutdown();
    assert_eq!(client.recv().await.unwrap(), None);
    assert_eq!(client.peer_close().map(|c| c.code), Some(CloseCode::Away));
    server.stop_async().await;
}

#[tokio::test]
async fn idle_timeout_closes_with_1001() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("idle.sock");
    let server = RunningServer::echo_async(
        &sock,
        limits(|l| l.idle_timeout = Some(Duration::from_millis(200))),
    );
    let mut conn = unixws::tokio::connect(&sock).await.unwrap();
    assert_echo_async(&mut conn, "then silence").await;
    assert_eq!(conn.recv().await.unwrap(), None);
    let close = conn.peer_close().unwrap();
    assert_eq!(
        (close.code, close.reason.as_str()),
        (CloseCode::Away, "idle timeout")
    );
    server.stop_async().await;
}

#[tokio::test]
async fn a_peer_that_never_answers_our_close_is_dropped_after_the_close_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("mute.sock");
    let server = RunningServer::echo_async(
        &sock,
        limits(|l| {
            l.close_timeout = Duration::from_millis(200);
            l.drain_timeout = Duration::from_secs(10);
        }),
    );
    let path = sock.clone();
    let raw = tokio::task::spawn_blocking(move || {
        let stream = UnixStream::connect(&path).unwrap();
        unixws::tungstenite::client("ws://localhost/", stream)
            .unwrap()
            .0
            .into_inner()
    })
    .await
    .unwrap();
    let started = Instant::now();
    server.shutdown_handle().shutdown();
    server.stop_async().await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200),
        "did not wait for the close answer: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "the drain waited for a mute peer: {waited:?}"
    );
    let bytes = tokio::task::spawn_blocking(move || {
        let mut raw = raw;
        raw.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut bytes = Vec::new();
        raw.read_to_end(&mut bytes).unwrap();
        bytes
    })
    .await
    .unwrap();
    assert_eq!(
        &bytes[..4],
        &[0x88, 0x16, 0x03, 0xe9],
        "a close frame with 1001 came first"
    );
}

/// Reads one frame from the server: (opcode, payload).
fn read_frame(s: &mut UnixStream) -> (u8, Vec<u8>) {
    let (first, payload) = unixws_testkit::read_frame(s).unwrap();
    (first & 0x0f, payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_back_to_back_survive_the_move_to_large_reads() {
    // The server starts with small reads and moves to large ones after a
    // large frame; with messages back to back there is no pause between
    // frames, so the frame in progress is carried over to the rebuilt
    // tungstenite. Every byte of every message must come back in order.
    // (Raw socket, writer and reader apart: an echo of large messages
    // through one connection object would deadlock on full buffers.)
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let _server = RunningServer::echo_async(&sock, limits(|l| l.max_message_size = 4 << 20));
    let messages: Vec<Vec<u8>> = (0..24u8)
        .map(|i| {
            let size = if i % 3 == 0 {
                100
            } else {
                (1 << 20) + usize::from(i) * 977
            };
            (0..size).map(|j| (j as u8).wrapping_mul(7) ^ i).collect()
        })
        .collect();
    let checked = tokio::task::spawn_blocking(move || {
        let mut s = unixws_testkit::raw_upgraded(&sock);
        let mut writer = s.try_clone().unwrap();
        let frames: Vec<Vec<u8>> = messages
            .iter()
            .map(|m| unixws_testkit::client_frame(0x82, m, true))
            .collect();
        let writing = std::thread::spawn(move || {
            for f in frames {
                writer.write_all(&f).unwrap();
            }
        });
        for (i, want) in messages.iter().enumerate() {
            let (opcode, got) = read_frame(&mut s);
            assert_eq!(opcode, 2, "message {i}");
            assert!(
                got == *want,
                "message {i} differs (len {} vs {})",
                got.len(),
                want.len()
            );
        }
        writing.join().unwrap();
    });
    checked.await.unwrap();
}

#[tokio::test]
async fn fed_messages_go_out_when_recv_waits_or_on_flush() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let server = Server::builder(&sock).unwrap().bind_async().unwrap();
    let stop = server.shutdown_handle();
    let serving = tokio::spawn(server.serve(|mut conn: Connection| async move {
        while let Some(m) = conn.recv().await? {
            if m.to_text().ok() == Some("burst") {
                // Fed, then flushed explicitly, with no recv in between.
                for i in 0..100 {
                    conn.feed(Message::text(format!("{i}"))).await?;
                }
                conn.flush().await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            } else {
                // Fed; recv then finds nothing to read and flushes.
                conn.feed(m).await?;
            }
        }
        Ok(())
    }));
    let mut client = unixws::tokio::connect(&sock).await.unwrap();
    for i in 0..3 {
        client
            .send(Message::text(format!("echo {i}")))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), client.recv())
            .await
            .expect("a fed echo is flushed when the server waits for input");
        assert_eq!(echoed.unwrap(), Some(Message::text(format!("echo {i}"))));
    }
    client.send(Message::text("burst")).await.unwrap();
    for i in 0..100 {
        let got = tokio::time::timeout(Duration::from_secs(5), client.recv())
            .await
            .expect("flush sends everything fed");
        assert_eq!(got.unwrap(), Some(Message::text(format!("{i}"))));
    }
    stop.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(15), serving).await;
}

/// A 403 from the application's own gate is not blamed on the access
/// policy: the client gets the status and the body, and no hint to ask for
/// a policy change that would not help.
#[tokio::test]
async fn a_gate_403_carries_no_access_policy_hint() {
    use unixws::tungstenite::handshake::server::ErrorResponse;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gated.sock");
    let server = Server::builder(&path).unwrap().bind_async().unwrap();
    let shutdown = server.shutdown_handle();
    let task = tokio::spawn(server.serve_gated(
        |_request, _peer| async {
            let mut refusal = ErrorResponse::new(Some("tickets only\n".to_string()));
            *refusal.status_mut() = unixws::tungstenite::http::StatusCode::FORBIDDEN;
            Err::<unixws::tokio::Admitted<()>, _>(refusal)
        },
        |_conn, ()| async { Ok(()) },
    ));
    let err = unixws::tokio::connect(&path).await.unwrap_err();
    match &err {
        Error::HandshakeRejected {
            status: 403,
            body,
            refused_uid: None,
            ..
        } => assert_eq!(body, "tickets only"),
        other => panic!("expected a plain 403, got {other:?}"),
    }
    assert!(!err.to_string().contains("policy"), "{err}");
    shutdown.shutdown();
    task.await.unwrap().unwrap();
}

/// Outside a runtime `bind_async` is an error, not a panic, and binds
/// nothing.
#[test]
fn bind_async_outside_a_runtime_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-runtime.sock");
    let err = Server::builder(&path).unwrap().bind_async().unwrap_err();
    assert!(matches!(err, Error::NoRuntime { .. }), "{err:?}");
    assert!(err.to_string().contains("tokio runtime"), "{err}");
    assert!(!path.exists(), "nothing was bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_timeout_waits_for_a_reader_that_reads_and_closes_one_that_stalls() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("t.sock");
    let bounded = limits(|l| {
        l.send_queue = 4;
        l.close_timeout = Duration::from_millis(300);
    });
    let (server, outboxes) = start_outbox_server(&sock, bounded.clone());
    let connect = || {
        unixws::ClientBuilder::new(&sock)
            .unwrap()
            .limits(bounded.clone())
            .connect()
    };
    // A blocking client that reads slowly, on a thread of its own.
    let slow_reader = std::thread::spawn({
        let mut conn = connect().unwrap();
        move || {
            for i in 0..300 {
                let m = conn.recv().unwrap().unwrap();
                assert_eq!(m.len(), 64 << 10, "message {i}");
                std::thread::sleep(Duration::from_millis(1));
            }
            conn
        }
    });
    let _stalled = connect().unwrap();
    while outboxes.lock().unwrap().len() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (reading, stalled) = {
        let o = outboxes.lock().unwrap();
        (o[0].clone(), o[1].clone())
    };
    let chunk = Message::binary(vec![1u8; 64 << 10]);
    // 300 × 64 KiB through a queue of 4: it waits, and never gives up on
    // a reader that takes one every millisecond or so (5 s of room to make:
    // a loaded machine may not run the reader's thread for a while).
    for i in 0..300 {
        reading
            .send_timeout(chunk.clone(), Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
    }
    slow_reader.join().expect("the slow reader got all 300");
    // The stalled one fills its socket, its output and its queue, then
    // makes no room for 200 ms: 1013, and no more waiting for it.
    let started = Instant::now();
    let mut result = Ok(());
    for _ in 0..1000 {
        result = stalled
            .send_timeout(chunk.clone(), Duration::from_millis(200))
            .await;
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(OutboxError::Full));
    let again = Instant::now();
    assert_eq!(
        stalled
            .send_timeout(chunk.clone(), Duration::from_secs(10))
            .await,
        Err(OutboxError::Full),
        "a reader found too slow is not waited for again"
    );
    assert!(again.elapsed() < Duration::from_secs(1));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(wait_until(Duration::from_secs(10), || server
        .stats()
        .slow_consumers
        == 1));
    server.stop_async().await;
}
