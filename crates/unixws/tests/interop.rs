//! Interop over real Unix sockets with real peers in their own processes:
//! Python `websockets` and Node `ws`, as client and as server. Each pair
//! exchanges text, binary, an empty message and a 1 MiB message, and a
//! close with code 4000 and a reason in each direction (see tests/peers/).

// The helpers unwrap as the tests do: a failure there is the test's failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use unixws::CloseCode;
use unixws::{Connection, Message, PeerClose, Server};
use unixws_testkit::{node, python, Process, RunningServer};

const PEER_TIMEOUT: Duration = Duration::from_secs(30);

type Seen = Arc<Mutex<Vec<(String, Option<PeerClose>)>>>;

/// Serves the peers' protocol (echo; `close:REASON` → close 4000 REASON)
/// and records the path and the close each client sent.
fn serve_peer_protocol(path: &Path) -> (RunningServer, Seen) {
    let seen = Seen::default();
    let record = seen.clone();
    let server = RunningServer::start(
        Server::builder(path).unwrap(),
        move |conn: &mut Connection| {
            let result = peer_protocol(conn);
            let info = conn.info();
            let request = match &info.query {
                Some(q) => format!("{}?{q}", info.path),
                None => info.path.clone(),
            };
            record
                .lock()
                .unwrap()
                .push((request, conn.peer_close().cloned()));
            Ok(result?)
        },
    );
    (server, seen)
}

fn peer_protocol(conn: &mut Connection) -> unixws::Result<()> {
    while let Some(message) = conn.recv()? {
        if let Message::Text(text) = &message {
            if let Some(reason) = text.strip_prefix("close:") {
                return conn.close(4000, reason);
            }
        }
        conn.send(message)?;
    }
    Ok(())
}

fn big_message() -> Vec<u8> {
    (0..1usize << 20).map(|i| (i % 251) as u8).collect()
}

/// The client half of the peers' protocol, with the unixws client.
fn unixws_client_exchange(socket: &Path) {
    let url = format!("ws+unix://{}:/interop?x=1", socket.display());
    let mut conn = unixws::connect(url.as_str()).expect("connect");
    let messages = [
        Message::text("hello ✓"),
        Message::binary((0..=255u8).collect::<Vec<_>>()),
        Message::text(""),
        Message::binary(big_message()),
    ];
    for m in messages {
        conn.send(m.clone()).expect("send");
        assert_eq!(conn.recv().expect("recv"), Some(m));
    }
    conn.close(4000, "client-bye").expect("close");

    let mut conn = unixws::connect(url.as_str()).expect("connect again");
    conn.send(Message::text("close:server-bye")).expect("send");
    assert_eq!(conn.recv().expect("recv until close"), None);
    assert_eq!(
        conn.peer_close(),
        Some(&PeerClose {
            code: CloseCode::from(4000),
            reason: "server-bye".into()
        })
    );
}

fn assert_server_saw(lines: &[String]) {
    assert!(
        lines.iter().any(|l| l == "path /interop?x=1"),
        "peer server output: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l == "closed 4000 client-bye"),
        "peer server output: {lines:?}"
    );
}

fn assert_unixws_server_saw(seen: &Mutex<Vec<(String, Option<PeerClose>)>>) {
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter().all(|(path, _)| path == "/interop?x=1"),
        "{seen:?}"
    );
    let client_bye = PeerClose {
        code: CloseCode::from(4000),
        reason: "client-bye".into(),
    };
    assert!(
        seen.iter().any(|(_, c)| c.as_ref() == Some(&client_bye)),
        "{seen:?}"
    );
}

/// The unixws client against a peer server started by `server`.
fn unixws_client_against(server: &mut std::process::Command) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("peer.sock");
    let mut server = Process::spawn(server.arg(&sock));
    server.wait_for_line("ready", PEER_TIMEOUT);
    unixws_client_exchange(&sock);
    let (_, lines) = server.terminate(PEER_TIMEOUT);
    assert_server_saw(&lines);
}

/// A peer client started by `client` against the unixws server.
fn unixws_server_against(client: &mut std::process::Command) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("uws.sock");
    let (server, seen) = serve_peer_protocol(&sock);
    let (ok, lines) = Process::spawn(client.arg(&sock)).finish(PEER_TIMEOUT);
    server.stop();
    assert!(ok && lines == ["ok"], "peer client output: {lines:?}");
    assert_unixws_server_saw(&seen);
}

#[test]
fn unixws_client_to_python_websockets_server() {
    unixws_client_against(&mut python("py_server.py"));
}

#[test]
fn python_websockets_client_to_unixws_server() {
    unixws_server_against(&mut python("py_client.py"));
}

#[test]
fn node_ws_client_to_unixws_server() {
    unixws_server_against(&mut node("node_client.js"));
}

#[test]
fn unixws_client_to_node_ws_server() {
    unixws_client_against(&mut node("node_server.js"));
}
