//! What the state machine reports: changes in membership, and why a datagram
//! was ignored.
//!
//! **Owns:** [`Change`], [`LeftReason`] and [`Rejected`], the vocabulary shared
//! by the protocol, the statistics and the chart. **Must not touch:** state;
//! these are values.

use std::net::{IpAddr, SocketAddr};

use crate::source::Learned;
use crate::wire::{DecodeError, Id, ProcessTag};

/// Why a peer left the membership (and the chart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LeftReason {
    /// It shut down and said goodbye.
    Goodbye,
    /// It ran on this host and its process exited (crashed, was killed, or
    /// exited without saying goodbye). Seen at once, through the process
    /// itself (a pidfd on Linux).
    Died,
    /// Nothing was heard from it for its whole TTL, direct probes included.
    Expired,
    /// The application forgot it ([`Protocol::forget`](super::Protocol::forget)).
    /// If it is still alive, its next packet makes it join again.
    Forgotten,
    /// Discovery stopped on this side ([`Protocol::close`](super::Protocol::close),
    /// or the driver ended): nothing is known any more, so every peer leaves
    /// the view. Says nothing about the peer itself.
    Stopped,
}

impl std::fmt::Display for LeftReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LeftReason::Goodbye => "said goodbye",
            LeftReason::Died => "died",
            LeftReason::Expired => "expired",
            LeftReason::Forgotten => "forgotten",
            LeftReason::Stopped => "discovery stopped",
        })
    }
}

/// What the state machine knows of a peer when it joins or changes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerInfo {
    /// Its id.
    pub id: Id,
    /// Its incarnation (larger after a restart).
    pub incarnation: u64,
    /// Its best address: the first of `addrs`.
    pub ip: IpAddr,
    /// Every address it was heard and proven at (its unicast socket's, with
    /// the IPv6 scope), best first, then addresses an external source
    /// published (port 0). IPv4 before routable IPv6 before link-local
    /// IPv6; among equals, the first heard first, so the best address never
    /// flaps.
    pub addrs: Vec<SocketAddr>,
    /// The local interface (index) each of `addrs` was heard on, in the same
    /// order; `None` where the driver did not say, and for published ones.
    pub interfaces: Vec<Option<u32>>,
    /// Where it was learned.
    pub learned: Learned,
    /// Its payload, encoded by the chart layer; it passed
    /// [`Config::accept_payload`](super::Config::accept_payload).
    pub payload: Vec<u8>,
    /// Its process, if it told us.
    pub process: Option<ProcessTag>,
}

/// A change in membership. The protocol is the one owner of who is known;
/// these events are the only way that knowledge leaves it, and they come in
/// the order the changes happened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A peer we did not know.
    Joined(PeerInfo),
    /// A known peer changed address or payload, or restarted.
    Updated(PeerInfo),
    /// A peer left.
    Left {
        /// Its id.
        id: Id,
        /// Why.
        reason: LeftReason,
    },
    /// Two live instances claim the same id: the known one (or we) and
    /// another at `other`.
    Conflict {
        /// The contested id.
        id: Id,
        /// Where the other claimant's packets come from.
        other: SocketAddr,
    },
}

/// Why [`Protocol::handle_datagram`](super::Protocol::handle_datagram)
/// ignored a datagram. Every variant but [`Rejected::SameIdAsUs`] and
/// [`Rejected::StaleIncarnation`] leaves state untouched; those two may also
/// report an [`Change::Conflict`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejected {
    /// The bytes are not a valid packet.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A valid packet from another application's namespace.
    #[error("packet from another namespace")]
    ForeignNamespace,
    /// A packet from an older incarnation of a peer we know in a newer one.
    #[error("late packet from an older incarnation of peer {id}")]
    StaleIncarnation {
        /// The peer.
        id: Id,
    },
    /// Another instance (not our own echo) uses our id.
    #[error("another instance uses our id {id}")]
    SameIdAsUs {
        /// Our id.
        id: Id,
    },
    /// The peer's payload does not decode as this chart's message type:
    /// another application, or another version of this one, shares the
    /// namespace. The peer is not added.
    #[error("peer {id}'s payload does not decode as this chart's message type")]
    UndecodablePayload {
        /// The peer.
        id: Id,
    },
    /// A sealed packet already delivered (a replay), or too far behind.
    #[error("sealed packet from {id} was delivered already")]
    Replayed {
        /// The claimed sender.
        id: Id,
    },
    /// A sealed packet whose clock is outside the replay window.
    #[error("sealed packet from {id} is older or newer than the replay window")]
    StaleClock {
        /// The claimed sender.
        id: Id,
    },
    /// An incarnation further in the future than any clock skew explains.
    #[error("incarnation of {id} lies in the future")]
    FutureIncarnation {
        /// The claimed sender.
        id: Id,
    },
    /// A goodbye without the secret of the incarnation it names.
    #[error("goodbye for {id} without its incarnation's secret")]
    UnprovenGoodbye {
        /// The claimed sender.
        id: Id,
    },
    /// The peer table is full.
    #[error("peer table full; {id} not added")]
    PeerCap {
        /// The claimed sender.
        id: Id,
    },
    /// The source address already holds its share of the peer table.
    #[error("too many peers at one address; {id} not added")]
    AddressCap {
        /// The claimed sender.
        id: Id,
    },
    /// Another address claims a live peer's id, and the peer still answers
    /// at its own address: not a restart, a conflict (or a takeover
    /// attempt). The peer stays.
    #[error("another address claims live peer {id}")]
    Contested {
        /// The contested id.
        id: Id,
    },
}
