//! 1 MiB echo throughput against `unixws serve --echo` in its own process,
//! over a Unix socket, for checking that buffer release on idle connections
//! costs large messages nothing (issue 4 brings the full `unixws bench`).
//!
//! ```sh
//! cargo build --release --examples && ./target/release/examples/large_echo
//! ```

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use unixws::{ClientBuilder, CloseCode, Message, RetryPolicy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let size: usize = std::env::args().nth(1).map_or(Ok(1 << 20), |s| s.parse())?;
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("echo.sock");
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("unixws"))
        .ok_or("no target dir")?;
    let mut server = Command::new(bin)
        .args(["serve", "--echo", "--max-message", "64MiB"])
        .arg(&sock)
        .stderr(Stdio::null())
        .spawn()?;
    let mut conn = ClientBuilder::new(&sock)?
        .retry(RetryPolicy::attempts(50))
        .connect()?;
    let payload = Message::binary(vec![7u8; size]);
    // Warm up, then measure for three seconds.
    for _ in 0..5 {
        conn.send(payload.clone())?;
        conn.recv()?;
    }
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(3) {
        conn.send(payload.clone())?;
        conn.recv()?;
        n += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "size={size} round_trips={n} echo_MB_per_s={:.0}",
        (n as f64 * size as f64) / secs / 1e6
    );
    conn.close(CloseCode::Normal, "")?;
    let _ = server.kill();
    let _ = server.wait();
    Ok(())
}
