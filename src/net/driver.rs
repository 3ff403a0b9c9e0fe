//! The tokio task that runs one chart's discovery.
//!
//! **Owns:** the loop that moves datagrams between the LAN sockets and the
//! [`Protocol`], feeds it what external sources (etcd) report, keeps the
//! timer, and applies the protocol's changes to the chart; the goodbye from
//! a destructor. **Must not touch:** discovery rules (the protocol decides)
//! or the chart's map (it changes only through [`Chart::apply`]).
//!
//! # The loop
//!
//! ```text
//! loop {
//!     drain the protocol: send each transmit, apply each change,
//!     until it names its next timeout          (poll_output)
//!     publish stats; arm the timer
//!     wait for ONE input:
//!         a datagram on any LAN socket     -> handle_datagram_via(interface)
//!         an event of an external source   -> handle_source
//!         the interfaces changed (netlink) -> re-scan soon
//!         a seed's addresses changed       -> set_seeds
//!         the timer                        -> join retries / re-scan
//!                                             (handle_interface_gone,
//!                                             handle_network_change) /
//!                                             deafness check / handle_timeout
//!         a request from the chart         -> forget / set_payload / keys / close
//!         a watched process exiting        -> handle_process_exit
//! }
//! ```
//!
//! Draining comes after every input and before any wait, so whatever an
//! input makes the protocol say (a reply, a new payload's announcement, a
//! goodbye) leaves before the task sleeps. Between announcements the task
//! sleeps in the kernel: no polling, no CPU.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use tokio::time::{Instant, sleep, sleep_until};

use super::external::External;
use super::hearing::Hearing;
use super::interfaces::Changes;
use super::lan::{Arrival, Lan, Role};
use super::seeds::Seeds;
use super::watches::Watches;
use crate::chart::{Chart, Message, RunGuard, payload_decodes};
use crate::error::DiscoveryError;
use crate::host;
use crate::protocol::{
    Change, ClockAnchor, Config, Destination, LeftReason, Mode, Output, Protocol,
};
use crate::source::{Record, SourceEvent};
use crate::status::{IoStats, Problem, SourceStats, Stats};
use crate::wire::MAX_DATAGRAM;

/// After the kernel reports an interface change, wait this long for the
/// rest of the burst (a new interface comes with several link and address
/// messages) before looking.
const SETTLE: Duration = Duration::from_millis(50);

/// Where the kernel sends no news of interface changes, look this often.
const RESCAN_EVERY: Duration = Duration::from_secs(5);

/// One chart's discovery: sources open, protocol created, not yet running.
pub(crate) struct Driver<M: Message> {
    chart: Chart<M>,
    protocol: Protocol,
    lan: Option<Lan>,
    /// News of interface changes (`None`: look every [`RESCAN_EVERY`]).
    changes: Option<Changes>,
    /// When to look at the interfaces again.
    rescan_at: Option<Instant>,
    seeds: Seeds,
    hearing: Hearing,
    external: External,
    /// This instance's record for external sources (`None` when listening
    /// only).
    record: Option<Record>,
    watches: Watches,
    io: IoStats,
    sources: SourceStats,
    said_goodbye: bool,
    // Last, so it ends the run after everything else has been dropped.
    _run: RunGuard<M>,
}

impl<M: Message> Driver<M> {
    /// Opens the sources and creates the protocol. Fails only on what a
    /// retry would not fix (the port is taken, sockets cannot be created,
    /// discovery already runs); a group that cannot be joined yet is
    /// retried in the loop and reported in the chart's status.
    pub(crate) fn open(chart: Chart<M>, mode: Mode) -> Result<Self, DiscoveryError> {
        let run = chart.begin_run().ok_or(DiscoveryError::AlreadyRunning)?;
        let settings = &chart.shared.settings;
        let now = Instant::now();
        // Subscribed before the first scan, so no change falls in between.
        let changes = if settings.lan {
            Changes::open()
                .inspect_err(|error| {
                    tracing::debug!(%error, "no interface change notifications; re-scanning every {RESCAN_EVERY:?}");
                })
                .ok()
        } else {
            None
        };
        let lan = settings.lan.then(|| Lan::open(settings, now)).transpose()?;
        let reply_port = lan.as_ref().map_or(0, Lan::reply_port);
        let process = host::this_process();
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(DiscoveryError::Random)?;
        let payload = chart.our_payload();
        let config = Config {
            id: settings.id,
            incarnation: settings.incarnation,
            namespace: settings.namespace.clone(),
            payload: payload.clone(),
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
        let protocol = Protocol::new(config, now.into_std()).map_err(DiscoveryError::Config)?;
        let record = (mode == Mode::Announce).then(|| Record {
            id: settings.id,
            incarnation: settings.incarnation,
            addrs: advertised(settings, lan.as_ref()),
            payload,
            process,
            leaving: false,
        });
        let external = External::start(settings, record.clone());
        let seeds = if settings.lan {
            Seeds::start(&settings.net.seeds, settings.port)
        } else {
            Seeds::start(&[], settings.port)
        };
        let mut protocol = protocol;
        protocol.set_seeds(now.into_std(), seeds.initial());
        let hearing = Hearing::new(now, settings.schedule.ttl, !settings.net.seeds.is_empty());
        let rescan_at = (lan.is_some() && changes.is_none()).then(|| now + RESCAN_EVERY);
        tracing::debug!(
            id = settings.id,
            reply_port,
            ?mode,
            lan = lan.is_some(),
            external = external.any(),
            "discovery starting"
        );
        let driver = Driver {
            protocol,
            lan,
            changes,
            rescan_at,
            seeds,
            hearing,
            external,
            record,
            watches: Watches::new(process),
            io: IoStats::default(),
            sources: SourceStats::default(),
            said_goodbye: false,
            chart,
            _run: run,
        };
        driver.sync_lan_status();
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
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut failures = 0u32;
        // One timer for the whole run, moved only when the deadline moves.
        let timer = sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        loop {
            let deadline = self.drain().await;
            self.publish();
            let deadline = [
                deadline,
                self.lan.as_ref().and_then(Lan::retry_at),
                self.rescan_at,
                self.hearing.check_at(),
            ]
            .into_iter()
            .flatten()
            .min();
            if deadline != armed {
                if let Some(deadline) = deadline {
                    timer.as_mut().reset(deadline);
                }
                armed = deadline;
            }
            tokio::select! {
                (id, incarnation) = self.watches.exited() => {
                    // A peer that said goodbye and then exited may have its
                    // goodbye waiting on our sockets while `select!` picked
                    // this branch first: handle what is queued, so it leaves
                    // as `Goodbye`, which is what happened.
                    self.drain_sockets(&mut buf);
                    tracing::debug!(id, "same-host peer process exited");
                    self.protocol.handle_process_exit(id, incarnation);
                }
                r = recv(self.lan.as_ref(), &mut buf) => match r {
                    Ok(arrival) => {
                        failures = 0;
                        self.arrived(arrival, &buf);
                    }
                    Err(error) => {
                        self.io.receive_failures += 1;
                        failures = failures.saturating_add(1);
                        let pause = Duration::from_millis(10 << failures.min(7));
                        tracing::warn!(%error, ?pause, "receiving a datagram failed; retrying");
                        sleep(pause).await;
                    }
                },
                () = changed(self.changes.as_mut()) => {
                    // A burst of messages comes with one change: look once
                    // it has settled.
                    self.rescan_at.get_or_insert(Instant::now() + SETTLE);
                }
                seeds = self.seeds.changed() => {
                    tracing::debug!(?seeds, "seed addresses");
                    self.protocol.set_seeds(Instant::now().into_std(), seeds);
                }
                event = self.external.next() => self.source_event(event),
                () = self.chart.shared.wake.notified() => {
                    if self.handle_requests() {
                        self.drain().await;
                        self.external.shutdown().await;
                        self.said_goodbye = true;
                        self.publish();
                        tracing::debug!("discovery shut down");
                        return Ok(());
                    }
                }
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    // Read what is already queued before acting on the
                    // timer: after a stall (SIGSTOP, a paused VM, a starved
                    // CPU) the timer and the peers' packets are both due,
                    // and the packets are the evidence that peers are alive.
                    self.drain_sockets(&mut buf);
                    let now = Instant::now();
                    self.network_timers(now);
                    self.protocol.handle_timeout(now.into_std());
                    // Give back memory a flood or a mass departure left.
                    self.protocol.shrink();
                }
            }
        }
    }

    /// One datagram from the LAN: to the protocol, with the interface it
    /// came in on.
    fn arrived(&mut self, arrival: Arrival, buf: &[u8]) {
        let now = Instant::now();
        self.io.datagrams_received += 1;
        let mut from = arrival.from;
        if from.ip().is_unspecified() {
            // The sender's kernel had no address for the interface it sent
            // from. That happens on loopback (multicast over a
            // loopback-only route), so there it is this host; anywhere
            // else it cannot be answered.
            if !arrival.loopback {
                tracing::debug!(%from, "datagram from an unspecified address dropped");
                return;
            }
            from.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        if let Some(lan) = &mut self.lan
            && arrival.role == Role::Group
            && !lan.is_ours(from.ip())
        {
            lan.heard_multicast(now);
        }
        if self.hearing.heard(now) {
            self.chart
                .update_status(|s| s.problems.retain(|p| !matches!(p, Problem::Deaf { .. })));
        }
        let via = (arrival.interface != 0).then_some(arrival.interface);
        let datagram = &buf[..arrival.len.min(buf.len())];
        if let Err(rejected) =
            self.protocol
                .handle_datagram_via(now.into_std(), from, via, datagram)
        {
            tracing::debug!(%from, %rejected, "datagram dropped");
        }
    }

    /// The LAN's own timers: join retries, re-scans of the interfaces, and
    /// the check for deafness.
    fn network_timers(&mut self, now: Instant) {
        let Some(lan) = &mut self.lan else { return };
        if lan.retry_at().is_some_and(|at| now >= at) {
            let failures = lan.join_failures();
            if lan.retry_joins(now) {
                tracing::info!("joined the multicast group; discovery is listening");
                // The eager announcements went nowhere: start over.
                self.protocol.handle_network_change(now.into_std());
            }
            self.io.join_failures += lan.join_failures() - failures;
            self.sync_lan_status();
        }
        if self.rescan_at.is_some_and(|at| now >= at) {
            self.rescan(now);
        }
        if self.hearing.check_at().is_some_and(|at| now >= at) {
            let silent_for = self.hearing.deaf(now);
            let problem = Problem::Deaf { silent_for };
            tracing::warn!("{problem}");
            self.chart.update_status(|s| {
                s.problems.retain(|p| !matches!(p, Problem::Deaf { .. }));
                s.problems.push(problem);
            });
        }
    }

    /// Looks at the interfaces again and follows what changed: sockets on
    /// new interfaces (and the eager phase over again, so peers there are
    /// learned in one round trip), peers heard on vanished ones probed.
    fn rescan(&mut self, now: Instant) {
        self.rescan_at = self.changes.is_none().then(|| now + RESCAN_EVERY);
        let Some(lan) = &mut self.lan else { return };
        let settings = &self.chart.shared.settings;
        let failures = lan.join_failures();
        let (gone, new) = lan.rescan(settings, now);
        self.io.join_failures += lan.join_failures() - failures;
        if gone.is_empty() && !new {
            return;
        }
        self.io.interface_changes += 1;
        for index in gone {
            self.protocol.handle_interface_gone(now.into_std(), index);
        }
        if new {
            self.protocol.handle_network_change(now.into_std());
        }
        // Counters first: whoever sees the new status sees them too.
        self.publish();
        self.sync_lan_status();
    }

    /// Copies what the LAN knows of its own health into the chart's status.
    fn sync_lan_status(&self) {
        let Some(lan) = &self.lan else { return };
        let joined = lan.joined();
        let problems = lan.problems().to_vec();
        self.chart.update_status(|s| {
            s.joined = joined;
            s.problems.retain(|p| {
                !matches!(
                    p,
                    Problem::NotJoined { .. }
                        | Problem::NoInterface
                        | Problem::GroupRouteCaptured { .. }
                )
            });
            s.problems.extend(problems);
        });
    }

    /// Polls the protocol until it names its next timeout: sends every
    /// transmit and applies every change on the way.
    async fn drain(&mut self) -> Option<Instant> {
        loop {
            match self.protocol.poll_output() {
                Output::Transmit(t) => self.send(t.destination, &t.contents).await,
                Output::Change(change) => {
                    if let Change::Left {
                        reason: LeftReason::Expired,
                        ..
                    } = change
                    {
                        self.hearing.expired(Instant::now());
                    }
                    self.watches.follow(&change);
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
            if let Some(record) = &mut self.record {
                record.payload.clone_from(&payload);
                self.external.publish(Some(record.clone()));
            }
            self.protocol.set_payload(now, payload);
        }
        if let Some(keys) = requests.keys {
            self.protocol.set_keys(keys);
        }
        if requests.details {
            let ours = self.watches.ours();
            self.chart.publish_details(Some(crate::chart::snapshot(
                &self.protocol,
                now,
                ours.as_ref(),
            )));
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
            etcd: self.sources,
        });
    }

    fn source_event(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Put(_) => self.sources.puts += 1,
            SourceEvent::Delete { .. } => self.sources.deletes += 1,
            SourceEvent::Garbage => self.sources.garbage += 1,
            SourceEvent::Stale(stale) => {
                if stale {
                    self.sources.stale_spells += 1;
                    tracing::warn!(
                        "etcd cannot be reached (or has no quorum); keeping the last known entries and retrying"
                    );
                } else {
                    tracing::info!("etcd reached again; entries are current");
                }
                self.chart.update_status(|s| {
                    s.problems
                        .retain(|p| !matches!(p, Problem::SourceStale { .. }));
                    if stale {
                        s.problems.push(Problem::SourceStale {
                            source: crate::Source::Etcd,
                        });
                    }
                });
            }
        }
        self.protocol
            .handle_source(Instant::now().into_std(), event);
    }

    /// Handles the datagrams already queued on the sockets, without
    /// waiting; at most a bounded number, so a flood cannot hold the loop.
    fn drain_sockets(&mut self, buf: &mut [u8]) {
        for _ in 0..256 {
            let Some(arrival) = self.lan.as_ref().and_then(|lan| lan.try_recv(buf)) else {
                break;
            };
            self.arrived(arrival, buf);
        }
    }

    async fn send(&mut self, destination: Destination, contents: &[u8]) {
        let Some(lan) = &self.lan else {
            return; // an etcd-only chart: nothing goes on the LAN
        };
        for result in lan.send(destination, contents, Instant::now()).await {
            match result {
                Ok(_) => {
                    self.io.datagrams_sent += 1;
                    self.io.bytes_sent += contents.len() as u64;
                }
                Err(error) => {
                    self.io.send_failures += 1;
                    // Logged at failures 1, 2, 4, 8, ...
                    if self.io.send_failures.is_power_of_two() {
                        tracing::warn!(%error, failures = self.io.send_failures, ?destination, "sending a datagram failed");
                    }
                    if destination == Destination::Group {
                        let error = error.to_string();
                        self.chart.update_status(|s| {
                            s.problems
                                .retain(|p| !matches!(p, Problem::SendFailing { .. }));
                            s.problems.push(Problem::SendFailing { error });
                        });
                    }
                    continue;
                }
            }
            if destination == Destination::Group {
                self.chart.update_status(|s| {
                    s.problems
                        .retain(|p| !matches!(p, Problem::SendFailing { .. }));
                });
            }
        }
    }
}

/// The next datagram on the LAN sockets; never returns without a LAN.
async fn recv(lan: Option<&Lan>, buf: &mut [u8]) -> std::io::Result<Arrival> {
    match lan {
        Some(lan) => std::future::poll_fn(|cx| lan.poll_recv(cx, buf)).await,
        None => std::future::pending().await,
    }
}

/// The next news of an interface change; never returns without a
/// subscription.
async fn changed(changes: Option<&mut Changes>) {
    match changes {
        Some(changes) => changes.next().await,
        None => std::future::pending().await,
    }
}

/// The addresses this instance publishes to external sources: what the
/// application chose, else the LAN's, else the address that reaches the
/// first etcd endpoint, else loopback.
fn advertised(settings: &crate::chart::Settings, lan: Option<&Lan>) -> Vec<IpAddr> {
    if !settings.advertise.is_empty() {
        return settings.advertise.clone();
    }
    let mut addrs = lan.map(Lan::addresses).unwrap_or_default();
    #[cfg(feature = "etcd")]
    if addrs.is_empty()
        && let Some(endpoint) = settings.etcd.as_ref().and_then(|e| e.endpoints().first())
        && let Some(host) = endpoint
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .parse::<std::net::SocketAddr>()
            .ok()
        && let Some(ip) = super::lan::source_toward(host)
    {
        addrs.push(ip);
    }
    if addrs.is_empty() {
        addrs.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    addrs
}

/// The wall clock in milliseconds since the Unix epoch (0 before it).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl<M: Message> Drop for Driver<M> {
    /// Dropping the driver (its task aborted, its future dropped, the
    /// runtime shutting down) is a graceful exit too: say goodbye, without
    /// waiting (a destructor cannot await, and a full send buffer should
    /// not delay the drop). External sources leave on their own when their
    /// handle drops.
    fn drop(&mut self) {
        if self.said_goodbye {
            return;
        }
        if let (Some(lan), Some(bye)) = (
            &self.lan,
            self.protocol.goodbye_datagram(Instant::now().into_std()),
        ) {
            lan.goodbye_now(&bye, self.protocol.seeds());
        }
    }
}
