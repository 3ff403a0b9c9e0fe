//! The server thread every listening `cohort::local` endpoint runs: the
//! primary's socket and each registered instance's socket.
//!
//! **Owns:** the thread and its private current-thread runtime, accepting,
//! checking peer credentials, the cap on concurrent connections, the
//! deadlines every connection lives under, and the counters of all of that.
//! **Must not touch:** what a connection says (a [`Service`] decides), the
//! election, the runtime directory.
//!
//! # Bounds under hostile input
//!
//! In the system scope any local user may connect, so none of this trusts the
//! peer:
//! - **A cap on connections** (`Limits::max_connections`, default
//!   [`DEFAULT_MAX_CONNECTIONS`]). At the cap, a new connection evicts the
//!   oldest connection that is *not* waiting for the application's reply,
//!   taken from the user that holds the most connections: first one that has
//!   not yet sent a complete frame, then a watcher (`acquire_or_wait`). A flood
//!   from one user therefore evicts that user's own idle connections, and a
//!   real secondary, which sends its request as soon as it is greeted, is not
//!   evicted by connections opened before it. When every slot waits for the
//!   application, the new connection is closed at once. Every eviction and
//!   refusal is counted and logged (at powers of two, so a flood cannot flood
//!   the log).
//! - **Deadlines.** A connection must deliver its first complete frame within
//!   `Limits::first_frame` of being accepted (default 5 s; a slow-loris that
//!   trickles bytes is closed then too). Every write must finish within
//!   `Limits::write`. A connection waiting for the application's reply ends
//!   as soon as its peer hangs up.
//! - **Memory.** Frames are read as they arrive (`frame::FrameReader`), so an
//!   open connection costs at most 4 KiB of buffer plus twice what its peer
//!   actually sent, and never more than [`super::MAX_FRAME`].

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Error;
use super::frame::{self, FrameError};

/// Default for [`SingleInstance::max_connections`](super::SingleInstance::max_connections).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Default for [`SingleInstance::first_frame_timeout`](super::SingleInstance::first_frame_timeout).
pub const DEFAULT_FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one write may take before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The bounds a server holds its connections to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_connections: usize,
    pub first_frame: Duration,
    pub write: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            first_frame: DEFAULT_FIRST_FRAME_TIMEOUT,
            write: WRITE_TIMEOUT,
        }
    }
}

/// Counters of one endpoint's connections, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Connections accepted (all of them, including those closed at once).
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
    /// Idle connections closed to make room for a new one at the cap.
    pub evicted: u64,
    /// New connections closed at once because every slot was busy.
    pub refused_over_cap: u64,
    /// Connections from a user that may not connect (closed at once).
    pub refused_other_user: u64,
    /// Connections closed for missing a deadline.
    pub timed_out: u64,
    /// Connections closed after a malformed, oversized or unexpected frame.
    pub bad_frames: u64,
    /// Bytes read from all connections.
    pub bytes_received: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    accepted: AtomicU64,
    evicted: AtomicU64,
    refused_over_cap: AtomicU64,
    refused_other_user: AtomicU64,
    timed_out: AtomicU64,
    bad_frames: AtomicU64,
    bytes_received: AtomicU64,
}

fn bump(counter: &AtomicU64) -> u64 {
    counter.fetch_add(1, Ordering::Relaxed) + 1
}

/// Connection states, in the order they are evicted.
const FRESH: u8 = 0;
const WATCHING: u8 = 1;
const BUSY: u8 = 2;

struct Slot {
    uid: u32,
    state: Arc<AtomicU8>,
    abort: tokio::task::AbortHandle,
}

#[derive(Default)]
struct Table {
    next: u64,
    slots: BTreeMap<u64, Slot>,
}

impl Table {
    /// The connection to close for a newcomer; see the module docs.
    fn victim(&self) -> Option<u64> {
        let mut per_uid: HashMap<u32, usize> = HashMap::new();
        for slot in self.slots.values() {
            *per_uid.entry(slot.uid).or_default() += 1;
        }
        self.slots
            .iter()
            .map(|(seq, s)| (seq, s, s.state.load(Ordering::Relaxed)))
            .filter(|(_, _, state)| *state != BUSY)
            .min_by_key(|(seq, s, state)| (std::cmp::Reverse(per_uid[&s.uid]), *state, **seq))
            .map(|(seq, _, _)| *seq)
    }
}

/// What a server does with each accepted, credential-checked connection.
pub(crate) trait Service: Send + Sync + 'static {
    /// Serves one connection to its end. The connection is closed after the
    /// server has removed it from its table, so a peer that sees the close
    /// also sees the slot free.
    fn serve(self: Arc<Self>, conn: &mut Conn) -> impl Future<Output = ()> + Send;
}

/// One accepted connection, with its peer's kernel credentials.
pub(crate) struct Conn {
    pub stream: UnixStream,
    pub pid: i32,
    pub uid: u32,
    accepted: Instant,
    state: Arc<AtomicU8>,
    limits: Limits,
    counters: Arc<Counters>,
}

impl Conn {
    /// Reads the connection's first frame, due within the first-frame deadline.
    /// Failures are counted and logged here; the caller just closes.
    pub async fn first_frame(&mut self) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        let deadline = self.accepted + self.limits.first_frame;
        let result = tokio::time::timeout_at(
            deadline,
            frame::read_frame_counted(&mut self.stream, &mut buf, &self.counters.bytes_received),
        )
        .await;
        match result {
            Ok(Ok(())) => Some(buf),
            Ok(Err(FrameError::Closed)) => None,
            Ok(Err(error)) => {
                self.bad_frame(&error);
                None
            }
            Err(_) => {
                let n = bump(&self.counters.timed_out);
                tracing::debug!(
                    peer_pid = self.pid,
                    timed_out = n,
                    "a local connection sent no complete frame in time; closing"
                );
                None
            }
        }
    }

    /// Counts and logs a bad frame (the caller closes the connection).
    pub fn bad_frame(&self, error: &FrameError) {
        bump(&self.counters.bad_frames);
        tracing::warn!(
            peer_pid = self.pid,
            error = %error,
            source = ?std::error::Error::source(error),
            "closing a local connection after a bad frame"
        );
    }

    /// Writes one frame within the write deadline.
    pub async fn write(&mut self, frame: &[u8]) -> Result<(), FrameError> {
        match tokio::time::timeout(
            self.limits.write,
            frame::write_frame(&mut self.stream, frame),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => {
                bump(&self.counters.timed_out);
                Err(FrameError::Io(std::io::ErrorKind::TimedOut.into()))
            }
        }
    }

    /// From now on the connection waits for the application: never evicted.
    pub fn set_busy(&self) {
        self.state.store(BUSY, Ordering::Relaxed);
    }

    /// From now on the connection only watches for this process's exit.
    pub fn set_watching(&self) {
        self.state.store(WATCHING, Ordering::Relaxed);
    }

    /// Resolves when the peer hangs up (or sends anything more, which the
    /// protocol does not allow there).
    pub async fn peer_gone(&mut self) {
        let mut sink = [0u8; 1];
        let _ = tokio::io::AsyncReadExt::read(&mut self.stream, &mut sink).await;
    }
}

/// A running server thread; stopping it closes every connection.
#[derive(Debug)]
pub(crate) struct ServerThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    counters: Arc<Counters>,
    table: Arc<Mutex<TableHandle>>,
}

/// The table, opaque outside this module.
pub(crate) struct TableHandle(Table);

impl std::fmt::Debug for TableHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} connections", self.0.slots.len())
    }
}

fn lock(table: &Mutex<TableHandle>) -> std::sync::MutexGuard<'_, TableHandle> {
    table
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ServerThread {
    /// Starts serving `listener` on a new thread.
    ///
    /// The runtime is built and the listener registered here, so their
    /// errors come back at once; the thread is not waited for. A runtime that
    /// is never handed to the thread (an error, or a thread that cannot be
    /// spawned) is released with `shutdown_background`, which, unlike a plain
    /// drop, is allowed inside the caller's async context: this never panics.
    pub(crate) fn spawn<S: Service>(
        listener: StdUnixListener,
        endpoint: String,
        required_uid: Option<u32>,
        limits: Limits,
        service: Arc<S>,
    ) -> Result<ServerThread, Error> {
        let bind_err = |source| Error::Bind {
            endpoint: endpoint.clone(),
            source,
        };
        listener.set_nonblocking(true).map_err(bind_err)?;
        let runtime = BackgroundDrop(Some(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(Error::Runtime)?,
        ));
        let listener = {
            let _guard = runtime.handle().enter();
            UnixListener::from_std(listener).map_err(bind_err)?
        };
        let counters = Arc::new(Counters::default());
        let table = Arc::new(Mutex::new(TableHandle(Table::default())));
        let (stop, stop_rx) = oneshot::channel::<()>();
        let accept = Acceptor {
            listener,
            endpoint,
            required_uid,
            limits,
            counters: counters.clone(),
            table: table.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("cohort-local-server".into())
            .spawn(move || {
                let mut runtime = runtime;
                let Some(runtime) = runtime.0.take() else {
                    return;
                };
                runtime.block_on(async move {
                    tokio::select! {
                        _ = stop_rx => {}
                        _ = accept.run(service) => {}
                    }
                });
                // Dropped here, on its own thread: every connection task
                // is cancelled and its socket closed.
                drop(runtime);
            })
            .map_err(|source| Error::Io {
                what: "starting a local server thread",
                source,
            })?;
        Ok(ServerThread {
            stop: Some(stop),
            thread: Some(thread),
            counters,
            table,
        })
    }

    /// The counters so far.
    pub(crate) fn stats(&self) -> ConnectionStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConnectionStats {
            accepted: get(&c.accepted),
            open: lock(&self.table).0.slots.len() as u64,
            evicted: get(&c.evicted),
            refused_over_cap: get(&c.refused_over_cap),
            refused_other_user: get(&c.refused_other_user),
            timed_out: get(&c.timed_out),
            bad_frames: get(&c.bad_frames),
            bytes_received: get(&c.bytes_received),
        }
    }

    /// Stops the thread and waits for it: every connection is closed after.
    pub(crate) fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A runtime released with `shutdown_background` unless taken out first.
struct BackgroundDrop(Option<tokio::runtime::Runtime>);

impl BackgroundDrop {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("present until taken").handle()
    }
}

impl Drop for BackgroundDrop {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

struct Acceptor {
    listener: UnixListener,
    endpoint: String,
    required_uid: Option<u32>,
    limits: Limits,
    counters: Arc<Counters>,
    table: Arc<Mutex<TableHandle>>,
}

/// Logs the 1st, 2nd, 4th, 8th ... occurrence only.
fn power_of_two(n: u64) -> bool {
    n.is_power_of_two()
}

impl Acceptor {
    async fn run<S: Service>(self, service: Arc<S>) {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and similar: keep serving, but do not spin.
                    tracing::warn!(%error, endpoint = %self.endpoint, "accepting a local connection failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            bump(&self.counters.accepted);
            let cred = match stream.peer_cred() {
                Ok(cred) => cred,
                Err(error) => {
                    tracing::warn!(%error, "could not read a local peer's credentials; closing the connection");
                    continue;
                }
            };
            let (pid, uid) = (cred.pid().unwrap_or(0), cred.uid());
            if let Some(required) = self.required_uid
                && uid != required
            {
                bump(&self.counters.refused_other_user);
                tracing::warn!(
                    peer_pid = pid,
                    peer_uid = uid,
                    expected_uid = required,
                    "refusing a local connection from another user"
                );
                continue;
            }
            self.admit(stream, pid, uid, &service);
        }
    }

    fn admit<S: Service>(&self, stream: UnixStream, pid: i32, uid: u32, service: &Arc<S>) {
        let mut table = lock(&self.table);
        let table = &mut table.0;
        if table.slots.len() >= self.limits.max_connections {
            match table.victim() {
                Some(seq) => {
                    if let Some(slot) = table.slots.remove(&seq) {
                        slot.abort.abort();
                    }
                    let n = bump(&self.counters.evicted);
                    if power_of_two(n) {
                        tracing::warn!(
                            endpoint = %self.endpoint,
                            evicted = n,
                            cap = self.limits.max_connections,
                            "at the connection cap: closed the oldest idle connection for a new one"
                        );
                    }
                }
                None => {
                    let n = bump(&self.counters.refused_over_cap);
                    if power_of_two(n) {
                        tracing::warn!(
                            endpoint = %self.endpoint,
                            refused = n,
                            cap = self.limits.max_connections,
                            peer_pid = pid,
                            "at the connection cap with every connection busy: closed a new connection"
                        );
                    }
                    return;
                }
            }
        }
        let seq = table.next;
        table.next += 1;
        let state = Arc::new(AtomicU8::new(FRESH));
        let conn = Conn {
            stream,
            pid,
            uid,
            accepted: Instant::now(),
            state: state.clone(),
            limits: self.limits,
            counters: self.counters.clone(),
        };
        let done = self.table.clone();
        let task = tokio::spawn(serve_then_remove(service.clone(), conn, done, seq));
        // The task cannot run before this returns (one thread), so it is in
        // the table before it can remove itself.
        table.slots.insert(
            seq,
            Slot {
                uid,
                state,
                abort: task.abort_handle(),
            },
        );
    }
}

async fn serve_then_remove<S: Service>(
    service: Arc<S>,
    mut conn: Conn,
    table: Arc<Mutex<TableHandle>>,
    seq: u64,
) {
    service.serve(&mut conn).await;
    lock(&table).0.slots.remove(&seq);
    drop(conn);
}
