//! One error type for the whole crate. Every message says what happened, to
//! what (the path, the address, the limit) and what to do next, so that a
//! program can print it as one line and a user can act on it.
//!
//! Messages speak in API terms (`Limits::max_message_size`,
//! `BindOptions::mode`): a Rust caller has no command-line flags. The
//! `unixws` CLI maps those names to its flags when it prints an error.
//!
//! Each failure a caller may want to handle differently has a variant of
//! its own: matching on [`Error`] never needs to look at message text.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tungstenite::protocol::frame::coding::CloseCode;

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

    /// A setting was given a value it cannot take (a mode with bits outside
    /// `0o777`, file permissions on a TCP address, a header name with
    /// spaces, ...).
    #[error("{option}: {problem}")]
    InvalidOption {
        /// The API item, e.g. `BindOptions::mode` or `ClientBuilder::header`.
        option: &'static str,
        /// What is wrong and what to give instead.
        problem: String,
    },

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
    #[error("cannot listen on {addr}: {step}{source}{}", bind_hint(*.step, .source))]
    Bind {
        /// The address as displayed.
        addr: String,
        /// What was being done when it failed.
        step: BindStep,
        /// The OS error.
        source: io::Error,
    },

    /// No socket file at the path a client tried to connect to.
    #[error("no socket at {path}: is the server running? (start it, or check the path)")]
    SocketNotFound {
        /// The path.
        path: PathBuf,
    },

    /// The directory of the socket path a client tried does not exist.
    #[error("cannot connect to {path}: its directory {dir} does not exist; check the path (a server creates its socket file, not the directory; the directory may also appear when the server's service starts)")]
    DirectoryNotFound {
        /// The socket path.
        path: PathBuf,
        /// The first directory on the way that is missing.
        dir: PathBuf,
    },

    /// A client tried to connect to a path that holds something other than
    /// a socket. Retrying does not help: a server never turns it into one.
    #[error("cannot connect to {path}: it is {kind}, not a socket; check the path")]
    NotASocketPath {
        /// The path.
        path: PathBuf,
        /// What is there ("a regular file", "a directory", ...).
        kind: &'static str,
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
    #[error("{addr} is busy: {detail}; try again later, or connect with a RetryPolicy")]
    Busy {
        /// The address as displayed.
        addr: String,
        /// What said so.
        detail: String,
    },

    /// A host name could not be resolved to an address.
    #[error("cannot resolve {addr}: {}", match .source { Some(e) => e.to_string(), None => "it resolves to no address".to_string() })]
    Resolve {
        /// The address as displayed.
        addr: String,
        /// The resolver's error, if it gave one.
        source: Option<io::Error>,
    },

    /// An operation took longer than its timeout.
    #[error("{operation} timed out after {after:?} on {addr}; the server may be overloaded or hung (raise {} if it is just slow)", operation.setting())]
    Timeout {
        /// What timed out.
        operation: Operation,
        /// The socket address as displayed (the peer, for a stream the
        /// caller wrapped).
        addr: String,
        /// The timeout that ran out.
        after: Duration,
    },

    /// The server answered the upgrade request with an HTTP error status.
    #[error("the server at {addr} rejected the WebSocket handshake with HTTP {status}{}{}", colon(.body), policy_hint(*.refused_uid))]
    HandshakeRejected {
        /// The address as displayed.
        addr: String,
        /// The HTTP status code.
        status: u16,
        /// The response body, trimmed (often the reason), or empty.
        body: String,
        /// This process's uid, when the server said its access policy
        /// refused it (rather than the application's own check).
        refused_uid: Option<u32>,
    },

    /// The server's handshake response was larger than the client allows.
    #[error("the handshake response from {addr} is larger than {max} bytes (Limits::max_header_bytes); raise it if the server sends large headers")]
    ResponseTooLarge {
        /// The address as displayed.
        addr: String,
        /// The limit.
        max: usize,
    },

    /// The server's answer about an extension (permessage-deflate) was
    /// not one the client offered or can use.
    #[error("the server at {addr} answered the extension offer wrongly: {detail}; turn Limits::compression off to connect without it")]
    BadExtension {
        /// The address as displayed.
        addr: String,
        /// What was wrong.
        detail: String,
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
    #[error("message of {size} bytes exceeds the limit of {max} bytes; the connection was closed with 1009 (raise Limits::max_message_size if such messages are expected)")]
    MessageTooLarge {
        /// The size seen so far.
        size: usize,
        /// The limit.
        max: usize,
    },

    /// The peer broke the WebSocket protocol; the connection was closed with `code`.
    #[error("the peer broke the WebSocket protocol ({detail}); closed with {}", u16::from(*.code))]
    Protocol {
        /// The close code sent (1002 or 1007).
        code: CloseCode,
        /// What the peer did.
        detail: String,
    },

    /// The peer went away without a close frame (it hung up or reset the
    /// connection); nothing was sent to it.
    #[error("the peer closed the connection without a WebSocket close frame")]
    ConnectionReset,

    /// The peer stopped answering pings; the connection was closed.
    #[error("the peer did not answer a ping within {after:?}; the connection was closed")]
    KeepaliveTimeout {
        /// The pong timeout.
        after: Duration,
    },

    /// A reconnecting client's connection ended before the server
    /// confirmed a message (see
    /// `tokio::Reconnecting::send`, feature `tokio`). It may or
    /// may not have arrived; the next call connects again.
    #[error("the server did not confirm the message before the connection ended ({reason}); it may not have arrived: send it again if it must arrive")]
    NotConfirmed {
        /// How the connection ended.
        reason: String,
    },

    /// The socket handed over by the service manager cannot be used.
    #[error("socket activation: {problem}")]
    Activation {
        /// What is wrong and how to set the unit up instead.
        problem: String,
    },

    /// An async entry point was called outside a tokio runtime.
    #[error(
        "{call} needs a tokio runtime: call it inside one (#[tokio::main], or Runtime::block_on)"
    )]
    NoRuntime {
        /// The function that was called.
        call: &'static str,
    },

    /// A task unixws ran on the caller's behalf did not finish (it
    /// panicked, or its runtime shut down).
    #[error("{task} failed: {detail}")]
    TaskFailed {
        /// What the task did.
        task: &'static str,
        /// Why it did not finish.
        detail: String,
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

/// What timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// Connecting the socket ([`Limits::connect_timeout`](crate::Limits::connect_timeout)).
    Connect,
    /// The opening handshake ([`Limits::handshake_timeout`](crate::Limits::handshake_timeout)).
    Handshake,
    /// Waiting for a message ([`ClientBuilder::read_timeout`](crate::ClientBuilder::read_timeout)).
    Read,
    /// A write the peer did not take ([`Limits::write_timeout`](crate::Limits::write_timeout)).
    Write,
}

impl Operation {
    /// The setting that bounds this operation.
    pub fn setting(self) -> &'static str {
        match self {
            Operation::Connect => "Limits::connect_timeout",
            Operation::Handshake => "Limits::handshake_timeout",
            Operation::Read => "ClientBuilder::read_timeout",
            Operation::Write => "Limits::write_timeout",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Connect => "connect",
            Operation::Handshake => "handshake",
            Operation::Read => "read",
            Operation::Write => "write",
        })
    }
}

/// The step of binding that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BindStep {
    /// Creating the socket, binding its address or listening on it.
    Listen,
    /// Setting the file's owner and group ([`BindOptions::owner`](crate::BindOptions::owner), [`BindOptions::group`](crate::BindOptions::group)).
    Owner,
    /// Setting the file's mode ([`BindOptions::mode`](crate::BindOptions::mode)).
    Mode,
    /// Taking the advisory lock `PATH.lock` that keeps two servers starting
    /// at once on one path from both binding it.
    Lock,
}

impl fmt::Display for BindStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BindStep::Listen => "",
            BindStep::Owner => "setting the owner and group: ",
            BindStep::Mode => "setting the mode: ",
            BindStep::Lock => "taking the lock beside it: ",
        })
    }
}

/// What to do about a bind failure, after "; ", or nothing.
fn bind_hint(step: BindStep, source: &io::Error) -> &'static str {
    match (step, source.kind()) {
        (BindStep::Owner, io::ErrorKind::PermissionDenied) => {
            "; changing the owner needs root, and the group must be one this user belongs to"
        }
        (BindStep::Listen, io::ErrorKind::PermissionDenied) => {
            "; the directory is not writable by this user: pick a directory you own or run as its owner"
        }
        (BindStep::Listen, io::ErrorKind::AddrInUse) => {
            "; another server uses it: stop it or pick another address"
        }
        (BindStep::Listen, io::ErrorKind::NotFound) => {
            "; the directory does not exist: create it first"
        }
        (BindStep::Lock, io::ErrorKind::TimedOut) => {
            "; another process starting a server at this path holds the lock: stop it, or pick another address"
        }
        (BindStep::Lock, io::ErrorKind::PermissionDenied) => {
            "; the lock file belongs to another user: run as that user, or pick another address"
        }
        _ => "",
    }
}

fn colon(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

fn policy_hint(uid: Option<u32>) -> String {
    match uid {
        Some(uid) => format!(
            "; this process runs as uid {uid}: ask the server's operator to allow it in the server's access policy"
        ),
        None => String::new(),
    }
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// An I/O error on an open connection: a peer that hung up or reset
    /// is [`Error::ConnectionReset`], whatever call noticed it.
    pub(crate) fn on_connection(context: &'static str, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted => Error::ConnectionReset,
            _ => Error::io(context, source),
        }
    }

    pub(crate) fn invalid(option: &'static str, problem: impl Into<String>) -> Self {
        Error::InvalidOption {
            option,
            problem: problem.into(),
        }
    }

    /// True when the peer caused it: it hung up, broke the protocol, sent
    /// too much, or stopped answering or reading. A server logs these as
    /// the peer's doing, not as its own failure.
    pub fn is_peer_caused(&self) -> bool {
        matches!(
            self,
            Error::ConnectionReset
                | Error::Protocol { .. }
                | Error::MessageTooLarge { .. }
                | Error::KeepaliveTimeout { .. }
                | Error::Timeout {
                    operation: Operation::Read | Operation::Write,
                    ..
                }
        )
    }

    /// True when trying again later may succeed: the socket file or its
    /// directory is missing, the connection was refused, or the server is
    /// busy. Never true for permission, policy or protocol errors, nor for
    /// a path that holds something other than a socket.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::SocketNotFound { .. }
                | Error::DirectoryNotFound { .. }
                | Error::ConnectionRefused { .. }
                | Error::Busy { .. }
        )
    }
}

impl From<tungstenite::Error> for Error {
    fn from(e: tungstenite::Error) -> Self {
        use tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
        match e {
            WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                Error::MessageTooLarge {
                    size,
                    max: max_size,
                }
            }
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                Error::ConnectionReset
            }
            WsError::Io(source) => Error::io("WebSocket I/O", source),
            other => Error::WebSocket(Box::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_no_stray_punctuation() {
        let rejected = Error::HandshakeRejected {
            addr: "/run/app.sock".into(),
            status: 403,
            body: String::new(),
            refused_uid: None,
        };
        assert_eq!(
            rejected.to_string(),
            "the server at /run/app.sock rejected the WebSocket handshake with HTTP 403"
        );
        let by_policy = Error::HandshakeRejected {
            addr: "/run/app.sock".into(),
            status: 403,
            body: "uid 7 is not allowed".into(),
            refused_uid: Some(7),
        };
        assert!(by_policy
            .to_string()
            .ends_with("HTTP 403: uid 7 is not allowed; this process runs as uid 7: ask the server's operator to allow it in the server's access policy"));
        let bind = Error::Bind {
            addr: "/x/y.sock".into(),
            step: BindStep::Mode,
            source: io::Error::from(io::ErrorKind::Other),
        };
        assert_eq!(
            bind.to_string(),
            "cannot listen on /x/y.sock: setting the mode: other error"
        );
    }

    #[test]
    fn timeouts_name_the_setting_to_raise() {
        let e = Error::Timeout {
            operation: Operation::Write,
            addr: "/run/app.sock".into(),
            after: Duration::from_secs(3),
        };
        assert!(e
            .to_string()
            .starts_with("write timed out after 3s on /run/app.sock"));
        assert!(e.to_string().contains("raise Limits::write_timeout"));
    }

    #[test]
    fn only_waiting_can_fix_transient_errors() {
        assert!(Error::SocketNotFound { path: "/a".into() }.is_transient());
        assert!(!Error::NotASocketPath {
            path: "/a".into(),
            kind: "a regular file"
        }
        .is_transient());
        assert!(!Error::ConnectionReset.is_transient());
    }
}
