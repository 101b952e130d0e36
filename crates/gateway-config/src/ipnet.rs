//! IP networks for `trusted_proxies`, `allow_ips` and `deny_ips`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 network: `10.0.0.0/8`, `2001:db8::/32`, or a single address.
///
/// Host bits below the prefix are cleared (`10.1.2.3/8` is `10.0.0.0/8`). An
/// IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is stored as the IPv4 network
/// it covers, and [`IpNet::contains`] looks at an IPv4-mapped address
/// (`::ffff:10.1.2.3`, what a dual-stack socket reports for an IPv4 peer) as
/// the IPv4 address it is. Otherwise IPv4 and IPv6 never match each other:
/// `::/0` does not contain `10.1.2.3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses an address or `address/prefix`.
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR network such as 10.0.0.0/8 or 2001:db8::/32"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("`{s}`: the prefix length must be a number from 0 to {max}")),
            },
        };
        Ok(IpNet::new(addr, prefix))
    }

    /// The network of `addr` with `prefix` bits (clamped to the address length).
    pub fn new(addr: IpAddr, prefix: u8) -> IpNet {
        match addr {
            IpAddr::V4(v4) => {
                let prefix = prefix.min(32);
                IpNet { addr: IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask32(prefix))), prefix }
            }
            IpAddr::V6(v6) => {
                let prefix = prefix.min(128);
                if let Some(v4) = v6.to_ipv4_mapped() {
                    if prefix >= 96 {
                        return IpNet::new(IpAddr::V4(v4), prefix - 96);
                    }
                }
                IpNet { addr: IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask128(prefix))), prefix }
            }
        }
    }

    /// The network address (host bits cleared).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network (see the type's doc for IPv4-mapped addresses).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => u32::from(ip) & mask32(self.prefix) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => u128::from(ip) & mask128(self.prefix) == u128::from(net),
            _ => false,
        }
    }

    /// Whether any of `nets` contains `ip`.
    pub fn any_contains(nets: &[IpNet], ip: IpAddr) -> bool {
        nets.iter().any(|n| n.contains(ip))
    }
}

fn mask32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

fn mask128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        IpNet::parse(s)
    }
}

impl From<IpAddr> for IpNet {
    fn from(addr: IpAddr) -> Self {
        IpNet::new(addr, 128)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_addresses_and_networks() {
        assert_eq!(IpNet::parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(IpNet::parse("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(IpNet::parse("127.0.0.1").unwrap().to_string(), "127.0.0.1/32");
        assert_eq!(IpNet::parse("2001:db8::1/32").unwrap().to_string(), "2001:db8::/32");
        assert_eq!(IpNet::parse("::1").unwrap().to_string(), "::1/128");
        assert_eq!(IpNet::parse("0.0.0.0/0").unwrap().prefix_len(), 0);
        for bad in
            ["", "10.0.0.0/33", "::/129", "10.0.0/8", "10.0.0.0/", "10.0.0.0/+8", "host", "10.0.0.0/8/8", "[::1]"]
        {
            assert!(IpNet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn contains_by_prefix() {
        let net = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(net.contains(ip("10.255.0.1")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(IpNet::parse("0.0.0.0/0").unwrap().contains(ip("203.0.113.9")));
        let v6 = IpNet::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")));
        assert!(!v6.contains(ip("2001:db9::5")));
        assert!(IpNet::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        assert!(!IpNet::parse("127.0.0.1").unwrap().contains(ip("127.0.0.2")));
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        let net = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(net.contains(ip("::ffff:10.1.2.3")));
        assert!(!net.contains(ip("::ffff:11.1.2.3")));
        let mapped = IpNet::parse("::ffff:10.0.0.0/104").unwrap();
        assert_eq!(mapped, net);
        assert!(mapped.contains(ip("10.9.9.9")));
        // Families never match otherwise.
        assert!(!IpNet::parse("::/0").unwrap().contains(ip("10.0.0.1")));
        assert!(!IpNet::parse("0.0.0.0/0").unwrap().contains(ip("::1")));
    }
}
