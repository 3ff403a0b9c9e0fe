//! Spawn-or-connect for background daemons: a compiler cache, a language
//! server, a build server.
//!
//! **Owns:** [`Daemon`]: finding the running daemon through a verified probe,
//! spawning it when there is none (detached, in its own session, stdio to a
//! log file) so that concurrent callers spawn exactly one, waiting until it is
//! ready, reporting a failed start with its exit status and log tail, and
//! replacing a daemon that runs another binary when asked to.
//! **Must not touch:** the daemon's own election (the daemon program runs
//! `SingleInstance::acquire` itself and serves as its primary), identity
//! checks (`handle`).
//!
//! # Exactly one spawn
//!
//! A caller that finds no daemon takes `spawn.lock` (a `flock` in the
//! application's runtime directory), probes again (another caller may have
//! spawned it meanwhile) and only then spawns; the lock is held until the
//! daemon answers probes or failed. Callers waiting for the lock then find
//! the ready daemon. The daemon's own election is a second line: a second
//! daemon, however started, becomes a secondary and exits.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::backoff::Backoff;
use super::blocking::runtime_for;
use super::election::PlanKind;
use super::error::ProbeError;
use super::handle::{Expect, InstanceHandle};
use super::identity::ExeHash;
use super::{Error, SingleInstance, dir, os};

/// Default for [`Daemon::ready_timeout`].
const DEFAULT_READY: Duration = Duration::from_secs(10);
/// Default for [`Daemon::shutdown_timeout`].
const DEFAULT_SHUTDOWN: Duration = Duration::from_secs(5);
/// How much of the log an error quotes.
const LOG_TAIL: u64 = 4096;

/// A daemon to reuse if it runs, or to start if not.
///
/// The daemon program itself calls [`SingleInstance::acquire`] with the same
/// application id and serves as its primary; this side only finds, starts,
/// verifies and replaces it.
///
/// ```no_run
/// use std::process::Command;
/// use cohort::local::{Daemon, SingleInstance};
/// # async fn demo() -> Result<(), cohort::local::Error> {
/// let app = SingleInstance::new("org.example.cache");
/// let mut command = Command::new("/usr/libexec/example-cache");
/// command.arg("--serve");
/// let daemon = Daemon::new(app, command).ensure().await?;
/// let reply = daemon.connect().await?.forward(cohort::local::Forward::new().arg("stats")).await?;
/// # let _ = reply;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Daemon {
    app: SingleInstance,
    command: Command,
    log: Option<PathBuf>,
    ready_timeout: Duration,
    shutdown_timeout: Duration,
    replace_other_binary: bool,
}

impl Daemon {
    /// The daemon of `app`, started with `command` when it is not running.
    pub fn new(app: SingleInstance, command: Command) -> Self {
        Daemon {
            app,
            command,
            log: None,
            ready_timeout: DEFAULT_READY,
            shutdown_timeout: DEFAULT_SHUTDOWN,
            replace_other_binary: false,
        }
    }

    /// Where the daemon's stdout and stderr go (appended); default
    /// `daemon.log` in the application's runtime directory.
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// How long a started daemon may take to answer probes (default 10 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// How long a daemon being replaced may take to exit before it is killed
    /// (default 5 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// When on, a running daemon whose executable's hash differs from the
    /// command's program on disk (an upgrade was installed) is shut down
    /// gracefully (killed after [`Daemon::shutdown_timeout`]) and the new one
    /// started. Off by default: the running daemon is reused.
    pub fn replace_if_binary_differs(mut self, on: bool) -> Self {
        self.replace_other_binary = on;
        self
    }

    /// A verified handle to the running daemon, starting it first if needed.
    pub async fn ensure(&self) -> Result<InstanceHandle, Error> {
        let expected = if self.replace_other_binary {
            Some(self.program_hash()?)
        } else {
            None
        };
        match self.probe(expected).await? {
            Found::Ready(handle) => return Ok(handle),
            Found::Nothing | Found::Outdated(_) => {}
        }
        let _spawn_lock = self.spawn_lock().await?;
        // Another caller may have started (or replaced) it while we waited.
        match self.probe(expected).await? {
            Found::Ready(handle) => Ok(handle),
            Found::Nothing => self.spawn_and_wait().await,
            Found::Outdated(old) => {
                tracing::info!(
                    pid = old.identity().pid,
                    "the daemon runs another binary; replacing it"
                );
                if let Err(error) = old.shutdown(self.shutdown_timeout).await {
                    tracing::warn!(%error, "the old daemon did not stop in time; killing it");
                    old.force_kill()?;
                    old.wait(self.shutdown_timeout).await;
                }
                self.spawn_and_wait().await
            }
        }
    }

    /// Blocking form of [`Daemon::ensure`]; `Err` inside a runtime.
    pub fn ensure_blocking(&self) -> Result<InstanceHandle, Error> {
        runtime_for("Daemon::ensure_blocking")?.block_on(self.ensure())
    }

    async fn probe(&self, expected: Option<ExeHash>) -> Result<Found, Error> {
        match InstanceHandle::probe(&self.app, &Expect::any()).await {
            Ok(handle) => match expected {
                Some(hash) if hash != handle.identity().exe_hash => Ok(Found::Outdated(handle)),
                _ => Ok(Found::Ready(handle)),
            },
            Err(Error::Probe(ProbeError::NoPrimary { .. })) => Ok(Found::Nothing),
            Err(e) => Err(e),
        }
    }

    fn app_dir(&self) -> Result<PathBuf, Error> {
        match self.app.plan()?.kind {
            PlanKind::Files { dir, .. } => Ok(dir),
            PlanKind::Abstract { .. } => {
                dir::user_dir(&self.app.app, self.app.runtime_dir.as_deref())
            }
        }
    }

    fn program_hash(&self) -> Result<ExeHash, Error> {
        let program = resolve(Path::new(self.command.get_program()));
        ExeHash::of_file(&program).map_err(|source| Error::Spawn { program, source })
    }

    /// Takes `spawn.lock`, waiting (without blocking the runtime) until the
    /// ready deadline.
    async fn spawn_lock(&self) -> Result<File, Error> {
        let path = self.app_dir()?.join("spawn.lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(|source| Error::Lock {
                path: path.clone(),
                source,
            })?;
        let start = Instant::now();
        let mut backoff = Backoff::new();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(source)) => {
                    return Err(Error::Lock { path, source });
                }
            }
            if start.elapsed() >= self.ready_timeout {
                return Err(Error::Timeout {
                    waited: start.elapsed(),
                    last: "another process is starting the daemon and holds spawn.lock".into(),
                });
            }
            tokio::time::sleep(backoff.next()).await;
        }
    }

    async fn spawn_and_wait(&self) -> Result<InstanceHandle, Error> {
        let program = PathBuf::from(self.command.get_program());
        let log_path = match &self.log {
            Some(log) => log.clone(),
            None => self.app_dir()?.join("daemon.log"),
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(|source| Error::Io {
                what: "opening the daemon's log file",
                source,
            })?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let err_log = log.try_clone().map_err(|source| Error::Io {
            what: "opening the daemon's log file",
            source,
        })?;
        let mut command = os::in_new_session(&self.command);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log));
        let mut child = command.spawn().map_err(|source| Error::Spawn {
            program: program.clone(),
            source,
        })?;
        let start = Instant::now();
        let mut backoff = Backoff::new();
        let mut last: String;
        loop {
            match InstanceHandle::probe(&self.app, &Expect::any()).await {
                Ok(handle) => {
                    // Reap the child whenever it exits, so it never lingers as a zombie.
                    let _ = std::thread::Builder::new()
                        .name("cohort-daemon-reaper".into())
                        .spawn(move || child.wait());
                    return Ok(handle);
                }
                Err(e) => last = e.to_string(),
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Error::DaemonExited {
                    program,
                    status,
                    log_tail: log_tail(&log_path, log_start),
                    log: log_path,
                });
            }
            if start.elapsed() >= self.ready_timeout {
                let _ = std::thread::Builder::new()
                    .name("cohort-daemon-reaper".into())
                    .spawn(move || child.wait());
                return Err(Error::DaemonNotReady {
                    program,
                    waited: start.elapsed(),
                    last,
                    log_tail: log_tail(&log_path, log_start),
                    log: log_path,
                });
            }
            tokio::time::sleep(backoff.next()).await;
        }
    }
}

enum Found {
    Ready(InstanceHandle),
    Outdated(InstanceHandle),
    Nothing,
}

/// The program's path, searched in `PATH` when it has no `/`.
fn resolve(program: &Path) -> PathBuf {
    if program.components().count() > 1 {
        return program.to_owned();
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| program.to_owned())
}

/// The last lines this start wrote to the log (at most 4 KiB).
fn log_tail(path: &Path, from: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::from("(the log could not be read)");
    };
    let end = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = end.saturating_sub(LOG_TAIL).max(from.min(end));
    let mut tail = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut tail).is_err() {
        return String::from("(the log could not be read)");
    }
    let text = String::from_utf8_lossy(&tail).into_owned();
    if text.trim().is_empty() {
        String::from("(the daemon wrote nothing)")
    } else {
        text
    }
}
