//! The servers a bench runs against, each in its own process, and the
//! connections the load generator opens to them.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
        }
    }

    pub fn websocket(self) -> bool {
        self != ServerKind::Raw
    }

    /// Python and Node are measured on their Unix socket only.
    pub fn transports(self) -> &'static [Transport] {
        match self {
            ServerKind::Python | ServerKind::Node => &[Transport::Uds],
            _ => &[Transport::Uds, Transport::Tcp],
        }
    }
}

/// Where a running server listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Path(PathBuf),
    Tcp(u16),
}

/// A server process, killed on drop.
pub struct Running {
    child: Child,
    pub endpoint: Endpoint,
    pub websocket: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A killed peer leaves its socket file; the next run binds there again.
        if let Endpoint::Path(path) = &self.endpoint {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Files the bench needs beside its binary: the peers' scripts and the
/// interop installs of `scripts/test`.
pub struct Locations {
    pub repo: Option<PathBuf>,
    pub interop: PathBuf,
}

impl Locations {
    pub fn find() -> Self {
        // target/release/unixws -> the checkout; else the current directory.
        let exe_repo = std::env::current_exe().ok().and_then(|exe| {
            exe.ancestors()
                .find(|dir| dir.join("tests/peers").is_dir())
                .map(Path::to_path_buf)
        });
        let cwd_repo = std::env::current_dir()
            .ok()
            .filter(|dir| dir.join("tests/peers").is_dir());
        let repo = exe_repo.or(cwd_repo);
        let interop = std::env::var_os("UNIXWS_INTEROP_DIR")
            .map(PathBuf::from)
            .or_else(|| repo.as_ref().map(|r| r.join(".interop")))
            .unwrap_or_else(|| PathBuf::from(".interop"));
        Self { repo, interop }
    }

    fn peer_script(&self, name: &str) -> Result<PathBuf, String> {
        self.repo
            .as_ref()
            .map(|r| r.join("tests/peers").join(name))
            .filter(|p| p.exists())
            .ok_or_else(|| format!("tests/peers/{name} not found: run `unixws bench --peers` from the unixws checkout"))
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

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
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
        Transport::Tcp => Endpoint::Tcp(free_port().map_err(|e| format!("no free TCP port: {e}"))?),
    };
    let addr = match &endpoint {
        Endpoint::Path(p) => p.display().to_string(),
        Endpoint::Tcp(port) => format!("127.0.0.1:{port}"),
    };
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the unixws binary: {e}"))?;
    let mut cmd = match kind {
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
            c
        }
        ServerKind::Python => {
            let py = at.interop.join("venv/bin/python");
            if !py.exists() {
                return Err(format!(
                    "Python websockets is not installed ({} is missing): run ./scripts/test, which installs it",
                    py.display()
                ));
            }
            let mut c = Command::new(py);
            c.arg(at.peer_script("py_server.py")?).arg(&addr);
            c
        }
        ServerKind::Node => {
            let modules = at.interop.join("node/node_modules");
            if !modules.join("ws/package.json").exists() {
                return Err(format!(
                    "Node ws is not installed (no {}/ws): run ./scripts/test, which installs it",
                    modules.display()
                ));
            }
            let mut c = Command::new("node");
            c.arg(at.peer_script("node_server.js")?)
                .arg(&addr)
                .env("NODE_PATH", modules);
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
        ServerKind::Raw | ServerKind::Unixws => Stdio::null(),
        _ => Stdio::inherit(),
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start the {} server: {e}", kind.name()))?;
    let running = Running {
        child,
        endpoint,
        websocket: kind.websocket(),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let up = match &running.endpoint {
            Endpoint::Path(p) => std::os::unix::net::UnixStream::connect(p).is_ok(),
            Endpoint::Tcp(port) => std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok(),
        };
        if up {
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

/// A connection of the load generator, upgraded when the server speaks
/// WebSocket.
pub struct Conn {
    read: Reader,
    write: Writer,
}

impl Conn {
    pub async fn open(endpoint: &Endpoint, websocket: bool) -> io::Result<Conn> {
        let (read, write): (Reader, Writer) = match endpoint {
            Endpoint::Path(p) => {
                let (r, w) = tokio::net::UnixStream::connect(p).await?.into_split();
                (Box::pin(r), Box::pin(w))
            }
            Endpoint::Tcp(port) => {
                let s = tokio::net::TcpStream::connect(("127.0.0.1", *port)).await?;
                s.set_nodelay(true)?;
                let (r, w) = s.into_split();
                (Box::pin(r), Box::pin(w))
            }
        };
        let mut conn = Conn { read, write };
        if websocket {
            conn.upgrade().await?;
        }
        Ok(conn)
    }

    async fn upgrade(&mut self) -> io::Result<()> {
        self.write
            .write_all(
                b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            )
            .await?;
        // Byte by byte: nothing after the head may be consumed here.
        let mut head = Vec::with_capacity(256);
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if self.read.read(&mut byte).await? == 0 || head.len() > 16 << 10 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "no upgrade response",
                ));
            }
            head.push(byte[0]);
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            let line = String::from_utf8_lossy(&head);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("upgrade refused: {}", line.lines().next().unwrap_or("")),
            ));
        }
        Ok(())
    }

    pub fn split(self) -> (Reader, Writer) {
        (self.read, self.write)
    }
}
