//! The error type of `cohort::local`.

use std::path::PathBuf;
use std::time::Duration;

use super::frame::FrameError;

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
    /// A blocking call could not create its private tokio runtime.
    #[error(
        "could not start the private runtime for a blocking call; blocking calls must not run inside an async runtime"
    )]
    Runtime(#[source] std::io::Error),
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
