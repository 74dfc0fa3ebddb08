//! The unixws clients themselves as load: the blocking client and the tokio
//! client, each masking every payload as any client must. One message in
//! flight per connection (request, then its echo).

use std::time::{Duration, Instant};

use unixws::{ClientBuilder, CloseCode, Limits, Message};

use super::load::{payload, Measured};
use super::target::Endpoint;

/// Which unixws client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LibraryClient {
    Blocking,
    Async,
}

fn url(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Path(p) => format!("ws+unix://{}", p.display()),
        Endpoint::Tcp(port) => format!("ws://127.0.0.1:{port}/"),
    }
}

fn builder(endpoint: &Endpoint) -> unixws::Result<ClientBuilder> {
    let mut limits = Limits::default();
    limits.max_message_size = 64 << 20;
    limits.max_frame_size = 64 << 20;
    Ok(ClientBuilder::new(url(endpoint))?.limits(limits))
}

/// Request/response rounds of `size`-byte binary messages for `duration`.
pub async fn request_response(
    client: LibraryClient,
    endpoint: &Endpoint,
    size: usize,
    duration: Duration,
) -> Result<Measured, String> {
    let data = bytes_of(size);
    let mut m = Measured::new();
    let started = Instant::now();
    match client {
        LibraryClient::Blocking => {
            let endpoint = endpoint.clone();
            m = tokio::task::spawn_blocking(move || -> unixws::Result<Measured> {
                let mut conn = builder(&endpoint)?.connect()?;
                let until = Instant::now() + duration;
                while Instant::now() < until {
                    let sent = Instant::now();
                    conn.send(Message::Binary(data.clone()))?;
                    record(&mut m, conn.recv()?, sent);
                }
                conn.close(CloseCode::Normal, "")?;
                Ok(m)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        }
        LibraryClient::Async => {
            // On a worker task, as a tokio application runs it: polled from
            // `block_on` on the bench's own thread instead, every readiness
            // event would cross threads (2.1 against 2.45 GB/s at 1 MiB).
            let endpoint = endpoint.clone();
            m = tokio::spawn(async move {
                let mut conn = builder(&endpoint)?.connect_async().await?;
                let until = Instant::now() + duration;
                while Instant::now() < until {
                    let sent = Instant::now();
                    conn.send(Message::Binary(data.clone())).await?;
                    record(&mut m, conn.recv().await?, sent);
                }
                conn.close(CloseCode::Normal, "").await?;
                Ok::<_, unixws::Error>(m)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        }
    }
    m.elapsed = started.elapsed();
    Ok(m)
}

fn bytes_of(size: usize) -> unixws::tungstenite::Bytes {
    unixws::tungstenite::Bytes::from(payload(size))
}

fn record(m: &mut Measured, echo: Option<Message>, sent: Instant) {
    let _ = m.latency.record(sent.elapsed().as_nanos() as u64);
    if let Some(echo) = echo {
        m.messages += 1;
        m.bytes += echo.len() as u64;
    }
}
