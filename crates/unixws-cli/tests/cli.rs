//! The `unixws` binary as users run it: real processes, real sockets, the
//! stdin/stdout/exit-code contract (README, "Quick start"), one-line errors, and the
//! checks that need a second uid (file modes, peer credentials), which run
//! the client as uid 65534 and so need root.

// The helpers unwrap as the tests do: a failure there is the test's failure.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use unixws::CloseCode;
use unixws::{Message, PeerCredentials, Server};
use unixws_testkit::{
    as_nobody, require_root, shared_tempdir, wait_until, Process, RunningServer, NOBODY,
};

const T: Duration = Duration::from_secs(20);

fn unixws() -> Command {
    Command::new(env!("CARGO_BIN_EXE_unixws"))
}

/// `unixws` run as uid/gid 65534. The build may sit where that uid cannot
/// reach it (a clone in a private home directory), so the binary is copied
/// into `dir` (a [`shared_tempdir`]) and run from there.
fn unixws_as_nobody(dir: &Path) -> Command {
    let mut cmd = Command::new(unixws_copy(dir));
    cmd.current_dir(dir);
    as_nobody(&mut cmd);
    cmd
}

/// `unixws` run as uid/gid 65534 with these supplementary groups, through
/// util-linux's `setpriv` (std's `Command` can only drop them all).
fn unixws_as_nobody_in_groups(dir: &Path, groups: &[u32]) -> Command {
    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
    let mut cmd = Command::new("setpriv");
    cmd.current_dir(dir)
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg(format!("--groups={}", groups.join(",")))
        .arg("--")
        .arg(unixws_copy(dir));
    cmd
}

/// A copy of the `unixws` binary in `dir`, where uid 65534 can run it.
fn unixws_copy(dir: &Path) -> PathBuf {
    let copy = dir.join("unixws-bin");
    if !copy.exists() {
        std::fs::copy(env!("CARGO_BIN_EXE_unixws"), &copy).expect("copy the unixws binary");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the copy");
    }
    copy
}

/// Starts `unixws serve ARGS..` and waits for its socket file.
fn serve(socket: &Path, args: &[&str]) -> Process {
    let mut cmd = unixws();
    cmd.arg("serve").args(args).arg(socket);
    let p = Process::spawn(&mut cmd);
    assert!(
        wait_until(T, || socket.exists()),
        "unixws serve did not create {}",
        socket.display()
    );
    p
}

/// Runs `unixws connect ARGS..` with `input` on stdin (as uid 65534 from
/// a copy in `nobody`'s shared dir, when given).
fn connect(args: &[&str], input: &str, nobody: Option<&Path>) -> Output {
    let mut cmd = match nobody {
        Some(dir) => unixws_as_nobody(dir),
        None => unixws(),
    };
    cmd.arg("connect")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = unixws_testkit::spawn(&mut cmd).expect("start unixws connect");
    let written = child.stdin.take().unwrap().write_all(input.as_bytes());
    // A client refused at once (a 0600 socket) may exit before it reads its
    // input; its output and status say why, and the callers check them.
    if let Err(e) = written {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "writing stdin: {e}"
        );
    }
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failed `connect`: exit 1 and exactly one line on stderr containing `want`.
fn assert_one_line_error(o: &Output, want: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err:?}");
    assert!(
        err.starts_with("unixws: ") && err.contains(want),
        "wanted `{want}` in {err:?}"
    );
}

fn ws_unix(path: &Path) -> String {
    format!("ws+unix://{}", path.display())
}

#[test]
fn connect_round_trips_lines_through_serve_echo_over_uds() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("echo.sock");
    let _server = serve(&sock, &["--echo"]);
    let out = connect(&[&ws_unix(&sock)], "hello\nworld ✓\n\nlast\n", None);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "hello\nworld ✓\n\nlast\n");
    // EOF right away is a normal close too.
    let out = connect(&[&ws_unix(&sock)], "", None);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "");
}

#[test]
fn a_stdin_line_that_is_not_utf8_is_an_error_in_text_mode() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("utf8.sock");
    let _server = serve(&sock, &["--echo"]);
    let mut cmd = unixws();
    cmd.arg("connect")
        .arg(ws_unix(&sock))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = unixws_testkit::spawn(&mut cmd).unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"fine\n\xff\xfe\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        stdout(&out),
        "fine\n",
        "the line before the bad one went through"
    );
    assert_one_line_error(&out, "not UTF-8; use --binary");
}

#[test]
fn connect_round_trips_binary_lines() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("bin.sock");
    let _server = serve(&sock, &["--echo"]);
    let out = connect(&[&ws_unix(&sock), "--binary"], "raw\n", None);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "raw\n");
}

#[test]
fn connect_round_trips_lines_through_serve_echo_over_tcp() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = unixws();
    cmd.args(["serve", "--echo", &addr]);
    let _server = Process::spawn(&mut cmd);
    let url = format!("ws://{addr}/");
    let out = connect(&[&url, "--retry", "50"], "over tcp\n", None);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "over tcp\n");
}

#[test]
fn errors_are_one_line_with_a_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    assert_one_line_error(&connect(&[&ws_unix(&missing)], "", None), "no socket at");

    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert_one_line_error(
        &connect(&[&ws_unix(&stale)], "", None),
        "connection refused",
    );

    let mute = dir.path().join("mute.sock");
    let _mute = UnixListener::bind(&mute).unwrap();
    assert_one_line_error(
        &connect(&[&ws_unix(&mute), "--timeout", "200ms"], "", None),
        "timed out after 200ms",
    );

    assert_one_line_error(&connect(&["nonsense.sock"], "", None), "./nonsense.sock");
    assert_one_line_error(&connect(&["wss://h:1/"], "", None), "wss://");
    assert_one_line_error(
        &connect(&["ws+unix:///x.sock", "-H", "NoColon"], "", None),
        "'Name: value'",
    );
}

#[test]
fn serve_refuses_bad_addresses_and_non_sockets_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file.txt");
    std::fs::write(&file, "keep me").unwrap();
    let out = unixws()
        .args(["serve", "--echo"])
        .arg(&file)
        .output()
        .unwrap();
    assert_one_line_error(&out, "it is a regular file");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

    let out = unixws()
        .args(["serve", "--echo", "--mode", "999", "./x.sock"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap usage error: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("not an octal file mode"));

    let out = unixws().args(["serve", "./x.sock"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "--echo or --broadcast is required"
    );
}

#[test]
fn help_shows_examples() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["connect", "--help"],
    ] {
        let out = unixws().args(args).output().unwrap();
        let text = stdout(&out);
        assert!(
            out.status.success() && text.contains("Examples:") && text.contains("unixws "),
            "{args:?}: {text}"
        );
    }
}

/// Needs root: the client runs as uid 65534 so that the socket's mode, not
/// root's override, decides.
#[test]
fn mode_0600_keeps_another_uid_out_and_0666_lets_it_in() {
    require_root("the client must run as uid 65534 to be judged by the socket's mode");
    let dir = shared_tempdir();
    let private = dir.path().join("private.sock");
    let _p = serve(&private, &["--echo", "--mode", "600"]);
    let out = connect(&[&ws_unix(&private)], "hi\n", Some(dir.path()));
    assert_one_line_error(&out, "permission denied on");
    assert!(
        stderr(&out).contains("mode 0600 owned by root:root"),
        "{}",
        stderr(&out)
    );

    let open = dir.path().join("open.sock");
    let _o = serve(&open, &["--echo", "--mode", "666"]);
    let out = connect(&[&ws_unix(&open)], "hi\n", Some(dir.path()));
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "hi\n");
}

/// Needs root: the client runs as uid 65534, which the allow list excludes.
#[test]
fn allow_uid_rejects_others_with_403() {
    require_root("the rejected client runs as uid 65534");
    let dir = shared_tempdir();
    let sock = dir.path().join("policy.sock");
    let _s = serve(&sock, &["--echo", "--mode", "666", "--allow-uid", "root"]);
    let out = connect(&[&ws_unix(&sock)], "hi\n", Some(dir.path()));
    assert_one_line_error(&out, "HTTP 403");
    assert!(
        stderr(&out).contains("--allow-uid 65534"),
        "{}",
        stderr(&out)
    );
    let out = connect(&[&ws_unix(&sock)], "root may\n", None);
    assert_eq!(stdout(&out), "root may\n", "stderr: {}", stderr(&out));
}

/// Needs root: the child runs as uid/gid 65534 so its credentials differ
/// from the test's.
#[test]
fn connection_info_reports_the_real_uid_gid_pid_of_the_child() {
    require_root("the child runs as uid/gid 65534");
    let dir = shared_tempdir();
    let sock = dir.path().join("creds.sock");
    let seen: Arc<Mutex<Vec<PeerCredentials>>> = Arc::default();
    let record = seen.clone();
    let builder = Server::builder(&sock)
        .unwrap()
        .bind_options(unixws::BindOptions::new().mode(0o666));
    let server = RunningServer::start(builder, move |conn| {
        if let Some(c) = conn.info().peer.credentials() {
            record.lock().unwrap().push(c.clone());
        }
        unixws_testkit::echo(conn)
    });
    let mut cmd = unixws_as_nobody(dir.path());
    cmd.arg("connect")
        .arg(ws_unix(&sock))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = unixws_testkit::spawn(&mut cmd).unwrap();
    let pid = child.id() as i32;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"who am i\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    drop(server);
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.as_slice(),
        &[PeerCredentials::new(NOBODY, NOBODY, pid)],
        "std's Command drops the supplementary groups, so none are reported"
    );
}

/// Needs root: the client runs as uid 65534 with groups it is given.
/// `--allow-gid` admits a peer by a supplementary group (systemd's
/// `DynamicUser=yes` with `SupplementaryGroups=`), and the same peer
/// without that group is refused.
#[test]
fn allow_gid_admits_a_peer_by_its_supplementary_group() {
    require_root("the client runs as uid 65534 with chosen supplementary groups");
    let dir = shared_tempdir();
    let sock = dir.path().join("groups.sock");
    let _server = serve(&sock, &["--echo", "--mode", "666", "--allow-gid", "4243"]);
    let run = |groups: &[u32]| {
        let mut cmd = unixws_as_nobody_in_groups(dir.path(), groups);
        cmd.arg("connect")
            .arg(ws_unix(&sock))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = unixws_testkit::spawn(&mut cmd).expect("start setpriv");
        let _ = child.stdin.take().unwrap().write_all(b"member\n");
        child.wait_with_output().unwrap()
    };
    // 20 groups: more than the 16 the library reads first, so the kernel's
    // ERANGE answer and the retry at its size are crossed too.
    let many: Vec<u32> = (4230..4250).collect();
    let member = run(&many);
    assert!(member.status.success(), "stderr: {}", stderr(&member));
    assert_eq!(stdout(&member), "member\n");
    let outsider = run(&[4242]);
    assert!(!outsider.status.success());
    assert!(
        stderr(&outsider).contains("403"),
        "stderr: {}",
        stderr(&outsider)
    );
}

#[test]
fn sigterm_closes_100_clients_with_1001_exits_0_within_the_drain_bound_and_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("term.sock");
    let drain = Duration::from_secs(5);
    let server = serve(&sock, &["--echo", "--drain-timeout", "5s"]);
    let readers: Vec<_> = (0..100)
        .map(|_| {
            let mut c = unixws::connect(&sock).unwrap();
            unixws_testkit::assert_echo(&mut c, "before");
            std::thread::spawn(move || {
                assert_eq!(c.recv().unwrap(), None);
                c.peer_close().map(|p| p.code)
            })
        })
        .collect();
    let signalled = std::time::Instant::now();
    let (ok, _) = server.terminate(T);
    assert!(ok, "unixws serve exits 0 on SIGTERM");
    assert!(
        signalled.elapsed() < drain + Duration::from_secs(2),
        "took {:?}",
        signalled.elapsed()
    );
    assert!(!sock.exists(), "socket file removed");
    for r in readers {
        assert_eq!(r.join().unwrap(), Some(CloseCode::Away));
    }
}

#[test]
fn broadcast_relays_to_all_other_clients() {
    let dir = tempfile::tempdir().unwrap();
    let sock: PathBuf = dir.path().join("chat.sock");
    let _server = serve(&sock, &["--broadcast"]);
    let client = || {
        unixws::ClientBuilder::new(&sock)
            .unwrap()
            .read_timeout(Duration::from_millis(500))
            .connect()
            .unwrap()
    };
    let (mut a, mut b, mut c) = (client(), client(), client());
    // The server registers a client just after its handshake: repeat a
    // message from c until both a and b have been registered and got it.
    let mut synced = [false, false];
    for round in 0..100 {
        c.send(Message::text(format!("sync {round}"))).unwrap();
        for (done, conn) in synced.iter_mut().zip([&mut a, &mut b]) {
            if !*done {
                *done = conn.recv().is_ok_and(|m| m.is_some());
            }
        }
        if synced == [true, true] {
            break;
        }
    }
    assert_eq!(synced, [true, true], "a and b never got c's messages");
    // Drain the extra sync messages each of them may still have queued.
    for conn in [&mut a, &mut b] {
        while let Ok(Some(_)) = conn.recv() {}
    }
    a.send(Message::text("from a")).unwrap();
    assert_eq!(b.recv().unwrap(), Some(Message::text("from a")));
    assert_eq!(c.recv().unwrap(), Some(Message::text("from a")));
    // a did not get its own message: the next thing a sees is b's.
    b.send(Message::text("from b")).unwrap();
    assert_eq!(a.recv().unwrap(), Some(Message::text("from b")));
}

/// systemd socket activation, as systemd does it: the listening socket is
/// descriptor 3, LISTEN_FDS=1 and LISTEN_PID is the service's pid; READY=1
/// goes to NOTIFY_SOCKET; the socket file belongs to systemd and stays.
#[test]
fn systemd_socket_activation_and_ready_notification() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;
    use std::os::unix::process::CommandExt;

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("activated.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(T)).unwrap();

    let fd = listener.as_raw_fd();
    // `exec` keeps the shell's pid, so $$ is the pid unixws will have.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "LISTEN_PID=$$ exec {} serve --systemd --echo",
            env!("CARGO_BIN_EXE_unixws")
        ))
        .env("LISTEN_FDS", "1")
        .env("NOTIFY_SOCKET", &notify_path);
    // SAFETY: dup2 and fcntl are async-signal-safe; they put the socket at
    // descriptor 3 without close-on-exec, in the child only. (When it is
    // descriptor 3 already, dup2 would keep close-on-exec set.)
    unsafe {
        cmd.pre_exec(move || {
            let ok = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0) >= 0
            } else {
                libc::dup2(fd, 3) >= 0
            };
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let server = Process::spawn(&mut cmd);
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).expect("READY=1 from unixws");
    assert_eq!(&buf[..n], b"READY=1");
    drop(listener); // only the service holds the socket now

    let out = connect(&[&ws_unix(&sock)], "activated\n", None);
    assert_eq!(stdout(&out), "activated\n", "stderr: {}", stderr(&out));
    let (ok, _) = server.terminate(T);
    assert!(ok);
    assert!(
        sock.exists(),
        "the socket file belongs to systemd and must stay"
    );
}

#[test]
fn systemd_flag_without_a_passed_socket_is_a_clear_error() {
    let out = unixws()
        .args(["serve", "--systemd", "--echo"])
        .env_remove("LISTEN_FDS")
        .output()
        .unwrap();
    assert_one_line_error(&out, "no socket was passed");
}

/// CPU time (user + system) the process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// The server runs with a descriptor limit low enough to hit EMFILE: it
/// must back off instead of spinning, keep serving the connections it has,
/// and accept again once descriptors are free.
#[test]
fn descriptor_exhaustion_backs_off_keeps_serving_and_recovers() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fd.sock");
    let mut cmd = unixws();
    cmd.args(["serve", "--echo", "--handshake-timeout", "1s"])
        .arg(&sock);
    // SAFETY: setrlimit is async-signal-safe and only affects the child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 48,
                rlim_max: 48,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let server = Process::spawn(&mut cmd);
    assert!(wait_until(T, || sock.exists()));
    let quick = || {
        unixws::ClientBuilder::new(&sock)
            .unwrap()
            .handshake_timeout(Duration::from_millis(500))
            .read_timeout(Duration::from_secs(5))
            .connect()
    };
    // Fill the server's descriptor table.
    let mut held = Vec::new();
    let exhausted = loop {
        match quick() {
            Ok(c) => held.push(c),
            Err(e) => break e,
        }
        assert!(held.len() < 100, "the descriptor limit never bit");
    };
    assert!(
        matches!(
            exhausted,
            unixws::Error::Timeout {
                operation: unixws::error::Operation::Handshake,
                ..
            }
        ),
        "{exhausted:?}"
    );
    assert!(
        held.len() > 5,
        "only {} connections before exhaustion",
        held.len()
    );

    // While exhausted (more clients waiting in the backlog), no spinning...
    let waiting: Vec<_> = (0..3)
        .map(|_| std::os::unix::net::UnixStream::connect(&sock).unwrap())
        .collect();
    let before = cpu_time(server.id());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_time(server.id()) - before;
    assert!(
        used < Duration::from_millis(300),
        "the accept loop spun: {used:?} of CPU in 1 s"
    );
    // ...and the open connections still work.
    for c in held.iter_mut().take(3) {
        unixws_testkit::assert_echo(c, "still served");
    }

    // Free descriptors: the server accepts again.
    drop(waiting);
    for mut c in held.drain(..10) {
        c.close(1000, "").unwrap();
    }
    let mut recovered = unixws::ClientBuilder::new(&sock)
        .unwrap()
        .retry(unixws::RetryPolicy::new(
            20,
            Duration::from_millis(100),
            Duration::from_millis(500),
        ))
        .connect()
        .expect("accepting again after descriptors were freed");
    unixws_testkit::assert_echo(&mut recovered, "recovered");
}

/// Starts `unixws serve ... --exec ARGS..` (ARGS last, as the flag wants).
fn serve_exec(socket: &Path, exec: &[&str]) -> Process {
    let mut cmd = unixws();
    cmd.arg("serve")
        .arg(socket)
        .args(["--exec-grace", "300ms", "--exec"])
        .args(exec);
    let p = Process::spawn(&mut cmd);
    assert!(
        wait_until(T, || socket.exists()),
        "unixws serve --exec did not start"
    );
    p
}

/// The pids of a process's children (zombies included).
fn children(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path().join("children");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        all.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    all
}

#[test]
fn exec_cat_echoes_lines_and_sees_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("cat.sock");
    let _cat = serve_exec(&sock, &["cat"]);
    let mut conn = unixws::connect(&sock).unwrap();
    for line in ["one", "two ✓", ""] {
        unixws_testkit::assert_echo(&mut conn, line);
    }
    conn.close(1000, "").unwrap();

    let env = dir.path().join("env.sock");
    let _env = serve_exec(
        &env,
        &[
            "sh",
            "-c",
            "echo \"$UNIXWS_PATH|$UNIXWS_QUERY|$HTTP_AUTHORIZATION|$HTTP_UPGRADE\"",
        ],
    );
    let url = format!("ws+unix://{}:/app/x?q=1", env.display());
    let mut conn = unixws::ClientBuilder::new(url.as_str())
        .unwrap()
        .header("Authorization", "Bearer t")
        .connect()
        .unwrap();
    assert_eq!(
        conn.recv().unwrap(),
        Some(Message::text("/app/x|q=1|Bearer t|"))
    );
    assert_eq!(conn.recv().unwrap(), None, "exit 0 closes the connection");
    assert_eq!(conn.peer_close().map(|c| c.code), Some(CloseCode::Normal));
}

#[test]
fn exec_exit_status_3_closes_with_1011() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fail.sock");
    let _s = serve_exec(&sock, &["sh", "-c", "exit 3"]);
    let mut conn = unixws::connect(&sock).unwrap();
    assert_eq!(conn.recv().unwrap(), None);
    let close = conn.peer_close().unwrap();
    assert_eq!(
        (close.code, close.reason.as_str()),
        (CloseCode::Error, "process exited with status 3")
    );
}

/// Needs root: the client runs as uid 65534, in supplementary groups of
/// its own, so that what the process reports is not simply the test's.
#[test]
fn exec_sees_the_clients_real_uid_and_groups() {
    require_root("the client runs as uid 65534 with chosen groups");
    let dir = shared_tempdir();
    let sock = dir.path().join("uid.sock");
    let mut cmd = unixws();
    cmd.arg("serve").arg(&sock).args([
        "--mode",
        "666",
        "--exec",
        "sh",
        "-c",
        "echo $UNIXWS_PEER_UID $UNIXWS_PEER_GROUPS; read line; exit 0",
    ]);
    let _s = Process::spawn(&mut cmd);
    assert!(wait_until(T, || sock.exists()));
    let mut client = unixws_as_nobody_in_groups(dir.path(), &[4242, 4243]);
    client
        .arg("connect")
        .arg(ws_unix(&sock))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = unixws_testkit::spawn(&mut client).unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).unwrap();
    assert_eq!(first, "65534 4242 4243\n");
    drop(child.stdin.take()); // EOF: a normal close
    assert!(child.wait().unwrap().success());
}

#[test]
fn exec_leaves_no_process_behind_after_100_connections() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("many.sock");
    let server = serve_exec(&sock, &["cat"]);
    for i in 0..100 {
        let mut conn = unixws::connect(&sock).unwrap();
        unixws_testkit::assert_echo(&mut conn, &format!("cycle {i}"));
        drop(conn); // some leave without a close frame
    }
    assert!(
        wait_until(T, || children(server.id()).is_empty()),
        "children left: {:?}",
        children(server.id())
    );
}

#[test]
fn exec_process_that_ignores_eof_and_sigterm_is_killed_and_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("stubborn.sock");
    let server = serve_exec(
        &sock,
        &[
            "sh",
            "-c",
            "trap '' TERM; echo up; while :; do sleep 0.05; done",
        ],
    );
    let mut conn = unixws::connect(&sock).unwrap();
    assert_eq!(conn.recv().unwrap(), Some(Message::text("up")));
    assert_eq!(children(server.id()).len(), 1);
    conn.close(1000, "").unwrap();
    assert!(
        wait_until(T, || children(server.id()).is_empty()),
        "the stubborn process survived: {:?}",
        children(server.id())
    );
}

#[test]
fn an_abstract_socket_without_an_allow_list_warns_at_startup() {
    let name = format!("@unixws-warn-{}", std::process::id());
    let mut child = unixws()
        .args(["serve", "--echo", &name])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut err, &mut line).unwrap_or(0) > 0 {
        seen.push_str(&line);
        if line.contains("serving") {
            break;
        }
        line.clear();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.contains("abstract socket without an access policy"),
        "{seen}"
    );
}

/// The socket file is removed while the server runs and another server
/// takes the path: the first keeps its clients, and on exit leaves the
/// newcomer's file alone.
#[test]
fn a_replaced_socket_file_belongs_to_the_newcomer() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("shared.sock");
    let first = serve(&sock, &["--echo"]);
    let mut old_client = unixws::connect(&sock).unwrap();
    std::fs::remove_file(&sock).unwrap();
    let _second = serve(&sock, &["--echo"]);
    unixws_testkit::assert_echo(&mut old_client, "the first server still serves me");
    let reader = std::thread::spawn(move || {
        let _ = old_client.recv();
        old_client.peer_close().map(|c| c.code)
    });
    let (ok, _) = first.terminate(T);
    assert!(ok);
    assert_eq!(reader.join().unwrap(), Some(CloseCode::Away));
    assert!(
        sock.exists(),
        "the first server removed the second server's socket"
    );
    let mut new_client = unixws::connect(&sock).unwrap();
    unixws_testkit::assert_echo(&mut new_client, "served by the second");
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The first `sent` payload bytes of a masked frame of `len` bytes: a
/// frame the peer never finishes.
fn partial_frame(opcode: u8, len: usize, sent: usize) -> Vec<u8> {
    let whole = unixws_testkit::client_frame(0x80 | opcode, &vec![0x55; len], true);
    let header = whole.len() - len;
    whole[..header + sent].to_vec()
}

/// One round of bad peers, all open at once, then all gone: half-sent
/// large messages, messages over the limit, half handshakes, bad UTF-8.
fn bad_peer_round(sock: &Path) {
    let mut open = Vec::new();
    for _ in 0..30 {
        let mut s = unixws_testkit::raw_upgraded(sock);
        s.write_all(&partial_frame(2, 900 << 10, 600 << 10))
            .unwrap();
        open.push(s);
        let mut s = unixws_testkit::raw_upgraded(sock);
        let _ = s.write_all(&partial_frame(2, 4 << 20, 64 << 10));
        open.push(s);
        let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ")
            .unwrap();
        open.push(s);
        let mut s = unixws_testkit::raw_upgraded(sock);
        let _ = s.write_all(&[0x81, 0x84, 0, 0, 0, 0, b'a', 0xff, 0xfe, b'b']);
        open.push(s);
    }
    // Everything above is in the server's buffers now: a real client still
    // gets its echo (the server keeps working during the bad round).
    let echoed = connect(&[sock.to_str().unwrap()], "during\n", None);
    assert_eq!(stdout(&echoed), "during\n");
    drop(open);
}

#[test]
fn bad_peers_leave_the_servers_memory_at_its_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("mem.sock");
    let server = serve(&sock, &["--echo", "--max-message", "1MiB"]);
    let settle = || {
        std::thread::sleep(Duration::from_millis(1500));
        let echoed = connect(&[sock.to_str().unwrap()], "after\n", None);
        assert_eq!(stdout(&echoed), "after\n");
        std::thread::sleep(Duration::from_millis(500));
        rss_kib(server.id())
    };
    let before = settle();
    let mut after = Vec::new();
    for _ in 0..4 {
        bad_peer_round(&sock);
        after.push(settle());
    }
    // Each round holds some 20 MiB at its peak (half-sent messages); all of
    // it must be given back, up to allocator slack.
    eprintln!("RSS KiB: before {before}, after each round {after:?}");
    let worst = *after.iter().max().unwrap();
    assert!(
        worst <= before + 4096,
        "memory stays above its baseline after bad peers left: before {before} KiB, after each round {after:?}"
    );
}

/// The one-shot pipe: `printf 'ping\n' | unixws connect` sends its close
/// right after the request, and still prints the answer that a program
/// behind `serve --exec` gives after it (its close is answered once the
/// program has exited, with the code its exit status maps to).
#[test]
fn a_one_shot_pipe_prints_the_answer_that_comes_after_its_close() {
    let dir = tempfile::tempdir().unwrap();
    let cat = dir.path().join("cat.sock");
    let _cat = serve_exec(&cat, &["cat"]);
    let out = connect(&[&ws_unix(&cat)], "ping\n", None);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "ping\n");

    // The answer comes 0.3 s after the request (and the client's close).
    let slow = dir.path().join("slow.sock");
    let mut cmd = unixws();
    cmd.arg("serve").arg(&slow).args([
        "--exec-grace",
        "5s",
        "--exec",
        "sh",
        "-c",
        "read x; sleep 0.3; echo got $x",
    ]);
    let _slow = Process::spawn(&mut cmd);
    assert!(wait_until(T, || slow.exists()));
    let out = connect(&[&ws_unix(&slow)], "ping\n", None);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "got ping\n");
}

/// After the client's close, the program's exit status still decides the
/// close code, and one that outlives `--exec-grace` is ended: what it
/// printed in time is delivered, then 1011 with the signal.
#[test]
fn after_the_clients_close_the_exit_status_is_the_close_code_and_grace_bounds_it() {
    let dir = tempfile::tempdir().unwrap();
    let failing = dir.path().join("failing.sock");
    let _failing = serve_exec(&failing, &["sh", "-c", "read x; echo got $x; exit 3"]);
    let out = connect(&[&ws_unix(&failing)], "ping\n", None);
    assert_eq!(stdout(&out), "got ping\n");
    assert_one_line_error(
        &out,
        "the server closed the connection with code 1011: process exited with status 3",
    );

    let lingering = dir.path().join("lingering.sock");
    let _lingering = serve_exec(
        &lingering,
        &["sh", "-c", "read x; echo first; exec sleep 30"],
    );
    let out = connect(&[&ws_unix(&lingering)], "ping\n", None);
    assert_eq!(stdout(&out), "first\n");
    assert_one_line_error(
        &out,
        "the server closed the connection with code 1011: process killed by signal 15",
    );
}

/// Needs root: the proxy runs as uid 65534, the trusted uid, so that the
/// test (root) can be a direct client that is not trusted. A direct client
/// that forges `X-Unixws-Peer-Uid` is not believed (its own uid counts, and
/// the program never sees the header); the same client through the proxy
/// is (the proxy's word replaces the proxy's own uid).
#[test]
fn forwarded_identity_is_believed_only_from_the_trusted_proxy_uid() {
    require_root("the trusted proxy runs as uid 65534, apart from the test's root client");
    let dir = shared_tempdir();
    let backend = dir.path().join("backend.sock");
    let mut cmd = unixws();
    cmd.arg("serve").arg(&backend).args([
        "--mode",
        "666",
        "--trust-proxy-uid",
        "65534",
        "--allow-uid",
        "0",
        "--exec",
        "sh",
        "-c",
        "echo uid=$UNIXWS_PEER_UID forged=$HTTP_X_UNIXWS_PEER_UID",
    ]);
    let _backend = Process::spawn(&mut cmd);
    assert!(wait_until(T, || backend.exists()));
    let forged = [
        "-H",
        "X-Unixws-Peer-Uid: 4242",
        "-H",
        "X-Unixws-Peer-Gid: 4242",
    ];

    let mut args = forged.to_vec();
    let url = ws_unix(&backend);
    args.push(&url);
    let direct = connect(&args, "", None);
    assert_eq!(
        stdout(&direct),
        "uid=0 forged=\n",
        "stderr: {}",
        stderr(&direct)
    );

    // The proxy, as uid 65534, listens in a directory of its own.
    let own = dir.path().join("proxy");
    std::fs::create_dir(&own).unwrap();
    std::os::unix::fs::chown(&own, Some(NOBODY), Some(NOBODY)).unwrap();
    let front = own.join("front.sock");
    let mut proxy = unixws_as_nobody(dir.path());
    proxy
        .arg("proxy")
        .arg("--listen")
        .arg(&front)
        .arg("--to")
        .arg(&url);
    let _proxy = Process::spawn(&mut proxy);
    assert!(wait_until(T, || front.exists()), "the proxy did not start");
    let mut args = forged.to_vec();
    let front_url = ws_unix(&front);
    args.push(&front_url);
    let proxied = connect(&args, "", None);
    assert_eq!(
        stdout(&proxied),
        "uid=0 forged=0\n",
        "the proxy's word (root's real uid) replaces both the forgery and its own uid; stderr: {}",
        stderr(&proxied)
    );
}
