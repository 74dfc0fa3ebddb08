//! Binding a server socket the way trusted daemons do.
//!
//! For a socket file:
//! - an existing socket is probed with a connect: refused means stale (it is
//!   replaced), accepted means another server is live ("address in use");
//! - anything else at the path (regular file, directory, symbolic link) is
//!   never removed;
//! - the socket is bound under a temporary name in the same directory, given
//!   its mode and owner, and only then put into `listen` state and renamed
//!   into place, so no client can ever connect under looser permissions than
//!   asked (the process umask is never touched);
//! - the probe, bind and rename run under an advisory lock (`flock`) on
//!   `PATH.lock`, so that of two servers started at once on one path exactly
//!   one binds and the other gets "address in use" (without it both could
//!   pass the probe, and the later rename would silently take the path from
//!   the earlier server). The lock file exists only while a server binds:
//!   a stopped or hung holder makes the next server give up after 10 s
//!   with an error that says so;
//! - on drop the file is removed, but only if the path still holds the inode
//!   this listener created, so a newer server's socket survives.
//!
//! Abstract-namespace sockets have no file and no permissions; pair them with
//! an [`AccessPolicy`](crate::AccessPolicy).

use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{self as nixsock, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};

use crate::addr::{Address, Endpoint, MAX_UNIX_PATH_LEN};
use crate::error::{BindStep, Error, Result};
use crate::peer::Peer;
use crate::stream::Socket;

/// How to create a socket file. Ignored fields keep the OS defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BindOptions {
    /// Permission bits of the socket file, e.g. `0o660` (default: umask default).
    /// Connecting needs write permission on the socket.
    pub mode: Option<u32>,
    /// Owner uid of the socket file (default: the process's). Changing it needs root.
    pub owner: Option<u32>,
    /// Group gid of the socket file (default: the process's).
    pub group: Option<u32>,
    /// Length of the kernel's queue of not-yet-accepted connections (default: 1024).
    pub backlog: i32,
}

impl Default for BindOptions {
    fn default() -> Self {
        Self {
            mode: None,
            owner: None,
            group: None,
            backlog: 1024,
        }
    }
}

impl BindOptions {
    /// Options with the OS defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the file mode, in octal: `0o660`. A mode with bits outside
    /// `0o777` (a decimal `660` is `0o1224`) makes the bind fail with
    /// [`Error::InvalidOption`] before anything is created.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Set the owner uid.
    pub fn owner(mut self, uid: u32) -> Self {
        self.owner = Some(uid);
        self
    }

    /// Set the group gid.
    pub fn group(mut self, gid: u32) -> Self {
        self.group = Some(gid);
        self
    }

    /// A mode with bits outside `0o777` is a slip, most often a decimal
    /// `660` (which is `0o1224`): setuid, setgid and sticky mean nothing on
    /// a socket, so it is refused rather than applied.
    fn check_mode(&self) -> Result<()> {
        match self.mode {
            Some(mode) if mode & !0o777 != 0 => {
                let hint = if mode <= 777 && format!("{mode}").chars().all(|c| c <= '7') {
                    format!("; write it in octal: 0o{mode}")
                } else {
                    "; give permission bits in octal, such as 0o660 or 0o600".to_string()
                };
                Err(Error::invalid(
                    "BindOptions::mode",
                    format!("{mode} (0o{mode:o}) has bits outside 0o777{hint}"),
                ))
            }
            _ => Ok(()),
        }
    }

    fn touches_file(&self) -> bool {
        self.mode.is_some() || self.owner.is_some() || self.group.is_some()
    }
}

/// A bound, listening server socket (Unix path, abstract, or TCP).
#[derive(Debug)]
pub struct Listener {
    kind: ListenerKind,
    addr: Address,
    // Declared after `kind` so that the socket closes before its file goes.
    file: Option<SocketFile>,
}

#[derive(Debug)]
pub(crate) enum ListenerKind {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    /// Bind and listen on `addr`.
    pub fn bind(addr: &Address, options: &BindOptions) -> Result<Self> {
        match addr.endpoint() {
            Endpoint::Path(path) => {
                options.check_mode()?;
                let (listener, file) = bind_path(addr, path, options)?;
                Ok(Self {
                    kind: ListenerKind::Unix(listener),
                    addr: addr.clone(),
                    file: Some(file),
                })
            }
            Endpoint::Abstract(name) => {
                no_file_options(addr, options, "abstract sockets have no file")?;
                let sa = crate::sys::abstract_address(name.as_bytes())
                    .map_err(|e| bind_error(addr, e))?;
                let listener = UnixListener::bind_addr(&sa).map_err(|e| bind_error(addr, e))?;
                Ok(Self {
                    kind: ListenerKind::Unix(listener),
                    addr: addr.clone(),
                    file: None,
                })
            }
            Endpoint::Tcp { host, port } => {
                no_file_options(addr, options, "TCP sockets have no file")?;
                let listener =
                    TcpListener::bind((host.as_str(), *port)).map_err(|e| bind_error(addr, e))?;
                // Report the real port when the OS picked one (port 0).
                let local = listener.local_addr().map_err(|e| bind_error(addr, e))?;
                let addr = Address::new(
                    Endpoint::Tcp {
                        host: local.ip().to_string(),
                        port: local.port(),
                    },
                    addr.resource(),
                )?;
                Ok(Self {
                    kind: ListenerKind::Tcp(listener),
                    addr,
                    file: None,
                })
            }
        }
    }

    /// A listener over a socket someone else bound (systemd): no file of
    /// ours to remove.
    pub(crate) fn adopted(kind: ListenerKind, addr: Address) -> Self {
        Self {
            kind,
            addr,
            file: None,
        }
    }

    /// The address this listener serves (for TCP, with the real port).
    pub fn local_addr(&self) -> &Address {
        &self.addr
    }

    /// Accept one connection and find out who it is.
    pub fn accept(&self) -> io::Result<(Socket, Peer)> {
        let socket = match &self.kind {
            ListenerKind::Unix(l) => {
                let (s, _) = l.accept()?;
                crate::sys::widen_send_buffer(s.as_fd());
                Socket::Unix(s)
            }
            ListenerKind::Tcp(l) => Socket::Tcp(l.accept()?.0),
        };
        let peer = socket.peer()?;
        Ok((socket, peer))
    }

    /// Switch non-blocking mode on the listening socket.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match &self.kind {
            ListenerKind::Unix(l) => l.set_nonblocking(on),
            ListenerKind::Tcp(l) => l.set_nonblocking(on),
        }
    }

    /// True when the path still holds this listener's socket file (false for
    /// abstract and TCP listeners).
    pub fn owns_socket_file(&self) -> bool {
        self.file.as_ref().is_some_and(SocketFile::still_ours)
    }
}

/// A bound socket as std has it, for a front end that takes the listener
/// over (the tokio server).
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub(crate) enum StdListener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// Removes a listener's socket file when dropped, if the path still
/// holds that file (see [`Listener`]), after the socket itself has been
/// taken elsewhere: [`Listener::into_unix`] and, with the `tokio` feature,
/// [`Listener::into_tokio_unix`]. Keep it for as long as the socket serves.
#[derive(Debug)]
#[must_use = "dropping the guard removes the socket file at once"]
pub struct SocketFileGuard {
    _file: Option<SocketFile>,
}

impl Listener {
    /// The listening Unix socket as std's `UnixListener`, for servers that
    /// take one (hyper, or a loop of your own), with the guard that removes
    /// the socket file: the socket keeps its mode, owner and stale-file
    /// handling from [`bind`](Listener::bind). Fails on a TCP listener.
    ///
    /// ```
    /// # fn main() -> unixws::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("app.sock");
    /// let addr = unixws::Address::unix(&path)?;
    /// let listener = unixws::Listener::bind(&addr, &unixws::BindOptions::new().mode(0o600))?;
    /// let (std_listener, guard) = listener.into_unix()?;
    /// # drop(std_listener);
    /// drop(guard); // the socket file goes with it
    /// # assert!(!path.exists());
    /// # Ok(())
    /// # }
    /// ```
    pub fn into_unix(self) -> Result<(UnixListener, SocketFileGuard)> {
        match self.kind {
            ListenerKind::Unix(l) => Ok((l, SocketFileGuard { _file: self.file })),
            ListenerKind::Tcp(_) => Err(Error::invalid(
                "Listener::into_unix",
                format!(
                    "{} is a TCP listener; bind a Unix socket address",
                    self.addr.endpoint_display()
                ),
            )),
        }
    }
}

#[cfg(feature = "tokio")]
impl Listener {
    /// [`into_unix`](Listener::into_unix), registered with the current tokio
    /// runtime: for axum's `serve`, hyper-util, or `tokio::net` code. Needs
    /// a runtime ([`Error::NoRuntime`] otherwise).
    pub fn into_tokio_unix(self) -> Result<(tokio::net::UnixListener, SocketFileGuard)> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime {
                call: "Listener::into_tokio_unix",
            });
        }
        let addr = self.addr.endpoint_display();
        let (listener, guard) = self.into_unix()?;
        let listener = listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixListener::from_std(listener))
            .map_err(|e| Error::Bind {
                addr,
                step: BindStep::Listen,
                source: e,
            })?;
        Ok((listener, guard))
    }
}

#[cfg(feature = "tokio")]
impl Listener {
    /// The socket, its address, and the guard of its file: whoever holds
    /// the guard removes the file when it drops it. The socket is made
    /// non-blocking.
    pub(crate) fn into_parts(self) -> io::Result<(StdListener, Address, SocketFileGuard)> {
        self.set_nonblocking(true)?;
        let socket = match self.kind {
            ListenerKind::Unix(l) => StdListener::Unix(l),
            ListenerKind::Tcp(l) => StdListener::Tcp(l),
        };
        Ok((socket, self.addr, SocketFileGuard { _file: self.file }))
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.kind {
            ListenerKind::Unix(l) => l.as_fd(),
            ListenerKind::Tcp(l) => l.as_fd(),
        }
    }
}

/// What a path holds, in words, when it is not a socket (`None` for a
/// socket): for the errors of binding and of connecting.
pub(crate) fn non_socket_kind(ft: &fs::FileType) -> Option<&'static str> {
    Some(if ft.is_socket() {
        return None;
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_file() {
        "a regular file"
    } else if ft.is_fifo() {
        "a FIFO"
    } else {
        "a device or other special file"
    })
}

fn bind_error(addr: &Address, source: io::Error) -> Error {
    Error::Bind {
        addr: addr.endpoint_display(),
        step: BindStep::Listen,
        source,
    }
}

fn no_file_options(addr: &Address, options: &BindOptions, why: &str) -> Result<()> {
    if options.touches_file() {
        return Err(Error::invalid(
            "BindOptions::mode/owner/group",
            format!(
                "{} has no socket file to apply them to ({why}); restrict access with an AccessPolicy instead",
                addr.endpoint_display()
            ),
        ));
    }
    Ok(())
}

/// Remembers which inode this listener created, to remove only that one.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn still_ours(&self) -> bool {
        fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino && m.file_type().is_socket())
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if self.still_ours() {
            if let Err(e) = fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "could not remove socket file");
            }
        } else {
            tracing::info!(path = %self.path.display(), "socket file was replaced or removed by someone else; leaving it alone");
        }
    }
}

/// What is at the bind path before we bind.
enum Existing {
    Nothing,
    StaleSocket,
}

fn inspect_existing(addr: &Address, path: &Path) -> Result<Existing> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(e) => return Err(bind_error(addr, e)),
    };
    let Some(kind) = non_socket_kind(&meta.file_type()) else {
        return match UnixStream::connect(path) {
            Ok(_) => Err(Error::AddressInUse {
                path: path.to_path_buf(),
            }),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(Existing::StaleSocket),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Existing::Nothing),
            // A full backlog (EAGAIN) still means someone is listening.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(Error::AddressInUse {
                path: path.to_path_buf(),
            }),
            Err(e) => Err(bind_error(addr, e)),
        };
    };
    Err(Error::NotASocket {
        path: path.to_path_buf(),
        kind,
    })
}

fn bind_path(
    addr: &Address,
    path: &Path,
    options: &BindOptions,
) -> Result<(UnixListener, SocketFile)> {
    let _lock = BindLock::take(addr, path)?;
    let existing = inspect_existing(addr, path)?;
    let staging = staging_path(path);
    let fd = nixsock::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| bind_error(addr, e.into()))?;

    // Bind under the staging name when it fits in sun_path; otherwise bind
    // the final name directly (after removing a stale file), which is still
    // safe: nobody can connect before listen().
    let bound_at = match &staging {
        Some(tmp) => tmp.as_path(),
        None => {
            if matches!(existing, Existing::StaleSocket) {
                remove_stale(addr, path)?;
            }
            path
        }
    };
    let ua = UnixAddr::new(bound_at).map_err(|e| bind_error(addr, e.into()))?;
    nixsock::bind(fd.as_raw_fd(), &ua).map_err(|e| bind_error(addr, e.into()))?;
    // From here on the file at `bound_at` is ours: remove it if a later step fails.
    let result = (|| {
        apply_file_options(addr, bound_at, options)?;
        let backlog = Backlog::new(options.backlog).unwrap_or(Backlog::MAXCONN);
        nixsock::listen(&fd, backlog).map_err(|e| bind_error(addr, e.into()))?;
        if let Some(tmp) = &staging {
            // Look again: another server may have started since the probe.
            inspect_existing(addr, path)?;
            fs::rename(tmp, path).map_err(|e| bind_error(addr, e))?;
        }
        let meta = fs::symlink_metadata(path).map_err(|e| bind_error(addr, e))?;
        Ok(SocketFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    })();
    match result {
        Ok(file) => Ok((UnixListener::from(fd), file)),
        Err(e) => {
            let _ = fs::remove_file(bound_at);
            Err(e)
        }
    }
}

/// The advisory lock on `PATH.lock` held while a socket file is probed,
/// bound and renamed into place. Its holder removes the file before
/// letting go; a process that was waiting on the removed file sees that
/// the path no longer names what it locked, and tries again.
struct BindLock {
    path: PathBuf,
    _file: fs::File,
}

impl BindLock {
    /// How long a server waits for another one's bind to finish (it takes
    /// milliseconds; only a stopped or hung process holds it longer).
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

    fn take(addr: &Address, socket: &Path) -> Result<BindLock> {
        let mut name = socket.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let failed = |source: io::Error| Error::Bind {
            addr: addr.endpoint_display(),
            step: BindStep::Lock,
            source,
        };
        let deadline = std::time::Instant::now() + Self::PATIENCE;
        loop {
            use std::os::unix::fs::OpenOptionsExt;
            let file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(failed)?;
            if crate::sys::try_lock_exclusive(&file).map_err(failed)? {
                // Still the file at the path? Its last holder may have
                // removed it between our open and our lock.
                let held = file.metadata().map_err(failed)?;
                let same = fs::symlink_metadata(&path)
                    .is_ok_and(|m| m.dev() == held.dev() && m.ino() == held.ino());
                if same {
                    return Ok(BindLock { path, _file: file });
                }
                continue;
            }
            if std::time::Instant::now() >= deadline {
                return Err(failed(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} has been locked by another process for {} s",
                        path.display(),
                        Self::PATIENCE.as_secs()
                    ),
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

impl Drop for BindLock {
    fn drop(&mut self) {
        // Removed while still locked (the file closes after this), so
        // nobody can lock a file that is about to vanish and think it won.
        let _ = fs::remove_file(&self.path);
    }
}

fn remove_stale(addr: &Address, path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(bind_error(addr, e)),
    }
}

/// `dir/.name.XXXXXX` next to `path`, or `None` if it would not fit in sun_path.
fn staging_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_string_lossy();
    let tag: String = (0..6).map(|_| fastrand::alphanumeric()).collect();
    let staged = path.with_file_name(format!(".{name}.{tag}"));
    (staged.as_os_str().len() <= MAX_UNIX_PATH_LEN).then_some(staged)
}

fn apply_file_options(addr: &Address, path: &Path, options: &BindOptions) -> Result<()> {
    if options.owner.is_some() || options.group.is_some() {
        std::os::unix::fs::chown(path, options.owner, options.group).map_err(|e| Error::Bind {
            addr: addr.endpoint_display(),
            step: BindStep::Owner,
            source: e,
        })?;
    }
    if let Some(mode) = options.mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| Error::Bind {
            addr: addr.endpoint_display(),
            step: BindStep::Mode,
            source: e,
        })?;
    }
    Ok(())
}
