//! What the long-running subcommands (`serve`, `proxy`) share: a tokio
//! runtime, graceful shutdown on SIGINT/SIGTERM, and the peer allow lists.

use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};
use unixws::listen::{resolve_group, resolve_user};
use unixws::{AccessPolicy, ShutdownHandle};

/// Runs `main` on a multi-threaded tokio runtime.
pub fn run(main: impl Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?
        .block_on(main)
}

/// Shuts the server down on the first SIGINT or SIGTERM (call inside the runtime).
pub fn stop_on_signals(shutdown: ShutdownHandle) -> Result<(), String> {
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        }
        shutdown.shutdown();
    });
    Ok(())
}

/// The policy of `--allow-uid` and `--allow-gid` (names or numbers).
pub fn policy(uids: &[String], gids: &[String]) -> Result<AccessPolicy, unixws::Error> {
    let mut policy = AccessPolicy::new();
    for u in uids {
        policy = policy.allow_uid(resolve_user(u)?);
    }
    for g in gids {
        policy = policy.allow_gid(resolve_group(g)?);
    }
    Ok(policy)
}
