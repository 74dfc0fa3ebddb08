//! An axum router serving WebSockets on a Unix socket (feature `axum`).
//!
//! The socket is bound the unixws way (mode 0660, stale file replaced, file
//! removed on exit); the access policy lets in this user only, answering
//! 403 before the router; `/ws` greets each client with its kernel-checked
//! credentials, then echoes; `/whoami` says the same over plain HTTP. On
//! Ctrl-C or SIGTERM, open WebSockets are closed with 1001 and drained
//! before the program exits.
//!
//! ```text
//! cargo run -p unixws --features axum --example axum_service -- /tmp/axum.sock
//! unixws connect ws+unix:///tmp/axum.sock:/ws
//! curl --unix-socket /tmp/axum.sock http://localhost/whoami
//! ```

use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use unixws::axum::{AccessPolicyLayer, Listener, Shutdown, WebSocketUpgrade};
use unixws::{AccessPolicy, BindOptions, Message, Peer};

/// The peer as one line of JSON: `{"uid":..,"gid":..,"pid":..,"groups":[..]}`.
fn describe(peer: &Peer) -> String {
    match peer.credentials() {
        Some(c) => format!(
            r#"{{"uid":{},"gid":{},"pid":{},"groups":{:?}}}"#,
            c.uid, c.gid, c.pid, c.groups
        ),
        None => format!(r#"{{"peer":"{peer}"}}"#),
    }
}

async fn ws(upgrade: WebSocketUpgrade, ConnectInfo(peer): ConnectInfo<Peer>) -> Response {
    upgrade.on_upgrade(move |mut conn| async move {
        conn.send(Message::text(describe(&peer))).await?;
        while let Some(message) = conn.recv().await? {
            conn.send(message).await?;
        }
        Ok(())
    })
}

async fn whoami(ConnectInfo(peer): ConnectInfo<Peer>) -> String {
    describe(&peer) + "\n"
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/axum.sock".into());
    let shutdown = Shutdown::new()?;
    let app = Router::new()
        .route("/ws", get(ws))
        .route("/whoami", get(whoami))
        .layer(AccessPolicyLayer::new(
            AccessPolicy::new().allow_current_user(),
        ))
        .layer(Extension(shutdown.clone()));
    let listener = Listener::bind(path.as_str(), &BindOptions::new().mode(0o660))?;
    println!("listening on {}", listener.address());
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    };
    axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(shutdown.on(stop))
        .await?;
    let drained = shutdown.drain(Duration::from_secs(10)).await;
    println!("stopped; every WebSocket closed: {drained}");
    Ok(())
}
