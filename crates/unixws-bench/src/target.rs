//! The servers a bench runs against, each in its own process, and the
//! connections the load generator opens to them.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use unixws::{Address, Endpoint, Socket};

/// How the bench reaches a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Uds,
    Tcp,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Uds => "UDS",
            Transport::Tcp => "TCP",
        }
    }
}

/// A server implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerKind {
    /// Byte echo without WebSocket (`unixws bench-echo`): the baseline.
    Raw,
    /// `unixws serve --echo` (tokio).
    Unixws,
    /// Python `websockets` (tests/peers/py_server.py).
    Python,
    /// Node `ws` (tests/peers/node_server.js).
    Node,
    /// A Rust server from `bench/peers` (`unixws-bench-peers KIND ADDR`).
    Peer(&'static str),
    /// `unixws proxy` on TCP in front of `unixws serve --echo` on a Unix socket.
    UnixwsProxy,
    /// nginx (one worker) on TCP in front of the same kind of backend.
    NginxProxy,
}

/// The Rust servers of `bench/peers`.
pub const RUST_PEERS: [&str; 4] = [
    "tungstenite",
    "tokio-tungstenite",
    "fastwebsockets",
    "tokio-websockets",
];

impl ServerKind {
    pub fn name(self) -> String {
        match self {
            ServerKind::Raw => "raw echo".into(),
            ServerKind::Unixws => "unixws".into(),
            ServerKind::Python => "python websockets".into(),
            ServerKind::Node => "node ws".into(),
            ServerKind::Peer(kind) => kind.to_string(),
            ServerKind::UnixwsProxy => "unixws proxy".into(),
            ServerKind::NginxProxy => "nginx proxy".into(),
        }
    }

    pub fn websocket(self) -> bool {
        self != ServerKind::Raw
    }

    /// Python and Node are measured on their Unix socket only.
    pub fn transports(self) -> &'static [Transport] {
        match self {
            ServerKind::Python | ServerKind::Node => &[Transport::Uds],
            // A proxy faces browsers and other hosts: TCP in front, UDS behind.
            ServerKind::UnixwsProxy | ServerKind::NginxProxy => &[Transport::Tcp],
            _ => &[Transport::Uds, Transport::Tcp],
        }
    }
}

/// A server process, killed on drop.
pub struct Running {
    child: Child,
    /// The backend behind a proxy (killed after the proxy).
    backend: Option<Box<Running>>,
    pub address: Address,
    pub websocket: bool,
}

impl Running {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // The whole group: nginx's workers outlive a master killed alone.
        unixws_testkit::kill_group(&mut self.child);
        drop(self.backend.take());
        // A killed peer leaves its socket file; the next run binds there again.
        if let Endpoint::Path(path) = self.address.endpoint() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Files the bench needs beside its binary: the peers' scripts and the
/// interop installs of `scripts/test`, found as the tests find them
/// (`unixws_testkit::checkout`).
pub struct Locations {
    pub interop: PathBuf,
}

impl Locations {
    pub fn find() -> Self {
        Self {
            interop: unixws_testkit::interop_dir(),
        }
    }

    fn rust_peers(&self) -> Result<PathBuf, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find the unixws binary: {e}"))?;
        let bin = exe.with_file_name("unixws-bench-peers");
        if bin.exists() {
            return Ok(bin);
        }
        Err(format!(
            "{} is missing: build the Rust peer servers with `cargo build --release -p unixws-bench-peers`",
            bin.display()
        ))
    }
}

/// Starts `kind` on `transport` (a socket in `dir`) and waits until it accepts.
pub fn start(
    kind: ServerKind,
    transport: Transport,
    dir: &Path,
    at: &Locations,
) -> Result<Running, String> {
    let endpoint = match transport {
        Transport::Uds => {
            Endpoint::Path(dir.join(format!("{}.sock", kind.name().replace(' ', "-"))))
        }
        Transport::Tcp => Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port: unixws_testkit::try_free_port().map_err(|e| format!("no free TCP port: {e}"))?,
        },
    };
    let address = Address::new(endpoint, "/").map_err(|e| e.to_string())?;
    let addr = address.endpoint_display();
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the unixws binary: {e}"))?;
    let mut backend = None;
    let mut cmd = match kind {
        ServerKind::UnixwsProxy | ServerKind::NginxProxy => {
            let behind = start(ServerKind::Unixws, Transport::Uds, dir, at)?;
            let Endpoint::Path(sock) = behind.address.endpoint().clone() else {
                return Err("the proxy's backend is not on a Unix socket".into());
            };
            backend = Some(Box::new(behind));
            if kind == ServerKind::UnixwsProxy {
                let mut c = Command::new(&exe);
                c.args(["proxy", "--listen", &addr, "--to"])
                    .arg(format!("ws+unix://{}", sock.display()));
                c
            } else {
                unixws_testkit::nginx_command(dir, &addr, &sock)?
            }
        }
        ServerKind::Raw => {
            let mut c = Command::new(&exe);
            c.args(["bench-echo", &addr]);
            c
        }
        ServerKind::Unixws => {
            let mut c = Command::new(&exe);
            c.args([
                "serve",
                "--echo",
                "--max-message",
                "64MiB",
                "--ping-interval",
                "0",
                "--max-connections",
                "100000",
                &addr,
            ]);
            if transport == Transport::Uds {
                // nginx's workers (another uid) connect to it as a backend.
                c.args(["--mode", "666"]);
            }
            c
        }
        ServerKind::Python => {
            let mut c = unixws_testkit::try_python("py_server.py")?;
            c.arg(&addr);
            c
        }
        ServerKind::Node => {
            let mut c = unixws_testkit::try_node("node_server.js")?;
            c.arg(&addr);
            c
        }
        ServerKind::Peer(name) => {
            let mut c = Command::new(at.rust_peers()?);
            c.args([name, &addr]);
            c
        }
    };
    // Our own servers announce themselves on stderr; peers only complain there.
    let stderr = match kind {
        ServerKind::Raw | ServerKind::Unixws | ServerKind::UnixwsProxy => Stdio::null(),
        _ => Stdio::inherit(),
    };
    let child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start the {} server: {e}", kind.name()))?;
    let running = Running {
        child,
        backend,
        address,
        websocket: kind.websocket(),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if connect_std(&running.address).is_ok() {
            return Ok(running);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the {} server did not start listening on {addr} within 15 s",
                kind.name()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

type Reader = Pin<Box<dyn AsyncRead + Send>>;
type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// A plain connection to `address` (TCP without Nagle).
fn connect_std(address: &Address) -> io::Result<Socket> {
    match address.endpoint() {
        Endpoint::Path(p) => Ok(Socket::Unix(std::os::unix::net::UnixStream::connect(p)?)),
        Endpoint::Tcp { host, port } => {
            let s = std::net::TcpStream::connect((host.as_str(), *port))?;
            s.set_nodelay(true)?;
            Ok(Socket::Tcp(s))
        }
        Endpoint::Abstract(name) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("the bench does not serve on abstract sockets (@{name})"),
        )),
    }
}

/// A connection of the load generator, upgraded by tungstenite's client
/// handshake when the server speaks WebSocket. Nothing is lost in
/// tungstenite's buffer: a server sends nothing after its 101 until the
/// client writes.
fn connect_upgraded(address: &Address, websocket: bool) -> io::Result<Socket> {
    let socket = connect_std(address)?;
    if !websocket {
        return Ok(socket);
    }
    match unixws::tungstenite::client("ws://localhost/", socket) {
        Ok((ws, _response)) => Ok(ws.into_inner()),
        Err(e) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("upgrade refused: {e}"),
        )),
    }
}

/// A connection of the load generator, on tokio.
pub struct Conn {
    read: Reader,
    write: Writer,
}

impl Conn {
    pub async fn open(address: &Address, websocket: bool) -> io::Result<Conn> {
        let address = address.clone();
        let socket = tokio::task::spawn_blocking(move || connect_upgraded(&address, websocket))
            .await
            .map_err(io::Error::other)??;
        socket.set_nonblocking(true)?;
        let (read, write): (Reader, Writer) = match socket {
            Socket::Unix(s) => {
                let (r, w) = tokio::net::UnixStream::from_std(s)?.into_split();
                (Box::pin(r), Box::pin(w))
            }
            Socket::Tcp(s) => {
                let (r, w) = tokio::net::TcpStream::from_std(s)?.into_split();
                (Box::pin(r), Box::pin(w))
            }
        };
        Ok(Conn { read, write })
    }

    pub fn split(self) -> (Reader, Writer) {
        (self.read, self.write)
    }
}

/// A blocking connection for the thread-per-connection client: a writer
/// and a reader (two handles to one socket), upgraded when the server
/// speaks WebSocket.
pub fn open_blocking(
    address: &Address,
    websocket: bool,
) -> io::Result<(
    Box<dyn std::io::Write + Send>,
    Box<dyn std::io::Read + Send>,
)> {
    let socket = connect_upgraded(address, websocket)?;
    Ok((Box::new(socket.try_clone()?), Box::new(socket)))
}
