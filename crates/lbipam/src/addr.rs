//! Addresses as ordered integers, so pools are ranges and "the lowest free address" is a range
//! walk over the used set instead of an iteration over every address of a (maybe /64) block.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP family, in Kubernetes' spelling when displayed (`IPv4`, `IPv6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// Parses `spec.ipFamilies` entries (`IPv4`, `IPv6`).
    pub fn from_k8s(value: &str) -> Option<Self> {
        match value {
            "IPv4" => Some(IpFamily::V4),
            "IPv6" => Some(IpFamily::V6),
            _ => None,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// An address as (family, integer): ordered by family, then numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Addr {
    pub family: IpFamily,
    pub value: u128,
}

impl Addr {
    pub fn ip(self) -> IpAddr {
        match self.family {
            // Values of V4 addresses always fit: they are only built from Ipv4Addr or from
            // ranges whose bounds came from Ipv4Addr.
            IpFamily::V4 => IpAddr::V4(Ipv4Addr::from(self.value as u32)),
            IpFamily::V6 => IpAddr::V6(Ipv6Addr::from(self.value)),
        }
    }
}

impl From<IpAddr> for Addr {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Addr {
                family: IpFamily::V4,
                value: u128::from(u32::from(v4)),
            },
            IpAddr::V6(v6) => Addr {
                family: IpFamily::V6,
                value: u128::from(v6),
            },
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.ip().fmt(f)
    }
}

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct IpRange {
    pub first: Addr,
    pub last: Addr,
}

impl IpRange {
    pub fn family(&self) -> IpFamily {
        self.first.family
    }

    pub fn contains(&self, addr: Addr) -> bool {
        self.first <= addr && addr <= self.last
    }

    pub fn overlaps(&self, other: &IpRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    /// Number of addresses, saturating at `u128::MAX` (only an IPv6 /0 would saturate).
    pub fn size(&self) -> u128 {
        (self.last.value - self.first.value).saturating_add(1)
    }

    /// The range of a CIDR.
    pub fn of_net(net: ipnet::IpNet) -> Self {
        IpRange {
            first: Addr::from(net.network()),
            last: Addr::from(net.broadcast()),
        }
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_order_by_family_then_numerically() {
        let a = Addr::from("10.0.0.9".parse::<IpAddr>().unwrap());
        let b = Addr::from("10.0.0.10".parse::<IpAddr>().unwrap());
        let c = Addr::from("::1".parse::<IpAddr>().unwrap());
        assert!(a < b && b < c);
        assert_eq!(b.ip().to_string(), "10.0.0.10");
        assert_eq!(c.ip().to_string(), "::1");
    }

    #[test]
    fn cidr_ranges_cover_network_to_broadcast() {
        let range = IpRange::of_net("192.0.2.16/28".parse().unwrap());
        assert_eq!(range.to_string(), "192.0.2.16-192.0.2.31");
        assert_eq!(range.size(), 16);
        let v6 = IpRange::of_net("2001:db8::/64".parse().unwrap());
        assert_eq!(v6.size(), 1 << 64);
        assert_eq!(IpRange::of_net("::/0".parse().unwrap()).size(), u128::MAX);
    }
}
