//! One error type for the whole crate. Every message says what happened, to
//! what (the path, the address, the limit) and what to do next, so that the
//! CLI can print it as one line and a user can act on it.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// A `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in unixws.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An address could not be parsed.
    #[error("invalid address `{input}`: {problem}")]
    Address {
        /// The text as the user wrote it.
        input: String,
        /// What is wrong with it and how to write it instead.
        problem: String,
    },

    /// A setting does not make sense (for example file permissions on a TCP address).
    #[error("{0}")]
    Config(String),

    /// Another server is listening on this socket path.
    #[error("address in use: {path} (another server accepts connections there; stop it or pick another path)")]
    AddressInUse {
        /// The socket path.
        path: PathBuf,
    },

    /// The bind path holds something that is not a socket; unixws never removes it.
    #[error("refusing to bind {path}: it is {kind}, not a socket; unixws never removes it, so move it away or pick another path")]
    NotASocket {
        /// The path.
        path: PathBuf,
        /// What is there ("a regular file", "a directory", "a symbolic link", ...).
        kind: &'static str,
    },

    /// Binding or listening failed for another reason.
    #[error("cannot listen on {addr}: {source}{hint}")]
    Bind {
        /// The address as displayed.
        addr: String,
        /// The OS error.
        source: io::Error,
        /// A suggestion, starting with "; " or empty.
        hint: String,
    },

    /// No socket file at the path a client tried to connect to.
    #[error("no socket at {path}: is the server running? (start one with `unixws serve {path}`, or check the path)")]
    SocketNotFound {
        /// The path.
        path: PathBuf,
    },

    /// Nothing accepts connections at the address.
    #[error("connection refused by {addr}: nothing is listening there (a stale socket file, or the server is down); start the server or check the address")]
    ConnectionRefused {
        /// The address as displayed.
        addr: String,
    },

    /// The OS denied access to the socket.
    #[error("permission denied on {path}: {detail}")]
    PermissionDenied {
        /// The socket path.
        path: PathBuf,
        /// Mode and owner of the socket, and who may connect.
        detail: String,
    },

    /// The server accepts no more connections for now (listen backlog full or HTTP 503).
    #[error("{addr} is busy: {detail}; try again later or use --retry")]
    Busy {
        /// The address as displayed.
        addr: String,
        /// What said so.
        detail: String,
    },

    /// An operation took longer than its timeout.
    #[error("{operation} timed out after {after:?} on {addr}; the server may be overloaded or hung (raise the timeout with --timeout if it is just slow)")]
    Timeout {
        /// "connect", "handshake", "read" or "write".
        operation: &'static str,
        /// The address as displayed.
        addr: String,
        /// The timeout that ran out.
        after: Duration,
    },

    /// The server answered the upgrade request with an HTTP error status.
    #[error(
        "the server at {addr} rejected the WebSocket handshake with HTTP {status}{reason}{hint}"
    )]
    HandshakeRejected {
        /// The address as displayed.
        addr: String,
        /// The HTTP status code (403 when the access policy refused us).
        status: u16,
        /// ": " and the response body, or empty.
        reason: String,
        /// "; " and what to do, or empty.
        hint: String,
    },

    /// The handshake failed for a protocol reason.
    #[error("WebSocket handshake with {addr} failed: {source}")]
    Handshake {
        /// The address as displayed.
        addr: String,
        /// tungstenite's error.
        source: Box<tungstenite::Error>,
    },

    /// A message was larger than the configured maximum; the connection was closed with 1009.
    #[error("message of {size} bytes exceeds the limit of {max} bytes; the connection was closed with 1009 (raise --max-message if such messages are expected)")]
    MessageTooLarge {
        /// The size seen so far.
        size: usize,
        /// The limit.
        max: usize,
    },

    /// The peer broke the WebSocket protocol; the connection was closed with `code`.
    #[error("the peer broke the WebSocket protocol ({detail}); closed with {code}")]
    Protocol {
        /// The close code sent (1002 or 1007).
        code: u16,
        /// tungstenite's description.
        detail: String,
    },

    /// The peer stopped answering pings; the connection was closed.
    #[error("the peer did not answer a ping within {after:?}; the connection was closed")]
    KeepaliveTimeout {
        /// The pong timeout.
        after: Duration,
    },

    /// A WebSocket error not covered by a more specific variant.
    #[error("WebSocket error: {0}")]
    WebSocket(Box<tungstenite::Error>),

    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What unixws was doing.
        context: String,
        /// The OS error.
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True when trying again later may succeed: the socket file is missing,
    /// the connection was refused, or the server is busy. Never true for
    /// permission, policy or protocol errors.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::SocketNotFound { .. } | Error::ConnectionRefused { .. } | Error::Busy { .. }
        )
    }
}

impl From<tungstenite::Error> for Error {
    fn from(e: tungstenite::Error) -> Self {
        use tungstenite::error::{CapacityError, Error as WsError};
        match e {
            WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                Error::MessageTooLarge {
                    size,
                    max: max_size,
                }
            }
            WsError::Io(source) => Error::io("WebSocket I/O", source),
            other => Error::WebSocket(Box::new(other)),
        }
    }
}
