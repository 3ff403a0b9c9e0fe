//! The secondary side: what a later launch sends, and the primary's reply.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::Error;
use super::frame::{self, FrameError, ToPrimary, ToSecondary, WireRequest};

/// A later launch that found a live primary and may forward one request to it.
///
/// It holds a connection the primary has already greeted; forward within
/// [`SingleInstance::first_frame_timeout`](super::SingleInstance::first_frame_timeout)
/// (5 s by default) of acquiring it, or the primary closes the connection and
/// forwarding fails with the retryable [`Error::Disconnected`]. Forwarding consumes the `Secondary`: to forward again,
/// call `acquire()` again.
#[derive(Debug)]
pub struct Secondary {
    pub(crate) stream: UnixStream,
    pub(crate) pid: i32,
    pub(crate) reply_timeout: Duration,
    pub(crate) env_names: Vec<OsString>,
}

impl Secondary {
    /// The primary's process id, as the kernel reported it for the socket.
    pub fn primary_pid(&self) -> i32 {
        self.pid
    }

    /// Forwards this process's arguments (without the program name), working
    /// directory and the environment variables chosen with
    /// [`SingleInstance::forward_env`](super::SingleInstance::forward_env), and
    /// waits for the reply (at most the reply timeout).
    pub async fn forward_args(self) -> Result<Reply, Error> {
        let message = Forward::current(&self.env_names);
        self.forward(message).await
    }

    /// Forwards a custom message and waits for the reply (at most the reply timeout).
    ///
    /// Fails with [`Error::ReplyTimeout`] if the primary does not reply in time
    /// (it may be stopped or frozen), [`Error::Refused`] if it is shutting down
    /// (call `acquire()` again), or [`Error::Disconnected`] if it exited.
    pub async fn forward(mut self, message: Forward) -> Result<Reply, Error> {
        let pid = self.pid;
        let frame = message.encode()?;
        let waited = self.reply_timeout;
        match tokio::time::timeout(waited, exchange(&mut self.stream, &frame)).await {
            Err(_) => Err(Error::ReplyTimeout { pid, waited }),
            Ok(Err(FrameError::Closed)) => Err(Error::Disconnected { pid }),
            Ok(Err(FrameError::Io(e)))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                Err(Error::Disconnected { pid })
            }
            Ok(Err(source)) => Err(Error::Frame { pid, source }),
            Ok(Ok(Answer::Reply(reply))) => Ok(reply),
            Ok(Ok(Answer::Refused { shutting_down })) => Err(Error::Refused { pid, shutting_down }),
        }
    }
}

impl Secondary {
    /// Asks the primary to stop accepting (see `InstanceHandle::shutdown`).
    pub(crate) async fn request_shutdown(mut self) -> Result<(), Error> {
        let pid = self.pid;
        let ask = frame::encode(&ToPrimary::Shutdown)?;
        let waited = self.reply_timeout;
        let exchange = async {
            frame::write_frame(&mut self.stream, &ask).await?;
            let mut buf = Vec::new();
            frame::read_frame(&mut self.stream, &mut buf).await?;
            match frame::decode::<ToSecondary<'_>>(&buf)? {
                ToSecondary::Stopping => Ok(Ok(())),
                ToSecondary::Refused { shutting_down } => Ok(Err(shutting_down)),
                _ => Err(FrameError::Unexpected(
                    "not an answer to a shutdown request",
                )),
            }
        };
        match tokio::time::timeout(waited, exchange).await {
            Err(_) => Err(Error::ReplyTimeout { pid, waited }),
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(shutting_down))) => Err(Error::Refused { pid, shutting_down }),
            Ok(Err(FrameError::Closed | FrameError::Truncated)) => Err(Error::Disconnected { pid }),
            Ok(Err(source)) => Err(Error::Frame { pid, source }),
        }
    }
}

enum Answer {
    Reply(Reply),
    Refused { shutting_down: bool },
}

async fn exchange(stream: &mut UnixStream, request: &[u8]) -> Result<Answer, FrameError> {
    frame::write_frame(stream, request).await?;
    let mut buf = Vec::new();
    frame::read_frame(stream, &mut buf).await?;
    match frame::decode::<ToSecondary<'_>>(&buf)? {
        ToSecondary::Reply { status, payload } => Ok(Answer::Reply(Reply {
            status,
            payload: payload.map(<[u8]>::to_vec),
        })),
        ToSecondary::Refused { shutting_down } => Ok(Answer::Refused { shutting_down }),
        ToSecondary::Hello { .. } => Err(FrameError::Unexpected("a second greeting")),
        _ => Err(FrameError::Unexpected("not a reply to a request")),
    }
}

/// What a secondary forwards: arguments, working directory, environment
/// variables and an optional custom payload. Every string travels as raw bytes,
/// so nothing is mangled, whatever its encoding.
///
/// ```
/// use cohort::local::Forward;
/// let message = Forward::new()
///     .args(["--open", "notes with spaces.txt"])
///     .cwd("/home/me")
///     .env("DISPLAY", ":0");
/// # let _ = message;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forward {
    args: Vec<OsString>,
    cwd: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    payload: Option<Vec<u8>>,
}

impl Forward {
    /// An empty message: no arguments, no working directory, no payload.
    pub fn new() -> Self {
        Self::default()
    }

    /// This process's arguments (without the program name), working directory,
    /// and those of `env_names` that are set.
    pub fn current(env_names: &[OsString]) -> Self {
        Forward {
            args: std::env::args_os().skip(1).collect(),
            cwd: std::env::current_dir().ok(),
            env: env_names
                .iter()
                .filter_map(|k| std::env::var_os(k).map(|v| (k.clone(), v)))
                .collect(),
            payload: None,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets the working directory to report.
    pub fn cwd(mut self, cwd: impl Into<PathBuf>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    /// Adds one environment variable.
    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Attaches a custom payload, encoded with postcard; the primary decodes it
    /// with [`Request::payload`](super::Request::payload) and the same type.
    pub fn payload<T: Serialize + ?Sized>(mut self, payload: &T) -> Result<Self, Error> {
        self.payload = Some(postcard::to_allocvec(payload).map_err(Error::Payload)?);
        Ok(self)
    }

    /// Attaches raw payload bytes.
    pub fn payload_bytes(mut self, payload: Vec<u8>) -> Self {
        self.payload = Some(payload);
        self
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, Error> {
        let wire = ToPrimary::Request(WireRequest {
            args: self.args.iter().map(|a| a.as_bytes()).collect(),
            cwd: self.cwd.as_ref().map(|c| c.as_os_str().as_bytes()),
            env: self
                .env
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
                .collect(),
            payload: self.payload.as_deref(),
        });
        Ok(frame::encode(&wire)?)
    }
}

/// The primary's answer: a status (use it as the secondary's exit status) and an
/// optional payload.
///
/// ```
/// use cohort::local::Reply;
/// let reply = Reply::new(0).with_payload("opened 2 files").unwrap();
/// assert_eq!(reply.status(), 0);
/// assert_eq!(reply.payload::<String>().unwrap().as_deref(), Some("opened 2 files"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    status: i32,
    payload: Option<Vec<u8>>,
}

impl Reply {
    /// A reply with this status and no payload.
    pub fn new(status: i32) -> Self {
        Reply {
            status,
            payload: None,
        }
    }

    /// Status 0, no payload.
    pub fn ok() -> Self {
        Self::new(0)
    }

    /// Attaches a payload, encoded with postcard.
    pub fn with_payload<T: Serialize + ?Sized>(mut self, payload: &T) -> Result<Self, Error> {
        self.payload = Some(postcard::to_allocvec(payload).map_err(Error::Payload)?);
        Ok(self)
    }

    /// Attaches raw payload bytes.
    pub fn with_payload_bytes(mut self, payload: Vec<u8>) -> Self {
        self.payload = Some(payload);
        self
    }

    /// The status chosen by the primary.
    pub fn status(&self) -> i32 {
        self.status
    }

    /// Decodes the payload, if any, as `T`.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<Option<T>, Error> {
        frame::decode_payload(self.payload.as_deref())
    }

    /// The raw payload bytes, if any.
    pub fn payload_bytes(&self) -> Option<&[u8]> {
        self.payload.as_deref()
    }
}
