//! The discovery state machine, free of I/O.
//!
//! **Owns:** the rules of discovery: who is known, when to announce, whom to
//! answer, when a silent peer is probed and evicted. **Must not touch:**
//! sockets, the system clock, processes or any global randomness. Time comes
//! in as a `now: Instant` parameter and randomness from a generator seeded by
//! [`Config::seed`], so the same inputs always produce the same outputs. That
//! determinism is what lets `tests/sim.rs` run 100 instances with packet loss
//! through a simulated day in seconds.
//!
//! # Method kinds
//!
//! - **Inputs** (`handle_*`, [`Protocol::set_payload`], [`Protocol::forget`],
//!   [`Protocol::close`]): something happened: a datagram arrived, a timer
//!   fired, a watched process exited, the application asked for something.
//! - **Outputs** (`poll_*`): what the machine wants done. They never block
//!   and never change what the machine knows, only drain its queues.
//! - **Queries** ([`Protocol::peers`], [`Protocol::stats`]): read-only views.
//!
//! # Poll order
//!
//! After every input, a driver must:
//!
//! 1. call [`Protocol::poll_transmit`] until it returns `None`, sending each
//!    datagram;
//! 2. call [`Protocol::poll_event`] until it returns `None`, applying each
//!    event to the chart (and starting or stopping process watches);
//! 3. call [`Protocol::poll_timeout`] and arrange for
//!    [`Protocol::handle_timeout`] to be called at that instant (replacing any
//!    earlier arrangement).
//!
//! Transmits come first because they are what peers wait on; events only
//! update local state, and the timeout may move after either.
//!
//! # The rules
//!
//! - A newcomer announces at once, asking for replies (`want_reply`) on its
//!   first [`Schedule::eager_announcements`] announcements.
//! - Whoever hears an announcement that asks for a reply, or one from a sender
//!   it did not know, answers with a unicast [`Kind::Reply`] to the sender's
//!   own reply port. So a newcomer learns every peer within one round trip,
//!   and any pair in which one side missed the other's announcement is mended
//!   by the next announcement either of them hears.
//! - Announcements repeat: the first gap is [`Schedule::first_interval`],
//!   each following gap doubles up to [`Schedule::max_interval`], and every
//!   gap is jittered by ±20% so instances that started together drift apart.
//!   A payload change is announced at once and restarts the doubling.
//! - Every packet carries the sender's TTL. A peer not heard from for 90%
//!   of its TTL is probed: a unicast [`Kind::Query`] asking for a reply,
//!   [`PROBES`] times, evenly spread over the last tenth of the TTL. Only a
//!   peer silent for its whole TTL *and* a whole probe window of probes is
//!   evicted ([`LeftReason::Expired`]); if this instance was itself stalled
//!   past a peer's TTL, it probes first instead of evicting on waking. The probes are what keep a live peer on a
//!   lossy LAN: losing one announcement costs a few unicast datagrams, not
//!   an eviction.
//! - A goodbye removes the peer at once ([`LeftReason::Goodbye`]); so does
//!   [`Protocol::handle_process_exit`], for a same-host peer whose process
//!   the driver watches ([`LeftReason::Died`]).
//! - A restarted instance carries a larger incarnation: it replaces its old
//!   entry at once, and late packets from the old incarnation are ignored.
//!   If packets from the older incarnation keep coming from another address
//!   after [`CONFLICT_GRACE`], two live instances claim one id: that is an
//!   [`Event::Conflict`]. A packet with our own id but not our incarnation is
//!   one too.
//! - A sniffer ([`Mode::Sniff`]) never announces; it multicasts
//!   [`Kind::Query`] on the eager schedule and every announcing instance
//!   answers it with a unicast reply. A querier is never added to a chart.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::wire::{self, DecodeError, Id, Kind, Packet, ProcessTag};

/// How many probes a silent peer gets before it is evicted.
pub const PROBES: u32 = 16;

/// How long packets from an older incarnation may keep arriving (reordered
/// or delayed in flight) before they mean a second live instance with the
/// same id.
pub const CONFLICT_GRACE: Duration = Duration::from_secs(2);

/// The shortest TTL accepted from a peer; shorter ones are raised to it, so a
/// hostile or broken peer cannot make everyone churn its entry.
pub const MIN_TTL: Duration = Duration::from_millis(100);

/// Whether this instance takes part or only listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Announce ourselves and answer others (`discovery::maintain`).
    Announce,
    /// Listen only, asking the group to announce (`discovery::sniff`).
    Sniff,
}

/// When announcements are sent and how long silence is tolerated.
///
/// Two presets, both measured in `tests/sim.rs`:
///
/// | preset | settled traffic | a silent peer is evicted after |
/// |---|---|---|
/// | [`Schedule::responsive`] (default) | 5 datagrams / instance / minute | 29 s |
/// | [`Schedule::quiet`] | 2 datagrams / instance / minute | 75 s |
///
/// ```
/// use std::time::Duration;
/// use cohort::protocol::Schedule;
/// let custom = Schedule { max_interval: Duration::from_secs(20), ttl: Duration::from_secs(45), ..Schedule::responsive() };
/// assert!(custom.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Gap between the first and second announcement.
    pub first_interval: Duration,
    /// The gap doubles after every announcement until it reaches this.
    pub max_interval: Duration,
    /// How many of the first announcements ask every receiver for a reply.
    /// At least 1; more make a newcomer robust against a lost first packet.
    pub eager_announcements: u32,
    /// How long peers may go without hearing from us before evicting us;
    /// carried in every packet. At least twice `max_interval`.
    pub ttl: Duration,
}

impl Schedule {
    /// The default: announce at 0, ~100 ms, ~300 ms, ~700 ms, ... then every
    /// 12 s ± 20% (5 datagrams a minute once settled); TTL 29 s, so a silent
    /// peer is probed from 26.1 s and evicted 29 s after its last packet:
    /// within 30 s of going silent, with a second to spare for timers and
    /// scheduling on a loaded host.
    pub const fn responsive() -> Self {
        Schedule {
            first_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(12),
            eager_announcements: 3,
            ttl: Duration::from_secs(29),
        }
    }

    /// For large or busy networks: settles at one announcement every
    /// 30 s ± 20% (2 a minute); TTL 75 s. Start-up is as fast as
    /// [`Schedule::responsive`].
    pub const fn quiet() -> Self {
        Schedule {
            first_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(30),
            eager_announcements: 3,
            ttl: Duration::from_secs(75),
        }
    }

    /// Checks that the schedule can be followed.
    ///
    /// # Errors
    /// A sentence naming the field to change.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.first_interval.is_zero() {
            return Err("first_interval is zero");
        }
        if self.max_interval < self.first_interval {
            return Err("max_interval is shorter than first_interval");
        }
        if self.eager_announcements == 0 {
            return Err("eager_announcements is zero, so a newcomer would ask nobody to reply");
        }
        if self.ttl < self.max_interval * 2 {
            return Err(
                "ttl is less than twice max_interval, so one late announcement could evict a live instance",
            );
        }
        if self.ttl > Duration::from_millis(u64::from(u32::MAX)) {
            return Err("ttl is longer than the wire format carries (about 49 days)");
        }
        Ok(())
    }
}

impl Default for Schedule {
    /// [`Schedule::responsive`].
    fn default() -> Self {
        Schedule::responsive()
    }
}

/// Everything the state machine needs to know about us.
#[derive(Debug, Clone)]
pub struct Config {
    /// Our instance id.
    pub id: Id,
    /// Our incarnation: larger than that of any earlier run with the same id.
    pub incarnation: u64,
    /// Application namespace; packets from other namespaces are rejected.
    pub namespace: String,
    /// Our payload, already encoded by the chart layer.
    pub payload: Vec<u8>,
    /// The announce schedule and our TTL.
    pub schedule: Schedule,
    /// Seed of the generator used for jitter.
    pub seed: u64,
    /// Announce or only listen.
    pub mode: Mode,
    /// The UDP port of our unicast socket, carried in every packet.
    pub reply_port: u16,
    /// Our process, carried in every packet, if known.
    pub process: Option<ProcessTag>,
}

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The multicast group (every listening instance).
    Group,
    /// One instance's unicast reply socket.
    Unicast(SocketAddr),
}

/// A datagram the state machine wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: Destination,
    /// The encoded packet.
    pub contents: Vec<u8>,
}

/// Why a peer left the table (and the chart).
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
    /// The application forgot it ([`Protocol::forget`]); the chart reports
    /// this, the state machine emits no event for it.
    Forgotten,
}

impl std::fmt::Display for LeftReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LeftReason::Goodbye => "said goodbye",
            LeftReason::Died => "died",
            LeftReason::Expired => "expired",
            LeftReason::Forgotten => "forgotten",
        })
    }
}

/// A change in what the state machine knows.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A peer we did not know.
    Joined {
        /// Its id.
        id: Id,
        /// Its incarnation.
        incarnation: u64,
        /// The address its packets came from.
        ip: IpAddr,
        /// Its encoded payload.
        payload: Vec<u8>,
        /// Its process, if it told us.
        process: Option<ProcessTag>,
    },
    /// A known peer changed address or payload, or restarted.
    Updated {
        /// Its id.
        id: Id,
        /// Its incarnation (larger than before if it restarted).
        incarnation: u64,
        /// The address its packets came from.
        ip: IpAddr,
        /// Its encoded payload.
        payload: Vec<u8>,
        /// Its process, if it told us.
        process: Option<ProcessTag>,
    },
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

/// Why [`Protocol::handle_datagram`] ignored a datagram. Every variant but
/// [`Rejected::SameIdAsUs`] has no effect on state; that one may also queue
/// an [`Event::Conflict`].
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
}

/// Counters of everything the state machine handled. Monotonic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Datagrams queued for sending.
    pub packets_sent: u64,
    /// Bytes in them.
    pub bytes_sent: u64,
    /// Datagrams handed to [`Protocol::handle_datagram`].
    pub packets_received: u64,
    /// Bytes in them.
    pub bytes_received: u64,
    /// Dropped: too short or cut off.
    pub dropped_truncated: u64,
    /// Dropped: not cohort's magic.
    pub dropped_bad_magic: u64,
    /// Dropped: a protocol version this build does not speak.
    pub dropped_bad_version: u64,
    /// Dropped: larger than the maximum datagram.
    pub dropped_oversize: u64,
    /// Dropped: malformed body, trailing bytes or an over-long namespace.
    pub dropped_malformed: u64,
    /// Dropped: another application's namespace.
    pub dropped_foreign_namespace: u64,
    /// Dropped: from an older incarnation of a known peer.
    pub dropped_stale: u64,
    /// Dropped: another instance with our id.
    pub dropped_same_id: u64,
    /// Peer messages that did not decode as the chart's message type
    /// (another application, or another version of it, in our namespace).
    /// Counted by the driver, not the state machine, which never decodes
    /// payloads.
    pub dropped_undecodable_payload: u64,
    /// Probes sent to silent peers.
    pub probes_sent: u64,
    /// Peers that joined.
    pub joined: u64,
    /// Peers that changed payload or address, or restarted.
    pub updated: u64,
    /// Peers that left with a goodbye.
    pub left_goodbye: u64,
    /// Same-host peers whose process died.
    pub left_died: u64,
    /// Peers evicted after their TTL.
    pub left_expired: u64,
    /// Peers the application forgot.
    pub left_forgotten: u64,
    /// Id conflicts detected.
    pub conflicts: u64,
}

/// What we know of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The peer's unicast reply address: source IP + its reply port.
    pub reply_addr: SocketAddr,
    /// The peer's incarnation.
    pub incarnation: u64,
    /// The peer's encoded payload.
    pub payload: Vec<u8>,
    /// The peer's process, if it told us.
    pub process: Option<ProcessTag>,
    /// When we last heard from it.
    pub last_seen: Instant,
    /// When we first heard from this incarnation.
    pub since: Instant,
    /// How long it may stay silent (its announced TTL, at least [`MIN_TTL`]).
    pub ttl: Duration,
    /// When the next probe is due, once probing has started.
    next_probe: Option<Instant>,
    /// When the first of the current round of probes went out.
    probing_since: Option<Instant>,
}

impl Peer {
    fn expires_at(&self) -> Instant {
        self.last_seen + self.ttl
    }

    fn probing_from(&self) -> Instant {
        self.expires_at() - self.probe_window()
    }

    fn probe_window(&self) -> Duration {
        self.ttl / 10
    }

    /// A peer is evicted only after a whole probe window of unanswered
    /// probes, even if its TTL ran out earlier: when this instance itself
    /// was stalled (stopped, paused, starved of CPU) no probe went out, and
    /// the silence was ours, not the peer's.
    fn evict_at(&self) -> Option<Instant> {
        self.probing_since
            .map(|since| (since + self.probe_window()).max(self.expires_at()))
    }

    fn heard_from(&mut self, now: Instant) {
        self.last_seen = now;
        self.next_probe = None;
        self.probing_since = None;
    }
}

/// Bound on remembered conflict reports, so a flood of forged claimants
/// cannot grow memory; when full it is cleared (a conflict may then be
/// reported again, which is harmless).
const MAX_CONFLICTS_REMEMBERED: usize = 256;

/// The discovery state machine of one instance. See the module docs.
#[derive(Debug)]
pub struct Protocol {
    config: Config,
    peers: HashMap<Id, Peer>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    next_send: Option<Instant>,
    /// Earliest instant at which some peer may need a probe or eviction.
    /// May be early (peers refreshed since), never late.
    next_check: Option<Instant>,
    interval: Duration,
    sent: u32,
    rng: SplitMix64,
    stats: Stats,
    conflicts: HashSet<(Id, SocketAddr)>,
}

impl Protocol {
    /// Creates the state machine; its first announcement (or query) is
    /// queued at once, so poll transmits right after.
    pub fn new(config: Config, now: Instant) -> Self {
        let mut protocol = Protocol {
            rng: SplitMix64(config.seed),
            interval: config.schedule.first_interval,
            config,
            peers: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_send: Some(now),
            next_check: None,
            sent: 0,
            stats: Stats::default(),
            conflicts: HashSet::new(),
        };
        protocol.handle_timeout(now);
        protocol
    }

    /// Our id.
    pub fn id(&self) -> Id {
        self.config.id
    }

    /// The peers we know, by id.
    pub fn peers(&self) -> &HashMap<Id, Peer> {
        &self.peers
    }

    /// Counters of what was handled so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Handles the timer set from [`Protocol::poll_timeout`]. Calling it
    /// early or more than once is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_send.is_some_and(|due| now >= due) {
            self.scheduled_send(now);
        }
        if self.next_check.is_some_and(|due| now >= due) {
            self.check_peers(now);
        }
    }

    fn scheduled_send(&mut self, now: Instant) {
        let eager = self.sent < self.config.schedule.eager_announcements.max(1);
        match self.config.mode {
            Mode::Announce => self.send(Destination::Group, Kind::Announce, eager),
            Mode::Sniff if eager => self.send(Destination::Group, Kind::Query, false),
            Mode::Sniff => {}
        }
        self.sent = self.sent.saturating_add(1);
        if self.config.mode == Mode::Sniff
            && self.sent >= self.config.schedule.eager_announcements.max(1)
        {
            self.next_send = None;
            return;
        }
        let gap = if self.sent == 1 {
            self.interval = self.config.schedule.first_interval;
            self.interval
        } else {
            self.interval = (self.interval * 2).min(self.config.schedule.max_interval);
            self.interval
        };
        self.next_send = Some(now + self.rng.jitter(gap));
    }

    /// Probes peers that have gone quiet and evicts those silent for their
    /// whole TTL. Work is proportional to the number of peers, and runs only
    /// when some peer's deadline may have come.
    fn check_peers(&mut self, now: Instant) {
        let mut expired = Vec::new();
        let mut probes = Vec::new();
        let mut next: Option<Instant> = None;
        for (&id, peer) in &mut self.peers {
            if peer.evict_at().is_some_and(|at| now >= at) {
                expired.push(id);
                continue;
            }
            let due = if now >= peer.probing_from() {
                peer.probing_since.get_or_insert(now);
                if peer.next_probe.is_none_or(|at| now >= at) {
                    probes.push(peer.reply_addr);
                    let gap = (peer.probe_window() / PROBES).max(Duration::from_millis(1));
                    peer.next_probe = Some(now + gap);
                }
                let evict_at = peer.evict_at().unwrap_or(now);
                peer.next_probe.map_or(evict_at, |p| p.min(evict_at))
            } else {
                peer.probing_from()
            };
            next = Some(next.map_or(due, |n| n.min(due)));
        }
        self.next_check = next;
        // Sorted so the output order does not depend on HashMap iteration.
        expired.sort_unstable();
        for id in expired {
            self.peers.remove(&id);
            self.left(id, LeftReason::Expired);
        }
        probes.sort_unstable();
        for addr in probes {
            self.stats.probes_sent += 1;
            self.send(Destination::Unicast(addr), Kind::Query, true);
        }
    }

    /// Handles one datagram that arrived from `source`.
    ///
    /// # Errors
    /// [`Rejected`] says why a datagram was ignored, for statistics and
    /// logs.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), Rejected> {
        self.stats.packets_received += 1;
        self.stats.bytes_received += datagram.len() as u64;
        let result = self.handle_packet(now, source, datagram);
        if let Err(rejected) = &result {
            let counter = match rejected {
                Rejected::Decode(DecodeError::Truncated { .. }) => {
                    &mut self.stats.dropped_truncated
                }
                Rejected::Decode(DecodeError::BadMagic) => &mut self.stats.dropped_bad_magic,
                Rejected::Decode(DecodeError::UnsupportedVersion { .. }) => {
                    &mut self.stats.dropped_bad_version
                }
                Rejected::Decode(DecodeError::Oversize { .. }) => &mut self.stats.dropped_oversize,
                Rejected::Decode(_) => &mut self.stats.dropped_malformed,
                Rejected::ForeignNamespace => &mut self.stats.dropped_foreign_namespace,
                Rejected::StaleIncarnation { .. } => &mut self.stats.dropped_stale,
                Rejected::SameIdAsUs { .. } => &mut self.stats.dropped_same_id,
            };
            *counter += 1;
        }
        result
    }

    fn handle_packet(
        &mut self,
        now: Instant,
        source: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), Rejected> {
        let packet = wire::decode(datagram)?;
        if packet.namespace != self.config.namespace {
            return Err(Rejected::ForeignNamespace);
        }
        let reply_addr = SocketAddr::new(source.ip(), packet.reply_port);
        if packet.sender == self.config.id {
            if packet.incarnation == self.config.incarnation {
                return Ok(()); // our own multicast, looped back
            }
            self.conflict(packet.sender, reply_addr);
            return Err(Rejected::SameIdAsUs { id: packet.sender });
        }
        let announcing = self.config.mode == Mode::Announce;
        match packet.kind {
            Kind::Announce => {
                let joined = self.upsert(now, reply_addr, &packet)?;
                if announcing && (packet.want_reply || joined) {
                    self.send(Destination::Unicast(reply_addr), Kind::Reply, false);
                }
            }
            Kind::Reply => {
                self.upsert(now, reply_addr, &packet)?;
            }
            Kind::Query => {
                // A probe from a known peer is a sign of life too.
                if let Some(peer) = self.peers.get_mut(&packet.sender)
                    && peer.incarnation == packet.incarnation
                    && peer.reply_addr == reply_addr
                {
                    peer.heard_from(now);
                }
                if announcing {
                    self.send(Destination::Unicast(reply_addr), Kind::Reply, false);
                }
            }
            Kind::Goodbye => match self.peers.get(&packet.sender) {
                Some(peer) if packet.incarnation < peer.incarnation => {
                    return Err(Rejected::StaleIncarnation { id: packet.sender });
                }
                Some(_) => {
                    self.peers.remove(&packet.sender);
                    self.left(packet.sender, LeftReason::Goodbye);
                }
                None => {}
            },
        }
        Ok(())
    }

    /// A watched same-host peer's process exited: it leaves at once, unless
    /// it has since restarted into a newer incarnation.
    pub fn handle_process_exit(&mut self, id: Id, incarnation: u64) {
        if self
            .peers
            .get(&id)
            .is_some_and(|p| p.incarnation == incarnation)
        {
            self.peers.remove(&id);
            self.left(id, LeftReason::Died);
        }
    }

    /// Replaces our payload, announces it at once, and restarts the
    /// doubling of the announce gap so the change spreads quickly even if
    /// this announcement is lost.
    pub fn set_payload(&mut self, now: Instant, payload: Vec<u8>) {
        self.config.payload = payload;
        if self.config.mode == Mode::Announce {
            self.send(Destination::Group, Kind::Announce, false);
            self.interval = self.config.schedule.first_interval;
            self.next_send = Some(now + self.rng.jitter(self.interval));
        }
    }

    /// Drops a peer without an event (the chart reports it as forgotten).
    /// If it is still alive, its next packet makes it join again.
    pub fn forget(&mut self, id: Id) -> bool {
        let known = self.peers.remove(&id).is_some();
        if known {
            self.stats.left_forgotten += 1;
        }
        known
    }

    /// Says goodbye (when announcing) and stops the schedule.
    pub fn close(&mut self) {
        if self.config.mode == Mode::Announce {
            self.send(Destination::Group, Kind::Goodbye, false);
        }
        self.next_send = None;
        self.next_check = None;
    }

    /// The encoded goodbye packet, for a driver that must say goodbye from
    /// a destructor, where it cannot run the poll loop.
    pub fn goodbye_datagram(&self) -> Option<Vec<u8>> {
        (self.config.mode == Mode::Announce)
            .then(|| wire::encode(&self.packet(Kind::Goodbye, false)))
    }

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next change to apply to the chart, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Protocol::handle_timeout`] must next be called; `None` if never.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.next_send, self.next_check) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Inserts or refreshes a peer. Returns whether it is new to us.
    fn upsert(
        &mut self,
        now: Instant,
        reply_addr: SocketAddr,
        packet: &Packet<'_>,
    ) -> Result<bool, Rejected> {
        let id = packet.sender;
        let ip = reply_addr.ip();
        let ttl = Duration::from_millis(u64::from(packet.ttl_ms)).max(MIN_TTL);
        match self.peers.get_mut(&id) {
            None => {
                let peer = Peer {
                    reply_addr,
                    incarnation: packet.incarnation,
                    payload: packet.payload.to_vec(),
                    process: packet.process,
                    last_seen: now,
                    since: now,
                    ttl,
                    next_probe: None,
                    probing_since: None,
                };
                let check = peer.probing_from();
                self.next_check = Some(self.next_check.map_or(check, |c| c.min(check)));
                self.peers.insert(id, peer);
                self.stats.joined += 1;
                self.events.push_back(Event::Joined {
                    id,
                    incarnation: packet.incarnation,
                    ip,
                    payload: packet.payload.to_vec(),
                    process: packet.process,
                });
                Ok(true)
            }
            Some(peer) if packet.incarnation < peer.incarnation => {
                let (since, current) = (peer.since, peer.reply_addr);
                if reply_addr != current && now.saturating_duration_since(since) > CONFLICT_GRACE {
                    self.conflict(id, reply_addr);
                }
                Err(Rejected::StaleIncarnation { id })
            }
            Some(peer) => {
                let restarted = packet.incarnation != peer.incarnation;
                let changed =
                    restarted || peer.reply_addr != reply_addr || peer.payload != packet.payload;
                peer.heard_from(now);
                peer.ttl = ttl;
                if restarted {
                    peer.since = now;
                }
                if changed {
                    peer.incarnation = packet.incarnation;
                    peer.reply_addr = reply_addr;
                    peer.payload = packet.payload.to_vec();
                    peer.process = packet.process;
                    self.stats.updated += 1;
                    self.events.push_back(Event::Updated {
                        id,
                        incarnation: packet.incarnation,
                        ip,
                        payload: packet.payload.to_vec(),
                        process: packet.process,
                    });
                }
                Ok(false)
            }
        }
    }

    fn left(&mut self, id: Id, reason: LeftReason) {
        match reason {
            LeftReason::Goodbye => self.stats.left_goodbye += 1,
            LeftReason::Died => self.stats.left_died += 1,
            LeftReason::Expired => self.stats.left_expired += 1,
            LeftReason::Forgotten => self.stats.left_forgotten += 1,
        }
        self.events.push_back(Event::Left { id, reason });
    }

    /// Reports a conflict once per (id, claimant address).
    fn conflict(&mut self, id: Id, other: SocketAddr) {
        if self.conflicts.len() >= MAX_CONFLICTS_REMEMBERED {
            self.conflicts.clear();
        }
        if self.conflicts.insert((id, other)) {
            self.stats.conflicts += 1;
            self.events.push_back(Event::Conflict { id, other });
        }
    }

    fn packet(&self, kind: Kind, want_reply: bool) -> Packet<'_> {
        Packet {
            namespace: &self.config.namespace,
            sender: self.config.id,
            incarnation: self.config.incarnation,
            kind,
            want_reply,
            reply_port: self.config.reply_port,
            ttl_ms: u32::try_from(self.config.schedule.ttl.as_millis()).unwrap_or(u32::MAX),
            process: self.config.process,
            payload: &self.config.payload,
        }
    }

    fn send(&mut self, destination: Destination, kind: Kind, want_reply: bool) {
        let contents = wire::encode(&self.packet(kind, want_reply));
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += contents.len() as u64;
        self.transmits.push_back(Transmit {
            destination,
            contents,
        });
    }
}

/// SplitMix64: a tiny, well-studied generator. Jitter needs spread, not
/// secrecy, and a seeded generator keeps the machine deterministic.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `gap` scaled by a uniform factor in [0.8, 1.2).
    fn jitter(&mut self, gap: Duration) -> Duration {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        gap.mul_f64(0.8 + 0.4 * unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(id: Id, mode: Mode) -> Config {
        Config {
            id,
            incarnation: 1,
            namespace: "test".into(),
            payload: vec![id as u8],
            schedule: Schedule::default(),
            seed: id,
            mode,
            reply_port: 5000 + id as u16,
            process: None,
        }
    }

    fn addr(id: Id) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 5000 + id as u16))
    }

    #[test]
    fn a_newcomer_announces_at_once_asking_for_replies() {
        let now = Instant::now();
        let mut p = Protocol::new(config(1, Mode::Announce), now);
        let t = p.poll_transmit().expect("first announcement");
        assert_eq!(t.destination, Destination::Group);
        let packet = wire::decode(&t.contents).unwrap();
        assert_eq!((packet.kind, packet.want_reply), (Kind::Announce, true));
        assert!(p.poll_timeout().unwrap() > now);
    }

    #[test]
    fn an_announcement_is_answered_with_a_unicast_reply_to_the_reply_port() {
        let now = Instant::now();
        let mut a = Protocol::new(config(1, Mode::Announce), now);
        let mut b = Protocol::new(config(2, Mode::Announce), now);
        let announce = a.poll_transmit().unwrap();
        b.poll_transmit();
        b.handle_datagram(now, addr(1), &announce.contents).unwrap();
        let reply = b.poll_transmit().expect("reply");
        assert_eq!(reply.destination, Destination::Unicast(addr(1)));
        assert!(matches!(b.poll_event(), Some(Event::Joined { id: 1, .. })));
        a.handle_datagram(now, addr(2), &reply.contents).unwrap();
        assert!(matches!(a.poll_event(), Some(Event::Joined { id: 2, .. })));
        assert!(a.poll_transmit().is_none(), "replies are not answered");
    }

    #[test]
    fn the_announce_gap_backs_off_to_the_maximum() {
        let start = Instant::now();
        let mut p = Protocol::new(config(1, Mode::Announce), start);
        let mut now = start;
        let mut gaps = Vec::new();
        for _ in 0..12 {
            let next = p.poll_timeout().unwrap();
            gaps.push(next - now);
            now = next;
            p.handle_timeout(now);
        }
        assert!(gaps[0] < Duration::from_millis(121));
        assert!(gaps.windows(2).take(5).all(|w| w[1] > w[0]), "{gaps:?}");
        let max = Schedule::default().max_interval;
        assert!(gaps.iter().all(|g| *g <= max.mul_f64(1.2)), "{gaps:?}");
        assert!(gaps[11] >= max.mul_f64(0.8), "{gaps:?}");
    }

    #[test]
    fn late_packets_from_an_older_incarnation_are_ignored() {
        let now = Instant::now();
        let mut p = Protocol::new(config(1, Mode::Announce), now);
        let mut new = config(2, Mode::Announce);
        new.incarnation = 10;
        let mut old = config(2, Mode::Announce);
        old.incarnation = 9;
        let new_packet = Protocol::new(new, now).poll_transmit().unwrap();
        let old_packet = Protocol::new(old, now).poll_transmit().unwrap();
        p.handle_datagram(now, addr(2), &new_packet.contents)
            .unwrap();
        assert_eq!(
            p.handle_datagram(now, addr(2), &old_packet.contents),
            Err(Rejected::StaleIncarnation { id: 2 })
        );
        assert_eq!(p.peers()[&2].incarnation, 10);
    }

    #[test]
    fn a_sniffer_queries_but_never_announces_or_replies() {
        let now = Instant::now();
        let mut s = Protocol::new(config(9, Mode::Sniff), now);
        let query = s.poll_transmit().unwrap();
        assert_eq!(wire::decode(&query.contents).unwrap().kind, Kind::Query);
        let mut a = Protocol::new(config(1, Mode::Announce), now);
        let announce = a.poll_transmit().unwrap();
        s.handle_datagram(now, addr(1), &announce.contents).unwrap();
        assert!(s.poll_transmit().is_none());
        assert_eq!(s.peers().len(), 1);
        a.handle_datagram(now, addr(9), &query.contents).unwrap();
        assert!(a.peers().is_empty(), "a querier never joins a chart");
        assert_eq!(
            a.poll_transmit().unwrap().destination,
            Destination::Unicast(addr(9))
        );
    }

    #[test]
    fn a_goodbye_removes_the_peer_with_an_event() {
        let now = Instant::now();
        let mut a = Protocol::new(config(1, Mode::Announce), now);
        let mut b = Protocol::new(config(2, Mode::Announce), now);
        let announce = b.poll_transmit().unwrap();
        a.handle_datagram(now, addr(2), &announce.contents).unwrap();
        a.poll_event();
        b.close();
        let bye = b.poll_transmit().unwrap();
        a.handle_datagram(now, addr(2), &bye.contents).unwrap();
        assert!(a.peers().is_empty());
        assert_eq!(
            a.poll_event(),
            Some(Event::Left {
                id: 2,
                reason: LeftReason::Goodbye
            })
        );
        assert_eq!(b.poll_timeout(), None);
    }

    #[test]
    fn packets_from_another_namespace_change_nothing() {
        let now = Instant::now();
        let mut a = Protocol::new(config(1, Mode::Announce), now);
        let mut other = config(2, Mode::Announce);
        other.namespace = "other".into();
        let foreign = Protocol::new(other, now).poll_transmit().unwrap();
        a.poll_transmit();
        assert_eq!(
            a.handle_datagram(now, addr(2), &foreign.contents),
            Err(Rejected::ForeignNamespace)
        );
        assert!(a.peers().is_empty() && a.poll_transmit().is_none());
    }
}
