//! A server that admits only its own user and tells each connection who it
//! is: the kernel-verified uid, gid and pid of the peer process.
//!
//! ```sh
//! cargo run -p unixws --example peer_policy -- @whoami
//! echo hi | cargo run -- connect @whoami
//! ```

use unixws::{AccessPolicy, Message, Server};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "@whoami".into());
    let me = current_uid();
    // Abstract sockets have no file permissions: the policy is the only gate.
    let policy = AccessPolicy::new()
        .allow_uid(me)
        .require(|peer| peer.pid > 1);
    let server = Server::builder(addr.as_str())?.policy(policy).bind()?;
    eprintln!("serving {} to uid {me} only", server.local_addr());
    server.serve(|conn| {
        let who = conn.info().peer.to_string();
        while conn.recv()?.is_some() {
            conn.send(Message::text(format!("you are {who}")))?;
        }
        Ok(())
    })?;
    Ok(())
}

/// The owner of /proc/self is this process's effective uid.
fn current_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(0, |m| std::os::unix::fs::MetadataExt::uid(&m))
}
