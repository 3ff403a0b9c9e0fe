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
//! - Every packet carries the sender's TTL. A peer not heard from for 90% of
//!   its TTL is probed [`PROBES`] times over the last tenth; only a peer
//!   silent for its whole TTL *and* a whole probe window is evicted
//!   ([`LeftReason::Expired`]). See `liveness` for why the second condition
//!   protects live peers after a stall of our own.
//! - A goodbye removes the peer at once ([`LeftReason::Goodbye`]); so does
//!   [`Protocol::handle_process_exit`] ([`LeftReason::Died`]) and
//!   [`Protocol::forget`] ([`LeftReason::Forgotten`]).
//! - A restarted instance carries a larger incarnation: it replaces its old
//!   entry at once, and late packets from the old incarnation are ignored.
//!   If packets from the older incarnation keep coming from another address
//!   after [`CONFLICT_GRACE`], two live instances claim one id: that is an
//!   [`Change::Conflict`]. A packet with our own id but not our incarnation is
//!   one too.
//! - A peer whose payload [`Config::accept_payload`] refuses never joins.
//! - A sniffer ([`Mode::Sniff`]) never announces; it multicasts
//!   [`Kind::Query`] on the eager schedule and every announcing instance
//!   answers it with a unicast reply. A querier is never added to a chart.

use std::net::SocketAddr;
use std::time::Instant;

mod announcer;
mod config;
mod events;
mod liveness;
mod membership;
mod output;
mod peers;
mod schedule;
mod stats;

use announcer::{Announcer, Ours, Said};
use membership::Membership;
use output::Outbox;

pub use config::{Config, ConfigError, Mode};
pub use events::{Change, LeftReason, PeerInfo, Rejected};
pub use liveness::PROBES;
pub use membership::{CONFLICT_GRACE, MIN_TTL};
pub use output::{Destination, Output, Transmit};
pub use peers::Peer;
pub use schedule::{MAX_WIRE_TTL, MIN_INTERVAL, Schedule};
pub use stats::Stats;

use crate::wire::{self, Id, Kind, MAX_DATAGRAM, MAX_NAMESPACE};

/// The discovery state machine of one instance. See the module docs.
#[derive(Debug)]
pub struct Protocol {
    mode: Mode,
    ours: Ours,
    announcer: Announcer,
    members: Membership,
    out: Outbox,
    closed: bool,
}

impl Protocol {
    /// Checks `config` and creates the state machine; its first announcement
    /// (or query) is queued at once, so poll right after.
    ///
    /// # Errors
    /// [`ConfigError`] if the schedule, namespace or payload cannot work.
    pub fn new(config: Config, now: Instant) -> Result<Self, ConfigError> {
        config.schedule.validate().map_err(ConfigError::Schedule)?;
        if config.namespace.len() > MAX_NAMESPACE {
            return Err(ConfigError::NamespaceTooLong {
                len: config.namespace.len(),
            });
        }
        let mut ours = Ours::new(
            config.id,
            config.incarnation,
            config.namespace,
            config.payload,
            config.reply_port,
            config.schedule.ttl,
            config.process,
        );
        let size = ours.packet(Said::AnnounceEager).len();
        if size > MAX_DATAGRAM {
            return Err(ConfigError::PayloadTooLarge { size });
        }
        let mut protocol = Protocol {
            mode: config.mode,
            announcer: Announcer::new(config.mode, config.schedule, config.seed, now),
            members: Membership::new(config.accept_payload),
            out: Outbox::default(),
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

    /// Counters of what was handled so far.
    pub fn stats(&self) -> &Stats {
        &self.out.stats
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
        match (
            self.announcer.deadline(),
            self.members.peers.next_deadline(),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Handles the timer set from [`Output::Timeout`]. Calling it early or
    /// more than once is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.announcer
            .on_timeout(now, &mut self.ours, &mut self.out);
        let ours = &mut self.ours;
        self.members.on_timeout(now, &mut self.out, |addr, out| {
            out.stats.probes_sent += 1;
            out.send(Destination::Unicast(addr), ours.packet(Said::Probe));
        });
    }

    /// Handles one datagram that arrived from `source`.
    ///
    /// # Errors
    /// [`Rejected`] says why a datagram was ignored, for logs; it is already
    /// counted in [`Stats`].
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), Rejected> {
        self.out.stats.datagrams_received += 1;
        self.out.stats.bytes_received += datagram.len() as u64;
        let result = if self.closed {
            Ok(())
        } else {
            self.dispatch(now, source, datagram)
        };
        if let Err(rejected) = &result {
            self.out.rejected(rejected);
        }
        result
    }

    fn dispatch(
        &mut self,
        now: Instant,
        source: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), Rejected> {
        let packet = wire::decode(datagram)?;
        if packet.namespace != self.ours.namespace {
            return Err(Rejected::ForeignNamespace);
        }
        let reply_addr = SocketAddr::new(source.ip(), packet.reply_port);
        if packet.sender == self.ours.id {
            if packet.incarnation == self.ours.incarnation {
                return Ok(()); // our own multicast, looped back
            }
            self.members
                .conflict(packet.sender, reply_addr, &mut self.out);
            return Err(Rejected::SameIdAsUs { id: packet.sender });
        }
        let announcing = self.mode == Mode::Announce;
        match packet.kind {
            Kind::Announce => {
                let joined = self
                    .members
                    .upsert(now, reply_addr, &packet, &mut self.out)?;
                if announcing && (packet.want_reply || joined) {
                    self.reply_to(reply_addr);
                }
            }
            Kind::Reply => {
                self.members
                    .upsert(now, reply_addr, &packet, &mut self.out)?;
            }
            Kind::Query => {
                self.members.queried_by(now, reply_addr, &packet);
                if announcing {
                    self.reply_to(reply_addr);
                }
            }
            Kind::Goodbye => self.members.goodbye(&packet, &mut self.out)?,
        }
        Ok(())
    }

    fn reply_to(&mut self, addr: SocketAddr) {
        let reply = self.ours.packet(Said::Reply);
        self.out.send(Destination::Unicast(addr), reply);
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
        self.announcer.restart(now, &mut self.ours, &mut self.out);
    }

    /// Drops peer `id` with [`LeftReason::Forgotten`]. If it is still alive,
    /// its next packet makes it join again. Returns whether it was known.
    pub fn forget(&mut self, id: Id) -> bool {
        self.members.leave(id, LeftReason::Forgotten, &mut self.out)
    }

    /// Says goodbye (when announcing) and stops: every known peer leaves the
    /// view ([`LeftReason::Stopped`]), no more timers, and later datagrams
    /// are counted but ignored.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        if self.mode == Mode::Announce {
            let bye = self.ours.packet(Said::Goodbye);
            self.out.send(Destination::Group, bye);
        }
        self.announcer.stop();
        self.members.clear(LeftReason::Stopped, &mut self.out);
        self.closed = true;
    }

    /// The encoded goodbye packet, for a driver that must say goodbye from
    /// a destructor, where it cannot run the poll loop.
    pub fn goodbye_datagram(&mut self) -> Option<std::sync::Arc<[u8]>> {
        (self.mode == Mode::Announce).then(|| self.ours.packet(Said::Goodbye))
    }
}

#[cfg(test)]
mod tests;
