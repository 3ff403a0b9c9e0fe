//! A verified handle on an application's running primary: probe it, then
//! watch, reach, stop or kill exactly that process.
//!
//! **Owns:** [`InstanceHandle`] and [`Expect`]: the identity challenge (a
//! fresh nonce the primary must echo with its identity), checking the answer
//! against the kernel (the socket's peer pid, the process's start time, boot
//! and binary), and the process handle (pidfd) that keeps naming that process.
//! **Must not touch:** the election (a probe never becomes primary), the
//! primary's own serving (`primary` answers challenges).

use std::time::{Duration, Instant};

use super::blocking::{BlockingSecondary, runtime_for};
use super::error::ProbeError;
use super::frame::{self, FrameError, ToPrimary, ToSecondary};
use super::identity::{ExeHash, ProcessIdentity, Verdict};
use super::os::ProcessHandle;
use super::reach::{Connected, Reach};
use super::{Error, Secondary, SingleInstance};

/// What a probe requires of the primary beyond "alive and who it says it is".
///
/// ```
/// use cohort::local::{ExeHash, Expect};
/// let expect = Expect::any().exe_hash(ExeHash([0; 32]));
/// # let _ = expect;
/// ```
#[derive(Debug, Clone, Default)]
pub struct Expect {
    exe_hash: Option<ExeHash>,
    identity: Option<ProcessIdentity>,
}

impl Expect {
    /// Any live primary of this user.
    pub fn any() -> Self {
        Self::default()
    }

    /// The primary must run an executable with this hash.
    pub fn exe_hash(mut self, hash: ExeHash) -> Self {
        self.exe_hash = Some(hash);
        self
    }

    /// The primary must be exactly this process (for example a record kept
    /// from an earlier run).
    pub fn identity(mut self, identity: ProcessIdentity) -> Self {
        self.identity = Some(identity);
        self
    }
}

/// A verified handle on an application's primary process.
///
/// It keeps a pidfd on the process, so [`InstanceHandle::is_alive`] is exact
/// and never confused by pid reuse, and [`InstanceHandle::force_kill`] can only
/// hit that process.
///
/// ```no_run
/// use std::time::Duration;
/// use cohort::local::{Expect, InstanceHandle, SingleInstance};
/// # async fn demo() -> Result<(), cohort::local::Error> {
/// let app = SingleInstance::new("org.example.build-server");
/// let server = InstanceHandle::probe(&app, &Expect::any()).await?;
/// println!("pid {} runs {}", server.identity().pid, server.identity().exe.display());
/// server.shutdown(Duration::from_secs(5)).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct InstanceHandle {
    identity: ProcessIdentity,
    process: ProcessHandle,
    app: SingleInstance,
}

impl InstanceHandle {
    /// Connects to `app`'s primary, challenges it with a fresh nonce, checks
    /// the identity it answers with, and returns a handle, or the typed reason
    /// ([`Error::Probe`]) why not. Waits at most the app's
    /// [`SingleInstance::timeout`].
    pub async fn probe(app: &SingleInstance, expected: &Expect) -> Result<InstanceHandle, Error> {
        let plan = app.plan()?;
        let start = Instant::now();
        let deadline = start + app.timeout;
        let (mut stream, pid) = match app.connect(&plan, deadline).await {
            Ok(Connected::Yes(stream, pid)) => (stream, pid),
            Ok(Connected::NotYet(why)) => return Err(ProbeError::NoPrimary { why }.into()),
            Err(Error::ForeignPrimary {
                found, expected, ..
            }) => return Err(ProbeError::ForeignPrimary { found, expected }.into()),
            Err(e) => return Err(e),
        };
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| Error::Io {
            what: "drawing a nonce for the identity challenge",
            source: std::io::Error::other(e),
        })?;
        let challenge = frame::encode(&ToPrimary::Challenge { nonce })?;
        let exchange = async {
            let mut buf = Vec::new();
            frame::read_frame(&mut stream, &mut buf).await?;
            match frame::decode::<ToSecondary<'_>>(&buf)? {
                ToSecondary::Hello { accepting: true } => {}
                ToSecondary::Hello { accepting: false } => return Ok(None),
                _ => return Err(FrameError::Unexpected("something other than a greeting")),
            }
            frame::write_frame(&mut stream, &challenge).await?;
            frame::read_frame(&mut stream, &mut buf).await?;
            match frame::decode::<ToSecondary<'_>>(&buf)? {
                ToSecondary::Identity { nonce, identity } => Ok(Some((nonce, identity))),
                _ => Err(FrameError::Unexpected("not an identity answer")),
            }
        };
        let (answered_nonce, identity) =
            match tokio::time::timeout_at(deadline.into(), exchange).await {
                Err(_) => {
                    return Err(ProbeError::Unresponsive {
                        pid,
                        waited: start.elapsed(),
                    }
                    .into());
                }
                Ok(Ok(Some(answer))) => answer,
                Ok(Ok(None)) => {
                    return Err(ProbeError::NoPrimary {
                        why: "the primary is shutting down".into(),
                    }
                    .into());
                }
                Ok(Err(FrameError::Closed | FrameError::Truncated)) => {
                    return Err(ProbeError::Unresponsive {
                        pid,
                        waited: start.elapsed(),
                    }
                    .into());
                }
                Ok(Err(source)) => return Err(ProbeError::Frame { pid, source }.into()),
            };
        if answered_nonce != nonce {
            return Err(ProbeError::WrongNonce { pid }.into());
        }
        Self::check(identity, pid, expected, app)
    }

    fn check(
        identity: ProcessIdentity,
        socket_pid: i32,
        expected: &Expect,
        app: &SingleInstance,
    ) -> Result<InstanceHandle, Error> {
        if i64::from(identity.pid) != i64::from(socket_pid) {
            return Err(ProbeError::PeerMismatch {
                socket_pid,
                claimed_pid: identity.pid,
            }
            .into());
        }
        let pid = identity.pid;
        match identity.verify() {
            // The process is the one that answered; a changed file on disk
            // (an upgrade waiting) is for `Expect` and the caller to judge.
            Verdict::Alive | Verdict::BinaryChanged => {}
            verdict => return Err(ProbeError::NotVerified { pid, verdict }.into()),
        }
        if let Some(hash) = expected.exe_hash
            && hash != identity.exe_hash
        {
            return Err(ProbeError::OtherBinary {
                pid,
                expected: hash,
                found: identity.exe_hash,
            }
            .into());
        }
        if let Some(want) = &expected.identity
            && *want != identity
        {
            return Err(ProbeError::Unexpected {
                pid,
                what: format!(
                    "expected pid {} started at tick {}",
                    want.pid, want.start_time
                ),
            }
            .into());
        }
        let process = match ProcessHandle::open(pid, identity.start_time) {
            Ok(Some(process)) => process,
            Ok(None) => {
                return Err(ProbeError::NotVerified {
                    pid,
                    verdict: Verdict::Dead,
                }
                .into());
            }
            Err(source) => {
                return Err(Error::Io {
                    what: "opening a pidfd on the primary",
                    source,
                });
            }
        };
        Ok(InstanceHandle {
            identity,
            process,
            app: app.clone(),
        })
    }

    /// Blocking form of [`InstanceHandle::probe`]. Inside an async runtime it
    /// fails with [`Error::BlockingInRuntime`].
    pub fn probe_blocking(
        app: &SingleInstance,
        expected: &Expect,
    ) -> Result<InstanceHandle, Error> {
        runtime_for("InstanceHandle::probe_blocking")?.block_on(Self::probe(app, expected))
    }

    /// The verified identity of the process.
    pub fn identity(&self) -> &ProcessIdentity {
        &self.identity
    }

    /// True until the process exits; a cheap poll of the pidfd, no connection.
    pub fn is_alive(&self) -> bool {
        !self.process.has_exited()
    }

    /// Connects to the primary as a secondary, checking that the process
    /// serving the endpoint is still this one.
    pub async fn connect(&self) -> Result<Secondary, Error> {
        let plan = self.app.plan()?;
        let start = Instant::now();
        let deadline = start + self.app.timeout;
        match self.app.try_secondary(&plan, deadline).await? {
            Reach::Greeted(secondary)
                if i64::from(secondary.primary_pid()) == i64::from(self.identity.pid) =>
            {
                Ok(secondary)
            }
            Reach::Greeted(secondary) => Err(ProbeError::PeerMismatch {
                socket_pid: secondary.primary_pid(),
                claimed_pid: self.identity.pid,
            }
            .into()),
            Reach::NotYet(why) => Err(ProbeError::NoPrimary { why }.into()),
            Reach::Silent(pid) => Err(ProbeError::Unresponsive {
                pid,
                waited: start.elapsed(),
            }
            .into()),
        }
    }

    /// Blocking form of [`InstanceHandle::connect`].
    pub fn connect_blocking(&self) -> Result<BlockingSecondary, Error> {
        let runtime = runtime_for("InstanceHandle::connect_blocking")?;
        let secondary = runtime.block_on(self.connect())?;
        Ok(BlockingSecondary::from_parts(secondary, runtime))
    }

    /// Asks the primary to stop (it stops accepting, and its
    /// `next_request` returns `None`), then waits up to `timeout` for the
    /// process to exit, without blocking the runtime. Fails with
    /// [`Error::ShutdownTimeout`] if it is still running then.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), Error> {
        let start = Instant::now();
        let deadline = start + timeout;
        if self.is_alive() {
            let ask = async {
                let plan = self.app.plan()?;
                if let Reach::Greeted(secondary) = self.app.try_secondary(&plan, deadline).await?
                    && i64::from(secondary.primary_pid()) == i64::from(self.identity.pid)
                {
                    secondary.request_shutdown().await?;
                }
                Ok::<(), Error>(())
            };
            match tokio::time::timeout_at(deadline.into(), ask).await {
                Ok(Err(e)) if !e.is_retryable() => return Err(e),
                _ => {}
            }
        }
        if tokio::time::timeout_at(deadline.into(), self.process.exited())
            .await
            .is_err()
        {
            return Err(Error::ShutdownTimeout {
                pid: self.identity.pid,
                waited: start.elapsed(),
            });
        }
        Ok(())
    }

    /// Blocking form of [`InstanceHandle::shutdown`].
    pub fn shutdown_blocking(&self, timeout: Duration) -> Result<(), Error> {
        runtime_for("InstanceHandle::shutdown_blocking")?.block_on(self.shutdown(timeout))
    }

    /// Sends SIGKILL to exactly this process (through its pidfd, so never to
    /// a process that reused its pid). Returns at once; use
    /// [`InstanceHandle::wait`] to see it gone.
    pub fn force_kill(&self) -> Result<(), Error> {
        self.process.kill().map_err(|source| Error::Io {
            what: "killing the primary",
            source,
        })
    }

    /// Waits up to `timeout` for the process to exit; true if it did.
    pub async fn wait(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.process.exited())
            .await
            .is_ok()
    }

    /// Blocking form of [`InstanceHandle::wait`]; `Err` inside a runtime.
    pub fn wait_blocking(&self, timeout: Duration) -> Result<bool, Error> {
        super::blocking::ensure_blocking_allowed("InstanceHandle::wait_blocking")?;
        Ok(self.process.wait_blocking(timeout))
    }
}
