//! Interfaces and their changes from Linux's rtnetlink.
//!
//! **Owns:** the netlink sockets (one per dump, one subscribed to changes)
//! and the parsing of `ifinfomsg` / `ifaddrmsg` messages and their
//! attributes, with every length checked against what was received.
//! **Must not touch:** anything else.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;

use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use tokio::io::unix::AsyncFd;

use super::{InterfaceAddr, InterfaceFlags, InterfaceInfo, MAX_ADDRS, MAX_INTERFACES};

const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const IFLA_IFNAME: u16 = 3;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const IFA_FLAGS: u16 = 8;
const IFA_F_OPTIMISTIC: u32 = 0x04;
const IFA_F_DADFAILED: u32 = 0x08;
const IFA_F_TENTATIVE: u32 = 0x40;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const RTMGRP_LINK: u32 = 1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;

fn netlink_socket(groups: u32) -> io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None, // NETLINK_ROUTE
    )?;
    rustix::net::bind(&fd, &SocketAddrNetlink::new(0, groups))?;
    Ok(fd)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The messages in one datagram from netlink: (type, payload).
fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = u32_at(buf, at)? as usize;
        let kind = u16_at(buf, at + 4)?;
        if len < NLMSG_HDR || at + len > buf.len() {
            return None;
        }
        let payload = &buf[at + NLMSG_HDR..at + len];
        at += len.next_multiple_of(4);
        Some((kind, payload))
    })
}

/// The attributes after a fixed header of `skip` bytes: (type, data).
fn attributes(payload: &[u8], skip: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = skip;
    std::iter::from_fn(move || {
        let len = u16_at(payload, at)? as usize;
        let kind = u16_at(payload, at + 2)? & 0x3fff;
        if len < 4 || at + len > payload.len() {
            return None;
        }
        let data = &payload[at + 4..at + len];
        at += len.next_multiple_of(4);
        Some((kind, data))
    })
}

/// Asks for a dump of `kind` and hands every message payload to `each`.
fn dump(kind: u16, mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
    let fd = netlink_socket(0)?;
    // Blocking for the dump: the kernel answers at once.
    rustix::io::ioctl_fionbio(&fd, false)?;
    let mut request = Vec::with_capacity(NLMSG_HDR + 16);
    let len = (NLMSG_HDR + 16) as u32;
    request.extend_from_slice(&len.to_ne_bytes());
    request.extend_from_slice(&kind.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    request.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    request.extend_from_slice(&[0u8; 16]); // ifinfomsg / ifaddrmsg: all families
    rustix::net::send(&fd, &request, SendFlags::empty())?;
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..10_000 {
        let (n, _) = rustix::net::recv(&fd, &mut buf[..], RecvFlags::empty())?;
        for (kind, payload) in messages(&buf[..n]) {
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = u32_at(payload, 0).map_or(0, |e| e as i32);
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                _ => each(kind, payload),
            }
        }
    }
    Err(io::Error::other("netlink dump did not end"))
}

/// Every interface with its flags and addresses.
pub(crate) fn scan() -> io::Result<Vec<InterfaceInfo>> {
    let mut interfaces: Vec<InterfaceInfo> = Vec::new();
    dump(RTM_GETLINK, |kind, payload| {
        if kind != RTM_NEWLINK || interfaces.len() >= MAX_INTERFACES {
            return;
        }
        // struct ifinfomsg: family u8, pad u8, type u16, index i32, flags u32, change u32.
        let (Some(index), Some(flags)) = (u32_at(payload, 4), u32_at(payload, 8)) else {
            return;
        };
        let name = attributes(payload, 16)
            .find(|(kind, _)| *kind == IFLA_IFNAME)
            .map(|(_, data)| {
                let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                String::from_utf8_lossy(&data[..end.min(64)]).into_owned()
            })
            .unwrap_or_default();
        interfaces.push(InterfaceInfo {
            name,
            index,
            flags: InterfaceFlags {
                up: flags & 0x1 != 0,
                broadcast: flags & 0x2 != 0,
                loopback: flags & 0x8 != 0,
                point_to_point: flags & 0x10 != 0,
                running: flags & 0x40 != 0,
                multicast: flags & 0x1000 != 0,
            },
            addrs: Vec::new(),
        });
    })?;
    let mut seen = 0;
    dump(RTM_GETADDR, |kind, payload| {
        if kind != RTM_NEWADDR || seen >= MAX_ADDRS {
            return;
        }
        seen += 1;
        // struct ifaddrmsg: family u8, prefixlen u8, flags u8, scope u8, index u32.
        let (Some(&family), Some(&prefix), Some(index)) =
            (payload.first(), payload.get(1), u32_at(payload, 4))
        else {
            return;
        };
        let ip = |data: &[u8]| -> Option<IpAddr> {
            match family {
                AF_INET => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(data).ok()?))),
                AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(data).ok()?))),
                _ => None,
            }
        };
        let (mut local, mut address, mut broadcast) = (None, None, None);
        let mut flags = payload.get(2).map_or(0, |&f| u32::from(f));
        for (kind, data) in attributes(payload, 8) {
            match kind {
                IFA_FLAGS => flags = u32_at(data, 0).unwrap_or(flags),
                IFA_LOCAL => local = ip(data),
                IFA_ADDRESS => address = ip(data),
                IFA_BROADCAST => {
                    if let Some(IpAddr::V4(b)) = ip(data) {
                        broadcast = Some(b);
                    }
                }
                _ => {}
            }
        }
        // An address still being checked for duplicates (IPv6 DAD) cannot
        // be bound yet, and one that failed the check never can: the
        // kernel announces the change when the check ends.
        if flags & IFA_F_DADFAILED != 0
            || (flags & IFA_F_TENTATIVE != 0 && flags & IFA_F_OPTIMISTIC == 0)
        {
            return;
        }
        // On point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is ours.
        let Some(ip) = local.or(address) else { return };
        if let Some(interface) = interfaces.iter_mut().find(|i| i.index == index) {
            interface.addrs.push(InterfaceAddr {
                ip,
                prefix,
                broadcast,
            });
        }
    })?;
    Ok(interfaces)
}

/// A netlink socket subscribed to link and address changes.
pub(crate) struct Changes {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<u8>,
}

impl Changes {
    pub(crate) fn open() -> io::Result<Changes> {
        let fd = netlink_socket(RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)?;
        // tokio 1.54 deprecated this constructor because a generic `T` may
        // close or swap its fd while registered; its replacement is `unsafe`
        // with that contract. An `OwnedFd` moved into the `AsyncFd` stays
        // open and unchanged until the `AsyncFd` drops it, so the contract
        // holds and the crate stays `forbid(unsafe_code)` (as in `host`).
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd)?;
        Ok(Changes {
            fd,
            buf: vec![0u8; 16 * 1024],
        })
    }

    /// Waits until something changed, then reads everything queued (the
    /// caller scans anew, so what changed does not matter).
    pub(crate) async fn next(&mut self) {
        loop {
            let Ok(mut ready) = self.fd.readable().await else {
                std::future::pending::<()>().await;
                return;
            };
            let mut got = false;
            loop {
                match rustix::net::recv(self.fd.get_ref(), &mut self.buf[..], RecvFlags::empty()) {
                    Ok(_) => got = true,
                    Err(rustix::io::Errno::AGAIN) => {
                        ready.clear_ready();
                        break;
                    }
                    // ENOBUFS: the kernel dropped messages for us: something
                    // changed, certainly.
                    Err(_) => {
                        got = true;
                        ready.clear_ready();
                        break;
                    }
                }
            }
            if got {
                return;
            }
        }
    }
}
