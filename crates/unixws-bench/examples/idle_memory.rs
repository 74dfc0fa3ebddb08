//! Server memory per idle connection: starts a server in its own process,
//! opens N WebSocket connections to it over a Unix socket (each sends one
//! message and gets its echo, then stays idle), and reports the growth of
//! the server's resident set per connection.
//!
//! ```sh
//! cargo build --release && cargo build --release --examples -p unixws-bench
//! ./target/release/examples/idle_memory                 # unixws serve --echo, 10,000 connections
//! ./target/release/examples/idle_memory --server node   # Node `ws` (installed by scripts/test)
//! ./target/release/examples/idle_memory --server python --connections 5000
//! ./target/release/examples/idle_memory --compress      # permessage-deflate, contexts kept
//! ```
//!
//! With `--compress`, every connection negotiates permessage-deflate with
//! context takeover and its message goes compressed both ways, so the
//! server holds a compressor and a decompressor per connection.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use unixws::{ClientBuilder, Limits, Message, RetryPolicy};

/// Connections opened at once.
const BURST: usize = 50;

struct Options {
    server: String,
    connections: usize,
    compress: bool,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        server: "unixws".into(),
        connections: 10_000,
        compress: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--compress" {
            o.compress = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--server" => o.server = value,
            "--connections" => {
                o.connections = value
                    .parse()
                    .map_err(|_| format!("bad --connections `{value}`"))?
            }
            _ => {
                return Err(format!(
                    "unknown flag {flag}; use --server unixws|node|python, --connections N and --compress"
                ))
            }
        }
    }
    Ok(o)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn start_server(
    kind: &str,
    sock: &Path,
    connections: usize,
    compress: bool,
) -> Result<Child, String> {
    let interop = repo_root().join(".interop");
    let mut cmd = match kind {
        "unixws" => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let bin = exe
                .parent()
                .and_then(Path::parent)
                .map(|d| d.join("unixws"))
                .ok_or("no target dir")?;
            let mut c = Command::new(bin);
            c.env(
                "MALLOC_ARENA_MAX",
                std::env::var("ARENAS").unwrap_or("8".into()),
            );
            c.args([
                "serve",
                "--echo",
                "--max-connections",
                &(connections + 16).to_string(),
                "--ping-interval",
                "0",
            ])
            .arg(sock);
            if compress {
                c.arg("--compress");
            }
            c
        }
        "node" => {
            let mut c = Command::new("node");
            c.arg(repo_root().join("tests/peers/node_server.js"))
                .arg(sock)
                .env("NODE_PATH", interop.join("node/node_modules"));
            c
        }
        "python" => {
            let mut c = Command::new(interop.join("venv/bin/python"));
            c.arg(repo_root().join("tests/peers/py_server.py"))
                .arg(sock);
            c
        }
        other => return Err(format!("unknown server `{other}`")),
    };
    cmd.stdout(Stdio::null()).spawn().map_err(|e| {
        format!("cannot start the {kind} server: {e} (scripts/test installs the peers)")
    })
}

fn rss_kib(pid: u32) -> Result<u64, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS".to_string())
}

fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let o = options()?;
    raise_nofile(o.connections as u64 * 2 + 1024);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let sock = dir.path().join("idle.sock");
    let mut server = start_server(&o.server, &sock, o.connections, o.compress)?;
    let started = Instant::now();
    while !sock.exists() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = server.kill();
            return Err("the server did not create its socket".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One connection first, so that lazily created state is in the baseline.
    let mut limits = Limits::default();
    limits.ping_interval = None;
    limits.compression = o.compress;
    limits.compression_threshold = 0;
    let builder = ClientBuilder::new(&sock)
        .map_err(|e| e.to_string())?
        .limits(limits)
        .retry(RetryPolicy::attempts(20));
    let mut warm = builder.connect_async().await.map_err(|e| e.to_string())?;
    warm.send(Message::text("warm"))
        .await
        .map_err(|e| e.to_string())?;
    warm.recv().await.map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(server.id())?;

    let mut conns = Vec::with_capacity(o.connections);
    for chunk in 0..o.connections.div_ceil(BURST) {
        let mut tasks = Vec::new();
        for _ in 0..BURST.min(o.connections - chunk * BURST) {
            let builder = builder.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = builder.connect_async().await?;
                c.send(Message::text("hello")).await?;
                c.recv().await?;
                Ok::<_, unixws::Error>(c)
            }));
        }
        for t in tasks {
            conns.push(
                t.await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?,
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = rss_kib(server.id())?;
    let per = (after.saturating_sub(before)) as f64 / o.connections as f64;
    println!(
        "server={} compress={} connections={} rss_before={}KiB rss_after={}KiB per_connection={:.2}KiB",
        o.server, o.compress, o.connections, before, after, per
    );
    drop(conns);
    drop(warm);
    let _ = server.kill();
    let _ = server.wait();
    Ok(())
}
