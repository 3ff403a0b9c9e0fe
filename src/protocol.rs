//! The discovery state machine, free of I/O.
//!
//! **Owns:** the rules of discovery: who is known, when to announce, whom to
//! answer. **Must not touch:** sockets, the system clock or any global
//! randomness. Time comes in as a `now: Instant` parameter and randomness from
//! a generator seeded by [`Config::seed`], so the same inputs always produce the
//! same outputs. That determinism is what lets `tests/sim.rs` run 100
//! instances with packet loss through simulated minutes in milliseconds.
//!
//! # Method kinds
//!
//! - **Inputs** (`handle_*`, [`Protocol::set_payload`], [`Protocol::forget`],
//!   [`Protocol::close`]): feed something that happened: a datagram, a timer
//!   firing, a request from the application.
//! - **Outputs** (`poll_*`): take what the machine wants done. They never
//!   block and never change what the machine knows, only drain its queues.
//!
//! # Poll order
//!
//! After every input, a driver must:
//!
//! 1. call [`Protocol::poll_transmit`] until it returns `None`, sending each
//!    datagram;
//! 2. call [`Protocol::poll_event`] until it returns `None`, applying each
//!    event to the chart;
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
//! - A sniffer ([`Mode::Sniff`]) never announces; it multicasts
//!   [`Kind::Query`] on the eager schedule and every announcing instance
//!   answers it with a unicast reply. A querier is never added to a chart.
//! - A restarted instance carries a larger incarnation: it replaces its old
//!   entry, and late packets from the old incarnation are ignored.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::wire::{self, DecodeError, Id, Kind, Packet};

/// Whether this instance takes part or only listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Announce ourselves and answer others (`discovery::maintain`).
    Announce,
    /// Listen only, asking the group to announce (`discovery::sniff`).
    Sniff,
}

/// When announcements are sent.
///
/// ```
/// use std::time::Duration;
/// use cohort::protocol::Schedule;
/// let quiet = Schedule {
///     first_interval: Duration::from_millis(200),
///     max_interval: Duration::from_secs(30),
///     eager_announcements: 2,
/// };
/// assert!(quiet.max_interval > Schedule::default().max_interval);
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
}

impl Default for Schedule {
    /// Announce at 0, ~100 ms, ~300 ms, ~700 ms, ... then every 12 s ± 20%
    /// (5 datagrams a minute once settled).
    fn default() -> Self {
        Schedule {
            first_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(12),
            eager_announcements: 3,
        }
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
    /// The announce schedule.
    pub schedule: Schedule,
    /// Seed of the generator used for jitter.
    pub seed: u64,
    /// Announce or only listen.
    pub mode: Mode,
    /// The UDP port of our unicast socket, carried in every packet.
    pub reply_port: u16,
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

/// Why a peer left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeftReason {
    /// It said goodbye.
    Goodbye,
}

/// A change in what the state machine knows.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A peer we did not know.
    Joined {
        /// Its id.
        id: Id,
        /// The address its packets came from.
        ip: IpAddr,
        /// Its encoded payload.
        payload: Vec<u8>,
    },
    /// A known peer changed address or payload, or restarted.
    Updated {
        /// Its id.
        id: Id,
        /// The address its packets came from.
        ip: IpAddr,
        /// Its encoded payload.
        payload: Vec<u8>,
    },
    /// A peer left.
    Left {
        /// Its id.
        id: Id,
        /// Why.
        reason: LeftReason,
    },
}

/// Why [`Protocol::handle_datagram`] ignored a datagram. Every variant has
/// the same effect on state: **none**; the datagram is dropped.
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

/// What we know of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The peer's unicast reply address: source IP + its reply port.
    pub reply_addr: SocketAddr,
    /// The peer's incarnation.
    pub incarnation: u64,
    /// The peer's encoded payload.
    pub payload: Vec<u8>,
    /// When we last heard from it.
    pub last_seen: Instant,
}

/// The discovery state machine of one instance. See the module docs.
#[derive(Debug)]
pub struct Protocol {
    config: Config,
    peers: HashMap<Id, Peer>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    next_send: Option<Instant>,
    interval: Duration,
    sent: u32,
    rng: SplitMix64,
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
            sent: 0,
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

    /// Handles the timer set from [`Protocol::poll_timeout`]. Calling it
    /// early or more than once is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(due) = self.next_send else { return };
        if now < due {
            return;
        }
        let eager = self.sent < self.config.schedule.eager_announcements.max(1);
        match self.config.mode {
            Mode::Announce => {
                self.send(Destination::Group, Kind::Announce, eager);
            }
            Mode::Sniff if eager => {
                self.send(Destination::Group, Kind::Query, false);
            }
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
            self.config.schedule.first_interval
        } else {
            self.interval = (self.interval * 2).min(self.config.schedule.max_interval);
            self.interval
        };
        self.next_send = Some(now + self.rng.jitter(gap));
    }

    /// Handles one datagram that arrived from `source`.
    ///
    /// # Errors
    /// [`Rejected`] says why a datagram was ignored, for statistics and
    /// logs. It never leaves the state machine changed.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), Rejected> {
        let packet = wire::decode(datagram)?;
        if packet.namespace != self.config.namespace {
            return Err(Rejected::ForeignNamespace);
        }
        if packet.sender == self.config.id {
            return if packet.incarnation == self.config.incarnation {
                Ok(()) // our own multicast, looped back
            } else {
                Err(Rejected::SameIdAsUs { id: packet.sender })
            };
        }
        let reply_addr = SocketAddr::new(source.ip(), packet.reply_port);
        let announcing = self.config.mode == Mode::Announce;
        match packet.kind {
            Kind::Announce => {
                let joined = self.upsert(now, reply_addr, &packet)?;
                if announcing && (packet.want_reply || joined) {
                    self.reply_to(reply_addr);
                }
            }
            Kind::Reply => {
                self.upsert(now, reply_addr, &packet)?;
            }
            Kind::Query => {
                if announcing {
                    self.reply_to(reply_addr);
                }
            }
            Kind::Goodbye => match self.peers.get(&packet.sender) {
                Some(peer) if packet.incarnation < peer.incarnation => {
                    return Err(Rejected::StaleIncarnation { id: packet.sender });
                }
                Some(_) => {
                    self.peers.remove(&packet.sender);
                    self.events.push_back(Event::Left {
                        id: packet.sender,
                        reason: LeftReason::Goodbye,
                    });
                }
                None => {}
            },
        }
        Ok(())
    }

    /// Replaces our payload and announces it at once.
    pub fn set_payload(&mut self, payload: Vec<u8>) {
        self.config.payload = payload;
        if self.config.mode == Mode::Announce {
            self.send(Destination::Group, Kind::Announce, false);
        }
    }

    /// Drops a peer without an event (the chart reports it as forgotten).
    /// If it is still alive, its next packet makes it join again.
    pub fn forget(&mut self, id: Id) -> bool {
        self.peers.remove(&id).is_some()
    }

    /// Says goodbye (when announcing) and stops the schedule.
    pub fn close(&mut self) {
        if self.config.mode == Mode::Announce {
            self.send(Destination::Group, Kind::Goodbye, false);
        }
        self.next_send = None;
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
        self.next_send
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
        match self.peers.get_mut(&id) {
            None => {
                self.peers.insert(
                    id,
                    Peer {
                        reply_addr,
                        incarnation: packet.incarnation,
                        payload: packet.payload.to_vec(),
                        last_seen: now,
                    },
                );
                self.events.push_back(Event::Joined {
                    id,
                    ip,
                    payload: packet.payload.to_vec(),
                });
                Ok(true)
            }
            Some(peer) if packet.incarnation < peer.incarnation => {
                Err(Rejected::StaleIncarnation { id })
            }
            Some(peer) => {
                peer.last_seen = now;
                let changed = packet.incarnation != peer.incarnation
                    || peer.reply_addr != reply_addr
                    || peer.payload != packet.payload;
                if changed {
                    peer.incarnation = packet.incarnation;
                    peer.reply_addr = reply_addr;
                    peer.payload = packet.payload.to_vec();
                    self.events.push_back(Event::Updated {
                        id,
                        ip,
                        payload: packet.payload.to_vec(),
                    });
                }
                Ok(false)
            }
        }
    }

    fn reply_to(&mut self, reply_addr: SocketAddr) {
        self.send(Destination::Unicast(reply_addr), Kind::Reply, false);
    }

    fn packet(&self, kind: Kind, want_reply: bool) -> Packet<'_> {
        Packet {
            namespace: &self.config.namespace,
            sender: self.config.id,
            incarnation: self.config.incarnation,
            kind,
            want_reply,
            reply_port: self.config.reply_port,
            payload: &self.config.payload,
        }
    }

    fn send(&mut self, destination: Destination, kind: Kind, want_reply: bool) {
        let contents = wire::encode(&self.packet(kind, want_reply));
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
