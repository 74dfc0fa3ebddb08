//! Clients that ride out restarts of their server: the library's
//! `Reconnecting` and `unixws connect --reconnect --init`, against
//! `unixws serve --print` processes that are killed (SIGKILL: no close at
//! all) and stopped (SIGTERM: 1001) while the client sends. What each
//! server printed is what arrived there.

// The helpers unwrap as the tests do: a failure there is the test's failure.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use unixws::{ClientBuilder, Error, Message, RetryPolicy};
use unixws_testkit::{wait_until, Process};

const T: Duration = Duration::from_secs(30);

/// `unixws serve --print SOCKET`, once it accepts connections (the path
/// may still hold the killed predecessor's stale file).
fn print_server(socket: &Path) -> Process {
    let p = Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_unixws"))
            .args(["serve", "--print"])
            .arg(socket),
    );
    assert!(
        wait_until(T, || UnixStream::connect(socket).is_ok()),
        "unixws serve --print did not listen on {}",
        socket.display()
    );
    p
}

fn kill(server: &Process, signal: i32) {
    // SAFETY: kill with the pid of a child we spawned and still own.
    assert_eq!(unsafe { libc::kill(server.id() as i32, signal) }, 0);
}

/// What one server printed, after it ended.
fn lines_of(server: Process) -> Vec<String> {
    server.finish(T).1
}

#[test]
fn a_reconnecting_client_rides_out_two_restarts_and_every_message_arrives_or_is_reported() {
    const N: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("print.sock");
    let mut server = print_server(&sock);

    let progress = Arc::new(AtomicUsize::new(0));
    let done = progress.clone();
    let url = format!("ws+unix://{}", sock.display());
    let client = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let mut client = ClientBuilder::new(url.as_str())
                .unwrap()
                .reconnect(RetryPolicy::new(
                    u32::MAX,
                    Duration::from_millis(10),
                    Duration::from_millis(200),
                ))
                .on_connect(|_| vec![Message::text("hello again")])
                .connect_reconnecting()
                .await
                .unwrap();
            let mut confirmed = vec![false; N];
            for (i, ok) in confirmed.iter_mut().enumerate() {
                match client.send(Message::text(format!("m{i}"))).await {
                    Ok(()) => *ok = true,
                    Err(Error::NotConfirmed { .. }) => {}
                    Err(e) => panic!("message {i}: the client gave up: {e}"),
                }
                done.store(i + 1, Ordering::SeqCst);
            }
            client.close(unixws::CloseCode::Normal, "").await.unwrap();
            (confirmed, client.connects())
        })
    });

    let mut printed = Vec::new();
    // A kill (no close frame), then a graceful stop (1001), mid-stream.
    for (at, signal) in [(N / 4, libc::SIGKILL), (N / 2, libc::SIGTERM)] {
        assert!(
            wait_until(T, || progress.load(Ordering::SeqCst) >= at),
            "the client stalled before {at}"
        );
        kill(&server, signal);
        printed.push(lines_of(server));
        server = print_server(&sock);
    }
    let (confirmed, connects) = client.join().expect("the client thread");
    kill(&server, libc::SIGTERM);
    printed.push(lines_of(server));

    assert_eq!(connects, 3, "one connection per server");
    let mut arrived = HashSet::new();
    for (n, lines) in printed.iter().enumerate() {
        assert_eq!(
            lines.first().map(String::as_str),
            Some("hello again"),
            "server {n}: {lines:?}"
        );
        // In order on each server.
        let numbers: Vec<usize> = lines[1..]
            .iter()
            .map(|l| {
                l.strip_prefix('m')
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("stray line {l:?}"))
            })
            .collect();
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "server {n} out of order"
        );
        arrived.extend(numbers);
    }
    let lost: Vec<usize> = (0..N)
        .filter(|i| confirmed[*i] && !arrived.contains(i))
        .collect();
    assert!(lost.is_empty(), "confirmed but never arrived: {lost:?}");
    let reported = confirmed.iter().filter(|c| !**c).count();
    assert!(
        reported <= 2,
        "at most one unconfirmed send per drop, got {reported}"
    );
    assert!(
        confirmed[N / 2 + 1..].iter().filter(|c| **c).count() > N / 3,
        "the client went on after the restarts"
    );
}

#[test]
fn connect_reconnect_resends_what_was_not_confirmed_and_repeats_its_init_lines() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("print.sock");
    let mut server = print_server(&sock);
    let url = format!("ws+unix://{}", sock.display());
    let mut client = unixws_testkit::spawn(
        Command::new(env!("CARGO_BIN_EXE_unixws"))
            .args([
                "connect",
                "--reconnect",
                "--init",
                "hello",
                "--init",
                "subscribe all",
            ])
            .arg(&url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .expect("start unixws connect");
    // Lines stream out while the server is killed, then stopped.
    const LINES: usize = 20_000;
    let mut stdin = client.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..LINES {
            writeln!(stdin, "line {i}").unwrap();
        }
    });
    let mut printed = Vec::new();
    for signal in [libc::SIGKILL, libc::SIGTERM] {
        std::thread::sleep(Duration::from_millis(300));
        kill(&server, signal);
        printed.push(lines_of(server));
        server = print_server(&sock);
    }
    writer.join().expect("the stdin writer");
    let out = client.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "unixws connect failed: {stderr}");
    kill(&server, libc::SIGTERM);
    printed.push(lines_of(server));

    let mut arrived = HashSet::new();
    for (n, lines) in printed.iter().enumerate() {
        assert_eq!(
            &lines[..2],
            ["hello", "subscribe all"],
            "server {n} first heard the init lines: {lines:?}"
        );
        arrived.extend(lines[2..].iter().cloned());
    }
    let missing: Vec<usize> = (0..LINES)
        .filter(|i| !arrived.contains(&format!("line {i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "lines that never arrived: {missing:?}; stderr: {stderr}"
    );
}
