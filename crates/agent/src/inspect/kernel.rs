//! What the kernel holds, read back from either dataplane into one shape: frontends with the
//! outcome per source class. Readers: [`super::nft`] (`nft -j`), [`super::ebpf`] (pinned maps).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::Serialize;
use sluice_plan::{Family, FrontendAddr, FrontendKey, Protocol, SourceClass};

/// What a source class's new connection to a frontend becomes, as programmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "action")]
pub enum KernelRoute {
    /// DNAT to one of `backends` (sorted).
    Forward {
        backends: Vec<SocketAddr>,
        masquerade: bool,
    },
    Reject,
    Drop,
}

impl KernelRoute {
    pub fn outcome(&self) -> &'static str {
        match self {
            KernelRoute::Forward { .. } => "forward",
            KernelRoute::Reject => "reject",
            KernelRoute::Drop => "drop",
        }
    }

    pub fn backends(&self) -> &[SocketAddr] {
        match self {
            KernelRoute::Forward { backends, .. } => backends,
            _ => &[],
        }
    }
}

impl fmt::Display for KernelRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelRoute::Forward {
                backends,
                masquerade,
            } => {
                write!(f, "forward {}", backends.len())?;
                if *masquerade {
                    f.write_str(" masquerade")?;
                }
                Ok(())
            }
            KernelRoute::Reject => f.write_str("reject"),
            KernelRoute::Drop => f.write_str("drop"),
        }
    }
}

/// One frontend as programmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelFrontend {
    pub key: FrontendKey,
    /// The service port it belongs to, when the kernel objects carry a name (nftables chains
    /// do; eBPF map entries do not).
    pub service: Option<String>,
    /// Where it was found (`ip sluice service-ips`, `sl_svc_v1`).
    pub location: String,
    pub pods: KernelRoute,
    pub node: KernelRoute,
    pub outside: KernelRoute,
    /// Source ranges (empty: everyone).
    pub allowed_sources: Vec<IpNet>,
    pub flags: Vec<String>,
}

impl KernelFrontend {
    pub fn route(&self, class: SourceClass) -> &KernelRoute {
        match class {
            SourceClass::Pods => &self.pods,
            SourceClass::Node => &self.node,
            SourceClass::Outside => &self.outside,
        }
    }

    /// Every backend some class is forwarded to, sorted and unique.
    pub fn all_backends(&self) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = SourceClass::ALL
            .iter()
            .flat_map(|c| self.route(*c).backends().iter().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

/// Everything one dataplane holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KernelView {
    /// `nftables` or `ebpf`.
    pub dataplane: String,
    pub frontends: Vec<KernelFrontend>,
    /// Addresses NodePort frontends listen on (nftables `nodeport-ips`; the eBPF maps hold
    /// one entry per NodePort address instead, so this stays empty there).
    pub nodeport_addresses: Vec<IpAddr>,
    pub cluster_cidrs: Vec<IpNet>,
}

/// Result of looking a destination up in the kernel.
pub enum KernelLookup<'a> {
    Found(&'a KernelFrontend),
    /// The port is a NodePort, but the address is not one NodePorts listen on.
    NotNodePortAddress(&'a KernelFrontend),
    /// The address is a frontend on other ports.
    OtherPorts(Vec<String>),
    /// The same port and protocol is a frontend on other addresses only.
    OtherAddresses(Vec<String>),
    None,
}

impl KernelView {
    pub fn lookup(&self, ip: IpAddr, protocol: Protocol, port: u16) -> KernelLookup<'_> {
        let exact = FrontendKey {
            addr: FrontendAddr::Ip(ip),
            protocol,
            port,
        };
        if let Some(fe) = self.frontends.iter().find(|fe| fe.key == exact) {
            return KernelLookup::Found(fe);
        }
        let nodeports = FrontendKey {
            addr: FrontendAddr::NodePorts(Family::of(&ip)),
            ..exact
        };
        if let Some(fe) = self.frontends.iter().find(|fe| fe.key == nodeports) {
            return if self.nodeport_addresses.contains(&ip) {
                KernelLookup::Found(fe)
            } else {
                KernelLookup::NotNodePortAddress(fe)
            };
        }
        let same_ip: Vec<String> = self
            .frontends
            .iter()
            .filter(|fe| fe.key.addr == FrontendAddr::Ip(ip))
            .map(|fe| fe.key.to_string())
            .collect();
        if !same_ip.is_empty() {
            return KernelLookup::OtherPorts(same_ip);
        }
        let same_port: Vec<String> = self
            .frontends
            .iter()
            .filter(|fe| fe.key.port == port && fe.key.protocol == protocol)
            .map(|fe| fe.key.to_string())
            .collect();
        if same_port.is_empty() {
            KernelLookup::None
        } else {
            KernelLookup::OtherAddresses(same_port)
        }
    }

    /// The frontend of `key` exactly (a NodePort frontend by its `NodePorts` key on nftables,
    /// by each address on eBPF).
    pub fn frontend(&self, ip: IpAddr, protocol: Protocol, port: u16) -> Option<&KernelFrontend> {
        match self.lookup(ip, protocol, port) {
            KernelLookup::Found(fe) => Some(fe),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frontend(addr: FrontendAddr, port: u16) -> KernelFrontend {
        KernelFrontend {
            key: FrontendKey {
                addr,
                protocol: Protocol::Tcp,
                port,
            },
            service: None,
            location: "test".into(),
            pods: KernelRoute::Reject,
            node: KernelRoute::Reject,
            outside: KernelRoute::Reject,
            allowed_sources: Vec::new(),
            flags: Vec::new(),
        }
    }

    #[test]
    fn lookup_tells_why_a_destination_is_not_a_frontend() {
        let vip: IpAddr = "10.96.0.10".parse().unwrap();
        let node: IpAddr = "192.0.2.11".parse().unwrap();
        let view = KernelView {
            dataplane: "nftables".into(),
            frontends: vec![
                frontend(FrontendAddr::Ip(vip), 80),
                frontend(FrontendAddr::NodePorts(Family::V4), 30080),
            ],
            nodeport_addresses: vec![node],
            cluster_cidrs: Vec::new(),
        };
        assert!(matches!(
            view.lookup(vip, Protocol::Tcp, 80),
            KernelLookup::Found(_)
        ));
        assert!(matches!(
            view.lookup(node, Protocol::Tcp, 30080),
            KernelLookup::Found(_)
        ));
        let elsewhere: IpAddr = "192.0.2.12".parse().unwrap();
        assert!(matches!(
            view.lookup(elsewhere, Protocol::Tcp, 30080),
            KernelLookup::NotNodePortAddress(_)
        ));
        assert!(matches!(
            view.lookup(vip, Protocol::Udp, 80),
            KernelLookup::OtherPorts(_)
        ));
        assert!(matches!(
            view.lookup(elsewhere, Protocol::Tcp, 80),
            KernelLookup::OtherAddresses(_)
        ));
        assert!(matches!(
            view.lookup(elsewhere, Protocol::Tcp, 81),
            KernelLookup::None
        ));
    }
}
