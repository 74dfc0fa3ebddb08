//! `unixws connect`: each stdin line becomes one message, each received
//! message one stdout line. EOF on stdin closes normally (1000); what the
//! server still sends is printed until its close arrives (at most the close
//! timeout), so a one-shot pipe hears an answer that comes after its
//! request. The exit code is 0 only after a normal close.

use std::io::{self, BufRead, Write};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use unixws::{ClientBuilder, CloseCode, Message, RetryPolicy};

use crate::error::{CliError, CliResult};
use unixws_bench::units::parse_duration;

const EXAMPLES: &str = "\
Examples:
  unixws connect ws+unix://./demo.sock
  unixws connect 'ws+unix:///run/app.sock:/chat?room=1' -H 'Authorization: Bearer t'
  echo hello | unixws connect ws://127.0.0.1:9001/ --retry 5
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
}

/// Connects, pumps stdin to the server and messages to stdout.
pub fn run(args: Args) -> CliResult {
    let mut builder = ClientBuilder::new(args.url.as_str())
        .map_err(|e| e.to_string())?
        .retry(RetryPolicy::attempts(args.retry));
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
    let mut conn = builder.connect()?;
    let outbox = conn.outbox()?;

    let binary = args.binary;
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
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    let message = if binary {
                        Message::binary(line.clone())
                    } else {
                        match String::from_utf8(line.clone()) {
                            Ok(text) => Message::text(text),
                            Err(_) => {
                                let _ = input_failed.set(
                                    "a stdin line is not UTF-8; use --binary to send raw bytes"
                                        .to_string(),
                                );
                                break;
                            }
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

    let stdout = io::stdout();
    let mut out = stdout.lock();
    while let Some(message) = conn.recv()? {
        let written = match &message {
            Message::Text(text) => out.write_all(text.as_bytes()),
            Message::Binary(bytes) => out.write_all(bytes),
            _ => Ok(()),
        };
        written
            .and_then(|_| out.write_all(b"\n"))
            .and_then(|_| out.flush())
            .map_err(|e| format!("cannot write to stdout: {e}"))?;
    }
    if let Some(e) = input_error.get() {
        return Err(CliError::Usage(e.clone()));
    }
    match conn.peer_close() {
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
