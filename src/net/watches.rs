//! Watching the processes of same-host peers.
//!
//! **Owns:** one task per watched peer process (a pidfd, see `host`), and
//! which incarnation each watches. **Must not touch:** the protocol: the
//! driver starts and stops watches as peers join and leave, and reports an
//! exit back to the protocol.

use std::collections::HashMap;

use tokio::task::{AbortHandle, JoinSet};

use crate::host::{self, Watch};
use crate::protocol::Change;
use crate::wire::{Id, ProcessTag};

/// The most same-host peer processes watched at once; peers beyond it are
/// covered by their TTL like remote ones. Only peers that proved their
/// address are ever watched (they reach here through a `Change`), so a
/// forger cannot make this instance open pidfds by copying process tags.
pub(crate) const MAX_WATCHES: usize = 256;

/// The watched processes of one chart's peers.
pub(crate) struct Watches {
    ours: Option<ProcessTag>,
    /// Dropping the set aborts every watch.
    tasks: JoinSet<(Id, u64, Watch)>,
    watched: HashMap<Id, (u64, AbortHandle)>,
}

impl Watches {
    /// This process's tag.
    pub(crate) fn ours(&self) -> Option<ProcessTag> {
        self.ours
    }

    pub(crate) fn new(ours: Option<ProcessTag>) -> Self {
        Watches {
            ours,
            tasks: JoinSet::new(),
            watched: HashMap::new(),
        }
    }

    /// Starts watching a same-host peer's process when it joins or
    /// restarts, and stops when it leaves.
    pub(crate) fn follow(&mut self, change: &Change) {
        match change {
            Change::Joined(info) | Change::Updated(info) => {
                let (Some(ours), Some(theirs)) = (self.ours, info.process) else {
                    return;
                };
                let (id, incarnation) = (info.id, info.incarnation);
                if !host::same_pid_space(&ours, &theirs)
                    || self
                        .watched
                        .get(&id)
                        .is_some_and(|(i, _)| *i == incarnation)
                {
                    return;
                }
                self.unwatch(id);
                if self.watched.len() >= MAX_WATCHES {
                    tracing::debug!(
                        id,
                        "not watching a same-host peer's process: too many watched"
                    );
                    return;
                }
                let abort = self
                    .tasks
                    .spawn(async move { (id, incarnation, host::exited(theirs).await) });
                self.watched.insert(id, (incarnation, abort));
            }
            Change::Left { id, .. } => self.unwatch(*id),
            Change::Conflict { .. } => {}
        }
    }

    fn unwatch(&mut self, id: Id) {
        if let Some((_, abort)) = self.watched.remove(&id) {
            abort.abort();
        }
    }

    /// The next peer process that exited: its id and incarnation. Never
    /// returns while nothing is watched.
    pub(crate) async fn exited(&mut self) -> (Id, u64) {
        loop {
            if self.tasks.is_empty() {
                std::future::pending::<()>().await;
            }
            // Aborted watches end in a JoinError: nothing to report.
            if let Some(Ok((id, incarnation, watch))) = self.tasks.join_next().await {
                if self
                    .watched
                    .get(&id)
                    .is_some_and(|(i, _)| *i == incarnation)
                {
                    self.watched.remove(&id);
                }
                if watch == Watch::Exited {
                    return (id, incarnation);
                }
            }
        }
    }
}
