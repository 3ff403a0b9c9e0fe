//! The LAN path: one *link* per selected interface and family, each with
//! its unicast, group and broadcast sockets; the reply port they share;
//! following interfaces as they come and go; sending and receiving.
//!
//! **Owns:** every socket of the LAN path and the decisions about them:
//! which links exist ([`select`]: all usable interfaces by default, per
//! family), the one reply port every unicast socket binds, which socket a
//! datagram leaves by, when to add subnet broadcast, and whether the route
//! to the group is captured by a tunnel. **Must not touch:** the protocol or
//! the chart; the driver hands datagrams in and out and reports the
//! [`Problem`]s this module finds.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::time::Instant;

mod link;
mod select;

pub(crate) use link::Role;
use link::{Groups, Link};
pub(crate) use select::source_toward;
use select::{Choice, Family, captured_route, selected};

use super::socket::{self, Multicast};
use crate::chart::Settings;
use crate::error::DiscoveryError;
use crate::protocol::Destination;
use crate::status::Problem;

/// After a start or a network change, group announcements also go by subnet
/// broadcast for this long (the eager phase), whatever else is heard.
const BROADCAST_EAGER: Duration = Duration::from_secs(5);

/// Where a datagram came in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    pub(crate) len: usize,
    pub(crate) from: SocketAddr,
    /// The interface index (0: the kernel's choice).
    pub(crate) interface: u32,
    /// Whether it came in on the loopback interface.
    pub(crate) loopback: bool,
    pub(crate) role: Role,
}

/// The sockets of the LAN path.
pub(crate) struct Lan {
    groups: Groups,
    reply_port: u16,
    multicast: Multicast,
    links: Vec<Link>,
    /// Where the next receive starts, so no socket starves the others.
    rotor: AtomicUsize,
    broadcast_until: Instant,
    last_multicast: Option<Instant>,
    quiet_after: Duration,
    problems: Vec<Problem>,
    /// Failed attempts to join, over the whole run.
    join_failures: u64,
}

impl Lan {
    /// Opens the links of the interfaces the settings select, and claims
    /// the reply port. Fails only on what a retry would not fix (the
    /// discovery port held without `SO_REUSEPORT`, an explicit reply port
    /// taken); a group that cannot be joined yet is retried and reported in
    /// [`Lan::problems`].
    pub(crate) fn open(settings: &Settings, now: Instant) -> Result<Lan, DiscoveryError> {
        let mut lan = Lan {
            groups: Groups {
                v4: settings.group,
                v6: settings.net.group_v6,
                port: settings.port,
            },
            reply_port: 0,
            multicast: Multicast {
                local: settings.local_discovery,
                ttl: settings.multicast_ttl,
            },
            links: Vec::new(),
            rotor: AtomicUsize::new(0),
            broadcast_until: now + BROADCAST_EAGER,
            last_multicast: None,
            quiet_after: settings.schedule.ttl,
            problems: Vec::new(),
            join_failures: 0,
        };
        let chosen = selected(settings);
        let (port, sockets) = lan.claim_reply_port(&chosen, settings.net.reply_port)?;
        lan.reply_port = port;
        for (choice, unicast) in chosen.into_iter().zip(sockets) {
            let Some(unicast) = unicast else { continue };
            lan.add_link(choice, unicast, now).map_err(|source| {
                if source.kind() == io::ErrorKind::AddrInUse {
                    DiscoveryError::PortInUse {
                        port: settings.port,
                        source,
                    }
                } else {
                    DiscoveryError::Socket {
                        what: "discovery (group)",
                        source,
                    }
                }
            })?;
        }
        lan.check();
        Ok(lan)
    }

    /// The port of every unicast socket: the reply port packets carry.
    pub(crate) fn reply_port(&self) -> u16 {
        self.reply_port
    }

    /// What stands in the way on the LAN, if anything.
    pub(crate) fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Failed attempts to join a group so far.
    pub(crate) fn join_failures(&self) -> u64 {
        self.join_failures
    }

    /// Whether a group is joined on at least one link.
    pub(crate) fn joined(&self) -> bool {
        self.links.iter().any(|l| l.joined)
    }

    /// Whether `ip` is one of this instance's own addresses (its echo).
    pub(crate) fn is_ours(&self, ip: IpAddr) -> bool {
        self.links.iter().any(|l| l.choice.addr == ip)
    }

    /// The addresses others reach this instance at on the LAN (IPv4 and
    /// global IPv6 ones; link-local ones mean nothing off the link).
    pub(crate) fn addresses(&self) -> Vec<IpAddr> {
        let mut addrs: Vec<IpAddr> = self
            .links
            .iter()
            .filter(|l| l.family() == Family::V4 && !l.choice.addr.is_unspecified())
            .map(|l| l.choice.addr)
            .collect();
        addrs.dedup();
        if addrs.is_empty() {
            addrs.extend(source_toward(SocketAddr::from((
                self.groups.v4,
                self.groups.port,
            ))));
        }
        addrs
    }

    /// Chooses the reply port and opens every unicast socket with it: the
    /// one asked for, else the discovery port if no other instance on this
    /// host holds it on these interfaces, else an ephemeral port free on all
    /// of them. Every unicast socket uses it, so one number in a packet
    /// names them all; with the discovery port, one firewall rule (that
    /// port) admits everything cohort receives. An address that vanished
    /// since the scan gets no socket (`None`); the next scan sorts it out.
    fn claim_reply_port(
        &self,
        chosen: &[Choice],
        asked: Option<u16>,
    ) -> Result<(u16, Vec<Option<UdpSocket>>), DiscoveryError> {
        let try_port = |port: u16| -> io::Result<(u16, Vec<Option<UdpSocket>>)> {
            let mut port = port;
            let mut all = Vec::new();
            for choice in chosen {
                match socket::unicast(choice.bind_addr(port), choice.index(), self.multicast) {
                    Ok(s) => {
                        if port == 0 {
                            port = s.local_addr()?.port();
                        }
                        all.push(Some(s));
                    }
                    Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {
                        tracing::debug!(addr = %choice.addr, "address gone before its socket could bind; skipped");
                        all.push(None);
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok((port, all))
        };
        if let Some(port) = asked {
            return try_port(port)
                .map_err(|source| DiscoveryError::ReplyPortInUse { port, source });
        }
        // A unicast socket bound to the wildcard address would collide with
        // the group sockets on the discovery port: the kernel's choice of
        // interface (no scan on this system) always takes another port.
        let wildcard = chosen.iter().any(|c| c.info.is_none());
        if !wildcard && let Ok(claimed) = try_port(self.groups.port) {
            return Ok(claimed);
        }
        let mut last = None;
        for _ in 0..16 {
            match try_port(0) {
                Ok(claimed) => return Ok(claimed),
                Err(e) => last = Some(e),
            }
        }
        Err(DiscoveryError::Socket {
            what: "unicast (no port free on every interface)",
            source: last.unwrap_or_else(|| io::Error::other("no interface")),
        })
    }

    /// Opens a link around its unicast socket and joins its group.
    fn add_link(&mut self, choice: Choice, unicast: UdpSocket, now: Instant) -> io::Result<()> {
        let mut link = Link::open(choice, unicast, self.groups)?;
        if link.family() == Family::V4 {
            self.join(&mut link, now);
        }
        self.links.push(link);
        Ok(())
    }

    /// Joins the IPv4 group on a link; a failure is counted, reported and
    /// retried.
    fn join(&mut self, link: &mut Link, now: Instant) -> bool {
        match link.join(self.groups.v4, now) {
            None => true,
            Some(problem) => {
                self.join_failures += 1;
                if let Problem::NotJoined { attempts, .. } = &problem
                    && attempts.is_power_of_two()
                {
                    // Logged at attempts 1, 2, 4, 8, ...: visible, never a flood.
                    tracing::warn!("{problem}");
                }
                self.problems
                    .retain(|p| !matches!(p, Problem::NotJoined { .. }));
                self.problems.push(problem);
                false
            }
        }
    }

    /// When the next join retry is due, if one is.
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        self.links.iter().filter_map(Link::retry_at).min()
    }

    /// Retries the joins that are due. Returns whether a link joined (the
    /// eager phase should start over: its announcements went nowhere).
    pub(crate) fn retry_joins(&mut self, now: Instant) -> bool {
        let mut links = std::mem::take(&mut self.links);
        let mut joined = false;
        for link in &mut links {
            if link.retry_at().is_some_and(|at| now >= at) {
                joined |= self.join(link, now);
            }
        }
        self.links = links;
        self.check();
        joined
    }

    /// The interfaces changed: opens links for new interfaces and
    /// addresses, closes those of vanished ones. Returns the interfaces
    /// that have no link any more, and whether a link was added.
    pub(crate) fn rescan(&mut self, settings: &Settings, now: Instant) -> (Vec<u32>, bool) {
        let chosen = selected(settings);
        let before: Vec<u32> = self.links.iter().map(Link::index).collect();
        self.links.retain(|link| {
            let keep = chosen.iter().any(|c| c.key() == link.choice.key());
            if !keep {
                tracing::info!(interface = link.name(), addr = %link.choice.addr, "interface or address gone; closing its sockets");
            }
            keep
        });
        let mut new = false;
        for choice in chosen {
            if self.links.iter().any(|l| l.choice.key() == choice.key()) {
                continue;
            }
            let name = choice
                .info
                .as_ref()
                .map_or_else(String::new, |i| i.name.clone());
            let unicast = match socket::unicast(
                choice.bind_addr(self.reply_port),
                choice.index(),
                self.multicast,
            ) {
                Ok(s) => s,
                Err(error) => {
                    tracing::warn!(interface = %name, addr = %choice.addr, %error, "could not open a socket on a new interface; retrying at the next change");
                    continue;
                }
            };
            tracing::info!(interface = %name, addr = %choice.addr, "interface usable; joining");
            match self.add_link(choice, unicast, now) {
                Ok(()) => new = true,
                Err(error) => {
                    tracing::warn!(interface = %name, %error, "could not use a new interface")
                }
            }
        }
        if new {
            self.broadcast_until = now + BROADCAST_EAGER;
        }
        let mut gone: Vec<u32> = before
            .into_iter()
            .filter(|i| !self.links.iter().any(|l| l.index() == *i))
            .collect();
        gone.sort_unstable();
        gone.dedup();
        self.check();
        (gone, new)
    }

    /// Brings the problems up to date: joins, interfaces, the group route.
    fn check(&mut self) {
        if !self.links.iter().any(|l| l.retry_at().is_some()) {
            self.problems
                .retain(|p| !matches!(p, Problem::NotJoined { .. }));
        }
        self.problems
            .retain(|p| !matches!(p, Problem::NoInterface | Problem::GroupRouteCaptured { .. }));
        if self.links.is_empty() {
            self.problems.push(Problem::NoInterface);
            return;
        }
        // A full-tunnel VPN swallows multicast sent without an interface.
        // cohort sends and joins on each interface, so it keeps working;
        // the warning says why other programs (and older peers) may not.
        let ours: Vec<u32> = self
            .links
            .iter()
            .map(Link::index)
            .filter(|&i| i != 0)
            .collect();
        if let Some(interface) =
            captured_route(SocketAddr::from((self.groups.v4, self.groups.port)), &ours)
        {
            let problem = Problem::GroupRouteCaptured { interface };
            tracing::warn!("{problem}");
            self.problems.push(problem);
        }
    }

    /// Polls every socket for a datagram, starting after the last one read.
    pub(crate) fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<Arrival>> {
        let n: usize = self.links.iter().map(|l| l.sockets().count()).sum();
        if n == 0 {
            return Poll::Pending;
        }
        let start = self.rotor.load(Ordering::Relaxed) % n;
        let all = || {
            self.links
                .iter()
                .flat_map(|l| l.sockets().map(move |(s, role)| (l, s, role)))
        };
        for (k, (link, socket, role)) in all().skip(start).chain(all().take(start)).enumerate() {
            let mut read = ReadBuf::new(buf);
            if let Poll::Ready(result) = socket.poll_recv_from(cx, &mut read) {
                self.rotor.store(start + k + 1, Ordering::Relaxed);
                return Poll::Ready(result.map(|from| Arrival {
                    len: read.filled().len(),
                    from,
                    interface: link.index(),
                    loopback: link.loopback(),
                    role,
                }));
            }
        }
        Poll::Pending
    }

    /// A datagram already queued on any socket, without waiting.
    pub(crate) fn try_recv(&self, buf: &mut [u8]) -> Option<Arrival> {
        for link in &self.links {
            for (socket, role) in link.sockets() {
                if let Ok((len, from)) = socket.try_recv_from(buf) {
                    return Some(Arrival {
                        len,
                        from,
                        interface: link.index(),
                        loopback: link.loopback(),
                        role,
                    });
                }
            }
        }
        None
    }

    /// Notes a multicast datagram from another host: multicast works here,
    /// so broadcast can rest.
    pub(crate) fn heard_multicast(&mut self, now: Instant) {
        self.last_multicast = Some(now);
    }

    /// Whether announcements also go by subnet broadcast now: during the
    /// eager phase, and while no other host has been heard by multicast for
    /// a TTL.
    fn broadcast_now(&self, now: Instant) -> bool {
        now < self.broadcast_until
            || self
                .last_multicast
                .is_none_or(|at| now.saturating_duration_since(at) > self.quiet_after)
    }

    /// Sends a datagram. To the group: on every link, by multicast (IPv4 and
    /// IPv6), and by subnet broadcast when [`Lan::broadcast_now`]. To a
    /// peer: by the link that reaches it. One result per datagram handed to
    /// the kernel.
    pub(crate) async fn send(
        &self,
        destination: Destination,
        contents: &[u8],
        now: Instant,
    ) -> Vec<io::Result<usize>> {
        let mut results = Vec::new();
        match destination {
            Destination::Group => {
                let broadcast = self.broadcast_now(now);
                for link in &self.links {
                    results.push(
                        link.unicast
                            .send_to(contents, link.group_addr(self.groups))
                            .await,
                    );
                    if broadcast && let Some(b) = link.broadcast_addr() {
                        results.push(link.unicast.send_to(contents, (b, self.groups.port)).await);
                    }
                }
            }
            Destination::Unicast(to) => match self.route(to) {
                Some(link) => results.push(link.unicast.send_to(contents, to).await),
                None => results.push(Err(io::Error::new(
                    io::ErrorKind::NetworkUnreachable,
                    "no interface of this address family",
                ))),
            },
        }
        results
    }

    /// The link to reach `to` by: for a link-local IPv6 address, the link
    /// of its scope; else the link on its subnet; else the one whose address
    /// the routing table picks; else the first of its family.
    fn route(&self, to: SocketAddr) -> Option<&Link> {
        let family = if to.is_ipv6() { Family::V6 } else { Family::V4 };
        let of_family = || self.links.iter().filter(move |l| l.family() == family);
        if let SocketAddr::V6(a) = to
            && a.scope_id() != 0
        {
            return of_family().find(|l| l.index() == a.scope_id());
        }
        if let Some(link) = of_family().find(|l| l.reaches(to.ip())) {
            return Some(link);
        }
        if let Some(source) = source_toward(to)
            && let Some(link) = of_family().find(|l| l.choice.addr == source)
        {
            return Some(link);
        }
        of_family().next()
    }

    /// Sends `bye` to the group and the seeds at once, without waiting
    /// (from a destructor).
    pub(crate) fn goodbye_now(&self, bye: &[u8], seeds: &[SocketAddr]) {
        for link in &self.links {
            let _ = link.unicast.try_send_to(bye, link.group_addr(self.groups));
        }
        for &seed in seeds {
            if let Some(link) = self.route(seed) {
                let _ = link.unicast.try_send_to(bye, seed);
            }
        }
    }
}
