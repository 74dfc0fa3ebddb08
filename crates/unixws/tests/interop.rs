//! Interop over real Unix sockets with real peers in their own processes:
//! Python `websockets` and Node `ws`, as client and as server, against both
//! front ends (the blocking and the tokio client and server) from one body
//! each. Each pair exchanges text, binary, an empty message and a 1 MiB
//! message, and a close with code 4000 and a reason in each direction (see
//! tests/peers/).

// The helpers unwrap as the tests do: a failure there is the test's failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use unixws::{CloseCode, ConnectionInfo, Message, PeerClose, Server};
use unixws_testkit::{node, python, FrontEnd, Process, RunningServer, FRONT_ENDS};

const PEER_TIMEOUT: Duration = Duration::from_secs(30);

type Seen = Arc<Mutex<Vec<(String, Option<PeerClose>)>>>;

/// What the unixws server records of each client: its request target and
/// the close it sent.
fn record(seen: &Seen, info: &ConnectionInfo, close: Option<&PeerClose>) {
    let request = match &info.query {
        Some(q) => format!("{}?{q}", info.path),
        None => info.path.clone(),
    };
    seen.lock().unwrap().push((request, close.cloned()));
}

/// Serves the peers' protocol (echo; `close:REASON` → close 4000 REASON)
/// and records the request and the close each client sent.
fn serve_peer_protocol(path: &Path, front: FrontEnd) -> (RunningServer, Seen) {
    let seen = Seen::default();
    let record_to = seen.clone();
    let builder = Server::builder(path).unwrap();
    let running = match front {
        FrontEnd::Blocking => RunningServer::start(builder, move |conn| {
            let result = (|| {
                while let Some(message) = conn.recv()? {
                    if let Some(reason) = close_request(&message) {
                        return conn.close(4000, &reason);
                    }
                    conn.send(message)?;
                }
                Ok(())
            })();
            record(&record_to, conn.info(), conn.peer_close());
            Ok(result?)
        }),
        FrontEnd::Tokio => RunningServer::start_async(builder, move |mut conn| {
            let record_to = record_to.clone();
            async move {
                let result = async {
                    while let Some(message) = conn.recv().await? {
                        if let Some(reason) = close_request(&message) {
                            return conn.close(4000, &reason).await;
                        }
                        conn.send(message).await?;
                    }
                    Ok(())
                }
                .await;
                record(&record_to, conn.info(), conn.peer_close());
                Ok(result?)
            }
        }),
    };
    (running, seen)
}

/// `close:REASON` asks the server to close with 4000 and REASON.
fn close_request(message: &Message) -> Option<String> {
    match message {
        Message::Text(text) => text.strip_prefix("close:").map(str::to_string),
        _ => None,
    }
}

/// A unixws client of either front end (the tokio one on a runtime of its
/// own), so that the exchange is written once.
enum Client {
    Blocking(unixws::Connection),
    Tokio(tokio::runtime::Runtime, unixws::tokio::Connection),
}

impl Client {
    fn connect(url: &str, front: FrontEnd) -> Client {
        match front {
            FrontEnd::Blocking => Client::Blocking(unixws::connect(url).expect("connect")),
            FrontEnd::Tokio => {
                let runtime = tokio::runtime::Runtime::new().unwrap();
                let conn = runtime
                    .block_on(unixws::tokio::connect(url))
                    .expect("connect");
                Client::Tokio(runtime, conn)
            }
        }
    }

    fn send(&mut self, message: Message) {
        match self {
            Client::Blocking(c) => c.send(message).expect("send"),
            Client::Tokio(rt, c) => rt.block_on(c.send(message)).expect("send"),
        }
    }

    fn recv(&mut self) -> Option<Message> {
        match self {
            Client::Blocking(c) => c.recv().expect("recv"),
            Client::Tokio(rt, c) => rt.block_on(c.recv()).expect("recv"),
        }
    }

    fn close(&mut self, code: u16, reason: &str) {
        match self {
            Client::Blocking(c) => c.close(code, reason).expect("close"),
            Client::Tokio(rt, c) => rt.block_on(c.close(code, reason)).expect("close"),
        }
    }

    fn peer_close(&self) -> Option<&PeerClose> {
        match self {
            Client::Blocking(c) => c.peer_close(),
            Client::Tokio(_, c) => c.peer_close(),
        }
    }
}

fn big_message() -> Vec<u8> {
    (0..1usize << 20).map(|i| (i % 251) as u8).collect()
}

/// The client half of the peers' protocol.
fn client_exchange(socket: &Path, front: FrontEnd) {
    let url = format!("ws+unix://{}:/interop?x=1", socket.display());
    let mut conn = Client::connect(&url, front);
    let messages = [
        Message::text("hello ✓"),
        Message::binary((0..=255u8).collect::<Vec<_>>()),
        Message::text(""),
        Message::binary(big_message()),
    ];
    for m in messages {
        conn.send(m.clone());
        assert_eq!(conn.recv(), Some(m), "{front:?}");
    }
    conn.close(4000, "client-bye");

    let mut conn = Client::connect(&url, front);
    conn.send(Message::text("close:server-bye"));
    assert_eq!(conn.recv(), None, "{front:?}: closed");
    assert_eq!(
        conn.peer_close(),
        Some(&PeerClose {
            code: CloseCode::from(4000),
            reason: "server-bye".into()
        }),
        "{front:?}"
    );
}

/// Both unixws clients against a peer server made by `server`.
fn clients_against(server: impl Fn() -> std::process::Command) {
    for front in FRONT_ENDS {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("peer.sock");
        let mut process = Process::spawn(server().arg(&sock));
        process.wait_for_line("ready", PEER_TIMEOUT);
        client_exchange(&sock, front);
        let (_, lines) = process.terminate(PEER_TIMEOUT);
        for want in ["path /interop?x=1", "closed 4000 client-bye"] {
            assert!(
                lines.iter().any(|l| l == want),
                "{front:?}: the peer server printed {lines:?}"
            );
        }
    }
}

/// A peer client made by `client` against both unixws servers.
fn servers_against(client: impl Fn() -> std::process::Command) {
    for front in FRONT_ENDS {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("uws.sock");
        let (server, seen) = serve_peer_protocol(&sock, front);
        let (ok, lines) = Process::spawn(client().arg(&sock)).finish(PEER_TIMEOUT);
        server.stop();
        assert!(
            ok && lines == ["ok"],
            "{front:?}: peer client output: {lines:?}"
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{front:?}: {seen:?}");
        assert!(
            seen.iter().all(|(path, _)| path == "/interop?x=1"),
            "{front:?}: {seen:?}"
        );
        let client_bye = PeerClose {
            code: CloseCode::from(4000),
            reason: "client-bye".into(),
        };
        assert!(
            seen.iter().any(|(_, c)| c.as_ref() == Some(&client_bye)),
            "{front:?}: {seen:?}"
        );
    }
}

#[test]
fn unixws_clients_to_python_websockets_server() {
    clients_against(|| python("py_server.py"));
}

#[test]
fn python_websockets_client_to_unixws_servers() {
    servers_against(|| python("py_client.py"));
}

#[test]
fn node_ws_client_to_unixws_servers() {
    servers_against(|| node("node_client.js"));
}

#[test]
fn unixws_clients_to_node_ws_server() {
    clients_against(|| node("node_server.js"));
}
