//! `--metrics ADDR` and `--health-path PATH` of `serve` and `proxy`, seen
//! as operators see them: `curl --unix-socket` (and over TCP), and the
//! scrape parsed by the Prometheus project's own Python client.

// The helpers unwrap as the tests do: a failure there is the test's failure.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use unixws::{CloseCode, Message};
use unixws_testkit::{free_port, python, wait_until, Process};

const T: Duration = Duration::from_secs(20);

fn unixws(args: &[&str]) -> Process {
    Process::spawn(Command::new(env!("CARGO_BIN_EXE_unixws")).args(args))
}

/// `curl ARGS..`: (HTTP status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl (./scripts/test installs it: apt-get install curl)");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap_or(0), body.to_string())
}

/// A scrape's samples, parsed by prometheus_client: "name{k=v,..}" -> value.
fn parse_scrape(text: &str) -> HashMap<String, f64> {
    use std::io::Write;
    let mut child = unixws_testkit::spawn(
        python("py_scrape.py")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped()),
    )
    .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the scrape does not parse as OpenMetrics:\n{text}"
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let mut labels: Vec<String> = v["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
                .collect();
            labels.sort();
            let key = format!("{}{{{}}}", v["name"].as_str().unwrap(), labels.join(","));
            (key, v["value"].as_f64().unwrap())
        })
        .collect()
}

fn wait_for_socket(path: &Path) {
    assert!(
        wait_until(T, || path.exists()),
        "{} did not appear",
        path.display()
    );
}

#[test]
fn health_path_answers_200_json_and_without_it_a_plain_get_keeps_its_400() {
    let dir = tempfile::tempdir().unwrap();
    let with = dir.path().join("with.sock");
    let without = dir.path().join("without.sock");
    let _a = unixws(&[
        "serve",
        "--echo",
        with.to_str().unwrap(),
        "--health-path",
        "/healthz",
    ]);
    let _b = unixws(&["serve", "--echo", without.to_str().unwrap()]);
    wait_for_socket(&with);
    wait_for_socket(&without);

    let (status, body) = curl(&[
        "--unix-socket",
        with.to_str().unwrap(),
        "http://localhost/healthz",
    ]);
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["open"], 0);
    assert!(json["accepted"].as_u64().unwrap() >= 1, "{body}");

    // Other paths, and the same path on a server without the option, are
    // not health checks: a plain GET gets what it always got.
    let (other, _) = curl(&[
        "--unix-socket",
        with.to_str().unwrap(),
        "http://localhost/other",
    ]);
    let (plain, _) = curl(&[
        "--unix-socket",
        without.to_str().unwrap(),
        "http://localhost/healthz",
    ]);
    assert_eq!((other, plain), (400, 400));

    // The WebSocket on the same socket is unaffected.
    let url = format!("ws+unix://{}:/healthz", with.display());
    let mut conn = unixws::connect(url.as_str()).unwrap();
    conn.send(Message::text("still a websocket")).unwrap();
    assert_eq!(
        conn.recv().unwrap(),
        Some(Message::text("still a websocket"))
    );
}

#[test]
fn metrics_on_a_unix_socket_count_what_happened_and_parse_as_openmetrics() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("echo.sock");
    let metrics = dir.path().join("metrics.sock");
    let server = unixws(&[
        "serve",
        "--echo",
        sock.to_str().unwrap(),
        "--metrics",
        metrics.to_str().unwrap(),
    ]);
    wait_for_socket(&sock);
    wait_for_socket(&metrics);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&metrics).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o600,
        "the metrics socket is for this user by default"
    );

    // Two echoed messages and a normal close; one closed by the client
    // with 4001; one plain GET (a bad request).
    let url = format!("ws+unix://{}", sock.display());
    let mut conn = unixws::connect(url.as_str()).unwrap();
    for text in ["one", "two"] {
        conn.send(Message::text(text)).unwrap();
        assert_eq!(conn.recv().unwrap(), Some(Message::text(text)));
    }
    conn.close(CloseCode::Normal, "").unwrap();
    let mut other = unixws::connect(url.as_str()).unwrap();
    other.close(CloseCode::from(4001), "app").unwrap();
    let (status, _) = curl(&["--unix-socket", sock.to_str().unwrap(), "http://localhost/"]);
    assert_eq!(status, 400);

    let scrape = |key: &str, samples: &HashMap<String, f64>| {
        samples
            .get(key)
            .copied()
            .unwrap_or_else(|| panic!("no {key} in {samples:?}"))
    };
    let mut samples = HashMap::new();
    // The server counts a close when its connection ends, a moment after
    // the client's close returned.
    assert!(
        wait_until(T, || {
            let (status, text) = curl(&[
                "--unix-socket",
                metrics.to_str().unwrap(),
                "http://localhost/metrics",
            ]);
            assert_eq!(status, 200, "{text}");
            samples = parse_scrape(&text);
            samples.get("unixws_closes_total{code=4001}") == Some(&1.0)
        }),
        "{samples:?}"
    );
    assert_eq!(scrape("unixws_connections_upgraded_total{}", &samples), 2.0);
    assert_eq!(scrape("unixws_connections_accepted_total{}", &samples), 3.0);
    assert_eq!(
        scrape(
            "unixws_connections_refused_total{cause=bad_request}",
            &samples
        ),
        1.0
    );
    assert_eq!(
        scrape("unixws_connections_refused_total{cause=policy}", &samples),
        0.0
    );
    assert_eq!(scrape("unixws_connections_open{}", &samples), 0.0);
    assert_eq!(scrape("unixws_messages_total{direction=in}", &samples), 2.0);
    assert_eq!(
        scrape("unixws_messages_total{direction=out}", &samples),
        2.0
    );
    assert_eq!(scrape("unixws_closes_total{code=1000}", &samples), 1.0);
    // Out: 2 × (2-byte header + 3) + the close answers, code and reason
    // echoed: 4 and 2 + 2 + "app" = 21. In: the client's masked frames,
    // 2 × (6 + 3) + close frames of 8 and 11 = 37.
    assert_eq!(scrape("unixws_bytes_total{direction=out}", &samples), 21.0);
    assert_eq!(scrape("unixws_bytes_total{direction=in}", &samples), 37.0);
    assert_eq!(
        scrape("unixws_handshake_duration_seconds_count{}", &samples),
        2.0
    );
    assert_eq!(
        scrape(
            "unixws_handshake_duration_seconds_bucket{le=+Inf}",
            &samples
        ),
        2.0
    );
    assert!(scrape("unixws_handshake_duration_seconds_sum{}", &samples) > 0.0);

    // Anything but GET /metrics.
    let (status, _) = curl(&[
        "--unix-socket",
        metrics.to_str().unwrap(),
        "http://localhost/",
    ]);
    assert_eq!(status, 404);
    let (status, _) = curl(&[
        "--unix-socket",
        metrics.to_str().unwrap(),
        "-X",
        "POST",
        "http://localhost/metrics",
    ]);
    assert_eq!(status, 405);

    // The metrics socket goes with the server.
    let (ok, _) = server.terminate(T);
    assert!(ok);
    assert!(!metrics.exists(), "the metrics socket file was left behind");
}

#[test]
fn the_proxy_exports_metrics_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let backend = dir.path().join("backend.sock");
    let front = dir.path().join("front.sock");
    let port = free_port().to_string();
    let metrics = format!("127.0.0.1:{port}");
    let _backend = unixws(&["serve", "--echo", backend.to_str().unwrap()]);
    wait_for_socket(&backend);
    let to = format!("ws+unix://{}", backend.display());
    let _proxy = unixws(&[
        "proxy",
        "--listen",
        front.to_str().unwrap(),
        "--to",
        &to,
        "--metrics",
        &metrics,
    ]);
    wait_for_socket(&front);
    let url = format!("ws+unix://{}", front.display());
    let mut conn = unixws::connect(url.as_str()).unwrap();
    for text in ["a", "b", "c"] {
        conn.send(Message::text(text)).unwrap();
        assert_eq!(conn.recv().unwrap(), Some(Message::text(text)));
    }
    let mut samples = HashMap::new();
    assert!(
        wait_until(T, || {
            let (status, text) = curl(&[&format!("http://{metrics}/metrics")]);
            if status != 200 {
                return false;
            }
            samples = parse_scrape(&text);
            samples.get("unixws_messages_total{direction=out}") == Some(&3.0)
        }),
        "{samples:?}"
    );
    assert_eq!(
        samples.get("unixws_messages_total{direction=in}"),
        Some(&3.0)
    );
    assert_eq!(samples.get("unixws_connections_open{}"), Some(&1.0));
}
