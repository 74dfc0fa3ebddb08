//! Limits and timeouts: one struct with the defaults of DESIGN.md, shared by
//! clients and servers, blocking and async, all enforced by unixws itself
//! (its codec checks frame and message sizes). [`Limits::websocket_config`]
//! maps the protocol limits onto tungstenite's `WebSocketConfig`, for code
//! that drives tungstenite directly.

use std::time::Duration;

use tungstenite::protocol::WebSocketConfig;

/// Every limit and timeout, with defaults that suit a local service.
///
/// ```
/// use std::time::Duration;
/// let mut limits = unixws::Limits::default();
/// limits.max_message_size = 1 << 20;
/// limits.handshake_timeout = Duration::from_secs(2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest message, after reassembling fragments (default: 16 MiB). A larger one
    /// closes the connection with 1009. Raising it raises the memory a single
    /// peer can make the server hold.
    pub max_message_size: usize,
    /// Largest single frame (default: 16 MiB).
    pub max_frame_size: usize,
    /// Largest handshake request or response head, in bytes (default: 16 KiB). A
    /// larger one gets 431 and is closed.
    pub max_header_bytes: usize,
    /// Most header lines in a handshake request (default: 100); tungstenite itself
    /// refuses more than 124.
    pub max_headers: usize,
    /// Most open connections on a server (default: 1024). The next one gets HTTP 503;
    /// open connections are unaffected.
    pub max_connections: usize,
    /// Time a new connection has to complete its upgrade request (default: 10 s). A
    /// client that connects and sends nothing is dropped after it.
    pub handshake_timeout: Duration,
    /// Close a connection that has received nothing for this long (default: none).
    pub idle_timeout: Option<Duration>,
    /// Send a ping after this much silence, to detect dead peers (default: 30 s).
    pub ping_interval: Option<Duration>,
    /// Close the connection when a ping is not answered within this (default: 10 s).
    pub pong_timeout: Duration,
    /// How long to wait for the peer's answer to our close frame (default: 5 s).
    pub close_timeout: Duration,
    /// On shutdown, how long open connections may take to close (default: 10 s).
    pub drain_timeout: Duration,
    /// A single write that blocks longer than this fails [30 s]: a peer
    /// that stops reading cannot hold a sender forever.
    pub write_timeout: Option<Duration>,
    /// Client: how long connecting to the socket may take (default: 5 s).
    pub connect_timeout: Duration,
    /// Per-connection queue of messages waiting to be sent by other threads
    /// (broadcast, stdin) (default: 256 messages). A broadcast to a full queue closes
    /// that slow consumer with 1013 instead of growing without bound.
    pub send_queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: 16 << 20,
            max_frame_size: 16 << 20,
            max_header_bytes: 16 << 10,
            max_headers: 100,
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: None,
            ping_interval: Some(Duration::from_secs(30)),
            pong_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            write_timeout: Some(Duration::from_secs(30)),
            connect_timeout: Duration::from_secs(5),
            send_queue: 256,
        }
    }
}

impl Limits {
    /// tungstenite's configuration for these limits.
    pub fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_frame_size))
    }
}
