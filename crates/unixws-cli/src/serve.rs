//! `unixws serve`: an echo, broadcast or print server on a Unix socket (or TCP),
//! on the tokio server, with file permissions, a peer-credential allow
//! list, limits and systemd socket activation. SIGINT/SIGTERM close every
//! connection with 1001 and remove the socket file.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use unixws::systemd::{from_systemd, notify_ready};
use unixws::tokio::{Connection, Exec, Outbox};
use unixws::{
    AccessPolicy, BindOptions, HandlerResult, Limits, OutboxError, Server, ServerBuilder,
};

use crate::error::{CliError, CliResult};
use crate::observe;
use crate::runtime::{self, resolve_group, resolve_user};
use unixws_bench::units::{parse_duration, parse_mode, parse_size};

const EXAMPLES: &str = "\
Examples:
  unixws serve --echo ./demo.sock
  unixws serve --echo /run/app.sock --mode 660 --group app --allow-gid app
  unixws serve --broadcast @chat --allow-uid 1000
  unixws serve --echo 127.0.0.1:9001
  unixws serve --print ./log.sock > received.txt
  unixws serve --echo /run/app.sock --metrics 127.0.0.1:9100 --health-path /healthz
  unixws serve --echo --systemd        # the socket comes from a .socket unit
  unixws serve ./date.sock --exec sh -c 'while read l; do date; done'";

/// Flags of `unixws serve`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
#[command(group = clap::ArgGroup::new("behaviour").required(true).args(["echo", "broadcast", "print", "exec"]))]
pub struct Args {
    /// Where to listen: a socket path, @abstract, or host:port.
    #[arg(value_name = "ADDR", required_unless_present = "systemd")]
    addr: Option<String>,

    /// Serve the socket systemd passes (LISTEN_FDS); its unit sets the file's
    /// mode and owner (SocketMode=, SocketUser=, SocketGroup=).
    #[arg(long, conflicts_with_all = ["addr", "mode", "owner", "group"])]
    systemd: bool,

    /// Send every message back to its sender.
    #[arg(long)]
    echo: bool,

    /// Relay every message to all other connected clients. A reader whose
    /// queue is full holds the sender back (its next message is not read)
    /// until it takes one; see --slow-consumer-timeout.
    #[arg(long)]
    broadcast: bool,

    /// With --broadcast: a reader that takes nothing from its full queue
    /// for this long is closed with 1013 and the room moves on (default:
    /// 5s, long enough for a pause of a busy or garbage-collecting client,
    /// short enough that one stalled reader holds the room back briefly).
    #[arg(long, requires = "broadcast", value_parser = parse_duration, value_name = "DUR")]
    slow_consumer_timeout: Option<Duration>,

    /// Print every message received to stdout, one line each (a log sink).
    /// A line is out before the ping after its message is answered, so a
    /// client that waits for pongs (`connect --reconnect`) knows it arrived.
    #[arg(long)]
    print: bool,

    /// Run CMD for each connection (like websocketd): messages become stdin
    /// lines, stdout lines become messages; exit 0 closes with 1000, any
    /// other status with 1011. Must come last: everything after it is CMD.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "CMD [ARGS..]")]
    exec: Vec<String>,

    /// With --exec: raw chunks both ways, sent as binary messages.
    #[arg(long, requires = "exec")]
    binary: bool,

    /// With --exec: after the client leaves, the process gets this long to
    /// exit after stdin EOF, then again after SIGTERM, before SIGKILL (default: 2s).
    #[arg(long, requires = "exec", value_parser = parse_duration, value_name = "DUR")]
    exec_grace: Option<Duration>,

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

    /// Allow peers in this group, primary or supplementary (name or number; repeatable).
    #[arg(long = "allow-gid", value_name = "GID")]
    allow_gid: Vec<String>,

    /// Believe the client identity forwarded by a proxy running as this uid
    /// (name or number; `unixws proxy` sends it). From other peers those
    /// headers are dropped.
    #[arg(long = "trust-proxy-uid", value_name = "UID")]
    trust_proxy_uid: Option<String>,

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

    /// Accept permessage-deflate offers: messages of 1 KiB or more go out
    /// compressed. Rarely pays over a Unix socket; see BENCHMARKS.md.
    #[arg(long)]
    compress: bool,

    #[command(flatten)]
    observe: observe::Observe,
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
        limits.compression = self.compress;
        limits
    }

    fn bind_options(&self) -> CliResult<BindOptions> {
        let mut bind = BindOptions::new();
        bind.mode = self.mode;
        bind.owner = self
            .owner
            .as_deref()
            .map(|u| resolve_user(u, "--owner"))
            .transpose()?;
        bind.group = self
            .group
            .as_deref()
            .map(|g| resolve_group(g, "--group"))
            .transpose()?;
        Ok(bind)
    }

    fn policy(&self) -> CliResult<AccessPolicy> {
        runtime::policy(&self.allow_uid, &self.allow_gid)
    }
}

impl Args {
    fn builder(&self) -> CliResult<ServerBuilder> {
        let builder = match &self.addr {
            Some(addr) => Server::builder(addr.as_str())?.bind_options(self.bind_options()?),
            None => ServerBuilder::from_listener(from_systemd()?.ok_or(CliError::Usage(
                "--systemd: no socket was passed (LISTEN_FDS/LISTEN_PID unset or not for this process); start unixws from a .socket unit or give an ADDR"
                    .to_string(),
            ))?),
        };
        let builder = match &self.trust_proxy_uid {
            Some(user) => {
                builder.trust_proxy_uid(runtime::resolve_user(user, "--trust-proxy-uid")?)
            }
            None => builder,
        };
        let builder = self.observe.apply(builder);
        Ok(builder.policy(self.policy()?).limits(self.limits()))
    }
}

/// Runs the server until SIGINT/SIGTERM.
pub fn run(args: Args) -> CliResult {
    runtime::run(serve(args))
}

async fn serve(args: Args) -> CliResult {
    let server = args.builder()?.bind_async()?;
    runtime::stop_on_signals(server.shutdown_handle())?;
    let _metrics = args.observe.start(server.stats())?;

    let mode = if args.broadcast {
        "broadcast".to_string()
    } else if args.print {
        "print".to_string()
    } else if let Some(program) = args.exec.first() {
        format!("exec {program}")
    } else {
        "echo".to_string()
    };
    eprintln!(
        "unixws: serving {} ({mode}); Ctrl-C to stop",
        server.local_addr()
    );
    if let Err(e) = notify_ready() {
        tracing::warn!(error = %e, "could not notify systemd (NOTIFY_SOCKET)");
    }
    let result = if let Some((program, rest)) = args.exec.split_first() {
        let mut exec = Exec::new(program).args(rest).binary(args.binary);
        if let Some(grace) = args.exec_grace {
            exec = exec.grace(grace);
        }
        server.serve(move |conn| exec.clone().serve(conn)).await
    } else if args.broadcast {
        let hub = Arc::new(Hub::new(
            args.slow_consumer_timeout.unwrap_or(SLOW_CONSUMER_TIMEOUT),
        ));
        server
            .serve(move |conn| {
                let hub = hub.clone();
                async move { hub.serve(conn).await }
            })
            .await
    } else if args.print {
        server.serve(print).await
    } else {
        server.serve(echo).await
    };
    Ok(result?)
}

async fn echo(mut conn: Connection) -> HandlerResult {
    // A match, not `recv().await?`: with `?` there the compiler keeps room
    // for the whole result beside the message in this future, which lives
    // as long as the connection (248 bytes per idle connection against 112).
    loop {
        let message = match conn.recv().await {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        // Fed, not sent: a burst of messages is echoed in a few writes.
        conn.feed(message).await?;
    }
}

/// Prints each message as a line (stdout is locked per line, so lines of
/// several clients never mix; a stdout that does not drain holds the
/// server back).
async fn print(mut conn: Connection) -> HandlerResult {
    while let Some(message) = conn.recv().await? {
        runtime::print_message(&message)?;
    }
    Ok(())
}

/// How long a broadcast reader may take nothing from its full queue
/// before it is closed with 1013 (see `--slow-consumer-timeout`).
const SLOW_CONSUMER_TIMEOUT: Duration = Duration::from_secs(5);

/// Every connection's outbox, to relay each message to all the others.
///
/// Fair to uneven readers: a message goes to every reader's queue before
/// the sender's next one is read, waiting for the readers whose queue is
/// full (all at once). So a burst is paced to the slowest reader that is
/// still reading (backpressure on the sender, whose messages wait in its
/// socket), every live reader gets every message in order, and memory is
/// bounded by the queues (`Limits::send_queue` messages each, the payload
/// shared among them). A reader that takes nothing for the slow-consumer
/// timeout is closed with 1013, and the room moves on.
struct Hub {
    next_id: AtomicU64,
    members: Mutex<HashMap<u64, Outbox>>,
    slow_consumer_timeout: Duration,
}

impl Hub {
    fn new(slow_consumer_timeout: Duration) -> Self {
        Self {
            next_id: AtomicU64::new(0),
            members: Mutex::default(),
            slow_consumer_timeout,
        }
    }

    async fn serve(&self, mut conn: Connection) -> HandlerResult {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.members().insert(id, conn.outbox()?);
        let result = self.relay(id, &mut conn).await;
        self.members().remove(&id);
        Ok(result?)
    }

    async fn relay(&self, id: u64, conn: &mut Connection) -> unixws::Result<()> {
        while let Some(message) = conn.recv().await? {
            let readers: Vec<(u64, Outbox)> = self
                .members()
                .iter()
                .filter(|(other, _)| **other != id)
                .map(|(other, outbox)| (*other, outbox.clone()))
                .collect();
            let message = &message;
            let deliveries = readers.iter().map(|(other, outbox)| async move {
                match outbox
                    .send_timeout(message.clone(), self.slow_consumer_timeout)
                    .await
                {
                    Err(OutboxError::Full) => Some(*other),
                    _ => None,
                }
            });
            // The room moves on without the readers found too slow: they
            // are closing, and nobody waits for them again.
            let slow = futures_util::future::join_all(deliveries).await;
            for slow in slow.into_iter().flatten() {
                if self.members().remove(&slow).is_some() {
                    tracing::warn!(
                        connection = slow,
                        timeout = ?self.slow_consumer_timeout,
                        "broadcast reader took nothing for the slow-consumer timeout; closing it with 1013"
                    );
                }
            }
        }
        Ok(())
    }

    fn members(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Outbox>> {
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
