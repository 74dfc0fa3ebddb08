//! # unixws — WebSocket over Unix domain sockets, production-grade
//!
//! [tungstenite] speaks WebSocket over any stream; unixws owns everything
//! around the stream that a real deployment needs: addresses
//! (`ws+unix:///run/app.sock:/chat`), safe binding (stale sockets, file
//! modes with no window, cleanup of only our own file), kernel-verified
//! peer credentials and an access policy, limits, timeouts, retries,
//! keepalive and graceful shutdown.
//!
//! ```no_run
//! use unixws::{CloseCode, Message, Server};
//!
//! // Server: echo every message, on its own thread per connection.
//! let server = Server::bind("/tmp/demo.sock")?;
//! std::thread::spawn(move || server.serve(|conn| {
//!     while let Some(message) = conn.recv()? {
//!         conn.send(message)?;
//!     }
//!     Ok(())
//! }));
//!
//! // Client: one call to connect, then send and receive.
//! let mut conn = unixws::connect("ws+unix:///tmp/demo.sock:/chat")?;
//! conn.send(Message::text("hello"))?;
//! assert_eq!(conn.recv()?, Some(Message::text("hello")));
//! conn.close(CloseCode::Normal, "bye")?;
//! # Ok::<(), unixws::Error>(())
//! ```
//!
//! ## Layout
//!
//! One engine, two drivers (quinn-proto's shape: the protocol has no I/O
//! and no clock; the drivers pass bytes and `now`).
//!
//! The engine (private):
//!
//! - `codec`: frames in and out of buffers the connection owns: in-place
//!   unmasking, incremental UTF-8, fragments, close-code rules, payloads as
//!   `Bytes` without a copy, batched and vectored output; and the relay's
//!   forward mode (frames passed on as they arrived, large ones cut
//!   through); `codec::deflate`: permessage-deflate's negotiation and the
//!   per-connection compressor and decompressor (inflate bounded by
//!   `max_message_size`).
//! - `session`: one connection's decisions: ping answers, close handshake,
//!   peer-error close codes, keepalive and idle clocks (`keepalive`), slow
//!   consumer.
//! - `spare`: one read and one write buffer per thread, lent to the
//!   connection that has bytes to move, so an idle connection holds no
//!   buffer.
//! - `server_core`: what both servers decide: admission, flood slack,
//!   handshake outcomes (`handshake`: checks and refusals), what a
//!   handler's error means ([`HandlerResult`], [`HandlerError`]), and the
//!   drain (`drain`: the last connection to end wakes the server);
//!   `backoff`: accept errors neither spin nor flood the log.
//! - `sys`: the platform seam: `SO_PEERCRED`, the abstract namespace,
//!   `malloc_trim`, reads into spare capacity, the Unix send buffer.
//!
//! The blocking driver:
//!
//! - [`connection`]: [`Connection`], [`ConnectionInfo`], [`PeerClose`],
//!   [`Outbox`] and [`OutboxError`].
//! - [`client`]: [`connect`], [`ClientBuilder`], [`RetryPolicy`].
//! - [`server`]: [`Server`], [`ServerBuilder`], [`ShutdownHandle`].
//! - [`stream`]: [`Stream`] and [`Socket`], the socket under a connection,
//!   with interruptible reads (shutdown, wake-ups, deadlines).
//!
//! The async driver, [`tokio`] (feature `tokio`): its own
//! [`Connection`](crate::tokio::Connection) (a `Stream` and `Sink`, with
//! [`ReadHalf`](crate::tokio::ReadHalf) and
//! [`WriteHalf`](crate::tokio::WriteHalf), an
//! [`Outbox`](crate::tokio::Outbox) whose writer task sends without
//! waiting for `recv`), [`Server`](crate::tokio::Server) and
//! [`Admitted`](crate::tokio::Admitted), [`connect`](crate::tokio::connect),
//! [`Proxy`](crate::tokio::Proxy), [`Exec`](crate::tokio::Exec) and
//! [`AsyncSocket`](crate::tokio::AsyncSocket).
//!
//! axum, [`axum`] (feature `axum`): a [`Listener`](crate::axum::Listener)
//! for `axum::serve` whose peers are [`Peer`]s (`ConnectInfo<Peer>`), the
//! access policy as a tower layer, an upgrade extractor that gives a tokio
//! [`Connection`](crate::tokio::Connection), and the [`Shutdown`](crate::axum::Shutdown)
//! that closes open WebSockets with 1001.
//!
//! What both drivers share:
//!
//! - [`addr`]: [`Address`], [`Endpoint`] and [`ToAddress`], the one parser
//!   for every address form.
//! - [`listen`]: [`Listener`] and [`BindOptions`]: binding, permissions,
//!   stale-socket handling, cleanup; [`systemd`]: socket activation and
//!   readiness.
//! - [`peer`]: [`Peer`] and [`PeerCredentials`] of a Unix-socket peer.
//! - [`policy`]: [`AccessPolicy`], who may connect.
//! - [`config`]: [`Limits`], every limit and timeout, with its default and
//!   the side it applies to.
//! - [`stats`]: [`ServerStats`] and [`StatsSnapshot`], what a server
//!   accepted, refused and closed.
//! - [`error`]: [`Error`] (with [`Operation`] and [`BindStep`]) and
//!   [`Result`], whose messages say what to do.
//! - [`frame`]: single frames as bytes ([`frame::encode`],
//!   [`frame::Head`], [`frame::apply_mask`]), for tools and tests below
//!   the connection API.
//! - [`Message`] and [`CloseCode`], tungstenite's; [`prelude`] and
//!   [`tokio::prelude`]: one import per driver.
//!
//! [tungstenite]: https://docs.rs/tungstenite
#![deny(missing_docs)]

pub mod addr;
// Async code lives under src/tokio/; the module is `unixws::axum`.
#[cfg(feature = "axum")]
#[path = "tokio/axum.rs"]
pub mod axum;
mod backoff;
pub mod client;
mod codec;
pub mod config;
pub mod connection;
mod drain;
pub mod error;
mod forwarded;
pub mod frame;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
mod keepalive;
pub mod listen;
pub mod peer;
pub mod policy;
pub mod server;
mod server_core;
mod session;
mod spare;
pub mod stats;
pub mod stream;
mod sys;
pub mod systemd;
#[cfg(feature = "tokio")]
pub mod tokio;

pub use addr::{Address, Endpoint, ToAddress};
pub use client::{connect, ClientBuilder, RetryPolicy};
pub use config::Limits;
pub use connection::{Connection, ConnectionInfo, Outbox, OutboxError, PeerClose};
pub use error::{BindStep, Error, Operation, Result};
pub use listen::{BindOptions, Listener, SocketFileGuard};
pub use peer::{Peer, PeerCredentials};
pub use policy::AccessPolicy;
pub use server::{Server, ServerBuilder, ShutdownHandle};
pub use server_core::{HandlerError, HandlerResult};
pub use stats::{ServerStats, StatsSnapshot};
pub use stream::{Socket, Stream};
/// tungstenite itself, for types unixws does not wrap.
pub use tungstenite;

/// The README's examples, compiled as doctests so that they stay true (it
/// has async and axum examples, hence the feature).
#[doc = include_str!("../../../README.md")]
#[cfg(all(doctest, feature = "axum"))]
pub struct ReadmeDoctests;
/// Close codes with their names (`CloseCode::Normal` is 1000,
/// `CloseCode::Away` 1001, ...), re-exported from tungstenite; any `u16`
/// converts into one.
pub use tungstenite::protocol::frame::coding::CloseCode;
/// The blocking API in one import: `use unixws::prelude::*;`. (A glob of
/// the crate root would also import the module `unixws::tokio`, which
/// makes the name `tokio` ambiguous next to the tokio crate.) The async
/// API has its own: [`tokio::prelude`].
///
/// ```no_run
/// use unixws::prelude::*;
///
/// let server: Server = Server::bind("/tmp/prelude.sock")?;
/// let _conn: Connection = connect("/tmp/prelude.sock")?;
/// # Ok::<(), Error>(())
/// ```
pub mod prelude {
    pub use crate::{
        connect, AccessPolicy, Address, BindOptions, ClientBuilder, CloseCode, Connection, Error,
        HandlerResult, Limits, Message, Outbox, PeerClose, Result, RetryPolicy, Server,
        ServerBuilder, ShutdownHandle,
    };
}

/// The message type, re-exported from tungstenite.
pub use tungstenite::Message;
