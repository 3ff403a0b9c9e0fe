//! What the protocol knows of each peer beyond the entry: when it was last
//! heard, at which address and interface, its TTL; and checking a same-host
//! entry's process.
//!
//! **Owns:** [`PeerDetails`], the snapshot the running driver hands over on
//! request ([`Chart::details`]), and [`Entry::process_identity`]. **Must not
//! touch:** the view: details are a copy taken when asked, never kept
//! current, so asking costs nothing while nobody asks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Address, Chart, Entry, Message};
use crate::local::{ProcessIdentity, Verdict};
use crate::protocol::Protocol;
use crate::source::Learned;
use crate::wire::{Id, ProcessTag};

/// One address of a peer, with when it was last heard there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AddressDetails {
    /// The address (its interface says where it was heard).
    pub address: Address,
    /// How long ago a packet last came from it.
    pub last_heard: Duration,
}

/// What the protocol knows of one peer, as of [`Chart::details`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerDetails {
    /// Its id.
    pub id: Id,
    /// Its incarnation.
    pub incarnation: u64,
    /// Its LAN addresses, best first (empty if known only from etcd).
    pub addrs: Vec<AddressDetails>,
    /// How long ago this incarnation was first heard.
    pub known_for: Duration,
    /// How long ago it was last heard on the LAN (`None`: not on the LAN).
    pub last_heard: Option<Duration>,
    /// How long it may stay silent before it is probed and evicted.
    pub ttl: Duration,
    /// Where it was learned.
    pub learned: Learned,
    /// The process tag it announced, if any.
    pub process: Option<ProcessTag>,
    /// Whether it runs on this host (same boot and pid namespace).
    pub same_host: bool,
    /// Its encoded payload, as it travels.
    pub payload: Vec<u8>,
}

/// The details of every peer the protocol knows, `now` being the driver's
/// clock. Called by the driver.
pub(crate) fn snapshot(
    protocol: &Protocol,
    now: Instant,
    ours: Option<&ProcessTag>,
) -> Vec<PeerDetails> {
    let mut all: Vec<PeerDetails> = protocol
        .peers()
        .map(|(id, peer)| PeerDetails {
            id,
            incarnation: peer.incarnation,
            addrs: peer
                .addrs
                .iter()
                .map(|a| AddressDetails {
                    address: Address {
                        interface: a.via,
                        ..Address::from(a.addr)
                    },
                    last_heard: now.saturating_duration_since(a.last_heard),
                })
                .collect(),
            known_for: now.saturating_duration_since(peer.since),
            last_heard: peer
                .on_lan()
                .then(|| now.saturating_duration_since(peer.last_seen())),
            ttl: peer.ttl(),
            learned: Learned {
                lan: peer.on_lan(),
                etcd: peer.external(),
            },
            process: peer.process,
            same_host: match (ours, &peer.process) {
                (Some(ours), Some(theirs)) => crate::host::same_pid_space(ours, theirs),
                _ => false,
            },
            payload: peer.payload.clone(),
        })
        .collect();
    all.sort_unstable_by_key(|d| d.id);
    all
}

impl<M: Message> Chart<M> {
    /// Details of every peer as the running protocol knows them now: last
    /// heard per address and interface, TTL, process, raw payload. Taken
    /// on request by the driver (one round through its loop), so it costs
    /// nothing while nobody asks. `None` when discovery is not running.
    ///
    /// ```no_run
    /// # async fn demo(chart: cohort::Chart<u16>) {
    /// for peer in chart.details().await.unwrap_or_default() {
    ///     println!("{} last heard {:?} ago", peer.id, peer.last_heard);
    /// }
    /// # }
    /// ```
    pub async fn details(&self) -> Option<Vec<PeerDetails>> {
        let mut answer = self.shared.details.subscribe();
        if !self.view().control.details() {
            return None;
        }
        self.shared.wake.notify_one();
        answer.changed().await.ok()?;
        let details = answer.borrow_and_update().clone()?;
        Some(details.to_vec())
    }

    /// Hands a snapshot to whoever asked for [`Chart::details`] (`None`:
    /// the run ended).
    pub(crate) fn publish_details(&self, details: Option<Vec<PeerDetails>>) {
        self.shared.details.send_replace(details.map(Arc::from));
    }
}

/// The answer slot for [`Chart::details`].
pub(crate) type DetailsSlot = tokio::sync::watch::Sender<Option<Arc<[PeerDetails]>>>;

impl<M> Entry<M> {
    /// Whether this entry runs on this host: its process tag names this
    /// boot and this pid namespace.
    pub fn same_host(&self) -> bool {
        match (crate::host::this_process(), &self.process) {
            (Some(ours), Some(theirs)) => crate::host::same_pid_space(&ours, theirs),
            _ => false,
        }
    }

    /// For an entry on this host: reads the identity of the process it
    /// claims to be (pid, start time, uid, executable and its hash) and
    /// checks it is that very process, alive. The tag in the announcement is
    /// only a claim; this is the check. `Err` says why not: `Dead`,
    /// `Recycled` (the pid is another process now), or `Unverifiable` (no
    /// tag, another host or pid namespace, `/proc` unreadable).
    ///
    /// ```no_run
    /// # fn demo(chart: &cohort::Chart<u16>) {
    /// for entry in chart.entries().into_iter().filter(|e| e.same_host()) {
    ///     match entry.process_identity() {
    ///         Ok(identity) => println!("{} is pid {} running {}", entry.id, identity.pid, identity.exe.display()),
    ///         Err(verdict) => println!("{}: {verdict:?}", entry.id),
    ///     }
    /// }
    /// # }
    /// ```
    pub fn process_identity(&self) -> Result<ProcessIdentity, Verdict> {
        let tag = self.process.as_ref().ok_or(Verdict::Unverifiable)?;
        if !self.same_host() {
            return Err(Verdict::Unverifiable);
        }
        match ProcessIdentity::of_pid(tag.pid) {
            Ok(identity) if identity.matches_tag(tag) => Ok(identity),
            Ok(_) => Err(Verdict::Recycled),
            Err(crate::local::IdentityError::NoSuchProcess { .. }) => Err(Verdict::Dead),
            Err(_) => Err(Verdict::Unverifiable),
        }
    }
}
