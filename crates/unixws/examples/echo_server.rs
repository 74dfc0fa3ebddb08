//! An echo server on a Unix socket, with a socket mode, a health check for
//! probes, and its counters printed every ten seconds (what
//! `unixws serve --metrics` exports). Ctrl-C handling is left to the
//! defaults.
//!
//! ```sh
//! cargo run -p unixws --example echo_server -- /tmp/echo.sock
//! cargo run -- connect ws+unix:///tmp/echo.sock
//! curl --unix-socket /tmp/echo.sock http://localhost/healthz
//! ```

use std::time::Duration;

use unixws::{BindOptions, Server};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/echo.sock".into());
    let server = Server::builder(path.as_str())?
        .bind_options(BindOptions::new().mode(0o660))
        .health_path("/healthz")
        .bind()?;
    eprintln!("echoing on {}", server.local_addr());
    let stats = server.stats();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(10));
        let s = stats.snapshot();
        let latency = stats.handshake_latency();
        eprintln!(
            "open {} upgraded {} messages in/out {}/{} closes {:?} handshakes {} (total {:?})",
            s.open,
            s.upgraded,
            s.messages_in,
            s.messages_out,
            stats.closes_by_code(),
            latency.count,
            latency.sum
        );
    });
    server.serve(|conn| {
        eprintln!(
            "connection from {} on {}",
            conn.info().peer,
            conn.info().path
        );
        while let Some(message) = conn.recv()? {
            conn.send(message)?;
        }
        Ok(())
    })?;
    Ok(())
}
