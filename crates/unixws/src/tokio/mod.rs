//! The async API on tokio (feature `tokio`): [`connect`],
//! [`ClientBuilder::connect_async`](crate::ClientBuilder::connect_async),
//! [`Server`] (from [`ServerBuilder::bind_async`](crate::ServerBuilder::bind_async))
//! and [`Connection`]: tokio-tungstenite does the upgrade, unixws's own
//! codec and session (shared with the blocking API) the rest.
//!
//! It shares everything but the waiting with the blocking API: addresses,
//! binding, peer credentials, access policy, limits, the upgrade checks,
//! the codec and the session (keepalive clocks, close handshake, close
//! codes). [`Connection`] is a `futures` `Stream` and `Sink`, splits into
//! halves for two tasks ([`Connection::split`]), and wraps sockets the
//! caller made ([`Connection::accept`], [`Connection::client`]).
//!
//! ```no_run
//! use unixws::{CloseCode, Message, Server};
//!
//! # async fn demo() -> unixws::Result<()> {
//! let server = Server::builder("/tmp/demo.sock")?.bind_async()?;
//! tokio::spawn(server.serve(|mut conn| async move {
//!     while let Some(message) = conn.recv().await? {
//!         conn.send(message).await?;
//!     }
//!     Ok(())
//! }));
//! let mut conn = unixws::tokio::connect("ws+unix:///tmp/demo.sock").await?;
//! conn.send(Message::text("hello")).await?;
//! assert_eq!(conn.recv().await?, Some(Message::text("hello")));
//! conn.close(CloseCode::Normal, "bye").await?;
//! # Ok(()) }
//! ```

mod client;
mod connection;
pub mod exec;
mod io;
mod listener;
mod memory;
pub mod proxy;
mod reconnect;
mod server;
mod split;
pub(crate) mod verdict;
mod wrap;

/// The async API in one import: `use unixws::tokio::prelude::*;` brings
/// the tokio [`Connection`] and [`Server`] (the ones
/// [`ServerBuilder::bind_async`](crate::ServerBuilder::bind_async) and
/// [`connect`] give), the builders and types both front ends share, and
/// the `futures` traits behind `ws.next()` and `ws.send(m)`.
pub mod prelude {
    pub use super::{connect, Connection, Outbox, Server};
    pub use crate::{
        AccessPolicy, Address, BindOptions, ClientBuilder, CloseCode, Error, HandlerResult, Limits,
        Message, PeerClose, Result, RetryPolicy, ServerBuilder, ShutdownHandle,
    };
    pub use futures_util::{SinkExt, StreamExt};
}

pub use client::connect;
pub use connection::{Connection, Outbox};
pub use exec::Exec;
pub use io::AsyncSocket;
pub use proxy::Proxy;
pub use reconnect::Reconnecting;
pub use server::{Admitted, Server};
pub use split::{ReadHalf, WriteHalf};
