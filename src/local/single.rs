//! The election's configuration and its two loops, `acquire` and
//! `acquire_or_wait`.
//!
//! **Owns:** [`SingleInstance`] (every option of an election) and the order
//! of attempts: try the lock, else reach the primary, else back off, until
//! the deadline. **Must not touch:** how the lock is taken (`election`), how
//! the primary is reached (`reach`), the frames (`frame`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::backoff::Backoff;
use super::reach::{Reach, Watched};
use super::server::{DEFAULT_FIRST_FRAME_TIMEOUT, DEFAULT_MAX_CONNECTIONS};
use super::{Error, Primary, Role, Scope};

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
///         while let Some(request) = primary.next_request_blocking()? {
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
    pub(super) app: String,
    pub(super) scope: Scope,
    pub(super) abstract_ns: bool,
    pub(super) runtime_dir: Option<PathBuf>,
    pub(super) timeout: Duration,
    pub(super) reply_timeout: Duration,
    pub(super) env: Vec<OsString>,
    pub(super) max_connections: usize,
    pub(super) first_frame_timeout: Duration,
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
            max_connections: DEFAULT_MAX_CONNECTIONS,
            first_frame_timeout: DEFAULT_FIRST_FRAME_TIMEOUT,
        }
    }

    /// The most connections the primary keeps open at once (default 256, at
    /// least 1). At the cap, a new connection closes the oldest idle one of
    /// the user holding the most; see the module docs ("Bounds under hostile
    /// input").
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How long the primary waits for a connected peer's first complete
    /// frame (default 5 s). A [`Secondary`](super::Secondary) must forward
    /// within this time of `acquire` returning it.
    pub fn first_frame_timeout(mut self, timeout: Duration) -> Self {
        self.first_frame_timeout = timeout;
        self
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

    /// Environment variables that [`Secondary::forward_args`](super::Secondary::forward_args) forwards when set
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
}
