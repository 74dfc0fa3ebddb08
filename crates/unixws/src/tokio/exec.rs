//! One process per connection, like websocketd: each text message received
//! is written to the process's stdin as a line, each line of its stdout is
//! sent as a text message (or, with `binary`, raw chunks both ways).
//!
//! The process sees who is connected in its environment:
//! `UNIXWS_PEER_UID`, `UNIXWS_PEER_GID`, `UNIXWS_PEER_PID` and
//! `UNIXWS_PEER_GROUPS` (supplementary groups, space-separated as `id -G`
//! prints them; Unix sockets only),
//! `UNIXWS_PATH`, `UNIXWS_QUERY`, and each request header as `HTTP_NAME`
//! (upper case, `-` as `_`). Its stderr goes to the server log.
//!
//! Endings: the process exits 0 → close 1000; exits otherwise → close 1011
//! with the exit status as the reason. The client closes → the process gets
//! EOF on stdin, and what it still prints is relayed until it exits (the
//! client's close is answered after that, with the code of the exit
//! status), within the grace period; then SIGTERM, then SIGKILL after
//! another. That is what a one-shot pipe needs (`printf 'req\n' | unixws
//! connect` sends its close right after the request, and hears the answer
//! that comes a moment later). A client that hangs up without a close
//! hears nothing more: the process gets EOF and the signals. It is always
//! waited for, so no zombie is left.

use std::future::Future;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

use crate::error::{Error, Result};
use crate::peer::Peer;
use crate::server_core::{HandlerError, HandlerResult};
use crate::tokio::{Connection, Outbox};

/// What to run for each connection.
#[derive(Debug, Clone)]
pub struct Exec {
    program: String,
    args: Vec<String>,
    binary: bool,
    grace: Duration,
}

impl Exec {
    /// Run `program` (found on `PATH`) for each connection, line mode.
    ///
    /// ```no_run
    /// # async fn demo() -> unixws::Result<()> {
    /// let exec = unixws::tokio::Exec::new("sh").args(["-c", "echo hello $UNIXWS_PEER_UID; cat"]);
    /// let server = unixws::Server::builder("/tmp/exec.sock")?.bind_async()?;
    /// server.serve(move |conn| exec.clone().serve(conn)).await
    /// # }
    /// ```
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            binary: false,
            grace: Duration::from_secs(2),
        }
    }

    /// Arguments for the program.
    pub fn args(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Raw chunks instead of lines: each received message's bytes go to
    /// stdin as they are, each chunk read from stdout is a binary message.
    pub fn binary(mut self, on: bool) -> Self {
        self.binary = on;
        self
    }

    /// Time the process gets after stdin EOF before SIGTERM, and after
    /// SIGTERM before SIGKILL (default: 2 s).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Serves one connection with one process; a handler for
    /// [`Server::serve`](crate::tokio::Server::serve) (its errors are
    /// unixws [`Error`]s).
    pub fn serve(self, conn: Connection) -> impl Future<Output = HandlerResult> + Send {
        futures_util::FutureExt::map(self.run(conn), |ran| ran.map_err(HandlerError::from))
    }

    async fn run(self, mut conn: Connection) -> Result<()> {
        let mut child = self.command(&conn).spawn().map_err(|e| {
            Error::io(
                format!(
                    "cannot start `{}` for a connection (is it on PATH?)",
                    self.program
                ),
                e,
            )
        })?;
        let pid = child.id().unwrap_or_default();
        tracing::debug!(pid, program = %self.program, "process started for a connection");
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::warn!(pid, "stderr: {line}");
                }
            });
        }
        let mut stdin = child.stdin.take();
        // The client's close is answered after the process's last output.
        conn.hold_close_reply(true);
        let (stop_tx, stop_rx) = oneshot::channel();
        let pump = tokio::spawn(pump_stdout(
            child,
            conn.outbox()?,
            self.binary,
            self.grace,
            stop_rx,
        ));
        while let Some(message) = conn.recv().await? {
            let Some(input) = stdin.as_mut() else {
                continue;
            };
            if write_message(input, message, self.binary).await.is_err() {
                // The process closed its stdin; its exit ends the connection.
                stdin = None;
            }
        }
        // EOF on stdin. A client that closed still hears the rest of the
        // output; one that hung up does not.
        drop(stdin);
        let closed = conn.peer_close().is_some();
        let _ = stop_tx.send(if closed { Leave::Closed } else { Leave::Gone });
        if let Ok(Some(answer)) = pump.await {
            // The process ended after the client's close: answer it.
            conn.close(answer.code, &answer.reason).await?;
        }
        Ok(())
    }

    fn command(&self, conn: &Connection) -> Command {
        let info = conn.info();
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .env("UNIXWS_PATH", &info.path)
            .env("UNIXWS_QUERY", info.query.as_deref().unwrap_or(""));
        if let Peer::Unix(c) = &info.peer {
            cmd.env("UNIXWS_PEER_UID", c.uid.to_string())
                .env("UNIXWS_PEER_GID", c.gid.to_string())
                .env("UNIXWS_PEER_PID", c.pid.to_string())
                .env("UNIXWS_PEER_GROUPS", c.groups_joined(" "));
        }
        for (name, value) in &info.headers {
            if let Ok(value) = value.to_str() {
                let var = format!(
                    "HTTP_{}",
                    name.as_str().to_ascii_uppercase().replace('-', "_")
                );
                cmd.env(var, value);
            }
        }
        cmd
    }
}

async fn write_message(
    stdin: &mut ChildStdin,
    message: Message,
    binary: bool,
) -> std::io::Result<()> {
    match message {
        Message::Text(text) if !binary => {
            stdin.write_all(text.as_bytes()).await?;
            stdin.write_all(b"\n").await?;
        }
        Message::Text(text) => stdin.write_all(text.as_bytes()).await?,
        Message::Binary(bytes) => stdin.write_all(&bytes).await?,
        _ => {}
    }
    stdin.flush().await
}

/// How the client left.
#[derive(Debug, Clone, Copy)]
enum Leave {
    /// With a close frame, whose answer waits for the process.
    Closed,
    /// Without one: nothing can reach it.
    Gone,
}

/// Sends the process's output as messages, then its exit as the close code.
/// When told the client closed, relays the rest of the output within the
/// grace period and returns the close that answers the client; when told
/// it is gone, ends the process (EOF, SIGTERM, SIGKILL).
async fn pump_stdout(
    mut child: Child,
    outbox: Outbox,
    binary: bool,
    grace: Duration,
    stop: oneshot::Receiver<Leave>,
) -> Option<CloseFrame> {
    let stdout = child.stdout.take();
    let forward = async {
        let Some(stdout) = stdout else { return };
        if binary {
            let mut stdout = stdout;
            let mut buf = vec![0u8; 16 << 10];
            while let Ok(n) = stdout.read(&mut buf).await {
                if n == 0
                    || outbox
                        .send(Message::binary(buf[..n].to_vec()))
                        .await
                        .is_err()
                {
                    break;
                }
            }
        } else {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if outbox.send(Message::text(line)).await.is_err() {
                    break;
                }
            }
        }
    };
    tokio::pin!(forward);
    let left = tokio::select! {
        _ = &mut forward => None,
        left = stop => Some(left.unwrap_or(Leave::Gone)),
    };
    match left {
        None => {
            // Output ended: the process is exiting (or closed stdout on purpose).
            let status = tokio::select! {
                status = child.wait() => status.ok(),
                _ = tokio::time::sleep(grace) => end_process(&mut child, grace, grace).await,
            };
            let _ = outbox.send(Message::Close(Some(close_for(status)))).await;
            None
        }
        Some(Leave::Closed) => {
            // Its stdin is closed: what it prints until it exits (within
            // the grace period) still reaches the client.
            let started = tokio::time::Instant::now();
            let _ = tokio::time::timeout(grace, &mut forward).await;
            let left = grace.saturating_sub(started.elapsed());
            Some(close_for(end_process(&mut child, left, grace).await))
        }
        Some(Leave::Gone) => {
            end_process(&mut child, grace, grace).await;
            None
        }
    }
}

/// Waits `first` for the process to exit, then SIGTERM, then SIGKILL after
/// `grace`; always reaps the process.
async fn end_process(child: &mut Child, first: Duration, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Ok(status)) = tokio::time::timeout(first, child.wait()).await {
        return Some(status);
    }
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if let Ok(Ok(status)) = tokio::time::timeout(grace, child.wait()).await {
        return Some(status);
    }
    let _ = child.kill().await; // SIGKILL, then wait
    child.wait().await.ok()
}

fn close_for(status: Option<ExitStatus>) -> CloseFrame {
    use std::os::unix::process::ExitStatusExt;
    let (code, reason) = match status {
        Some(s) if s.success() => (CloseCode::Normal, String::new()),
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => (
                CloseCode::Error,
                format!("process exited with status {code}"),
            ),
            (None, Some(signal)) => (
                CloseCode::Error,
                format!("process killed by signal {signal}"),
            ),
            _ => (CloseCode::Error, "process failed".to_string()),
        },
        None => (CloseCode::Error, "process status unknown".to_string()),
    };
    CloseFrame {
        code,
        reason: reason.into(),
    }
}
