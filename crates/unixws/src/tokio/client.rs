//! The async client: the same [`ClientBuilder`] as the blocking one, with
//! [`ClientBuilder::connect_async`]. Connecting the socket reuses the
//! blocking code (on tokio's blocking pool), so addresses, timeouts and
//! every error message are the same.

use std::time::Instant;

use crate::client::{open_socket, ClientBuilder};
use crate::error::{Error, Result};
use crate::handshake::{handshake_config, is_header_too_large, HeadBuffer};
use crate::tokio::io::{AsyncHeadReader, AsyncSocket};
use crate::tokio::Connection;
use crate::ToAddress;

/// Connect to `addr` with default settings.
///
/// ```no_run
/// # async fn demo() -> unixws::Result<()> {
/// let mut conn = unixws::tokio::connect("ws+unix:///run/app.sock:/chat").await?;
/// conn.send(unixws::Message::text("hello")).await?;
/// # Ok(()) }
/// ```
pub async fn connect(addr: impl ToAddress) -> Result<Connection> {
    ClientBuilder::new(addr)?.connect_async().await
}

impl ClientBuilder {
    /// Connect and complete the handshake on tokio, retrying as configured.
    pub async fn connect_async(&self) -> Result<Connection> {
        let mut retry = 0;
        loop {
            match self.connect_once_async().await {
                Ok(mut conn) => {
                    for message in self.greeting(conn.info()) {
                        conn.feed(message).await?;
                    }
                    conn.flush().await?;
                    return Ok(conn);
                }
                Err(e) => tokio::time::sleep(self.retry_after(e, &mut retry)?).await,
            }
        }
    }

    async fn connect_once_async(&self) -> Result<Connection> {
        let addr = self.addr.clone();
        let timeout = self.limits.connect_timeout;
        let socket = tokio::task::spawn_blocking(move || open_socket(&addr, timeout))
            .await
            .map_err(|e| Error::TaskFailed {
                task: "the connect task",
                detail: e.to_string(),
            })??;
        let peer = socket.peer().map_err(|e| {
            Error::io(
                format!("reading the peer of {}", self.addr.endpoint_display()),
                e,
            )
        })?;
        let socket = AsyncSocket::from_socket(socket)
            .map_err(|e| Error::io("registering the socket with tokio", e))?;
        let reader =
            AsyncHeadReader::new(socket, HeadBuffer::response(self.limits.max_header_bytes));
        let request = self.request()?;
        let deadline = Instant::now() + self.limits.handshake_timeout;
        let handshake =
            tokio_tungstenite::client_async_with_config(request, reader, Some(handshake_config()));
        let (ws, response) = match tokio::time::timeout_at(deadline.into(), handshake).await {
            Err(_) => return Err(self.handshake_timed_out()),
            Ok(Err(tungstenite::Error::Io(e))) if is_header_too_large(&e) => {
                return Err(self.response_too_large())
            }
            Ok(Err(e)) => return Err(self.handshake_error(e)),
            Ok(Ok(pair)) => pair,
        };
        let AsyncHeadReader { socket, head } = ws.into_inner();
        let session = self.session_after(head, &response)?;
        let info = self.response_info(peer, &response);
        Ok(Connection::new(socket, session, info))
    }
}
