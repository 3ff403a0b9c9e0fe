//! Opening and configuring sockets.
//!
//! **Owns:** every `socket2` call: creating, binding, joining the group and
//! the multicast options. **Must not touch:** the protocol or the loop; these
//! functions return ready sockets or the operating system's error.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol as IpProto, Socket, Type};
use tokio::net::UdpSocket;

use crate::error::DiscoveryError;

/// Receive buffer asked of the kernel for each socket: room for a burst of
/// replies from hundreds of peers answering one newcomer at once.
///
/// The kernel caps it at `net.core.rmem_max`. Where that is the stock 208 KiB
/// (roughly 250 queued datagrams), a newcomer joining more peers than that
/// may lose part of its first burst of replies; it then learns the missing
/// peers from their next announcements.
const RECV_BUFFER: usize = 1 << 20;

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

/// The group socket: bound to the discovery port, shared by every instance
/// on the host (`SO_REUSEPORT`), receive only. Not yet joined to the group;
/// see [`join`].
pub(crate) fn group_socket(group: Ipv4Addr, port: u16) -> Result<UdpSocket, DiscoveryError> {
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
    UdpSocket::from_std(socket.into()).map_err(socket_error(what))
}

/// Joins `group` on every interface in `interfaces` (or on the kernel's
/// choice when it is empty). Joining twice is harmless: the kernel's
/// "already a member" is success.
pub(crate) fn join(socket: &UdpSocket, group: Ipv4Addr, interfaces: &[Ipv4Addr]) -> io::Result<()> {
    let any = [Ipv4Addr::UNSPECIFIED];
    let interfaces = if interfaces.is_empty() {
        &any[..]
    } else {
        interfaces
    };
    for interface in interfaces {
        match socket.join_multicast_v4(group, *interface) {
            Ok(()) => {}
            // What Linux answers to a second join on the same interface.
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The unicast socket: an ephemeral port of our own that sends everything
/// and receives the replies addressed to this instance.
pub(crate) fn unicast_socket(
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
