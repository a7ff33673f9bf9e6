//! Names and small value types shared by every part of the plan.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

/// L4 protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Lower-case name as used by nftables and in plan text (`tcp`, `udp`, `sctp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// Parses the Kubernetes spelling (`TCP`, `UDP`, `SCTP`); `None` (absent) means TCP.
    pub fn from_k8s(value: Option<&str>) -> Option<Protocol> {
        match value {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            Some(_) => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn contains(self, ip: &IpAddr) -> bool {
        Family::of(ip) == self
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `namespace/name` of a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServiceName {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ServiceName {
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Identity of one port of one Service: `namespace/name:portName/protocol`, as kube-proxy's
/// `ServicePortName`. The port name is empty for single-port services without a name.
///
/// Strings are shared (`Arc<str>`): the same name is held by the planner, every backend's
/// bookkeeping and the plan itself.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServicePortName {
    pub service: ServiceName,
    pub port_name: Arc<str>,
    pub protocol: Protocol,
}

impl ServicePortName {
    pub fn new(
        namespace: impl Into<Arc<str>>,
        name: impl Into<Arc<str>>,
        port_name: impl Into<Arc<str>>,
        protocol: Protocol,
    ) -> Self {
        Self {
            service: ServiceName::new(namespace, name),
            port_name: port_name.into(),
            protocol,
        }
    }

    pub fn namespace(&self) -> &str {
        &self.service.namespace
    }

    pub fn name(&self) -> &str {
        &self.service.name
    }
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.service)?;
        if !self.port_name.is_empty() {
            write!(f, ":{}", self.port_name)?;
        }
        write!(f, "/{}", self.protocol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_port_names_print_like_kube_proxy() {
        let named = ServicePortName::new("default", "web", "http", Protocol::Tcp);
        assert_eq!(named.to_string(), "default/web:http/tcp");
        let unnamed = ServicePortName::new("kube-system", "dns", "", Protocol::Udp);
        assert_eq!(unnamed.to_string(), "kube-system/dns/udp");
    }

    #[test]
    fn protocols_parse_the_kubernetes_spelling() {
        assert_eq!(Protocol::from_k8s(None), Some(Protocol::Tcp));
        assert_eq!(Protocol::from_k8s(Some("SCTP")), Some(Protocol::Sctp));
        assert_eq!(Protocol::from_k8s(Some("tcp")), None);
    }
}
