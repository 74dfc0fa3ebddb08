//! Autobahn|Testsuite, the field's WebSocket conformance suite (sections
//! 1–7, 9, 10, and 12–13: permessage-deflate), against:
//!
//! - the server: `unixws serve --echo` on a Unix socket, which the suite
//!   (TCP only) reaches through `unixws proxy`, and the same server on TCP;
//! - the clients: the blocking client over TCP, and the tokio client over a
//!   Unix socket through `unixws proxy`.
//!
//! Every agent negotiates compression: the servers and the blocking client
//! themselves, and `unixws proxy --compress` on its TCP side for the two
//! that go through it. Those two run the compression sections without
//! their largest cases (x.y.10 to x.y.18: 1,000 messages of 16 KiB to
//! 128 KiB each; and x.y.1, which the pattern syntax cannot keep apart),
//! which the direct agents run: the suite's own Python 2 deflate makes
//! each such case take seconds, and all of them on four agents would take
//! about half an hour on 2 cores.
//!
//! Any case whose behaviour is not OK or INFORMATIONAL fails the test.
//! `wstest` is installed by `scripts/install-autobahn` (run by
//! `scripts/test`). Each run writes a summary to
//! `target/autobahn/<servers|clients>.txt`; the latest is committed in
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
/// Section 9 sends messages of up to 16 MiB.
const MAX_MESSAGE: &str = "64MiB";
/// Sections 12 and 13 take about 7 minutes per agent on 2 cores (the
/// rest about a minute).
const RUN_LIMIT: Duration = Duration::from_secs(1500);
/// What the agents through the proxy leave out (see the module doc).
/// In the suite's own pattern syntax (`*` only): x.y.1 and x.y.10 to
/// x.y.18.
const PROXIED_SKIP: [&str; 2] = ["12.*.1*", "13.*.1*"];
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

/// Reads the suite's `index.json`, writes a summary, and fails on any case
/// that is not OK or INFORMATIONAL (for the case itself or its closing).
fn check_report(index: &Path, name: &str, agents: &[&str]) {
    let text = std::fs::read_to_string(index)
        .unwrap_or_else(|e| panic!("no Autobahn report at {}: {e}", index.display()));
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut summary = String::new();
    let mut bad = Vec::new();
    for agent in agents {
        let cases = report[agent]
            .as_object()
            .unwrap_or_else(|| panic!("agent {agent} is missing from {}", index.display()));
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut lines = Vec::new();
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
        summary.push_str(&format!("# {agent}: {} cases, {counts:?}\n", cases.len()));
        for (_, line) in lines {
            summary.push_str(&line);
            summary.push('\n');
        }
        assert!(
            cases.len() >= 290,
            "only {} cases ran for {agent}",
            cases.len()
        );
        for section in ["12.", "13."] {
            let ran = cases.keys().filter(|c| c.starts_with(section)).count();
            if ran < 40 {
                bad.push(format!(
                    "{agent}: only {ran} cases of section {section}* ran"
                ));
            }
        }
    }
    let out = repo_root().join("target/autobahn");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(format!("{name}.txt")), &summary).unwrap();
    assert!(bad.is_empty(), "Autobahn cases not OK:\n{}", bad.join("\n"));
}

/// "9.10.2" sorts after "9.2.1".
fn sort_key(case: &str) -> Vec<u32> {
    case.split('.').filter_map(|p| p.parse().ok()).collect()
}

#[test]
fn the_server_passes_autobahn_over_a_unix_socket_and_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("echo.sock");
    let server_args = [
        "--echo",
        "--max-message",
        MAX_MESSAGE,
        "--ping-interval",
        "0",
        "--compress",
    ];
    let mut args = vec!["serve"];
    args.extend(server_args);
    let _uds_server = unixws(&[&args[..], &[sock.to_str().unwrap()]].concat());
    wait_for_path(&sock);
    let (proxy_port, tcp_port) = (free_port(), free_port());
    let proxy_listen = format!("127.0.0.1:{proxy_port}");
    let to = format!("ws+unix://{}", sock.display());
    let _proxy = unixws(&[
        "proxy",
        "--listen",
        &proxy_listen,
        "--to",
        &to,
        "--compress",
    ]);
    let tcp_listen = format!("127.0.0.1:{tcp_port}");
    let _tcp_server = unixws(&[&args[..], &[tcp_listen.as_str()]].concat());
    wait_for_tcp(proxy_port);
    wait_for_tcp(tcp_port);

    let agents = ["unixws-serve-uds-via-proxy", "unixws-serve-tcp"];
    let spec = spec(
        dir.path(),
        serde_json::json!({
            "outdir": "./reports/servers",
            "servers": [
                {"agent": agents[0], "url": format!("ws://{proxy_listen}")},
                {"agent": agents[1], "url": format!("ws://{tcp_listen}")},
            ],
            "cases": CASES,
            "exclude-cases": [],
            "exclude-agent-cases": { agents[0]: PROXIED_SKIP },
        }),
    );
    let mut cmd = wstest();
    cmd.args(["-m", "fuzzingclient", "-s"])
        .arg(&spec)
        .current_dir(dir.path());
    let (ok, output) = Process::spawn(&mut cmd).finish(RUN_LIMIT);
    assert!(ok, "wstest failed:\n{}", output.join("\n"));
    check_report(
        &dir.path().join("reports/servers/index.json"),
        "servers",
        &agents,
    );
}

/// One agent's pass: every case (but those matching `skip`) echoed back,
/// then the report updated.
fn run_client_cases(
    base: &str,
    agent: &str,
    skip: &[&str],
    connect: &dyn Fn(&str) -> unixws::Result<()>,
) {
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
        if !skip.is_empty() {
            let id = case_id(base, case);
            if skip.iter().any(|pattern| matches_case(pattern, &id)) {
                continue;
            }
        }
        // Errors are the point of many cases; the report judges them.
        let _ = connect(&format!("{base}/runCase?case={case}&agent={agent}"));
    }
    let mut conn = ClientBuilder::new(format!("{base}/updateReports?agent={agent}"))
        .unwrap()
        .connect()
        .unwrap();
    while let Ok(Some(_)) = conn.recv() {}
}

/// The id ("12.1.10") of the fuzzing server's case number `case`.
fn case_id(base: &str, case: u32) -> String {
    let mut conn = ClientBuilder::new(format!("{base}/getCaseInfo?case={case}"))
        .unwrap()
        .connect()
        .unwrap();
    match conn.recv().unwrap() {
        Some(Message::Text(t)) => {
            let info: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            info["id"].as_str().unwrap().to_string()
        }
        other => panic!("getCaseInfo answered {other:?}"),
    }
}

/// The suite's case patterns: `*` stands for any run of characters.
fn matches_case(pattern: &str, id: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), id.as_bytes())
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

#[test]
fn the_clients_pass_autobahn_over_tcp_and_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let agents = [
        "unixws-blocking-client-tcp",
        "unixws-tokio-client-uds-via-proxy",
    ];
    let spec = spec(
        dir.path(),
        serde_json::json!({
            "url": format!("ws://127.0.0.1:{port}"),
            "outdir": "./reports/clients",
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
    let sock = dir.path().join("fuzz.sock");
    let to = format!("ws://127.0.0.1:{port}");
    let _proxy = unixws(&[
        "proxy",
        "--listen",
        sock.to_str().unwrap(),
        "--to",
        &to,
        "--compress",
    ]);
    wait_for_path(&sock);

    run_client_cases(
        &format!("ws://127.0.0.1:{port}"),
        agents[0],
        &[],
        &blocking_echo,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let uds = format!("ws+unix://{}:", sock.display());
    run_client_cases(&uds, agents[1], &PROXIED_SKIP, &|url| {
        tokio_echo(&runtime, url)
    });
    check_report(
        &dir.path().join("reports/clients/index.json"),
        "clients",
        &agents,
    );
}
