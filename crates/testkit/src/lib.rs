//! Helpers shared by the unixws integration tests and `unixws bench`:
//! locating and running the real interop peers (Python `websockets`, Node
//! `ws`) as processes (the `try_` forms say what is missing instead of
//! failing the test), temp directories other uids can enter, and running
//! children as another uid.
//!
//! A peer that is not installed fails the test with a message saying how to
//! install it; nothing here skips a test.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The unprivileged uid/gid tests switch to ("nobody"/"nogroup").
pub const NOBODY: u32 = 65534;

/// The unixws checkout: the first directory holding `tests/peers` among
/// the running binary's ancestors (a build in `target/`), the current
/// directory, and the checkout this crate was compiled in. `unixws bench`
/// finds its peers with it too.
pub fn checkout() -> Option<PathBuf> {
    let has_peers = |dir: &Path| dir.join("tests/peers").is_dir();
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .find(|d| has_peers(d))
            .map(Path::to_path_buf)
    });
    let from_cwd = std::env::current_dir().ok().filter(|d| has_peers(d));
    let compiled_in = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .ok()
        .filter(|d| has_peers(d));
    from_exe.or(from_cwd).or(compiled_in)
}

/// The repository root (tests run inside the checkout).
pub fn repo_root() -> PathBuf {
    checkout().expect("the unixws checkout (a directory with tests/peers)")
}

/// Where `scripts/test` installs the interop peers: `$UNIXWS_INTEROP_DIR`,
/// else `.interop` in the checkout.
pub fn interop_dir() -> PathBuf {
    std::env::var_os("UNIXWS_INTEROP_DIR")
        .map(PathBuf::from)
        .or_else(|| checkout().map(|r| r.join(".interop")))
        .unwrap_or_else(|| PathBuf::from(".interop"))
}

/// A script from `tests/peers/`, or what is missing.
pub fn try_peer_script(name: &str) -> Result<PathBuf, String> {
    checkout()
        .map(|r| r.join("tests/peers").join(name))
        .filter(|p| p.exists())
        .ok_or_else(|| format!("tests/peers/{name} not found: run from the unixws checkout"))
}

/// A script from `tests/peers/`.
pub fn peer_script(name: &str) -> PathBuf {
    try_peer_script(name).unwrap_or_else(|e| panic!("{e}"))
}

/// `python script` with the venv that has `websockets`, or how to install it.
pub fn try_python(script: &str) -> Result<Command, String> {
    let py = interop_dir().join("venv/bin/python");
    if !py.exists() {
        return Err(format!(
            "Python `websockets` is not installed ({} is missing): run ./scripts/test, which installs it into .interop/venv",
            py.display()
        ));
    }
    let mut cmd = Command::new(py);
    cmd.arg(try_peer_script(script)?);
    Ok(cmd)
}

/// `python script args..` with the venv that has `websockets`.
pub fn python(script: &str) -> Command {
    try_python(script).unwrap_or_else(|e| panic!("{e}"))
}

/// `node script` with `ws` on the module path, or how to install it.
pub fn try_node(script: &str) -> Result<Command, String> {
    let modules = interop_dir().join("node/node_modules");
    if !modules.join("ws/package.json").exists() {
        return Err(format!(
            "Node `ws` is not installed (no {}/ws): run ./scripts/test, which installs it into .interop/node",
            modules.display()
        ));
    }
    let mut cmd = Command::new("node");
    cmd.arg(try_peer_script(script)?).env("NODE_PATH", modules);
    Ok(cmd)
}

/// `node script args..` with `ws` on the module path.
pub fn node(script: &str) -> Command {
    try_node(script).unwrap_or_else(|e| panic!("{e}"))
}

/// A temp dir that every uid may enter (tempfile makes them 0700), for
/// tests where a child runs as another uid.
pub fn shared_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("uws")
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod temp dir");
    dir
}

/// Fails the test unless it runs as root, saying why root is needed.
pub fn require_root(why: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test must run as root: {why}");
}

/// Makes `cmd` run as uid/gid 65534 (needs root; see [`require_root`]).
pub fn as_nobody(cmd: &mut Command) -> &mut Command {
    // std drops supplementary groups itself when root sets a uid.
    cmd.uid(NOBODY).gid(NOBODY)
}

/// `cmd.spawn()`, retried while the kernel says "text file busy": a
/// binary a test just copied (to run it as another uid) is still open for
/// writing in any child that another test thread forked meanwhile, until
/// that child execs; the window is microseconds.
pub fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

/// A running child whose stdout lines are collected as they come.
pub struct Process {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Process {
    /// Spawns `cmd` with stdout piped (stderr inherited, for the test log),
    /// in a process group of its own: dropping it kills the whole group,
    /// so a server's workers (nginx's) never outlive the test.
    pub fn spawn(cmd: &mut Command) -> Process {
        cmd.stdout(Stdio::piped())
            .stdin(Stdio::null())
            .process_group(0);
        let mut child = spawn(cmd).unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        Process {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line equal to `want`; panics with what was seen.
    pub fn wait_for_line(&mut self, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        if self.seen.iter().any(|l| l == want) {
            return;
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line == want;
                    self.seen.push(line);
                    if done {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no line `{want}` within {timeout:?}; stdout so far: {:?}",
                        self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait();
                    panic!(
                        "process ended ({status:?}) before printing `{want}`; stdout: {:?}",
                        self.seen
                    )
                }
            }
        }
    }

    /// Waits for the process to exit (killing it after `timeout`) and
    /// returns its success and every stdout line.
    pub fn finish(mut self, timeout: Duration) -> (bool, Vec<String>) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait().expect("wait") {
                Some(status) => break Some(status),
                None if Instant::now() >= deadline => break None,
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let ok = match status {
            Some(s) => s.success(),
            None => {
                kill_group(&mut self.child);
                false
            }
        };
        self.seen.extend(self.lines.iter());
        (ok, std::mem::take(&mut self.seen))
    }

    /// Sends SIGTERM, then collects as [`finish`](Process::finish) does.
    pub fn terminate(self, timeout: Duration) -> (bool, Vec<String>) {
        // SAFETY: kill with a pid we spawned and still own.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.finish(timeout)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// Kills `child` and every process of its group (spawned with
/// `process_group(0)`, so the group is the child's pid), then reaps it.
/// nginx's master killed alone leaves its workers running.
pub fn kill_group(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        // SAFETY: kill has no memory effects; the group is the one our
        // child leads (its pid), created at spawn.
        unsafe {
            libc::kill(-(child.id() as i32), libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Polls `cond` every 5 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

/// A unixws server, blocking ([`start`](Self::start)) or tokio
/// ([`start_async`](Self::start_async)), on a thread of its own; shut down
/// and joined on drop.
pub struct RunningServer {
    addr: unixws::Address,
    stats: std::sync::Arc<unixws::ServerStats>,
    shutdown: unixws::ShutdownHandle,
    join: Option<std::thread::JoinHandle<unixws::Result<()>>>,
}

impl RunningServer {
    /// Binds `builder` and serves `handler` on a thread.
    pub fn start<H>(builder: unixws::ServerBuilder, handler: H) -> RunningServer
    where
        H: Fn(&mut unixws::Connection) -> unixws::HandlerResult + Send + Sync + 'static,
    {
        let server = builder.bind().expect("bind test server");
        let addr = server.local_addr().clone();
        let shutdown = server.shutdown_handle();
        let stats = server.stats();
        let join = std::thread::spawn(move || server.serve(handler));
        RunningServer {
            addr,
            stats,
            shutdown,
            join: Some(join),
        }
    }

    /// An echo server on `addr` with `limits`.
    pub fn echo(addr: impl unixws::ToAddress, limits: unixws::Limits) -> RunningServer {
        let builder = unixws::Server::builder(addr)
            .expect("address")
            .limits(limits);
        Self::start(builder, echo)
    }

    /// The address it serves.
    pub fn addr(&self) -> &unixws::Address {
        &self.addr
    }

    /// The server's counters now.
    pub fn stats(&self) -> unixws::StatsSnapshot {
        self.stats.snapshot()
    }

    /// Shuts down and waits for `serve` to return.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.shutdown.shutdown();
        if let Some(join) = self.join.take() {
            join.join().expect("server thread").expect("serve");
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.stop_inner();
        } else {
            self.shutdown.shutdown();
        }
    }
}

impl RunningServer {
    /// Binds `builder` with `bind_async` and serves `handler` on a tokio
    /// runtime of its own (a thread with two workers), so that blocking
    /// and async tests alike can start one.
    pub fn start_async<H, F>(builder: unixws::ServerBuilder, handler: H) -> RunningServer
    where
        H: Fn(unixws::tokio::Connection) -> F + Send + Sync + 'static,
        F: std::future::Future<Output = unixws::HandlerResult> + Send + 'static,
    {
        let (bound, bound_rx) = mpsc::channel();
        let join = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a tokio runtime for the test server");
            runtime.block_on(async move {
                let server = builder.bind_async().expect("bind test server");
                let parts = (
                    server.local_addr().clone(),
                    server.stats(),
                    server.shutdown_handle(),
                );
                bound.send(parts).expect("the test waits for the bind");
                server.serve(handler).await
            })
        });
        let (addr, stats, shutdown) = bound_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the tokio test server bound its socket");
        RunningServer {
            addr,
            stats,
            shutdown,
            join: Some(join),
        }
    }

    /// A tokio echo server on `addr` with `limits`.
    pub fn echo_async(addr: impl unixws::ToAddress, limits: unixws::Limits) -> RunningServer {
        let builder = unixws::Server::builder(addr)
            .expect("address")
            .limits(limits);
        Self::start_async(builder, echo_async)
    }

    /// An echo server of `front` on `addr` with `limits`.
    pub fn echo_on(
        front: FrontEnd,
        addr: impl unixws::ToAddress,
        limits: unixws::Limits,
    ) -> RunningServer {
        match front {
            FrontEnd::Blocking => Self::echo(addr, limits),
            FrontEnd::Tokio => Self::echo_async(addr, limits),
        }
    }

    /// A handle that starts the shutdown without waiting for it.
    pub fn shutdown_handle(&self) -> unixws::ShutdownHandle {
        self.shutdown.clone()
    }

    /// [`stop`](Self::stop) from async code: the caller's runtime keeps
    /// running while the server drains.
    pub async fn stop_async(self) {
        tokio::task::spawn_blocking(move || self.stop())
            .await
            .expect("the server stopped");
    }
}

/// The two server front ends, for cases that run over both from one body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontEnd {
    /// `Server::bind` and a thread per connection.
    Blocking,
    /// `ServerBuilder::bind_async` on tokio.
    Tokio,
}

/// Both front ends, in the order the cases run them.
pub const FRONT_ENDS: [FrontEnd; 2] = [FrontEnd::Blocking, FrontEnd::Tokio];

/// The tokio echo handler: every message goes back to its sender.
pub async fn echo_async(mut conn: unixws::tokio::Connection) -> unixws::HandlerResult {
    while let Some(message) = conn.recv().await? {
        conn.send(message).await?;
    }
    Ok(())
}

/// Sends `text` on a tokio connection and expects it back.
pub async fn assert_echo_async(conn: &mut unixws::tokio::Connection, text: &str) {
    conn.send(unixws::Message::text(text)).await.expect("send");
    assert_eq!(
        conn.recv().await.expect("recv"),
        Some(unixws::Message::text(text))
    );
}

/// The echo handler: every message goes back to its sender.
pub fn echo(conn: &mut unixws::Connection) -> unixws::HandlerResult {
    while let Some(message) = conn.recv()? {
        conn.send(message)?;
    }
    Ok(())
}

/// Sends `text` on `conn` and asserts it comes back.
pub fn assert_echo(conn: &mut unixws::Connection, text: &str) {
    conn.send(unixws::Message::text(text)).expect("send");
    assert_eq!(
        conn.recv().expect("recv"),
        Some(unixws::Message::text(text))
    );
}

/// A peer that completes the WebSocket handshake on `socket` and then
/// never reads through tungstenite nor answers anything: it collects the
/// raw bytes the server sends until the server closes the socket, and how
/// long that took from the end of the handshake.
pub fn silent_peer(socket: &Path) -> (Vec<u8>, Duration) {
    use std::io::Read;
    let stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    let (ws, _) = unixws::tungstenite::client("ws://localhost/", stream).expect("handshake");
    let started = Instant::now();
    let mut raw = ws.into_inner();
    raw.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut bytes = Vec::new();
    raw.read_to_end(&mut bytes)
        .expect("the server closes the silent peer (not our 20 s read timeout)");
    (bytes, started.elapsed())
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the test fails
/// when there is none).
pub fn free_port() -> u16 {
    try_free_port().expect("a free TCP port on 127.0.0.1")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn try_free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A raw Unix-socket connection that completed the WebSocket upgrade (and
/// read nothing past the 101 response): for tests that write frames by hand.
pub fn raw_upgraded(path: &Path) -> std::os::unix::net::UnixStream {
    raw_upgraded_with(path, "")
}

/// [`raw_upgraded`] with `extra` request header lines (each ending in
/// `\r\n`), such as an extension offer.
pub fn raw_upgraded_with(path: &Path, extra: &str) -> std::os::unix::net::UnixStream {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    s.write_all(upgrade_request("/", extra).as_bytes())
        .expect("write the upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("read the upgrade response");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// The mask key of every masked test frame (fixed and non-zero, so that a
/// server that skipped unmasking would be caught).
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client frame as bytes on the wire, from the library's own encoder
/// (`unixws::frame::encode`): the FIN/RSV/opcode byte as given, the
/// shortest length form, the payload masked with [`MASK`] (or not, for
/// tests of unmasked frames).
pub fn client_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    unixws::frame::encode(first, payload, masked.then_some(MASK))
}

/// The upgrade request every hand-written test client sends: `path`, and
/// `extra` header lines (each ending in `\r\n`) before the WebSocket ones.
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// The frames at the front of `bytes` that are whole: (first byte,
/// unmasked payload) each, read with the library's header parser.
pub fn split_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while let Some(head) = unixws::frame::Head::parse(bytes) {
        let Some(end) = usize::try_from(head.payload_len)
            .ok()
            .and_then(|n| n.checked_add(head.len))
            .filter(|&end| end <= bytes.len())
        else {
            break;
        };
        frames.push((head.first, unmasked(&head, bytes, end)));
        bytes = &bytes[end..];
    }
    frames
}

/// Reads one frame from `reader`: (first byte, unmasked payload).
pub fn read_frame(reader: &mut impl std::io::Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut buf = Vec::with_capacity(14);
    let head = loop {
        if let Some(head) = unixws::frame::Head::parse(&buf) {
            break head;
        }
        let mut byte = [0u8; 1];
        reader.read_exact(&mut byte)?;
        buf.push(byte[0]);
    };
    let len = usize::try_from(head.payload_len)
        .map_err(|_| std::io::Error::other("a frame longer than memory"))?;
    buf.resize(head.len + len, 0);
    reader.read_exact(&mut buf[head.len..])?;
    Ok((head.first, unmasked(&head, &buf, buf.len())))
}

fn unmasked(head: &unixws::frame::Head, bytes: &[u8], end: usize) -> Vec<u8> {
    let mut payload = bytes[head.len..end].to_vec();
    if let Some(key) = head.key(bytes) {
        unixws::frame::apply_mask(&mut payload, key);
    }
    payload
}

/// nginx with one worker on `addr` (`host:port`), proxying WebSocket
/// upgrades to the Unix socket `backend`; its files (configuration, pid,
/// logs, temp dirs) in `dir`, its errors in `dir/nginx-error.log`. The
/// bench's nginx row and the proxy tests run this one configuration.
pub fn nginx_command(dir: &Path, addr: &str, backend: &Path) -> Result<Command, String> {
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

/// A byte relay between one client and a Unix-socket server that keeps
/// what passed each way, to check frames on the wire (RSV1 of
/// permessage-deflate, say).
pub struct Tap {
    /// What the client sent, handshake included.
    pub upstream: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    /// What the server sent, handshake included.
    pub downstream: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Tap {
    /// Listens on `listen` for one connection and relays it to `backend`.
    pub fn start(listen: &Path, backend: &Path) -> Tap {
        let listener = std::os::unix::net::UnixListener::bind(listen)
            .unwrap_or_else(|e| panic!("tap on {}: {e}", listen.display()));
        let backend = backend.to_path_buf();
        Tap::run(
            |s: &std::os::unix::net::UnixStream| s.shutdown(std::net::Shutdown::Write),
            move || {
                let (client, _) = listener.accept().ok()?;
                let server = std::os::unix::net::UnixStream::connect(&backend).ok()?;
                let halves = (client.try_clone().ok()?, server.try_clone().ok()?);
                Some(((client, halves.1), (server, halves.0)))
            },
        )
    }

    /// [`start`](Tap::start) on TCP: listens on a free loopback port (the
    /// one returned) and relays one connection to `backend`.
    pub fn start_tcp(backend: std::net::SocketAddr) -> (Tap, u16) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a tap port");
        let port = listener.local_addr().expect("the tap's port").port();
        let tap = Tap::run(
            |s: &std::net::TcpStream| s.shutdown(std::net::Shutdown::Write),
            move || {
                let (client, _) = listener.accept().ok()?;
                let server = std::net::TcpStream::connect(backend).ok()?;
                let halves = (client.try_clone().ok()?, server.try_clone().ok()?);
                Some(((client, halves.1), (server, halves.0)))
            },
        );
        (tap, port)
    }

    /// Accepts with `accept` (the client's and the server's sockets, each
    /// paired with the one its bytes go to) and copies both ways.
    fn run<S, F>(shutdown: fn(&S) -> std::io::Result<()>, accept: F) -> Tap
    where
        S: std::io::Read + std::io::Write + Send + 'static,
        F: FnOnce() -> Option<((S, S), (S, S))> + Send + 'static,
    {
        use std::sync::{Arc, Mutex};
        let upstream: Arc<Mutex<Vec<u8>>> = Arc::default();
        let downstream: Arc<Mutex<Vec<u8>>> = Arc::default();
        let (up, down) = (upstream.clone(), downstream.clone());
        std::thread::spawn(move || {
            let Some((client_to_server, server_to_client)) = accept() else {
                return;
            };
            let pipe = |(mut from, mut to): (S, S), log: Arc<Mutex<Vec<u8>>>| {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64 << 10];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        log.lock().expect("tap log").extend_from_slice(&buf[..n]);
                    }
                    let _ = shutdown(&to);
                })
            };
            let a = pipe(client_to_server, up);
            let b = pipe(server_to_client, down);
            let _ = (a.join(), b.join());
        });
        Tap {
            upstream,
            downstream,
        }
    }

    /// Of the first bytes `firsts`: how many are data frames (text,
    /// binary, continuation), and how many of those have RSV1
    /// (permessage-deflate).
    pub fn rsv1_count(firsts: &[u8]) -> (usize, usize) {
        let data: Vec<u8> = firsts.iter().copied().filter(|f| f & 0x0f <= 2).collect();
        let compressed = data.iter().filter(|f| *f & 0x40 != 0).count();
        (data.len(), compressed)
    }

    /// The first bytes of each whole frame one way, after the handshake.
    pub fn frames(log: &std::sync::Mutex<Vec<u8>>) -> Vec<u8> {
        let bytes = log.lock().expect("tap log").clone();
        let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Vec::new();
        };
        split_frames(&bytes[end + 4..])
            .into_iter()
            .map(|(first, _)| first)
            .collect()
    }
}
