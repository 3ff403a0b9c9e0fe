//! The public handle: who is out there, and what changed.
//!
//! **Owns:** [`Chart`], the cheap-to-clone handle every part of an
//! application shares: a *view* of the membership that the protocol owns,
//! the [`Event`] stream, and the requests handles send to the running driver.
//! **Must not touch:** sockets or the protocol's timing. The view changes
//! only when the driver applies a protocol [`Change`] (or, while no
//! discovery runs, when the application forgets an entry), so it can never
//! hold a peer the protocol does not.
//!
//! # Locking
//!
//! One `std::sync::Mutex` guards the view and the pending requests. It is
//! held only for map operations and for queueing the matching event, never
//! across an await point. Queueing the event under the same lock is what
//! makes the event order match the order of changes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{broadcast, watch};

mod control;
mod details;
mod event;
mod notify;
mod ports;

pub use details::{AddressDetails, PeerDetails};
pub use event::{Address, EVENT_CAPACITY, Entry, Event, Lagged, LeftReason, Subscription};
pub use notify::Notify;
pub use ports::{Message, Ports, RawPayload};

pub(crate) use control::Requests;
pub(crate) use details::snapshot;
pub(crate) use ports::{encode_payload, payload_decodes};

use crate::error::PayloadError;
use crate::protocol::{Change, Limits, PeerInfo, Schedule};
use crate::status::{Stats, Status};
use crate::wire::Id;
use crate::wire::seal::KeyRing;
use control::Control;

/// Settings fixed at build time.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) id: Id,
    pub(crate) incarnation: u64,
    pub(crate) namespace: String,
    pub(crate) group: Ipv4Addr,
    pub(crate) port: u16,
    /// Interfaces, families, reply port, seeds, broadcast.
    pub(crate) net: crate::builder::NetOptions,
    pub(crate) local_discovery: bool,
    pub(crate) multicast_ttl: u32,
    pub(crate) schedule: Schedule,
    pub(crate) seed: u64,
    pub(crate) limits: Limits,
    /// Whether the LAN path runs (UDP multicast).
    pub(crate) lan: bool,
    /// Addresses to publish to external sources (empty: found at start).
    pub(crate) advertise: Vec<std::net::IpAddr>,
    /// The etcd cluster to use too, if any.
    #[cfg(feature = "etcd")]
    pub(crate) etcd: Option<crate::etcd::EtcdConfig>,
}

struct View<M> {
    entries: BTreeMap<Id, Entry<M>>,
    our_msg: M,
    our_payload: Vec<u8>,
    keys: Option<KeyRing>,
    control: Control,
}

pub(crate) struct Shared<M> {
    pub(crate) settings: Settings,
    view: Mutex<View<M>>,
    events: broadcast::Sender<Event<M>>,
    stats: Mutex<Stats>,
    status: watch::Sender<Status>,
    /// Wakes the driver when a request is pending. A permit is stored when
    /// the driver is not waiting, so no request is missed.
    pub(crate) wake: tokio::sync::Notify,
    /// Where the driver answers [`Chart::details`].
    details: details::DetailsSlot,
}

/// The shared map of discovered instances: id -> (ip, message).
///
/// Cheap to clone (an `Arc`), `Send + Sync`. Build one with
/// [`ChartBuilder`](crate::ChartBuilder), keep it current with
/// [`discovery::spawn`](crate::discovery::spawn).
///
/// The chart lists **other** instances; [`Chart::size`] counts this one too,
/// so `found_everyone(&chart, n)` waits for a cohort of `n` instances.
///
/// `M` is what each instance carries: `u16` for one service port,
/// [`Ports<N>`] for N ports, or your own [`Message`] type.
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

impl<M> std::fmt::Debug for Chart<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let settings = &self.shared.settings;
        f.debug_struct("Chart")
            .field("id", &settings.id)
            .field("namespace", &settings.namespace)
            .field("discovery_port", &settings.port)
            .field("size", &(lock(&self.shared.view).entries.len() + 1))
            .finish_non_exhaustive()
    }
}

impl<M: Message> Chart<M> {
    pub(crate) fn new(
        settings: Settings,
        our_msg: M,
        our_payload: Vec<u8>,
        keys: Option<KeyRing>,
    ) -> Self {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Chart {
            shared: Arc::new(Shared {
                settings,
                view: Mutex::new(View {
                    entries: BTreeMap::new(),
                    our_msg,
                    our_payload,
                    keys,
                    control: Control::default(),
                }),
                events,
                stats: Mutex::new(Stats::default()),
                status: watch::Sender::new(Status::default()),
                wake: tokio::sync::Notify::new(),
                details: watch::Sender::new(None),
            }),
        }
    }

    /// This instance's id.
    pub fn our_id(&self) -> Id {
        self.shared.settings.id
    }

    /// The message this instance announces.
    pub fn our_msg(&self) -> M {
        self.view().our_msg.clone()
    }

    /// The number of instances known, **including this one**.
    pub fn size(&self) -> usize {
        self.view().entries.len() + 1
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
        self.view().entries.values().cloned().collect()
    }

    /// The entry of instance `id`, if known.
    pub fn get(&self, id: Id) -> Option<Entry<M>> {
        self.view().entries.get(&id).cloned()
    }

    /// The message of instance `id`, if known.
    pub fn get_msg(&self, id: Id) -> Option<M> {
        self.find(id, |e| e.msg.clone())
    }

    /// The address instance `id` announces from, if known.
    pub fn get_ip(&self, id: Id) -> Option<IpAddr> {
        self.find(id, |e| e.ip)
    }

    /// Forgets instance `id`: it leaves the chart with
    /// [`LeftReason::Forgotten`]. If it is still alive, its next
    /// announcement makes it join again. Returns whether it was listed.
    ///
    /// While discovery runs, the protocol (the one owner of membership)
    /// forgets it and the chart follows a moment later, in order with every
    /// other change; watch for the `Left` event if you need to know when.
    pub fn forget(&self, id: Id) -> bool {
        let mut view = self.view();
        if !view.entries.contains_key(&id) {
            return false;
        }
        if view.control.forget(id) {
            drop(view);
            self.shared.wake.notify_one();
        } else {
            // Nothing runs: the view is all there is.
            self.remove(&mut view, id, LeftReason::Forgotten);
        }
        true
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
        let mut view = self.view();
        view.our_msg = msg;
        view.our_payload.clone_from(&payload);
        if view.control.payload(payload) {
            drop(view);
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Replaces the chart's secret while discovery runs, for rotating keys
    /// without a restart: packets are sealed with `current` from now on, and
    /// opened with `current` or `next`.
    ///
    /// Rotate without a gap in three steps, each rolled out to every
    /// instance before the next: `(old, Some(new))`, then `(new, Some(old))`,
    /// then `(new, None)`.
    ///
    /// # Errors
    /// [`BuildError::WeakSecret`](crate::BuildError::WeakSecret) for a
    /// secret shorter than 16 bytes; nothing changes then.
    pub fn set_secret(
        &self,
        current: impl AsRef<[u8]>,
        next: Option<&[u8]>,
    ) -> Result<(), crate::BuildError> {
        let keys = crate::builder::key_ring(current.as_ref(), next)?;
        let mut view = self.view();
        view.keys = Some(keys.clone());
        if view.control.keys(Some(keys)) {
            drop(view);
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    pub(crate) fn keys(&self) -> Option<KeyRing> {
        self.view().keys.clone()
    }

    /// Counters: what the protocol received, dropped (by reason) and
    /// decided, and what the sockets sent. Updated by the running driver
    /// after every datagram and timer.
    pub fn stats(&self) -> Stats {
        *lock(&self.shared.stats)
    }

    /// Whether discovery runs, and any problem in its way (no network, a
    /// group that cannot be joined, sends that fail), with what to do about
    /// it.
    pub fn status(&self) -> Status {
        self.shared.status.borrow().clone()
    }

    /// The status as it changes: `changed().await` wakes on every change.
    ///
    /// ```no_run
    /// # async fn demo(chart: cohort::Chart<u16>) {
    /// let mut status = chart.watch_status();
    /// // Wait until the multicast group is joined.
    /// let _ = status.wait_for(|s| s.joined).await;
    /// # }
    /// ```
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.shared.status.subscribe()
    }

    /// Asks running discovery to say goodbye to its peers and stop. Does
    /// nothing if discovery is not running (a later run is not affected).
    /// Dropping the [`Discovery`](crate::discovery::Discovery) handle does
    /// the same.
    pub fn shutdown(&self) {
        self.shutdown_run(None);
    }

    /// Stops run `run` if it is still the one going on (any run for `None`).
    pub(crate) fn shutdown_run(&self, run: Option<u64>) {
        if self.view().control.shutdown(run) {
            self.shared.wake.notify_one();
        }
    }

    /// Every change from now on, in order; see [`Subscription`].
    ///
    /// Subscribe first, then read [`Chart::entries`]: an entry may then show up
    /// in both, never in neither.
    pub fn subscribe(&self) -> Subscription<M> {
        Subscription {
            receiver: self.shared.events.subscribe(),
            _keep: Arc::clone(&self.shared) as _,
        }
    }

    /// Instances as they join, as instance-chart 0.4's `notify()` reported
    /// them; see [`Notify`]. [`Chart::subscribe`] is the full event stream.
    pub fn notify(&self) -> Notify<M> {
        Notify {
            events: self.subscribe(),
        }
    }

    /// Waits until at least `n` instances, this one included, have been in
    /// the chart at the same time since the call.
    ///
    /// Follows the ordered event stream rather than sampling the size, so a
    /// peer that joins and leaves again before this task runs (it finished
    /// and said goodbye) still counts: the join was seen.
    pub(crate) async fn wait_for_size(&self, n: usize) {
        let (mut events, mut known) = {
            // Under the view's lock, so no change falls between the two.
            let view = self.view();
            (self.subscribe(), view.entries.len() + 1)
        };
        while known < n {
            match events.recv().await {
                Ok(Event::Joined(_)) => known += 1,
                Ok(Event::Left { .. }) => known -= 1,
                Ok(_) => {}
                Err(Lagged { .. }) => known = self.size(),
            }
        }
    }

    /// Claims the chart for a discovery run; `None` if one is running. The
    /// guard ends the run, whichever way the driver ends.
    pub(crate) fn begin_run(&self) -> Option<RunGuard<M>> {
        let run = self.view().control.begin()?;
        self.update_status(|s| {
            *s = Status {
                running: true,
                ..Status::default()
            }
        });
        Some(RunGuard {
            chart: self.clone(),
            run,
        })
    }

    /// The requests made since the last call (the running driver's).
    pub(crate) fn take_requests(&self) -> Requests {
        self.view().control.take()
    }

    pub(crate) fn our_payload(&self) -> Vec<u8> {
        self.view().our_payload.clone()
    }

    pub(crate) fn set_stats(&self, stats: Stats) {
        *lock(&self.shared.stats) = stats;
    }

    pub(crate) fn update_status(&self, change: impl FnOnce(&mut Status)) {
        self.shared.status.send_if_modified(|status| {
            let before = status.clone();
            change(status);
            *status != before
        });
    }

    /// Applies one protocol change to the view and tells subscribers.
    pub(crate) fn apply(&self, change: Change) {
        let mut view = self.view();
        let event = match change {
            Change::Joined(info) => match self.entry(info) {
                Some(entry) => {
                    view.entries.insert(entry.id, entry.clone());
                    Event::Joined(entry)
                }
                None => return,
            },
            Change::Updated(info) => match self.entry(info) {
                Some(entry) => {
                    view.entries.insert(entry.id, entry.clone());
                    Event::Updated(entry)
                }
                None => return,
            },
            Change::Left { id, reason } => {
                self.remove(&mut view, id, reason);
                return;
            }
            Change::Conflict { id, other } => Event::Conflict { id, other },
        };
        let _ = self.shared.events.send(event);
    }

    fn entry(&self, info: PeerInfo) -> Option<Entry<M>> {
        // The protocol accepted the payload with this same decoder.
        let Some(msg) = ports::decode_payload::<M>(&info.payload) else {
            tracing::error!(
                id = info.id,
                "an accepted payload does not decode; a custom driver must pass `payload_decodes` as `accept_payload`"
            );
            return None;
        };
        Some(Entry {
            id: info.id,
            ip: info.ip,
            addrs: info
                .addrs
                .iter()
                .zip(info.interfaces.iter().chain(std::iter::repeat(&None)))
                .map(|(a, via)| Address {
                    interface: *via,
                    ..Address::from(*a)
                })
                .collect(),
            learned: info.learned,
            msg,
            incarnation: info.incarnation,
            process: info.process,
        })
    }

    fn remove(&self, view: &mut View<M>, id: Id, reason: LeftReason) {
        if view.entries.remove(&id).is_some() {
            let _ = self.shared.events.send(Event::Left { id, reason });
        }
    }

    /// Maps every entry, in id order, under one lock.
    pub(crate) fn collect<T>(&self, f: impl Fn(&Entry<M>) -> T) -> Vec<T> {
        self.view().entries.values().map(f).collect()
    }

    /// Maps entry `id`, if known.
    pub(crate) fn find<T>(&self, id: Id, f: impl FnOnce(&Entry<M>) -> T) -> Option<T> {
        self.view().entries.get(&id).map(f)
    }

    fn view(&self) -> MutexGuard<'_, View<M>> {
        lock(&self.shared.view)
    }
}

/// Ends a discovery run however the driver ends (returned, failed, or its
/// future dropped): nothing maintains the view any more, so every entry
/// leaves it ([`LeftReason::Stopped`]) and the chart is free for a new run.
pub(crate) struct RunGuard<M: Message> {
    chart: Chart<M>,
    pub(crate) run: u64,
}

impl<M: Message> Drop for RunGuard<M> {
    fn drop(&mut self) {
        let chart = &self.chart;
        let mut view = chart.view();
        view.control.end();
        let ids: Vec<Id> = view.entries.keys().copied().collect();
        for id in ids {
            chart.remove(&mut view, id, LeftReason::Stopped);
        }
        drop(view);
        // Whoever waits for details of this run gets none.
        chart.publish_details(None);
        chart.update_status(|s| {
            s.running = false;
            s.joined = false;
            s.problems.clear();
        });
    }
}

/// Locks, ignoring poisoning: every critical section leaves the data
/// consistent before anything in it could panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;
