//! `unixws connect`: each stdin line becomes one message, each received
//! message one stdout line. EOF on stdin closes normally (1000); what the
//! server still sends is printed until its close arrives (at most the close
//! timeout), so a one-shot pipe hears an answer that comes after its
//! request. The exit code is 0 only after a normal close.
//!
//! With `--reconnect` the connection is made again whenever it drops (the
//! server restarted), with the `--init` lines sent first each time; each
//! stdin line is confirmed by the server (a ping after it, answered) and
//! sent again after reconnecting if it was not, so every line arrives at
//! least once.

use std::io::{self, BufRead};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use unixws::{ClientBuilder, CloseCode, Message, RetryPolicy};

use crate::error::{CliError, CliResult};
use crate::runtime;
use unixws_bench::units::parse_duration;

const EXAMPLES: &str = "\
Examples:
  unixws connect ws+unix://./demo.sock
  unixws connect 'ws+unix:///run/app.sock:/chat?room=1' -H 'Authorization: Bearer t'
  echo hello | unixws connect ws://127.0.0.1:9001/ --retry 5
  unixws connect ws+unix:///run/feed.sock --reconnect --init 'subscribe prices'
Exit status: 0 after a normal close (1000), 1 on any error or other close code.";

/// Flags of `unixws connect`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Server address, e.g. ws+unix:///run/app.sock:/chat or ws://127.0.0.1:9001/.
    #[arg(value_name = "URL")]
    url: String,

    /// Extra request header, 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header", value_name = "'NAME: VALUE'")]
    headers: Vec<String>,

    /// Offer this subprotocol (repeatable).
    #[arg(long, value_name = "P")]
    subprotocol: Vec<String>,

    /// Send stdin lines as binary messages instead of text.
    #[arg(long)]
    binary: bool,

    /// Connect and handshake timeout, e.g. 2s (default: 5s connect, 10s handshake).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    timeout: Option<Duration>,

    /// Retry this many times while the socket is missing, refused or busy.
    #[arg(long, value_name = "N", default_value_t = 0)]
    retry: u32,

    /// Host header (default: localhost over a Unix socket).
    #[arg(long, value_name = "HOST")]
    host: Option<String>,

    /// Connect again whenever the connection drops (the server restarted),
    /// waiting 100ms doubling to 5s between tries, for as long as it takes.
    /// Lines the server had not confirmed are sent again.
    #[arg(long)]
    reconnect: bool,

    /// Offer permessage-deflate; if the server accepts, messages of 1 KiB
    /// or more go out compressed.
    #[arg(long)]
    compress: bool,

    /// Send LINE first on every connection, before stdin (repeatable):
    /// authentication, subscriptions.
    #[arg(long = "init", value_name = "LINE")]
    init: Vec<String>,
}

/// Connects, pumps stdin to the server and messages to stdout.
pub fn run(args: Args) -> CliResult {
    let mut builder = ClientBuilder::new(args.url.as_str())
        .map_err(|e| e.to_string())?
        .retry(RetryPolicy::attempts(args.retry));
    if args.compress {
        builder = builder.limits(unixws::Limits::default().compression(true));
    }
    if let Some(t) = args.timeout {
        builder = builder.connect_timeout(t).handshake_timeout(t);
    }
    if let Some(host) = &args.host {
        builder = builder.host(host);
    }
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("header `{header}` has no `:`; write it as 'Name: value'"))?;
        builder = builder.header(name.trim(), value.trim());
    }
    for p in &args.subprotocol {
        builder = builder.subprotocol(p);
    }
    let binary = args.binary;
    let init = args
        .init
        .iter()
        .map(|line| to_message(line.as_bytes().to_vec(), binary))
        .collect::<CliResult<Vec<Message>>>()?;
    if !init.is_empty() {
        builder = builder.on_connect(move |_| init.clone());
    }
    if args.reconnect {
        return runtime::run(reconnecting(
            builder.reconnect(RetryPolicy::forever()),
            binary,
        ));
    }
    let mut conn = builder.connect()?;
    let outbox = conn.outbox()?;

    // Set by the stdin thread when input ends with an error rather than EOF.
    let input_error: Arc<OnceLock<String>> = Arc::default();
    let input_failed = input_error.clone();
    thread::spawn(move || {
        let stdin = io::stdin();
        let mut lines = stdin.lock();
        let mut line = Vec::new();
        loop {
            line.clear();
            match lines.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Err(e) => {
                    let _ = input_failed.set(format!("cannot read stdin: {e}"));
                    break;
                }
                Ok(_) => {
                    let message = match to_message(std::mem::take(&mut line), binary) {
                        Ok(message) => message,
                        Err(e) => {
                            let _ = input_failed.set(e.to_string());
                            break;
                        }
                    };
                    if outbox.send(message).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = outbox.send(Message::Close(None));
    });

    while let Some(message) = conn.recv()? {
        print_line(&message)?;
    }
    if let Some(e) = input_error.get() {
        return Err(CliError::Usage(e.clone()));
    }
    closed_how(conn.peer_close())
}

/// `--reconnect`: stdin lines out, each confirmed (and sent again after a
/// reconnect if it was not), messages in as lines, across reconnects.
async fn reconnecting(builder: ClientBuilder, binary: bool) -> CliResult {
    use tokio::io::AsyncBufReadExt;
    let mut client = builder.connect_reconnecting().await?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).split(b'\n');
    loop {
        tokio::select! {
            line = lines.next_segment() => {
                let line = line.map_err(|e| format!("cannot read stdin: {e}"))?;
                let Some(line) = line else { break };
                let message = to_message(line, binary)?;
                loop {
                    match client.send(message.clone()).await {
                        Ok(()) => break,
                        Err(unixws::Error::NotConfirmed { reason }) => eprintln!(
                            "unixws: a line was not confirmed ({reason}); sending it again after reconnecting"
                        ),
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            message = client.recv() => match message? {
                Some(message) => print_line(&message)?,
                None => return closed_how(client.peer_close()),
            },
        }
    }
    client.close(CloseCode::Normal, "").await?;
    Ok(())
}

/// A stdin line (its `\n` or `\r\n` cut) as a message.
fn to_message(mut line: Vec<u8>, binary: bool) -> CliResult<Message> {
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if binary {
        return Ok(Message::binary(line));
    }
    String::from_utf8(line).map(Message::text).map_err(|_| {
        CliError::Usage("a stdin line is not UTF-8; use --binary to send raw bytes".to_string())
    })
}

/// A received message as one stdout line.
fn print_line(message: &Message) -> CliResult {
    crate::runtime::print_message(message)
        .map_err(|e| format!("cannot write to stdout: {e}").into())
}

/// The exit status a connection's end means: 0 after a normal close.
fn closed_how(close: Option<&unixws::PeerClose>) -> CliResult {
    match close {
        None => Err(CliError::Lib(unixws::Error::ConnectionReset)),
        Some(close) if close.code == CloseCode::Normal => Ok(()),
        Some(close) => Err(CliError::Usage(format!(
            "the server closed the connection with code {}{}",
            close.code,
            if close.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", close.reason)
            }
        ))),
    }
}
