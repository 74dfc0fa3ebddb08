//! What the handshake carries (subprotocol, headers, Host, path and query)
//! and what keeps connections honest afterwards: keepalive pings that close
//! a silent peer, and the idle timeout.

// The helpers unwrap as the tests do: a failure there is the test's failure.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use unixws::CloseCode;
use unixws::{ClientBuilder, ConnectionInfo, Limits, Server};
use unixws_testkit::{assert_echo, RunningServer};

fn recording_server(
    builder: unixws::ServerBuilder,
) -> (RunningServer, Arc<Mutex<Vec<ConnectionInfo>>>) {
    let seen: Arc<Mutex<Vec<ConnectionInfo>>> = Arc::default();
    let record = seen.clone();
    let server = RunningServer::start(builder, move |conn| {
        record.lock().unwrap().push(conn.info().clone());
        unixws_testkit::echo(conn)
    });
    (server, seen)
}

#[test]
fn subprotocol_headers_host_path_and_query_reach_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let builder = Server::builder(dir.path().join("h.sock"))
        .unwrap()
        .subprotocols(["chat.v2", "chat.v1"]);
    let (server, seen) = recording_server(builder);
    let url = server.addr().with_resource("/room/7?user=ann").unwrap();
    let mut conn = ClientBuilder::new(&url)
        .unwrap()
        .header("Authorization", "Bearer s3cret")
        .subprotocol("chat.v1")
        .subprotocol("chat.v2")
        .connect()
        .unwrap();
    assert_eq!(
        conn.info().subprotocol.as_deref(),
        Some("chat.v2"),
        "the server's preference wins"
    );
    assert_echo(&mut conn, "hi");
    conn.close(1000, "").unwrap();

    let mut overridden = ClientBuilder::new(server.addr())
        .unwrap()
        .host("app.internal")
        .connect()
        .unwrap();
    assert_echo(&mut overridden, "hi");
    overridden.close(1000, "").unwrap();
    drop(server);

    let seen = seen.lock().unwrap();
    let first = &seen[0];
    assert_eq!(first.path, "/room/7");
    assert_eq!(first.query.as_deref(), Some("user=ann"));
    assert_eq!(first.subprotocol.as_deref(), Some("chat.v2"));
    assert_eq!(first.headers["authorization"], "Bearer s3cret");
    assert_eq!(
        first.headers["host"], "localhost",
        "the default Host over a Unix socket"
    );
    assert_eq!(seen[1].headers["host"], "app.internal");
    assert_eq!(seen[1].subprotocol, None);
}

#[test]
fn a_peer_that_stops_answering_is_closed_after_ping_interval_plus_pong_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut limits = Limits::default();
    limits.ping_interval = Some(Duration::from_millis(200));
    limits.pong_timeout = Duration::from_millis(200);
    let server = RunningServer::echo(dir.path().join("k.sock"), limits);
    let path = server.addr().unix_path().unwrap().to_path_buf();

    // Complete the handshake, then never read or answer again.
    let (bytes, waited) = unixws_testkit::silent_peer(&path);
    // 400 ms (ping + pong) less the skew between the server's clocks,
    // which start at its end of the handshake, and ours.
    assert!(
        waited >= Duration::from_millis(350),
        "closed too early: {waited:?}"
    );
    assert_eq!(
        bytes.first(),
        Some(&0x89),
        "the server pinged first: {bytes:?}"
    );

    // A peer that answers pings (any unixws client does, inside recv) stays.
    let mut live = ClientBuilder::new(server.addr())
        .unwrap()
        .read_timeout(Duration::from_millis(900))
        .connect()
        .unwrap();
    assert!(
        matches!(live.recv(), Err(unixws::Error::Timeout { .. })),
        "no data, but still open"
    );
    assert_echo(&mut live, "still alive after several pings");
}

#[test]
fn idle_connections_are_closed_with_1001() {
    let dir = tempfile::tempdir().unwrap();
    let mut limits = Limits::default();
    limits.idle_timeout = Some(Duration::from_millis(300));
    let server = RunningServer::echo(dir.path().join("i.sock"), limits);
    let mut conn = unixws::connect(server.addr()).unwrap();
    assert_echo(&mut conn, "active");
    let started = Instant::now();
    assert_eq!(conn.recv().unwrap(), None);
    assert!(started.elapsed() >= Duration::from_millis(250));
    let close = conn.peer_close().unwrap();
    assert_eq!(
        (close.code, close.reason.as_str()),
        (CloseCode::Away, "idle timeout")
    );
}

/// The blocking twin of `async_api::the_close_timeout_counts_from_the_close`:
/// a close fed 300 ms after the last read, with a 200 ms close timeout,
/// still waits for the peer's answer 100 ms later.
#[test]
fn a_fed_close_times_out_from_when_it_was_fed() {
    let dir = tempfile::tempdir().unwrap();
    let (told, answer) = std::sync::mpsc::channel();
    let told = Mutex::new(told);
    let builder = Server::builder(dir.path().join("fed-close.sock"))
        .unwrap()
        .limits(Limits::default().close_timeout(Duration::from_millis(200)));
    let server = RunningServer::start(builder, move |conn| {
        conn.recv()?;
        std::thread::sleep(Duration::from_millis(300)); // the handler's work
        conn.feed(unixws::Message::Close(None))?;
        while conn.recv()?.is_some() {}
        told.lock()
            .unwrap()
            .send(conn.peer_close().map(|c| c.code))
            .unwrap();
        Ok(())
    });
    let path = server.addr().unix_path().unwrap().to_path_buf();
    let mut s = unixws_testkit::raw_upgraded(&path);
    use std::io::Write;
    s.write_all(&unixws_testkit::client_frame(0x81, b"work on this", true))
        .unwrap();
    let (first, _) = unixws_testkit::read_frame(&mut s).unwrap();
    assert_eq!(first, 0x88, "the server's close");
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(&unixws_testkit::client_frame(
        0x88,
        &1000u16.to_be_bytes(),
        true,
    ))
    .unwrap();
    let got = answer.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(got, Some(CloseCode::Normal));
}
