//! The error types of `cohort::local`.
//!
//! **Owns:** [`Error`], [`ProbeError`] and [`HandshakeError`]: what failed,
//! and in each message what to do about it. **Must not touch:** anything
//! else; it only describes.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use super::frame::FrameError;
use super::identity::{ExeHash, IdentityError, Verdict};

/// Everything that can go wrong while electing, forwarding or replying.
///
/// Each message says what failed and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The application id cannot name a directory or socket.
    #[error(
        "invalid application id {id:?}: {reason}; use 1 to 64 characters from A-Z a-z 0-9 . _ - (for example \"org.example.editor\")"
    )]
    InvalidAppId {
        /// The id given.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The runtime directory could not be created or inspected.
    #[error(
        "could not prepare the runtime directory {path}; make sure it is writable by this user, or set XDG_RUNTIME_DIR or SingleInstance::runtime_dir to one that is"
    )]
    RuntimeDir {
        /// The directory.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// The runtime directory exists but is not safe to use.
    #[error(
        "refusing to use {path}: {reason}; remove it (or fix its owner and mode) or choose another directory with SingleInstance::runtime_dir"
    )]
    UnsafeDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The socket path would not fit in a Unix socket address.
    #[error(
        "socket path {path} is {len} bytes, longer than a Unix socket address allows (107); use a shorter runtime directory or application id"
    )]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// Opening or locking the election lock file failed.
    #[error("could not open or lock {path}; check that the runtime directory is writable")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// The elected primary could not create its endpoint.
    #[error(
        "this process won the election but could not listen on {endpoint}; check the runtime directory, or in abstract mode the network namespace"
    )]
    Bind {
        /// The socket path or abstract name.
        endpoint: String,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// Neither a primary was reached nor the election won before the deadline.
    #[error(
        "no primary could be reached and this process could not become primary within {waited:?} (last obstacle: {last}); the primary may be starting or stopping: retry, or raise SingleInstance::timeout"
    )]
    Timeout {
        /// How long was waited.
        waited: Duration,
        /// The last thing that stood in the way.
        last: String,
    },
    /// The primary accepted the connection but did not greet before the deadline.
    #[error(
        "the primary (pid {pid}) did not answer within {waited:?}: it may be stopped (SIGSTOP), frozen or overloaded; check that process, or raise SingleInstance::timeout"
    )]
    PrimaryUnresponsive {
        /// The primary's process id, from the socket's peer credentials.
        pid: i32,
        /// How long was waited.
        waited: Duration,
    },
    /// The primary did not reply to a forwarded request before the deadline.
    #[error(
        "the primary (pid {pid}) did not reply within {waited:?}: it may be stopped (SIGSTOP), frozen or busy; check that process, or raise SingleInstance::reply_timeout"
    )]
    ReplyTimeout {
        /// The primary's process id.
        pid: i32,
        /// How long was waited.
        waited: Duration,
    },
    /// The endpoint is served by a process of another user.
    #[error(
        "the endpoint {endpoint} is served by uid {found}, not uid {expected}: another user's process is posing as the primary; refusing to talk to it (stop that process)"
    )]
    ForeignPrimary {
        /// The endpoint.
        endpoint: String,
        /// The uid that serves it.
        found: u32,
        /// The uid expected.
        expected: u32,
    },
    /// The primary is shutting down, or dropped the request without replying.
    #[error(
        "the primary (pid {pid}) refused the request because {}; call acquire() again to reach the next primary or become it",
        if *.shutting_down { "it is shutting down" } else { "it dropped it without replying" }
    )]
    Refused {
        /// The primary's process id.
        pid: i32,
        /// True when it is shutting down.
        shutting_down: bool,
    },
    /// The primary closed the connection before replying.
    #[error(
        "the primary (pid {pid}) closed the connection before replying (it probably exited); call acquire() again"
    )]
    Disconnected {
        /// The primary's process id.
        pid: i32,
    },
    /// A frame from the other side was bad, or the socket failed.
    #[error("exchanging a frame with pid {pid} failed")]
    Frame {
        /// The peer's process id.
        pid: i32,
        /// What was wrong.
        #[source]
        source: FrameError,
    },
    /// A request or reply is larger than a frame may be.
    #[error(
        "the message is {len} bytes, more than the {max}-byte frame limit; forward less (for example paths instead of file contents)"
    )]
    TooLarge {
        /// Encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A payload could not be encoded or decoded with postcard.
    #[error("could not encode or decode the payload; both sides must use the same payload type")]
    Payload(#[source] postcard::Error),
    /// The secondary went away before the reply could be delivered.
    #[error(
        "the secondary closed its connection before the reply was delivered (it probably hit its deadline or exited)"
    )]
    SecondaryGone,
    /// A tokio runtime (a server thread's, or a blocking call's private one)
    /// could not be created.
    #[error(
        "could not start a tokio runtime (for a server thread or a blocking call); the process may be out of threads, memory or file descriptors"
    )]
    Runtime(#[source] std::io::Error),
    /// A blocking form was called on a thread that runs an async runtime,
    /// where it would block every task of that runtime.
    #[error(
        "{call} is a blocking call and was made inside an async runtime (or its spawn_blocking pool), where it would stall the runtime; use the async form with .await, or call it from a plain std::thread"
    )]
    BlockingInRuntime {
        /// The call that was refused.
        call: &'static str,
    },
    /// A process's identity could not be read.
    #[error("reading a process identity failed")]
    Identity(#[from] IdentityError),
    /// Probing the primary failed; the reason is typed.
    #[error("probing the primary failed")]
    Probe(#[from] ProbeError),
    /// The process did not exit within the time given to `shutdown`.
    #[error(
        "process {pid} was asked to shut down but was still running after {waited:?}; give it longer, or use force_kill()"
    )]
    ShutdownTimeout {
        /// The process.
        pid: u32,
        /// How long was waited.
        waited: Duration,
    },
    /// The daemon program could not be started at all.
    #[error("could not start the daemon {program}; check that the path exists and is executable")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// The daemon exited before it became ready.
    #[error(
        "the daemon {program} exited with {status} before it became ready; the end of its log {log}:\n{log_tail}"
    )]
    DaemonExited {
        /// The program.
        program: PathBuf,
        /// Its exit status.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        log_tail: String,
    },
    /// The daemon was started but never answered a probe in time.
    #[error(
        "the daemon {program} did not become ready within {waited:?} (last probe: {last}); the end of its log {log}:\n{log_tail}"
    )]
    DaemonNotReady {
        /// The program.
        program: PathBuf,
        /// How long was waited.
        waited: Duration,
        /// Why the last probe failed.
        last: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        log_tail: String,
    },
    /// Any other I/O failure, with what was being done.
    #[error("{what} failed")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
}

/// Why [`InstanceHandle::probe`](super::InstanceHandle::probe) rejected the
/// endpoint: every case a stale record, a recycled pid, an upgrade, another
/// boot or an impostor produces has its own variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// Nobody serves the application's endpoint.
    #[error("no primary is running ({why}); start one, or use Daemon::ensure")]
    NoPrimary {
        /// What was found instead.
        why: String,
    },
    /// The endpoint is served by a process of another user.
    #[error("the endpoint is served by uid {found}, not uid {expected}; refusing it")]
    ForeignPrimary {
        /// The uid that serves it.
        found: u32,
        /// The uid expected.
        expected: u32,
    },
    /// The process holding the endpoint did not greet or answer the
    /// challenge in time (stopped, frozen, or not a cohort primary).
    #[error(
        "the process holding the endpoint (pid {pid}) did not answer the identity challenge within {waited:?}; it may be stopped or not a cohort::local primary"
    )]
    Unresponsive {
        /// The process, from the socket's peer credentials.
        pid: i32,
        /// How long was waited.
        waited: Duration,
    },
    /// The answer carried another nonce than the challenge: a replayed or
    /// forged answer.
    #[error("pid {pid} answered the identity challenge with the wrong nonce; refusing it")]
    WrongNonce {
        /// The process, from the socket's peer credentials.
        pid: i32,
    },
    /// The identity given is not the process that holds the socket.
    #[error(
        "the endpoint is held by pid {socket_pid}, but its answer claims pid {claimed_pid}; refusing an impostor"
    )]
    PeerMismatch {
        /// The pid the kernel reports for the socket.
        socket_pid: i32,
        /// The pid in the answer.
        claimed_pid: u32,
    },
    /// The identity given does not check out against the live system.
    #[error("the primary's identity does not verify: {verdict:?} (pid {pid})")]
    NotVerified {
        /// The process.
        pid: u32,
        /// What `ProcessIdentity::verify` said.
        verdict: Verdict,
    },
    /// A verified primary, but not the one expected (see [`Expect`](super::Expect)).
    #[error("the primary (pid {pid}) is not the one expected: {what}")]
    Unexpected {
        /// The process.
        pid: u32,
        /// What differs.
        what: String,
    },
    /// The primary runs another executable than the expected one.
    #[error("the primary (pid {pid}) runs an executable with hash {found}, not {expected}")]
    OtherBinary {
        /// The process.
        pid: u32,
        /// The hash expected.
        expected: ExeHash,
        /// The hash of what it runs.
        found: ExeHash,
    },
    /// A frame from the endpoint was bad.
    #[error("the process holding the endpoint (pid {pid}) sent a bad frame")]
    Frame {
        /// The process.
        pid: i32,
        /// What was wrong.
        #[source]
        source: FrameError,
    },
}

/// Why one instance gave no answer to a handshake.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// No answer before the deadline (the instance may be stopped or busy).
    #[error("no answer before the deadline; the instance may be stopped (SIGSTOP), frozen or busy")]
    Timeout,
    /// The instance exited, or closed the connection without answering.
    #[error("the instance is gone (it exited or closed the connection)")]
    Gone,
    /// The socket is held by another process than the registered one.
    #[error("the socket is served by pid {found}, not the registered pid {expected}")]
    WrongPeer {
        /// The registered pid.
        expected: u32,
        /// The pid the kernel reports for the socket.
        found: i32,
    },
    /// The instance could not decode the question as the type it expects.
    #[error("the instance did not understand the question (another question type or version)")]
    NotUnderstood,
    /// The answer could not be decoded as the expected type.
    #[error("the answer could not be decoded as the expected type")]
    Payload(#[source] postcard::Error),
    /// A bad frame or a socket failure.
    #[error("the exchange with the instance failed")]
    Frame(#[source] FrameError),
}

impl Error {
    /// True for errors after which calling `acquire()` again may succeed at once
    /// (the primary refused because it was shutting down, or vanished mid-request).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Refused {
                shutting_down: true,
                ..
            } | Error::Disconnected { .. }
        )
    }
}

impl From<super::frame::EncodeError> for Error {
    fn from(e: super::frame::EncodeError) -> Self {
        match e {
            super::frame::EncodeError::Postcard(e) => Error::Payload(e),
            super::frame::EncodeError::TooLarge { len } => Error::TooLarge {
                len,
                max: super::frame::MAX_FRAME,
            },
        }
    }
}
