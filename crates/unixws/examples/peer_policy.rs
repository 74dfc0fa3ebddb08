//! A server that admits only its own user and tells each connection who it
//! is: the kernel-verified uid, gid and pid of the peer process.
//!
//! ```sh
//! cargo run -p unixws --example peer_policy -- @whoami
//! echo hi | cargo run -- connect @whoami
//! ```
//!
//! `main` prints a failure with `{}` (Display), the one-line message that
//! says what to do; returning the error from `main` would print its
//! `Debug` form instead.

use std::process::ExitCode;

use unixws::{AccessPolicy, Message, Server};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer_policy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> unixws::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "@whoami".into());
    // Abstract sockets have no file permissions: the policy is the only gate.
    let policy = AccessPolicy::new()
        .allow_current_user()
        .require(|peer| peer.pid > 1);
    let server = Server::builder(addr.as_str())?.policy(policy).bind()?;
    eprintln!("serving {} to this user only", server.local_addr());
    server.serve(|conn| {
        let who = conn.info().peer.to_string();
        while conn.recv()?.is_some() {
            conn.send(Message::text(format!("you are {who}")))?;
        }
        Ok(())
    })
}
