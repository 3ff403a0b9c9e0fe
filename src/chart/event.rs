//! What a chart holds per instance, and how its changes reach subscribers.
//!
//! **Owns:** [`Entry`], [`Event`], [`Subscription`] and [`Lagged`].
//! **Must not touch:** the map itself; the chart publishes, this delivers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::broadcast;

pub use crate::protocol::LeftReason;
use crate::wire::{Id, ProcessTag};

/// How many events a subscriber may fall behind before it is told it lagged.
pub const EVENT_CAPACITY: usize = 1024;

/// One discovered instance.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry<M> {
    /// Its id.
    pub id: Id,
    /// The address its announcements come from.
    pub ip: IpAddr,
    /// What it carries: its service port(s) or your custom message.
    pub msg: M,
    /// Its incarnation: larger after each restart.
    pub incarnation: u64,
    /// The process tag it announced (boot id, pid namespace, pid, start
    /// time), if it sent one. The pid names a process on this host only when
    /// the boot id and pid namespace match this process's own.
    pub process: Option<ProcessTag>,
}

/// A change to the chart. Received through
/// [`Chart::subscribe`](crate::Chart::subscribe).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event<M> {
    /// An instance appeared.
    Joined(Entry<M>),
    /// A known instance changed address or message, or restarted.
    Updated(Entry<M>),
    /// An instance left.
    Left {
        /// Its id.
        id: Id,
        /// Why.
        reason: LeftReason,
    },
    /// Two live instances claim the same id `id` (one of them may be this
    /// one). The chart keeps the newer; give every instance a unique id, or
    /// use `with_random_id`.
    Conflict {
        /// The contested id.
        id: Id,
        /// Where the other claimant's packets come from.
        other: SocketAddr,
    },
}

/// A subscriber fell more than [`EVENT_CAPACITY`] events behind.
///
/// Nothing is lost silently: the subscription continues with newer events,
/// and [`Chart::entries`](crate::Chart::entries) gives the current state to
/// resynchronise from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the subscriber fell behind and missed {missed} chart events; resynchronise from `Chart::entries()`"
)]
pub struct Lagged {
    /// How many events were missed.
    pub missed: u64,
}

/// A stream of [`Event`]s, in the order the changes happened.
///
/// ```no_run
/// # async fn demo(chart: cohort::Chart<u16>) {
/// use cohort::Event;
/// let mut events = chart.subscribe();
/// loop {
///     match events.recv().await {
///         Ok(Event::Joined(entry)) => println!("{} joined from {}", entry.id, entry.ip),
///         Ok(other) => println!("{other:?}"),
///         Err(lagged) => {
///             eprintln!("{lagged}");
///             let _snapshot = chart.entries();
///         }
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Subscription<M> {
    pub(crate) receiver: broadcast::Receiver<Event<M>>,
    // Keeps the sender alive, so `recv` can never report "closed".
    pub(crate) _keep: Arc<dyn std::any::Any + Send + Sync>,
}

impl<M: Clone> Subscription<M> {
    /// Waits for the next event.
    ///
    /// # Errors
    /// [`Lagged`] if events were dropped because this subscriber fell behind;
    /// the next call returns the oldest event still held.
    pub async fn recv(&mut self) -> Result<Event<M>, Lagged> {
        match self.receiver.recv().await {
            Ok(event) => Ok(event),
            Err(broadcast::error::RecvError::Lagged(missed)) => Err(Lagged { missed }),
            // The sender lives in `_keep`, which we hold.
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }

    /// The next event if one is ready, without waiting.
    ///
    /// # Errors
    /// [`Lagged`], as for [`Subscription::recv`].
    pub fn try_recv(&mut self) -> Result<Option<Event<M>>, Lagged> {
        match self.receiver.try_recv() {
            Ok(event) => Ok(Some(event)),
            Err(broadcast::error::TryRecvError::Lagged(missed)) => Err(Lagged { missed }),
            Err(_) => Ok(None),
        }
    }
}
