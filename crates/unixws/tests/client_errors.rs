//! Every client failure is its own `Error` variant with a message that says
//! what to do; retry heals what can heal and nothing else.

// The helpers unwrap as the tests do: a failure there is the test's failure.
#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use unixws::{AccessPolicy, ClientBuilder, Error, Limits, RetryPolicy, Server};
use unixws_testkit::{assert_echo, require_root, RunningServer, NOBODY};

#[test]
fn missing_socket_is_socket_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.sock");
    let err = unixws::connect(&path).unwrap_err();
    assert!(matches!(err, Error::SocketNotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("is the server running"),
        "{msg}"
    );
    assert!(err.is_transient());
}

#[test]
fn stale_socket_is_connection_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    drop(UnixListener::bind(&path).unwrap());
    let err = unixws::connect(&path).unwrap_err();
    assert!(matches!(err, Error::ConnectionRefused { .. }), "{err:?}");
    assert!(err.to_string().contains("nothing is listening"), "{err}");
    assert!(err.is_transient());
}

/// Needs root: the test thread switches its filesystem uid to 65534
/// (setfsuid is per thread), so the kernel checks the socket's mode against
/// an unprivileged user, as it would for another user's process.
#[test]
fn permission_denied_names_mode_owner_and_fix() {
    require_root("it switches the thread's filesystem uid to 65534 to be refused by a 0600 socket");
    let dir = unixws_testkit::shared_tempdir();
    let path = dir.path().join("private.sock");
    let server = RunningServer::start(
        Server::builder(&path)
            .unwrap()
            .bind_options(unixws::BindOptions::new().mode(0o600)),
        unixws_testkit::echo,
    );
    let err = thread::spawn(move || {
        // SAFETY: setfsuid only changes this thread's filesystem uid.
        unsafe { libc::setfsuid(NOBODY) };
        let result = unixws::connect(&path);
        // SAFETY: as above; back to root before the thread ends.
        unsafe { libc::setfsuid(0) };
        result.err()
    })
    .join()
    .unwrap()
    .expect("uid 65534 must be refused by a 0600 socket owned by root");
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("mode 0600 owned by root:root") && msg.contains("run as user root"),
        "{msg}"
    );
    assert!(!err.is_transient());
    drop(server);
}

#[test]
fn policy_rejection_is_handshake_rejected_403_and_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let checks = Arc::new(AtomicUsize::new(0));
    let counted = checks.clone();
    let policy = AccessPolicy::new().require(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        false
    });
    let server = RunningServer::start(
        Server::builder(dir.path().join("p.sock"))
            .unwrap()
            .policy(policy),
        unixws_testkit::echo,
    );
    let err = ClientBuilder::new(server.addr())
        .unwrap()
        .retry(RetryPolicy::attempts(5))
        .connect()
        .unwrap_err();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert!(
        matches!(err, Error::HandshakeRejected { status: 403, refused_uid: Some(u), .. } if u == uid),
        "the policy refused, so the error says so: {err:?}"
    );
    assert!(err.to_string().contains("access policy"), "{err}");
    assert_eq!(
        checks.load(Ordering::SeqCst),
        1,
        "a 403 must not be retried"
    );
}

#[test]
fn server_that_never_answers_is_a_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mute.sock");
    // Listening but never accepting: connect succeeds, no answer ever comes.
    let _mute = UnixListener::bind(&path).unwrap();
    let timeout = Duration::from_millis(200);
    let started = Instant::now();
    let err = ClientBuilder::new(&path)
        .unwrap()
        .handshake_timeout(timeout)
        .connect()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                operation: unixws::error::Operation::Handshake,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(started.elapsed() >= timeout);
    assert!(
        err.to_string().contains("handshake timed out after 200ms"),
        "{err}"
    );
}

#[test]
fn read_timeout_fails_recv() {
    let dir = tempfile::tempdir().unwrap();
    let server = RunningServer::start(
        Server::builder(dir.path().join("r.sock")).unwrap(),
        |conn| {
            // Never answers, but stays open until the client goes.
            while conn.recv()?.is_some() {}
            Ok(())
        },
    );
    let mut conn = ClientBuilder::new(server.addr())
        .unwrap()
        .read_timeout(Duration::from_millis(100))
        .connect()
        .unwrap();
    conn.send(unixws::Message::text("anyone?")).unwrap();
    let err = conn.recv().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                operation: unixws::error::Operation::Read,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn retry_succeeds_when_the_server_appears_during_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("late.sock");
    let late = path.clone();
    let starter = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        RunningServer::echo(late, Limits::default())
    });
    let retry = RetryPolicy::new(30, Duration::from_millis(20), Duration::from_millis(100));
    let mut conn = ClientBuilder::new(&path)
        .unwrap()
        .retry(retry)
        .connect()
        .expect("retry heals");
    assert_echo(&mut conn, "made it");
    drop(conn);
    drop(starter.join().unwrap());
}

#[test]
fn without_retry_a_late_server_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = ClientBuilder::new(dir.path().join("never.sock"))
        .unwrap()
        .connect()
        .unwrap_err();
    assert!(matches!(err, Error::SocketNotFound { .. }), "{err:?}");
}

#[test]
fn retry_delays_grow_and_are_capped_with_jitter() {
    let p = RetryPolicy::new(10, Duration::from_millis(100), Duration::from_secs(1));
    for _ in 0..50 {
        let d0 = p.delay(0);
        assert!(
            d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100),
            "{d0:?}"
        );
        let d3 = p.delay(3);
        assert!(
            d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800),
            "{d3:?}"
        );
        let d9 = p.delay(9);
        assert!(
            d9 >= Duration::from_millis(500) && d9 <= Duration::from_secs(1),
            "{d9:?}"
        );
    }
}

#[test]
fn tcp_connect_works_and_a_closed_port_is_refused() {
    let server = RunningServer::echo("127.0.0.1:0", Limits::default());
    let mut conn = unixws::connect(server.addr()).unwrap();
    assert_echo(&mut conn, "tcp");
    let port = match server.addr().endpoint() {
        unixws::Endpoint::Tcp { port, .. } => *port,
        other => panic!("{other:?}"),
    };
    drop(conn);
    drop(server);
    let err = unixws::connect(format!("127.0.0.1:{port}")).unwrap_err();
    assert!(matches!(err, Error::ConnectionRefused { .. }), "{err:?}");
    let err = unixws::connect("127.0.0.1:0").unwrap_err();
    assert!(err.to_string().contains("port 0"), "{err}");
}

#[test]
fn a_regular_file_is_not_a_socket_and_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "not a socket").unwrap();
    let err = unixws::connect(&path).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::NotASocketPath {
                kind: "a regular file",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_transient(), "a file never becomes a socket");
    assert!(err.to_string().contains("check the path"), "{err}");
    // With a retry policy the error comes back at once, not after retries.
    let started = Instant::now();
    let err = ClientBuilder::new(&path)
        .unwrap()
        .retry(RetryPolicy::new(
            10,
            Duration::from_millis(200),
            Duration::from_secs(1),
        ))
        .connect()
        .unwrap_err();
    assert!(matches!(err, Error::NotASocketPath { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_missing_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("run").join("app");
    let path = missing.join("app.sock");
    let err = unixws::connect(&path).unwrap_err();
    match &err {
        Error::DirectoryNotFound { path: p, dir: d } => {
            assert_eq!(p, &path);
            assert_eq!(d, &dir.path().join("run"), "the first missing directory");
        }
        other => panic!("expected DirectoryNotFound, got {other:?}"),
    }
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// A peer that hangs up without a close frame is `ConnectionReset`, both
/// when the server is reading and when it tries to close: not a protocol
/// error, since nobody sent or broke a frame.
#[test]
fn a_peer_that_hangs_up_is_a_reset_not_a_protocol_error() {
    let dir = tempfile::tempdir().unwrap();
    let (hung_up, wait_for_hang_up) = std::sync::mpsc::channel::<()>();
    let wait_for_hang_up = std::sync::Mutex::new(wait_for_hang_up);
    let (report, outcomes) = std::sync::mpsc::channel::<(bool, Result<(), Error>)>();
    let report = std::sync::Mutex::new(report);
    let server = RunningServer::start(
        Server::builder(dir.path().join("r.sock")).unwrap(),
        move |conn| {
            wait_for_hang_up.lock().unwrap().recv().unwrap();
            let reading = conn.info().path == "/read";
            let result = if reading {
                conn.recv()
                    .map(|m| assert_eq!(m, None, "no message was sent"))
            } else {
                conn.close(1000, "bye")
            };
            report.lock().unwrap().send((reading, result)).unwrap();
            Ok(())
        },
    );
    for path in ["/read", "/close"] {
        let conn = unixws::connect(server.addr().with_resource(path).unwrap()).unwrap();
        drop(conn); // no close frame: the socket just closes
        hung_up.send(()).unwrap();
        let (reading, result) = outcomes.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(reading, path == "/read");
        assert!(
            matches!(result, Err(Error::ConnectionReset)),
            "{path}: {result:?}"
        );
    }
}
