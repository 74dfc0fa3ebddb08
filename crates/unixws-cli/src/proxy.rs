//! `unixws proxy`: a WebSocket-aware relay between two addresses, TCP to a
//! Unix socket, a Unix socket to TCP, or Unix to Unix (see
//! `unixws::tokio::Proxy` for what is forwarded).

use std::time::Duration;

use unixws::tokio::Proxy;
use unixws::{BindOptions, Limits, Server};

use crate::error::CliResult;
use crate::{observe, runtime};
use unixws_bench::units::{parse_duration, parse_mode};

const EXAMPLES: &str = "\
Examples:
  unixws proxy --listen 127.0.0.1:8080 --to ws+unix:///run/app.sock      # browsers -> UDS backend
  unixws proxy --listen /run/public.sock --mode 666 --to ws://127.0.0.1:9001/api
  unixws proxy --listen 127.0.0.1:8080 --to ws+unix:///run/app.sock --allow-origin https://app.example";

/// Flags of `unixws proxy`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Where clients connect: host:port, a socket path or @abstract.
    #[arg(long, value_name = "ADDR")]
    listen: String,

    /// The backend; its path is a prefix for the clients' request paths.
    #[arg(long, value_name = "URL")]
    to: String,

    /// Admit only browsers from this Origin (repeatable); others get 403.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allow_origin: Vec<String>,

    /// Most client connections; the next one gets HTTP 503.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections)]
    max_connections: usize,

    /// Backend connect and handshake timeout (default: 5s connect, 10s handshake).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    timeout: Option<Duration>,

    /// Mode of the listening socket file, in octal (Unix listeners).
    #[arg(long, value_parser = parse_mode, value_name = "OCTAL")]
    mode: Option<u32>,

    /// Admit only Unix-socket clients with this uid (repeatable).
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uid: Vec<String>,

    /// Admit Unix-socket clients in this group, primary or supplementary (repeatable).
    #[arg(long = "allow-gid", value_name = "GID")]
    allow_gid: Vec<String>,

    /// Negotiate permessage-deflate on the proxy's TCP sides (clients of a
    /// TCP listener such as browsers, a ws:// backend); Unix-socket hops
    /// stay uncompressed, where a copy is cheaper than deflate.
    #[arg(long)]
    compress: bool,

    #[command(flatten)]
    observe: observe::Observe,
}

/// Runs the proxy until SIGINT/SIGTERM.
pub fn run(args: Args) -> CliResult {
    runtime::run(proxy(args))
}

async fn proxy(args: Args) -> CliResult {
    let mut listen_limits = Limits::default();
    listen_limits.max_connections = args.max_connections;
    let tcp = |addr: &str| {
        unixws::ToAddress::to_address(addr)
            .is_ok_and(|a| matches!(a.endpoint(), unixws::Endpoint::Tcp { .. }))
    };
    listen_limits.compression = args.compress && tcp(&args.listen);
    let mut backend_limits = Limits::default();
    if let Some(t) = args.timeout {
        backend_limits.connect_timeout = t;
        backend_limits.handshake_timeout = t;
    }
    backend_limits.compression = args.compress && tcp(&args.to);
    let policy = runtime::policy(&args.allow_uid, &args.allow_gid)?;
    let mut bind = BindOptions::new();
    bind.mode = args.mode;
    let mut proxy = Proxy::new(args.to.as_str())?.backend_limits(backend_limits);
    for origin in &args.allow_origin {
        proxy = proxy.allow_origin(origin);
    }
    let builder = Server::builder(args.listen.as_str())?
        .bind_options(bind)
        .policy(policy)
        .limits(listen_limits);
    let server = args.observe.apply(builder).bind_async()?;
    runtime::stop_on_signals(server.shutdown_handle())?;
    let _metrics = args.observe.start(server.stats())?;
    eprintln!(
        "unixws: proxying {} -> {}; Ctrl-C to stop",
        server.local_addr(),
        args.to
    );
    Ok(proxy.serve(server).await?)
}
