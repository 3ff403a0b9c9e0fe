//! The primary side: the listening endpoint, its server thread, and requests.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

use super::frame::{self, FrameError, ToPrimary, ToSecondary};
use super::{Error, Reply};

/// How long a secondary may stay connected without sending its request.
const IDLE_LIMIT: Duration = Duration::from_secs(60);

/// Requests waiting for the application to take them.
const QUEUE: usize = 128;

/// What travels from the server thread to the application.
#[derive(Debug)]
enum Item {
    Request(Request),
    /// Sent by `stop_accepting` to wake a waiting receiver.
    Wake,
}

type Delivery = (Vec<u8>, oneshot::Sender<Result<(), FrameError>>);

/// The one running instance: receives the requests of later launches.
///
/// A server thread with its own small tokio runtime accepts connections, checks
/// each peer's credentials, greets it and reads its request, so the primary keeps
/// answering greetings even while the application's own runtime is busy, and the
/// same `Primary` serves async and blocking applications alike.
///
/// Dropping it (or calling [`Primary::shutdown`]) hands over cleanly: the endpoint
/// is closed and removed while the election lock is still held, then the lock is
/// released, so a waiting secondary becomes primary at once.
#[derive(Debug)]
pub struct Primary {
    requests: tokio::sync::Mutex<mpsc::Receiver<Item>>,
    wake: mpsc::Sender<Item>,
    accepting: watch::Sender<bool>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<std::thread::JoinHandle<()>>,
    socket_path: Option<PathBuf>,
    endpoint: String,
    lock: Option<File>,
}

pub(crate) struct ServerConfig {
    /// Peers must have this uid (per-user scope); `None` accepts every uid.
    pub required_uid: Option<u32>,
    pub endpoint: String,
}

impl Primary {
    pub(crate) fn start(
        listener: std::os::unix::net::UnixListener,
        config: ServerConfig,
        socket_path: Option<PathBuf>,
        lock: Option<File>,
    ) -> Result<Primary, Error> {
        let bind_err = |source| Error::Bind {
            endpoint: config.endpoint.clone(),
            source,
        };
        listener.set_nonblocking(true).map_err(bind_err)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let listener = {
            let _guard = runtime.enter();
            UnixListener::from_std(listener).map_err(bind_err)?
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let wake = tx.clone();
        let (accepting, accepting_rx) = watch::channel(true);
        let (stop, stop_rx) = oneshot::channel::<()>();
        let endpoint = config.endpoint.clone();
        let server = std::thread::Builder::new()
            .name("cohort-local-primary".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        _ = stop_rx => {}
                        _ = accept_loop(listener, tx, accepting_rx, config) => {}
                    }
                });
                // Dropping the runtime cancels every connection task and closes its socket.
                drop(runtime);
            })
            .map_err(|source| Error::Io {
                what: "starting the primary's server thread",
                source,
            })?;
        Ok(Primary {
            requests: tokio::sync::Mutex::new(rx),
            wake,
            accepting,
            stop: Some(stop),
            server: Some(server),
            socket_path,
            endpoint,
            lock,
        })
    }

    /// Waits for the next request from a later launch.
    ///
    /// Returns `None` once [`Primary::stop_accepting`] was called and every
    /// request already queued has been taken.
    pub async fn next_request(&self) -> Option<Request> {
        let mut requests = self.requests.lock().await;
        loop {
            if !self.is_accepting() {
                requests.close();
            }
            match requests.recv().await? {
                Item::Request(r) => return Some(r),
                Item::Wake => {}
            }
        }
    }

    /// Blocking form of [`Primary::next_request`], for applications without an
    /// async runtime. Must not be called from inside an async runtime.
    pub fn next_request_blocking(&self) -> Option<Request> {
        let mut requests = self.requests.blocking_lock();
        loop {
            if !self.is_accepting() {
                requests.close();
            }
            match requests.blocking_recv()? {
                Item::Request(r) => return Some(r),
                Item::Wake => {}
            }
        }
    }

    /// Blocking form of [`Primary::next_request`] that waits at most `wait`.
    ///
    /// `Ok(None)` when no request arrived in time, or when the primary stopped
    /// accepting ([`Primary::is_accepting`] tells them apart). Must not be called
    /// from inside an async runtime.
    pub fn next_request_timeout_blocking(&self, wait: Duration) -> Result<Option<Request>, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(Error::Runtime)?;
        Ok(runtime.block_on(async {
            tokio::time::timeout(wait, self.next_request())
                .await
                .ok()
                .flatten()
        }))
    }

    /// Takes a request if one is waiting, without waiting.
    pub fn try_next_request(&self) -> Option<Request> {
        let mut requests = self.requests.try_lock().ok()?;
        loop {
            if !self.is_accepting() {
                requests.close();
            }
            match requests.try_recv().ok()? {
                Item::Request(r) => return Some(r),
                Item::Wake => {}
            }
        }
    }

    /// Starts shutting down: from now on new launches are told the primary is
    /// shutting down (they back off and retry, and become primary once this one
    /// is dropped), and requests that arrive on connections already open are
    /// refused the same way. Requests already queued are still returned by
    /// [`Primary::next_request`], which then returns `None` (a task or thread
    /// waiting in it is woken); requests already taken can still be answered.
    pub fn stop_accepting(&self) {
        self.accepting.send_replace(false);
        // Wake a waiting receiver; if the queue is full it is not waiting anyway
        // and sees the flag before its next receive.
        let _ = self.wake.try_send(Item::Wake);
    }

    /// True until [`Primary::stop_accepting`] is called.
    pub fn is_accepting(&self) -> bool {
        *self.accepting.borrow()
    }

    /// The endpoint this primary listens on: a socket path, or `@name` for an
    /// abstract socket.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Hands over and releases the election: same as dropping the primary, named
    /// for readability.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Primary {
    fn drop(&mut self) {
        self.accepting.send_replace(false);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
        // Still holding the lock: only the holder may remove the endpoint.
        if let Some(path) = self.socket_path.take() {
            let _ = std::fs::remove_file(path);
        }
        // Releasing the lock lets the next primary in.
        drop(self.lock.take());
    }
}

async fn accept_loop(
    listener: UnixListener,
    tx: mpsc::Sender<Item>,
    accepting: watch::Receiver<bool>,
    config: ServerConfig,
) {
    let required_uid = config.required_uid;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, tx.clone(), accepting.clone(), required_uid));
            }
            Err(error) => {
                // Out of file descriptors and similar: keep serving, but do not spin.
                tracing::warn!(%error, endpoint = %config.endpoint, "accepting a local connection failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve(
    mut stream: UnixStream,
    tx: mpsc::Sender<Item>,
    accepting: watch::Receiver<bool>,
    required_uid: Option<u32>,
) {
    let cred = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(error) => {
            tracing::warn!(%error, "could not read a local peer's credentials; closing the connection");
            return;
        }
    };
    let pid = cred.pid().unwrap_or(0);
    let uid = cred.uid();
    if let Some(required) = required_uid
        && uid != required
    {
        tracing::warn!(
            peer_pid = pid,
            peer_uid = uid,
            expected_uid = required,
            "refusing a local connection from another user"
        );
        return;
    }
    let open = *accepting.borrow();
    let hello = frame::encode(&ToSecondary::Hello { accepting: open }).expect("tiny frame");
    if let Err(error) = frame::write_frame(&mut stream, &hello).await {
        tracing::debug!(peer_pid = pid, %error, "a secondary left before the greeting");
        return;
    }
    if !open {
        return;
    }
    let mut buf = Vec::new();
    match tokio::time::timeout(IDLE_LIMIT, frame::read_frame(&mut stream, &mut buf)).await {
        Err(_) => {
            tracing::debug!(peer_pid = pid, "a secondary sent nothing in time; closing");
            return;
        }
        Ok(Err(FrameError::Closed)) => return,
        Ok(Err(error)) => {
            tracing::warn!(peer_pid = pid, error = %error, source = ?std::error::Error::source(&error), "closing a local connection after a bad frame");
            return;
        }
        Ok(Ok(())) => {}
    }
    let wire = match frame::decode::<ToPrimary<'_>>(&buf) {
        Ok(ToPrimary::Request(wire)) => wire,
        Ok(ToPrimary::Watch) => {
            // Keep the connection open until this process exits or hands over; the
            // peer learns of it from the end of the stream.
            let mut sink = [0u8; 64];
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
            return;
        }
        Err(error) => {
            tracing::warn!(peer_pid = pid, error = %error, source = ?std::error::Error::source(&error), "closing a local connection after a bad frame");
            return;
        }
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    let request = Request {
        args: wire
            .args
            .iter()
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect(),
        cwd: wire
            .cwd
            .map(|c| PathBuf::from(OsString::from_vec(c.to_vec()))),
        env: wire
            .env
            .iter()
            .map(|(k, v)| {
                (
                    OsString::from_vec(k.to_vec()),
                    OsString::from_vec(v.to_vec()),
                )
            })
            .collect(),
        payload: wire.payload.map(<[u8]>::to_vec),
        pid,
        uid,
        reply: Some(reply_tx),
    };
    drop(buf);
    if *accepting.borrow()
        && tx.send(Item::Request(request)).await.is_ok()
        && let Ok((frame, done)) = reply_rx.await
    {
        let result = frame::write_frame(&mut stream, &frame).await;
        let _ = done.send(result);
        return;
    }
    // Not taken because the primary stopped accepting, or dropped unanswered.
    let refused = frame::encode(&ToSecondary::Refused {
        shutting_down: !*accepting.borrow(),
    })
    .expect("tiny frame");
    let _ = frame::write_frame(&mut stream, &refused).await;
}

/// One forwarded launch: its arguments, working directory, chosen environment
/// variables and payload, and the way to answer it.
///
/// Dropping a request without replying answers it with a refusal, so the
/// secondary never waits for nothing.
#[derive(Debug)]
pub struct Request {
    args: Vec<OsString>,
    cwd: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    payload: Option<Vec<u8>>,
    pid: i32,
    uid: u32,
    reply: Option<oneshot::Sender<Delivery>>,
}

impl Request {
    /// The secondary's arguments, byte-exact (the program name is not included).
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// The secondary's working directory, if it sent one.
    pub fn cwd(&self) -> Option<&Path> {
        self.cwd.as_deref()
    }

    /// The environment variables the secondary chose to forward.
    pub fn env(&self) -> &[(OsString, OsString)] {
        &self.env
    }

    /// One forwarded environment variable by name.
    pub fn env_var(&self, name: impl AsRef<OsStr>) -> Option<&OsStr> {
        let name = name.as_ref();
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_os_str())
    }

    /// Decodes the custom payload, if the secondary sent one.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<Option<T>, Error> {
        frame::decode_payload(self.payload.as_deref())
    }

    /// The raw payload bytes, if the secondary sent a payload.
    pub fn payload_bytes(&self) -> Option<&[u8]> {
        self.payload.as_deref()
    }

    /// The secondary's process id, from the kernel (SO_PEERCRED), not from the message.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The secondary's user id, from the kernel (SO_PEERCRED).
    pub fn uid(&self) -> u32 {
        self.uid
    }

    fn send(&mut self, reply: &Reply) -> Result<oneshot::Receiver<Result<(), FrameError>>, Error> {
        let frame = frame::encode(&ToSecondary::Reply {
            status: reply.status(),
            payload: reply.payload_bytes(),
        })?;
        let (done_tx, done_rx) = oneshot::channel();
        let sender = self.reply.take().ok_or(Error::SecondaryGone)?;
        sender
            .send((frame, done_tx))
            .map_err(|_| Error::SecondaryGone)?;
        Ok(done_rx)
    }

    /// Sends the reply and waits until it is written to the secondary's socket.
    ///
    /// Fails with [`Error::SecondaryGone`] if the secondary left first, or
    /// [`Error::TooLarge`] if the reply does not fit in a frame.
    pub async fn reply(mut self, reply: Reply) -> Result<(), Error> {
        let pid = self.pid;
        let done = self.send(&reply)?;
        delivered(pid, done.await)
    }

    /// Blocking form of [`Request::reply`]. Must not be called from inside an
    /// async runtime.
    pub fn reply_blocking(mut self, reply: Reply) -> Result<(), Error> {
        let pid = self.pid;
        let done = self.send(&reply)?;
        delivered(pid, done.blocking_recv())
    }
}

fn delivered(
    pid: i32,
    outcome: Result<Result<(), FrameError>, oneshot::error::RecvError>,
) -> Result<(), Error> {
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(FrameError::Io(e)))
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Err(Error::SecondaryGone)
        }
        Ok(Err(source)) => Err(Error::Frame { pid, source }),
        Err(_) => Err(Error::SecondaryGone),
    }
}
