//! `unixws bench`: measures WebSocket over Unix sockets against raw sockets
//! and TCP, and against other servers, on this machine, in one run.
//!
//! A library of its own (quinn keeps `bench` and `perf` apart the same
//! way), so that the `unixws` binary stays what serving, connecting and
//! proxying need: its `bench` subcommand parses [`Args`] and calls [`run`].
//! Every server runs in its own process (the `unixws` binary that called
//! [`run`], re-run as `serve --echo`, `proxy` or the hidden `bench-echo`,
//! or a peer); the load comes from this process. See `load` for why the
//! load client does not hide the servers' costs.
//!
//! Layout: `target` starts the servers and opens connections; `load` is
//! the pre-masked tokio load client and the thread-per-connection one;
//! `clients` drives unixws's own clients; `raw_echo` is the byte-echo
//! baseline server; `report` prints the table, the JSON and the plots;
//! [`units`] parses sizes and durations for these flags and the CLI's.

mod clients;
mod compress;
mod load;
mod raw_echo;
mod report;
mod target;
pub mod units;

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args as ClapArgs;
use indicatif::{ProgressBar, ProgressStyle};

use clients::LibraryClient;
use load::Measured;
use target::{Locations, ServerKind, Transport, RUST_PEERS};
use units::{parse_duration, parse_size};

pub use raw_echo::run as run_raw_echo;

const EXAMPLES: &str = "\
Examples:
  unixws bench                               # about a minute: the main table
  unixws bench --quick --json out.json --svg out.svg
  unixws bench --peers --matrix --repeat 3   # Python, Node and Rust servers too
  unixws bench --proxy --matrix --transports tcp  # unixws proxy and nginx in front of a UDS backend
  unixws bench --transports uds --sizes 1MiB --connections 1,100";

/// Options of `unixws bench`.
#[derive(Debug, ClapArgs)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Tiny durations: the whole run in under 10 seconds
    #[arg(long)]
    quick: bool,
    /// Time per measurement (default: 1s, or 150ms with --quick)
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    duration: Option<Duration>,
    /// Transports to measure, comma-separated: uds, tcp
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "uds,tcp",
        value_name = "LIST"
    )]
    transports: Vec<String>,
    /// Message sizes for the throughput runs (one connection, streaming)
    #[arg(long, value_delimiter = ',', default_value = "4KiB,64KiB,1MiB", value_parser = parse_size, value_name = "LIST")]
    sizes: Vec<usize>,
    /// Connection counts for the fan-in runs (64-byte ping-pong on each)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,100,1000",
        value_name = "LIST"
    )]
    connections: Vec<usize>,
    /// Also measure Python `websockets`, Node `ws` and the Rust servers of
    /// bench/peers (tungstenite, tokio-tungstenite, fastwebsockets, tokio-websockets)
    #[arg(long)]
    peers: bool,
    /// Only these servers (comma-separated): raw, unixws, tungstenite,
    /// tokio-tungstenite, fastwebsockets, tokio-websockets, node, python,
    /// unixws-proxy, nginx-proxy
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    servers: Vec<String>,
    /// Also measure proxies on TCP in front of `unixws serve` on a Unix
    /// socket: `unixws proxy` and nginx (one worker)
    #[arg(long)]
    proxy: bool,
    /// Also run uWebSockets' load_test cases (100×20 B, 10×1 KiB, 200×16 KiB, 500×16 KiB)
    #[arg(long)]
    matrix: bool,
    /// Leave out the rows of the unixws blocking and tokio clients
    #[arg(long)]
    no_clients: bool,
    /// Also measure permessage-deflate: messages/s and bytes on the wire
    /// for JSON-like text and random bytes, with and without compression
    #[arg(long)]
    compress: bool,
    /// Run everything N times, servers interleaved, and report the median
    #[arg(long, default_value_t = 1, value_name = "N")]
    repeat: usize,
    /// Write every figure and the machine description as JSON
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
    /// Write plots (throughput by message size, latency percentiles) as SVG
    #[arg(long, value_name = "FILE")]
    svg: Option<std::path::PathBuf>,
}

/// Who sends the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Client {
    /// Pre-masked frames, headers-only reading (see `load`).
    Load,
    /// The load client pinned to the server's CPU (64 B latency).
    SameCpu,
    /// The load client pinned to another CPU than the server's.
    CrossCpu,
    /// One OS thread per connection, blocking I/O (see `load::ping_pong_threads`).
    Threads,
    Blocking,
    Async,
}

impl Client {
    pub fn name(self) -> &'static str {
        match self {
            Client::Load => "load",
            Client::SameCpu => "load, same CPU",
            Client::CrossCpu => "load, cross CPU",
            Client::Threads => "threads",
            Client::Blocking => "unixws blocking",
            Client::Async => "unixws tokio",
        }
    }
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    /// `conns` connections, one message of `size` in flight on each.
    PingPong { conns: usize, size: usize },
    /// One connection, messages of `size` back to back.
    Stream { size: usize },
    /// A uWebSockets load_test case (a ping-pong, reported in its own section).
    Matrix { conns: usize, size: usize },
}

impl Workload {
    pub fn label(self) -> String {
        match self {
            Workload::PingPong { conns: 1, size } => format!("{} ping-pong", report::size(size)),
            Workload::PingPong { conns, size } => format!("{} × {conns} conns", report::size(size)),
            Workload::Stream { size } => format!("{} stream", report::size(size)),
            Workload::Matrix { conns, size } => {
                format!("load_test {conns} × {}", report::size(size))
            }
        }
    }

    /// Fan-in and load_test cases: the thread-per-connection client runs these.
    fn has_many_connections(self) -> bool {
        matches!(self, Workload::Matrix { .. })
            || matches!(self, Workload::PingPong { conns, .. } if conns > 1)
    }

    pub fn section(self) -> &'static str {
        match self {
            Workload::PingPong { conns: 1, .. } => "latency",
            Workload::PingPong { .. } => "fan-in",
            Workload::Stream { .. } => "throughput",
            Workload::Matrix { .. } => "load_test matrix",
        }
    }
}

/// One row of results: a server on a transport, a client, a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub server: ServerOrder,
    pub transport: TransportOrder,
    pub client: Client,
    pub workload: Workload,
}

/// Sort helpers: rows follow the order servers are listed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerOrder(pub usize);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransportOrder(pub usize);

/// The servers of this run, in report order.
fn servers(args: &Args) -> Result<Vec<ServerKind>, String> {
    let mut all = vec![ServerKind::Raw, ServerKind::Unixws];
    all.extend(RUST_PEERS.iter().map(|p| ServerKind::Peer(p)));
    all.push(ServerKind::Node);
    all.push(ServerKind::Python);
    let proxies = [ServerKind::UnixwsProxy, ServerKind::NginxProxy];
    if args.servers.is_empty() {
        let defaults = if args.peers { all.len() } else { 2 };
        let mut chosen: Vec<ServerKind> = all.into_iter().take(defaults).collect();
        if args.proxy {
            chosen.extend(proxies);
        }
        return Ok(chosen);
    }
    all.extend(proxies);
    let short = |s: ServerKind| match s {
        ServerKind::Raw => "raw".to_string(),
        ServerKind::Node => "node".to_string(),
        ServerKind::Python => "python".to_string(),
        other => other.name().replace(' ', "-"),
    };
    for wanted in &args.servers {
        if !all.iter().any(|s| short(*s) == wanted.trim()) {
            let names: Vec<String> = all.iter().map(|s| short(*s)).collect();
            return Err(format!(
                "unknown server `{wanted}` in --servers: use {}",
                names.join(", ")
            ));
        }
    }
    Ok(all
        .into_iter()
        .filter(|s| args.servers.iter().any(|w| w.trim() == short(*s)))
        .collect())
}

fn transports(args: &Args) -> Result<Vec<Transport>, String> {
    args.transports
        .iter()
        .map(|t| match t.trim().to_ascii_lowercase().as_str() {
            "uds" | "unix" => Ok(Transport::Uds),
            "tcp" => Ok(Transport::Tcp),
            other => Err(format!(
                "unknown transport `{other}` in --transports: use uds, tcp or uds,tcp"
            )),
        })
        .collect()
}

/// The workloads each server gets with the load client.
fn workloads(args: &Args) -> Vec<Workload> {
    let mut w = vec![Workload::PingPong { conns: 1, size: 64 }];
    w.extend(args.sizes.iter().map(|&size| Workload::Stream { size }));
    w.extend(
        args.connections
            .iter()
            .filter(|&&c| c > 1)
            .map(|&conns| Workload::PingPong { conns, size: 64 }),
    );
    if args.matrix {
        for (conns, size) in [(100, 20), (10, 1024), (200, 16 << 10), (500, 16 << 10)] {
            w.push(Workload::Matrix { conns, size });
        }
    }
    w
}

/// The unixws clients' own rows: against the unixws server only.
fn client_workloads() -> Vec<Workload> {
    vec![
        Workload::PingPong { conns: 1, size: 64 },
        Workload::PingPong {
            conns: 1,
            size: 1 << 20,
        },
    ]
}

/// Results of one run: every repetition of every row.
pub type Results = BTreeMap<Key, Vec<Measured>>;

pub fn run(args: Args) -> Result<(), String> {
    if args.repeat == 0 {
        return Err("--repeat must be at least 1".into());
    }
    if args.connections.contains(&0) {
        return Err("--connections counts must be at least 1".into());
    }
    let duration = args.duration.unwrap_or(if args.quick {
        Duration::from_millis(150)
    } else {
        Duration::from_secs(1)
    });
    let transports = transports(&args)?;
    let servers = servers(&args)?;
    let workloads = workloads(&args);
    raise_open_file_limit(&args);
    let locations = Locations::find();
    let dir = tempfile::Builder::new()
        .prefix("unixws-bench")
        .tempdir()
        .map_err(|e| format!("cannot create a temp dir: {e}"))?;

    let mut plan = Vec::new();
    for (si, &server) in servers.iter().enumerate() {
        for (ti, &transport) in transports.iter().enumerate() {
            if !server.transports().contains(&transport) {
                continue;
            }
            let mut rows: Vec<(Client, Workload)> =
                workloads.iter().map(|&w| (Client::Load, w)).collect();
            let latency = Workload::PingPong { conns: 1, size: 64 };
            rows.push((Client::SameCpu, latency));
            rows.push((Client::CrossCpu, latency));
            rows.extend(
                workloads
                    .iter()
                    .filter(|w| w.has_many_connections())
                    .map(|&w| (Client::Threads, w)),
            );
            if server == ServerKind::Unixws && !args.no_clients {
                for client in [Client::Blocking, Client::Async] {
                    rows.extend(client_workloads().into_iter().map(|w| (client, w)));
                }
            }
            plan.push((si, server, ti, transport, rows));
        }
    }
    let total: usize = plan.iter().map(|p| p.4.len()).sum::<usize>() * args.repeat;
    let progress = ProgressBar::new(total as u64);
    progress.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let runtime = runtime(true)?;
    let mut results = Results::new();
    let mut failures = Vec::new();
    for _ in 0..args.repeat {
        for (si, server, ti, transport, rows) in &plan {
            let running = target::start(*server, *transport, dir.path(), &locations)?;
            for &(client, workload) in rows {
                progress.set_message(format!(
                    "{} {} {} {}",
                    server.name(),
                    transport.name(),
                    client.name(),
                    workload.label()
                ));
                let measured = runtime.block_on(measure(&running, client, workload, duration));
                let measured = match measured {
                    Ok(m) => m,
                    Err(e) => {
                        // One failing row must not cost the whole run: it is
                        // reported (stderr, and the exit status) and left out.
                        let failure = format!(
                            "{} over {}, {} client, {}: {e}",
                            server.name(),
                            transport.name(),
                            client.name(),
                            workload.label()
                        );
                        progress.suspend(|| eprintln!("unixws bench: {failure}"));
                        failures.push(failure);
                        progress.inc(1);
                        continue;
                    }
                };
                let key = Key {
                    server: ServerOrder(*si),
                    transport: TransportOrder(*ti),
                    client,
                    workload,
                };
                results.entry(key).or_default().push(measured);
                progress.inc(1);
            }
        }
    }
    progress.finish_and_clear();
    let report = report::Report::new(&results, &servers, &transports, duration, args.repeat);
    print!("{}", report.table());
    if args.compress {
        match compress::run(&transports, duration, dir.path()) {
            Ok(table) => print!("{table}"),
            Err(e) => {
                eprintln!("unixws bench: compression: {e}");
                failures.push(format!("compression: {e}"));
            }
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, report.json(args.peers, &locations).to_string())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        report.svg(path)?;
    }
    match failures.len() {
        0 => Ok(()),
        n => Err(format!(
            "{n} measurement(s) failed and are missing from the report; the first: {}",
            failures[0]
        )),
    }
}

async fn measure(
    running: &target::Running,
    client: Client,
    workload: Workload,
    duration: Duration,
) -> Result<Measured, String> {
    let address = &running.address;
    let websocket = running.websocket;
    let open = || target::Conn::open(address, websocket);
    match (client, workload) {
        (Client::Load, Workload::PingPong { conns, size } | Workload::Matrix { conns, size }) => {
            load::ping_pong(open, conns, size, duration)
                .await
                .map_err(|e| e.to_string())
        }
        (Client::Load, Workload::Stream { size }) => {
            let conn = open().await.map_err(|e| e.to_string())?;
            load::stream(conn, size, duration)
                .await
                .map_err(|e| e.to_string())
        }
        (Client::SameCpu | Client::CrossCpu, Workload::PingPong { conns: 1, size }) => {
            let pid = running.pid();
            let address = address.clone();
            let cross = client == Client::CrossCpu;
            tokio::task::spawn_blocking(move || {
                placed_ping_pong(pid, cross, address, websocket, size, duration)
            })
            .await
            .map_err(|e| e.to_string())?
        }
        (
            Client::Threads,
            Workload::PingPong { conns, size } | Workload::Matrix { conns, size },
        ) => {
            let address = address.clone();
            tokio::task::spawn_blocking(move || {
                load::ping_pong_threads(&address, websocket, conns, size, duration)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
        }
        (Client::Blocking | Client::Async, Workload::PingPong { size, .. }) => {
            let which = if client == Client::Blocking {
                LibraryClient::Blocking
            } else {
                LibraryClient::Async
            };
            clients::request_response(which, address, size, duration).await
        }
        (_, other) => Err(format!(
            "{} is not a workload of the {} client",
            other.label(),
            client.name()
        )),
    }
}

/// One connection's ping-pong with placement under control: every thread
/// of the server pinned to CPU 0, the client on CPU 0 (same) or CPU 1
/// (cross), on a runtime of its own. On a small machine the scheduler
/// otherwise decides, run by run, which of the two is measured.
fn placed_ping_pong(
    server: u32,
    cross: bool,
    address: unixws::Address,
    websocket: bool,
    size: usize,
    duration: Duration,
) -> Result<Measured, String> {
    if cross && online_cpus() < 2 {
        return Err("a cross-CPU row needs two CPUs; this machine has one".into());
    }
    pin_process(server, Some(0))?;
    pin_thread(0, Some(usize::from(cross)))?;
    let measured = runtime(false).and_then(|rt| {
        rt.block_on(load::ping_pong(
            || target::Conn::open(&address, websocket),
            1,
            size,
            duration,
        ))
        .map_err(|e| e.to_string())
    });
    pin_thread(0, None)?;
    pin_process(server, None)?;
    measured
}

/// The CPUs online (not those this thread may use: a pinned thread sees one).
/// The bench's runtimes: a worker per CPU (`multi`), or the calling thread
/// only (a placed ping-pong, whose thread is pinned).
pub(crate) fn runtime(multi: bool) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = if multi {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))
}

fn online_cpus() -> usize {
    // SAFETY: sysconf only reads a system setting.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// Pins every thread of process `pid` to `cpu` (`None`: every CPU).
fn pin_process(pid: u32, cpu: Option<usize>) -> Result<(), String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| format!("cannot list the threads of process {pid}: {e}"))?;
    for task in tasks.flatten() {
        if let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) {
            match pin_thread(tid, cpu) {
                // A thread that ended since the listing (a thread-per-connection
                // server's, say) needs no pinning.
                Err(_) if !std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists() => {}
                other => other?,
            }
        }
    }
    Ok(())
}

/// Pins thread `tid` (0: the calling thread) to `cpu` (`None`: every CPU).
fn pin_thread(tid: i32, cpu: Option<usize>) -> Result<(), String> {
    let cpus = online_cpus();
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes
    // within it, and sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        match cpu {
            Some(c) => libc::CPU_SET(c, &mut set),
            None => (0..cpus).for_each(|c| libc::CPU_SET(c, &mut set)),
        }
        if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!(
                "cannot pin thread {tid}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// 1,000 connections need 2,000+ descriptors between the bench and a server.
fn raise_open_file_limit(args: &Args) {
    let most = args
        .connections
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(if args.matrix { 500 } else { 1 });
    let want = (most as u64) * 2 + 256;
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
