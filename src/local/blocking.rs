//! The blocking forms, for programs without an async runtime.
//!
//! **Owns:** the rule that a blocking call made on a thread that runs an
//! async runtime is an error ([`Error::BlockingInRuntime`]), never a panic or
//! a hang, and the small private runtime a blocking secondary carries.
//! **Must not touch:** the election, frames or sockets themselves: every
//! blocking form runs the async one.
//!
//! "Inside a runtime" is what tokio reports with `Handle::try_current`: a
//! runtime's worker threads, `block_on`, and also `spawn_blocking` threads. Call
//! the blocking forms from plain threads (`std::thread::spawn`, `main` without
//! `#[tokio::main]`), and the async forms everywhere else.

use std::time::Duration;

use super::{Error, Forward, Reply, Role, Secondary, SingleInstance};

/// `Err` when the calling thread runs (or is inside) an async runtime.
pub(crate) fn ensure_blocking_allowed(call: &'static str) -> Result<(), Error> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::BlockingInRuntime { call });
    }
    Ok(())
}

/// A private current-thread runtime for one blocking call, after the check.
pub(crate) fn runtime_for(call: &'static str) -> Result<tokio::runtime::Runtime, Error> {
    ensure_blocking_allowed(call)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)
}

/// The outcome of a blocking election.
#[derive(Debug)]
pub enum BlockingRole {
    /// This process is the one running instance.
    Primary(super::Primary),
    /// Another process is the primary; forward to it.
    Secondary(BlockingSecondary),
}

/// A [`Secondary`] for programs without an async runtime; it carries a small
/// private runtime. Using it inside an async runtime is an error.
#[derive(Debug)]
pub struct BlockingSecondary {
    inner: Option<Secondary>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl BlockingSecondary {
    /// The primary's process id.
    pub fn primary_pid(&self) -> i32 {
        self.inner.as_ref().map_or(0, Secondary::primary_pid)
    }

    /// Blocking form of [`Secondary::forward_args`].
    pub fn forward_args(mut self) -> Result<Reply, Error> {
        ensure_blocking_allowed("BlockingSecondary::forward_args")?;
        let (inner, runtime) = self.parts()?;
        runtime.block_on(inner.forward_args())
    }

    /// Blocking form of [`Secondary::forward`].
    pub fn forward(mut self, message: Forward) -> Result<Reply, Error> {
        ensure_blocking_allowed("BlockingSecondary::forward")?;
        let (inner, runtime) = self.parts()?;
        runtime.block_on(inner.forward(message))
    }

    pub(crate) fn from_parts(inner: Secondary, runtime: tokio::runtime::Runtime) -> Self {
        BlockingSecondary {
            inner: Some(inner),
            runtime: Some(runtime),
        }
    }

    fn parts(&mut self) -> Result<(Secondary, tokio::runtime::Runtime), Error> {
        match (self.inner.take(), self.runtime.take()) {
            (Some(inner), Some(runtime)) => Ok((inner, runtime)),
            _ => Err(Error::SecondaryGone),
        }
    }
}

impl Drop for BlockingSecondary {
    fn drop(&mut self) {
        // A plain drop of a runtime panics inside another runtime (where this
        // may be dropped after a `BlockingInRuntime` error); this form never does.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl SingleInstance {
    /// Blocking form of [`SingleInstance::acquire`]. Inside an async runtime
    /// it fails with [`Error::BlockingInRuntime`].
    pub fn acquire_blocking(&self) -> Result<BlockingRole, Error> {
        let runtime = runtime_for("SingleInstance::acquire_blocking")?;
        Ok(match runtime.block_on(self.acquire())? {
            Role::Primary(p) => BlockingRole::Primary(p),
            Role::Secondary(inner) => BlockingRole::Secondary(BlockingSecondary {
                inner: Some(inner),
                runtime: Some(runtime),
            }),
        })
    }

    /// Blocking form of [`SingleInstance::acquire_or_wait`]. Inside an async
    /// runtime it fails with [`Error::BlockingInRuntime`].
    pub fn acquire_or_wait_blocking(&self, max_wait: Duration) -> Result<super::Primary, Error> {
        runtime_for("SingleInstance::acquire_or_wait_blocking")?
            .block_on(self.acquire_or_wait(max_wait))
    }
}
