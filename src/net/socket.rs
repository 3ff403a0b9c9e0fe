//! Opening and configuring sockets.
//!
//! **Owns:** every `socket2` call: creating, binding, joining groups and the
//! multicast options. **Must not touch:** the protocol or the loop; these
//! functions return ready sockets or the operating system's error.
//!
//! Per interface (a *link*), the LAN path has:
//! - a **group socket** per family, bound to the group address and the
//!   discovery port with `SO_REUSEADDR` and `SO_REUSEPORT` (shared by every
//!   instance on the host) and joined on that interface only: IPv4 sockets
//!   switch `IP_MULTICAST_ALL` off, so each hears only the memberships it
//!   made itself, on its interface; IPv6 sockets are bound to the group with
//!   the interface's scope, which ties them to it. So the socket a datagram
//!   arrives on says which interface it came in on;
//! - a **unicast socket** per family, bound to the interface's address and
//!   the reply port *without* `SO_REUSEADDR`, so only one instance per host
//!   can hold a given port there (see `lan::claim_reply_port`); it sends
//!   everything on that interface and receives the answers;
//! - an IPv4 **broadcast socket**, bound to the subnet's broadcast address
//!   and the discovery port (shared), for networks that drop multicast.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use socket2::{Domain, Protocol as IpProto, Socket, Type};
use tokio::net::UdpSocket;

/// Receive buffer asked of the kernel for each socket: room for a burst of
/// answers from hundreds of peers. The kernel caps it at
/// `net.core.rmem_max` (208 KiB by default); answers to a newcomer are paced
/// so that the default suffices.
const RECV_BUFFER: usize = 1 << 20;

fn new_udp(domain: Domain) -> io::Result<Socket> {
    let socket = Socket::new(domain, Type::DGRAM, Some(IpProto::UDP))?;
    socket.set_nonblocking(true)?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    if let Err(error) = socket.set_recv_buffer_size(RECV_BUFFER) {
        tracing::debug!(%error, "could not enlarge the receive buffer");
    }
    Ok(socket)
}

fn shared(socket: &Socket) -> io::Result<()> {
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    Ok(())
}

fn tokio_socket(socket: Socket) -> io::Result<UdpSocket> {
    UdpSocket::from_std(socket.into())
}

/// An IPv4 group socket for one interface (`interface` its address), or for
/// the kernel's choice of interface (`None`). Not yet joined: see
/// [`join_v4`].
pub(crate) fn group_v4(group: Ipv4Addr, port: u16, per_interface: bool) -> io::Result<UdpSocket> {
    let socket = new_udp(Domain::IPV4)?;
    shared(&socket)?;
    if per_interface {
        #[cfg(target_os = "linux")]
        socket.set_multicast_all_v4(false)?;
    }
    // On Linux, binding to the group address means this socket receives only
    // datagrams sent to the group, not unicast to the port or other groups.
    let ip = if cfg!(target_os = "linux") {
        group
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(ip, port)).into())?;
    tokio_socket(socket)
}

/// Joins `group` on the interface with address `interface` (0.0.0.0: the
/// kernel's choice). Joining twice is harmless.
pub(crate) fn join_v4(socket: &UdpSocket, group: Ipv4Addr, interface: Ipv4Addr) -> io::Result<()> {
    match socket.join_multicast_v4(group, interface) {
        // What Linux answers to a second join on the same interface.
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(()),
        other => other,
    }
}

/// An IPv6 group socket for interface `index`, bound to the group with that
/// scope, and joined there.
pub(crate) fn group_v6(group: Ipv6Addr, port: u16, index: u32) -> io::Result<UdpSocket> {
    let socket = new_udp(Domain::IPV6)?;
    shared(&socket)?;
    socket.set_only_v6(true)?;
    #[cfg(target_os = "linux")]
    socket.set_multicast_all_v6(false)?;
    socket.bind(&SocketAddr::V6(SocketAddrV6::new(group, port, 0, index)).into())?;
    let socket = tokio_socket(socket)?;
    join_v6(&socket, group, index)?;
    Ok(socket)
}

/// Joins `group` on interface `index`.
pub(crate) fn join_v6(socket: &UdpSocket, group: Ipv6Addr, index: u32) -> io::Result<()> {
    match socket.join_multicast_v6(&group, index) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(()),
        other => other,
    }
}

/// How a unicast socket sends multicast.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Multicast {
    /// Whether our own multicast is delivered to this host's sockets
    /// (same-host discovery).
    pub(crate) local: bool,
    /// IPv4 TTL / IPv6 hop limit.
    pub(crate) ttl: u32,
}

/// A unicast socket bound to `addr` (an interface's address, or the
/// unspecified address for the kernel's choice), sending multicast out of
/// that interface (`index` for IPv6). Without `SO_REUSEADDR`: a port taken
/// there is `AddrInUse`.
pub(crate) fn unicast(addr: SocketAddr, index: u32, multicast: Multicast) -> io::Result<UdpSocket> {
    let socket = new_udp(Domain::for_address(addr))?;
    match addr.ip() {
        IpAddr::V4(ip) => {
            socket.set_multicast_loop_v4(multicast.local)?;
            socket.set_multicast_ttl_v4(multicast.ttl)?;
            if !ip.is_unspecified() {
                socket.set_multicast_if_v4(&ip)?;
            }
            socket.set_broadcast(true)?;
        }
        IpAddr::V6(_) => {
            socket.set_only_v6(true)?;
            socket.set_multicast_loop_v6(multicast.local)?;
            socket.set_multicast_hops_v6(multicast.ttl)?;
            if index != 0 {
                socket.set_multicast_if_v6(index)?;
            }
        }
    }
    socket.bind(&addr.into())?;
    tokio_socket(socket)
}

/// A socket bound to a subnet's broadcast address and the discovery port,
/// shared by every instance on the host.
pub(crate) fn broadcast_v4(broadcast: Ipv4Addr, port: u16) -> io::Result<UdpSocket> {
    let socket = new_udp(Domain::IPV4)?;
    shared(&socket)?;
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(broadcast, port)).into())?;
    tokio_socket(socket)
}
