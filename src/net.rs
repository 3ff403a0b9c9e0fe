//! Sockets and the tokio driver.
//!
//! **Owns:** every socket cohort opens, their options, and the loop that
//! moves datagrams between the sockets and the [`Protocol`]. **Must not
//! touch:** discovery rules (they live in [`crate::protocol`]) or the chart's
//! map (it changes only through [`Chart::apply`]).
//!
//! # Two sockets per instance
//!
//! - The **group socket** is bound to the discovery port with `SO_REUSEADDR`
//!   and `SO_REUSEPORT`, so any number of instances on one host can share the
//!   port, and joins the multicast group. It only receives: the kernel hands
//!   a copy of every multicast datagram to each socket that joined.
//! - The **unicast socket** is bound to an ephemeral port of its own. It sends
//!   everything (announcements to the group, replies to peers) and receives the
//!   replies addressed to this instance. Its port travels in every packet as
//!   the reply port.
//!
//! Why not reply to the discovery port? With several instances sharing it
//! through `SO_REUSEPORT`, a *unicast* datagram to the shared port is handed
//! to just one of them, chosen by a hash of the source address, and usually
//! not the one it was meant for: instance-chart's bug. A port per instance
//! makes every reply reach its addressee.
//!
//! # The run loop
//!
//! ```text
//! loop {
//!     send every queued transmit          (poll_transmit)
//!     apply every event to the chart      (poll_event)
//!     wait for the first of:
//!         a datagram on either socket  -> handle_datagram
//!         the protocol's timer         -> handle_timeout
//!         a command from the chart     -> forget / set payload / shutdown
//!         a watched process exiting    -> handle_process_exit
//! }
//! ```
//!
//! A peer whose packets carry our boot id and pid namespace runs on this
//! host: the driver watches its process (see `host`) and reports its exit to
//! the protocol the instant it happens.
//!
//! Between announcements the task sleeps in the kernel: no polling loop, no
//! CPU. A receive or send error is logged and survived; repeated receive
//! errors back off so a broken socket cannot spin a core. When the driver is
//! dropped without a shutdown it still says goodbye, with one non-blocking
//! send from its destructor.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::time::Duration;

use socket2::{Domain, Protocol as IpProto, SockRef, Socket, Type};
use tokio::net::UdpSocket;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{Instant, sleep, sleep_until};

use crate::chart::{Chart, Command, Message};
use crate::error::DiscoveryError;
use crate::host::{self, Watch};
use crate::protocol::{self, Config, Destination, Mode, Protocol, Transmit};
use crate::wire::{Id, MAX_DATAGRAM, ProcessTag};

/// Receive buffer asked of the kernel for each socket: room for a burst of
/// replies from hundreds of peers answering one newcomer at once.
///
/// The kernel caps it at `net.core.rmem_max`. Where that is the stock 208 KiB
/// (roughly 250 queued datagrams), a newcomer joining more peers than that
/// may lose part of its first burst of replies; it then learns the missing
/// peers from their next announcements. Raise `rmem_max` for cohorts of
/// many hundreds of instances.
const RECV_BUFFER: usize = 1 << 20;

/// Runs discovery for `chart` until shutdown or an unrecoverable error.
pub(crate) async fn run<M: Message>(chart: Chart<M>, mode: Mode) -> Result<(), DiscoveryError> {
    if chart.shared.running.swap(true, Ordering::AcqRel) {
        return Err(DiscoveryError::AlreadyRunning);
    }
    let _running = RunningGuard(&chart);
    let settings = &chart.shared.settings;
    let group = SocketAddrV4::new(settings.group, settings.port);
    let group_socket = open_group_socket(settings.group, settings.port, &settings.interfaces)?;
    let unicast = open_unicast_socket(
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
    let config = Config {
        id: settings.id,
        incarnation: settings.incarnation,
        namespace: settings.namespace.clone(),
        payload: chart.our_payload(),
        schedule: settings.schedule,
        seed: settings.seed,
        mode,
        reply_port,
        process: crate::host::this_process(),
    };
    tracing::debug!(id = settings.id, %group, reply_port, ?mode, "discovery starting");
    let mut driver = Driver {
        our_process: config.process,
        protocol: Protocol::new(config, Instant::now().into_std()),
        unicast,
        group,
        interfaces: settings.interfaces.clone(),
        said_goodbye: false,
        watches: JoinSet::new(),
        watched: HashMap::new(),
        undecodable: 0,
    };
    driver.run(&chart, &group_socket).await
}

/// Clears the chart's "running" flag however the driver ends.
struct RunningGuard<'a, M>(&'a Chart<M>);

impl<M> Drop for RunningGuard<'_, M> {
    fn drop(&mut self) {
        self.0.shared.running.store(false, Ordering::Release);
    }
}

struct Driver {
    protocol: Protocol,
    unicast: UdpSocket,
    group: SocketAddrV4,
    interfaces: Vec<Ipv4Addr>,
    said_goodbye: bool,
    our_process: Option<ProcessTag>,
    /// One task per watched same-host peer process; each returns the peer
    /// and incarnation it watched. Dropping the set aborts them all.
    watches: JoinSet<(Id, u64, Watch)>,
    watched: HashMap<Id, (u64, AbortHandle)>,
    /// Peer messages the chart could not decode.
    undecodable: u64,
}

impl Driver {
    async fn run<M: Message>(
        &mut self,
        chart: &Chart<M>,
        group_socket: &UdpSocket,
    ) -> Result<(), DiscoveryError> {
        // One byte more than the largest valid datagram, so an oversize one
        // is seen as oversize instead of silently truncated to a valid size.
        let mut group_buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut unicast_buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut failures = 0u32;
        // One timer for the whole run, moved only when the protocol's
        // deadline moves: creating a fresh `sleep` on every turn of the loop
        // would register and cancel a timer per datagram.
        let timer = sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        loop {
            self.flush().await;
            while let Some(event) = self.protocol.poll_event() {
                self.watch_or_unwatch(&event);
                if !chart.apply(event) {
                    self.undecodable += 1;
                    // Logged at 1, 2, 4, 8, ...: a peer that keeps sending
                    // such messages cannot flood the log.
                    if self.undecodable.is_power_of_two() {
                        tracing::warn!(
                            count = self.undecodable,
                            "a peer's message does not decode as this chart's message type; is another application, or another version of this one, using the same namespace?"
                        );
                    }
                }
            }
            for command in chart.take_commands() {
                match command {
                    Command::Forget(id) => {
                        self.protocol.forget(id);
                        self.unwatch(id);
                    }
                    Command::SetPayload(payload) => {
                        self.protocol
                            .set_payload(Instant::now().into_std(), payload);
                    }
                    Command::Shutdown => {
                        self.protocol.close();
                        self.flush().await;
                        self.said_goodbye = true;
                        chart.set_stats(self.stats());
                        tracing::debug!("discovery shut down");
                        return Ok(());
                    }
                }
            }
            chart.set_stats(self.stats());
            let deadline = self.protocol.poll_timeout().map(Instant::from_std);
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
                        if self.watched.get(&id).is_some_and(|(i, _)| *i == incarnation) {
                            self.watched.remove(&id);
                        }
                        if watch == Watch::Exited {
                            // A peer that said goodbye and then exited may
                            // have its goodbye waiting on our sockets while
                            // `select!` happened to pick this branch first:
                            // handle what is queued, so it leaves as
                            // `Goodbye`, which is what happened.
                            self.drain(group_socket, &mut group_buf, &mut unicast_buf);
                            tracing::debug!(id, "same-host peer process exited");
                            self.protocol.handle_process_exit(id, incarnation);
                        }
                    }
                    continue;
                }
                r = group_socket.recv_from(&mut group_buf) => r.map(|(n, from)| (n, from, true)),
                r = self.unicast.recv_from(&mut unicast_buf) => r.map(|(n, from)| (n, from, false)),
                () = chart.shared.wake.notified() => continue,
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    // Read what is already queued before acting on the
                    // timer: after a stall (SIGSTOP, a paused VM, a starved
                    // CPU) the timer and the peers' packets are both due,
                    // and the packets are the evidence that peers are alive.
                    self.drain(group_socket, &mut group_buf, &mut unicast_buf);
                    self.protocol.handle_timeout(Instant::now().into_std());
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
                    failures = failures.saturating_add(1);
                    let pause = Duration::from_millis(10 << failures.min(7));
                    tracing::warn!(%error, ?pause, "receiving a datagram failed; retrying");
                    sleep(pause).await;
                }
            }
        }
    }

    /// The protocol's counters plus the driver's own.
    fn stats(&self) -> protocol::Stats {
        let mut stats = self.protocol.stats();
        stats.dropped_undecodable_payload = self.undecodable;
        stats
    }

    fn handle_datagram(&mut self, mut from: SocketAddr, datagram: &[u8]) {
        // A source of 0.0.0.0 means the sender's kernel found no address for
        // the outgoing interface (multicast over a loopback-only route does
        // this). Routers never forward such datagrams, so it came from this
        // host: record it as loopback, an address peers can connect to.
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
    fn drain(&mut self, group_socket: &UdpSocket, group_buf: &mut [u8], unicast_buf: &mut [u8]) {
        // Errors (WouldBlock above all) end the drain; the loop sees the rest.
        for _ in 0..256 {
            let Ok((len, from)) = group_socket.try_recv_from(group_buf) else {
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

    /// Starts watching a same-host peer's process when it joins or
    /// restarts, and stops when it leaves.
    fn watch_or_unwatch(&mut self, event: &protocol::Event) {
        match *event {
            protocol::Event::Joined {
                id,
                incarnation,
                process: Some(theirs),
                ..
            }
            | protocol::Event::Updated {
                id,
                incarnation,
                process: Some(theirs),
                ..
            } => {
                let Some(ours) = self.our_process else { return };
                if !host::same_pid_space(&ours, &theirs)
                    || self
                        .watched
                        .get(&id)
                        .is_some_and(|(i, _)| *i == incarnation)
                {
                    return;
                }
                self.unwatch(id);
                let abort = self
                    .watches
                    .spawn(async move { (id, incarnation, host::exited(theirs).await) });
                self.watched.insert(id, (incarnation, abort));
            }
            protocol::Event::Left { id, .. } => self.unwatch(id),
            _ => {}
        }
    }

    fn unwatch(&mut self, id: Id) {
        if let Some((_, abort)) = self.watched.remove(&id) {
            abort.abort();
        }
    }

    async fn flush(&mut self) {
        while let Some(Transmit {
            destination,
            contents,
        }) = self.protocol.poll_transmit()
        {
            match destination {
                Destination::Unicast(to) => {
                    if let Err(error) = self.unicast.send_to(&contents, to).await {
                        tracing::warn!(%to, %error, "sending a reply failed");
                    }
                }
                Destination::Group => self.send_to_group(&contents).await,
            }
        }
    }

    /// Sends to the group once per configured interface (or once through
    /// the kernel's choice when none is configured).
    async fn send_to_group(&self, contents: &[u8]) {
        if self.interfaces.len() <= 1 {
            if let Err(error) = self.unicast.send_to(contents, self.group).await {
                tracing::warn!(group = %self.group, %error, "sending to the multicast group failed; does the interface have a multicast route?");
            }
            return;
        }
        for interface in &self.interfaces {
            let result = match SockRef::from(&self.unicast).set_multicast_if_v4(interface) {
                Ok(()) => self.unicast.send_to(contents, self.group).await.map(drop),
                Err(error) => Err(error),
            };
            if let Err(error) = result {
                tracing::warn!(%interface, %error, "sending to the multicast group failed on this interface");
            }
        }
    }
}

impl Drop for Driver {
    /// Dropping `maintain` is a graceful exit too: say goodbye, without
    /// waiting (a destructor cannot await, and a full send buffer should not
    /// delay the drop).
    fn drop(&mut self) {
        if self.said_goodbye {
            return;
        }
        let Some(bye) = self.protocol.goodbye_datagram() else {
            return;
        };
        let interfaces = if self.interfaces.len() <= 1 {
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

fn socket_error(what: &'static str) -> impl FnOnce(io::Error) -> DiscoveryError {
    move |source| DiscoveryError::Socket { what, source }
}

fn new_udp_socket(what: &'static str) -> Result<Socket, DiscoveryError> {
    let socket =
        Socket::new(Domain::IPV4, Type::DGRAM, Some(IpProto::UDP)).map_err(socket_error(what))?;
    socket.set_nonblocking(true).map_err(socket_error(what))?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    if let Err(error) = socket.set_recv_buffer_size(RECV_BUFFER) {
        tracing::debug!(%error, "could not enlarge the receive buffer");
    }
    Ok(socket)
}

fn open_group_socket(
    group: Ipv4Addr,
    port: u16,
    interfaces: &[Ipv4Addr],
) -> Result<UdpSocket, DiscoveryError> {
    let what = "discovery (group)";
    let socket = new_udp_socket(what)?;
    socket.set_reuse_address(true).map_err(socket_error(what))?;
    #[cfg(unix)]
    socket.set_reuse_port(true).map_err(socket_error(what))?;
    // On Linux, binding to the group address means this socket receives only
    // datagrams sent to the group, not unicast to the port or other groups.
    let bind_ip = if cfg!(target_os = "linux") {
        group
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    let bind = SocketAddr::V4(SocketAddrV4::new(bind_ip, port));
    socket.bind(&bind.into()).map_err(|source| {
        if source.kind() == io::ErrorKind::AddrInUse {
            DiscoveryError::PortInUse { port, source }
        } else {
            DiscoveryError::Socket { what, source }
        }
    })?;
    let joins: Vec<Ipv4Addr> = if interfaces.is_empty() {
        vec![Ipv4Addr::UNSPECIFIED]
    } else {
        interfaces.to_vec()
    };
    for interface in joins {
        socket
            .join_multicast_v4(&group, &interface)
            .map_err(|source| DiscoveryError::JoinGroup {
                group,
                interface,
                source,
            })?;
    }
    UdpSocket::from_std(socket.into()).map_err(socket_error(what))
}

fn open_unicast_socket(
    interfaces: &[Ipv4Addr],
    local_discovery: bool,
    ttl: u32,
) -> Result<UdpSocket, DiscoveryError> {
    let what = "unicast";
    let socket = new_udp_socket(what)?;
    // With a single interface, bind to it so replies and announcements carry
    // that address; otherwise let the kernel pick per destination.
    let ip = match interfaces {
        [only] => *only,
        _ => Ipv4Addr::UNSPECIFIED,
    };
    socket
        .bind(&SocketAddr::new(IpAddr::V4(ip), 0).into())
        .map_err(socket_error(what))?;
    socket
        .set_multicast_loop_v4(local_discovery)
        .map_err(socket_error(what))?;
    socket
        .set_multicast_ttl_v4(ttl)
        .map_err(socket_error(what))?;
    if let [only] = interfaces {
        socket
            .set_multicast_if_v4(only)
            .map_err(socket_error(what))?;
    }
    UdpSocket::from_std(socket.into()).map_err(socket_error(what))
}
