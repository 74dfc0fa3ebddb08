//! A client that rides out restarts of its server (feature `tokio`): it
//! subscribes on every connection, sends a numbered tick each second, and
//! says which ticks the server did not confirm (sending those again).
//!
//! ```sh
//! unixws serve --print /tmp/ticks.sock &
//! cargo run -p unixws --features tokio --example reconnecting_client -- ws+unix:///tmp/ticks.sock
//! # restart the server (kill it, start it again): the ticks go on
//! ```

use std::time::Duration;

use unixws::{ClientBuilder, Error, Message, RetryPolicy};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws+unix:///tmp/ticks.sock".into());
    let mut client = ClientBuilder::new(url.as_str())?
        .reconnect(RetryPolicy::forever())
        .on_connect(|info| {
            println!("connected to {}", info.peer);
            vec![Message::text("subscribe ticks")]
        })
        .connect_reconnecting()
        .await?;
    for tick in 0u64.. {
        let message = Message::text(format!("tick {tick}"));
        loop {
            match client.send(message.clone()).await {
                Ok(()) => break,
                Err(Error::NotConfirmed { reason }) => {
                    eprintln!("tick {tick} not confirmed ({reason}); sending it again");
                }
                Err(e) => return Err(e.into()),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}
