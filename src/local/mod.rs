//! Same-host coordination: exactly one primary instance per application and
//! user, every running instance listed and asked, verified process
//! identities, spawn-or-connect daemons, and port helpers.
//!
//! # What this module owns, and what it must not touch
//!
//! `cohort::local` owns everything about coordinating a program's processes on
//! one machine: the election of the primary, the per-application runtime
//! directory (`$XDG_RUNTIME_DIR/<app>/` or its fallback) with its `lock` file,
//! `socket`, `instances/` records and daemon `spawn.lock` and `daemon.log`, the
//! abstract socket name in filesystem-free mode, the frame format spoken on
//! its sockets, the server threads, and process identities. It does not
//! depend on the network chart and must not touch it (no multicast, no shared
//! state; the only IP sockets are the ones [`find_free_port`] hands to the
//! caller); it touches no file outside its runtime directory and `/proc`. The
//! chart may use [`ProcessIdentity`] (for example `matches_tag`), never the
//! other way round.
//!
//! One file per concern, each with its own "owns / must not touch":
//! `single` (the options and the acquire loops), `election` (taking the lock,
//! binding), `reach` (reaching the primary), `blocking` (the blocking forms),
//! `backoff`, `server` (accepting, caps, deadlines), `primary`, `secondary`,
//! `frame`, `dir`, `identity`, `instances`, `handle`, `daemon`, `ports`, and
//! `os` (every kernel query: the per-OS boundary).
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
//! **Bounds.** Every endpoint (the primary's, each registered instance's)
//! holds at most [`SingleInstance::max_connections`] connections (default
//! 256; at the cap a newcomer closes the oldest connection that is not waiting
//! for the application, taken from the user holding the most), gives each
//! connection [`SingleInstance::first_frame_timeout`] (default 5 s) to send
//! a complete first frame and 10 s for every write, and reads frames as their
//! bytes arrive; see [`Primary::stats`] for the counters.
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
//! **Other systems.** Process queries, pidfds and session spawning live in
//! one module per OS under `os` (its docs hold the table of what macOS and
//! Windows would use); everything else is written against it. Beyond that, macOS
//! has `flock` and Unix sockets (peer credentials via `getpeereid`/`LOCAL_PEERCRED`,
//! directory under `$TMPDIR`, no abstract namespace); Windows would take the
//! election with a named mutex or `LockFileEx` on a file in `%LOCALAPPDATA%`
//! and use a named pipe with `GetNamedPipeClientProcessId` and the client's SID
//! in place of the socket and `SO_PEERCRED`. Those back-ends would sit behind the
//! same [`SingleInstance`], [`Primary`] and [`Secondary`] types, which expose
//! nothing Linux-specific. Today the module is built and tested on Linux only:
//! it uses `std::os::unix`, so it does not build on Windows, and on other Unix
//! systems abstract mode returns an `Unsupported` error.

mod backoff;
mod blocking;
mod daemon;
mod dir;
mod election;
mod error;
mod frame;
#[doc(hidden)]
pub mod fuzzing;
mod handle;
mod identity;
mod instances;
mod os;
mod ports;
mod primary;
mod reach;
mod secondary;
mod server;
mod single;

pub use blocking::{BlockingRole, BlockingSecondary};
pub use daemon::Daemon;
pub use error::{Error, HandshakeError, ProbeError};
pub use frame::{FrameError, MAX_FRAME};
pub use handle::{Expect, InstanceHandle};
pub use identity::{ExeHash, IdentityError, ProcessIdentity, Verdict};
pub use instances::{Answer, Instance, Instances, Registration, instances};
pub use ports::{find_free_port, find_free_port_on, is_port_in_use, is_port_in_use_on};
pub use primary::{Primary, Request};
pub use secondary::{Forward, Reply, Secondary};
pub use server::{ConnectionStats, DEFAULT_FIRST_FRAME_TIMEOUT, DEFAULT_MAX_CONNECTIONS};
pub use single::{DEFAULT_REPLY_TIMEOUT, DEFAULT_TIMEOUT, SingleInstance};

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
