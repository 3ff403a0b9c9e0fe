//! The LAN path: the group socket and the unicast socket, joining the group
//! (and retrying), sending and receiving.
//!
//! **Owns:** the two sockets of the LAN path, the join state and the
//! goodbye a destructor can still send. **Must not touch:** the protocol or
//! the chart; the driver hands datagrams in and out and reports problems.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::socket;
use crate::chart::Settings;
use crate::error::DiscoveryError;
use crate::protocol::Destination;
use crate::status::Problem;

/// First and longest wait between attempts to join the group.
const JOIN_RETRY_FIRST: Duration = Duration::from_millis(250);
const JOIN_RETRY_MAX: Duration = Duration::from_secs(10);

/// What an attempt to join the group came to.
pub(crate) enum Joined {
    /// Joined; `again` when earlier attempts had failed (the eager phase
    /// should start over: its announcements went nowhere).
    Yes { again: bool },
    /// Not joined; retried at [`Lan::retry_at`].
    No(Problem),
}

/// The sockets of the LAN path.
pub(crate) struct Lan {
    group_socket: UdpSocket,
    unicast: UdpSocket,
    group: SocketAddrV4,
    interfaces: Vec<Ipv4Addr>,
    attempts: u64,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Lan {
    /// Opens both sockets. Fails only on what a retry would not fix; the
    /// group is joined by [`Lan::try_join`].
    pub(crate) fn open(settings: &Settings) -> Result<Lan, DiscoveryError> {
        let group_socket = socket::group_socket(settings.group, settings.port)?;
        let unicast = socket::unicast_socket(
            &settings.interfaces,
            settings.local_discovery,
            settings.multicast_ttl,
        )?;
        Ok(Lan {
            group_socket,
            unicast,
            group: SocketAddrV4::new(settings.group, settings.port),
            interfaces: settings.interfaces.clone(),
            attempts: 0,
            retry_at: None,
            backoff: JOIN_RETRY_FIRST,
        })
    }

    /// The port of the unicast socket: the reply port every packet carries.
    pub(crate) fn reply_port(&self) -> Result<u16, DiscoveryError> {
        Ok(self
            .unicast
            .local_addr()
            .map_err(|source| DiscoveryError::Socket {
                what: "unicast (local address)",
                source,
            })?
            .port())
    }

    /// The addresses others reach this instance at on the LAN: the chosen
    /// interfaces, or the address the kernel sends to the group from.
    pub(crate) fn addresses(&self) -> Vec<IpAddr> {
        if !self.interfaces.is_empty() {
            return self.interfaces.iter().map(|&ip| IpAddr::V4(ip)).collect();
        }
        source_toward(SocketAddr::V4(self.group))
            .into_iter()
            .collect()
    }

    pub(crate) fn group(&self) -> SocketAddrV4 {
        self.group
    }

    /// When the next attempt to join the group is due, if one is.
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Joins the group, or schedules the next attempt with backoff.
    pub(crate) fn try_join(&mut self, now: Instant) -> Joined {
        match socket::join(&self.group_socket, *self.group.ip(), &self.interfaces) {
            Ok(()) => {
                let again = self.attempts > 0;
                self.attempts = 0;
                self.retry_at = None;
                self.backoff = JOIN_RETRY_FIRST;
                Joined::Yes { again }
            }
            Err(error) => {
                self.attempts += 1;
                let retry_in = self.backoff;
                self.retry_at = Some(now + retry_in);
                self.backoff = (retry_in * 2).min(JOIN_RETRY_MAX);
                Joined::No(Problem::NotJoined {
                    error: error.to_string(),
                    attempts: self.attempts,
                    retry_in,
                })
            }
        }
    }

    /// The next datagram on either socket: its length, source, and whether
    /// it came to the group socket.
    pub(crate) async fn recv(
        &self,
        group_buf: &mut [u8],
        unicast_buf: &mut [u8],
    ) -> io::Result<(usize, SocketAddr, bool)> {
        tokio::select! {
            r = self.group_socket.recv_from(group_buf) => r.map(|(n, from)| (n, from, true)),
            r = self.unicast.recv_from(unicast_buf) => r.map(|(n, from)| (n, from, false)),
        }
    }

    /// A datagram already queued on one socket, without waiting.
    pub(crate) fn try_recv(&self, on_group: bool, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
        let socket = if on_group {
            &self.group_socket
        } else {
            &self.unicast
        };
        socket.try_recv_from(buf).ok()
    }

    /// Sends to a peer, or to the group on every chosen interface (once
    /// through the kernel's choice when none is chosen). One result per
    /// datagram handed to the kernel.
    pub(crate) async fn send(
        &self,
        destination: Destination,
        contents: &[u8],
    ) -> Vec<io::Result<usize>> {
        match destination {
            Destination::Unicast(to) => vec![self.unicast.send_to(contents, to).await],
            Destination::Group if self.interfaces.len() <= 1 => {
                vec![self.unicast.send_to(contents, self.group).await]
            }
            Destination::Group => {
                let mut results = Vec::with_capacity(self.interfaces.len());
                for interface in &self.interfaces {
                    results.push(
                        match SockRef::from(&self.unicast).set_multicast_if_v4(interface) {
                            Ok(()) => self.unicast.send_to(contents, self.group).await,
                            Err(error) => Err(error),
                        },
                    );
                }
                results
            }
        }
    }

    /// Sends `bye` to the group at once, without waiting (from a
    /// destructor).
    pub(crate) fn goodbye_now(&self, bye: &[u8]) {
        let interfaces: Vec<Option<Ipv4Addr>> = if self.interfaces.len() <= 1 {
            vec![None]
        } else {
            self.interfaces.iter().copied().map(Some).collect()
        };
        for interface in interfaces {
            if let Some(interface) = interface {
                let _ = SockRef::from(&self.unicast).set_multicast_if_v4(&interface);
            }
            if let Err(error) = self.unicast.try_send_to(bye, SocketAddr::V4(self.group)) {
                tracing::debug!(%error, "could not say goodbye");
            }
        }
    }
}

/// The source address the kernel would use toward `to` (a route lookup: a
/// connected UDP socket sends nothing until asked to).
pub(crate) fn source_toward(to: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = match to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = std::net::UdpSocket::bind(any).ok()?;
    probe.connect(to).ok()?;
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}
