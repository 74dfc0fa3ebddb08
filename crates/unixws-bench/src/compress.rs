//! `unixws bench --compress`: what permessage-deflate costs and saves.
//!
//! For each transport, `unixws serve --echo` runs twice, with and without
//! `--compress`, each with `--metrics` on a socket of its own. The unixws
//! blocking client (compressing when the server does) sends messages of
//! JSON-like text and of random bytes, one at a time, each answered by
//! its echo, for the measurement's duration. A row gives messages per
//! second and the bytes each message took on the wire (frame headers
//! included, averaged over both ways), read from the server's own
//! `unixws_bytes_total` counters before and after.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use unixws::{ClientBuilder, CloseCode, Limits, Message};

use crate::target::Transport;

/// The message sizes measured.
const SIZES: [usize; 2] = [4 << 10, 64 << 10];

/// Distinct messages sent in turn: more than deflate's 32 KiB window
/// holds, so that context takeover cannot turn a repeated message into a
/// back-reference (which would flatter it).
const POOL: u64 = 16;

/// JSON-like text: records that repeat their keys, as API traffic does;
/// `seed` makes each message's values its own.
fn json_like(size: usize, seed: u64) -> Vec<u8> {
    let mut out = String::from("[");
    let mut i = seed * 100_000;
    while out.len() < size {
        out.push_str(&format!(
            r#"{{"id":{i},"user":"user-{}","active":{},"score":{},"tags":["alpha","beta"]}},"#,
            i % 97,
            i % 3 == 0,
            (i * 7919) % 1000
        ));
        i += 1;
    }
    out.truncate(size);
    out.into_bytes()
}

fn random(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..size).map(|_| rng.u8(..)).collect()
}

/// One server process and where its metrics are.
struct Server {
    child: Child,
    metrics: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(
    transport: Transport,
    compress: bool,
    dir: &Path,
    n: usize,
) -> Result<(Server, String), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the unixws binary: {e}"))?;
    let addr = match transport {
        Transport::Uds => dir.join(format!("compress-{n}.sock")).display().to_string(),
        Transport::Tcp => format!(
            "127.0.0.1:{}",
            unixws_testkit::try_free_port().map_err(|e| format!("no free port: {e}"))?
        ),
    };
    let metrics = dir.join(format!("compress-metrics-{n}.sock"));
    let mut cmd = Command::new(exe);
    cmd.args([
        "serve",
        "--echo",
        "--max-message",
        "64MiB",
        "--ping-interval",
        "0",
        "--metrics",
    ])
    .arg(&metrics)
    .arg(&addr)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if compress {
        cmd.arg("--compress");
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start unixws serve: {e}"))?;
    let server = Server { child, metrics };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.metrics.exists() {
        if Instant::now() > deadline {
            return Err(format!("unixws serve --echo on {addr} did not start"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let url = match transport {
        Transport::Uds => format!("ws+unix://{addr}"),
        Transport::Tcp => format!("ws://{addr}/"),
    };
    Ok((server, url))
}

/// The server's bytes in and out so far, from its metrics endpoint.
fn wire_bytes(metrics: &Path) -> Result<u64, String> {
    let mut s = UnixStream::connect(metrics).map_err(|e| format!("metrics: {e}"))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .map_err(|e| format!("metrics: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("metrics: {e}"))?;
    let total = text
        .lines()
        .filter(|l| l.starts_with("unixws_bytes_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    Ok(total)
}

/// Rounds of the `payloads` in turn for `duration`: (messages, seconds).
fn rounds(
    url: &str,
    compress: bool,
    payloads: &[Message],
    duration: Duration,
) -> Result<(u64, f64), String> {
    let limits = Limits::default()
        .max_message_size(64 << 20)
        .compression(compress)
        .compression_threshold(0);
    let mut conn = ClientBuilder::new(url)
        .and_then(|b| b.limits(limits).connect())
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < duration {
        let message = &payloads[n as usize % payloads.len()];
        conn.send(message.clone()).map_err(|e| e.to_string())?;
        match conn.recv().map_err(|e| e.to_string())? {
            Some(echo) if echo.len() == message.len() => n += 1,
            other => return Err(format!("unexpected echo: {other:?}")),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = conn.close(CloseCode::Normal, "");
    Ok((n, secs))
}

/// Measures and returns the table.
pub fn run(transports: &[Transport], duration: Duration, dir: &Path) -> Result<String, String> {
    let mut table = String::from(
        "\ncompression (request/response, unixws blocking client and unixws serve --echo [--compress]; wire bytes per message from the server's counters, each way)\n",
    );
    table.push_str(&format!(
        "{:<8} {:>8} {:<4} {:<12} {:>10} {:>14} {:>8}\n",
        "content", "size", "via", "compression", "msgs/s", "wire B/msg", "×size"
    ));
    let mut n = 0;
    for &transport in transports {
        for compress in [false, true] {
            n += 1;
            let (server, url) = start(transport, compress, dir, n)?;
            for (content, make) in [
                ("json", json_like as fn(usize, u64) -> Vec<u8>),
                ("random", random),
            ] {
                for size in SIZES {
                    let payloads: Vec<Message> = (0..POOL)
                        .map(|seed| Message::binary(make(size, seed)))
                        .collect();
                    let before = wire_bytes(&server.metrics)?;
                    let (messages, secs) = rounds(&url, compress, &payloads, duration)?;
                    // The counters move once the connection's last read
                    // and write calls are done: its close, a moment later.
                    std::thread::sleep(Duration::from_millis(50));
                    let after = wire_bytes(&server.metrics)?;
                    let per_message = (after - before) as f64 / (2 * messages.max(1)) as f64;
                    table.push_str(&format!(
                        "{:<8} {:>8} {:<4} {:<12} {:>10.0} {:>14.0} {:>8.2}\n",
                        content,
                        crate::report::size(size),
                        transport.name(),
                        if compress { "deflate" } else { "off" },
                        messages as f64 / secs,
                        per_message,
                        per_message / size as f64
                    ));
                }
            }
            drop(server);
        }
    }
    Ok(table)
}
