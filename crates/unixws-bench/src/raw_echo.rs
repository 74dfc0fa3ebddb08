//! `unixws bench-echo ADDR` (hidden): the raw baseline server. It sends
//! back every byte it reads, with no WebSocket in between, so that what the
//! bench measures against it is the kernel's socket path and the load
//! client itself.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves until killed.
pub fn run(addr: &str) -> Result<(), String> {
    let runtime = crate::runtime(true)?;
    runtime.block_on(async {
        if let Some(port_part) = addr.strip_prefix("127.0.0.1:") {
            let listener = tokio::net::TcpListener::bind((
                "127.0.0.1",
                port_part
                    .parse()
                    .map_err(|_| format!("bad port in {addr}"))?,
            ))
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            loop {
                let (socket, _) = listener
                    .accept()
                    .await
                    .map_err(|e| format!("accept: {e}"))?;
                let _ = socket.set_nodelay(true);
                tokio::spawn(echo(socket));
            }
        } else {
            let _ = std::fs::remove_file(addr);
            let listener = tokio::net::UnixListener::bind(addr)
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            loop {
                let (socket, _) = listener
                    .accept()
                    .await
                    .map_err(|e| format!("accept: {e}"))?;
                tokio::spawn(echo(socket));
            }
        }
    })
}

async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut socket: S) {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if socket.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
