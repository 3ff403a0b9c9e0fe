//! The discovery state machine, free of I/O: the advanced layer.
//!
//! Most applications never touch this module: [`ChartBuilder`](crate::ChartBuilder)
//! and [`discovery::spawn`](crate::discovery::spawn) run it for them. It is
//! public for custom drivers (another runtime, another transport) and for
//! simulation: `tests/sim.rs` runs 100 instances with packet loss through a
//! simulated day in seconds, because nothing here reads a clock or a socket.
//!
//! **Owns:** the rules of discovery: who is known, when to announce, whom to
//! answer, when a silent peer is probed and evicted. It is the **one owner of
//! membership**: the chart is a view that only this machine's [`Change`]s
//! change. **Must not touch:** sockets, the system clock, processes or any
//! global randomness. Time comes in as a `now: Instant` parameter and
//! randomness from a generator seeded by [`Config::seed`], so the same inputs
//! always produce the same outputs.
//!
//! # Method kinds
//!
//! - **Inputs** (`handle_*`, [`Protocol::set_payload`], [`Protocol::forget`],
//!   [`Protocol::close`]): something happened: a datagram arrived, a timer
//!   fired, a watched process exited, the application asked for something.
//! - **Output** ([`Protocol::poll_output`]): what the machine wants done. It
//!   never blocks and never changes what the machine knows; it drains queues.
//! - **Queries** ([`Protocol::peer`], [`Protocol::peers`], [`Protocol::stats`]):
//!   read-only views.
//!
//! # Poll order
//!
//! After **every** input, call [`Protocol::poll_output`] until it returns
//! [`Output::Timeout`], acting on each output as it comes: send each
//! [`Output::Transmit`], apply each [`Output::Change`] to the chart, and
//! arrange for [`Protocol::handle_timeout`] to be called at the instant the
//! final [`Output::Timeout`] names (replacing any earlier arrangement). Only
//! then wait for the next input. Transmits come out first, because they are
//! what peers wait on; an input's datagrams therefore leave before the driver
//! sleeps, whatever the input was.
//!
//! ```
//! use std::time::Instant;
//! use cohort::protocol::{Config, Output, Protocol};
//!
//! let now = Instant::now();
//! let mut protocol = Protocol::new(Config { id: 7, ..Config::default() }, now)?;
//! let wake_at = loop {
//!     match protocol.poll_output() {
//!         Output::Transmit(t) => { /* send t.contents to t.destination */ }
//!         Output::Change(e) => { /* apply e to the chart */ }
//!         Output::Timeout(at) => break at,
//!         _ => {}
//!     }
//! };
//! assert!(wake_at.is_some(), "the next announcement is scheduled");
//! # Ok::<(), cohort::protocol::ConfigError>(())
//! ```
//!
//! # The rules
//!
//! **Meeting.** A newcomer announces at once, asking for replies
//! (`want_reply`) on its first [`Schedule::eager_announcements`]
//! announcements. Without a key (open packets), nobody is believed before it
//! proves it receives at the address it claims: whoever hears an unknown
//! sender answers with a small [`Message::Query`](crate::wire::Message::Query) carrying a cookie, never
//! larger than what it received; the sender echoes the cookie (and sends a
//! cookie of its own); the first side then knows the second is real, lists
//! it, and answers in full with the echo of the second cookie, twice, a
//! little apart. Three datagrams per pair (four with the copy), and a
//! forged source address gets nowhere: the forger never sees the cookie.
//! With a key (sealed packets, [`Config::keys`]), a packet that opens is
//! believed at once and a newcomer meets each peer with one reply. Answers
//! to a newcomer are paced over [`PACING_PER_PEER`] times the group size (at
//! most [`MAX_PACING`]), so its receive buffer keeps up.
//!
//! **Settling.** The announcements after the first, up to four after the
//! eager ones, carry the ids already heard (see `filter`): those peers
//! stay quiet, the others answer even if not asked, so a handshake that lost
//! a datagram is retried at the next announcement of either side.
//!
//! **Announcing.** The first gap is [`Schedule::first_interval`], each
//! following gap doubles up to [`Schedule::max_interval`] (stretched in
//! proportion to the group beyond [`SCALE_FROM`] instances, the TTL with it),
//! and every gap is jittered by ±20%. A payload change is announced at once
//! and restarts the doubling.
//!
//! **Liveness.** Every packet carries the sender's TTL (clamped to
//! [`Limits::max_peer_ttl`]). A peer not heard from for 90% of its TTL is
//! probed [`PROBES`] times over the last tenth, each probe a cookie its
//! answer must echo; only a peer silent for its whole TTL *and* a whole probe
//! window is evicted ([`LeftReason::Expired`]). A proven goodbye removes the
//! peer at once ([`LeftReason::Goodbye`]): it carries the secret whose hash
//! the incarnation announced, so nobody else can say it.
//! [`Protocol::handle_process_exit`] ([`LeftReason::Died`]) and
//! [`Protocol::forget`] ([`LeftReason::Forgotten`]) remove peers too.
//!
//! **Restarts, moves and takeovers.** A larger incarnation from a proven
//! address of the peer replaces it at once. From another address, the known
//! address is probed first, and only if it stays silent (a restart on a new
//! port) does the claimant take over; while it answers, the claim is a
//! conflict ([`Change::Conflict`], at most once per [`CONFLICT_EVERY`]) and
//! is refused. A peer heard on several networks is one entry with several
//! addresses, in the order they were proven.
//!
//! **Bounds.** Everything a sender can make this machine hold or send has a
//! limit ([`Limits`]): peers, peers per source address, unproven claims,
//! answers to unproven addresses per address and in total, paced answers.
//! Every datagram dropped is counted by reason in [`Stats`].
//!
//! A sniffer ([`Mode::Sniff`]) never announces; it multicasts
//! [`Message::Query`](crate::wire::Message::Query) on the eager schedule, proves its address when
//! challenged, and every announcing instance answers it in full. A querier
//! is never added to a chart.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod announcer;
mod config;
mod dispatch;
mod events;
mod filter;
mod liveness;
mod membership;
mod output;
mod peers;
mod replay;
mod schedule;
mod stats;
mod validation;

use announcer::{Announcer, Build, Ours, Said};
use membership::Membership;
use output::Outbox;
use replay::ReplayGuard;
use validation::{Limiter, Pending, Validator};

pub use announcer::SCALE_FROM;
pub use config::{ClockAnchor, Config, ConfigError, Limits, Mode};
pub use events::{Change, LeftReason, PeerInfo, Rejected};
pub use filter::MAX_FILTER;
pub use liveness::PROBES;
pub use membership::{CONFLICT_EVERY, CONFLICT_GRACE, CONTEST_STEP, MIN_TTL};
pub use output::{Destination, Output, Transmit};
pub use peers::{MAX_ADDRS, Peer, PeerAddr};
pub use replay::REPLAY_WINDOW;
pub use schedule::{MAX_WIRE_TTL, MIN_INTERVAL, Schedule};
pub use stats::Stats;

use crate::wire::seal::KeyRing;
use crate::wire::{Id, MAX_DATAGRAM, MAX_NAMESPACE};

/// The longest spread of paced answers to one newcomer.
pub const MAX_PACING: Duration = Duration::from_millis(50);

/// Spread of paced answers per known instance: a newcomer to n instances
/// gets their answers over `n * PACING_PER_PEER` (at most [`MAX_PACING`]),
/// not all in the same millisecond, so its receive buffer keeps up.
pub const PACING_PER_PEER: Duration = Duration::from_micros(20);

/// The most seed addresses announced to (see [`Protocol::set_seeds`]).
pub const MAX_SEEDS: usize = 64;

/// How far in the future an incarnation may lie (clock skew between
/// hosts); beyond it, it is refused.
pub const MAX_FUTURE_INCARNATION: Duration = Duration::from_secs(3600);

/// When the second copy of a handshake's last datagram goes.
const FINAL_AGAIN: Duration = Duration::from_millis(20);

/// A sniffer's multicast query is padded to this many bytes, so that the
/// cookie each instance answers with fits in what it received.
const QUERY_PAD: usize = 160;

/// The discovery state machine of one instance. See the module docs.
#[derive(Debug)]
pub struct Protocol {
    mode: Mode,
    ours: Ours,
    announcer: Announcer,
    members: Membership,
    validator: Validator,
    pending: Pending,
    limiter: Limiter,
    replay: ReplayGuard,
    clock: Option<ClockAnchor>,
    out: Outbox,
    /// Reused for opening sealed packets: no allocation per datagram.
    scratch: Vec<u8>,
    /// Peers announced to directly, beside the group.
    seeds: Vec<SocketAddr>,
    closed: bool,
}

impl Protocol {
    /// Checks `config` and creates the state machine; its first announcement
    /// (or query) is queued at once, so poll right after.
    ///
    /// # Errors
    /// [`ConfigError`] if the schedule, namespace, payload or limits cannot
    /// work.
    pub fn new(config: Config, now: Instant) -> Result<Self, ConfigError> {
        config.schedule.validate().map_err(ConfigError::Schedule)?;
        if config.namespace.len() > MAX_NAMESPACE {
            return Err(ConfigError::NamespaceTooLong {
                len: config.namespace.len(),
            });
        }
        let l = &config.limits;
        if [
            l.max_peers,
            l.max_peers_per_ip,
            l.max_pending,
            l.max_tracked_sources,
        ]
        .contains(&0)
            || l.unproven_answers_per_ip.1 == 0
            || l.unproven_answers_total.1 == 0
        {
            return Err(ConfigError::ZeroLimit);
        }
        let mut ours = Ours::new(
            config.id,
            config.incarnation,
            config.namespace,
            config.payload,
            config.reply_port,
            config.schedule.ttl,
            config.process,
            &config.secret,
            config.keys,
        );
        let size = ours
            .packet(0, Build::plain(Said::Announce { want_reply: true }))
            .len()
            + MAX_FILTER;
        if size > MAX_DATAGRAM {
            return Err(ConfigError::PayloadTooLarge { size });
        }
        let limits = config.limits;
        let mut protocol = Protocol {
            mode: config.mode,
            announcer: Announcer::new(config.mode, config.schedule, config.seed, now),
            members: Membership::new(config.accept_payload, limits),
            validator: Validator::new(&config.secret, now),
            pending: Pending::new(limits.max_pending),
            limiter: Limiter::new(
                limits.unproven_answers_per_ip,
                limits.unproven_answers_total,
                limits.max_tracked_sources,
                now,
            ),
            replay: ReplayGuard::new(limits.max_peers.saturating_mul(2)),
            clock: config.clock,
            out: Outbox::default(),
            scratch: Vec::new(),
            seeds: Vec::new(),
            ours,
            closed: false,
        };
        protocol.handle_timeout(now);
        Ok(protocol)
    }

    /// Our id.
    pub fn id(&self) -> Id {
        self.ours.id
    }

    /// What we know of peer `id`.
    pub fn peer(&self, id: Id) -> Option<&Peer> {
        self.members.peers.get(id)
    }

    /// Every known peer, in no particular order.
    pub fn peers(&self) -> impl Iterator<Item = (Id, &Peer)> {
        self.members.peers.iter()
    }

    /// How many peers are known.
    pub fn peer_count(&self) -> usize {
        self.members.peers.len()
    }

    /// How many unproven claims wait for their senders to echo a cookie.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Counters of what was handled so far.
    pub fn stats(&self) -> &Stats {
        &self.out.stats
    }

    /// The TTL we currently announce (it grows with the group; see
    /// [`SCALE_FROM`]).
    pub fn announced_ttl(&self) -> Duration {
        self.ours.ttl()
    }

    /// The next thing to do; see the module docs for the poll order. Returns
    /// [`Output::Timeout`] once nothing else is queued.
    pub fn poll_output(&mut self) -> Output {
        self.out
            .pop()
            .unwrap_or_else(|| Output::Timeout(self.next_timeout()))
    }

    fn next_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        [
            self.announcer.deadline(),
            self.members.peers.next_deadline(),
            self.out.next_delayed(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn wall_ms(&self, now: Instant) -> Option<u64> {
        self.clock.map(|c| {
            let since = now.saturating_duration_since(c.at).as_millis() as u64;
            c.unix_ms.saturating_add(since)
        })
    }

    fn group_size(&self) -> usize {
        self.members.peers.len() + 1
    }

    /// Handles the timer set from [`Output::Timeout`]. Calling it early or
    /// more than once is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.out.release(now);
        let n = self.group_size();
        let (_, ttl) = self.announcer.scaled(n);
        self.ours.set_ttl(ttl);
        let (first, settling) = (self.announcer.first(), self.announcer.settling());
        if let Some(said) = self.announcer.due(now, n) {
            self.announce(now, said, !first && settling);
        }
        let wall = self.wall_ms(now).unwrap_or(0);
        let (ours, validator) = (&mut self.ours, &self.validator);
        self.members
            .on_timeout(now, &mut self.out, |id, addr, out| {
                let cookie = validator.cookie(now, addr, id);
                let probe = ours.packet(
                    wall,
                    Build {
                        cookie: Some(cookie),
                        ..Build::plain(Said::Query { want_reply: true })
                    },
                );
                out.send(Destination::Unicast(addr), probe);
            });
    }

    /// Sends a scheduled announcement (or a sniffer's query). While
    /// settling, announcements after the first carry the ids already heard:
    /// those need not answer again, and the others answer even an
    /// announcement that does not ask.
    fn announce(&mut self, now: Instant, said: Said, with_filter: bool) {
        let wall = self.wall_ms(now).unwrap_or(0);
        let known = match said {
            Said::Announce { .. } if with_filter => {
                let ids = self.members.peers.iter().map(|(id, _)| id);
                filter::build(ids, self.members.peers.len())
            }
            _ => Vec::new(),
        };
        let pad_to = match said {
            Said::Query { .. } if !self.ours.sealed() => QUERY_PAD,
            _ => 0,
        };
        let bytes = self.ours.packet(
            wall,
            Build {
                known: &known,
                pad_to,
                ..Build::plain(said)
            },
        );
        for &seed in &self.seeds {
            self.out.send(Destination::Unicast(seed), bytes.clone());
        }
        self.out.send(Destination::Group, bytes);
    }

    /// Sets the seeds: addresses every announcement also goes to directly,
    /// for networks that drop multicast. At most [`MAX_SEEDS`] are kept.
    /// A seed not in the previous set is sent an announcement at once
    /// (asking for a reply), so it learns of us without waiting for the
    /// schedule.
    pub fn set_seeds(&mut self, now: Instant, mut seeds: Vec<SocketAddr>) {
        seeds.sort_unstable();
        seeds.dedup();
        seeds.truncate(MAX_SEEDS);
        let new: Vec<SocketAddr> = seeds
            .iter()
            .filter(|s| !self.seeds.contains(s))
            .copied()
            .collect();
        self.seeds = seeds;
        if self.closed || new.is_empty() {
            return;
        }
        let wall = self.wall_ms(now).unwrap_or(0);
        let said = match self.mode {
            Mode::Announce => Said::Announce { want_reply: true },
            Mode::Sniff => Said::Query { want_reply: true },
        };
        let pad_to = match said {
            Said::Query { .. } if !self.ours.sealed() => QUERY_PAD,
            _ => 0,
        };
        let bytes = self.ours.packet(
            wall,
            Build {
                pad_to,
                ..Build::plain(said)
            },
        );
        for seed in new {
            self.out.send(Destination::Unicast(seed), bytes.clone());
        }
    }

    /// The seeds announced to.
    pub fn seeds(&self) -> &[SocketAddr] {
        &self.seeds
    }

    /// Interface `index` (as given to
    /// [`handle_datagram_via`](Self::handle_datagram_via)) is gone. A peer
    /// heard through it and elsewhere loses the addresses it had there; a
    /// peer heard only there is probed at once, and leaves within a tenth
    /// of its TTL unless it answers by another way.
    pub fn handle_interface_gone(&mut self, now: Instant, index: u32) {
        if self.closed {
            return;
        }
        self.members.interface_gone(now, index, &mut self.out);
        self.handle_timeout(now);
    }

    /// The network changed for the better (the group could be joined at
    /// last, an interface appeared): the eager phase starts over at once,
    /// so peers on the new network answer within one round trip.
    pub fn handle_network_change(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.announcer.restart_eager(now);
        self.handle_timeout(now);
    }

    /// A watched same-host peer's process exited: it leaves at once, unless
    /// it has since restarted into a newer incarnation.
    pub fn handle_process_exit(&mut self, id: Id, incarnation: u64) {
        if self
            .members
            .peers
            .get(id)
            .is_some_and(|p| p.incarnation == incarnation)
        {
            self.members.leave(id, LeftReason::Died, &mut self.out);
        }
    }

    /// Replaces our payload and announces it at once, restarting the
    /// doubling of the announce gap so the change spreads quickly even if
    /// this announcement is lost.
    pub fn set_payload(&mut self, now: Instant, payload: Vec<u8>) {
        self.ours.set_payload(payload);
        if self.announcer.restart(now) {
            self.announce(now, Said::Announce { want_reply: false }, false);
        }
    }

    /// Replaces the keys: from now on packets are sealed with the new
    /// current key and opened with it or the new next one. Rotating needs
    /// no restart (see [`KeyRing::with_next`]).
    pub fn set_keys(&mut self, keys: Option<KeyRing>) {
        self.ours.set_keys(keys);
    }

    /// Drops peer `id` with [`LeftReason::Forgotten`]. If it is still alive,
    /// its next packet makes it join again. Returns whether it was known.
    pub fn forget(&mut self, id: Id) -> bool {
        self.members.leave(id, LeftReason::Forgotten, &mut self.out)
    }

    /// Says goodbye (when announcing) and stops: every known peer leaves the
    /// view ([`LeftReason::Stopped`]), no more timers, and later datagrams
    /// are counted but ignored.
    pub fn close(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        if self.mode == Mode::Announce {
            let wall = self.wall_ms(now).unwrap_or(0);
            let bye = self.ours.packet(wall, Build::plain(Said::Goodbye));
            for &seed in &self.seeds {
                self.out.send(Destination::Unicast(seed), bye.clone());
            }
            self.out.send(Destination::Group, bye);
        }
        self.announcer.stop();
        self.members.clear(LeftReason::Stopped, &mut self.out);
        self.closed = true;
    }

    /// The encoded goodbye packet, for a driver that must say goodbye from
    /// a destructor, where it cannot run the poll loop.
    pub fn goodbye_datagram(&mut self, now: Instant) -> Option<std::sync::Arc<[u8]>> {
        let wall = self.wall_ms(now).unwrap_or(0);
        (self.mode == Mode::Announce).then(|| self.ours.packet(wall, Build::plain(Said::Goodbye)))
    }

    /// Gives back memory held for peers and claims after a flood or a mass
    /// departure. Called by the driver now and then; cheap when nothing
    /// needs shrinking.
    pub fn shrink(&mut self) {
        self.members.peers.shrink();
        self.pending.shrink();
        self.limiter.shrink();
    }
}

#[cfg(test)]
mod tests;
