//! The interop suite of `interop.rs` with the tokio client and server:
//! Python `websockets` and Node `ws` in their own processes, both directions,
//! text, binary, empty, 1 MiB and a 4000 close each way (see tests/peers/).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use unixws::tokio::Connection;
use unixws::CloseCode;
use unixws::{Message, PeerClose, Server};
use unixws_testkit::{node, python, Process};

const PEER_TIMEOUT: Duration = Duration::from_secs(30);

type Seen = Arc<Mutex<Vec<(String, Option<PeerClose>)>>>;

async fn peer_protocol(conn: &mut Connection) -> unixws::Result<()> {
    while let Some(message) = conn.recv().await? {
        if let Message::Text(text) = &message {
            if let Some(reason) = text.strip_prefix("close:") {
                return conn.close(4000, reason).await;
            }
        }
        conn.send(message).await?;
    }
    Ok(())
}

async fn unixws_client_exchange(socket: &Path) {
    let url = format!("ws+unix://{}:/interop?x=1", socket.display());
    let mut conn = unixws::tokio::connect(url.as_str()).await.expect("connect");
    let big: Vec<u8> = (0..1usize << 20).map(|i| (i % 251) as u8).collect();
    for m in [
        Message::text("hello ✓"),
        Message::binary((0..=255u8).collect::<Vec<_>>()),
        Message::text(""),
        Message::binary(big),
    ] {
        conn.send(m.clone()).await.expect("send");
        assert_eq!(conn.recv().await.expect("recv"), Some(m));
    }
    conn.close(4000, "client-bye").await.expect("close");

    let mut conn = unixws::tokio::connect(url.as_str())
        .await
        .expect("connect again");
    conn.send(Message::text("close:server-bye"))
        .await
        .expect("send");
    assert_eq!(conn.recv().await.expect("recv until close"), None);
    assert_eq!(
        conn.peer_close(),
        Some(&PeerClose {
            code: CloseCode::from(4000),
            reason: "server-bye".into()
        })
    );
}

async fn tokio_client_against(mut server: std::process::Command) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("peer.sock");
    let mut server = Process::spawn(server.arg(&sock));
    server.wait_for_line("ready", PEER_TIMEOUT);
    unixws_client_exchange(&sock).await;
    let (_, lines) = server.terminate(PEER_TIMEOUT);
    assert!(lines.iter().any(|l| l == "path /interop?x=1"), "{lines:?}");
    assert!(
        lines.iter().any(|l| l == "closed 4000 client-bye"),
        "{lines:?}"
    );
}

async fn tokio_server_against(mut client: std::process::Command) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("uws.sock");
    let server = Server::builder(&sock).unwrap().bind_async().unwrap();
    let shutdown = server.shutdown_handle();
    let seen = Seen::default();
    let record = seen.clone();
    let serving = tokio::spawn(server.serve(move |mut conn| {
        let record = record.clone();
        async move {
            let result = peer_protocol(&mut conn).await;
            let info = conn.info();
            let request = format!("{}?{}", info.path, info.query.clone().unwrap_or_default());
            record
                .lock()
                .unwrap()
                .push((request, conn.peer_close().cloned()));
            Ok(result?)
        }
    }));
    let process = Process::spawn(client.arg(&sock));
    let (ok, lines) = tokio::task::spawn_blocking(move || process.finish(PEER_TIMEOUT))
        .await
        .unwrap();
    shutdown.shutdown();
    serving.await.unwrap().unwrap();
    assert!(ok && lines == ["ok"], "peer client output: {lines:?}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter().all(|(path, _)| path == "/interop?x=1"),
        "{seen:?}"
    );
    let bye = PeerClose {
        code: CloseCode::from(4000),
        reason: "client-bye".into(),
    };
    assert!(
        seen.iter().any(|(_, c)| c.as_ref() == Some(&bye)),
        "{seen:?}"
    );
}

#[tokio::test]
async fn tokio_client_to_python_websockets_server() {
    tokio_client_against(python("py_server.py")).await;
}

#[tokio::test]
async fn python_websockets_client_to_tokio_server() {
    tokio_server_against(python("py_client.py")).await;
}

#[tokio::test]
async fn node_ws_client_to_tokio_server() {
    tokio_server_against(node("node_client.js")).await;
}

#[tokio::test]
async fn tokio_client_to_node_ws_server() {
    tokio_client_against(node("node_server.js")).await;
}
