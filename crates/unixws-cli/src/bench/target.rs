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

/// Where a running server listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Path(PathBuf),
    Tcp(u16),
}

/// A server process, killed on drop.
pub struct Running {
    child: Child,
    /// The backend behind a proxy (killed after the proxy).
    backend: Option<Box<Running>>,
    pub endpoint: Endpoint,
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
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(self.backend.take());
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
    let mut backend = None;
    let mut cmd = match kind {
        ServerKind::UnixwsProxy | ServerKind::NginxProxy => {
            let behind = start(ServerKind::Unixws, Transport::Uds, dir, at)?;
            let Endpoint::Path(sock) = behind.endpoint.clone() else {
                return Err("the proxy's backend is not on a Unix socket".into());
            };
            backend = Some(Box::new(behind));
            if kind == ServerKind::UnixwsProxy {
                let mut c = Command::new(&exe);
                c.args(["proxy", "--listen", &addr, "--to"])
                    .arg(format!("ws+unix://{}", sock.display()));
                c
            } else {
                nginx_command(dir, &addr, &sock)?
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
        ServerKind::Raw | ServerKind::Unixws | ServerKind::UnixwsProxy => Stdio::null(),
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
        backend,
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
        self.write.write_all(UPGRADE).await?;
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
        check_upgrade(&head)
    }

    pub fn split(self) -> (Reader, Writer) {
        (self.read, self.write)
    }
}

/// A blocking connection for the thread-per-connection client: a writer
/// and a reader (two handles to one socket), upgraded when the server
/// speaks WebSocket.
pub fn open_blocking(
    endpoint: &Endpoint,
    websocket: bool,
) -> io::Result<(
    Box<dyn std::io::Write + Send>,
    Box<dyn std::io::Read + Send>,
)> {
    use std::io::{Read, Write};
    let (mut write, mut read): (Box<dyn Write + Send>, Box<dyn Read + Send>) = match endpoint {
        Endpoint::Path(p) => {
            let s = std::os::unix::net::UnixStream::connect(p)?;
            (Box::new(s.try_clone()?), Box::new(s))
        }
        Endpoint::Tcp(port) => {
            let s = std::net::TcpStream::connect(("127.0.0.1", *port))?;
            s.set_nodelay(true)?;
            (Box::new(s.try_clone()?), Box::new(s))
        }
    };
    if websocket {
        write.write_all(UPGRADE)?;
        let mut head = Vec::with_capacity(256);
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if read.read(&mut byte)? == 0 || head.len() > 16 << 10 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "no upgrade response",
                ));
            }
            head.push(byte[0]);
        }
        check_upgrade(&head)?;
    }
    Ok((write, read))
}

/// The upgrade request of every load connection.
const UPGRADE: &[u8] =
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn check_upgrade(head: &[u8]) -> io::Result<()> {
    if head.starts_with(b"HTTP/1.1 101") {
        return Ok(());
    }
    let line = String::from_utf8_lossy(head);
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("upgrade refused: {}", line.lines().next().unwrap_or("")),
    ))
}

/// nginx with one worker on `addr`, proxying WebSocket upgrades to the Unix
/// socket `backend`; its files (configuration, pid, logs, temp dirs) in `dir`.
fn nginx_command(dir: &Path, addr: &str, backend: &Path) -> Result<Command, String> {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("nginx is not installed: `apt-get install nginx` (scripts/test installs it)")?;
    let d = dir.display();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/nginx-body;
    proxy_temp_path {d}/nginx-proxy;
    fastcgi_temp_path {d}/nginx-fastcgi;
    uwsgi_temp_path {d}/nginx-uwsgi;
    scgi_temp_path {d}/nginx-scgi;
    server {{
        listen {addr};
        location / {{
            proxy_pass http://unix:{sock}:/;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection \"upgrade\";
            proxy_read_timeout 3600s;
            proxy_buffering off;
        }}
    }}
}}
",
            sock = backend.display()
        ),
    )
    .map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
    // nginx's workers run as another uid: they must reach the socket.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot open {} to nginx's workers: {e}", dir.display()))?;
    let mut c = Command::new(nginx);
    c.arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("nginx-error.log"));
    Ok(c)
}
