//! Limits and timeouts: one struct with its defaults, shared by
//! clients and servers, blocking and async, all enforced by unixws itself
//! (its codec checks frame and message sizes). [`Limits::websocket_config`]
//! maps the protocol limits onto tungstenite's `WebSocketConfig`, for code
//! that drives tungstenite directly.

use std::time::Duration;

use tungstenite::protocol::WebSocketConfig;

/// Every limit and timeout, with defaults that suit a local service. Each
/// field says which side it applies to: **both** (client and server
/// connections), **server** or **client**.
///
/// ```
/// use std::time::Duration;
/// let limits = unixws::Limits::default()
///     .max_message_size(1 << 20)
///     .handshake_timeout(Duration::from_secs(2))
///     .ping_interval(None);
/// assert_eq!(limits.max_message_size, 1 << 20);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Both: largest message, after reassembling fragments (default:
    /// 16 MiB). A larger one closes the connection with 1009. Raising it
    /// raises the memory a single peer can make the server hold.
    pub max_message_size: usize,
    /// Both: largest single frame (default: 16 MiB).
    pub max_frame_size: usize,
    /// Both: largest handshake head, in bytes: the request a server reads
    /// (a larger one gets 431), the response a client reads (default:
    /// 16 KiB).
    pub max_header_bytes: usize,
    /// Server: most header lines in a handshake request (default: 100);
    /// tungstenite itself refuses more than 124.
    pub max_headers: usize,
    /// Server: most open connections (default: 1024). The next one gets
    /// HTTP 503; open connections are unaffected.
    pub max_connections: usize,
    /// Both: how long the upgrade may take (default: 10 s). A server
    /// drops a client that connects and sends no request within it; a
    /// client gives up on a server that does not answer.
    pub handshake_timeout: Duration,
    /// Both: close a connection that has received nothing for this long
    /// (default: none).
    pub idle_timeout: Option<Duration>,
    /// Both: send a ping after this much silence, to detect dead peers
    /// (default: 30 s).
    pub ping_interval: Option<Duration>,
    /// Both: close the connection when a ping is not answered within this
    /// (default: 10 s).
    pub pong_timeout: Duration,
    /// Both: how long to wait for the peer's answer to our close frame
    /// (default: 5 s).
    pub close_timeout: Duration,
    /// Server: on shutdown, how long open connections may take to close
    /// (default: 10 s).
    pub drain_timeout: Duration,
    /// Both: a single write that blocks longer than this fails (default:
    /// 30 s): a peer that stops reading cannot hold a sender forever.
    pub write_timeout: Option<Duration>,
    /// Client: how long connecting to the socket may take (default: 5 s).
    pub connect_timeout: Duration,
    /// Both: per-connection queue of messages waiting to be sent from
    /// other threads or tasks through an outbox (broadcast, stdin)
    /// (default: 256 messages). A broadcast to a full queue closes that
    /// slow consumer with 1013 instead of growing without bound.
    pub send_queue: usize,
    /// Both: negotiate permessage-deflate (RFC 7692) (default: off). Over
    /// a Unix socket a copy is cheaper than deflate, so it rarely pays
    /// there; it does where a network is in the way (`unixws proxy` in
    /// front of browsers). A client offers it; a server accepts an offer.
    /// Each compressing connection reserves about 300 KiB of zlib state,
    /// resident as it is used (see BENCHMARKS.md); `max_message_size`
    /// counts inflated bytes.
    pub compression: bool,
    /// Both: with compression, messages smaller than this go out
    /// uncompressed (default: 1 KiB; smaller ones rarely shrink enough to
    /// pay for the work).
    pub compression_threshold: usize,
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
            compression: false,
            compression_threshold: 1024,
        }
    }
}

/// A setter per field, named as the field: `Limits::default().pong_timeout(t)`.
macro_rules! setters {
    ($($name:ident: $ty:ty),* $(,)?) => {
        $(
            #[doc = concat!("Sets [`", stringify!($name), "`](Limits::", stringify!($name), ").")]
            pub fn $name(mut self, $name: $ty) -> Self {
                self.$name = $name;
                self
            }
        )*
    };
}

impl Limits {
    setters! {
        max_message_size: usize,
        max_frame_size: usize,
        max_header_bytes: usize,
        max_headers: usize,
        max_connections: usize,
        handshake_timeout: Duration,
        idle_timeout: Option<Duration>,
        ping_interval: Option<Duration>,
        pong_timeout: Duration,
        close_timeout: Duration,
        drain_timeout: Duration,
        write_timeout: Option<Duration>,
        connect_timeout: Duration,
        send_queue: usize,
        compression: bool,
        compression_threshold: usize,
    }

    /// tungstenite's configuration for these limits.
    pub fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_frame_size))
    }
}
