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
//!         a datagram on either LAN socket  -> handle_datagram
//!         an event of an external source   -> handle_source
//!         the timer                        -> join retry / handle_timeout
//!         a request from the chart         -> forget / set_payload / keys / close
//!         a watched process exiting        -> handle_process_exit
//! }
//! ```
//!
//! Draining comes after every input and before any wait, so whatever an
//! input makes the protocol say (a reply, a new payload's announcement, a
//! goodbye) leaves before the task sleeps. Between announcements the task
//! sleeps in the kernel: no polling, no CPU.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::time::{Instant, sleep, sleep_until};

use super::external::External;
use super::lan::{Joined, Lan};
use super::watches::Watches;
use crate::chart::{Chart, Message, RunGuard, payload_decodes};
use crate::error::DiscoveryError;
use crate::host;
use crate::protocol::{ClockAnchor, Config, Destination, Mode, Output, Protocol};
use crate::source::{Record, SourceEvent};
use crate::status::{IoStats, Problem, SourceStats, Stats};
use crate::wire::MAX_DATAGRAM;

/// One chart's discovery: sources open, protocol created, not yet running.
pub(crate) struct Driver<M: Message> {
    chart: Chart<M>,
    protocol: Protocol,
    lan: Option<Lan>,
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
        let lan = settings.lan.then(|| Lan::open(settings)).transpose()?;
        let reply_port = lan.as_ref().map(Lan::reply_port).transpose()?.unwrap_or(0);
        let process = host::this_process();
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(DiscoveryError::Random)?;
        let now = Instant::now();
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
        tracing::debug!(
            id = settings.id,
            reply_port,
            ?mode,
            lan = lan.is_some(),
            external = external.any(),
            "discovery starting"
        );
        let mut driver = Driver {
            protocol,
            lan,
            external,
            record,
            watches: Watches::new(process),
            io: IoStats::default(),
            sources: SourceStats::default(),
            said_goodbye: false,
            chart,
            _run: run,
        };
        driver.try_join(now);
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
            let retry = self.lan.as_ref().and_then(Lan::retry_at);
            let deadline = [deadline, retry].into_iter().flatten().min();
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
                    self.drain_sockets(&mut group_buf, &mut unicast_buf);
                    tracing::debug!(id, "same-host peer process exited");
                    self.protocol.handle_process_exit(id, incarnation);
                }
                r = recv(self.lan.as_ref(), &mut group_buf, &mut unicast_buf) => match r {
                    Ok((len, from, on_group)) => {
                        failures = 0;
                        let buf = if on_group { &group_buf } else { &unicast_buf };
                        deliver(&mut self.protocol, &mut self.io, from, &buf[..len]);
                    }
                    Err(error) => {
                        self.io.receive_failures += 1;
                        failures = failures.saturating_add(1);
                        let pause = Duration::from_millis(10 << failures.min(7));
                        tracing::warn!(%error, ?pause, "receiving a datagram failed; retrying");
                        sleep(pause).await;
                    }
                },
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
                    self.drain_sockets(&mut group_buf, &mut unicast_buf);
                    let now = Instant::now();
                    if self.lan.as_ref().and_then(Lan::retry_at).is_some_and(|at| now >= at) {
                        self.try_join(now);
                    }
                    self.protocol.handle_timeout(now.into_std());
                    // Give back memory a flood or a mass departure left.
                    self.protocol.shrink();
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

    /// Handles the datagrams already queued on both sockets, without
    /// waiting; at most a bounded number, so a flood cannot hold the loop.
    fn drain_sockets(&mut self, group_buf: &mut [u8], unicast_buf: &mut [u8]) {
        let Some(lan) = &self.lan else { return };
        for (on_group, buf) in [(true, &mut *group_buf), (false, &mut *unicast_buf)] {
            // Errors (WouldBlock above all) end the drain; the loop sees the rest.
            for _ in 0..256 {
                let Some((len, from)) = lan.try_recv(on_group, buf) else {
                    break;
                };
                deliver(&mut self.protocol, &mut self.io, from, &buf[..len]);
            }
        }
    }

    /// Joins the group, or schedules the next attempt and says why in the
    /// chart's status.
    fn try_join(&mut self, now: Instant) {
        let Some(lan) = &mut self.lan else { return };
        match lan.try_join(now) {
            Joined::Yes { again } => {
                self.chart.update_status(|s| {
                    s.joined = true;
                    s.problems
                        .retain(|p| !matches!(p, Problem::NotJoined { .. }));
                });
                if again {
                    tracing::info!(group = %lan.group(), "joined the multicast group; discovery is listening");
                    // The eager announcements went nowhere: start over.
                    self.protocol.handle_network_change(now.into_std());
                }
            }
            Joined::No(problem) => {
                self.io.join_failures += 1;
                if let Problem::NotJoined { attempts, .. } = &problem
                    && attempts.is_power_of_two()
                {
                    // Logged at attempts 1, 2, 4, 8, ...: visible, never a flood.
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

    async fn send(&mut self, destination: Destination, contents: &[u8]) {
        let Some(lan) = &self.lan else {
            return; // an etcd-only chart: nothing goes on the LAN
        };
        for result in lan.send(destination, contents).await {
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
async fn recv(
    lan: Option<&Lan>,
    group_buf: &mut [u8],
    unicast_buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, bool)> {
    match lan {
        Some(lan) => lan.recv(group_buf, unicast_buf).await,
        None => std::future::pending().await,
    }
}

/// Hands one datagram to the protocol.
fn deliver(protocol: &mut Protocol, io: &mut IoStats, mut from: SocketAddr, datagram: &[u8]) {
    io.datagrams_received += 1;
    // A source of 0.0.0.0 means the sender's kernel found no address for
    // the outgoing interface (multicast over a loopback-only route does
    // this), so it came from this host: record it as loopback.
    if from.ip().is_unspecified() {
        from.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let now = Instant::now().into_std();
    if let Err(rejected) = protocol.handle_datagram(now, from, datagram) {
        tracing::debug!(%from, %rejected, "datagram dropped");
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
            .parse::<SocketAddr>()
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
            lan.goodbye_now(&bye);
        }
    }
}
