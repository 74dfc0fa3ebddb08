//! An echo server on a Unix socket, with a socket mode and Ctrl-C handling
//! left to the defaults.
//!
//! ```sh
//! cargo run -p unixws --example echo_server -- /tmp/echo.sock
//! cargo run -- connect ws+unix:///tmp/echo.sock
//! ```

use unixws::{BindOptions, Server};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/echo.sock".into());
    let server = Server::builder(path.as_str())?
        .bind_options(BindOptions::new().mode(0o660))
        .bind()?;
    eprintln!("echoing on {}", server.local_addr());
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
