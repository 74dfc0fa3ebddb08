//! axum on a unixws socket (feature `axum`): the example program served
//! to the unixws client and to Python `websockets`, each told its own real
//! uid and pid; graceful shutdown closing open WebSockets with 1001; the
//! access policy as a layer; unixws's limits on an axum upgrade.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use unixws::axum::{AccessPolicyLayer, Listener, Shutdown, WebSocketUpgrade};
use unixws::{AccessPolicy, BindOptions, CloseCode, Error, Limits, Message, Peer};
use unixws_testkit::{python, Process};

/// The example binary, built by `cargo test` beside this test's own.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo test --all-features` (which builds the examples) or \
         `cargo build -p unixws --features axum --example {name}`",
        path.display()
    );
    path
}

fn field(json: &str, name: &str) -> i64 {
    let at = json
        .find(&format!("\"{name}\":"))
        .unwrap_or_else(|| panic!("no {name} in {json}"));
    json[at + name.len() + 3..]
        .split([',', '}'])
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad {name} in {json}"))
}

#[test]
fn the_axum_example_tells_each_client_its_real_uid_and_pid_and_closes_with_1001_on_ctrl_c() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("axum.sock");
    let mut server = Process::spawn(std::process::Command::new(example("axum_service")).arg(&sock));
    server.wait_for_line(
        &format!("listening on ws+unix://{}", sock.display()),
        Duration::from_secs(10),
    );

    // The unixws client: greeted with this process's uid and pid.
    let url = format!("ws+unix://{}:/ws", sock.display());
    let mut conn = unixws::connect(url.as_str()).expect("connect to the axum example");
    let greeting = match conn.recv().expect("greeting") {
        Some(Message::Text(t)) => t.to_string(),
        other => panic!("expected a text greeting, got {other:?}"),
    };
    assert_eq!(
        field(&greeting, "pid"),
        i64::from(std::process::id()),
        "{greeting}"
    );
    assert_eq!(
        field(&greeting, "uid"),
        i64::from(nix::unistd::geteuid().as_raw()),
        "{greeting}"
    );
    conn.send(Message::text("echo me")).expect("send");
    assert_eq!(conn.recv().expect("echo"), Some(Message::text("echo me")));

    // Python `websockets`: greeted with the Python process's own pid.
    let out = python("py_whoami.py")
        .arg(&sock)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let greeting = stdout
        .lines()
        .find_map(|l| l.strip_prefix("greeting "))
        .expect("greeting line");
    let own = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pid "))
        .expect("pid line");
    let (pid, uid) = own.split_once(" uid ").expect("pid N uid N");
    assert_eq!(field(greeting, "pid").to_string(), pid, "{stdout}");
    assert_eq!(field(greeting, "uid").to_string(), uid, "{stdout}");

    // Ctrl-C: the open unixws connection is closed with 1001, not reset;
    // the program drains, exits cleanly and removes its socket file.
    // SAFETY: kill with the pid of a child we spawned and still own.
    unsafe { libc::kill(server.id() as i32, libc::SIGINT) };
    assert_eq!(conn.recv().expect("a clean close, not a reset"), None);
    assert_eq!(conn.peer_close().map(|c| c.code), Some(CloseCode::Away));
    drop(conn);
    let (ok, lines) = server.finish(Duration::from_secs(15));
    assert!(ok, "the example did not exit cleanly: {lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l == "stopped; every WebSocket closed: true"),
        "{lines:?}"
    );
    assert!(!sock.exists(), "the socket file was left behind");
}

async fn greet(upgrade: WebSocketUpgrade, ConnectInfo(peer): ConnectInfo<Peer>) -> Response {
    upgrade
        .limits(Limits::default().max_message_size(1024).compression(true))
        .on_upgrade(move |mut conn| async move {
            conn.send(Message::text(peer.to_string())).await?;
            while let Some(m) = conn.recv().await? {
                conn.send(m).await?;
            }
            Ok(())
        })
}

/// Serves `/ws` under `policy` on a fresh socket in `dir`.
fn serve(rt: &tokio::runtime::Runtime, dir: &Path, policy: AccessPolicy) -> (PathBuf, Shutdown) {
    let sock = dir.join("app.sock");
    let shutdown = Shutdown::new().expect("shutdown");
    let app = Router::new()
        .route("/ws", get(greet))
        .layer(AccessPolicyLayer::new(policy))
        .layer(Extension(shutdown.clone()));
    let listener = rt
        .block_on(async { Listener::bind(sock.as_path(), &BindOptions::new()) })
        .expect("bind");
    let stop = shutdown.on(std::future::pending::<()>());
    rt.spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
            .with_graceful_shutdown(stop)
            .await
    });
    (sock, shutdown)
}

#[test]
fn the_access_policy_layer_answers_403_before_the_router() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let me = nix::unistd::geteuid().as_raw();
    let (sock, _shutdown) = serve(&rt, dir.path(), AccessPolicy::new().allow_uid(me + 1));
    let url = format!("ws+unix://{}:/ws", sock.display());
    let err = unixws::connect(url.as_str()).expect_err("refused by the policy");
    match &err {
        Error::HandshakeRejected {
            status,
            refused_uid,
            ..
        } => {
            assert_eq!(*status, 403);
            assert_eq!(
                *refused_uid,
                Some(me),
                "the client hints at the access policy: {err}"
            );
        }
        other => panic!("expected a 403, got {other}"),
    }
    assert!(err.to_string().contains("access policy"), "{err}");
}

#[test]
fn an_axum_upgrade_keeps_unixws_limits_and_closes_with_1001_on_shutdown() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (sock, shutdown) = serve(&rt, dir.path(), AccessPolicy::new().allow_current_user());
    let url = format!("ws+unix://{}:/ws", sock.display());

    // A message over the handler's max_message_size: 1009.
    let mut big = unixws::connect(url.as_str()).expect("connect");
    assert!(big.recv().expect("greeting").is_some());
    big.send(Message::binary(vec![7u8; 2048])).expect("send");
    assert_eq!(big.recv().expect("a clean close"), None);
    assert_eq!(big.peer_close().map(|c| c.code), Some(CloseCode::Size));

    // permessage-deflate, when the limits ask for it.
    let mut deflating = unixws::ClientBuilder::new(url.as_str())
        .expect("address")
        .limits(Limits::default().compression(true).compression_threshold(0))
        .connect()
        .expect("connect");
    let answer = deflating.info().headers.get("sec-websocket-extensions");
    assert_eq!(
        answer.and_then(|v| v.to_str().ok()),
        Some("permessage-deflate")
    );
    assert!(deflating.recv().expect("greeting").is_some());
    unixws_testkit::assert_echo(&mut deflating, &"squeeze me ".repeat(50));
    deflating.close(CloseCode::Normal, "").expect("close");

    // Shutdown: an open connection gets 1001 and the drain completes.
    let mut open = unixws::connect(url.as_str()).expect("connect");
    assert!(open.recv().expect("greeting").is_some());
    assert_eq!(shutdown.stats().open, 1, "{:?}", shutdown.stats());
    shutdown.raise();
    assert_eq!(open.recv().expect("a clean close"), None);
    assert_eq!(open.peer_close().map(|c| c.code), Some(CloseCode::Away));
    drop(open);
    assert!(
        rt.block_on(shutdown.drain(Duration::from_secs(10))),
        "{:?}",
        shutdown.stats()
    );
    assert_eq!(shutdown.stats().open, 0);
    assert_eq!(shutdown.stats().upgraded, 3);
}

#[test]
fn a_plain_get_to_a_websocket_route_is_told_to_upgrade() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (sock, _shutdown) = serve(&rt, dir.path(), AccessPolicy::new());
    let mut s = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
    use std::io::{Read, Write};
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 426"), "{answer}");
    assert!(
        answer.contains("Connection: upgrade and Upgrade: websocket"),
        "{answer}"
    );
}
