//! Server limits, each crossed over a real socket: message size (1009),
//! connection count (503), handshake timeout, header bytes (431), and the
//! blocking outbox's send queue under `send_timeout` (1013).

// The helpers unwrap as the tests do: a failure there is the test's failure.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use unixws::CloseCode;
use unixws::{Error, Limits, Message};
use unixws_testkit::{assert_echo, RunningServer, FRONT_ENDS};

fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = Limits::default();
    f(&mut l);
    l
}

#[test]
fn message_over_max_closes_with_1009_and_others_keep_working() {
    for front in FRONT_ENDS {
        eprintln!("front end: {front:?}"); // shown with a failure
        let dir = tempfile::tempdir().unwrap();
        let server = RunningServer::echo_on(
            front,
            dir.path().join("l.sock"),
            limits(|l| l.max_message_size = 1024),
        );
        let mut bystander = unixws::connect(server.addr()).unwrap();
        let mut offender = unixws::connect(server.addr()).unwrap();
        assert_echo(&mut offender, "small is fine");
        offender.send(Message::binary(vec![7u8; 2000])).unwrap();
        assert_eq!(
            offender.recv().unwrap(),
            None,
            "the server closes the connection"
        );
        assert_eq!(offender.peer_close().map(|c| c.code), Some(CloseCode::Size));
        assert_echo(&mut bystander, "still here");
        let mut newcomer = unixws::connect(server.addr()).unwrap();
        assert_echo(&mut newcomer, "and accepting");
        assert_eq!(server.stats().protocol_errors, 1);
    }
}

#[test]
fn reassembled_fragments_count_towards_max_message() {
    for front in FRONT_ENDS {
        eprintln!("front end: {front:?}"); // shown with a failure
        use unixws::tungstenite::protocol::frame::coding::{Data, OpCode};
        use unixws::tungstenite::protocol::frame::Frame;
        let dir = tempfile::tempdir().unwrap();
        let server = RunningServer::echo_on(
            front,
            dir.path().join("f.sock"),
            limits(|l| l.max_message_size = 1024),
        );
        let mut conn = unixws::connect(server.addr()).unwrap();
        conn.feed(Message::Frame(Frame::message(
            vec![1u8; 600],
            OpCode::Data(Data::Binary),
            false,
        )))
        .unwrap();
        conn.feed(Message::Frame(Frame::message(
            vec![1u8; 600],
            OpCode::Data(Data::Continue),
            true,
        )))
        .unwrap();
        conn.flush().unwrap();
        assert_eq!(conn.recv().unwrap(), None);
        assert_eq!(conn.peer_close().map(|c| c.code), Some(CloseCode::Size));
    }
}

#[test]
fn connection_over_max_connections_gets_503_and_others_are_unaffected() {
    for front in FRONT_ENDS {
        eprintln!("front end: {front:?}"); // shown with a failure
        let dir = tempfile::tempdir().unwrap();
        let server = RunningServer::echo_on(
            front,
            dir.path().join("c.sock"),
            limits(|l| l.max_connections = 2),
        );
        let mut a = unixws::connect(server.addr()).unwrap();
        let mut b = unixws::connect(server.addr()).unwrap();
        assert_echo(&mut a, "a");
        let err = unixws::connect(server.addr()).unwrap_err();
        assert!(matches!(err, Error::Busy { .. }), "{err:?}");
        assert!(err.to_string().contains("503"), "{err}");
        assert_eq!(server.stats().refused_busy, 1);
        assert_echo(&mut a, "a again");
        assert_echo(&mut b, "b");
        a.close(1000, "").unwrap();
        drop(a);
        // The slot is free again once the first connection is gone.
        let mut c = unixws_testkit_retry(server.addr());
        assert_echo(&mut c, "c");
    }
}

fn unixws_testkit_retry(addr: &unixws::Address) -> unixws::Connection {
    unixws::ClientBuilder::new(addr)
        .unwrap()
        .retry(unixws::RetryPolicy::attempts(20))
        .connect()
        .expect("a freed slot is usable")
}

#[test]
fn silent_client_is_dropped_after_the_handshake_timeout() {
    for front in FRONT_ENDS {
        eprintln!("front end: {front:?}"); // shown with a failure
        let dir = tempfile::tempdir().unwrap();
        let timeout = Duration::from_millis(300);
        let server = RunningServer::echo_on(
            front,
            dir.path().join("t.sock"),
            limits(|l| l.handshake_timeout = timeout),
        );
        let path = server.addr().unix_path().unwrap().to_path_buf();
        let started = Instant::now();
        let mut silent = UnixStream::connect(&path).unwrap();
        silent
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buf = [0u8; 64];
        let n = silent
            .read(&mut buf)
            .expect("the server closes, not our read timeout");
        assert_eq!(n, 0, "no response is sent to a silent client");
        assert!(started.elapsed() >= timeout, "dropped before the timeout");
        let mut ok = unixws::connect(server.addr()).unwrap();
        assert_echo(&mut ok, "after");
    }
}

/// Sends `request` on a raw socket and returns all the server answers.
fn raw_exchange(server: &RunningServer, request: &str) -> String {
    let mut raw = UnixStream::connect(server.addr().unix_path().unwrap()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may stop reading half-way; a write error then is expected.
    let _ = raw.write_all(request.as_bytes());
    let mut response = String::new();
    let _ = raw.read_to_string(&mut response);
    response
}

/// The tests' upgrade request, with `extra` header lines and the
/// `Sec-WebSocket-Version` given.
fn upgrade_request(version: u8, extra: &str) -> String {
    unixws_testkit::upgrade_request("/", extra).replace(
        "Sec-WebSocket-Version: 13",
        &format!("Sec-WebSocket-Version: {version}"),
    )
}

#[test]
fn oversized_handshake_gets_431() {
    for front in FRONT_ENDS {
        eprintln!("front end: {front:?}"); // shown with a failure
        let dir = tempfile::tempdir().unwrap();
        let server = RunningServer::echo_on(
            front,
            dir.path().join("h.sock"),
            limits(|l| l.max_header_bytes = 1024),
        );
        let big = format!("X-Big: {}\r\n", "a".repeat(4096));
        let response = raw_exchange(&server, &upgrade_request(13, &big));
        assert!(response.starts_with("HTTP/1.1 431"), "{response:?}");
    }
}

#[test]
fn bad_version_gets_426_with_the_supported_version() {
    for front in FRONT_ENDS {
        eprintln!("front end: {front:?}"); // shown with a failure
        let dir = tempfile::tempdir().unwrap();
        let server = RunningServer::echo_on(front, dir.path().join("v.sock"), Limits::default());
        let response = raw_exchange(&server, &upgrade_request(8, ""));
        assert!(response.starts_with("HTTP/1.1 426"), "{response:?}");
        assert!(
            response.contains("Sec-WebSocket-Version: 13"),
            "{response:?}"
        );
    }
}

#[test]
fn too_many_header_lines_get_431() {
    for front in FRONT_ENDS {
        eprintln!("front end: {front:?}"); // shown with a failure
        let dir = tempfile::tempdir().unwrap();
        let server = RunningServer::echo_on(
            front,
            dir.path().join("n.sock"),
            limits(|l| l.max_headers = 10),
        );
        let many: String = (0..20).map(|i| format!("X-H{i}: v\r\n")).collect();
        let response = raw_exchange(&server, &upgrade_request(13, &many));
        assert!(response.starts_with("HTTP/1.1 431"), "{response:?}");
    }
}

#[test]
fn blocking_send_timeout_waits_for_a_reader_and_closes_one_that_stalls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.sock");
    let outboxes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = outboxes.clone();
    // A thread blocked writing to a stalled peer notices nothing else:
    // the write timeout ends that connection.
    let limits = Limits::default()
        .send_queue(4)
        .close_timeout(Duration::from_millis(300))
        .write_timeout(Some(Duration::from_millis(500)));
    let builder = unixws::Server::builder(path.as_path())
        .expect("address")
        .limits(limits.clone());
    let server = RunningServer::start(builder, move |conn| {
        record.lock().expect("lock").push(conn.outbox()?);
        while conn.recv()?.is_some() {}
        Ok(())
    });
    let connect = || {
        unixws::ClientBuilder::new(path.as_path())
            .expect("address")
            .limits(limits.clone())
            .connect()
            .expect("connect")
    };
    let mut reader = connect();
    let _stalled = connect();
    assert!(unixws_testkit::wait_until(Duration::from_secs(10), || {
        outboxes.lock().expect("lock").len() == 2
    }));
    let (reading, stalled) = {
        let o = outboxes.lock().expect("lock");
        (o[0].clone(), o[1].clone())
    };
    let chunk = Message::binary(vec![2u8; 64 << 10]);
    let sender = std::thread::spawn({
        let chunk = chunk.clone();
        move || {
            for i in 0..200 {
                reading
                    .send_timeout(chunk.clone(), Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("message {i}: {e}"));
            }
        }
    });
    for _ in 0..200 {
        assert_eq!(reader.recv().expect("recv"), Some(chunk.clone()));
        std::thread::sleep(Duration::from_millis(1));
    }
    sender
        .join()
        .expect("every message went to the reader that reads");
    let mut result = Ok(());
    for _ in 0..1000 {
        result = stalled.send_timeout(chunk.clone(), Duration::from_millis(200));
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(unixws::OutboxError::Full));
    let again = Instant::now();
    assert_eq!(
        stalled.send_timeout(chunk, Duration::from_secs(10)),
        Err(unixws::OutboxError::Full)
    );
    assert!(
        again.elapsed() < Duration::from_secs(1),
        "not waited for again"
    );
    // The stalled connection is over (closed as a slow consumer, or by the
    // write timeout while its thread was blocked writing to it).
    assert!(unixws_testkit::wait_until(Duration::from_secs(10), || {
        server.stats().open == 1
    }));
}
