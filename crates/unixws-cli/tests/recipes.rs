//! The recipes in docs/recipes/ run as written: HAProxy and Caddy (from
//! Debian's packages, installed by scripts/test) in front of `unixws serve`
//! on a Unix socket, each with the repository's own configuration file,
//! only its socket path and port replaced.

// The helpers unwrap as the tests do: a failure there is the test's failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use unixws::{CloseCode, Message};
use unixws_testkit::{free_port, repo_root, wait_until, Process};

const T: Duration = Duration::from_secs(20);

/// A recipe's file with the documented socket path and address replaced.
fn recipe(name: &str, dir: &Path, sock: &Path, port: u16) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("docs/recipes").join(name)).unwrap();
    assert!(text.contains("/run/unixws/app.sock") && text.contains("127.0.0.1:8080"));
    let text = text
        .replace("/run/unixws/app.sock", sock.to_str().unwrap())
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed: run ./scripts/test, which installs it with apt-get")
        })
}

/// `unixws serve --echo` on `sock`, then the front end, then a WebSocket
/// through it: messages small and large both ways, and a clean close.
fn round_trip(front: &mut Command, sock: &Path, port: u16, name: &str) {
    let _backend = Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_unixws"))
            .args(["serve", "--echo"])
            .arg(sock),
    );
    assert!(
        wait_until(T, || sock.exists()),
        "unixws serve did not start"
    );
    let _front = Process::spawn(front);
    assert!(
        wait_until(T, || std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok()),
        "{name} did not listen on {port}"
    );
    let mut conn = unixws::connect(format!("ws://127.0.0.1:{port}/through/{name}")).unwrap();
    assert_eq!(conn.info().path, "/through/".to_string() + name);
    for i in 0..50 {
        unixws_testkit::assert_echo(&mut conn, &format!("via {name} {i}"));
    }
    let big = Message::binary(vec![7u8; 512 << 10]);
    conn.send(big.clone()).unwrap();
    assert_eq!(conn.recv().unwrap(), Some(big));
    conn.close(CloseCode::Normal, "bye").unwrap();
    assert_eq!(conn.peer_close().map(|c| c.code), Some(CloseCode::Normal));
}

#[test]
fn haproxy_recipe_relays_websockets_to_a_unix_socket() {
    let haproxy = tool("haproxy");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let port = free_port();
    let cfg = recipe("haproxy.cfg", dir.path(), &sock, port);
    let check = Command::new(&haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "haproxy -c: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // -db: stay in the foreground (the test's process group ends it).
    round_trip(
        Command::new(&haproxy).arg("-db").arg("-f").arg(&cfg),
        &sock,
        port,
        "haproxy",
    );
}

#[test]
fn caddy_recipe_relays_websockets_to_a_unix_socket() {
    let caddy = tool("caddy");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let port = free_port();
    let cfg = recipe("Caddyfile", dir.path(), &sock, port);
    let mut cmd = Command::new(&caddy);
    cmd.args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&cfg)
        // Caddy keeps state under $HOME and $XDG_*: the test's own dir.
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .env("XDG_CONFIG_HOME", dir.path().join("config"));
    round_trip(&mut cmd, &sock, port, "caddy");
}
