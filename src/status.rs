//! How discovery is doing: counters and problems a user can act on.
//!
//! **Owns:** [`Stats`] (the protocol's counters beside the sockets'),
//! [`IoStats`], [`Status`] and [`Problem`]. **Must not touch:** anything
//! that runs; the driver fills these in, the chart hands out copies.

use std::time::Duration;

use crate::protocol;

/// Everything counted for one chart. Monotonic, since the chart was built.
///
/// ```no_run
/// # fn demo(chart: &cohort::Chart<u16>) {
/// let stats = chart.stats();
/// println!("{} datagrams sent, {} dropped as stale", stats.io.datagrams_sent, stats.protocol.dropped_stale);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// What the protocol received, decided and queued.
    pub protocol: protocol::Stats,
    /// What the sockets did.
    pub io: IoStats,
    /// What the etcd source reported (all zero without it).
    pub etcd: SourceStats,
}

/// What an external source (etcd) reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SourceStats {
    /// Records that appeared or changed.
    pub puts: u64,
    /// Records that went (a goodbye or an expired lease).
    pub deletes: u64,
    /// Values under the prefix that are not records of ours (another
    /// application's keys, garbage): counted and ignored.
    pub garbage: u64,
    /// Times the source became stale (its cluster unreachable or without
    /// quorum).
    pub stale_spells: u64,
}

/// What the sockets did: datagrams really sent (not merely queued),
/// failures, and attempts to join the multicast group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IoStats {
    /// Datagrams the kernel accepted for sending.
    pub datagrams_sent: u64,
    /// Bytes in them.
    pub bytes_sent: u64,
    /// Sends the kernel refused (no route, unreachable, buffer full, ...).
    pub send_failures: u64,
    /// Datagrams read from the sockets.
    pub datagrams_received: u64,
    /// Receive calls that failed.
    pub receive_failures: u64,
    /// Attempts to join the multicast group that failed (each is retried).
    pub join_failures: u64,
    /// Times the set of usable interfaces or their addresses changed, and
    /// the LAN path followed.
    pub interface_changes: u64,
}

/// How discovery is doing right now, from
/// [`Chart::status`](crate::Chart::status).
///
/// ```no_run
/// # fn demo(chart: &cohort::Chart<u16>) {
/// for problem in chart.status().problems {
///     eprintln!("discovery: {problem}");
/// }
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// Whether discovery runs for this chart.
    pub running: bool,
    /// Whether the multicast group is joined, so this instance can hear
    /// announcements.
    pub joined: bool,
    /// What stands in the way, if anything. Empty when all is well.
    pub problems: Vec<Problem>,
}

/// Something that keeps discovery from working fully. Each says what is
/// wrong and what to do about it; discovery keeps retrying meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The multicast group could not be joined, so nothing is heard (no
    /// network yet, no multicast route, interface down). Retried with
    /// backoff; discovery starts working when the network appears.
    NotJoined {
        /// The operating system's error.
        error: String,
        /// Failed attempts so far.
        attempts: u64,
        /// When the next attempt is made.
        retry_in: Duration,
    },
    /// Sending to the group fails, so peers cannot hear this instance.
    SendFailing {
        /// The operating system's error.
        error: String,
    },
    /// No interface is usable: none is up, running and multicast-capable
    /// (or none matches the chosen ones). Discovery resumes by itself when
    /// one appears.
    NoInterface,
    /// The route to the multicast group leads into a tunnel or VPN (or an
    /// interface discovery does not use), which swallows multicast sent
    /// without naming an interface. cohort sends and joins on each
    /// interface itself, so it keeps working on the LAN; other programs,
    /// and peers that rely on the routing table, may not hear it.
    GroupRouteCaptured {
        /// The interface the group route leads to.
        interface: String,
    },
    /// Nothing has been heard for a long while although peers are known or
    /// seeds are set: a firewall may drop incoming UDP.
    Deaf {
        /// How long nothing has been received.
        silent_for: Duration,
    },
    /// An external source cannot be trusted to be current (etcd is
    /// unreachable or has lost its quorum). The last known entries are kept
    /// and the source retries.
    SourceStale {
        /// Which source.
        source: crate::Source,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::NotJoined {
                error,
                attempts,
                retry_in,
            } => write!(
                f,
                "not listening: joining the multicast group failed {attempts} time(s) ({error}); retrying in {retry_in:?}. Check that a network interface is up and has a multicast route (`ip route get 239.255.47.86`), or use `loopback_only()` on a single host"
            ),
            Problem::SendFailing { error } => write!(
                f,
                "peers cannot hear this instance: sending to the multicast group fails ({error}). Check the interface and its multicast route"
            ),
            Problem::NoInterface => write!(
                f,
                "no usable network interface (up, running, multicast-capable): nothing can be sent or heard until one appears. Check `ip link`, the interfaces chosen with `with_interface`, or use `loopback_only()` on a single host"
            ),
            Problem::GroupRouteCaptured { interface } => write!(
                f,
                "the route to the multicast group goes through {interface} (a VPN or tunnel?): cohort sends on each interface itself and keeps working, but programs relying on the routing table will not hear this LAN. Exclude the tunnel with `without_interface` if it should not be used, or route 239.255.0.0/16 to the LAN interface"
            ),
            Problem::Deaf { silent_for } => write!(
                f,
                "nothing received for {silent_for:?} although peers are expected: a firewall may drop incoming UDP. Allow the discovery port (and the reply port, if set) for UDP; see the README's firewall section"
            ),
            Problem::SourceStale { source } => write!(
                f,
                "{source:?} cannot be reached or has no quorum: keeping the last known entries and retrying. Check the cluster's health and this host's route to its endpoints"
            ),
        }
    }
}
