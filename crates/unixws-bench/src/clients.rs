//! The unixws clients themselves as load: the blocking client and the tokio
//! client, each masking every payload as any client must. One message in
//! flight per connection (request, then its echo).

use std::time::{Duration, Instant};

use unixws::{Address, ClientBuilder, CloseCode, Limits, Message};

use super::load::{payload, Measured};

/// Which unixws client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LibraryClient {
    Blocking,
    Async,
}

fn builder(address: &Address) -> unixws::Result<ClientBuilder> {
    let limits = Limits::default()
        .max_message_size(64 << 20)
        .max_frame_size(64 << 20);
    Ok(ClientBuilder::new(address)?.limits(limits))
}

/// Request/response rounds of `size`-byte binary messages for `duration`.
pub async fn request_response(
    client: LibraryClient,
    address: &Address,
    size: usize,
    duration: Duration,
) -> Result<Measured, String> {
    let data = bytes_of(size);
    let mut m = Measured::new();
    let started = Instant::now();
    match client {
        LibraryClient::Blocking => {
            let address = address.clone();
            m = tokio::task::spawn_blocking(move || -> unixws::Result<Measured> {
                let mut conn = builder(&address)?.connect()?;
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
            let address = address.clone();
            m = tokio::spawn(async move {
                let mut conn = builder(&address)?.connect_async().await?;
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
