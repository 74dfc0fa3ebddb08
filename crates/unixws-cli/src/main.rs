//! The `unixws` command: a thin layer that parses flags and calls the
//! library. One file per subcommand; errors become one line on stderr and a
//! non-zero exit, never a backtrace.

mod connect;
mod error;
mod observe;
mod proxy;
mod runtime;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  unixws serve --echo ./demo.sock                 # echo server on a Unix socket
  unixws connect ws+unix://./demo.sock            # type lines, see them echoed
  unixws serve --broadcast /run/chat.sock --mode 660 --group chat
  unixws connect 'ws+unix:///run/app.sock:/chat?room=1' -H 'Authorization: Bearer t'
  unixws proxy --listen 127.0.0.1:8080 --to ws+unix:///run/app.sock  # browsers -> UDS
  unixws bench --quick                            # UDS vs TCP vs raw sockets, here

Addresses: ws+unix:///p.sock[:/path?q], unix:/p.sock, /p.sock, ./p.sock,
@abstract, ws://host:port/path, tcp:host:port, host:port";

/// WebSocket over Unix domain sockets: serve and connect from the command line.
#[derive(Debug, Parser)]
#[command(name = "unixws", version, after_help = EXAMPLES, propagate_version = true)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve WebSocket on a Unix socket (or TCP): echo or broadcast.
    Serve(serve::Args),
    /// Connect to a WebSocket server: stdin lines out, messages in as lines.
    Connect(connect::Args),
    /// Relay WebSocket connections between two addresses (TCP <-> Unix socket).
    Proxy(proxy::Args),
    /// Measure WebSocket over Unix sockets against raw sockets, TCP and other servers.
    Bench(unixws_bench::Args),
    /// The raw byte-echo baseline server of `bench` (not WebSocket).
    #[command(hide = true)]
    BenchEcho {
        /// A socket path or 127.0.0.1:PORT
        addr: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Connect(args) => connect::run(args),
        Command::Proxy(args) => proxy::run(args),
        Command::Bench(args) => unixws_bench::run(args).map_err(error::CliError::Usage),
        Command::BenchEcho { addr } => {
            unixws_bench::run_raw_echo(&addr).map_err(error::CliError::Usage)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("unixws: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
