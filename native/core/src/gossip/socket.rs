//! The gossip socket: bind, join the group (IPv4 or IPv6 multicast) or enable broadcast, and the
//! interface lookups behind `if_addr` / `multicast_if`. Built with socket2 so that SO_REUSEADDR and
//! SO_REUSEPORT are set with the host OS's constants (libcluster sets BSD values on Linux, where they
//! do nothing), letting several nodes on one host share the port.

use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

/// How a node reaches its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketConfig {
    pub port: u16,
    /// The local address to use (libcluster's `if_addr`). `0.0.0.0`/`::` means any. A specific
    /// address must exist on this host; it selects the interface for multicast.
    pub if_addr: IpAddr,
    /// The multicast interface, by address or by name (`eth0`); overrides `if_addr` for the group.
    pub multicast_if: Option<Interface>,
    /// The group (or, with `broadcast_only`, the broadcast address) heartbeats go to.
    pub multicast_addr: IpAddr,
    /// Multicast TTL (IPv4) or hop limit (IPv6).
    pub multicast_ttl: u32,
    pub broadcast_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interface {
    Addr(IpAddr),
    Name(String),
}

/// One address of one local interface.
#[derive(Debug, Clone)]
pub(super) struct LocalAddr {
    pub name: String,
    pub index: u32,
    pub addr: IpAddr,
}

/// The addresses of this host's interfaces (getifaddrs).
pub(super) fn local_addrs() -> io::Result<Vec<LocalAddr>> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs; we only read it.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
                continue;
            }
            let name = CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
            let index = libc::if_nametoindex(ifa.ifa_name);
            let addr = match (*ifa.ifa_addr).sa_family as i32 {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
                }
                _ => continue,
            };
            out.push(LocalAddr { name, index, addr });
        }
        libc::freeifaddrs(head);
    }
    Ok(out)
}

/// The interface (index, and its first IPv4 address if any) for the group, or an error that
/// says what is missing. `Ok(None)` means "let the kernel choose".
fn resolve_interface(cfg: &SocketConfig) -> io::Result<Option<(u32, Option<Ipv4Addr>)>> {
    let wanted = match &cfg.multicast_if {
        Some(i) => i.clone(),
        None if cfg.if_addr.is_unspecified() => return Ok(None),
        None => Interface::Addr(cfg.if_addr),
    };
    let addrs = local_addrs()?;
    let found = match &wanted {
        Interface::Addr(ip) => addrs.iter().find(|a| a.addr == *ip),
        Interface::Name(name) => addrs.iter().find(|a| &a.name == name),
    };
    let Some(found) = found else {
        let what = match &wanted {
            Interface::Addr(ip) => format!("no local interface has the address {ip}"),
            Interface::Name(name) => format!("no interface named {name:?} (or it has no address)"),
        };
        return Err(io::Error::new(io::ErrorKind::AddrNotAvailable, what));
    };
    let v4 = match &wanted {
        Interface::Addr(IpAddr::V4(ip)) => Some(*ip),
        _ => addrs
            .iter()
            .filter(|a| a.index == found.index)
            .find_map(|a| match a.addr {
                IpAddr::V4(ip) => Some(ip),
                _ => None,
            }),
    };
    Ok(Some((found.index, v4)))
}

/// Opens the socket for `cfg`: bound to the wildcard address of the group's family on `port`, with
/// SO_REUSEADDR and SO_REUSEPORT, joined to the group (or with SO_BROADCAST). Returns the socket and
/// the destination for heartbeats.
pub(super) fn open(cfg: &SocketConfig) -> io::Result<(std::net::UdpSocket, SocketAddr)> {
    let iface = resolve_interface(cfg)?;
    let (domain, bind): (Domain, SocketAddr) = match cfg.multicast_addr {
        IpAddr::V4(_) => (Domain::IPV4, (Ipv4Addr::UNSPECIFIED, cfg.port).into()),
        IpAddr::V6(_) => (Domain::IPV6, (Ipv6Addr::UNSPECIFIED, cfg.port).into()),
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    // Both, so the port can be shared with other libcluster_rs nodes (SO_REUSEPORT) and with
    // libcluster 3.5 nodes (Erlang's `reuseaddr: true` sets SO_REUSEADDR only). Multicast and
    // broadcast datagrams are delivered to every socket bound this way.
    socket.set_reuse_address(true)?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    socket.set_reuse_port(true)?;
    if domain == Domain::IPV6 {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    // Room for bursts (a node restart storm, or a flood we must read to count and drop).
    let _ = socket.set_recv_buffer_size(1 << 20);
    // Bound to the wildcard: on Linux a socket bound to a unicast address receives no multicast or
    // broadcast datagrams. `if_addr` selects the interface instead.
    socket.bind(&bind.into())?;

    let dest = SocketAddr::new(cfg.multicast_addr, cfg.port);
    match (cfg.multicast_addr, cfg.broadcast_only) {
        (IpAddr::V4(_), true) => {
            socket.set_broadcast(true)?;
            if let Some((_, Some(v4))) = iface {
                // Send broadcasts out of the chosen interface's address.
                socket.set_multicast_if_v4(&v4)?;
            }
        }
        (IpAddr::V6(_), true) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "broadcast_only needs an IPv4 broadcast address (IPv6 has no broadcast)",
            ))
        }
        (IpAddr::V4(group), false) => {
            socket.set_broadcast(true)?;
            socket.set_multicast_loop_v4(true)?;
            socket.set_multicast_ttl_v4(cfg.multicast_ttl)?;
            match iface {
                Some((index, v4)) => {
                    socket.join_multicast_v4_n(&group, &InterfaceIndexOrAddress::Index(index))?;
                    if let Some(v4) = v4 {
                        socket.set_multicast_if_v4(&v4)?;
                    }
                }
                None => socket.join_multicast_v4(&group, &Ipv4Addr::UNSPECIFIED)?,
            }
        }
        (IpAddr::V6(group), false) => {
            let index = iface.map(|(i, _)| i).unwrap_or(0);
            socket.set_multicast_loop_v6(true)?;
            socket.set_multicast_hops_v6(cfg.multicast_ttl)?;
            socket.join_multicast_v6(&group, index)?;
            if index != 0 {
                socket.set_multicast_if_v6(index)?;
            }
            // The scope id matters for link-local groups (ff02::/16).
            let dest = SocketAddr::V6(SocketAddrV6::new(group, cfg.port, 0, index));
            return Ok((socket.into(), dest));
        }
    }
    Ok((socket.into(), dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(port: u16) -> SocketConfig {
        SocketConfig {
            port,
            if_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            multicast_if: Some(Interface::Name("lo".into())),
            multicast_addr: "233.252.1.32".parse().unwrap(),
            multicast_ttl: 0,
            broadcast_only: false,
        }
    }

    #[test]
    fn lists_loopback() {
        let addrs = local_addrs().unwrap();
        assert!(addrs.iter().any(|a| a.name == "lo" && a.addr.is_loopback()));
    }

    #[test]
    fn two_sockets_share_the_port() {
        let port = 47_000 + (std::process::id() % 1000) as u16;
        let (a, _) = open(&cfg(port)).unwrap();
        let (b, _) = open(&cfg(port)).unwrap();
        drop((a, b));
    }

    #[test]
    fn a_missing_interface_is_an_error_not_a_panic() {
        let mut c = cfg(47_999);
        c.multicast_if = Some(Interface::Name("nosuchif0".into()));
        let err = open(&c).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrNotAvailable);
        c.multicast_if = None;
        c.if_addr = "198.18.255.254".parse().unwrap();
        assert_eq!(
            open(&c).unwrap_err().kind(),
            io::ErrorKind::AddrNotAvailable
        );
    }
}
