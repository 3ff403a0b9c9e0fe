//! Every live instance of an application on this host, listed without
//! scanning ports, and asked a question each.
//!
//! **Owns:** registration ([`Instances::register`]: a lock file held with
//! `flock` for the life of the [`Registration`], holding the instance's
//! identity, and a socket beside it), listing ([`Instances::list`]) and the
//! handshake ([`Instances::handshake`]).
//! **Must not touch:** the single-instance election (its `lock` and `socket`
//! are separate files), identity checks beyond the socket's peer pid.
//!
//! # Layout and why a dead instance is never listed
//!
//! `<runtime dir>/<app>/instances/` (the per-user directory, `0700`) holds,
//! per instance, `<pid>-<start time>-<n>.inst` and `<same>.sock`. The `.inst`
//! file is created under a temporary name, locked, filled with the identity
//! and only then renamed into place, so a lister never sees an unlocked
//! `.inst` of a live instance. A lister tries to lock each `.inst` file: if
//! the lock is free, its holder is dead (the kernel drops a `flock` however a
//! process dies), and the lister removes both files while holding the lock.
//! A frozen (SIGSTOPped) instance still holds its lock: it is listed, and a
//! handshake with it ends in [`HandshakeError::Timeout`] for it alone.
//!
//! A process that lists repeatedly skips the per-record lock attempt and read
//! for records it has read before, as long as `/proc/locks` (read once per
//! listing) shows the record's inode locked by the pid registered in it; see
//! [`Instances::list`]. A lock taken by a lister cleaning up a dead record is
//! held by the lister's pid, never the registered one, so it is never
//! mistaken for a live instance.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::marker::PhantomData;
use std::os::unix::fs::{DirEntryExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::blocking::runtime_for;
use super::error::HandshakeError;
use super::frame::{self, FrameError, FromInstance, ToInstance};
use super::identity::ProcessIdentity;
use super::server::{Conn, ConnectionStats, Limits, ServerThread, Service};
use super::{Error, dir, os};

/// The largest identity record a lister reads (an executable path of up to
/// `PATH_MAX` fits); a longer one fails to decode and is skipped.
const RECORD_BUF: usize = 4096 + 256;

/// The instances of one application, for this user.
///
/// ```no_run
/// use std::time::Duration;
/// use cohort::local::Instances;
/// # async fn demo() -> Result<(), cohort::local::Error> {
/// let app = Instances::new("org.example.worker");
/// // In every instance: answer "what version are you?" while registered.
/// let _me = app.register(|_: ()| env!("CARGO_PKG_VERSION").to_string())?;
/// // Anywhere: ask them all.
/// for answer in app.handshake::<(), String>(&(), Duration::from_millis(200)).await? {
///     match answer.result {
///         Ok(version) => println!("pid {}: {version}", answer.instance.identity().pid),
///         Err(why) => println!("pid {}: {why}", answer.instance.identity().pid),
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Instances {
    app: String,
    runtime_dir: Option<PathBuf>,
    limits: Limits,
}

/// Lists the live instances of `app` in the default runtime directory:
/// shorthand for `Instances::new(app).list()`.
pub fn instances(app: &str) -> Result<Vec<Instance>, Error> {
    Instances::new(app).list()
}

/// One live instance, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    identity: ProcessIdentity,
    socket: PathBuf,
}

/// One instance's answer to a handshake, or why it gave none.
#[derive(Debug)]
pub struct Answer<A> {
    /// The instance asked.
    pub instance: Instance,
    /// Its answer, or the reason there is none.
    pub result: Result<A, HandshakeError>,
}

/// This process's registration as an instance; dropping it unregisters.
#[derive(Debug)]
pub struct Registration {
    server: ServerThread,
    record: PathBuf,
    socket: PathBuf,
    lock: Option<File>,
}

impl Registration {
    /// The socket other processes ask this instance on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Counters of this instance's connections.
    pub fn stats(&self) -> ConnectionStats {
        self.server.stats()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.server.stop();
        // Still holding the lock: nobody else removes these files meanwhile.
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.record);
        drop(self.lock.take());
    }
}

impl Instances {
    /// The instances of `app_id` (same rules as [`super::SingleInstance::new`]).
    pub fn new(app_id: impl Into<String>) -> Self {
        Instances {
            app: app_id.into(),
            runtime_dir: None,
            limits: Limits::default(),
        }
    }

    /// Uses `dir` instead of `$XDG_RUNTIME_DIR` (the application's directory
    /// is created in it, `0700`).
    pub fn runtime_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.runtime_dir = Some(dir.into());
        self
    }

    fn dir(&self) -> Result<PathBuf, Error> {
        super::election::validate_app(&self.app)?;
        let app_dir = dir::user_dir(&self.app, self.runtime_dir.as_deref())?;
        let dir = app_dir.join("instances");
        dir::ensure_dir(&dir, dir::Trust::Private)?;
        Ok(dir)
    }

    /// Registers this process as an instance until the [`Registration`] is
    /// dropped (or the process dies). `handler` answers handshakes: it gets
    /// the decoded question and returns the answer; it runs on the
    /// registration's own thread, so keep it quick.
    pub fn register<Q, A, F>(&self, handler: F) -> Result<Registration, Error>
    where
        Q: DeserializeOwned + 'static,
        A: Serialize + 'static,
        F: Fn(Q) -> A + Send + Sync + 'static,
    {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = self.dir()?;
        let me = ProcessIdentity::current()?;
        let name = format!(
            "{}-{}-{}",
            me.pid,
            me.start_time,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let io = |what| move |source| Error::Io { what, source };
        let temp = dir.join(format!(".{name}.tmp"));
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&temp)
            .map_err(io("creating an instance record"))?;
        lock.try_lock().map_err(|e| Error::Io {
            what: "locking a new instance record",
            source: match e {
                TryLockError::Error(e) => e,
                TryLockError::WouldBlock => std::io::ErrorKind::WouldBlock.into(),
            },
        })?;
        let record = postcard::to_allocvec(&me).map_err(Error::Payload)?;
        lock.write_all(&record)
            .map_err(io("writing an instance record"))?;
        let socket = dir.join(format!("{name}.sock"));
        let endpoint = socket.display().to_string();
        let listener = StdUnixListener::bind(&socket).map_err(|source| Error::Bind {
            endpoint: endpoint.clone(),
            source,
        })?;
        let service = Arc::new(InstanceService {
            handler,
            types: PhantomData,
        });
        let server = match ServerThread::spawn(
            listener,
            endpoint,
            Some(dir::euid()),
            self.limits,
            service,
        ) {
            Ok(server) => server,
            Err(e) => {
                let _ = std::fs::remove_file(&socket);
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
        };
        let record_path = dir.join(format!("{name}.inst"));
        std::fs::rename(&temp, &record_path).map_err(io("publishing an instance record"))?;
        Ok(Registration {
            server,
            record: record_path,
            socket,
            lock: Some(lock),
        })
    }

    /// The live instances, each with the identity it registered; dead
    /// instances' files are removed on the way.
    ///
    /// Fast path: an instance whose record this process has read before is
    /// live when the kernel's lock table (`/proc/locks`, read once per
    /// listing) shows its record's inode locked by its registered pid. Any
    /// other record takes the exact path: try its lock (free means its holder
    /// died), read it.
    pub fn list(&self) -> Result<Vec<Instance>, Error> {
        let dir = self.dir()?;
        let dir_err = |source| Error::RuntimeDir {
            path: dir.clone(),
            source,
        };
        let entries = std::fs::read_dir(&dir).map_err(dir_err)?;
        let dir_fd = File::open(&dir).map_err(dir_err)?;
        let dir_meta = dir_fd.metadata().map_err(dir_err)?;
        let holders = os::flock_holders(dir_meta.dev());
        let mut cache = record_cache();
        if cache.len() >= RECORD_CACHE {
            cache.clear();
        }
        let mut live = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".inst")) else {
                if name.to_str().is_some_and(|n| n.ends_with(".tmp")) {
                    remove_abandoned(&entry.path());
                }
                continue;
            };
            let key = (dir_meta.dev(), dir_meta.ino(), name.clone());
            if let (Some(identity), Some(holders)) = (cache.get(&key), &holders)
                && holders
                    .get(&entry.ino())
                    .is_some_and(|pids| pids.contains(&identity.pid))
            {
                live.push(Instance {
                    identity: identity.clone(),
                    socket: dir.join(format!("{stem}.sock")),
                });
                continue;
            }
            cache.remove(&key);
            if let Some(identity) = read_if_live(&dir_fd, &dir, &name, stem) {
                cache.insert(key, identity.clone());
                live.push(Instance {
                    identity,
                    socket: dir.join(format!("{stem}.sock")),
                });
            }
        }
        drop(cache);
        live.sort_by_key(|i| (i.identity.pid, i.identity.start_time));
        Ok(live)
    }

    /// Asks every live instance `question`, all at once, and returns each
    /// answer or the reason for none, within `timeout` overall. A frozen
    /// instance costs only its own [`HandshakeError::Timeout`].
    pub async fn handshake<Q, A>(
        &self,
        question: &Q,
        timeout: Duration,
    ) -> Result<Vec<Answer<A>>, Error>
    where
        Q: Serialize + ?Sized,
        A: DeserializeOwned,
    {
        let listed = self.list()?;
        let ask = Arc::new(ask_frame(question)?);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut asks = tokio::task::JoinSet::new();
        for (i, instance) in listed.iter().enumerate() {
            let ask = ask.clone();
            let socket = instance.socket.clone();
            let pid = instance.identity.pid;
            asks.spawn(async move {
                let raw = tokio::time::timeout_at(deadline, exchange(socket, pid, &ask))
                    .await
                    .unwrap_or(Err(HandshakeError::Timeout));
                (i, raw)
            });
        }
        let mut raw: Vec<Option<Result<Vec<u8>, HandshakeError>>> =
            (0..listed.len()).map(|_| None).collect();
        while let Some(done) = asks.join_next().await {
            if let Ok((i, result)) = done {
                raw[i] = Some(result);
            }
        }
        Ok(listed
            .into_iter()
            .zip(raw)
            .map(|(instance, raw)| Answer {
                instance,
                result: raw
                    .unwrap_or(Err(HandshakeError::Gone))
                    .and_then(|bytes| frame::decode_exact(&bytes).map_err(HandshakeError::Payload)),
            })
            .collect())
    }

    /// Blocking form of [`Instances::handshake`]; `Err` inside a runtime.
    pub fn handshake_blocking<Q, A>(
        &self,
        question: &Q,
        timeout: Duration,
    ) -> Result<Vec<Answer<A>>, Error>
    where
        Q: Serialize + ?Sized,
        A: DeserializeOwned,
    {
        runtime_for("Instances::handshake_blocking")?.block_on(self.handshake(question, timeout))
    }
}

impl Instance {
    /// The identity this instance registered with.
    pub fn identity(&self) -> &ProcessIdentity {
        &self.identity
    }

    /// Asks this one instance `question`, within `timeout`.
    pub async fn handshake<Q, A>(
        &self,
        question: &Q,
        timeout: Duration,
    ) -> Result<A, HandshakeError>
    where
        Q: Serialize + ?Sized,
        A: DeserializeOwned,
    {
        let ask = ask_frame(question).map_err(|_| HandshakeError::NotUnderstood)?;
        let bytes = tokio::time::timeout(
            timeout,
            exchange(self.socket.clone(), self.identity.pid, &ask),
        )
        .await
        .unwrap_or(Err(HandshakeError::Timeout))?;
        frame::decode_exact(&bytes).map_err(HandshakeError::Payload)
    }

    /// Blocking form of [`Instance::handshake`]; a runtime error becomes
    /// [`HandshakeError::Frame`].
    pub fn handshake_blocking<Q, A>(
        &self,
        question: &Q,
        timeout: Duration,
    ) -> Result<A, HandshakeError>
    where
        Q: Serialize + ?Sized,
        A: DeserializeOwned,
    {
        let runtime = runtime_for("Instance::handshake_blocking").map_err(|e| {
            HandshakeError::Frame(FrameError::Io(std::io::Error::other(e.to_string())))
        })?;
        runtime.block_on(self.handshake(question, timeout))
    }
}

/// Records already read, by (directory device, directory inode, file name).
/// A name is `<pid>-<start time>-<n>`, which no other process of this boot
/// can register, so an entry never goes stale: it is only trusted while the
/// kernel shows that pid holding the record's lock.
type RecordCache = HashMap<(u64, u64, OsString), ProcessIdentity>;

/// At most this many records are cached; the cache starts over when full.
const RECORD_CACHE: usize = 4096;

fn record_cache() -> MutexGuard<'static, RecordCache> {
    static CACHE: OnceLock<Mutex<RecordCache>> = OnceLock::new();
    CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The exact check: the record's identity if its lock is held; if the lock
/// is free its holder died, and both its files are removed under the lock.
fn read_if_live(dir_fd: &File, dir: &Path, name: &OsStr, stem: &str) -> Option<ProcessIdentity> {
    // Relative to the open directory: no path walk per instance.
    let fd = rustix::fs::openat(
        dir_fd,
        name,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    let mut file = File::from(fd);
    match file.try_lock() {
        Ok(()) => {
            let _ = std::fs::remove_file(dir.join(format!("{stem}.sock")));
            let _ = std::fs::remove_file(dir.join(name));
            return None;
        }
        Err(TryLockError::WouldBlock) => {}
        Err(TryLockError::Error(_)) => return None,
    }
    // One read: a record is a few hundred bytes, written once before the
    // file was published, and a regular file's read returns all that fits.
    let mut buf = [0u8; RECORD_BUF];
    let n = file.read(&mut buf).ok()?;
    frame::decode_exact::<ProcessIdentity>(&buf[..n]).ok()
}

/// A temporary record whose registration died before publishing it: unlocked
/// and older than a minute (a registration in progress holds its lock within
/// microseconds of creating the file).
fn remove_abandoned(path: &Path) {
    let old = std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > Duration::from_secs(60));
    if !old {
        return;
    }
    if let Ok(file) = File::open(path)
        && file.try_lock().is_ok()
    {
        let _ = std::fs::remove_file(path);
    }
}

fn ask_frame<Q: Serialize + ?Sized>(question: &Q) -> Result<Vec<u8>, Error> {
    let payload = postcard::to_allocvec(question).map_err(Error::Payload)?;
    Ok(frame::encode(&ToInstance::Ask(&payload))?)
}

/// One question and answer on a fresh connection; the answer's raw payload.
async fn exchange(socket: PathBuf, pid: u32, ask: &[u8]) -> Result<Vec<u8>, HandshakeError> {
    let mut stream = UnixStream::connect(&socket)
        .await
        .map_err(|_| HandshakeError::Gone)?;
    let found = stream
        .peer_cred()
        .map_err(|e| HandshakeError::Frame(FrameError::Io(e)))?
        .pid()
        .unwrap_or(0);
    if i64::from(found) != i64::from(pid) {
        return Err(HandshakeError::WrongPeer {
            expected: pid,
            found,
        });
    }
    let gone = |e: FrameError| match e {
        FrameError::Closed | FrameError::Truncated => HandshakeError::Gone,
        FrameError::Io(ref io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            HandshakeError::Gone
        }
        e => HandshakeError::Frame(e),
    };
    frame::write_frame(&mut stream, ask).await.map_err(gone)?;
    let mut buf = Vec::new();
    frame::read_frame(&mut stream, &mut buf)
        .await
        .map_err(gone)?;
    match frame::decode::<FromInstance<'_>>(&buf).map_err(HandshakeError::Frame)? {
        FromInstance::Answer(payload) => Ok(payload.to_vec()),
        FromInstance::NotUnderstood => Err(HandshakeError::NotUnderstood),
    }
}

struct InstanceService<Q, A, F> {
    handler: F,
    types: PhantomData<fn(Q) -> A>,
}

impl<Q, A, F> Service for InstanceService<Q, A, F>
where
    Q: DeserializeOwned + 'static,
    A: Serialize + 'static,
    F: Fn(Q) -> A + Send + Sync + 'static,
{
    async fn serve(self: Arc<Self>, conn: &mut Conn) {
        let Some(buf) = conn.first_frame().await else {
            return;
        };
        conn.set_busy();
        let reply = match frame::decode::<ToInstance<'_>>(&buf) {
            Ok(ToInstance::Ask(payload)) => match frame::decode_exact::<Q>(payload) {
                Ok(question) => {
                    let answer = (self.handler)(question);
                    match postcard::to_allocvec(&answer) {
                        Ok(bytes) => frame::encode(&FromInstance::Answer(&bytes)),
                        Err(_) => frame::encode(&FromInstance::NotUnderstood),
                    }
                }
                Err(_) => frame::encode(&FromInstance::NotUnderstood),
            },
            Err(error) => {
                conn.bad_frame(&error);
                return;
            }
        };
        match reply {
            Ok(reply) => {
                let _ = conn.write(&reply).await;
            }
            Err(_) => tracing::warn!("a handshake answer does not fit in a frame; not sent"),
        }
    }
}
