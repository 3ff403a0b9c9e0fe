//! Same-host coordination: exactly one primary instance per application and user.
//!
//! # What this module owns, and what it must not touch
//!
//! `cohort::local` owns everything about running a program once per user on one
//! machine: the election of the primary, the per-application runtime directory
//! (`$XDG_RUNTIME_DIR/<app>/` or its fallback) with its `lock` file and `socket`,
//! the abstract socket name in filesystem-free mode, the frame format spoken on
//! that socket, and the server thread a primary runs. It does not depend on the
//! network chart and must not touch it (no multicast, no IP sockets, no shared
//! state); it touches no file outside its runtime directory.
//!
//! ```no_run
//! use cohort::local::{Reply, Role, SingleInstance};
//!
//! # async fn open_files(_: &[std::ffi::OsString], _: Option<&std::path::Path>) -> Reply { Reply::ok() }
//! # async fn run() -> Result<(), cohort::local::Error> {
//! match SingleInstance::new("org.example.editor").acquire().await? {
//!     Role::Primary(primary) => {
//!         // serve requests from later launches while the app runs
//!         while let Some(req) = primary.next_request().await {
//!             let answer = open_files(req.args(), req.cwd()).await;
//!             req.reply(answer).await?;
//!         }
//!     }
//!     Role::Secondary(secondary) => {
//!         let reply = secondary.forward_args().await?; // argv + cwd
//!         std::process::exit(reply.status());
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Design
//!
//! **Election by `flock`.** Every launch opens `<dir>/lock` (created `0600`,
//! close-on-exec, never following a symlink) and tries a non-blocking exclusive
//! `flock` ([`std::fs::File::try_lock`]). The kernel releases that lock the
//! instant its holder dies, however it dies (SIGKILL, crash, OOM kill), so there
//! is never a stale lock to clean up, and two launches can never both hold it.
//! The lock file itself is never deleted. Close-on-exec keeps the lock out of
//! programs the primary starts; a child that is only forked (no exec) shares the
//! open file and so keeps the lock until it exits too.
//!
//! **Inode recheck.** After locking, the inode of the open file is compared with
//! the inode the path names now. If the file was deleted or replaced between
//! opening and locking (a temp cleaner, a user), the lock is on an orphan and
//! does not count: the launch drops it and tries again. Without this, a launch
//! that opened the old file and one that created the new file could both win.
//!
//! **Socket beside the lock.** Only the lock holder touches `<dir>/socket`: it
//! tries to connect to any socket already there; if nobody is listening (refused)
//! the socket is stale and is removed, then the holder binds a fresh one. If
//! somebody *is* listening, a primary whose lock file was deleted from under it
//! is still alive, and the launch stands back instead of becoming a second
//! primary. Secondaries never remove anything.
//!
//! **Backoff, never a hang.** A launch that loses the lock connects to the
//! socket. If there is no socket yet, or the connection is refused, or the
//! primary greets with "shutting down", the primary is starting or stopping: the
//! launch backs off (0.5 ms doubling to 20 ms, with jitter) and retries the lock
//! and the socket until its deadline ([`SingleInstance::timeout`]). Only a lock
//! that can be taken means the primary is gone, so a slow primary is never
//! mistaken for a dead one; a primary that accepts but never greets (stopped with
//! SIGSTOP, frozen) makes the launch fail at its deadline with
//! [`Error::PrimaryUnresponsive`]. Replies are bounded by
//! [`SingleInstance::reply_timeout`].
//!
//! **Peer credentials on both sides.** The primary reads each connection's
//! `SO_PEERCRED` and closes, with a logged warning, any connection from another
//! uid; the secondary reads the listening process's credentials and refuses
//! ([`Error::ForeignPrimary`]) a primary of another uid. Both are kernel facts,
//! not message contents. In the per-user scope the directory is also `0700`.
//!
//! **Frames.** Every message is a 4-byte big-endian length, a version byte and a
//! postcard body ([`MAX_FRAME`] at most). An oversized, truncated, garbled,
//! wrongly versioned or over-long frame is a [`FrameError`]: it closes that one
//! connection with a `tracing` warning and never disturbs the primary's other
//! connections.
//!
//! **Hand-over.** Dropping a [`Primary`] stops its server thread, removes its
//! socket while still holding the lock, then releases the lock. Secondaries
//! waiting in [`SingleInstance::acquire_or_wait`] hold a connection open and
//! wake as soon as it ends (also when the primary is killed), then take the lock.
//!
//! **Scopes.** [`Scope::User`] (the default): one primary per application and
//! user, in `$XDG_RUNTIME_DIR/<app>/`, or `<tmp>/cohort-<uid>/<app>/` when that
//! variable is unset or unusable; those directories are created `0700` and
//! refused unless owned by this user, mode `0700` and not a symlink.
//! [`Scope::System`]: one primary per application for the whole machine, in
//! `<tmp>/cohort-system/<app>/` (mode `1777`, sticky, so users cannot remove each
//! other's files); each user's primary binds `socket.<uid>` and writes that name
//! in the lock file for secondaries to read. Every local user is trusted in this
//! scope: any of them can become the primary, and every uid may connect
//! ([`Request::uid`] says who did). Use it only for such machine-wide services.
//!
//! **Filesystem-free mode** ([`SingleInstance::abstract_namespace`], Linux only).
//! The endpoint is the abstract socket `@cohort/<uid>/<app>`, and binding it *is*
//! the election: the kernel allows one listener per name and frees it the instant
//! the process dies, so no lock file is needed. Abstract names have no
//! permissions, so anyone could bind ours first; peer credentials are therefore
//! mandatory and a squatter is refused with [`Error::ForeignPrimary`]. The
//! abstract namespace belongs to the **network namespace**, not the filesystem:
//! two processes in different network namespaces (containers, `unshare --net`)
//! each get a primary, and two sandboxes sharing the host network share one.
//!
//! **Other systems.** Nothing here depends on Linux beyond what is named: macOS
//! has `flock` and Unix sockets (peer credentials via `getpeereid`/`LOCAL_PEERCRED`,
//! directory under `$TMPDIR`, no abstract namespace); Windows would take the
//! election with a named mutex or `LockFileEx` on a file in `%LOCALAPPDATA%`
//! and use a named pipe with `GetNamedPipeClientProcessId` and the client's SID
//! in place of the socket and `SO_PEERCRED`. Those back-ends would sit behind the
//! same [`SingleInstance`], [`Primary`] and [`Secondary`] types, which expose
//! nothing Linux-specific. Today the module is built and tested on Linux only:
//! it uses `std::os::unix`, so it does not build on Windows, and on other Unix
//! systems abstract mode returns an `Unsupported` error.

use std::ffi::OsString;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

mod dir;
mod error;
mod frame;
mod primary;
mod secondary;

pub use error::Error;
pub use frame::{FrameError, MAX_FRAME};
pub use primary::{Primary, Request};
pub use secondary::{Forward, Reply, Secondary};

use frame::{ToPrimary, ToSecondary};

/// Who may share one primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Scope {
    /// One primary per application and user (the default).
    #[default]
    User,
    /// One primary per application for the whole machine; every local user is
    /// trusted (see the module documentation).
    System,
}

/// The outcome of an election: this process is the primary, or a secondary that
/// can forward to it.
#[derive(Debug)]
pub enum Role {
    /// This process is the one running instance.
    Primary(Primary),
    /// Another process is the primary; forward to it.
    Secondary(Secondary),
}

/// The outcome of a blocking election.
#[derive(Debug)]
pub enum BlockingRole {
    /// This process is the one running instance.
    Primary(Primary),
    /// Another process is the primary; forward to it.
    Secondary(BlockingSecondary),
}

/// A [`Secondary`] for programs without an async runtime; it carries a small
/// private runtime. Must not be used from inside an async runtime.
#[derive(Debug)]
pub struct BlockingSecondary {
    inner: Secondary,
    runtime: tokio::runtime::Runtime,
}

impl BlockingSecondary {
    /// The primary's process id.
    pub fn primary_pid(&self) -> i32 {
        self.inner.primary_pid()
    }

    /// Blocking form of [`Secondary::forward_args`].
    pub fn forward_args(self) -> Result<Reply, Error> {
        let BlockingSecondary { inner, runtime } = self;
        runtime.block_on(inner.forward_args())
    }

    /// Blocking form of [`Secondary::forward`].
    pub fn forward(self, message: Forward) -> Result<Reply, Error> {
        let BlockingSecondary { inner, runtime } = self;
        runtime.block_on(inner.forward(message))
    }
}

/// Configures and runs the election for one application id.
///
/// ```no_run
/// use std::time::Duration;
/// use cohort::local::{BlockingRole, Reply, SingleInstance};
///
/// let instance = SingleInstance::new("org.example.tray")
///     .timeout(Duration::from_secs(2))
///     .forward_env(["DISPLAY", "WAYLAND_DISPLAY"]);
/// match instance.acquire_blocking()? {
///     BlockingRole::Primary(primary) => {
///         while let Some(request) = primary.next_request_blocking() {
///             request.reply_blocking(Reply::ok())?;
///         }
///     }
///     BlockingRole::Secondary(secondary) => {
///         std::process::exit(secondary.forward_args()?.status());
///     }
/// }
/// # Ok::<(), cohort::local::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct SingleInstance {
    app: String,
    scope: Scope,
    abstract_ns: bool,
    runtime_dir: Option<PathBuf>,
    timeout: Duration,
    reply_timeout: Duration,
    env: Vec<OsString>,
}

/// Default for [`SingleInstance::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default for [`SingleInstance::reply_timeout`].
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

impl SingleInstance {
    /// An election for `app_id` (1 to 64 characters from `A-Z a-z 0-9 . _ -`,
    /// checked when acquiring), per user, with a filesystem endpoint.
    pub fn new(app_id: impl Into<String>) -> Self {
        SingleInstance {
            app: app_id.into(),
            scope: Scope::User,
            abstract_ns: false,
            runtime_dir: None,
            timeout: DEFAULT_TIMEOUT,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
            env: Vec::new(),
        }
    }

    /// Chooses who shares one primary (default [`Scope::User`]).
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Uses a Linux abstract socket instead of files (no runtime directory is
    /// needed). Its scope follows the network namespace; see the module docs.
    pub fn abstract_namespace(mut self, on: bool) -> Self {
        self.abstract_ns = on;
        self
    }

    /// Uses `dir` instead of `$XDG_RUNTIME_DIR` (per-user scope: the
    /// application's directory is created in it, `0700`; system scope: `dir`
    /// itself must be sticky).
    pub fn runtime_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.runtime_dir = Some(dir.into());
        self
    }

    /// The longest an `acquire` may take to find the primary or become it
    /// (default 3 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest a forwarded request waits for its reply (default 30 s).
    pub fn reply_timeout(mut self, timeout: Duration) -> Self {
        self.reply_timeout = timeout;
        self
    }

    /// Environment variables that [`Secondary::forward_args`] forwards when set
    /// (none by default).
    pub fn forward_env<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.env = names.into_iter().map(Into::into).collect();
        self
    }

    /// Becomes the primary, or finds the live primary, before [`Self::timeout`].
    pub async fn acquire(&self) -> Result<Role, Error> {
        let plan = self.plan()?;
        let start = Instant::now();
        let deadline = start + self.timeout;
        let mut backoff = Backoff::new();
        let mut last = String::new();
        loop {
            if let Some(primary) = self.try_primary(&plan).await? {
                return Ok(Role::Primary(primary));
            }
            last = match self.try_secondary(&plan, deadline).await? {
                Reach::Greeted(secondary) => return Ok(Role::Secondary(secondary)),
                Reach::NotYet(why) => why,
                // Silent from the first attempt on: frozen or overloaded. After
                // earlier answers (starting, stopping), the deadline simply ran
                // out on the way: report what stood in the way.
                Reach::Silent(pid) if last.is_empty() => {
                    return Err(Error::PrimaryUnresponsive {
                        pid,
                        waited: start.elapsed(),
                    });
                }
                Reach::Silent(_) => format!("{last}; then no greeting before the deadline"),
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    waited: now - start,
                    last,
                });
            }
            tokio::time::sleep(backoff.next().min(deadline - now)).await;
        }
    }

    /// Becomes the primary, waiting up to `max_wait` for the current primary to
    /// exit (however it exits) if there is one.
    ///
    /// While waiting, it holds a connection to the primary and wakes the moment
    /// that connection ends, so a killed primary is replaced within milliseconds.
    pub async fn acquire_or_wait(&self, max_wait: Duration) -> Result<Primary, Error> {
        let plan = self.plan()?;
        let start = Instant::now();
        let deadline = start + max_wait;
        let mut backoff = Backoff::new();
        loop {
            if let Some(primary) = self.try_primary(&plan).await? {
                return Ok(primary);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    waited: now - start,
                    last: "the primary is still running".into(),
                });
            }
            match self.watch(&plan, deadline).await? {
                Watched::Ended => {
                    backoff = Backoff::new();
                    continue;
                }
                Watched::Short => {}
            }
            let now = Instant::now();
            tokio::time::sleep(backoff.next().min(deadline.saturating_duration_since(now))).await;
        }
    }

    /// Blocking form of [`SingleInstance::acquire`]. Must not be called from
    /// inside an async runtime.
    pub fn acquire_blocking(&self) -> Result<BlockingRole, Error> {
        let runtime = blocking_runtime()?;
        Ok(match runtime.block_on(self.acquire())? {
            Role::Primary(p) => BlockingRole::Primary(p),
            Role::Secondary(inner) => BlockingRole::Secondary(BlockingSecondary { inner, runtime }),
        })
    }

    /// Blocking form of [`SingleInstance::acquire_or_wait`]. Must not be called
    /// from inside an async runtime.
    pub fn acquire_or_wait_blocking(&self, max_wait: Duration) -> Result<Primary, Error> {
        blocking_runtime()?.block_on(self.acquire_or_wait(max_wait))
    }

    fn plan(&self) -> Result<Plan, Error> {
        validate_app(&self.app)?;
        let me = dir::euid();
        let required_uid = match self.scope {
            Scope::User => Some(me),
            Scope::System => None,
        };
        let kind = if self.abstract_ns {
            let name = match self.scope {
                Scope::User => format!("cohort/{me}/{}", self.app),
                Scope::System => format!("cohort/system/{}", self.app),
            };
            PlanKind::Abstract { name }
        } else {
            let (dir, shared) = match self.scope {
                Scope::User => (
                    dir::user_dir(&self.app, self.runtime_dir.as_deref())?,
                    false,
                ),
                Scope::System => (
                    dir::system_dir(&self.app, self.runtime_dir.as_deref())?,
                    true,
                ),
            };
            let own_socket = dir.join(if shared {
                format!("socket.{me}")
            } else {
                "socket".to_string()
            });
            let len = own_socket.as_os_str().len();
            if len > 107 {
                return Err(Error::PathTooLong {
                    path: own_socket,
                    len,
                });
            }
            PlanKind::Files {
                lock: dir.join("lock"),
                dir,
                own_socket,
                shared,
            }
        };
        Ok(Plan { kind, required_uid })
    }

    /// One attempt at becoming primary; `None` if another process is primary.
    async fn try_primary(&self, plan: &Plan) -> Result<Option<Primary>, Error> {
        match &plan.kind {
            PlanKind::Abstract { name } => {
                let addr = abstract_addr(name).map_err(|source| Error::Bind {
                    endpoint: format!("@{name}"),
                    source,
                })?;
                match StdUnixListener::bind_addr(&addr) {
                    Ok(listener) => {
                        let config = primary::ServerConfig {
                            required_uid: plan.required_uid,
                            endpoint: format!("@{name}"),
                        };
                        Primary::start(listener, config, None, None).map(Some)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(None),
                    Err(source) => Err(Error::Bind {
                        endpoint: format!("@{name}"),
                        source,
                    }),
                }
            }
            PlanKind::Files {
                lock,
                own_socket,
                shared,
                ..
            } => {
                // A replaced lock file is retried at once; a few times is plenty.
                let mut held = None;
                for _ in 0..8 {
                    match dir::try_lock(lock, *shared)? {
                        dir::LockAttempt::Won(file) => {
                            held = Some(file);
                            break;
                        }
                        dir::LockAttempt::Busy => return Ok(None),
                        dir::LockAttempt::Replaced => continue,
                    }
                }
                let Some(mut file) = held else {
                    return Ok(None);
                };
                // Only the holder gets here. A socket nobody listens on is stale.
                match UnixStream::connect(own_socket).await {
                    Ok(_) => {
                        tracing::warn!(
                            socket = %own_socket.display(),
                            "a primary is listening although this process holds the lock (its lock file was removed?); standing back"
                        );
                        return Ok(None);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(_) => {
                        let _ = std::fs::remove_file(own_socket);
                    }
                }
                let endpoint = own_socket.display().to_string();
                let listener = StdUnixListener::bind(own_socket).map_err(|source| Error::Bind {
                    endpoint: endpoint.clone(),
                    source,
                })?;
                if *shared {
                    use std::io::Write;
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(
                        own_socket,
                        std::fs::Permissions::from_mode(0o666),
                    );
                    let name = own_socket
                        .file_name()
                        .unwrap_or_default()
                        .as_encoded_bytes();
                    let written = file.set_len(0).and_then(|()| {
                        use std::io::Seek;
                        file.seek(std::io::SeekFrom::Start(0))?;
                        file.write_all(name)
                    });
                    if let Err(source) = written {
                        let _ = std::fs::remove_file(own_socket);
                        return Err(Error::Lock {
                            path: lock.clone(),
                            source,
                        });
                    }
                }
                let config = primary::ServerConfig {
                    required_uid: plan.required_uid,
                    endpoint,
                };
                Primary::start(listener, config, Some(own_socket.clone()), Some(file)).map(Some)
            }
        }
    }

    /// Connects to the current primary's endpoint and checks who serves it.
    async fn connect(&self, plan: &Plan, deadline: Instant) -> Result<Connected, Error> {
        let target = match &plan.kind {
            PlanKind::Abstract { name } => {
                let mut p = OsString::from("\0");
                p.push(name);
                PathBuf::from(p)
            }
            PlanKind::Files {
                dir, lock, shared, ..
            } => {
                if *shared {
                    match std::fs::read(lock) {
                        Ok(name) if !name.is_empty() && !name.contains(&b'/') => {
                            dir.join(std::ffi::OsStr::from_bytes(&name))
                        }
                        _ => {
                            return Ok(Connected::NotYet(
                                "the primary has not published its socket yet".into(),
                            ));
                        }
                    }
                } else {
                    dir.join("socket")
                }
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let stream = match tokio::time::timeout(remaining, UnixStream::connect(&target)).await {
            Err(_) => return Ok(Connected::NotYet("connecting took too long".into())),
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                let why = match e.kind() {
                    std::io::ErrorKind::NotFound => "no endpoint yet (the primary is starting)",
                    std::io::ErrorKind::ConnectionRefused => {
                        "the endpoint refused the connection (the primary is starting or stopping)"
                    }
                    std::io::ErrorKind::WouldBlock => "the primary's connection queue is full",
                    _ => "connecting to the primary failed",
                };
                return Ok(Connected::NotYet(format!("{why}: {e}")));
            }
        };
        let cred = stream.peer_cred().map_err(|source| Error::Io {
            what: "reading the primary's peer credentials",
            source,
        })?;
        if let Some(expected) = plan.required_uid
            && cred.uid() != expected
        {
            return Err(Error::ForeignPrimary {
                endpoint: endpoint_name(&target),
                found: cred.uid(),
                expected,
            });
        }
        Ok(Connected::Yes(stream, cred.pid().unwrap_or(0)))
    }

    async fn try_secondary(&self, plan: &Plan, deadline: Instant) -> Result<Reach, Error> {
        let (mut stream, pid) = match self.connect(plan, deadline).await? {
            Connected::Yes(stream, pid) => (stream, pid),
            Connected::NotYet(why) => return Ok(Reach::NotYet(why)),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut buf = Vec::new();
        match tokio::time::timeout(remaining, frame::read_frame(&mut stream, &mut buf)).await {
            Err(_) => Ok(Reach::Silent(pid)),
            Ok(Err(FrameError::Closed)) => Ok(Reach::NotYet(
                "the primary closed the connection (it is stopping)".into(),
            )),
            // Reset or cut off before the greeting: the primary died or is
            // stopping; only the lock can tell, so retry.
            Ok(Err(FrameError::Io(e))) => Ok(Reach::NotYet(format!(
                "the connection to the primary broke before its greeting: {e}"
            ))),
            Ok(Err(FrameError::Truncated)) => Ok(Reach::NotYet(
                "the primary's greeting was cut off (it is stopping)".into(),
            )),
            Ok(Err(source)) => Err(Error::Frame { pid, source }),
            Ok(Ok(())) => match frame::decode::<ToSecondary<'_>>(&buf) {
                Ok(ToSecondary::Hello { accepting: true }) => Ok(Reach::Greeted(Secondary {
                    stream,
                    pid,
                    reply_timeout: self.reply_timeout,
                    env_names: self.env.clone(),
                })),
                Ok(ToSecondary::Hello { accepting: false }) => {
                    Ok(Reach::NotYet("the primary is shutting down".into()))
                }
                Ok(_) => Err(Error::Frame {
                    pid,
                    source: FrameError::Unexpected("a reply before any request"),
                }),
                Err(source) => Err(Error::Frame { pid, source }),
            },
        }
    }

    /// Holds a connection to the primary until it ends or the deadline passes.
    ///
    /// Returns [`Watched::Ended`] when a primary that greeted us as accepting
    /// went away (retry the lock at once), [`Watched::Short`] otherwise (it was
    /// shutting down, or not there yet: back off first).
    async fn watch(&self, plan: &Plan, deadline: Instant) -> Result<Watched, Error> {
        let mut stream = match self.connect(plan, deadline).await? {
            Connected::Yes(stream, _) => stream,
            Connected::NotYet(_) => return Ok(Watched::Short),
        };
        let watch = frame::encode(&ToPrimary::Watch)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let watched = tokio::time::timeout(remaining, async {
            if frame::write_frame(&mut stream, &watch).await.is_err() {
                return Watched::Short;
            }
            let mut buf = Vec::new();
            match frame::read_frame(&mut stream, &mut buf).await {
                Ok(()) => {}
                Err(_) => return Watched::Short,
            }
            if !matches!(
                frame::decode::<ToSecondary<'_>>(&buf),
                Ok(ToSecondary::Hello { accepting: true })
            ) {
                return Watched::Short;
            }
            // Greeted: now wait for the end of the stream, which comes the
            // moment the primary exits or hands over.
            let mut sink = [0u8; 64];
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
            Watched::Ended
        })
        .await;
        Ok(watched.unwrap_or(Watched::Short))
    }
}

use std::os::unix::ffi::OsStrExt;

fn endpoint_name(target: &Path) -> String {
    let bytes = target.as_os_str().as_bytes();
    match bytes.strip_prefix(b"\0") {
        Some(name) => format!("@{}", String::from_utf8_lossy(name)),
        None => target.display().to_string(),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

fn blocking_runtime() -> Result<tokio::runtime::Runtime, Error> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::Runtime(std::io::Error::other(
            "a blocking cohort::local call was made from inside an async runtime; use the async form",
        )));
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)
}

fn validate_app(app: &str) -> Result<(), Error> {
    let bad = |reason| {
        Err(Error::InvalidAppId {
            id: app.to_owned(),
            reason,
        })
    };
    if app.is_empty() || app.len() > 64 {
        return bad("it must be 1 to 64 characters long");
    }
    if app == "." || app == ".." {
        return bad("it must not be . or ..");
    }
    if !app
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("it contains a character other than A-Z a-z 0-9 . _ -");
    }
    Ok(())
}

struct Plan {
    kind: PlanKind,
    required_uid: Option<u32>,
}

enum PlanKind {
    Files {
        dir: PathBuf,
        lock: PathBuf,
        own_socket: PathBuf,
        shared: bool,
    },
    Abstract {
        name: String,
    },
}

enum Connected {
    Yes(UnixStream, i32),
    NotYet(String),
}

enum Reach {
    Greeted(Secondary),
    NotYet(String),
    /// Connected, but no greeting came before the deadline.
    Silent(i32),
}

enum Watched {
    Ended,
    Short,
}

/// Exponential backoff with jitter: 0.5 ms doubling to 20 ms.
struct Backoff {
    next: Duration,
    rng: u64,
}

impl Backoff {
    const FIRST: Duration = Duration::from_micros(500);
    const MAX: Duration = Duration::from_millis(20);

    fn new() -> Self {
        let seed = getrandom::u64().unwrap_or(u64::from(std::process::id()) << 17) | 1;
        Backoff {
            next: Self::FIRST,
            rng: seed,
        }
    }

    fn next(&mut self) -> Duration {
        // xorshift64: plenty for spreading retries apart.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        // Between half and all of the base delay.
        let jitter = (self.rng % 1024) as u32;
        base / 2 + base / 2 * jitter / 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_ids_that_cannot_name_a_file_are_rejected() {
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(
                matches!(validate_app(bad), Err(Error::InvalidAppId { .. })),
                "{bad:?} must be rejected"
            );
        }
        validate_app("org.example.editor_2-x").unwrap();
    }

    #[test]
    fn backoff_grows_to_its_cap_and_stays_within_it() {
        let mut b = Backoff::new();
        let delays: Vec<_> = (0..12).map(|_| b.next()).collect();
        assert!(delays[0] <= Backoff::FIRST && delays[0] >= Backoff::FIRST / 2);
        assert!(delays.iter().all(|d| *d <= Backoff::MAX));
        assert!(delays[11] >= Backoff::MAX / 2);
    }
}
