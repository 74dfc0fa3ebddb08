//! A client that rides out restarts of its server: the usual Unix-socket
//! server is a daemon that systemd restarts, and its clients should go on.
//!
//! [`Reconnecting`] holds one connection at a time. When it drops (the
//! server was killed or restarted, or went away with 1001, 1011, 1012,
//! 1013 or 1014), the next call connects again with the
//! [`ClientBuilder::reconnect`] policy's backoff, and the
//! [`ClientBuilder::on_connect`] hook's messages go out first, as on the
//! first connection.
//!
//! Nothing is lost silently. WebSocket has no acknowledgement of its own,
//! and bytes a dying server had not read vanish with it while the client's
//! write had succeeded. So [`send`](Reconnecting::send) follows each
//! message with a ping and returns only when the pong is back: a server
//! answers a ping when it reads it, so it had read the message before (a
//! unixws handler that processes each message before its next `recv` had
//! processed it). If the connection ends first, `send` fails with
//! [`Error::NotConfirmed`] and the caller decides whether to send again.
//! The price is one round trip per `send` (the 64 B latency that
//! `unixws bench` reports); [`send_all`](Reconnecting::send_all) confirms a
//! batch with one.

use std::collections::VecDeque;

use crate::client::{next_delay, ClientBuilder};
use crate::connection::{ConnectionInfo, PeerClose};
use crate::error::{Error, Result};
use crate::tokio::Connection;
use crate::{CloseCode, Message};

/// The prefix of the pings that confirm messages (a peer's own pongs, or
/// keepalive ones, never match).
const CONFIRM: &[u8] = b"unixws-confirm:";

/// A client connection that reconnects (see the module doc); made by
/// [`ClientBuilder::connect_reconnecting`].
///
/// ```no_run
/// use unixws::{ClientBuilder, Message, RetryPolicy};
/// # async fn demo() -> unixws::Result<()> {
/// let mut feed = ClientBuilder::new("ws+unix:///run/feed.sock")?
///     .reconnect(RetryPolicy::forever())
///     .on_connect(|_| vec![Message::text("subscribe prices")])
///     .connect_reconnecting()
///     .await?;
/// match feed.send(Message::text("hello")).await {
///     Ok(()) => {}                                  // the server read it
///     Err(unixws::Error::NotConfirmed { .. }) => {} // it may be lost: send again?
///     Err(e) => return Err(e),                      // the server is not coming back
/// }
/// while let Some(update) = feed.recv().await? {
///     println!("{update}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Reconnecting {
    builder: ClientBuilder,
    conn: Option<Connection>,
    /// Data that arrived while `send` waited for its pong.
    inbox: VecDeque<Message>,
    next_ping: u64,
    connects: u64,
    /// Set once the connection ended for good: the server closed with a
    /// code that says not to come back, or the caller closed.
    ended: bool,
    /// The server's close that ended it for good.
    final_close: Option<PeerClose>,
}

impl ClientBuilder {
    /// Connects (retrying as [`retry`](ClientBuilder::retry) says) and
    /// returns a client that connects again whenever its connection drops,
    /// as [`reconnect`](ClientBuilder::reconnect) says (see [`Reconnecting`]).
    pub async fn connect_reconnecting(&self) -> Result<Reconnecting> {
        let conn = self.connect_async().await?;
        let mut conn = Some(conn);
        if let Some(c) = conn.as_mut() {
            c.receive_control_frames(true);
        }
        Ok(Reconnecting {
            builder: self.clone(),
            conn,
            inbox: VecDeque::new(),
            next_ping: 0,
            connects: 1,
            ended: false,
            final_close: None,
        })
    }
}

/// May a connection that ended this way be made again? Not after a close
/// that says the client itself is wrong (1002, 1003, 1007, 1008, 1009,
/// 1010) or that all is done (1000).
fn comes_back(code: Option<CloseCode>) -> bool {
    match code {
        None => true,
        Some(code) => matches!(u16::from(code), 1001 | 1006 | 1011 | 1012 | 1013 | 1014),
    }
}

/// Errors after which connecting again may help: the server is away or
/// was cut off mid-handshake, not refusing us.
fn heals(e: &Error) -> bool {
    e.is_transient()
        || matches!(
            e,
            Error::Handshake { .. }
                | Error::Timeout { .. }
                | Error::ConnectionReset
                | Error::KeepaliveTimeout { .. }
                | Error::Io { .. }
        )
}

impl Reconnecting {
    /// The connection, made again if it dropped.
    async fn connection(&mut self) -> Result<&mut Connection> {
        if self.ended {
            return Err(Error::invalid(
                "Reconnecting",
                "the connection was closed for good (by close(), or by the server with a code that says not to come back); make a new client".to_string(),
            ));
        }
        if self.conn.is_none() {
            let mut retry = 0;
            let conn = loop {
                match self.builder.connect_async().await {
                    Ok(conn) => break conn,
                    Err(e) if heals(&e) => {
                        let delay = next_delay(&self.builder.reconnect, e, &mut retry)?;
                        tokio::time::sleep(delay).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            self.connects += 1;
            tracing::info!(connects = self.connects, "reconnected");
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().ok_or(Error::ConnectionReset)?;
        conn.receive_control_frames(true);
        Ok(conn)
    }

    /// Sends `message` and returns once the server confirmed reading it
    /// (see the module doc). [`Error::NotConfirmed`]: the connection ended
    /// first, and the message may be lost; the next call reconnects. Any
    /// other error: connecting again failed as the policy allows, or the
    /// client has ended.
    pub async fn send(&mut self, message: Message) -> Result<()> {
        self.send_all([message]).await
    }

    /// Sends `messages` in order and returns once the server confirmed
    /// reading the last (so all of them), with one round trip. On
    /// [`Error::NotConfirmed`] none of them counts as delivered.
    pub async fn send_all(&mut self, messages: impl IntoIterator<Item = Message>) -> Result<()> {
        let seq = self.next_ping;
        self.next_ping += 1;
        let mut payload = CONFIRM.to_vec();
        payload.extend_from_slice(seq.to_string().as_bytes());
        let conn = self.connection().await?;
        let sent = async {
            for message in messages {
                conn.feed(message).await?;
            }
            conn.send(Message::Ping(payload.clone().into())).await
        }
        .await;
        if let Err(e) = sent {
            return Err(self.lost(e.to_string()));
        }
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Err(self.lost("the connection was dropped".into()));
            };
            match conn.recv().await {
                Ok(Some(Message::Pong(p))) if p[..] == payload[..] => return Ok(()),
                Ok(Some(Message::Pong(_) | Message::Ping(_))) => {}
                Ok(Some(message)) => self.inbox.push_back(message),
                Ok(None) => {
                    let reason = self.ended_by_server();
                    return Err(self.lost(reason));
                }
                Err(e) => return Err(self.lost(e.to_string())),
            }
        }
    }

    /// Drops the connection after a send that was not confirmed.
    fn lost(&mut self, reason: String) -> Error {
        self.conn = None;
        tracing::info!(%reason, "connection ended before the server confirmed a message");
        Error::NotConfirmed { reason }
    }

    /// How the server ended the connection, and whether it is for good.
    fn ended_by_server(&mut self) -> String {
        let close = self.conn.as_ref().and_then(|c| c.peer_close()).cloned();
        self.conn = None;
        let code = close.as_ref().map(|c| c.code);
        if !comes_back(code) {
            self.ended = true;
            self.final_close = close.clone();
        }
        match close {
            Some(c) => format!("the server closed with {} {}", u16::from(c.code), c.reason),
            None => "the server hung up".into(),
        }
    }

    /// The next data message from the server, across reconnects. `None`
    /// once the server closed for good (1000, or a code that says the
    /// client is at fault: see [`peer_close`](Reconnecting::peer_close))
    /// or the client closed.
    pub async fn recv(&mut self) -> Result<Option<Message>> {
        loop {
            if let Some(message) = self.inbox.pop_front() {
                return Ok(Some(message));
            }
            if self.ended {
                return Ok(None);
            }
            let conn = self.connection().await?;
            match conn.recv().await {
                Ok(Some(Message::Pong(_) | Message::Ping(_))) => {}
                Ok(Some(message)) => return Ok(Some(message)),
                Ok(None) => {
                    let reason = self.ended_by_server();
                    if self.ended {
                        return Ok(None);
                    }
                    tracing::info!(%reason, "connection ended; reconnecting");
                }
                Err(e) if heals(&e) => {
                    tracing::info!(error = %e, "connection dropped; reconnecting");
                    self.conn = None;
                }
                Err(e) => {
                    self.conn = None;
                    return Err(e);
                }
            }
        }
    }

    /// Closes the connection with `code` and ends the client.
    pub async fn close(&mut self, code: impl Into<CloseCode>, reason: &str) -> Result<()> {
        self.ended = true;
        match self.conn.as_mut() {
            Some(conn) => conn.close(code, reason).await,
            None => Ok(()),
        }
    }

    /// How many connections were made: 1 until the first reconnect.
    pub fn connects(&self) -> u64 {
        self.connects
    }

    /// What the current connection's handshake said (`None` between
    /// connections).
    pub fn info(&self) -> Option<&ConnectionInfo> {
        self.conn.as_ref().map(Connection::info)
    }

    /// The server's close, once the connection ended for good.
    pub fn peer_close(&self) -> Option<&PeerClose> {
        self.final_close.as_ref()
    }
}
