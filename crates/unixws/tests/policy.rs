//! Access policy: a peer whose credentials are not allowed gets HTTP 403
//! before the upgrade and never reaches the handler. (The real uid/gid/pid
//! of a child running as another uid is checked in the CLI tests, which
//! can start the `unixws` binary as uid 65534.)

// The helpers unwrap as the tests do: a failure there is the test's failure.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use unixws::{AccessPolicy, Error, Server};
use unixws_testkit::{assert_echo, RunningServer};

fn counting_server(policy: AccessPolicy) -> (tempfile::TempDir, RunningServer, Arc<AtomicUsize>) {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let builder = Server::builder(dir.path().join("p.sock"))
        .unwrap()
        .policy(policy);
    let server = RunningServer::start(builder, move |conn| {
        counted.fetch_add(1, Ordering::SeqCst);
        unixws_testkit::echo(conn)
    });
    (dir, server, calls)
}

#[test]
fn uid_not_allowed_gets_403_and_handler_never_runs() {
    let me = nix_uid();
    let (_dir, server, calls) = counting_server(AccessPolicy::new().allow_uid(me + 4242));
    let err = unixws::connect(server.addr()).unwrap_err();
    match &err {
        Error::HandshakeRejected {
            status,
            body,
            refused_uid,
            ..
        } => {
            assert_eq!(*status, 403);
            assert!(body.contains(&format!("uid {me} is not allowed")), "{body}");
            assert_eq!(
                *refused_uid,
                Some(me),
                "the policy refused: the error says so"
            );
        }
        other => panic!("expected 403, got {other:?}"),
    }
    assert!(
        err.to_string().contains(&format!("runs as uid {me}"))
            && err.to_string().contains("access policy"),
        "{err}"
    );
    drop(server);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the handler ran for a rejected peer"
    );
}

#[test]
fn allowed_uid_and_gid_connect() {
    let me = nix_uid();
    for policy in [
        AccessPolicy::new().allow_uid(me),
        AccessPolicy::new().allow_uid(me + 1).allow_gid(nix_gid()),
        AccessPolicy::new().allow_current_user(),
    ] {
        let (_dir, server, calls) = counting_server(policy);
        let mut conn = unixws::connect(server.addr()).expect("allowed peer connects");
        assert_echo(&mut conn, "allowed");
        conn.close(1000, "").unwrap();
        drop(server);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}

#[test]
fn predicate_sees_real_credentials() {
    let pid = std::process::id() as i32;
    let (uid, gid) = (nix_uid(), nix_gid());
    let (_dir, server, _) = counting_server(
        AccessPolicy::new().require(move |c| c.pid == pid && c.uid == uid && c.gid == gid),
    );
    let mut conn = unixws::connect(server.addr()).expect("predicate allows us");
    let info = conn.info().clone();
    // The client sees the server's credentials too: the same process here.
    assert_eq!(
        info.peer.credentials().map(|c| (c.uid, c.gid, c.pid)),
        Some((uid, gid, pid))
    );
    assert_echo(&mut conn, "x");
    drop(conn);

    let (_dir, server, calls) = counting_server(AccessPolicy::new().require(|_| false));
    let err = unixws::connect(server.addr()).unwrap_err();
    assert!(
        matches!(err, Error::HandshakeRejected { status: 403, .. }),
        "{err:?}"
    );
    drop(server);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[test]
fn a_policy_on_tcp_is_refused_at_bind() {
    let err = Server::builder("127.0.0.1:1")
        .unwrap()
        .policy(AccessPolicy::new().allow_uid(0))
        .bind()
        .unwrap_err();
    assert!(err.to_string().contains("needs a Unix socket"), "{err}");
}

/// Only the current user: a policy of another uid refuses us, and
/// `allow_current_user` is exactly our effective uid.
#[test]
fn allow_current_user_is_the_effective_uid() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let ours = AccessPolicy::new().allow_current_user();
    let theirs = AccessPolicy::new().allow_uid(euid + 1);
    let (_dir, server, _) = counting_server(theirs);
    assert!(unixws::connect(server.addr()).is_err());
    let (_dir, server, calls) = counting_server(ours);
    assert_echo(&mut unixws::connect(server.addr()).unwrap(), "me");
    drop(server);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

fn nix_uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

fn nix_gid() -> u32 {
    // SAFETY: getgid has no preconditions.
    unsafe { libc::getgid() }
}
