//! A client that waits for its server: retries with exponential backoff and
//! jitter while the socket is missing or refused, never on 403 or a
//! permission error.
//!
//! ```sh
//! cargo run -p unixws --example client_with_retry -- 'ws+unix:///tmp/echo.sock:/chat'
//! ```

use std::time::Duration;

use unixws::{ClientBuilder, CloseCode, Message, RetryPolicy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws+unix:///tmp/echo.sock".into());
    let mut conn = ClientBuilder::new(url.as_str())?
        .connect_timeout(Duration::from_secs(2))
        .read_timeout(Duration::from_secs(5))
        .header("Authorization", "Bearer example")
        .retry(RetryPolicy::new(
            10,
            Duration::from_millis(100),
            Duration::from_secs(2),
        ))
        .connect()?;
    conn.send(Message::text("hello"))?;
    if let Some(reply) = conn.recv()? {
        println!("{reply}");
    }
    conn.close(CloseCode::Normal, "done")?;
    Ok(())
}
