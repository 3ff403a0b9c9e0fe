//! The host's network interfaces, and news of their changes.
//!
//! **Owns:** reading the interfaces and their addresses from the kernel
//! (a netlink dump on Linux: the flags that matter, such as MULTICAST and
//! POINTOPOINT, are not in `getifaddrs`), and a netlink socket subscribed to
//! link and address changes. **Must not touch:** sockets of the LAN path or
//! the protocol: the driver asks here what exists and when to look again.
//!
//! Every message from the kernel is parsed with bounds checks; nothing here
//! trusts a length field. Other systems than Linux have no implementation
//! yet: there [`scan`] returns no interfaces (the driver then lets the
//! kernel choose, as before) and [`Changes`] never fires; a port is one
//! module per OS behind the same two functions.

use std::net::{IpAddr, Ipv4Addr};

/// The interface flags cohort looks at (`IFF_*` on Linux).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct InterfaceFlags {
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Running (`IFF_RUNNING`: the link has carrier).
    pub running: bool,
    /// The loopback interface (`IFF_LOOPBACK`).
    pub loopback: bool,
    /// Supports multicast (`IFF_MULTICAST`).
    pub multicast: bool,
    /// Supports broadcast (`IFF_BROADCAST`).
    pub broadcast: bool,
    /// A point-to-point link: a tunnel, a VPN, PPP (`IFF_POINTOPOINT`).
    pub point_to_point: bool,
}

/// One address of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct InterfaceAddr {
    /// The address.
    pub ip: IpAddr,
    /// Its prefix length (the subnet).
    pub prefix: u8,
    /// The subnet's broadcast address (IPv4 with broadcast only).
    pub broadcast: Option<Ipv4Addr>,
}

impl InterfaceAddr {
    /// Whether `ip` is in this address's subnet.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.ip, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix.min(32)))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix.min(128)))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

/// A network interface, as a selection predicate sees it
/// ([`ChartBuilder::with_interface_filter`](crate::ChartBuilder::with_interface_filter)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InterfaceInfo {
    /// Its name (`eth0`, `wlan0`, ...).
    pub name: String,
    /// Its index (the IPv6 scope id of its link-local addresses).
    pub index: u32,
    /// Its flags.
    pub flags: InterfaceFlags,
    /// Its addresses, IPv4 and IPv6.
    pub addrs: Vec<InterfaceAddr>,
}

impl InterfaceInfo {
    /// Its first IPv4 address.
    pub fn ipv4(&self) -> Option<&InterfaceAddr> {
        self.addrs.iter().find(|a| a.ip.is_ipv4())
    }

    /// Its IPv6 link-local address (fe80::/10), the one cohort speaks from.
    pub fn ipv6_link_local(&self) -> Option<&InterfaceAddr> {
        self.addrs
            .iter()
            .find(|a| matches!(a.ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
    }
}

/// The host's network interfaces with their flags and addresses, as cohort
/// sees them when it chooses where to listen (on Linux, read from the
/// kernel over netlink; elsewhere, for now, an empty list). For
/// diagnostics and for [`with_interface_filter`](crate::ChartBuilder::with_interface_filter)
/// predicates you want to try first.
///
/// ```no_run
/// for i in cohort::interfaces()? {
///     println!("{} up={} multicast={} {:?}", i.name, i.flags.up, i.flags.multicast, i.addrs);
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn interfaces() -> std::io::Result<Vec<InterfaceInfo>> {
    scan()
}

/// Bounds on a dump, whatever the kernel (or something posing as it) says.
const MAX_INTERFACES: usize = 1024;
const MAX_ADDRS: usize = 4096;

#[cfg(target_os = "linux")]
mod linux;

#[cfg(target_os = "linux")]
pub(crate) use linux::{Changes, scan};

/// No interface scan on this system: the kernel chooses.
#[cfg(not(target_os = "linux"))]
pub(crate) fn scan() -> std::io::Result<Vec<InterfaceInfo>> {
    Ok(Vec::new())
}

/// No change notifications on this system.
#[cfg(not(target_os = "linux"))]
pub(crate) struct Changes;

#[cfg(not(target_os = "linux"))]
impl Changes {
    pub(crate) fn open() -> std::io::Result<Changes> {
        Ok(Changes)
    }

    pub(crate) async fn next(&mut self) {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: &str, prefix: u8) -> InterfaceAddr {
        InterfaceAddr {
            ip: ip.parse().unwrap(),
            prefix,
            broadcast: None,
        }
    }

    #[test]
    fn a_subnet_contains_its_addresses_and_not_others() {
        assert!(addr("10.77.0.5", 16).contains("10.77.200.1".parse().unwrap()));
        assert!(!addr("10.77.0.5", 16).contains("10.78.0.1".parse().unwrap()));
        assert!(addr("10.0.0.1", 0).contains("192.168.1.1".parse().unwrap()));
        assert!(addr("fe80::1", 64).contains("fe80::abcd".parse().unwrap()));
        assert!(!addr("fe80::1", 64).contains("fd77::1".parse().unwrap()));
        assert!(!addr("10.0.0.1", 8).contains("fe80::1".parse().unwrap()));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_loopback_interface_is_found_with_its_flags() {
        let all = scan().unwrap();
        let lo = all
            .iter()
            .find(|i| i.flags.loopback)
            .expect("every namespace has lo");
        assert_eq!(lo.name, "lo");
        assert!(
            lo.addrs
                .iter()
                .any(|a| a.ip == IpAddr::V4(Ipv4Addr::LOCALHOST))
                || !lo.flags.up
        );
    }
}
