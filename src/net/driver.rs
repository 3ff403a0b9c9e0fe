//! The tokio task that runs one chart's discovery.
//!
//! **Owns:** the loop that moves datagrams between the sockets and the
//! [`Protocol`], the timer, the same-host process watches, retries of the
//! group join, and the goodbye from a destructor. **Must not touch:**
//! discovery rules (the protocol decides) or the chart's map (it changes only
//! through [`Chart::apply`]).
//!
//! # The loop
//!
//! ```text
//! loop {
//!     drain the protocol: send each transmit, apply each change,
//!     until it names its next timeout          (poll_output)
//!     publish stats; arm the timer
//!     wait for ONE input:
//!         a datagram on either socket  -> handle_datagram
//!         the timer                    -> join retry / handle_timeout
//!         a request from the chart     -> forget / set_payload / close
//!         a watched process exiting    -> handle_process_exit
//! }
//! ```
//!
//! Draining comes after every input and before any wait, so whatever an
//! input makes the protocol say (a reply, a new payload's announcement, a
//! goodbye) leaves before the task sleeps. Between announcements the task
//! sleeps in the kernel: no polling, no CPU.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::UdpSocket;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{Instant, sleep, sleep_until};

use super::socket;
use crate::chart::{Chart, Message, RunGuard, payload_decodes};
use crate::error::DiscoveryError;
use crate::host::{self, Watch};
use crate::protocol::{Change, ClockAnchor, Config, Destination, Mode, Output, Protocol};
use crate::status::{IoStats, Problem, Stats};
use crate::wire::{Id, MAX_DATAGRAM, ProcessTag};

/// The most same-host peer processes watched at once; peers beyond it are
/// covered by their TTL like remote ones. Only peers that proved their
/// address are watched at all, so a forger cannot make this instance open
/// pidfds by copying process tags.
pub(crate) const MAX_WATCHES: usize = 256;

/// First and longest wait between attempts to join the group.
const JOIN_RETRY_FIRST: Duration = Duration::from_millis(250);
const JOIN_RETRY_MAX: Duration = Duration::from_secs(10);

/// One chart's discovery: sockets open, protocol created, not yet running.
pub(crate) struct Driver<M: Message> {
    chart: Chart<M>,
    protocol: Protocol,
    group_socket: UdpSocket,
    unicast: UdpSocket,
    group: SocketAddrV4,
    interfaces: Vec<Ipv4Addr>,
    our_process: Option<ProcessTag>,
    /// One task per watched same-host peer process; each returns the peer
    /// and incarnation it watched. Dropping the set aborts them all.
    watches: JoinSet<(Id, u64, Watch)>,
    watched: HashMap<Id, (u64, AbortHandle)>,
    io: IoStats,
    join: Join,
    said_goodbye: bool,
    // Last, so it ends the run after everything else has been dropped.
    _run: RunGuard<M>,
}

/// Whether the group is joined, and when to try again if not.
struct Join {
    attempts: u64,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl<M: Message> Driver<M> {
    /// Opens the sockets and creates the protocol. Fails only on what a
    /// retry would not fix (the port is taken, sockets cannot be created,
    /// discovery already runs); a group that cannot be joined yet is
    /// retried in the loop and reported in the chart's status.
    pub(crate) fn open(chart: Chart<M>, mode: Mode) -> Result<Self, DiscoveryError> {
        let run = chart.begin_run().ok_or(DiscoveryError::AlreadyRunning)?;
        let settings = &chart.shared.settings;
        let group = SocketAddrV4::new(settings.group, settings.port);
        let group_socket = socket::group_socket(settings.group, settings.port)?;
        let unicast = socket::unicast_socket(
            &settings.interfaces,
            settings.local_discovery,
            settings.multicast_ttl,
        )?;
        let reply_port = unicast
            .local_addr()
            .map_err(|source| DiscoveryError::Socket {
                what: "unicast (local address)",
                source,
            })?
            .port();
        let process = host::this_process();
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(DiscoveryError::Random)?;
        let now = Instant::now();
        let config = Config {
            id: settings.id,
            incarnation: settings.incarnation,
            namespace: settings.namespace.clone(),
            payload: chart.our_payload(),
            schedule: settings.schedule,
            seed: settings.seed,
            secret,
            keys: chart.keys(),
            clock: Some(ClockAnchor {
                at: now.into_std(),
                unix_ms: unix_ms(),
            }),
            mode,
            reply_port,
            process,
            accept_payload: payload_decodes::<M>,
            limits: settings.limits,
        };
        // The builder checked everything a `Config` is checked for.
        let protocol =
            Protocol::new(config, Instant::now().into_std()).map_err(DiscoveryError::Config)?;
        tracing::debug!(id = settings.id, %group, reply_port, ?mode, "discovery starting");
        let mut driver = Driver {
            interfaces: settings.interfaces.clone(),
            protocol,
            group_socket,
            unicast,
            group,
            our_process: process,
            watches: JoinSet::new(),
            watched: HashMap::new(),
            io: IoStats::default(),
            join: Join {
                attempts: 0,
                retry_at: None,
                backoff: JOIN_RETRY_FIRST,
            },
            said_goodbye: false,
            chart,
            _run: run,
        };
        driver.try_join(Instant::now());
        Ok(driver)
    }

    /// This run's number, for handles that must stop this run only.
    pub(crate) fn run_id(&self) -> u64 {
        self._run.run
    }

    /// Runs until the chart asks for a shutdown (then says goodbye and
    /// returns `Ok`). Socket errors are counted, logged and survived.
    pub(crate) async fn run(mut self) -> Result<(), DiscoveryError> {
        // One byte more than the largest valid datagram, so an oversize one
        // is seen as oversize instead of silently truncated to a valid size.
        let mut group_buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut unicast_buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut failures = 0u32;
        // One timer for the whole run, moved only when the deadline moves.
        let timer = sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        loop {
            let deadline = self.drain().await;
            self.publish();
            let deadline = earliest(deadline, self.join.retry_at);
            if deadline != armed {
                if let Some(deadline) = deadline {
                    timer.as_mut().reset(deadline);
                }
                armed = deadline;
            }
            let received = tokio::select! {
                Some(done) = self.watches.join_next(), if !self.watches.is_empty() => {
                    // Aborted watches end in a JoinError: nothing to do.
                    if let Ok((id, incarnation, watch)) = done {
                        self.watch_ended(id, incarnation, watch, &mut group_buf, &mut unicast_buf);
                    }
                    continue;
                }
                r = self.group_socket.recv_from(&mut group_buf) => r.map(|(n, from)| (n, from, true)),
                r = self.unicast.recv_from(&mut unicast_buf) => r.map(|(n, from)| (n, from, false)),
                () = self.chart.shared.wake.notified() => {
                    if self.handle_requests() {
                        self.drain().await;
                        self.said_goodbye = true;
                        self.publish();
                        tracing::debug!("discovery shut down");
                        return Ok(());
                    }
                    continue;
                }
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    // Read what is already queued before acting on the
                    // timer: after a stall (SIGSTOP, a paused VM, a starved
                    // CPU) the timer and the peers' packets are both due,
                    // and the packets are the evidence that peers are alive.
                    self.drain_sockets(&mut group_buf, &mut unicast_buf);
                    let now = Instant::now();
                    if self.join.retry_at.is_some_and(|at| now >= at) {
                        self.try_join(now);
                    }
                    self.protocol.handle_timeout(now.into_std());
                    // Give back memory a flood or a mass departure left.
                    self.protocol.shrink();
                    continue;
                }
            };
            match received {
                Ok((len, from, on_group)) => {
                    failures = 0;
                    let buf = if on_group { &group_buf } else { &unicast_buf };
                    self.handle_datagram(from, &buf[..len]);
                }
                Err(error) => {
                    self.io.receive_failures += 1;
                    failures = failures.saturating_add(1);
                    let pause = Duration::from_millis(10 << failures.min(7));
                    tracing::warn!(%error, ?pause, "receiving a datagram failed; retrying");
                    sleep(pause).await;
                }
            }
        }
    }

    /// Polls the protocol until it names its next timeout: sends every
    /// transmit and applies every change on the way.
    async fn drain(&mut self) -> Option<Instant> {
        loop {
            match self.protocol.poll_output() {
                Output::Transmit(t) => self.send(t.destination, &t.contents).await,
                Output::Change(change) => {
                    self.watch_or_unwatch(&change);
                    self.chart.apply(change);
                }
                Output::Timeout(at) => return at.map(Instant::from_std),
            }
        }
    }

    /// Takes the chart's requests. Returns `true` when it asked to stop (the
    /// protocol is then closed, with its goodbye queued).
    fn handle_requests(&mut self) -> bool {
        let requests = self.chart.take_requests();
        let now = Instant::now().into_std();
        for id in requests.forget {
            self.protocol.forget(id);
        }
        if let Some(payload) = requests.payload {
            self.protocol.set_payload(now, payload);
        }
        if let Some(keys) = requests.keys {
            self.protocol.set_keys(keys);
        }
        if requests.shutdown {
            self.protocol.close(now);
        }
        requests.shutdown
    }

    fn publish(&self) {
        self.chart.set_stats(Stats {
            protocol: *self.protocol.stats(),
            io: self.io,
        });
    }

    fn handle_datagram(&mut self, mut from: SocketAddr, datagram: &[u8]) {
        self.io.datagrams_received += 1;
        // A source of 0.0.0.0 means the sender's kernel found no address for
        // the outgoing interface (multicast over a loopback-only route does
        // this), so it came from this host: record it as loopback.
        if from.ip().is_unspecified() {
            from.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        let now = Instant::now().into_std();
        if let Err(rejected) = self.protocol.handle_datagram(now, from, datagram) {
            tracing::debug!(%from, %rejected, "datagram dropped");
        }
    }

    /// Handles the datagrams already queued on both sockets, without
    /// waiting; at most a bounded number, so a flood cannot hold the loop.
    fn drain_sockets(&mut self, group_buf: &mut [u8], unicast_buf: &mut [u8]) {
        // Errors (WouldBlock above all) end the drain; the loop sees the rest.
        for _ in 0..256 {
            let Ok((len, from)) = self.group_socket.try_recv_from(group_buf) else {
                break;
            };
            self.handle_datagram(from, &group_buf[..len]);
        }
        for _ in 0..256 {
            let Ok((len, from)) = self.unicast.try_recv_from(unicast_buf) else {
                break;
            };
            self.handle_datagram(from, &unicast_buf[..len]);
        }
    }

    /// Joins the group, or schedules the next attempt with backoff and says
    /// why in the chart's status.
    fn try_join(&mut self, now: Instant) {
        let settings = &self.chart.shared.settings;
        match socket::join(&self.group_socket, settings.group, &self.interfaces) {
            Ok(()) => {
                let rejoined = self.join.attempts > 0;
                self.join = Join {
                    attempts: 0,
                    retry_at: None,
                    backoff: JOIN_RETRY_FIRST,
                };
                self.chart.update_status(|s| {
                    s.joined = true;
                    s.problems
                        .retain(|p| !matches!(p, Problem::NotJoined { .. }));
                });
                if rejoined {
                    tracing::info!(group = %self.group, "joined the multicast group; discovery is listening");
                    // The eager announcements went nowhere: start over.
                    self.protocol.handle_network_change(now.into_std());
                }
            }
            Err(error) => {
                self.io.join_failures += 1;
                self.join.attempts += 1;
                let retry_in = self.join.backoff;
                self.join.retry_at = Some(now + retry_in);
                self.join.backoff = (retry_in * 2).min(JOIN_RETRY_MAX);
                let problem = Problem::NotJoined {
                    error: error.to_string(),
                    attempts: self.join.attempts,
                    retry_in,
                };
                // Logged at attempts 1, 2, 4, 8, ...: visible, never a flood.
                if self.join.attempts.is_power_of_two() {
                    tracing::warn!("{problem}");
                }
                self.chart.update_status(|s| {
                    s.joined = false;
                    s.problems
                        .retain(|p| !matches!(p, Problem::NotJoined { .. }));
                    s.problems.push(problem);
                });
            }
        }
    }

    fn watch_ended(
        &mut self,
        id: Id,
        incarnation: u64,
        watch: Watch,
        group_buf: &mut [u8],
        unicast_buf: &mut [u8],
    ) {
        if self
            .watched
            .get(&id)
            .is_some_and(|(i, _)| *i == incarnation)
        {
            self.watched.remove(&id);
        }
        if watch == Watch::Exited {
            // A peer that said goodbye and then exited may have its goodbye
            // waiting on our sockets while `select!` happened to pick this
            // branch first: handle what is queued, so it leaves as
            // `Goodbye`, which is what happened.
            self.drain_sockets(group_buf, unicast_buf);
            tracing::debug!(id, "same-host peer process exited");
            self.protocol.handle_process_exit(id, incarnation);
        }
    }

    /// Starts watching a same-host peer's process when it joins or
    /// restarts, and stops when it leaves.
    fn watch_or_unwatch(&mut self, change: &Change) {
        match change {
            Change::Joined(info) | Change::Updated(info) => {
                let (Some(ours), Some(theirs)) = (self.our_process, info.process) else {
                    return;
                };
                let (id, incarnation) = (info.id, info.incarnation);
                if !host::same_pid_space(&ours, &theirs)
                    || self
                        .watched
                        .get(&id)
                        .is_some_and(|(i, _)| *i == incarnation)
                {
                    return;
                }
                self.unwatch(id);
                if self.watched.len() >= MAX_WATCHES {
                    tracing::debug!(
                        id,
                        "not watching a same-host peer's process: too many watched"
                    );
                    return;
                }
                let abort = self
                    .watches
                    .spawn(async move { (id, incarnation, host::exited(theirs).await) });
                self.watched.insert(id, (incarnation, abort));
            }
            Change::Left { id, .. } => self.unwatch(*id),
            Change::Conflict { .. } => {}
        }
    }

    fn unwatch(&mut self, id: Id) {
        if let Some((_, abort)) = self.watched.remove(&id) {
            abort.abort();
        }
    }

    async fn send(&mut self, destination: Destination, contents: &[u8]) {
        match destination {
            Destination::Unicast(to) => {
                let result = self.unicast.send_to(contents, to).await;
                self.count_send(contents.len(), &result, || format!("to {to}"));
            }
            Destination::Group => {
                if self.interfaces.len() <= 1 {
                    let result = self.unicast.send_to(contents, self.group).await;
                    self.count_group_send(contents.len(), &result);
                    return;
                }
                for i in 0..self.interfaces.len() {
                    let interface = self.interfaces[i];
                    let result = match SockRef::from(&self.unicast).set_multicast_if_v4(&interface)
                    {
                        Ok(()) => self.unicast.send_to(contents, self.group).await,
                        Err(error) => Err(error),
                    };
                    self.count_group_send(contents.len(), &result);
                }
            }
        }
    }

    fn count_group_send(&mut self, len: usize, result: &std::io::Result<usize>) {
        let group = self.group;
        self.count_send(len, result, || format!("to the multicast group {group}"));
        let failing = result.as_ref().err().map(|e| e.to_string());
        self.chart.update_status(|s| {
            let was = s
                .problems
                .iter()
                .position(|p| matches!(p, Problem::SendFailing { .. }));
            match (was, failing) {
                (Some(at), None) => {
                    s.problems.remove(at);
                }
                (Some(at), Some(error)) => s.problems[at] = Problem::SendFailing { error },
                (None, Some(error)) => s.problems.push(Problem::SendFailing { error }),
                (None, None) => {}
            }
        });
    }

    fn count_send(&mut self, len: usize, result: &std::io::Result<usize>, to: impl Fn() -> String) {
        match result {
            Ok(_) => {
                self.io.datagrams_sent += 1;
                self.io.bytes_sent += len as u64;
            }
            Err(error) => {
                self.io.send_failures += 1;
                // Logged at failures 1, 2, 4, 8, ...
                if self.io.send_failures.is_power_of_two() {
                    tracing::warn!(%error, failures = self.io.send_failures, "sending a datagram {} failed", to());
                }
            }
        }
    }
}

/// The wall clock in milliseconds since the Unix epoch (0 before it).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl<M: Message> Drop for Driver<M> {
    /// Dropping the driver (its task aborted, its future dropped, the
    /// runtime shutting down) is a graceful exit too: say goodbye, without
    /// waiting (a destructor cannot await, and a full send buffer should
    /// not delay the drop).
    fn drop(&mut self) {
        if self.said_goodbye {
            return;
        }
        let Some(bye) = self.protocol.goodbye_datagram(Instant::now().into_std()) else {
            return;
        };
        let interfaces: Vec<Option<Ipv4Addr>> = if self.interfaces.len() <= 1 {
            vec![None]
        } else {
            self.interfaces.iter().copied().map(Some).collect()
        };
        for interface in interfaces {
            if let Some(interface) = interface {
                let _ = SockRef::from(&self.unicast).set_multicast_if_v4(&interface);
            }
            if let Err(error) = self.unicast.try_send_to(&bye, SocketAddr::V4(self.group)) {
                tracing::debug!(%error, "could not say goodbye");
            }
        }
    }
}
