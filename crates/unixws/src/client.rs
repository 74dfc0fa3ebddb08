//! The blocking client: connect to a Unix socket (or TCP) in one call, with
//! timeouts, extra headers, subprotocols and retry with backoff for the
//! failures that can heal (socket missing, refused, busy) and never for
//! those that cannot (403, permission denied, protocol errors).

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self as nixsock, AddressFamily, SockFlag, SockType, UnixAddr};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::HeaderValue;

use crate::addr::{Address, Endpoint, ToAddress};
use crate::config::Limits;
use crate::connection::{Connection, ConnectionInfo};
use crate::error::{Error, Operation, Result};
use crate::handshake::{handshake_config, is_header_too_large, HeadBuffer, HeadReader};
use crate::session::Session;
use crate::stream::{Socket, Stream};
use tungstenite::protocol::Role;
use tungstenite::Message;

/// Connect to `addr` with default settings.
///
/// ```no_run
/// let mut conn = unixws::connect("ws+unix:///run/app.sock:/chat")?;
/// conn.send(unixws::Message::text("hello"))?;
/// # Ok::<(), unixws::Error>(())
/// ```
pub fn connect(addr: impl ToAddress) -> Result<Connection> {
    ClientBuilder::new(addr)?.connect()
}

/// How often and how patiently to retry a failed connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Extra attempts after the first (default: 0, no retry).
    pub attempts: u32,
    /// Delay before the first retry; doubled each time (default: 100 ms).
    pub base_delay: Duration,
    /// Largest delay between attempts (default: 5 s).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 0,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Retry up to `attempts` times, waiting `base_delay` doubled each time,
    /// at most `max_delay`.
    pub fn new(attempts: u32, base_delay: Duration, max_delay: Duration) -> Self {
        Self {
            attempts,
            base_delay,
            max_delay,
        }
    }

    /// Retry for as long as it takes, with the default delays (100 ms
    /// doubling to 5 s): for [`ClientBuilder::reconnect`], a client that
    /// waits out any restart of its server.
    pub fn forever() -> Self {
        Self::attempts(u32::MAX)
    }

    /// Retry up to `attempts` times with the default delays.
    pub fn attempts(attempts: u32) -> Self {
        Self {
            attempts,
            ..Self::default()
        }
    }

    /// The delay before retry number `retry` (0-based): exponential, capped,
    /// with jitter between 50% and 100% so that many clients do not retry in step.
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
            .min(self.max_delay);
        exp.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

/// Options for a client connection.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    pub(crate) addr: Address,
    pub(crate) limits: Limits,
    pub(crate) read_timeout: Option<Duration>,
    /// Timeouts set one by one, kept over a later [`limits`](Self::limits).
    timeouts: TimeoutOverrides,
    headers: Vec<(String, String)>,
    subprotocols: Vec<String>,
    host: Option<String>,
    pub(crate) retry: RetryPolicy,
    pub(crate) reconnect: RetryPolicy,
    on_connect: Option<OnConnect>,
}

/// What [`ClientBuilder::on_connect`] runs.
type OnConnectFn = dyn Fn(&ConnectionInfo) -> Vec<Message> + Send + Sync;

#[derive(Clone)]
struct OnConnect(Arc<OnConnectFn>);

impl std::fmt::Debug for OnConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnConnect(..)")
    }
}

impl ClientBuilder {
    /// A client for `addr` with default limits, no retry.
    pub fn new(addr: impl ToAddress) -> Result<Self> {
        Ok(Self {
            addr: addr.to_address()?,
            limits: Limits::default(),
            read_timeout: None,
            timeouts: TimeoutOverrides::default(),
            headers: Vec::new(),
            subprotocols: Vec::new(),
            host: None,
            retry: RetryPolicy::default(),
            reconnect: RetryPolicy::forever(),
            on_connect: None,
        })
    }

    /// Limits (message size, keepalive, close timeout, ...). A timeout set
    /// with its own method ([`connect_timeout`](Self::connect_timeout),
    /// [`handshake_timeout`](Self::handshake_timeout),
    /// [`write_timeout`](Self::write_timeout)) wins over the one in
    /// `limits`, whichever was called first.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self.timeouts.apply(&mut self.limits);
        self
    }

    /// How long connecting to the socket may take (default: 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.connect = Some(timeout);
        self.timeouts.apply(&mut self.limits);
        self
    }

    /// How long the server may take to answer the upgrade (default: 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.handshake = Some(timeout);
        self.timeouts.apply(&mut self.limits);
        self
    }

    /// Fail [`Connection::recv`] when no message arrives for this long (default: none).
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = Some(timeout);
        self
    }

    /// Fail a send that blocks longer than this (default: 30 s).
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.write = Some(timeout);
        self.timeouts.apply(&mut self.limits);
        self
    }

    /// Add a request header, e.g. `("Authorization", "Bearer ...")`.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Offer a subprotocol (may be called several times).
    pub fn subprotocol(mut self, protocol: impl Into<String>) -> Self {
        self.subprotocols.push(protocol.into());
        self
    }

    /// The `Host` header [`localhost` over a Unix socket, `host:port` over TCP].
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Retry transient failures.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How a reconnecting client
    /// ([`connect_reconnecting`](ClientBuilder::connect_reconnecting), feature
    /// `tokio`) retries after its connection dropped (default:
    /// [`RetryPolicy::forever`]). The first connect follows
    /// [`retry`](ClientBuilder::retry).
    pub fn reconnect(mut self, policy: RetryPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// Messages to send first on every connection, made by `hook` from
    /// what the handshake said: authentication, subscriptions. A
    /// reconnecting client runs it again after each reconnect, so the
    /// server sees them again before anything else. (Credentials that go
    /// in the request itself belong in [`header`](ClientBuilder::header).)
    ///
    /// ```no_run
    /// use unixws::{ClientBuilder, Message};
    /// let mut conn = ClientBuilder::new("ws+unix:///run/feed.sock")?
    ///     .on_connect(|_info| vec![Message::text("subscribe prices")])
    ///     .connect()?;
    /// # Ok::<(), unixws::Error>(())
    /// ```
    pub fn on_connect<F>(mut self, hook: F) -> Self
    where
        F: Fn(&ConnectionInfo) -> Vec<Message> + Send + Sync + 'static,
    {
        self.on_connect = Some(OnConnect(Arc::new(hook)));
        self
    }

    /// What [`on_connect`](ClientBuilder::on_connect) says to send first
    /// on a connection with `info`.
    pub(crate) fn greeting(&self, info: &ConnectionInfo) -> Vec<Message> {
        self.on_connect
            .as_ref()
            .map_or_else(Vec::new, |h| (h.0)(info))
    }

    /// Connect and complete the handshake, retrying as configured.
    pub fn connect(&self) -> Result<Connection> {
        let mut retry = 0;
        loop {
            match self.connect_once() {
                Ok(mut conn) => {
                    for message in self.greeting(conn.info()) {
                        conn.feed(message)?;
                    }
                    conn.flush()?;
                    return Ok(conn);
                }
                Err(e) => thread::sleep(self.retry_after(e, &mut retry)?),
            }
        }
    }

    /// The retry rule of both clients: after a transient error (missing
    /// socket, refused, busy), wait the policy's next delay while attempts
    /// remain; any other error, or the last attempt's, is the answer.
    pub(crate) fn retry_after(&self, e: Error, retry: &mut u32) -> Result<Duration> {
        if !e.is_transient() {
            return Err(e);
        }
        next_delay(&self.retry, e, retry)
    }

    /// The client's session after a handshake whose head ended where
    /// `head` says (frames that came with the response are its first
    /// input), with the compression the response agreed to.
    pub(crate) fn session_after(
        &self,
        head: HeadBuffer,
        response: &tungstenite::handshake::client::Response,
    ) -> Result<Session> {
        let agreed = client_compression(self.limits.compression, response).map_err(|detail| {
            Error::BadExtension {
                addr: self.addr.endpoint_display(),
                detail,
            }
        })?;
        Ok(Session::new(
            Role::Client,
            Arc::new(self.limits.clone()),
            self.read_timeout,
            Instant::now(),
        )
        .with_compression(agreed)
        .with_initial(&head.into_tail()))
    }

    fn connect_once(&self) -> Result<Connection> {
        let socket = open_socket(&self.addr, self.limits.connect_timeout)?;
        let peer = socket.peer().map_err(|e| {
            Error::io(
                format!("reading the peer of {}", self.addr.endpoint_display()),
                e,
            )
        })?;
        let _ = socket.set_write_timeout(self.limits.write_timeout);
        let mut stream = Stream::new(socket);
        stream.set_deadline(Some(Instant::now() + self.limits.handshake_timeout));
        let reader = HeadReader::new(stream, HeadBuffer::response(self.limits.max_header_bytes));

        let request = self.request()?;
        let config = Some(handshake_config());
        let (ws, response) = match tungstenite::client::client_with_config(request, reader, config)
        {
            Ok(pair) => pair,
            Err(HandshakeError::Interrupted(_)) => return Err(self.handshake_timed_out()),
            Err(HandshakeError::Failure(tungstenite::Error::Io(e))) if is_header_too_large(&e) => {
                return Err(self.response_too_large())
            }
            Err(HandshakeError::Failure(e)) => return Err(self.handshake_error(e)),
        };
        let HeadReader {
            inner: mut stream,
            head,
        } = ws.into_inner();
        stream.set_deadline(None);
        let session = self.session_after(head, &response)?;
        let info = self.response_info(peer, &response);
        Ok(Connection::new(stream, session, info))
    }

    /// What the client learned from the handshake.
    pub(crate) fn response_info(
        &self,
        peer: crate::peer::Peer,
        response: &tungstenite::handshake::client::Response,
    ) -> ConnectionInfo {
        let subprotocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (path, query) = match self.addr.resource().split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (self.addr.resource().to_string(), None),
        };
        ConnectionInfo {
            address: Some(Arc::new(self.addr.clone())),
            peer,
            path,
            query,
            headers: response.headers().clone(),
            subprotocol,
        }
    }

    pub(crate) fn handshake_timed_out(&self) -> Error {
        Error::Timeout {
            operation: Operation::Handshake,
            addr: self.addr.endpoint_display(),
            after: self.limits.handshake_timeout,
        }
    }

    pub(crate) fn response_too_large(&self) -> Error {
        Error::ResponseTooLarge {
            addr: self.addr.endpoint_display(),
            max: self.limits.max_header_bytes,
        }
    }

    pub(crate) fn request(&self) -> Result<tungstenite::handshake::client::Request> {
        let host = self
            .host
            .clone()
            .unwrap_or_else(|| self.addr.default_host_header());
        let url = self.addr.request_url(&host);
        let mut request = url.as_str().into_client_request().map_err(|e| {
            Error::invalid(
                "ClientBuilder::host",
                format!("cannot build a request for `{url}`: {e}"),
            )
        })?;
        let headers = request.headers_mut();
        for (name, value) in &self.headers {
            let name: tungstenite::http::HeaderName = name.parse().map_err(|_| {
                Error::invalid(
                    "ClientBuilder::header",
                    format!("`{name}` is not a valid HTTP header name"),
                )
            })?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                Error::invalid(
                    "ClientBuilder::header",
                    format!("the value of header `{name}` has characters HTTP does not allow"),
                )
            })?;
            headers.append(name, value);
        }
        offer_compression(self.limits.compression, headers);
        if !self.subprotocols.is_empty() {
            let joined = self.subprotocols.join(", ");
            let value = HeaderValue::from_str(&joined).map_err(|_| {
                Error::invalid(
                    "ClientBuilder::subprotocol",
                    format!("`{joined}` is not a valid subprotocol list"),
                )
            })?;
            headers.insert("Sec-WebSocket-Protocol", value);
        }
        Ok(request)
    }

    pub(crate) fn handshake_error(&self, e: tungstenite::Error) -> Error {
        let addr = self.addr.endpoint_display();
        match e {
            tungstenite::Error::Http(response) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).trim().to_string())
                    .unwrap_or_default();
                if status == 503 {
                    return Error::Busy {
                        addr,
                        detail: format!(
                            "HTTP 503 ({})",
                            if body.is_empty() {
                                "service unavailable"
                            } else {
                                &body
                            }
                        ),
                    };
                }
                let by_policy = status == 403
                    && response
                        .headers()
                        .get(crate::handshake::REFUSED_BY)
                        .is_some_and(|v| v == crate::handshake::ACCESS_POLICY);
                Error::HandshakeRejected {
                    addr,
                    status,
                    body,
                    refused_uid: by_policy.then(|| nix::unistd::getuid().as_raw()),
                }
            }
            tungstenite::Error::Io(io) if io.kind() == io::ErrorKind::TimedOut => Error::Timeout {
                operation: Operation::Handshake,
                addr,
                after: self.limits.write_timeout.unwrap_or_default(),
            },
            other => Error::Handshake {
                addr,
                source: Box::new(other),
            },
        }
    }
}

/// Offers permessage-deflate in a client request's `headers` if
/// `compression` is on; [`client_compression`] reads the answer.
pub(crate) fn offer_compression(compression: bool, headers: &mut tungstenite::http::HeaderMap) {
    if compression {
        headers.insert(
            "Sec-WebSocket-Extensions",
            HeaderValue::from_static(crate::codec::deflate::CLIENT_OFFER),
        );
    }
}

/// What a handshake response agreed to about permessage-deflate (the
/// client offered it if `offered`); a wrong answer, in words.
pub(crate) fn client_compression(
    offered: bool,
    response: &tungstenite::handshake::client::Response,
) -> std::result::Result<Option<crate::codec::deflate::Agreed>, String> {
    let answers = response
        .headers()
        .get_all("Sec-WebSocket-Extensions")
        .iter()
        .filter_map(|v| v.to_str().ok());
    crate::codec::deflate::client_agreed(offered, answers)
}

/// The policy's next delay after `e`, or `e` once its attempts are spent.
pub(crate) fn next_delay(policy: &RetryPolicy, e: Error, retry: &mut u32) -> Result<Duration> {
    if *retry >= policy.attempts {
        return Err(e);
    }
    let delay = policy.delay(*retry);
    *retry += 1;
    tracing::info!(error = %e, retry = *retry, of = policy.attempts, ?delay, "connect failed; retrying");
    Ok(delay)
}

/// The timeouts a [`ClientBuilder`] was given one by one.
#[derive(Debug, Clone, Copy, Default)]
struct TimeoutOverrides {
    connect: Option<Duration>,
    handshake: Option<Duration>,
    write: Option<Duration>,
}

impl TimeoutOverrides {
    fn apply(&self, limits: &mut Limits) {
        if let Some(t) = self.connect {
            limits.connect_timeout = t;
        }
        if let Some(t) = self.handshake {
            limits.handshake_timeout = t;
        }
        if let Some(t) = self.write {
            limits.write_timeout = Some(t);
        }
    }
}

/// Opens the socket within `timeout`, turning OS errors into errors that say
/// what to do.
pub(crate) fn open_socket(addr: &Address, timeout: Duration) -> Result<Socket> {
    match addr.endpoint() {
        Endpoint::Path(path) => {
            let ua = UnixAddr::new(path.as_path())
                .map_err(|e| Error::io(format!("socket path {}", path.display()), e.into()))?;
            connect_unix(&ua, timeout).map_err(|e| unix_connect_error(addr, Some(path), e))
        }
        Endpoint::Abstract(name) => {
            let ua = crate::sys::abstract_connect_address(name.as_bytes())
                .map_err(|e| Error::io(format!("abstract socket @{name}"), e))?;
            connect_unix(&ua, timeout).map_err(|e| unix_connect_error(addr, None, e))
        }
        Endpoint::Tcp { host, port } => connect_tcp(addr, host, *port, timeout),
    }
}

/// A Unix-socket connect never blocks for long except on a full listen
/// backlog, where a non-blocking connect says EAGAIN: retry until `timeout`.
fn connect_unix(ua: &UnixAddr, timeout: Duration) -> std::result::Result<Socket, ConnectFailure> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        let fd = nixsock::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(ConnectFailure::Os)?;
        match nixsock::connect(fd.as_raw_fd(), ua) {
            Ok(()) => {
                crate::sys::widen_send_buffer(fd.as_fd());
                let stream = UnixStream::from(fd);
                stream.set_nonblocking(false).map_err(|e| {
                    ConnectFailure::Os(Errno::from_raw(e.raw_os_error().unwrap_or(0)))
                })?;
                return Ok(Socket::Unix(stream));
            }
            Err(Errno::EAGAIN) if Instant::now() < deadline => {
                thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(Errno::EAGAIN) => return Err(ConnectFailure::BacklogFull(timeout)),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(ConnectFailure::Os(e)),
        }
    }
}

enum ConnectFailure {
    Os(Errno),
    BacklogFull(Duration),
}

fn unix_connect_error(addr: &Address, path: Option<&Path>, failure: ConnectFailure) -> Error {
    let shown = addr.endpoint_display();
    match failure {
        ConnectFailure::BacklogFull(after) => Error::Busy {
            addr: shown,
            detail: format!("its queue of pending connections stayed full for {after:?}"),
        },
        ConnectFailure::Os(Errno::ENOENT) => match path {
            Some(p) => match missing_directory(p) {
                Some(dir) => Error::DirectoryNotFound {
                    path: p.to_path_buf(),
                    dir,
                },
                None => Error::SocketNotFound {
                    path: p.to_path_buf(),
                },
            },
            None => Error::ConnectionRefused { addr: shown },
        },
        // Linux refuses a connect to a regular file with ECONNREFUSED, as
        // it does for a stale socket: look at what the path holds.
        ConnectFailure::Os(Errno::ECONNREFUSED) => match path.and_then(non_socket_kind) {
            Some(kind) => Error::NotASocketPath {
                path: path.map(Path::to_path_buf).unwrap_or_default(),
                kind,
            },
            None => Error::ConnectionRefused { addr: shown },
        },
        ConnectFailure::Os(Errno::EACCES | Errno::EPERM) => Error::PermissionDenied {
            path: path.map_or_else(|| shown.clone().into(), Path::to_path_buf),
            detail: path.map_or_else(
                || "the kernel refused the connection".to_string(),
                permission_detail,
            ),
        },
        ConnectFailure::Os(Errno::ENOTSOCK | Errno::ENOTDIR) => Error::NotASocketPath {
            path: path.map_or_else(|| shown.into(), Path::to_path_buf),
            kind: path
                .and_then(non_socket_kind)
                .unwrap_or("a path through a file that is not a directory"),
        },
        ConnectFailure::Os(e) => Error::io(format!("connecting to {shown}"), io::Error::from(e)),
    }
}

/// The first directory on the way to `path` that does not exist, if any.
fn missing_directory(path: &Path) -> Option<PathBuf> {
    let mut missing = None;
    for dir in path.ancestors().skip(1) {
        if dir.as_os_str().is_empty() || dir.exists() {
            break;
        }
        missing = Some(dir.to_path_buf());
    }
    missing
}

/// What `path` holds (following links), when it is there and not a socket.
fn non_socket_kind(path: &Path) -> Option<&'static str> {
    crate::listen::non_socket_kind(&std::fs::metadata(path).ok()?.file_type())
}

/// "the socket is mode 0660 owned by root:app; run as root or a member of group app".
fn permission_detail(path: &Path) -> String {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(_) => {
            return format!(
                "a directory on the way to it is not searchable by uid {}; ask for access to the directory or use a socket in a shared directory",
                nix::unistd::getuid()
            )
        }
    };
    let mode = meta.mode() & 0o7777;
    let user = nix::unistd::User::from_uid(meta.uid().into())
        .ok()
        .flatten()
        .map_or_else(|| meta.uid().to_string(), |u| u.name);
    let group = nix::unistd::Group::from_gid(meta.gid().into())
        .ok()
        .flatten()
        .map_or_else(|| meta.gid().to_string(), |g| g.name);
    let mut who = vec![format!("user {user}")];
    if mode & 0o020 != 0 {
        who.push(format!("a member of group {group}"));
    }
    format!(
        "the socket is mode {mode:04o} owned by {user}:{group}; run as {} (this process is uid {}), or have the server bind with a looser BindOptions::mode",
        who.join(" or "),
        nix::unistd::getuid()
    )
}

fn connect_tcp(addr: &Address, host: &str, port: u16, timeout: Duration) -> Result<Socket> {
    let shown = addr.endpoint_display();
    if port == 0 {
        return Err(Error::invalid(
            "Address",
            format!("cannot connect to {shown}: port 0 only means \"any port\" to a server; give the port the server printed"),
        ));
    }
    let targets: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| Error::Resolve {
            addr: shown.clone(),
            source: Some(e),
        })?
        .collect();
    let mut last = None;
    for target in &targets {
        match TcpStream::connect_timeout(target, timeout) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(Socket::Tcp(s));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Error::ConnectionRefused { addr: shown }
        }
        Some(e) if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock => {
            Error::Timeout {
                operation: Operation::Connect,
                addr: shown,
                after: timeout,
            }
        }
        Some(e) => Error::io(format!("connecting to {shown}"), e),
        None => Error::Resolve {
            addr: shown,
            source: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A timeout given on its own survives a later `limits`, and `limits`
    /// still sets everything else.
    #[test]
    fn single_timeouts_outlive_a_later_limits() {
        let t = Duration::from_millis(1234);
        let limits = Limits::default()
            .connect_timeout(Duration::from_secs(60))
            .max_message_size(99);
        let builder = ClientBuilder::new("/tmp/x.sock")
            .unwrap()
            .connect_timeout(t)
            .write_timeout(t)
            .limits(limits.clone());
        assert_eq!(builder.limits.connect_timeout, t);
        assert_eq!(builder.limits.write_timeout, Some(t));
        assert_eq!(builder.limits.handshake_timeout, limits.handshake_timeout);
        assert_eq!(builder.limits.max_message_size, 99);
        // And in the other order.
        let builder = ClientBuilder::new("/tmp/x.sock")
            .unwrap()
            .limits(limits)
            .handshake_timeout(t);
        assert_eq!(builder.limits.handshake_timeout, t);
        assert_eq!(builder.limits.connect_timeout, Duration::from_secs(60));
    }
}
