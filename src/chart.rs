//! The public handle: who is out there, and what changed.
//!
//! **Owns:** [`Chart`], the cheap-to-clone handle every part of an
//! application shares, its entries, and the [`Event`] stream.
//! **Must not touch:** sockets or the protocol's timing. The driver in
//! [`crate::net`] feeds protocol events in through [`Chart::apply`]; the chart
//! sends requests back (forget, shutdown) through a small command queue plus a
//! [`Notify`], so no lock is ever held across an `.await`.
//!
//! # Locking
//!
//! One `std::sync::Mutex` guards the entries. It is held only for map
//! operations and for queueing the matching event, never across an await
//! point. Queueing the event under the same lock is what makes the event
//! order match the order of changes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, broadcast, watch};

use crate::error::PayloadError;
pub use crate::protocol::LeftReason;
use crate::protocol::{self, Schedule, Stats};
use crate::wire::{self, Id};

/// Anything a chart can carry for each instance: service ports or your own
/// type. Implemented for every type that qualifies.
///
/// Decoding a peer's message uses your type's `Deserialize`; cohort bounds the
/// bytes (one datagram) but your type decides what it allocates from them.
pub trait Message: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> Message for T {}

/// The service ports of an instance, for charts built with
/// [`with_service_ports`](crate::ChartBuilder::with_service_ports).
///
/// Encoded as exactly `N` ports, with no length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ports<const N: usize>(pub [u16; N]);

impl<const N: usize> Serialize for Ports<N> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut tuple = serializer.serialize_tuple(N)?;
        for port in &self.0 {
            tuple.serialize_element(port)?;
        }
        tuple.end()
    }
}

impl<'de, const N: usize> serde::Deserialize<'de> for Ports<N> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortsVisitor<const N: usize>;
        impl<'de, const N: usize> serde::de::Visitor<'de> for PortsVisitor<N> {
            type Value = Ports<N>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{N} ports")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Ports<N>, A::Error> {
                let mut ports = [0u16; N];
                for (i, port) in ports.iter_mut().enumerate() {
                    *port = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(Ports(ports))
            }
        }
        deserializer.deserialize_tuple(N, PortsVisitor::<N>)
    }
}

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
}

/// A change to the chart. Received through [`Chart::subscribe`].
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
/// and [`Chart::entries`] gives the current state to resynchronise from.
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
    receiver: broadcast::Receiver<Event<M>>,
    // Keeps the sender alive, so `recv` can never report "closed".
    _shared: Arc<Shared<M>>,
}

impl<M: Message> Subscription<M> {
    /// Waits for the next event.
    ///
    /// # Errors
    /// [`Lagged`] if events were dropped because this subscriber fell behind;
    /// the next call returns the oldest event still held.
    pub async fn recv(&mut self) -> Result<Event<M>, Lagged> {
        match self.receiver.recv().await {
            Ok(event) => Ok(event),
            Err(broadcast::error::RecvError::Lagged(missed)) => Err(Lagged { missed }),
            // The sender lives in `_shared`, which we hold.
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

/// Settings fixed at build time.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) id: Id,
    pub(crate) incarnation: u64,
    pub(crate) namespace: String,
    pub(crate) group: Ipv4Addr,
    pub(crate) port: u16,
    pub(crate) interfaces: Vec<Ipv4Addr>,
    pub(crate) local_discovery: bool,
    pub(crate) multicast_ttl: u32,
    pub(crate) schedule: Schedule,
    pub(crate) seed: u64,
}

/// A request from the handle to the running driver.
#[derive(Debug)]
pub(crate) enum Command {
    Forget(Id),
    SetPayload(Vec<u8>),
    Shutdown,
}

#[derive(Debug)]
struct State<M> {
    entries: BTreeMap<Id, Entry<M>>,
    our_payload: Vec<u8>,
}

#[derive(Debug)]
pub(crate) struct Shared<M> {
    pub(crate) settings: Settings,
    state: Mutex<State<M>>,
    events: broadcast::Sender<Event<M>>,
    size: watch::Sender<usize>,
    commands: Mutex<Vec<Command>>,
    stats: Mutex<Stats>,
    pub(crate) wake: Notify,
    pub(crate) running: AtomicBool,
}

/// The shared map of discovered instances: id -> (ip, message).
///
/// Cheap to clone (an `Arc`), `Send + Sync`. Build one with
/// [`ChartBuilder`](crate::ChartBuilder), keep it current with
/// [`discovery::maintain`](crate::discovery::maintain).
///
/// The chart lists **other** instances; [`Chart::size`] counts this one too,
/// so `found_everyone(&chart, n)` waits for a cohort of `n` instances.
///
/// `M` is what each instance carries: `u16` for one service port,
/// [`Ports<N>`] for N ports, or your own [`Message`] type.
#[derive(Debug)]
pub struct Chart<M> {
    pub(crate) shared: Arc<Shared<M>>,
}

impl<M> Clone for Chart<M> {
    fn clone(&self) -> Self {
        Chart {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<M: Message> Chart<M> {
    pub(crate) fn new(settings: Settings, our_payload: Vec<u8>) -> Self {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Chart {
            shared: Arc::new(Shared {
                settings,
                state: Mutex::new(State {
                    entries: BTreeMap::new(),
                    our_payload,
                }),
                events,
                size: watch::Sender::new(1),
                commands: Mutex::new(Vec::new()),
                stats: Mutex::new(Stats::default()),
                wake: Notify::new(),
                running: AtomicBool::new(false),
            }),
        }
    }

    /// This instance's id.
    pub fn our_id(&self) -> Id {
        self.shared.settings.id
    }

    /// The number of instances known, **including this one**.
    pub fn size(&self) -> usize {
        self.state().entries.len() + 1
    }

    /// The UDP port announcements are sent to and heard on.
    pub fn discovery_port(&self) -> u16 {
        self.shared.settings.port
    }

    /// The application namespace this chart belongs to.
    pub fn namespace(&self) -> &str {
        &self.shared.settings.namespace
    }

    /// A snapshot of every known instance (not this one), ordered by id.
    pub fn entries(&self) -> Vec<Entry<M>> {
        self.state().entries.values().cloned().collect()
    }

    /// The message of instance `id`, if known.
    pub fn get_msg(&self, id: Id) -> Option<M> {
        self.state().entries.get(&id).map(|e| e.msg.clone())
    }

    /// The address instance `id` announces from, if known.
    pub fn get_ip(&self, id: Id) -> Option<IpAddr> {
        self.state().entries.get(&id).map(|e| e.ip)
    }

    /// Removes `id` from the chart and reports it as
    /// [`LeftReason::Forgotten`]. If the instance is still alive, its next
    /// announcement makes it join again. Returns whether it was known.
    pub fn forget(&self, id: Id) -> bool {
        let removed = {
            let mut state = self.state();
            let removed = state.entries.remove(&id).is_some();
            if removed {
                let _ = self.shared.events.send(Event::Left {
                    id,
                    reason: LeftReason::Forgotten,
                });
                self.shared.size.send_replace(state.entries.len() + 1);
            }
            removed
        };
        self.command(Command::Forget(id));
        removed
    }

    /// Replaces the message this instance announces; every peer sees an
    /// [`Event::Updated`] within about one round trip. Works before and
    /// while discovery runs.
    ///
    /// # Errors
    /// [`PayloadError`] if the message does not encode or does not fit in
    /// one datagram; the old message stays in place.
    pub fn set_msg(&self, msg: M) -> Result<(), PayloadError> {
        let payload = encode_payload(&self.shared.settings.namespace, &msg)?;
        self.state().our_payload.clone_from(&payload);
        self.command(Command::SetPayload(payload));
        Ok(())
    }

    /// Counters: packets and bytes, drops by reason, joins and leaves by
    /// reason. Updated by the running driver after every datagram and timer.
    pub fn stats(&self) -> Stats {
        *lock(&self.shared.stats)
    }

    pub(crate) fn set_stats(&self, stats: Stats) {
        *lock(&self.shared.stats) = stats;
    }

    /// Asks a running [`maintain`](crate::discovery::maintain) to say goodbye
    /// to its peers and return `Ok(())`. Does nothing if discovery is not
    /// running. Dropping the `maintain` future says goodbye too.
    pub fn shutdown(&self) {
        self.command(Command::Shutdown);
    }

    /// Every change from now on, in order; see [`Subscription`].
    ///
    /// Subscribe first, then read [`Chart::entries`]: an entry may then show up
    /// in both, never in neither.
    pub fn subscribe(&self) -> Subscription<M> {
        Subscription {
            receiver: self.shared.events.subscribe(),
            _shared: Arc::clone(&self.shared),
        }
    }

    /// Waits until at least `n` instances, this one included, are known.
    pub(crate) async fn wait_for_size(&self, n: usize) {
        let mut size = self.shared.size.subscribe();
        // The sender lives in `shared`, which `self` keeps alive: no error.
        let _ = size.wait_for(|&known| known >= n).await;
    }

    pub(crate) fn our_payload(&self) -> Vec<u8> {
        self.state().our_payload.clone()
    }

    pub(crate) fn take_commands(&self) -> Vec<Command> {
        std::mem::take(&mut *lock(&self.shared.commands))
    }

    fn command(&self, command: Command) {
        lock(&self.shared.commands).push(command);
        // `notify_one` stores a permit when the driver is not waiting, so a
        // command sent between two driver wake-ups is never missed.
        self.shared.wake.notify_one();
    }

    /// Applies one protocol event. Returns `false` if the peer's payload
    /// does not decode as `M` (the event is then dropped).
    pub(crate) fn apply(&self, event: protocol::Event) -> bool {
        let (id, ip, payload) = match event {
            protocol::Event::Joined {
                id, ip, payload, ..
            }
            | protocol::Event::Updated {
                id, ip, payload, ..
            } => (id, ip, payload),
            protocol::Event::Left { id, reason } => {
                let mut state = self.state();
                if state.entries.remove(&id).is_some() {
                    let _ = self.shared.events.send(Event::Left { id, reason });
                    self.shared.size.send_replace(state.entries.len() + 1);
                }
                return true;
            }
            protocol::Event::Conflict { id, other } => {
                let _state = self.state(); // keeps event order with the map
                let _ = self.shared.events.send(Event::Conflict { id, other });
                return true;
            }
        };
        // Strict, like the packet decoder: the whole payload, nothing left.
        let Ok((msg, [])) = postcard::take_from_bytes::<M>(&payload) else {
            return false;
        };
        let entry = Entry { id, ip, msg };
        let mut state = self.state();
        // Joined or Updated is decided by what the chart holds, not by the
        // protocol: after `forget`, a known peer rejoins the chart.
        let event = match state.entries.insert(id, entry.clone()) {
            None => Event::Joined(entry),
            Some(_) => Event::Updated(entry),
        };
        let _ = self.shared.events.send(event);
        self.shared.size.send_replace(state.entries.len() + 1);
        true
    }
}

/// Encodes a message and checks that an announcement carrying it fits in
/// one datagram.
pub(crate) fn encode_payload<M: Serialize>(
    namespace: &str,
    msg: &M,
) -> Result<Vec<u8>, PayloadError> {
    let payload = postcard::to_allocvec(msg).map_err(PayloadError::Encode)?;
    let size = wire::encode(&wire::Packet {
        namespace,
        sender: u64::MAX,
        incarnation: u64::MAX,
        kind: wire::Kind::Announce,
        want_reply: true,
        reply_port: u16::MAX,
        ttl_ms: u32::MAX,
        process: Some(wire::ProcessTag {
            boot_id: [0xff; 16],
            pid_namespace: u64::MAX,
            pid: u32::MAX,
            start_time: u64::MAX,
        }),
        payload: &payload,
    })
    .len();
    if size > wire::MAX_DATAGRAM {
        return Err(PayloadError::TooLarge { size });
    }
    Ok(payload)
}

impl<M> Chart<M> {
    fn state(&self) -> MutexGuard<'_, State<M>> {
        lock(&self.shared.state)
    }
}

/// Locks, ignoring poisoning: every critical section leaves the data
/// consistent before anything in it could panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Chart<u16> {
    /// Replaces the service port this instance announces; see
    /// [`Chart::set_msg`].
    pub fn set_service_port(&self, port: u16) {
        // A u16 always encodes and always fits.
        let _ = self.set_msg(port);
    }

    /// Every other instance's service address: its ip and service port.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use cohort::{ChartBuilder, discovery};
    /// let chart = ChartBuilder::new().with_random_id().with_service_port(8042).finish()?;
    /// tokio::spawn(discovery::maintain(chart.clone()));
    /// for (id, addr) in chart.addr_vec() {
    ///     println!("instance {id} serves on {addr}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn addr_vec(&self) -> Vec<(Id, SocketAddr)> {
        let state = self.state();
        state
            .entries
            .values()
            .map(|e| (e.id, SocketAddr::new(e.ip, e.msg)))
            .collect()
    }

    /// The service address of instance `id`, if known.
    pub fn get_addr(&self, id: Id) -> Option<SocketAddr> {
        let state = self.state();
        state.entries.get(&id).map(|e| SocketAddr::new(e.ip, e.msg))
    }
}

impl<const N: usize> Chart<Ports<N>> {
    /// Replaces the service ports this instance announces; see
    /// [`Chart::set_msg`].
    ///
    /// # Errors
    /// [`PayloadError::TooLarge`] for thousands of ports.
    pub fn set_service_ports(&self, ports: [u16; N]) -> Result<(), PayloadError> {
        self.set_msg(Ports(ports))
    }

    /// Every other instance's service addresses, one per port, in the order
    /// the ports were given to
    /// [`with_service_ports`](crate::ChartBuilder::with_service_ports).
    pub fn addr_lists_vec(&self) -> Vec<(Id, [SocketAddr; N])> {
        let state = self.state();
        state
            .entries
            .values()
            .map(|e| (e.id, e.msg.0.map(|port| SocketAddr::new(e.ip, port))))
            .collect()
    }

    /// Every other instance's address for port number `IDX`. An `IDX` out of
    /// range is a compile error.
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), cohort::BuildError> {
    /// let chart = cohort::ChartBuilder::new().with_id(1).with_service_ports([8042, 9000]).finish()?;
    /// let metrics: Vec<_> = chart.nth_addr_vec::<1>();
    /// # Ok(()) }
    /// ```
    pub fn nth_addr_vec<const IDX: usize>(&self) -> Vec<(Id, SocketAddr)> {
        const { assert!(IDX < N, "port index out of range for this chart") };
        let state = self.state();
        state
            .entries
            .values()
            .map(|e| (e.id, SocketAddr::new(e.ip, e.msg.0[IDX])))
            .collect()
    }

    /// The service addresses of instance `id`, if known.
    pub fn get_addr_list(&self, id: Id) -> Option<[SocketAddr; N]> {
        let state = self.state();
        state
            .entries
            .get(&id)
            .map(|e| e.msg.0.map(|port| SocketAddr::new(e.ip, port)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChartBuilder;
    use std::net::Ipv4Addr;

    /// A chart of one service port, with id 0; nothing runs discovery.
    fn chart() -> Chart<u16> {
        ChartBuilder::new()
            .with_id(0)
            .with_service_port(1)
            .finish()
            .unwrap()
    }

    /// The protocol reporting that `id` joined, carrying `payload`.
    fn joined_with(id: Id, payload: Vec<u8>) -> protocol::Event {
        protocol::Event::Joined {
            id,
            incarnation: 1,
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            payload,
            process: None,
        }
    }

    /// The protocol reporting that `id` joined with service port `id`.
    fn joined(id: Id) -> protocol::Event {
        joined_with(id, postcard::to_allocvec(&(id as u16)).unwrap())
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_how_much_it_missed_and_can_resync() {
        let chart = chart();
        let mut events = chart.subscribe();
        let total = EVENT_CAPACITY as u64 + 76;
        for id in 1..=total {
            assert!(chart.apply(joined(id)));
        }
        assert_eq!(events.recv().await, Err(Lagged { missed: 76 }));
        // The oldest event still held comes next; nothing after it is lost.
        let mut next = 77;
        while let Some(event) = events.try_recv().unwrap() {
            assert!(matches!(event, Event::Joined(e) if e.id == next));
            next += 1;
        }
        assert_eq!(next, total + 1);
        assert_eq!(
            chart.entries().len(),
            total as usize,
            "the snapshot has everyone"
        );
    }

    #[test]
    fn a_payload_that_does_not_decode_changes_nothing() {
        let chart = chart();
        let mut events = chart.subscribe();
        let bad = joined_with(9, vec![0xff, 0xff, 0xff, 0xff, 0xff]);
        assert!(!chart.apply(bad));
        assert_eq!(chart.size(), 1);
        assert_eq!(events.try_recv(), Ok(None));
    }

    #[test]
    fn a_payload_with_bytes_left_over_is_rejected_not_truncated() {
        let chart = chart();
        // A 300-byte string starts with the varint 300, which would decode
        // as the port 300 if the rest were ignored.
        let string = postcard::to_allocvec(&"x".repeat(300)).unwrap();
        let event = joined_with(9, string);
        assert!(!chart.apply(event));
        assert_eq!(chart.get_msg(9), None);
    }

    #[test]
    fn events_follow_the_order_of_changes() {
        let chart = chart();
        let mut events = chart.subscribe();
        chart.apply(joined(5));
        chart.apply(protocol::Event::Left {
            id: 5,
            reason: LeftReason::Died,
        });
        chart.apply(joined(5));
        assert!(matches!(events.try_recv(), Ok(Some(Event::Joined(e))) if e.id == 5));
        assert_eq!(
            events.try_recv(),
            Ok(Some(Event::Left {
                id: 5,
                reason: LeftReason::Died
            }))
        );
        assert!(matches!(events.try_recv(), Ok(Some(Event::Joined(e))) if e.id == 5));
        assert_eq!(chart.size(), 2);
    }
}
