//! Binding rules (the `listen` module docs) over real files in temp dirs: stale sockets
//! are replaced, live ones refused, non-sockets never removed, modes applied
//! before anyone can connect, and only our own socket file removed.

// The helpers unwrap as the tests do: a failure there is the test's failure.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread;

use unixws::{Address, BindOptions, Error, Listener, Message, Server};

fn addr(path: &std::path::Path) -> Address {
    Address::unix(path).unwrap()
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    drop(UnixListener::bind(&path).unwrap()); // leaves the file, nobody listens
    assert!(UnixStream::connect(&path).is_err(), "precondition: stale");
    let listener =
        Listener::bind(&addr(&path), &BindOptions::new()).expect("stale socket replaced");
    assert!(UnixStream::connect(&path).is_ok(), "new listener accepts");
    assert!(listener.owns_socket_file());
}

#[test]
fn live_socket_gives_address_in_use_and_survives() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.sock");
    let _first = Listener::bind(&addr(&path), &BindOptions::new()).unwrap();
    let err = Listener::bind(&addr(&path), &BindOptions::new()).unwrap_err();
    assert!(matches!(err, Error::AddressInUse { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("address in use: {}", path.display())),
        "{err}"
    );
    assert!(
        UnixStream::connect(&path).is_ok(),
        "the live server still accepts"
    );
}

#[test]
fn regular_file_directory_and_symlink_are_never_removed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.txt");
    fs::write(&file, b"precious").unwrap();
    let sub = dir.path().join("subdir");
    fs::create_dir(&sub).unwrap();
    let link = dir.path().join("link.sock");
    let target = dir.path().join("target.sock");
    let _target_listener = UnixListener::bind(&target).unwrap();
    drop(_target_listener);
    symlink(&target, &link).unwrap();

    for (path, kind) in [
        (&file, "a regular file"),
        (&sub, "a directory"),
        (&link, "a symbolic link"),
    ] {
        let err = Listener::bind(&addr(path), &BindOptions::new()).unwrap_err();
        match &err {
            Error::NotASocket { kind: k, .. } => assert_eq!(*k, kind),
            other => panic!("{}: {other:?}", path.display()),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("never removes it"),
            "{msg}"
        );
    }
    assert_eq!(fs::read(&file).unwrap(), b"precious");
    assert!(sub.is_dir());
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    // Nothing else was left behind (no staging files).
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
}

#[test]
fn mode_is_applied_and_no_staging_file_remains() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o600, 0o660, 0o666] {
        let path = dir.path().join(format!("m{mode:o}.sock"));
        let _l = Listener::bind(&addr(&path), &BindOptions::new().mode(mode)).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o7777, mode);
    }
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with('.')),
        "staging files left: {names:?}"
    );
}

#[test]
fn mode_on_abstract_or_tcp_is_a_clear_error() {
    for text in ["@unixws-test-mode", "127.0.0.1:1"] {
        let err =
            Listener::bind(&text.parse().unwrap(), &BindOptions::new().mode(0o600)).unwrap_err();
        assert!(
            matches!(&err, unixws::Error::InvalidOption { option, .. } if option.starts_with("BindOptions::mode")),
            "{err:?}"
        );
        assert!(err.to_string().contains("AccessPolicy"), "{err}");
    }
}

/// `mode(660)` is decimal 660, `0o1224`: refused before anything is
/// created, with the octal spelling it most likely meant.
#[test]
fn a_decimal_mode_is_refused_with_the_octal_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.sock");
    for (mode, suggestion) in [(660, "0o660"), (0o4755, "octal"), (0o1777, "octal")] {
        let err = Listener::bind(&addr(&path), &BindOptions::new().mode(mode)).unwrap_err();
        assert!(
            matches!(
                &err,
                unixws::Error::InvalidOption {
                    option: "BindOptions::mode",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains(suggestion), "{mode:o}: {err}");
        assert!(!path.exists(), "nothing is created for a refused mode");
    }
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(names.is_empty(), "no staging file left: {names:?}");
    // Every mode within 0o777 is still accepted.
    let _l = Listener::bind(&addr(&path), &BindOptions::new().mode(0o777)).unwrap();
}

#[test]
fn socket_file_is_gone_after_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.sock");
    let server = Server::bind(&path).unwrap();
    let shutdown = server.shutdown_handle();
    let join = thread::spawn(move || server.serve(|_| Ok(())));
    assert!(path.exists());
    shutdown.shutdown();
    join.join().unwrap().unwrap();
    assert!(!path.exists(), "socket file left behind");
}

#[test]
fn second_servers_socket_survives_the_first_listener_dropping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.sock");
    let first = Listener::bind(&addr(&path), &BindOptions::new()).unwrap();
    // An operator removes the file and a second server takes the path.
    fs::remove_file(&path).unwrap();
    let second = Listener::bind(&addr(&path), &BindOptions::new()).unwrap();
    assert!(!first.owns_socket_file());
    drop(first);
    assert!(
        path.exists(),
        "the first listener removed the second server's socket"
    );
    assert!(UnixStream::connect(&path).is_ok());
    drop(second);
    assert!(!path.exists());
}

#[test]
fn abstract_socket_serves_without_a_file() {
    let name = format!("@unixws-test-{}", std::process::id());
    let server = Server::bind(name.as_str()).unwrap();
    let shutdown = server.shutdown_handle();
    let join = thread::spawn(move || {
        server.serve(|conn| {
            while let Some(m) = conn.recv()? {
                conn.send(m)?;
            }
            Ok(())
        })
    });
    let mut conn = unixws::connect(name.as_str()).unwrap();
    conn.send(Message::text("abstract")).unwrap();
    assert_eq!(conn.recv().unwrap(), Some(Message::text("abstract")));
    conn.close(1000, "").unwrap();
    shutdown.shutdown();
    join.join().unwrap().unwrap();
}

#[test]
fn path_too_long_is_refused_before_touching_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("x".repeat(120));
    let err = Server::bind(long.to_str().unwrap()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("107-byte") && msg.contains(long.to_str().unwrap()),
        "{msg}"
    );
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Servers started at the same moment on one path: in every round exactly
/// one binds, every other one gets "address in use", and the winner's
/// socket is the one at the path (no loser renamed its own over it). The
/// probe-bind-rename sequence runs under `PATH.lock`, which is gone after.
#[test]
fn of_servers_started_together_on_one_path_exactly_one_wins() {
    const SERVERS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("race.sock");
    for round in 0..100 {
        let start = std::sync::Arc::new(std::sync::Barrier::new(SERVERS));
        let racers: Vec<_> = (0..SERVERS)
            .map(|_| {
                let (start, a) = (start.clone(), addr(&path));
                thread::spawn(move || {
                    start.wait();
                    Listener::bind(&a, &BindOptions::new())
                })
            })
            .collect();
        let results: Vec<_> = racers.into_iter().map(|r| r.join().unwrap()).collect();
        let (won, lost): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| r.is_ok());
        assert_eq!(won.len(), 1, "round {round}: {lost:?}");
        for err in lost.iter().map(|r| r.as_ref().unwrap_err()) {
            assert!(
                matches!(err, Error::AddressInUse { .. }),
                "round {round}: {err:?}"
            );
        }
        let winner = won.into_iter().next().unwrap().unwrap();
        assert!(
            winner.owns_socket_file(),
            "round {round}: the winner's file was replaced"
        );
        drop(winner);
        assert!(!path.exists(), "round {round}: the socket file is removed");
        assert!(
            !dir.path().join("race.sock.lock").exists(),
            "round {round}: the lock file is removed"
        );
    }
    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "nothing is left behind: {left:?}");
}

/// A process that holds `PATH.lock` and never lets go (stopped, hung)
/// makes a server give up after its 10 s of patience, with an error that
/// names the lock and what to do, and nothing of its own left behind.
#[test]
fn a_bind_lock_held_forever_is_an_error_after_ten_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held.sock");
    let lock = dir.path().join("held.sock.lock");
    let mut holder = std::process::Command::new("flock")
        .arg(&lock)
        .args(["sleep", "60"])
        .spawn()
        .expect("util-linux flock");
    assert!(
        unixws_testkit::wait_until(std::time::Duration::from_secs(10), || lock.exists()),
        "flock did not create the lock file"
    );
    std::thread::sleep(std::time::Duration::from_millis(100)); // and took it
    let started = std::time::Instant::now();
    let err = Listener::bind(&addr(&path), &BindOptions::new()).unwrap_err();
    let waited = started.elapsed();
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        waited >= std::time::Duration::from_secs(10),
        "gave up after {waited:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("held.sock.lock has been locked by another process for 10 s")
            && message.contains("stop it, or pick another address"),
        "{message}"
    );
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        ["held.sock.lock"],
        "only the holder's lock file remains"
    );
}

/// `into_unix` hands the socket over with the guard of its file: the mode
/// from binding stays, the socket serves, the file goes with the guard;
/// a TCP listener is refused with the reason.
#[test]
fn into_unix_keeps_the_mode_and_the_guard_removes_the_file() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("handed.sock");
    let listener = Listener::bind(&addr(&path), &BindOptions::new().mode(0o600)).unwrap();
    let raw = listener.as_raw_fd();
    let (std_listener, guard) = listener.into_unix().unwrap();
    assert_eq!(std_listener.as_raw_fd(), raw, "the same socket");
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let _client = UnixStream::connect(&path).unwrap();
    assert!(std_listener.accept().is_ok());
    drop(std_listener);
    assert!(path.exists(), "the file stays while the guard lives");
    drop(guard);
    assert!(!path.exists(), "the guard removes the file");

    let tcp = Listener::bind(&"127.0.0.1:0".parse().unwrap(), &BindOptions::new()).unwrap();
    let err = tcp.into_unix().unwrap_err().to_string();
    assert!(
        err.contains("is a TCP listener; bind a Unix socket address"),
        "{err}"
    );
}
