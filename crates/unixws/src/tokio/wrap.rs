//! A [`Connection`] over a socket the caller already has, as
//! tokio-tungstenite's `accept_async` and `client_async` do: the upgrade
//! (bounded by the handshake timeout and `max_header_bytes`), then
//! unixws's codec, limits, keepalive and close rules. For programs that
//! accept or connect by themselves (a listener from elsewhere, a socket
//! pair, an existing server loop).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::protocol::Role;

use crate::codec::deflate::Agreed;
use crate::config::Limits;
use crate::connection::ConnectionInfo;
use crate::error::{Error, Result};
use crate::handshake::{accept_compression, application_headers, handshake_config, HeadBuffer};
use crate::peer::Peer;
use crate::session::Session;
use crate::tokio::io::{AsyncHeadReader, AsyncSocket};
use crate::tokio::Connection;

impl Connection {
    /// Completes the server side of the upgrade on `socket` (a tokio
    /// `UnixStream` or `TcpStream` the caller accepted).
    ///
    /// ```no_run
    /// # async fn demo() -> unixws::Result<()> {
    /// use futures_util::{SinkExt, StreamExt};
    /// let listener = tokio::net::UnixListener::bind("/tmp/own.sock").unwrap();
    /// let (socket, _) = listener.accept().await.unwrap();
    /// let mut ws = unixws::tokio::Connection::accept(socket, unixws::Limits::default()).await?;
    /// while let Some(message) = ws.next().await {
    ///     ws.send(message?).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn accept(socket: impl Into<AsyncSocket>, limits: Limits) -> Result<Connection> {
        let socket = socket.into();
        let peer = peer_of(&socket)?;
        let reader = AsyncHeadReader::new(socket, HeadBuffer::new(limits.max_header_bytes));
        let seen: Mutex<Option<ConnectionInfo>> = Mutex::new(None);
        let agreed: Mutex<Option<Agreed>> = Mutex::new(None);
        let compression = limits.compression;
        let max_headers = limits.max_headers;
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, mut response: Response| {
            if request.headers().len() > max_headers {
                let mut refusal = ErrorResponse::new(Some("too many header lines\n".into()));
                *refusal.status_mut() =
                    tungstenite::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
                return Err(refusal);
            }
            if compression {
                *agreed.lock().unwrap_or_else(PoisonError::into_inner) =
                    accept_compression(request, &mut response);
            }
            *seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(ConnectionInfo {
                address: None,
                peer: peer.clone(),
                path: request.uri().path().to_string(),
                query: request.uri().query().map(str::to_string),
                headers: application_headers(request.headers()),
                subprotocol: None,
            });
            Ok(response)
        };
        let handshake = tokio_tungstenite::accept_hdr_async_with_config(
            reader,
            callback,
            Some(handshake_config()),
        );
        let ws = match tokio::time::timeout(limits.handshake_timeout, handshake).await {
            Err(_) => return Err(timed_out(&peer, &limits)),
            Ok(Err(e)) => return Err(failed(&peer, e)),
            Ok(Ok(ws)) => ws,
        };
        let info = seen
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .ok_or_else(|| {
                // tungstenite calls the callback before it answers; this
                // is only reachable if that ever changes.
                failed(
                    &peer,
                    tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::HandshakeIncomplete,
                    ),
                )
            })?;
        let AsyncHeadReader { socket, head } = ws.into_inner();
        let agreed = agreed.into_inner().unwrap_or_else(PoisonError::into_inner);
        let session = Session::new(Role::Server, Arc::new(limits), None, Instant::now())
            .with_compression(agreed)
            .with_initial(&head.into_tail());
        Ok(Connection::new(socket, session, info))
    }

    /// Completes the client side of the upgrade on `socket` with
    /// `request` (a URL such as `ws://localhost/chat`, or a built request).
    ///
    /// ```no_run
    /// # async fn demo() -> unixws::Result<()> {
    /// let socket = tokio::net::UnixStream::connect("/run/app.sock").await.unwrap();
    /// let mut ws =
    ///     unixws::tokio::Connection::client(socket, "ws://localhost/chat", unixws::Limits::default()).await?;
    /// ws.send(unixws::Message::text("hello")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn client(
        socket: impl Into<AsyncSocket>,
        request: impl IntoClientRequest + Unpin,
        limits: Limits,
    ) -> Result<Connection> {
        let socket = socket.into();
        let peer = peer_of(&socket)?;
        let mut request = request
            .into_client_request()
            .map_err(|e| failed(&peer, e))?;
        crate::client::offer_compression(limits.compression, request.headers_mut());
        let (path, query) = (
            request.uri().path().to_string(),
            request.uri().query().map(str::to_string),
        );
        let reader = AsyncHeadReader::new(socket, HeadBuffer::response(limits.max_header_bytes));
        let handshake =
            tokio_tungstenite::client_async_with_config(request, reader, Some(handshake_config()));
        let (ws, response) = match tokio::time::timeout(limits.handshake_timeout, handshake).await {
            Err(_) => return Err(timed_out(&peer, &limits)),
            Ok(Err(e)) => return Err(failed(&peer, e)),
            Ok(Ok(pair)) => pair,
        };
        let subprotocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let info = ConnectionInfo {
            address: None,
            peer,
            path,
            query,
            headers: response.headers().clone(),
            subprotocol,
        };
        let AsyncHeadReader { socket, head } = ws.into_inner();
        let agreed =
            crate::client::client_compression(limits.compression, &response).map_err(|detail| {
                Error::BadExtension {
                    addr: info.peer.to_string(),
                    detail,
                }
            })?;
        let session = Session::new(Role::Client, Arc::new(limits), None, Instant::now())
            .with_compression(agreed)
            .with_initial(&head.into_tail());
        Ok(Connection::new(socket, session, info))
    }
}

fn peer_of(socket: &AsyncSocket) -> Result<Peer> {
    socket
        .peer()
        .map_err(|e| Error::io("reading the peer of the socket", e))
}

fn timed_out(peer: &Peer, limits: &Limits) -> Error {
    Error::Timeout {
        operation: crate::error::Operation::Handshake,
        addr: peer.to_string(),
        after: limits.handshake_timeout,
    }
}

fn failed(peer: &Peer, e: tungstenite::Error) -> Error {
    Error::Handshake {
        addr: peer.to_string(),
        source: Box::new(e),
    }
}
