//! Which interfaces and families the LAN path uses.
//!
//! **Owns:** turning the builder's choices and the host's interfaces into
//! [`Choice`]s (one per interface and family, each with the address its
//! unicast socket binds), and the route lookups that say which local
//! address the kernel would use. **Must not touch:** sockets that stay open;
//! [`source_toward`] opens one for a moment and sends nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use crate::builder::Interface;
use crate::chart::Settings;
use crate::net::interfaces::{self, InterfaceInfo};

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

/// One interface and family chosen for the LAN path.
#[derive(Debug, Clone)]
pub(crate) struct Choice {
    /// `None`: no interface scan on this system; the kernel chooses.
    pub(crate) info: Option<InterfaceInfo>,
    pub(crate) family: Family,
    /// The address the unicast socket binds: the interface's IPv4 address,
    /// its IPv6 link-local address, or the unspecified address.
    pub(crate) addr: IpAddr,
    /// The IPv4 subnet broadcast address, where there is one.
    pub(crate) broadcast: Option<Ipv4Addr>,
}

impl Choice {
    pub(crate) fn index(&self) -> u32 {
        self.info.as_ref().map_or(0, |i| i.index)
    }

    /// What identifies the sockets opened for this choice: while it stays
    /// the same, they can stay open.
    pub(crate) fn key(&self) -> (u32, IpAddr, Option<Ipv4Addr>) {
        (self.index(), self.addr, self.broadcast)
    }

    /// The socket address the unicast socket binds.
    pub(crate) fn bind_addr(&self, port: u16) -> SocketAddr {
        match self.addr {
            IpAddr::V6(ip) => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, self.index())),
            IpAddr::V4(ip) => SocketAddr::from((ip, port)),
        }
    }
}

/// The interfaces and families the settings select: those asked for by
/// name, index or address (`with_interface`), else every usable one (up,
/// running, multicast, not loopback, passing `with_interface_filter`), minus
/// those excluded; on a host with no usable interface and same-host
/// discovery on, loopback, so instances on this host still find each other.
/// Per interface: IPv4 on its (first) IPv4 address, IPv6 on its link-local
/// address, as the families allowed; an interface chosen by one of its
/// addresses uses that address, in its family only.
pub(crate) fn selected(settings: &Settings) -> Vec<Choice> {
    choose(settings, interfaces::scan().unwrap_or_default())
}

/// [`selected`], given the interfaces.
fn choose(settings: &Settings, all: Vec<InterfaceInfo>) -> Vec<Choice> {
    let all = match all {
        all if !all.is_empty() => all,
        _ => {
            return if settings.net.ipv4 {
                vec![Choice {
                    info: None,
                    family: Family::V4,
                    addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    broadcast: None,
                }]
            } else {
                Vec::new()
            };
        }
    };
    let select = &settings.net.select;
    let mut chosen: Vec<&InterfaceInfo> = if select.include.is_empty() {
        all.iter()
            .filter(|i| usable(i))
            .filter(|i| select.filter.as_ref().is_none_or(|f| f(i)))
            .collect()
    } else {
        all.iter()
            .filter(|i| i.flags.up && select.include.iter().any(|s| s.matches(i)))
            .collect()
    };
    chosen.retain(|i| !select.exclude.iter().any(|s| s.matches(i)));
    if chosen.is_empty() && select.include.is_empty() && settings.local_discovery {
        chosen = all
            .iter()
            .filter(|i| i.flags.up && i.flags.loopback)
            .collect();
    }
    let mut choices = Vec::new();
    for info in chosen {
        // Chosen by address only: that address, in its family. Chosen by
        // name or index, or by default: both families.
        let by_addr: Vec<IpAddr> = select
            .include
            .iter()
            .filter_map(|s| match s {
                Interface::Addr(ip) if s.matches(info) => Some(*ip),
                _ => None,
            })
            .collect();
        let whole = select.include.is_empty()
            || select
                .include
                .iter()
                .any(|s| !matches!(s, Interface::Addr(_)) && s.matches(info));
        let v4 = if whole {
            info.ipv4().map(|a| a.ip)
        } else {
            by_addr.iter().copied().find(IpAddr::is_ipv4)
        };
        let v6 = if whole {
            info.ipv6_link_local().map(|a| a.ip)
        } else {
            by_addr.iter().copied().find(IpAddr::is_ipv6)
        };
        if settings.net.ipv4
            && let Some(ip) = v4
        {
            let broadcast =
                (settings.net.broadcast && info.flags.broadcast && !info.flags.loopback)
                    .then(|| {
                        info.addrs
                            .iter()
                            .find(|a| a.ip == ip)
                            .and_then(|a| a.broadcast)
                    })
                    .flatten();
            choices.push(Choice {
                info: Some(info.clone()),
                family: Family::V4,
                addr: ip,
                broadcast,
            });
        }
        if settings.net.ipv6
            && !info.flags.loopback
            && let Some(ip) = v6
        {
            choices.push(Choice {
                info: Some(info.clone()),
                family: Family::V6,
                addr: ip,
                broadcast: None,
            });
        }
    }
    choices
}

/// Up, running, multicast-capable and not loopback: what "every usable
/// interface" means.
fn usable(i: &InterfaceInfo) -> bool {
    i.flags.up && i.flags.running && i.flags.multicast && !i.flags.loopback
}

/// The source address the kernel would use toward `to` (a route lookup: a
/// connected UDP socket sends nothing until asked to).
pub(crate) fn source_toward(to: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = match to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = std::net::UdpSocket::bind(any).ok()?;
    probe.connect(to).ok()?;
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// The interface the routing table sends `group` traffic into, when that is
/// a tunnel (point-to-point) or an interface other than `ours` (the indexes
/// in use): what a full-tunnel VPN does to multicast sent without naming an
/// interface.
pub(crate) fn captured_route(group: SocketAddr, ours: &[u32]) -> Option<String> {
    let source = source_toward(group)?;
    let all = interfaces::scan().ok()?;
    let owner = all
        .iter()
        .find(|i| i.addrs.iter().any(|a| a.ip == source))?;
    let foreign = !ours.is_empty() && !ours.contains(&owner.index) && !owner.flags.loopback;
    (owner.flags.point_to_point || foreign).then(|| owner.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::interfaces::{InterfaceAddr, InterfaceFlags};

    fn interface(
        name: &str,
        index: u32,
        flags: InterfaceFlags,
        addrs: &[(&str, u8)],
    ) -> InterfaceInfo {
        InterfaceInfo {
            name: name.into(),
            index,
            flags,
            addrs: addrs
                .iter()
                .map(|(ip, prefix)| {
                    let ip: IpAddr = ip.parse().unwrap();
                    InterfaceAddr {
                        ip,
                        prefix: *prefix,
                        broadcast: ip.is_ipv4().then(|| Ipv4Addr::new(10, 0, index as u8, 255)),
                    }
                })
                .collect(),
        }
    }

    fn lan_flags() -> InterfaceFlags {
        InterfaceFlags {
            up: true,
            running: true,
            multicast: true,
            broadcast: true,
            ..InterfaceFlags::default()
        }
    }

    /// lo, eth0 (dual stack), wg0 (a tunnel without multicast), eth1 (down).
    fn host() -> Vec<InterfaceInfo> {
        let lo = InterfaceFlags {
            up: true,
            running: true,
            loopback: true,
            ..InterfaceFlags::default()
        };
        let tunnel = InterfaceFlags {
            up: true,
            running: true,
            point_to_point: true,
            ..InterfaceFlags::default()
        };
        let down = InterfaceFlags {
            up: false,
            ..lan_flags()
        };
        vec![
            interface("lo", 1, lo, &[("127.0.0.1", 8), ("::1", 128)]),
            interface(
                "eth0",
                2,
                lan_flags(),
                &[("10.0.2.5", 24), ("fe80::2", 64), ("fd00::2", 64)],
            ),
            interface("wg0", 3, tunnel, &[("10.9.0.1", 32)]),
            interface("eth1", 4, lan_flags(), &[("10.0.4.5", 24)]),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, mut info)| {
            if i == 3 {
                info.flags = down;
            }
            info
        })
        .collect()
    }

    fn settings(b: crate::ChartBuilder<crate::builder::WithId, u16>) -> Settings {
        b.finish().unwrap().shared.settings.clone()
    }

    fn base() -> crate::ChartBuilder<crate::builder::WithId, u16> {
        crate::ChartBuilder::new().with_id(1).with_service_port(1)
    }

    fn picked(choices: &[Choice]) -> Vec<(String, IpAddr)> {
        choices
            .iter()
            .map(|c| (c.info.as_ref().unwrap().name.clone(), c.addr))
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn by_default_every_usable_interface_is_used_in_both_families() {
        let chosen = choose(&settings(base()), host());
        assert_eq!(
            picked(&chosen),
            vec![
                ("eth0".into(), ip("10.0.2.5")),
                ("eth0".into(), ip("fe80::2"))
            ]
        );
        assert_eq!(chosen[0].broadcast, Some(Ipv4Addr::new(10, 0, 2, 255)));
    }

    #[test]
    fn an_interface_chosen_by_address_is_used_in_that_family_only() {
        let chosen = choose(
            &settings(base().with_interface(Ipv4Addr::new(10, 0, 2, 5))),
            host(),
        );
        assert_eq!(picked(&chosen), vec![("eth0".into(), ip("10.0.2.5"))]);
        let by_name = choose(&settings(base().with_interface("eth0")), host());
        assert_eq!(by_name.len(), 2);
        let tunnel = choose(&settings(base().with_interface(3)), host());
        assert_eq!(picked(&tunnel), vec![("wg0".into(), ip("10.9.0.1"))]);
    }

    #[test]
    fn excluded_filtered_and_family_limited_interfaces_are_left_out() {
        assert!(choose(&settings(base().without_interface("eth0")), host()).is_empty());
        assert!(
            choose(
                &settings(base().with_interface_filter(|i| i.name != "eth0")),
                host()
            )
            .is_empty()
        );
        let v6 = choose(&settings(base().ipv6_only()), host());
        assert_eq!(picked(&v6), vec![("eth0".into(), ip("fe80::2"))]);
        let v4 = choose(&settings(base().ipv4_only().without_broadcast()), host());
        assert_eq!(picked(&v4), vec![("eth0".into(), ip("10.0.2.5"))]);
        assert_eq!(v4[0].broadcast, None);
    }

    #[test]
    fn loopback_is_used_only_when_nothing_else_is_and_same_host_discovery_is_on() {
        let lonely = || {
            host()
                .into_iter()
                .filter(|i| i.name != "eth0")
                .collect::<Vec<_>>()
        };
        assert!(choose(&settings(base()), lonely()).is_empty());
        let local = choose(&settings(base().local_discovery(true)), lonely());
        assert_eq!(picked(&local), vec![("lo".into(), ip("127.0.0.1"))]);
        let only = choose(
            &settings(base().local_discovery(true).loopback_only()),
            host(),
        );
        assert_eq!(picked(&only), vec![("lo".into(), ip("127.0.0.1"))]);
    }
}
