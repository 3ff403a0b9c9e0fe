//! Sockets and the tokio driver: the only place cohort touches the network.
//!
//! **Owns:** every socket cohort opens, their options ([`socket`]), and the
//! task that moves datagrams between the sockets and the protocol
//! ([`driver`]). **Must not touch:** discovery rules (they live in
//! [`crate::protocol`]) or the chart's map (it changes only through
//! [`Chart::apply`](crate::Chart)).
//!
//! # Links: sockets per interface and family
//!
//! By default every usable interface (up, running, multicast-capable, not
//! loopback) is used, with IPv4 and IPv6; `with_interface`,
//! `without_interface`, `with_interface_filter`, `ipv4_only` and
//! `ipv6_only` narrow it. Per interface and family there is a *link*
//! (`lan::link`) with:
//!
//! - a **unicast socket**, bound to the interface's address (IPv4, or
//!   IPv6 link-local with its scope) and the *reply port*. It sends
//!   everything on that link and receives the replies and probes
//!   addressed to this instance. It has no `SO_REUSEADDR`, so one instance
//!   per host owns a given port there. The reply port is the discovery port
//!   when it is free (the first instance on a host), so one firewall rule
//!   (UDP, the discovery port) admits everything; later instances take an
//!   ephemeral port, or the one `with_reply_port` names;
//! - a **group socket**, bound to the group address and the discovery port
//!   with `SO_REUSEADDR`/`SO_REUSEPORT` (shared by every instance on the
//!   host) and joined on that interface only (`IP_MULTICAST_ALL` off;
//!   IPv6: bound to the group with the link's scope). So the socket a
//!   datagram arrives on names the interface it came in on, and a peer
//!   heard on two networks is one peer with two addresses;
//! - an IPv4 **broadcast socket** (shared), bound to the subnet's broadcast
//!   address: announcements also go by subnet broadcast during the eager
//!   phase and while no other host is heard by multicast, for networks
//!   that drop multicast.
//!
//! Why a socket per instance for replies? With several instances sharing a
//! port through `SO_REUSEPORT`, a *unicast* datagram to it is handed to one
//! of them, chosen by a hash of the source address, and usually not the one
//! it was meant for: instance-chart's bug. Multicast and broadcast reach
//! every socket that listens, so those can be shared.
//!
//! # Interfaces that come and go
//!
//! `interfaces` reads the interfaces from the kernel (netlink on Linux)
//! and subscribes to their changes. On a change the driver waits for the
//! burst to settle, scans again, closes the links of vanished interfaces
//! and addresses (their peers are probed at once), opens links for new
//! ones and starts the eager phase over, so peers there are learned within
//! a round trip. Where no notifications exist, it scans every few seconds.
//!
//! # Set-up errors and everything else
//!
//! [`Driver::open`] fails only on what a retry would not fix: the discovery
//! port is held without `SO_REUSEPORT`, the reply port asked for is taken,
//! sockets cannot be created, or discovery already runs for the chart. A
//! group that cannot be joined is retried with backoff; no usable
//! interface, a group route captured by a tunnel, failing sends and
//! deafness are counted and shown in [`Chart::status`](crate::Chart::status).

mod driver;
mod external;
mod hearing;
pub(crate) mod interfaces;
mod lan;
mod seeds;
mod socket;
mod watches;

pub(crate) use driver::Driver;
