//! `unixws-bench-peers KIND ADDR`: an echo server built on another Rust
//! WebSocket crate, each with its defaults, so that `unixws bench --peers`
//! compares unixws with them on the same machine in the same run.
//!
//! KIND: tungstenite (a thread per connection), tokio-tungstenite,
//! fastwebsockets, tokio-websockets. ADDR: a socket path or 127.0.0.1:PORT.
//! Messages of up to 64 MiB are accepted (the bench sends 1 MiB).

use std::io;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAX_MESSAGE: usize = 64 << 20;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, addr] = args.as_slice() else {
        eprintln!("usage: unixws-bench-peers tungstenite|tokio-tungstenite|fastwebsockets|tokio-websockets ADDR");
        std::process::exit(2);
    };
    let result = match kind.as_str() {
        "tungstenite" => threads(addr),
        "tokio-tungstenite" | "fastwebsockets" | "tokio-websockets" => tokio_main(kind, addr),
        other => Err(io::Error::other(format!("unknown server kind `{other}`"))),
    };
    if let Err(e) = result {
        eprintln!("unixws-bench-peers {kind}: {e}");
        std::process::exit(1);
    }
}

fn tcp_port(addr: &str) -> Option<u16> {
    addr.strip_prefix("127.0.0.1:").and_then(|p| p.parse().ok())
}

/// tungstenite with a thread per connection, its defaults but the size limit.
fn threads(addr: &str) -> io::Result<()> {
    fn serve<S: io::Read + io::Write + Send + 'static>(stream: S) {
        std::thread::spawn(move || {
            let config = tungstenite::protocol::WebSocketConfig::default()
                .max_message_size(Some(MAX_MESSAGE))
                .max_frame_size(Some(MAX_MESSAGE));
            let Ok(mut ws) = tungstenite::accept_with_config(stream, Some(config)) else {
                return;
            };
            while let Ok(message) = ws.read() {
                if (message.is_text() || message.is_binary()) && ws.send(message).is_err() {
                    return;
                }
            }
        });
    }
    if let Some(port) = tcp_port(addr) {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        for stream in listener.incoming() {
            let stream = stream?;
            stream.set_nodelay(true)?;
            serve(stream);
        }
    } else {
        let _ = std::fs::remove_file(addr);
        let listener = std::os::unix::net::UnixListener::bind(addr)?;
        for stream in listener.incoming() {
            serve(stream?);
        }
    }
    Ok(())
}

fn tokio_main(kind: &str, addr: &str) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        if let Some(port) = tcp_port(addr) {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            loop {
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                spawn(kind, stream);
            }
        } else {
            let _ = std::fs::remove_file(addr);
            let listener = tokio::net::UnixListener::bind(addr)?;
            loop {
                let (stream, _) = listener.accept().await?;
                spawn(kind, stream);
            }
        }
    })
}

fn spawn<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(kind: &str, stream: S) {
    match kind {
        "tokio-tungstenite" => {
            tokio::spawn(tokio_tungstenite_echo(stream));
        }
        "fastwebsockets" => {
            tokio::spawn(fastwebsockets_echo(stream));
        }
        _ => {
            tokio::spawn(tokio_websockets_echo(stream));
        }
    }
}

async fn tokio_tungstenite_echo<S: AsyncRead + AsyncWrite + Unpin>(stream: S) {
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
            return;
        }
    }
}

async fn tokio_websockets_echo<S: AsyncRead + AsyncWrite + Unpin>(stream: S) {
    let limits = tokio_websockets::Limits::default().max_payload_len(Some(MAX_MESSAGE));
    let Ok((_request, mut ws)) = tokio_websockets::ServerBuilder::new()
        .limits(limits)
        .accept(stream)
        .await
    else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
            return;
        }
    }
}

/// fastwebsockets leaves the HTTP upgrade to the caller (usually hyper):
/// a minimal one here, then its frame loop with fragments collected.
async fn fastwebsockets_echo<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let Ok(key) = read_upgrade_key(&mut stream).await else {
        return;
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let mut ws = fastwebsockets::WebSocket::after_handshake(stream, fastwebsockets::Role::Server);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    ws.set_max_message_size(MAX_MESSAGE);
    let mut ws = fastwebsockets::FragmentCollector::new(ws);
    while let Ok(frame) = ws.read_frame().await {
        match frame.opcode {
            fastwebsockets::OpCode::Close => return,
            fastwebsockets::OpCode::Text | fastwebsockets::OpCode::Binary => {
                if ws.write_frame(frame).await.is_err() {
                    return;
                }
            }
            _ => {}
        }
    }
}

/// Reads the request head byte by byte (nothing after it may be consumed)
/// and returns its Sec-WebSocket-Key.
async fn read_upgrade_key<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<String> {
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 || head.len() > 16 << 10 {
            return Err(io::ErrorKind::InvalidData.into());
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head)
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_string())
        })
        .ok_or_else(|| io::ErrorKind::InvalidData.into())
}
