//! Port helpers for programs that still serve TCP on this host.
//!
//! **Owns:** finding a free port by *binding* it, and telling whether a port
//! is taken. **Must not touch:** discovery: to find your other instances, use
//! [`Instances`](super::Instances), never a port scan (see the README recipe).
//!
//! `find_free_port` returns the bound listener, never a number: a number
//! checked free and bound later races with every other program (and with
//! your own other instances starting at the same moment).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::ops::RangeInclusive;

/// Binds the first free port of `range` on 127.0.0.1, starting at a random
/// point of the range so that concurrent callers rarely collide, and returns
/// the listening socket. `Err(AddrInUse)` when every port is taken.
///
/// ```no_run
/// let listener = cohort::local::find_free_port(8000..=8099)?;
/// println!("serving on {}", listener.local_addr()?);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn find_free_port(range: RangeInclusive<u16>) -> std::io::Result<TcpListener> {
    find_free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST), range)
}

/// [`find_free_port`] on another local address.
pub fn find_free_port_on(ip: IpAddr, range: RangeInclusive<u16>) -> std::io::Result<TcpListener> {
    let (first, last) = (*range.start(), *range.end());
    if first > last {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the port range is empty",
        ));
    }
    let span = u32::from(last - first) + 1;
    let offset = getrandom::u32().unwrap_or(std::process::id()) % span;
    for i in 0..span {
        let port = first + ((offset + i) % span) as u16;
        match TcpListener::bind(SocketAddr::new(ip, port)) {
            Ok(listener) => return Ok(listener),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("every port in {first}..={last} is in use"),
    ))
}

/// True when a TCP socket is listening on `port` at 127.0.0.1 (binding it
/// fails). A snapshot: the answer may be stale the moment it returns, so
/// never bind a port because this said it was free; use [`find_free_port`].
pub fn is_port_in_use(port: u16) -> bool {
    is_port_in_use_on(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// [`is_port_in_use`] on another local address.
pub fn is_port_in_use_on(ip: IpAddr, port: u16) -> bool {
    matches!(
        TcpListener::bind(SocketAddr::new(ip, port)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse
    )
}
