//! A service started by systemd socket activation: serves the socket systemd
//! passes as descriptor 3 (its mode and owner come from the .socket unit)
//! and reports READY=1. See contrib/systemd/ for the unit files.
//!
//! ```sh
//! systemd-socket-activate -l /tmp/activated.sock \
//!     ./target/debug/examples/systemd_activation
//! ```

use unixws::systemd::{from_systemd, notify_ready};
use unixws::ServerBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = from_systemd()?.ok_or("no socket from systemd: start me from a .socket unit")?;
    let server = ServerBuilder::from_listener(listener).bind_async()?;
    notify_ready()?;
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
