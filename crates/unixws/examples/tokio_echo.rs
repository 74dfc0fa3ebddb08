//! An echo server on tokio: one task per connection, idle connections cost
//! about 3 KiB, Ctrl-C closes every connection with 1001 and removes the
//! socket file.
//!
//! ```sh
//! cargo run -p unixws --features tokio --example tokio_echo -- /tmp/echo.sock
//! cargo run -- connect ws+unix:///tmp/echo.sock
//! ```

use unixws::Server;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/echo.sock".into());
    let server = Server::builder(path.as_str())?.bind_async()?;
    let shutdown = server.shutdown_handle();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.shutdown();
    });
    eprintln!("echoing on {}", server.local_addr());
    server
        .serve(|mut conn| async move {
            while let Some(message) = conn.recv().await? {
                conn.send(message).await?;
            }
            Ok(())
        })
        .await?;
    Ok(())
}
