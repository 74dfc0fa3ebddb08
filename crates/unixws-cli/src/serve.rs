//! `unixws serve`: an echo or broadcast server on a Unix socket (or TCP),
//! with file permissions, a peer-credential allow list and limits.
//! SIGINT/SIGTERM close every connection with 1001 and remove the socket file.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use unixws::listen::{resolve_group, resolve_user};
use unixws::{AccessPolicy, BindOptions, Connection, Limits, Outbox, OutboxError, Server};

use crate::units::{parse_duration, parse_mode, parse_size};

const EXAMPLES: &str = "\
Examples:
  unixws serve --echo ./demo.sock
  unixws serve --echo /run/app.sock --mode 660 --group app --allow-gid app
  unixws serve --broadcast @chat --allow-uid 1000
  unixws serve --echo 127.0.0.1:9001";

/// Flags of `unixws serve`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
#[command(group = clap::ArgGroup::new("behaviour").required(true).args(["echo", "broadcast"]))]
pub struct Args {
    /// Where to listen: a socket path, @abstract, or host:port.
    #[arg(value_name = "ADDR")]
    addr: String,

    /// Send every message back to its sender.
    #[arg(long)]
    echo: bool,

    /// Relay every message to all other connected clients.
    #[arg(long)]
    broadcast: bool,

    /// Socket file mode in octal, e.g. 660 (connecting needs write permission).
    #[arg(long, value_parser = parse_mode, value_name = "OCTAL")]
    mode: Option<u32>,

    /// Owner of the socket file (name or uid; needs root).
    #[arg(long, value_name = "USER")]
    owner: Option<String>,

    /// Group of the socket file (name or gid).
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,

    /// Allow only peers with this uid (name or number; repeatable). Others get 403.
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uid: Vec<String>,

    /// Allow peers whose primary group is this gid (name or number; repeatable).
    #[arg(long = "allow-gid", value_name = "GID")]
    allow_gid: Vec<String>,

    /// Most open connections; the next one gets HTTP 503.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections)]
    max_connections: usize,

    /// Largest message (e.g. 64KiB, 16MiB); a larger one closes with 1009.
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    max_message: Option<usize>,

    /// Close connections that send no message for this long (e.g. 5m).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    idle_timeout: Option<Duration>,

    /// Ping silent peers this often to detect dead ones; 0 disables (default: 30s).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    ping_interval: Option<Duration>,

    /// Time a new connection has to send its upgrade request (default: 10s).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    handshake_timeout: Option<Duration>,

    /// On shutdown, how long connections may take to close (default: 10s).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    drain_timeout: Option<Duration>,
}

impl Args {
    fn limits(&self) -> Limits {
        let mut limits = Limits::default();
        limits.max_connections = self.max_connections;
        if let Some(max) = self.max_message {
            limits.max_message_size = max;
            limits.max_frame_size = max;
        }
        limits.idle_timeout = self.idle_timeout;
        if let Some(every) = self.ping_interval {
            limits.ping_interval = (!every.is_zero()).then_some(every);
        }
        if let Some(t) = self.handshake_timeout {
            limits.handshake_timeout = t;
        }
        if let Some(t) = self.drain_timeout {
            limits.drain_timeout = t;
        }
        limits
    }

    fn bind_options(&self) -> Result<BindOptions, unixws::Error> {
        let mut bind = BindOptions::new();
        bind.mode = self.mode;
        bind.owner = self.owner.as_deref().map(resolve_user).transpose()?;
        bind.group = self.group.as_deref().map(resolve_group).transpose()?;
        Ok(bind)
    }

    fn policy(&self) -> Result<AccessPolicy, unixws::Error> {
        let mut policy = AccessPolicy::new();
        for u in &self.allow_uid {
            policy = policy.allow_uid(resolve_user(u)?);
        }
        for g in &self.allow_gid {
            policy = policy.allow_gid(resolve_group(g)?);
        }
        Ok(policy)
    }
}

/// Runs the server until SIGINT/SIGTERM.
pub fn run(args: Args) -> Result<(), String> {
    let server = Server::builder(args.addr.as_str())
        .and_then(|b| {
            Ok(b.bind_options(args.bind_options()?)
                .policy(args.policy()?)
                .limits(args.limits()))
        })
        .and_then(|b| b.bind())
        .map_err(|e| e.to_string())?;

    let shutdown = server.shutdown_handle();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            tracing::info!(signal, "shutting down");
            shutdown.shutdown();
        }
    });

    let mode = if args.broadcast { "broadcast" } else { "echo" };
    eprintln!(
        "unixws: serving {} ({mode}); Ctrl-C to stop",
        server.local_addr()
    );
    let result = if args.broadcast {
        let hub = Arc::new(Hub::default());
        server.serve(move |conn| hub.serve(conn))
    } else {
        server.serve(echo)
    };
    result.map_err(|e| e.to_string())
}

fn echo(conn: &mut Connection) -> unixws::Result<()> {
    while let Some(message) = conn.recv()? {
        conn.send(message)?;
    }
    Ok(())
}

/// Every connection's outbox, to relay each message to all the others.
#[derive(Default)]
struct Hub {
    next_id: AtomicU64,
    members: Mutex<HashMap<u64, Outbox>>,
}

impl Hub {
    fn serve(&self, conn: &mut Connection) -> unixws::Result<()> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = conn.outbox()?;
        self.members().insert(id, outbox);
        let result = self.relay(id, conn);
        self.members().remove(&id);
        result
    }

    fn relay(&self, id: u64, conn: &mut Connection) -> unixws::Result<()> {
        while let Some(message) = conn.recv()? {
            for (other, outbox) in self.members().iter() {
                if *other != id {
                    // A full queue closes that slow reader with 1013; the
                    // others must not wait for it.
                    if let Err(OutboxError::Full) = outbox.try_send(message.clone()) {
                        tracing::warn!(
                            connection = other,
                            "broadcast queue full; closing that reader"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn members(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Outbox>> {
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
