//! What a chart holds per instance, and how its changes reach subscribers.
//!
//! **Owns:** [`Entry`], [`Event`], [`Subscription`] and [`Lagged`].
//! **Must not touch:** the map itself; the chart publishes, this delivers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::broadcast;

pub use crate::protocol::LeftReason;
use crate::source::Learned;
use crate::wire::{Id, ProcessTag};

/// How many events a subscriber may fall behind before it is told it lagged.
pub const EVENT_CAPACITY: usize = 1024;

/// One address an instance can be reached at: an IP and, for an IPv6
/// link-local address, the scope (local interface index) it is valid on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub struct Address {
    /// The IP address.
    pub ip: IpAddr,
    /// The IPv6 scope id (0 for IPv4 and global IPv6 addresses).
    pub scope_id: u32,
    /// The local interface (its index) the instance was heard on at this
    /// address; `None` for addresses an external source published.
    pub interface: Option<u32>,
}

impl Address {
    /// An address with no scope and no interface.
    pub fn new(ip: IpAddr) -> Self {
        Address {
            ip,
            scope_id: 0,
            interface: None,
        }
    }

    /// The socket address for `port` on this address, scope included.
    pub fn with_port(self, port: u16) -> SocketAddr {
        match self.ip {
            IpAddr::V4(ip) => SocketAddr::from((ip, port)),
            IpAddr::V6(ip) => {
                SocketAddr::V6(std::net::SocketAddrV6::new(ip, port, 0, self.scope_id))
            }
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Self {
        let scope_id = match addr {
            SocketAddr::V6(v6) => v6.scope_id(),
            SocketAddr::V4(_) => 0,
        };
        Address {
            ip: addr.ip(),
            scope_id,
            interface: None,
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.scope_id {
            0 => write!(f, "{}", self.ip),
            scope => write!(f, "{}%{scope}", self.ip),
        }
    }
}

/// One discovered instance.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry<M> {
    /// Its id.
    pub id: Id,
    /// Its best address (the first of `addrs`).
    pub ip: IpAddr,
    /// Every address it was heard and proven at, best first (a peer on
    /// several networks is one entry with several addresses): IPv4, then
    /// routable IPv6, then link-local IPv6, the first heard first among
    /// equals, so the best never flaps; then addresses an external source
    /// published. Each says which local interface it was heard on.
    pub addrs: Vec<Address>,
    /// Where it was learned: the LAN, etcd, or both.
    pub learned: Learned,
    /// What it carries: its service port(s) or your custom message.
    pub msg: M,
    /// Its incarnation: larger after each restart.
    pub incarnation: u64,
    /// The process tag it announced (boot id, pid namespace, pid, start
    /// time), if it sent one. The pid names a process on this host only when
    /// the boot id and pid namespace match this process's own.
    pub process: Option<ProcessTag>,
}

impl<M> Entry<M> {
    /// Its best address, scope included.
    pub fn best(&self) -> Address {
        self.addrs.first().copied().unwrap_or(Address::new(self.ip))
    }
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
