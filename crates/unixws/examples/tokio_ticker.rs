//! The async conventions in one program: a server that accepts on its own
//! tokio listener (`Connection::accept`), splits each connection so that
//! one task sends a tick every 100 ms while another reads, and a client
//! that uses the connection as a `Stream` and a `Sink`.
//!
//! ```sh
//! cargo run -p unixws --features tokio --example tokio_ticker -- /tmp/ticker.sock
//! ```

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use unixws::tokio::Connection;
use unixws::{CloseCode, Limits, Message};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/ticker.sock".into());
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let ws = Connection::accept(socket, Limits::default()).await?;
                let (mut reader, mut writer) = ws.split();
                let ticks = tokio::spawn(async move {
                    for i in 0..5 {
                        writer.send(Message::text(format!("tick {i}"))).await?;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    writer.close(CloseCode::Normal, "done").await
                });
                while let Some(message) = reader.recv().await? {
                    println!("server got {message:?}");
                }
                // The ticker's own error, if any, was the peer going away.
                let _ = ticks.await;
                Ok::<(), unixws::Error>(())
            });
        }
    });

    let mut ws = unixws::tokio::connect(path.as_str()).await?;
    // `Sink::send` (the inherent `Connection::send` does the same).
    SinkExt::send(&mut ws, Message::text("hello from the client")).await?;
    while let Some(message) = ws.next().await {
        println!("client got {:?}", message?);
    }
    println!("closed: {:?}", ws.peer_close());
    std::fs::remove_file(&path)?;
    Ok(())
}
