//! A chat room that is fair to uneven readers (feature `tokio`): each
//! message goes to every other member's outbox with `send_timeout`, so the
//! sender waits for readers that are behind but reading (backpressure) and
//! a reader that takes nothing for 5 s is closed with 1013. `unixws serve
//! --broadcast` does the same, waiting for the readers all at once.
//!
//! ```sh
//! cargo run -p unixws --features tokio --example broadcast_room -- /tmp/room.sock
//! unixws connect ws+unix:///tmp/room.sock     # in two or more terminals
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use unixws::tokio::Outbox;
use unixws::{OutboxError, Server};

type Members = Arc<Mutex<HashMap<u64, Outbox>>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/room.sock".into());
    let server = Server::builder(path.as_str())?.bind_async()?;
    eprintln!("room on {}", server.local_addr());
    let members: Members = Arc::default();
    let next_id = Arc::new(std::sync::atomic::AtomicU64::new(0));
    server
        .serve(move |mut conn| {
            let (members, next_id) = (members.clone(), next_id.clone());
            async move {
                let id = next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                members.lock().expect("lock").insert(id, conn.outbox()?);
                while let Some(message) = conn.recv().await? {
                    let others: Vec<(u64, Outbox)> = members
                        .lock()
                        .expect("lock")
                        .iter()
                        .filter(|(other, _)| **other != id)
                        .map(|(other, outbox)| (*other, outbox.clone()))
                        .collect();
                    for (other, outbox) in others {
                        let sent = outbox.send_timeout(message.clone(), Duration::from_secs(5));
                        if let Err(OutboxError::Full) = sent.await {
                            members.lock().expect("lock").remove(&other); // closed with 1013
                        }
                    }
                }
                members.lock().expect("lock").remove(&id);
                Ok(())
            }
        })
        .await?;
    Ok(())
}
