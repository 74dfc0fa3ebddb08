//! `unixws proxy` as a process between real clients and real backends:
//! what reaches the backend, what comes back, close codes both ways, large
//! and many messages, a missing backend (502), a real browser (headless
//! Chromium) through the proxy, and nginx in front of `unixws serve`.

// The helpers unwrap as the tests do: a failure there is the test's failure.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use unixws::CloseCode;
use unixws::{ConnectionInfo, Error, Message, Server};
use unixws_testkit::{wait_until, Process, RunningServer};

const T: Duration = Duration::from_secs(20);

use unixws_testkit::free_port;

/// Starts `unixws proxy --listen LISTEN --to TO ARGS..` and waits until it accepts.
fn proxy(listen: &str, to: &str, args: &[&str]) -> Process {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_unixws"));
    cmd.args(["proxy", "--listen", listen, "--to", to])
        .args(args);
    let p = Process::spawn(&mut cmd);
    let ready = wait_until(T, || {
        match listen
            .parse::<unixws::Address>()
            .map(|a| a.endpoint().clone())
        {
            Ok(unixws::Endpoint::Tcp { port, .. }) => {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            }
            Ok(unixws::Endpoint::Path(path)) => path.exists(),
            _ => false,
        }
    });
    assert!(ready, "unixws proxy did not start listening on {listen}");
    p
}

type Seen = Arc<Mutex<Vec<(ConnectionInfo, Option<unixws::PeerClose>)>>>;

/// This process's uid: the proxy's, which the recording backend trusts.
fn my_uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

/// A backend that records what it saw and follows the peers' protocol:
/// echo, and `close:CODE:REASON` closes with that code and reason. It
/// trusts the identity the proxy (running as this test's uid) forwards.
fn recording_backend(sock: &Path) -> (RunningServer, Seen) {
    let seen = Seen::default();
    let record = seen.clone();
    let builder = Server::builder(sock)
        .unwrap()
        .subprotocols(["chat.v2", "chat.v1"])
        .trust_proxy_uid(my_uid());
    let server = RunningServer::start(builder, move |conn| {
        let result = (|| {
            while let Some(message) = conn.recv()? {
                if let Message::Text(text) = &message {
                    if let Some(rest) = text.strip_prefix("close:") {
                        let (code, reason) = rest.split_once(':').unwrap_or((rest, ""));
                        return conn.close(code.parse().unwrap_or(1000), reason);
                    }
                }
                conn.send(message)?;
            }
            Ok(())
        })();
        record
            .lock()
            .unwrap()
            .push((conn.info().clone(), conn.peer_close().cloned()));
        Ok(result?)
    });
    (server, seen)
}

/// A recording backend on a Unix socket with `unixws proxy ARGS..` on a
/// loopback port in front of it; `to_path` follows the backend's socket in
/// the `--to` URL.
struct ProxiedBackend {
    backend: RunningServer,
    seen: Seen,
    listen: String,
    _proxy: Process,
    _dir: tempfile::TempDir,
}

fn proxied_backend(to_path: &str, args: &[&str]) -> ProxiedBackend {
    let dir = tempfile::tempdir().unwrap();
    let backend_sock = dir.path().join("backend.sock");
    let (backend, seen) = recording_backend(&backend_sock);
    let listen = format!("127.0.0.1:{}", free_port());
    let proxy = proxy(
        &listen,
        &format!("ws+unix://{}{to_path}", backend_sock.display()),
        args,
    );
    ProxiedBackend {
        backend,
        seen,
        listen,
        _proxy: proxy,
        _dir: dir,
    }
}

#[test]
fn path_query_subprotocol_and_authorization_reach_the_backend() {
    let rig = proxied_backend(":/base", &[]);
    let (backend, listen) = (rig.backend, rig.listen);
    let seen = rig.seen;

    let mut conn = unixws::ClientBuilder::new(format!("ws://{listen}/chat?room=1"))
        .unwrap()
        .header("Authorization", "Bearer s3cret")
        .header("X-Unixws-Peer-Uid", "0")
        .subprotocol("chat.v1")
        .connect()
        .unwrap();
    assert_eq!(
        conn.info().subprotocol.as_deref(),
        Some("chat.v1"),
        "the backend's choice comes back"
    );
    unixws_testkit::assert_echo(&mut conn, "hello through the proxy");
    conn.close(1000, "").unwrap();
    drop(backend);

    let seen = seen.lock().unwrap();
    let (info, _) = &seen[0];
    assert_eq!(info.path, "/base/chat");
    assert_eq!(info.query.as_deref(), Some("room=1"));
    assert_eq!(info.subprotocol.as_deref(), Some("chat.v1"));
    assert_eq!(info.headers["authorization"], "Bearer s3cret");
    assert_eq!(info.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(
        info.peer,
        unixws::Peer::Tcp("127.0.0.1:0".parse().unwrap()),
        "the TCP client the trusted proxy forwarded"
    );
    assert!(
        info.headers.get("x-unixws-peer-uid").is_none(),
        "a TCP client cannot claim a uid"
    );
}

#[test]
fn unix_listener_passes_the_peer_uid_and_pid() {
    let dir = tempfile::tempdir().unwrap();
    let backend_sock = dir.path().join("backend.sock");
    let (backend, seen) = recording_backend(&backend_sock);
    let front = dir.path().join("front.sock");
    let _proxy = proxy(
        front.to_str().unwrap(),
        &format!("ws+unix://{}", backend_sock.display()),
        &[],
    );
    let mut conn = unixws::connect(&front).unwrap();
    unixws_testkit::assert_echo(&mut conn, "uds to uds");
    conn.close(1000, "").unwrap();
    drop(backend);
    let seen = seen.lock().unwrap();
    let headers = &seen[0].0.headers;
    let uid = my_uid();
    assert_eq!(headers["x-unixws-peer-uid"], uid.to_string().as_str());
    assert_eq!(
        headers["x-unixws-peer-pid"],
        std::process::id().to_string().as_str()
    );
    // The trusted proxy's word makes this test process the peer.
    let me = seen[0].0.peer.credentials().expect("a Unix-socket client");
    assert_eq!(
        (me.uid, me.pid),
        (uid, std::process::id() as i32),
        "the forwarded client, not the proxy ({})",
        _proxy.id()
    );
}

#[test]
fn close_codes_and_reasons_pass_both_ways() {
    let rig = proxied_backend("", &[]);
    let (backend, listen) = (rig.backend, rig.listen);
    let seen = rig.seen;
    let url = format!("ws://{listen}/");

    // Client closes with 4001: the backend sees it.
    let mut conn = unixws::connect(url.as_str()).unwrap();
    unixws_testkit::assert_echo(&mut conn, "before closing");
    conn.close(4001, "client says bye").unwrap();
    assert!(wait_until(T, || !seen.lock().unwrap().is_empty()));
    let client_close = seen.lock().unwrap()[0].1.clone().unwrap();
    assert_eq!(
        (client_close.code, client_close.reason.as_str()),
        (CloseCode::from(4001), "client says bye")
    );

    // Backend closes with 4001: the client sees it.
    let mut conn = unixws::connect(url.as_str()).unwrap();
    conn.send(Message::text("close:4001:backend says bye"))
        .unwrap();
    assert_eq!(conn.recv().unwrap(), None);
    let close = conn.peer_close().unwrap();
    assert_eq!(
        (close.code, close.reason.as_str()),
        (CloseCode::from(4001), "backend says bye")
    );
    drop(backend);
}

#[test]
fn a_1_mib_message_and_10000_small_ones_pass_intact_and_in_order() {
    let rig = proxied_backend("", &[]);
    let (backend, listen) = (rig.backend, rig.listen);
    let mut conn = unixws::connect(format!("ws://{listen}/")).unwrap();
    let big: Vec<u8> = (0..1usize << 20).map(|i| (i % 251) as u8).collect();
    conn.send(Message::binary(big.clone())).unwrap();
    assert_eq!(conn.recv().unwrap(), Some(Message::binary(big)));
    // In batches, so that neither side's socket buffer has to hold them all.
    for batch in 0..100 {
        for i in 0..100 {
            conn.send(Message::text(format!("message {}", batch * 100 + i)))
                .unwrap();
        }
        for i in 0..100 {
            assert_eq!(
                conn.recv().unwrap(),
                Some(Message::text(format!("message {}", batch * 100 + i)))
            );
        }
    }
    conn.close(1000, "").unwrap();
    drop(backend);
}

/// Large messages one after another, each answered before the next,
/// from Python `websockets` through the proxy to `unixws serve --echo`:
/// the relay must keep both directions moving on its own. It once went to
/// sleep with a side's input unwatched after flushing the other side, and
/// a 4 MiB echo waited for the next keepalive ping (30 s); the client's
/// 15 s limit per echo is a hang check, far above the milliseconds it takes.
#[test]
fn large_echoes_through_the_proxy_do_not_wait_for_a_keepalive() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("echo.sock");
    let mut serve = Command::new(env!("CARGO_BIN_EXE_unixws"));
    serve
        .args(["serve", "--echo", "--max-message", "64MiB"])
        .arg(&sock);
    let _backend = Process::spawn(&mut serve);
    assert!(
        wait_until(T, || sock.exists()),
        "unixws serve did not start"
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let _proxy = proxy(&listen, &format!("ws+unix://{}", sock.display()), &[]);
    let mut client = unixws_testkit::python("py_big_echo.py");
    client.arg(format!("ws://{listen}/"));
    let (ok, output) = Process::spawn(&mut client).finish(Duration::from_secs(60));
    assert!(ok && output.iter().any(|l| l == "ok"), "{output:?}");
}

#[test]
fn a_missing_backend_is_a_502_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nobody-home.sock");
    let listen = format!("127.0.0.1:{}", free_port());
    let _proxy = proxy(&listen, &format!("ws+unix://{}", missing.display()), &[]);
    let err = unixws::connect(format!("ws://{listen}/")).unwrap_err();
    match &err {
        Error::HandshakeRejected { status, body, .. } => {
            assert_eq!(*status, 502);
            assert!(
                body.contains("no socket at") && body.contains("nobody-home.sock"),
                "{body}"
            );
        }
        other => panic!("expected a 502, got {other:?}"),
    }
}

#[test]
fn allow_origin_refuses_other_origins_with_403() {
    let rig = proxied_backend("", &["--allow-origin", "http://good.example"]);
    let (backend, listen) = (rig.backend, rig.listen);
    let seen = rig.seen;
    let url = format!("ws://{listen}/");
    let err = unixws::ClientBuilder::new(url.as_str())
        .unwrap()
        .header("Origin", "http://evil.example")
        .connect()
        .unwrap_err();
    assert!(
        matches!(err, Error::HandshakeRejected { status: 403, .. }),
        "{err:?}"
    );
    let mut ok = unixws::ClientBuilder::new(url.as_str())
        .unwrap()
        .header("Origin", "http://good.example")
        .connect()
        .unwrap();
    unixws_testkit::assert_echo(&mut ok, "allowed origin");
    ok.close(1000, "").unwrap();
    drop(backend);
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the refused origin never reached the backend"
    );
}

/// A tool `scripts/test` installs; fails the test with how to get it.
fn tool(name: &str) -> std::path::PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("`{name}` is not installed: run ./scripts/test, which installs it with apt-get");
}

/// Starts `unixws serve --echo` on a socket that nginx's workers (uid
/// nobody) may open.
fn echo_backend(sock: &Path) -> Process {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_unixws"));
    cmd.args(["serve", "--echo", "--mode", "666"]).arg(sock);
    let p = Process::spawn(&mut cmd);
    assert!(
        wait_until(T, || sock.exists()),
        "unixws serve did not start"
    );
    p
}

#[test]
fn nginx_in_front_of_unixws_serve_round_trips_messages() {
    tool("nginx"); // fails loudly when nginx is missing
    let dir = unixws_testkit::shared_tempdir();
    let sock = dir.path().join("app.sock");
    let _backend = echo_backend(&sock);
    let port = free_port();
    let mut cmd =
        unixws_testkit::nginx_command(dir.path(), &format!("127.0.0.1:{port}"), &sock).unwrap();
    let nginx = Process::spawn(&mut cmd);
    assert!(
        wait_until(T, || std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok()),
        "nginx did not start: {}",
        std::fs::read_to_string(dir.path().join("nginx-error.log")).unwrap_or_default()
    );
    let mut conn = unixws::connect(format!("ws://127.0.0.1:{port}/through/nginx")).unwrap();
    for i in 0..100 {
        unixws_testkit::assert_echo(&mut conn, &format!("via nginx {i}"));
    }
    let big = Message::binary(vec![9u8; 256 << 10]);
    conn.send(big.clone()).unwrap();
    assert_eq!(conn.recv().unwrap(), Some(big));
    conn.close(1000, "").unwrap();
    // nginx's worker is in the master's process group: stopping the
    // master must not leave it behind (it once did, one per run).
    let group = nginx.id() as i32;
    drop(nginx);
    // SAFETY: signal 0 only asks whether any process of the group exists.
    let alive = || unsafe { libc::kill(-group, 0) } == 0;
    assert!(
        wait_until(T, || !alive()),
        "nginx processes outlived the test"
    );
}

/// Serves the browser test's page, and takes the page's report.
fn page_server(
    ws_url: String,
    messages: usize,
    prefix: &str,
) -> (u16, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    let page = format!(
        r#"<!doctype html><html><body><pre id="out"></pre><script>
const got = [];
const ws = new WebSocket("{ws_url}");
ws.onopen = () => {{ for (let i = 0; i < {messages}; i++) ws.send("{prefix}" + i); }};
ws.onmessage = (e) => {{
  got.push(e.data);
  document.getElementById("out").textContent = got.join("\n");
  if (got.length === {messages}) {{ ws.close(1000); fetch("/report?" + encodeURIComponent(JSON.stringify(got))); }}
}};
ws.onerror = () => fetch("/report?" + encodeURIComponent(JSON.stringify(["websocket error"])));
</script></body></html>"#
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request_line = String::new();
            if BufReader::new(&stream)
                .read_line(&mut request_line)
                .is_err()
            {
                continue;
            }
            let target = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .to_string();
            let (status, body) = if target == "/" {
                ("200 OK", page.clone())
            } else if let Some(report) = target.strip_prefix("/report?") {
                let _ = tx.send(report.to_string());
                ("200 OK", String::new())
            } else {
                ("404 Not Found", String::new())
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, rx)
}

fn percent_decode(s: &str) -> String {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        if let Some(b) = escaped {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Headless Chromium on the page of `page_port`, until the page reports.
fn run_browser(
    dir: &Path,
    page_port: u16,
    reports: &std::sync::mpsc::Receiver<String>,
) -> Vec<String> {
    let chromium = tool("chromium");
    let profile = dir.join("profile");
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("http://127.0.0.1:{page_port}/"))
    .stderr(std::process::Stdio::null());
    let _browser = Process::spawn(&mut cmd);
    let report = reports
        .recv_timeout(Duration::from_secs(60))
        .expect("the page reported back within 60 s");
    serde_like_parse(&percent_decode(&report))
}

#[test]
fn headless_chromium_talks_to_a_unix_socket_backend_through_the_proxy() {
    const MESSAGES: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let _backend = echo_backend(&sock);
    let listen = format!("127.0.0.1:{}", free_port());
    let _proxy = proxy(&listen, &format!("ws+unix://{}", sock.display()), &[]);
    let (page_port, reports) = page_server(
        format!("ws://{listen}/browser"),
        MESSAGES,
        "browser message ",
    );
    let got = run_browser(dir.path(), page_port, &reports);
    let want: Vec<String> = (0..MESSAGES)
        .map(|i| format!("browser message {i}"))
        .collect();
    assert_eq!(got, want, "every message came back, in order");
}

/// `proxy --compress` in front of an uncompressed backend, with a byte tap
/// on each hop: (TCP tap's port, TCP tap, Unix tap), and the processes.
fn compressing_proxy(dir: &Path) -> (u16, unixws_testkit::Tap, unixws_testkit::Tap, Vec<Process>) {
    use unixws_testkit::Tap;
    let sock = dir.join("app.sock");
    let backend = echo_backend(&sock);
    let hop = dir.join("hop.sock");
    let unix_tap = Tap::start(&hop, &sock);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let proxy = proxy(
        &listen,
        &format!("ws+unix://{}", hop.display()),
        &["--compress"],
    );
    let (tcp_tap, tap_port) = Tap::start_tcp(([127, 0, 0, 1], port).into());
    (tap_port, tcp_tap, unix_tap, vec![backend, proxy])
}

#[test]
fn the_proxy_compresses_on_its_tcp_side_only() {
    use unixws_testkit::Tap;
    let dir = unixws_testkit::shared_tempdir();
    let (port, tcp, unix, _processes) = compressing_proxy(dir.path());
    let out = unixws_testkit::python("py_compress_client.py")
        .arg(format!("ws://127.0.0.1:{port}/compressed"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("extensions ['permessage-deflate']"),
        "{stdout}"
    );
    let (tcp_up, tcp_up_rsv1) = Tap::rsv1_count(&Tap::frames(&tcp.upstream));
    let (tcp_down, tcp_down_rsv1) = Tap::rsv1_count(&Tap::frames(&tcp.downstream));
    let (unix_up, unix_up_rsv1) = Tap::rsv1_count(&Tap::frames(&unix.upstream));
    let (unix_down, unix_down_rsv1) = Tap::rsv1_count(&Tap::frames(&unix.downstream));
    assert_eq!((tcp_up, tcp_down, unix_up, unix_down), (4, 4, 4, 4));
    assert!(
        tcp_up_rsv1 >= 3,
        "Python compressed {tcp_up_rsv1} of 4 to the proxy"
    );
    assert_eq!(
        tcp_down_rsv1, 3,
        "the proxy compressed all but the short one"
    );
    assert_eq!(
        (unix_up_rsv1, unix_down_rsv1),
        (0, 0),
        "the backend hop is uncompressed"
    );
}

#[test]
fn headless_chromium_gets_compressed_frames_through_the_proxy() {
    use unixws_testkit::Tap;
    const MESSAGES: usize = 20;
    let dir = unixws_testkit::shared_tempdir();
    let (port, tcp, unix, _processes) = compressing_proxy(dir.path());
    let prefix = format!("compressible {} ", "abcdefgh".repeat(200));
    let (page_port, reports) =
        page_server(format!("ws://127.0.0.1:{port}/browser"), MESSAGES, &prefix);
    let got = run_browser(dir.path(), page_port, &reports);
    let want: Vec<String> = (0..MESSAGES).map(|i| format!("{prefix}{i}")).collect();
    assert_eq!(got, want, "every message came back, in order");
    let (up, up_rsv1) = Tap::rsv1_count(&Tap::frames(&tcp.upstream));
    let (down, down_rsv1) = Tap::rsv1_count(&Tap::frames(&tcp.downstream));
    assert_eq!((up, down), (MESSAGES, MESSAGES));
    assert_eq!(
        (up_rsv1, down_rsv1),
        (MESSAGES, MESSAGES),
        "compressed both ways on TCP"
    );
    let (_, unix_rsv1) = Tap::rsv1_count(&Tap::frames(&unix.upstream));
    assert_eq!(unix_rsv1, 0, "the backend hop is uncompressed");
}

/// Parses the page's JSON array of plain strings (no escapes in them).
fn serde_like_parse(json: &str) -> Vec<String> {
    json.trim_start_matches('[')
        .trim_end_matches(']')
        .split("\",\"")
        .map(|s| s.trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_and_pongs_are_relayed_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("backend.sock");
    let pings: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let record = pings.clone();
    let backend = Server::builder(&sock).unwrap().bind_async().unwrap();
    let stop_backend = backend.shutdown_handle();
    let serving = tokio::spawn(backend.serve(move |mut conn| {
        let record = record.clone();
        async move {
            conn.receive_control_frames(true);
            while let Some(message) = conn.recv().await? {
                match message {
                    Message::Ping(data) => record.lock().unwrap().push(data.to_vec()),
                    Message::Text(t) if t.as_str() == "ping me" => {
                        conn.send(Message::Ping("from backend".into())).await?
                    }
                    _ => {}
                }
            }
            Ok(())
        }
    }));
    let listen = format!("127.0.0.1:{}", free_port());
    let _proxy = tokio::task::spawn_blocking({
        let to = format!("ws+unix://{}", sock.display());
        let listen = listen.clone();
        move || proxy(&listen, &to, &[])
    })
    .await
    .unwrap();

    let mut client = unixws::tokio::connect(format!("ws://{listen}/"))
        .await
        .unwrap();
    client.receive_control_frames(true);
    client
        .send(Message::Ping("from client".into()))
        .await
        .unwrap();
    // The proxy answers at once; the backend's own answer is not sent twice.
    assert_eq!(
        client.recv().await.unwrap(),
        Some(Message::Pong("from client".into()))
    );
    assert!(
        wait_until(T, || pings
            .lock()
            .unwrap()
            .contains(&b"from client".to_vec())),
        "the backend got the client's ping"
    );
    client.send(Message::text("ping me")).await.unwrap();
    assert_eq!(
        client.recv().await.unwrap(),
        Some(Message::Ping("from backend".into())),
        "the next message after the one pong is the backend's ping"
    );
    client.close(1000, "").await.unwrap();
    stop_backend.shutdown();
    serving.await.unwrap().unwrap();
}

/// Cut-through, seen from a raw backend: the proxy passes a 1 MiB frame
/// on while it streams in (the backend has the first half while the client
/// still holds the second), byte for byte as the client sent it, still
/// masked with the client's key.
#[test]
fn a_large_frame_streams_through_verbatim_before_it_is_whole() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let backend_sock = dir.path().join("raw-backend.sock");
    let proxy_sock = dir.path().join("proxy.sock");
    let listener = std::os::unix::net::UnixListener::bind(&backend_sock).unwrap();
    let payload: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect();
    let frame = unixws_testkit::client_frame(0x82, &payload, true);
    let half = frame.len() / 2;
    let (first_half_in, first_half_seen) = std::sync::mpsc::channel();
    let expected = frame.clone();
    let backend = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte)
                .expect("the proxy's upgrade request");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let key = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("Sec-WebSocket-Key: ")
                    .or(l.strip_prefix("sec-websocket-key: "))
            })
            .expect("a Sec-WebSocket-Key header");
        let accept = unixws::tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
        write!(
            s,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut told = false;
        while got.len() < expected.len() {
            let n = s.read(&mut buf).expect("the frame's bytes");
            assert!(n > 0, "the proxy hung up after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
            if !told && got.len() >= half - (64 << 10) {
                first_half_in.send(got.len()).unwrap();
                told = true;
            }
        }
        assert!(got == expected, "the frame changed on its way");
    });
    let _proxy = proxy(
        proxy_sock.to_str().unwrap(),
        &format!("ws+unix://{}", backend_sock.display()),
        &[],
    );
    let mut client = unixws_testkit::raw_upgraded(&proxy_sock);
    client.write_all(&frame[..half]).unwrap();
    let arrived = first_half_seen
        .recv_timeout(T)
        .expect("the backend should get the first half while the client holds the second");
    assert!(arrived < frame.len());
    client.write_all(&frame[half..]).unwrap();
    backend.join().unwrap();
}

/// The close code in a close frame's payload.
fn close_code(frame: &(u8, Vec<u8>)) -> u16 {
    assert_eq!(frame.0, 0x88, "a close frame, got {frame:?}");
    u16::from_be_bytes([frame.1[0], frame.1[1]])
}

/// When the backend breaks the protocol, the client is told so with 1014
/// (bad gateway) and the backend gets its 1002; when the client breaks
/// it, the client gets 1002 and the backend 1001 (the proxy, its client,
/// goes away).
#[test]
fn the_innocent_side_is_told_who_broke_the_protocol() {
    let dir = tempfile::tempdir().unwrap();

    // The backend breaks it: a reserved opcode right after the upgrade.
    let backend_sock = dir.path().join("bad-backend.sock");
    let listener = std::os::unix::net::UnixListener::bind(&backend_sock).unwrap();
    let backend = std::thread::spawn(move || {
        use std::io::Write;
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut ws = unixws::tungstenite::accept(s).expect("the proxy's upgrade");
        ws.get_mut().write_all(&[0x83, 0x01, b'x']).unwrap();
        unixws_testkit::read_frame(ws.get_mut()).expect("the proxy's close")
    });
    let proxy_sock = dir.path().join("proxy-a.sock");
    let _proxy_a = proxy(
        proxy_sock.to_str().unwrap(),
        &format!("ws+unix://{}", backend_sock.display()),
        &[],
    );
    let mut client = unixws::connect(&proxy_sock).unwrap();
    assert!(matches!(client.recv(), Ok(None)), "a close, not an error");
    let close = client
        .peer_close()
        .cloned()
        .expect("the proxy's close frame");
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1014, "the backend broke the protocol")
    );
    assert_eq!(close_code(&backend.join().unwrap()), 1002);

    // The client breaks it, in front of a well-behaved backend.
    let backend_sock = dir.path().join("good-backend.sock");
    let (backend, seen) = recording_backend(&backend_sock);
    let proxy_sock = dir.path().join("proxy-b.sock");
    let _proxy_b = proxy(
        proxy_sock.to_str().unwrap(),
        &format!("ws+unix://{}", backend_sock.display()),
        &[],
    );
    let mut raw = unixws_testkit::raw_upgraded(&proxy_sock);
    std::io::Write::write_all(&mut raw, &unixws_testkit::client_frame(0x83, b"x", true)).unwrap();
    let answer = unixws_testkit::read_frame(&mut raw).expect("the proxy's close");
    assert_eq!(close_code(&answer), 1002);
    assert!(wait_until(T, || !seen.lock().unwrap().is_empty()));
    let backend_close = seen.lock().unwrap()[0].1.clone().expect("a close frame");
    assert_eq!(
        (backend_close.code, backend_close.reason.as_str()),
        (CloseCode::Away, "the client broke the protocol")
    );
    drop(backend);
}
