//! `ServerBuilder::health_path` on both front ends: a plain GET of the
//! path is answered 200 with JSON (403 when the policy refuses the peer),
//! anything else is the WebSocket server it always was; and the counters
//! a scrape reads (`ServerStats`), over a real socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use unixws::{AccessPolicy, Server};
use unixws_testkit::{assert_echo, FrontEnd, RunningServer, FRONT_ENDS};

fn start(front: FrontEnd, path: &Path, policy: AccessPolicy) -> RunningServer {
    let builder = Server::builder(path)
        .expect("address")
        .health_path("/healthz")
        .policy(policy);
    match front {
        FrontEnd::Blocking => RunningServer::start(builder, unixws_testkit::echo),
        FrontEnd::Tokio => RunningServer::start_async(builder, unixws_testkit::echo_async),
    }
}

/// A raw HTTP request; the whole answer.
fn get(path: &Path, request: &str) -> String {
    let mut s = UnixStream::connect(path).expect("connect");
    s.write_all(request.as_bytes()).expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    answer
}

#[test]
fn a_plain_get_of_the_health_path_gets_200_json_on_both_servers() {
    for front in FRONT_ENDS {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.sock");
        let server = start(front, &path, AccessPolicy::new());
        let answer = get(&path, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n"),
            "{front:?}: {answer}"
        );
        assert!(
            answer.contains("Content-Type: application/json"),
            "{front:?}: {answer}"
        );
        assert!(
            answer.ends_with("{\"status\":\"ok\",\"open\":0,\"accepted\":1,\"upgraded\":0}\n"),
            "{front:?}: {answer}"
        );
        // A POST, or another path, is no health check.
        let answer = get(&path, "POST /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 400"), "{front:?}: {answer}");
        // The WebSocket on the same path still works, and is counted.
        let url = format!("ws+unix://{}:/healthz", path.display());
        let mut conn = unixws::connect(url.as_str()).expect("connect");
        assert_echo(&mut conn, "hi");
        conn.close(unixws::CloseCode::Normal, "").expect("close");
        assert!(unixws_testkit::wait_until(
            std::time::Duration::from_secs(10),
            || { server.stats().messages_in == 1 && server.stats().open == 0 }
        ));
        let stats = server.stats();
        assert_eq!(
            (stats.messages_out, stats.upgraded),
            (1, 1),
            "{front:?}: {stats:?}"
        );
        server.stop();
    }
}

#[test]
fn the_access_policy_guards_the_health_path_too() {
    for front in FRONT_ENDS {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.sock");
        let me = nix::unistd::geteuid().as_raw();
        let _server = start(front, &path, AccessPolicy::new().allow_uid(me + 1));
        let answer = get(&path, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 403"), "{front:?}: {answer}");
        assert!(
            answer.contains(&format!("uid {me} is not allowed")),
            "{front:?}: {answer}"
        );
    }
}

#[test]
fn a_health_path_must_be_a_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Server::builder(dir.path().join("h.sock").as_path())
        .expect("address")
        .health_path("healthz")
        .bind()
        .expect_err("no leading slash");
    assert!(err.to_string().contains("leading slash"), "{err}");
}
