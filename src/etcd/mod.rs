//! Membership from an etcd cluster (cargo feature `etcd`), for charts that
//! outgrow one multicast domain.
//!
//! **Owns:** [`EtcdConfig`] (how to reach the cluster), and the source task
//! the driver starts for a chart that uses etcd: this instance's
//! registration (a key under a lease of the chart's TTL, kept alive), the
//! read of the namespace's records and the watch that follows them,
//! failover between endpoints, and the report of all of it as
//! `SourceEvent`s. **Must not touch:** the chart, the protocol or any
//! socket of the LAN path: the task only reads its `ours` channel and sends
//! on its `events` channel; the driver feeds those events to the protocol,
//! which merges them with what the LAN says.
//!
//! # Keys and values
//!
//! This instance's record lives at `<prefix>/<namespace>/<id>` (the id in
//! decimal), attached to a lease whose TTL is the chart's TTL rounded up to
//! whole seconds. The value is `Record::encode`. Anything else under
//! `<prefix>/<namespace>/` (another application's keys, values that are not
//! records, a record under another id's key) is reported as
//! `SourceEvent::Garbage` and otherwise ignored.
//!
//! # The task's contract (for the driver)
//!
//! `spawn` starts the task on the current tokio runtime and returns an
//! `EtcdTask`. The task:
//! - **owns** one etcd client at a time (one endpoint; on failure the next),
//!   this instance's lease, and a table of the records it has reported;
//! - **reads** `ours`: `None` listens only (a sniffer, never registered);
//!   `Some(record)` registers it, a changed payload is a put, a changed id
//!   or incarnation leaves and registers anew, `None` after `Some` leaves;
//! - **reports** on `events`, in etcd's order: first a `Put` for every
//!   record in the namespace (a snapshot), then every change, with no gap
//!   (the watch starts at the snapshot's revision + 1). Our own record
//!   (same id and incarnation as `ours`) is never reported. A record marked
//!   `leaving` is reported as `Delete { leaving: true }` at once; an expired
//!   lease as `Delete { leaving: false }`. `Delete::incarnation` is always
//!   the incarnation of the record reported last for that id;
//! - **fails over**: when a request or stream fails, it moves to the next
//!   endpoint at once, keeping its lease. When every endpoint failed in a
//!   row, it reports `Stale(true)` and retries with backoff (100 ms doubling
//!   to 5 s, jittered), forever. Once a session works again it
//!   re-registers (a new lease if the old one expired), re-reads the
//!   namespace, reports what changed while it was cut off (`Put` for new or
//!   changed records, `Delete` for vanished ones), then `Stale(false)`;
//! - **leaves** when the `EtcdTask` is dropped or shut down, or when
//!   `ours` or `events` is closed: it writes its record with `leaving =
//!   true`, then revokes the lease. `EtcdTask::shutdown` waits for that;
//!   a drop lets it finish on the runtime (if the runtime itself is going
//!   away, the lease expires instead);
//! - **never exits on its own** and never panics on what it reads.
//!
//! The `events` channel should be generous (hundreds of events) and the
//! driver should keep receiving: a full channel delays the task, keep-alives
//! included.
//!
//! # Incarnations
//!
//! A restarted instance (same id, larger incarnation) writes the same key
//! with its own lease, which detaches the key from its predecessor's lease:
//! when that lease expires, etcd deletes nothing. Every write after the
//! first is a transaction conditioned on the key still being attached to
//! our lease, so a predecessor that lingers (or says goodbye late) can never
//! overwrite or delete its successor's record; a task that finds a newer
//! incarnation of its id registered stops writing (and says so in the log).

mod config;
mod registration;
mod session;
mod table;

#[cfg(test)]
mod tests;

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_PREFIX, DEFAULT_REQUEST_TIMEOUT, EtcdConfig, EtcdConfigError,
};

use crate::source::{Record, SourceEvent};

/// The running etcd source of one chart. Dropping it (or
/// [`shutdown`](Self::shutdown)) leaves gracefully.
#[derive(Debug)]
pub(crate) struct EtcdTask {
    stop: Option<watch::Sender<bool>>,
    handle: Option<JoinHandle<()>>,
}

/// Starts the etcd source task on the current tokio runtime (see the
/// module docs for its contract).
///
/// `config` should have passed [`EtcdConfig::validate`]; a configuration
/// that cannot connect is retried and reported as `Stale(true)`, never a
/// panic. `namespace` is the chart's namespace; `ttl` the chart's TTL (the
/// lease's, rounded up to whole seconds, at least one).
///
/// # Panics
/// Outside a tokio runtime, like `tokio::spawn`.
pub(crate) fn spawn(
    config: EtcdConfig,
    namespace: String,
    ttl: Duration,
    ours: watch::Receiver<Option<Record>>,
    events: mpsc::Sender<SourceEvent>,
) -> EtcdTask {
    let (stop, stop_rx) = watch::channel(false);
    let runner = session::Runner::new(config, &namespace, ttl, ours, events, stop_rx);
    EtcdTask {
        stop: Some(stop),
        handle: Some(tokio::spawn(runner.run())),
    }
}

impl EtcdTask {
    /// Leaves gracefully (the record marked `leaving`, then the lease
    /// revoked) and waits until the task has ended. Bounded by a few
    /// request timeouts when the cluster is unreachable.
    pub(crate) async fn shutdown(mut self) {
        if let Some(stop) = &self.stop {
            let _ = stop.send(true);
        }
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }

    /// Ends the task at once, without leaving: the record stays until its
    /// lease expires, as when the process crashes.
    #[cfg(test)]
    pub(crate) fn abort(mut self) {
        if let (Some(handle), Some(stop)) = (self.handle.take(), self.stop.take()) {
            handle.abort();
            // A closed stop channel means "leave": keep it open until the
            // task is really gone.
            tokio::spawn(async move {
                let _ = handle.await;
                drop(stop);
            });
        }
    }
}

impl Drop for EtcdTask {
    /// Asks the task to leave; it finishes on the runtime.
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            let _ = stop.send(true);
        }
    }
}

/// The lease TTL for a chart TTL: whole seconds, rounded up, at least one.
fn lease_ttl(ttl: Duration) -> i64 {
    let secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod ttl_tests {
    use super::*;

    #[test]
    fn the_lease_ttl_is_the_chart_ttl_rounded_up() {
        assert_eq!(lease_ttl(Duration::ZERO), 1);
        assert_eq!(lease_ttl(Duration::from_millis(1)), 1);
        assert_eq!(lease_ttl(Duration::from_secs(29)), 29);
        assert_eq!(lease_ttl(Duration::from_millis(29_001)), 30);
        assert_eq!(lease_ttl(Duration::MAX), i64::MAX);
    }
}
