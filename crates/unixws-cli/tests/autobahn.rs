//! Autobahn|Testsuite, the field's WebSocket conformance suite (sections
//! 1–7, 9, 10, and 12–13: permessage-deflate), against four agents, one
//! test each:
//!
//! - the server: `unixws serve --echo` on a Unix socket, which the suite
//!   (TCP only) reaches through `unixws proxy`, and the same server on TCP;
//! - the clients: the blocking client over TCP, and the tokio client over a
//!   Unix socket through `unixws proxy`.
//!
//! Every agent negotiates compression: the servers and the blocking client
//! themselves, and `unixws proxy --compress` on its TCP side for the two
//! that go through it. Every agent runs every case of those sections.
//! Each test has its own `wstest` process, so the four share the machine's
//! cores: the suite is single-threaded Python 2, and its deflate makes
//! sections 12 and 13 about five minutes of its CPU per agent.
//!
//! Any case whose behaviour is not OK or INFORMATIONAL fails the test.
//! `wstest` is installed by `scripts/install-autobahn` (run by
//! `scripts/test`). Each run writes a summary to
//! `target/autobahn/<agent>.txt`; the latest are committed in
//! `tests/autobahn/`.

// The helpers unwrap as the tests do: a failure there is the test's failure.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use unixws::{ClientBuilder, Limits, Message};
use unixws_testkit::{interop_dir, repo_root, wait_until, Process};

const CASES: [&str; 11] = [
    "1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*", "12.*", "13.*",
];
/// How many cases `CASES` selects in autobahntestsuite 25.10.1 (216 of
/// them in sections 12 and 13).
const CASE_COUNT: usize = 517;
/// Section 9 sends messages of up to 16 MiB.
const MAX_MESSAGE: &str = "64MiB";
/// One agent takes about 7 minutes of wall time with another beside it
/// on 2 cores; this bounds a hung suite.
const RUN_LIMIT: Duration = Duration::from_secs(1800);
const T: Duration = Duration::from_secs(10);

use unixws_testkit::free_port;

fn wstest() -> Command {
    let path = interop_dir().join("autobahn/bin/wstest");
    assert!(
        path.exists(),
        "the Autobahn testsuite is not installed ({} is missing): run ./scripts/test, which runs scripts/install-autobahn",
        path.display()
    );
    Command::new(path)
}

fn unixws(args: &[&str]) -> Process {
    Process::spawn(Command::new(env!("CARGO_BIN_EXE_unixws")).args(args))
}

fn wait_for_tcp(port: u16) {
    assert!(
        wait_until(T, || std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok()),
        "nothing listens on 127.0.0.1:{port}"
    );
}

fn wait_for_path(path: &Path) {
    assert!(
        wait_until(T, || path.exists()),
        "{} did not appear",
        path.display()
    );
}

fn spec(dir: &Path, body: serde_json::Value) -> PathBuf {
    let path = dir.join("spec.json");
    std::fs::write(&path, body.to_string()).unwrap();
    path
}

/// Reads the suite's `index.json`, writes the agent's summary, and fails
/// unless every case ran and each is OK or INFORMATIONAL (for the case
/// itself and for its closing).
fn check_report(index: &Path, agent: &str) {
    let text = std::fs::read_to_string(index)
        .unwrap_or_else(|e| panic!("no Autobahn report at {}: {e}", index.display()));
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = report[agent]
        .as_object()
        .unwrap_or_else(|| panic!("agent {agent} is missing from {}", index.display()));
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut lines = Vec::new();
    let mut bad = Vec::new();
    for (case, result) in cases {
        let behavior = result["behavior"].as_str().unwrap_or("?");
        let close = result["behaviorClose"].as_str().unwrap_or("?");
        *counts.entry(behavior.to_string()).or_default() += 1;
        let fine = |b: &str| b == "OK" || b == "INFORMATIONAL";
        if !fine(behavior) || !fine(close) {
            bad.push(format!("{agent} {case}: {behavior} (close: {close})"));
        }
        lines.push((sort_key(case), format!("{case} {behavior} {close}")));
    }
    lines.sort();
    let mut summary = format!("# {agent}: {} cases, {counts:?}\n", cases.len());
    for (_, line) in lines {
        summary.push_str(&line);
        summary.push('\n');
    }
    let out = repo_root().join("target/autobahn");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(format!("{agent}.txt")), &summary).unwrap();
    assert_eq!(
        cases.len(),
        CASE_COUNT,
        "{agent}: not every case of {CASES:?} ran"
    );
    assert!(bad.is_empty(), "Autobahn cases not OK:\n{}", bad.join("\n"));
}

/// "9.10.2" sorts after "9.2.1".
fn sort_key(case: &str) -> Vec<u32> {
    case.split('.').filter_map(|p| p.parse().ok()).collect()
}

/// `unixws serve --echo --compress` on TCP, or on a Unix socket behind
/// `unixws proxy --compress` (which the suite, TCP only, then reaches).
fn run_server_agent(agent: &str, via_proxy: bool) {
    let dir = tempfile::tempdir().unwrap();
    let serve = |listen: &str| {
        unixws(&[
            "serve",
            "--echo",
            "--max-message",
            MAX_MESSAGE,
            "--ping-interval",
            "0",
            "--compress",
            listen,
        ])
    };
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // The server (and the proxy): killed on drop, after the suite.
    let mut processes = Vec::new();
    if via_proxy {
        let sock = dir.path().join("echo.sock");
        processes.push(serve(sock.to_str().unwrap()));
        wait_for_path(&sock);
        let to = format!("ws+unix://{}", sock.display());
        processes.push(unixws(&[
            "proxy",
            "--listen",
            &listen,
            "--to",
            &to,
            "--compress",
        ]));
    } else {
        processes.push(serve(&listen));
    }
    wait_for_tcp(port);

    let spec = spec(
        dir.path(),
        serde_json::json!({
            "outdir": "./reports",
            "servers": [{"agent": agent, "url": format!("ws://{listen}")}],
            "cases": CASES,
            "exclude-cases": [],
            "exclude-agent-cases": {},
        }),
    );
    let mut cmd = wstest();
    cmd.args(["-m", "fuzzingclient", "-s"])
        .arg(&spec)
        .current_dir(dir.path());
    let (ok, output) = Process::spawn(&mut cmd).finish(RUN_LIMIT);
    assert!(ok, "wstest failed:\n{}", output.join("\n"));
    check_report(&dir.path().join("reports/index.json"), agent);
}

// libtest starts tests in the order of their names, two at a time on 2
// cores: the two through the proxy (about 7 minutes each, the proxy's
// deflate beside the suite's) go first, the two direct ones (about 6) after.

#[test]
fn over_a_unix_socket_through_the_proxy_the_server_passes_autobahn() {
    run_server_agent("unixws-serve-uds-via-proxy", true);
}

#[test]
fn over_tcp_the_server_passes_autobahn() {
    run_server_agent("unixws-serve-tcp", false);
}

/// One agent's pass: every case echoed back, then the report updated.
fn run_client_cases(base: &str, agent: &str, connect: &dyn Fn(&str) -> unixws::Result<()>) {
    let count: u32 = {
        let mut conn = ClientBuilder::new(format!("{base}/getCaseCount"))
            .unwrap()
            .connect()
            .unwrap();
        match conn.recv().unwrap() {
            Some(Message::Text(t)) => t.as_str().parse().unwrap(),
            other => panic!("getCaseCount answered {other:?}"),
        }
    };
    assert!(count >= 290, "the fuzzing server has only {count} cases");
    for case in 1..=count {
        // Errors are the point of many cases; the report judges them.
        let _ = connect(&format!("{base}/runCase?case={case}&agent={agent}"));
    }
    let mut conn = ClientBuilder::new(format!("{base}/updateReports?agent={agent}"))
        .unwrap()
        .connect()
        .unwrap();
    while let Ok(Some(_)) = conn.recv() {}
}

fn large_limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_message_size = 64 << 20;
    limits.max_frame_size = 64 << 20;
    limits.compression = true;
    limits
}

fn blocking_echo(url: &str) -> unixws::Result<()> {
    let mut conn = ClientBuilder::new(url)?.limits(large_limits()).connect()?;
    while let Some(message) = conn.recv()? {
        if message.is_text() || message.is_binary() {
            conn.send(message)?;
        }
    }
    Ok(())
}

fn tokio_echo(runtime: &tokio::runtime::Runtime, url: &str) -> unixws::Result<()> {
    runtime.block_on(async {
        let mut conn = ClientBuilder::new(url)?
            .limits(large_limits())
            .connect_async()
            .await?;
        while let Some(message) = conn.recv().await? {
            if message.is_text() || message.is_binary() {
                conn.send(message).await?;
            }
        }
        Ok(())
    })
}

/// The suite's fuzzing server, and a unixws client that echoes each case:
/// over TCP, or over a Unix socket through `unixws proxy --compress`.
fn run_client_agent(agent: &str, via_proxy: bool, echo: &dyn Fn(&str) -> unixws::Result<()>) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let spec = spec(
        dir.path(),
        serde_json::json!({
            "url": format!("ws://127.0.0.1:{port}"),
            "outdir": "./reports",
            "cases": CASES,
            "exclude-cases": [],
            "exclude-agent-cases": {},
        }),
    );
    let mut cmd = wstest();
    cmd.args(["-m", "fuzzingserver", "-u", "0", "-s"])
        .arg(&spec)
        .current_dir(dir.path());
    let _fuzzing_server = Process::spawn(&mut cmd);
    wait_for_tcp(port);
    let tcp = format!("ws://127.0.0.1:{port}");
    if via_proxy {
        let sock = dir.path().join("fuzz.sock");
        let _proxy = unixws(&[
            "proxy",
            "--listen",
            sock.to_str().unwrap(),
            "--to",
            &tcp,
            "--compress",
        ]);
        wait_for_path(&sock);
        run_client_cases(&format!("ws+unix://{}:", sock.display()), agent, echo);
    } else {
        run_client_cases(&tcp, agent, echo);
    }
    check_report(&dir.path().join("reports/index.json"), agent);
}

#[test]
fn over_tcp_the_blocking_client_passes_autobahn() {
    run_client_agent("unixws-blocking-client-tcp", false, &blocking_echo);
}

#[test]
fn over_a_unix_socket_through_the_proxy_the_tokio_client_passes_autobahn() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    run_client_agent("unixws-tokio-client-uds-via-proxy", true, &|url| {
        tokio_echo(&runtime, url)
    });
}
