//! The primary side: the one running instance, the requests it receives and
//! the protocol it speaks on each connection.
//!
//! **Owns:** [`Primary`] (its request inbox, hand-over on drop), [`Request`]
//! and the per-connection protocol of the primary's endpoint (greeting,
//! request, watch, identity challenge, shutdown request).
//! **Must not touch:** accepting, caps and deadlines (`server`), the election
//! lock and directory (`election`, `dir`).
//!
//! # The inbox
//!
//! Connection tasks put requests into a bounded channel (128; a full inbox
//! holds further requests back on their connections). The receiving end sits
//! behind a plain mutex that is only ever held to take one item, never across
//! an `.await`, so [`Primary::try_next_request`] always gets a queued request
//! even while another task or thread waits in [`Primary::next_request`]. Async
//! waiters park on a `Notify`, blocking ones on a `Condvar`; both are woken
//! after every delivery and by [`Primary::stop_accepting`].

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc, oneshot};

use super::blocking::ensure_blocking_allowed;
use super::frame::{self, FrameError, ToPrimary, ToSecondary};
use super::identity::ProcessIdentity;
use super::server::{Conn, ConnectionStats, Limits, ServerThread, Service};
use super::{Error, Reply};

/// Requests waiting for the application to take them.
const QUEUE: usize = 128;

type Delivery = (Vec<u8>, oneshot::Sender<Result<(), FrameError>>);

/// Shared between the [`Primary`] handle and its connection tasks.
#[derive(Debug)]
struct Inbox {
    rx: Mutex<mpsc::Receiver<Request>>,
    accepting: AtomicBool,
    /// Woken after every delivery and on `stop_accepting`.
    arrived: Notify,
    arrived_blocking: Condvar,
}

enum Take {
    Got(Request),
    Empty,
    Ended,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, mpsc::Receiver<Request>> {
        self.rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take(&self, rx: &mut mpsc::Receiver<Request>) -> Take {
        if !self.accepting.load(Ordering::SeqCst) {
            // Queued requests are still received after `close`; then `Disconnected`.
            rx.close();
        }
        match rx.try_recv() {
            Ok(r) => Take::Got(r),
            Err(mpsc::error::TryRecvError::Empty) => Take::Empty,
            Err(mpsc::error::TryRecvError::Disconnected) => Take::Ended,
        }
    }

    fn wake(&self) {
        // Taking the lock orders this after any blocking waiter's check.
        drop(self.lock());
        self.arrived_blocking.notify_all();
        self.arrived.notify_waiters();
    }
}

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
    inbox: Arc<Inbox>,
    server: ServerThread,
    socket_path: Option<PathBuf>,
    endpoint: String,
    lock: Option<File>,
}

/// How to start a primary's server.
pub(crate) struct ServerConfig {
    /// Peers must have this uid (per-user scope); `None` accepts every uid.
    pub required_uid: Option<u32>,
    pub endpoint: String,
    pub limits: Limits,
}

impl Primary {
    pub(crate) fn start(
        listener: std::os::unix::net::UnixListener,
        config: ServerConfig,
        socket_path: Option<PathBuf>,
        lock: Option<File>,
    ) -> Result<Primary, Error> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let inbox = Arc::new(Inbox {
            rx: Mutex::new(rx),
            accepting: AtomicBool::new(true),
            arrived: Notify::new(),
            arrived_blocking: Condvar::new(),
        });
        let service = Arc::new(PrimaryService {
            inbox: inbox.clone(),
            tx,
        });
        let server = ServerThread::spawn(
            listener,
            config.endpoint.clone(),
            config.required_uid,
            config.limits,
            service,
        )?;
        Ok(Primary {
            inbox,
            server,
            socket_path,
            endpoint: config.endpoint,
            lock,
        })
    }

    /// Waits for the next request from a later launch.
    ///
    /// Returns `None` once [`Primary::stop_accepting`] was called (also by an
    /// [`InstanceHandle::shutdown`](super::InstanceHandle::shutdown)) and every
    /// request already queued has been taken.
    pub async fn next_request(&self) -> Option<Request> {
        loop {
            let arrived = self.inbox.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            match self.inbox.take(&mut self.inbox.lock()) {
                Take::Got(r) => return Some(r),
                Take::Ended => return None,
                Take::Empty => {}
            }
            arrived.await;
        }
    }

    /// Blocking form of [`Primary::next_request`], for threads outside any
    /// async runtime; inside one it fails with [`Error::BlockingInRuntime`].
    pub fn next_request_blocking(&self) -> Result<Option<Request>, Error> {
        ensure_blocking_allowed("Primary::next_request_blocking")?;
        Ok(self.wait_blocking(None))
    }

    /// Blocking form of [`Primary::next_request`] that waits at most `wait`.
    ///
    /// `Ok(None)` when no request arrived in time, or when the primary stopped
    /// accepting ([`Primary::is_accepting`] tells them apart). Inside an async
    /// runtime it fails with [`Error::BlockingInRuntime`].
    pub fn next_request_timeout_blocking(&self, wait: Duration) -> Result<Option<Request>, Error> {
        ensure_blocking_allowed("Primary::next_request_timeout_blocking")?;
        Ok(self.wait_blocking(Some(Instant::now() + wait)))
    }

    fn wait_blocking(&self, deadline: Option<Instant>) -> Option<Request> {
        let mut rx = self.inbox.lock();
        loop {
            match self.inbox.take(&mut rx) {
                Take::Got(r) => return Some(r),
                Take::Ended => return None,
                Take::Empty => {}
            }
            rx = match deadline {
                None => self
                    .inbox
                    .arrived_blocking
                    .wait(rx)
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    self.inbox
                        .arrived_blocking
                        .wait_timeout(rx, left)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// Takes a request if one is queued, without waiting; never misses one
    /// because another task or thread is waiting in `next_request`.
    pub fn try_next_request(&self) -> Option<Request> {
        match self.inbox.take(&mut self.inbox.lock()) {
            Take::Got(r) => Some(r),
            Take::Empty | Take::Ended => None,
        }
    }

    /// Starts shutting down: from now on new launches are told the primary is
    /// shutting down (they back off and retry, and become primary once this one
    /// is dropped), and requests that arrive on connections already open are
    /// refused the same way. Requests already queued are still returned by
    /// [`Primary::next_request`], which then returns `None` (a task or thread
    /// waiting in it is woken); requests already taken can still be answered.
    pub fn stop_accepting(&self) {
        self.inbox.accepting.store(false, Ordering::SeqCst);
        self.inbox.wake();
    }

    /// True until [`Primary::stop_accepting`] is called (or a shutdown was
    /// requested through an [`InstanceHandle`](super::InstanceHandle)).
    pub fn is_accepting(&self) -> bool {
        self.inbox.accepting.load(Ordering::SeqCst)
    }

    /// The endpoint this primary listens on: a socket path, or `@name` for an
    /// abstract socket.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Counters of the endpoint's connections: accepted, open, evicted at the
    /// cap, refused, timed out, bad frames.
    pub fn stats(&self) -> ConnectionStats {
        self.server.stats()
    }

    /// Hands over and releases the election: same as dropping the primary, named
    /// for readability.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Primary {
    fn drop(&mut self) {
        self.inbox.accepting.store(false, Ordering::SeqCst);
        self.server.stop();
        // Still holding the lock: only the holder may remove the endpoint.
        if let Some(path) = self.socket_path.take() {
            let _ = std::fs::remove_file(path);
        }
        // Releasing the lock lets the next primary in.
        drop(self.lock.take());
    }
}

struct PrimaryService {
    inbox: Arc<Inbox>,
    tx: mpsc::Sender<Request>,
}

impl PrimaryService {
    fn accepting(&self) -> bool {
        self.inbox.accepting.load(Ordering::SeqCst)
    }
}

impl Service for PrimaryService {
    async fn serve(self: Arc<Self>, conn: &mut Conn) {
        let open = self.accepting();
        let hello = frame::encode(&ToSecondary::Hello { accepting: open }).expect("tiny frame");
        if let Err(error) = conn.write(&hello).await {
            tracing::debug!(peer_pid = conn.pid, %error, "a secondary left before the greeting");
            return;
        }
        if !open {
            return;
        }
        let Some(buf) = conn.first_frame().await else {
            return;
        };
        let wire = match frame::decode::<ToPrimary<'_>>(&buf) {
            Ok(ToPrimary::Request(wire)) => wire,
            Ok(ToPrimary::Watch) => {
                // Open until this process exits or hands over; the peer learns
                // of it from the end of the stream.
                conn.set_watching();
                conn.peer_gone().await;
                return;
            }
            Ok(ToPrimary::Challenge { nonce }) => {
                answer_challenge(conn, nonce).await;
                return;
            }
            Ok(ToPrimary::Shutdown) => {
                self.shutdown_requested(conn).await;
                return;
            }
            Err(error) => {
                conn.bad_frame(&error);
                return;
            }
        };
        conn.set_busy();
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
            pid: conn.pid,
            uid: conn.uid,
            reply: Some(reply_tx),
        };
        drop(buf);
        if self.accepting() && self.tx.send(request).await.is_ok() {
            self.inbox.wake();
            let answered = tokio::select! {
                answered = reply_rx => answered.ok(),
                () = conn.peer_gone() => None,
            };
            if let Some((frame, done)) = answered {
                let result = conn.write(&frame).await;
                let _ = done.send(result);
                return;
            }
        }
        // Not taken because the primary stopped accepting, dropped unanswered,
        // or the secondary left (then this write fails harmlessly).
        let refused = frame::encode(&ToSecondary::Refused {
            shutting_down: !self.accepting(),
        })
        .expect("tiny frame");
        let _ = conn.write(&refused).await;
    }
}

impl PrimaryService {
    /// Only this user (or root) may stop the primary, also in the system scope.
    async fn shutdown_requested(&self, conn: &mut Conn) {
        let me = super::dir::euid();
        if conn.uid != me && conn.uid != 0 {
            tracing::warn!(
                peer_pid = conn.pid,
                peer_uid = conn.uid,
                "refusing a shutdown request from another user"
            );
            let refused = frame::encode(&ToSecondary::Refused {
                shutting_down: false,
            })
            .expect("tiny frame");
            let _ = conn.write(&refused).await;
            return;
        }
        tracing::info!(
            peer_pid = conn.pid,
            "shutdown requested; no longer accepting"
        );
        self.inbox.accepting.store(false, Ordering::SeqCst);
        self.inbox.wake();
        let stopping = frame::encode(&ToSecondary::Stopping).expect("tiny frame");
        let _ = conn.write(&stopping).await;
    }
}

/// Answers an identity challenge with this process's identity and the nonce.
pub(crate) async fn answer_challenge(conn: &mut Conn, nonce: [u8; 16]) {
    conn.set_busy();
    // Hashing our executable happens once per process, off the runtime.
    let identity = match tokio::task::spawn_blocking(ProcessIdentity::current).await {
        Ok(Ok(identity)) => identity,
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot answer an identity challenge");
            return;
        }
        Err(_) => return,
    };
    match frame::encode(&ToSecondary::Identity { nonce, identity }) {
        Ok(answer) => {
            let _ = conn.write(&answer).await;
        }
        Err(_) => tracing::warn!("this process's identity does not fit in a frame"),
    }
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

    /// Blocking form of [`Request::reply`]. Inside an async runtime it fails
    /// with [`Error::BlockingInRuntime`] (the request is then dropped, which
    /// refuses it).
    pub fn reply_blocking(mut self, reply: Reply) -> Result<(), Error> {
        ensure_blocking_allowed("Request::reply_blocking")?;
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
