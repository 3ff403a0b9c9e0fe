//! One link: the sockets of one interface and family.
//!
//! **Owns:** a link's unicast socket (bound to the interface's address and
//! the reply port), its group socket (joined on that interface only), its
//! IPv4 broadcast socket, and the state of its group join with the retry
//! backoff. **Must not touch:** which links exist (the LAN decides) or the
//! protocol.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::select::{Choice, Family};
use crate::net::socket;
use crate::status::Problem;

/// First and longest wait between attempts to join the group on a link.
const JOIN_RETRY_FIRST: Duration = Duration::from_millis(250);
const JOIN_RETRY_MAX: Duration = Duration::from_secs(10);

/// What a socket of a link is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Receives the group's multicast.
    Group,
    /// Sends everything; receives what is addressed to this instance.
    Unicast,
    /// Receives subnet broadcasts.
    Broadcast,
}

/// The groups and port a link joins.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Groups {
    pub(crate) v4: Ipv4Addr,
    pub(crate) v6: Ipv6Addr,
    pub(crate) port: u16,
}

/// The sockets of one interface and family.
pub(crate) struct Link {
    pub(crate) choice: Choice,
    pub(crate) unicast: UdpSocket,
    group: Option<UdpSocket>,
    broadcast: Option<UdpSocket>,
    /// When to try joining again, and the current backoff.
    join_retry: Option<(Instant, Duration)>,
    join_attempts: u64,
    pub(crate) joined: bool,
}

impl Link {
    /// Opens a link around its unicast socket: the group socket (joined at
    /// once if possible, else retried) and the broadcast socket. A group
    /// socket that cannot even be bound is `Err` (the discovery port is
    /// held without `SO_REUSEPORT`).
    pub(crate) fn open(choice: Choice, unicast: UdpSocket, groups: Groups) -> io::Result<Link> {
        let index = choice.index();
        let per_interface = choice.info.is_some();
        let (group, joined) = match choice.family {
            Family::V4 => (
                Some(socket::group_v4(groups.v4, groups.port, per_interface)?),
                false,
            ),
            Family::V6 => match socket::group_v6(groups.v6, groups.port, index) {
                Ok(s) => (Some(s), true),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(e),
                Err(error) => {
                    tracing::warn!(interface = choice_name(&choice), %error, "could not join the IPv6 group");
                    (None, false)
                }
            },
        };
        let broadcast = choice.broadcast.and_then(|b| {
            socket::broadcast_v4(b, groups.port)
                .inspect_err(|error| {
                    tracing::debug!(interface = choice_name(&choice), %error, "no broadcast socket");
                })
                .ok()
        });
        Ok(Link {
            choice,
            unicast,
            group,
            broadcast,
            join_retry: None,
            join_attempts: 0,
            joined,
        })
    }

    pub(crate) fn index(&self) -> u32 {
        self.choice.index()
    }

    pub(crate) fn family(&self) -> Family {
        self.choice.family
    }

    pub(crate) fn name(&self) -> &str {
        choice_name(&self.choice)
    }

    pub(crate) fn loopback(&self) -> bool {
        self.choice.info.as_ref().is_some_and(|i| i.flags.loopback)
    }

    /// Whether `ip` is on this link's subnets.
    pub(crate) fn reaches(&self, ip: IpAddr) -> bool {
        self.choice
            .info
            .as_ref()
            .is_some_and(|i| i.addrs.iter().any(|a| a.contains(ip)))
    }

    pub(crate) fn broadcast_addr(&self) -> Option<Ipv4Addr> {
        self.broadcast.as_ref().and(self.choice.broadcast)
    }

    /// Its sockets, for receiving.
    pub(crate) fn sockets(&self) -> impl Iterator<Item = (&UdpSocket, Role)> {
        std::iter::once((&self.unicast, Role::Unicast))
            .chain(self.group.as_ref().map(|s| (s, Role::Group)))
            .chain(self.broadcast.as_ref().map(|s| (s, Role::Broadcast)))
    }

    /// The group's address on this link.
    pub(crate) fn group_addr(&self, groups: Groups) -> SocketAddr {
        match self.family() {
            Family::V4 => SocketAddr::from((groups.v4, groups.port)),
            Family::V6 => {
                SocketAddr::V6(SocketAddrV6::new(groups.v6, groups.port, 0, self.index()))
            }
        }
    }

    /// Joins the IPv4 group on this link, or schedules the next attempt.
    /// Returns the problem when it failed.
    pub(crate) fn join(&mut self, group: Ipv4Addr, now: Instant) -> Option<Problem> {
        let socket = self.group.as_ref()?;
        let interface = match self.choice.addr {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(_) => return None,
        };
        match socket::join_v4(socket, group, interface) {
            Ok(()) => {
                self.joined = true;
                self.join_retry = None;
                None
            }
            Err(error) => {
                let backoff = self
                    .join_retry
                    .map_or(JOIN_RETRY_FIRST, |(_, b)| (b * 2).min(JOIN_RETRY_MAX));
                self.join_retry = Some((now + backoff, backoff));
                self.join_attempts += 1;
                Some(Problem::NotJoined {
                    error: format!("{}: {error}", self.name()),
                    attempts: self.join_attempts,
                    retry_in: backoff,
                })
            }
        }
    }

    /// When the next join attempt is due, if one is.
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        self.join_retry.map(|(at, _)| at)
    }
}

fn choice_name(choice: &Choice) -> &str {
    choice
        .info
        .as_ref()
        .map_or("(kernel's choice)", |i| i.name.as_str())
}
