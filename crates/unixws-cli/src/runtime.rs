//! What the subcommands share: a tokio runtime, graceful shutdown on
//! SIGINT/SIGTERM, the peer allow lists, and messages printed as lines.

use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};
use unixws::{AccessPolicy, ShutdownHandle};

use crate::error::{CliError, CliResult};

/// Runs `main` on a multi-threaded tokio runtime.
pub fn run(main: impl Future<Output = CliResult>) -> CliResult {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("cannot start the tokio runtime: {e}")))?
        .block_on(main)
}

/// Shuts the server down on the first SIGINT or SIGTERM (call inside the runtime).
pub fn stop_on_signals(shutdown: ShutdownHandle) -> CliResult {
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

/// Writes a text or binary message to stdout as one line, at once (pings
/// and pongs print nothing).
pub fn print_message(message: &unixws::Message) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match message {
        unixws::Message::Text(text) => out.write_all(text.as_bytes())?,
        unixws::Message::Binary(bytes) => out.write_all(bytes)?,
        _ => return Ok(()),
    }
    out.write_all(b"\n")?;
    out.flush()
}

/// The policy of `--allow-uid` and `--allow-gid` (names or numbers).
pub fn policy(uids: &[String], gids: &[String]) -> CliResult<AccessPolicy> {
    let mut policy = AccessPolicy::new();
    for u in uids {
        policy = policy.allow_uid(resolve_user(u, "--allow-uid")?);
    }
    for g in gids {
        policy = policy.allow_gid(resolve_group(g, "--allow-gid")?);
    }
    Ok(policy)
}

/// The uid of a user name or numeric id, as given to `flag`.
pub fn resolve_user(name: &str, flag: &str) -> CliResult<u32> {
    if let Ok(uid) = name.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(CliError::Usage(format!(
            "{flag}: unknown user `{name}`: no such entry in the user database; give a user name or a numeric uid"
        ))),
    }
}

/// The gid of a group name or numeric id, as given to `flag`.
pub fn resolve_group(name: &str, flag: &str) -> CliResult<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(CliError::Usage(format!(
            "{flag}: unknown group `{name}`: no such entry in the group database; give a group name or a numeric gid"
        ))),
    }
}
