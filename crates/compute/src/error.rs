//! What can be wrong with one object. Every problem becomes a [`Warning`] naming the object;
//! only the bad part is skipped.

use std::error::Error as _;
use std::fmt;

/// One problem found in an object. Rendered (with its source chain) into [`Warning::message`].
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("Service has no spec")]
    MissingSpec,
    #[error("invalid {field} {value:?}")]
    InvalidIp {
        field: &'static str,
        value: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("invalid {field} {value:?}")]
    InvalidCidr {
        field: &'static str,
        value: String,
        #[source]
        source: ipnet::AddrParseError,
    },
    #[error(
        "spec.clusterIP {cluster_ip:?} is not spec.clusterIPs[0] {first:?}; using spec.clusterIPs"
    )]
    ClusterIpMismatch { cluster_ip: String, first: String },
    #[error("spec.clusterIPs has a second address of one family, {ip}; skipped")]
    SecondClusterIpOfFamily { ip: std::net::IpAddr },
    #[error("no usable cluster IP, service skipped")]
    NoClusterIp,
    #[error("unknown {field} {value:?}, using {fallback}")]
    UnknownValue {
        field: &'static str,
        value: String,
        fallback: &'static str,
    },
    #[error("port {port_name:?}: unknown protocol {protocol:?}, port skipped")]
    UnknownProtocol { port_name: String, protocol: String },
    #[error("{field} {value} of port {port_name:?} is out of range 1..=65535, skipped")]
    PortOutOfRange {
        field: &'static str,
        port_name: String,
        value: i32,
    },
    #[error(
        "port name \"{port_name}\" is not a DNS label (lower-case letters, digits, '-'); port skipped"
    )]
    InvalidPortName { port_name: String },
    #[error("duplicate port {port_name:?}/{protocol}, later one skipped")]
    DuplicatePort { port_name: String, protocol: String },
    #[error(
        "sessionAffinityConfig.clientIP.timeoutSeconds {value} is outside 1..=86400, using {fallback}"
    )]
    AffinityTimeoutOutOfRange { value: i32, fallback: u32 },
    #[error("externalTrafficPolicy Local on a LoadBalancer without healthCheckNodePort")]
    MissingHealthCheckNodePort,
    #[error("unknown addressType {value:?}, slice skipped")]
    UnknownAddressType { value: String },
    #[error("endpoint {index} has no addresses, skipped")]
    NoAddresses { index: usize },
    #[error("endpoint address {address} is not of the slice's addressType {address_type}, skipped")]
    WrongFamily {
        address: std::net::IpAddr,
        address_type: String,
    },
    #[error(
        "{kind} frontend {frontend} is already used by Service {owner} (which wins: {rule}); skipped here"
    )]
    FrontendTaken {
        kind: &'static str,
        frontend: String,
        owner: String,
        rule: &'static str,
    },
    #[error(
        "externalIP {ip} is an address of this node; refused (it would capture the node's own port {port}; allow with --allow-external-ips-on-node-addresses)"
    )]
    ExternalIpIsNodeAddress { ip: std::net::IpAddr, port: u16 },
    #[error("{field} {ip} is {what}; refused (no node may capture it)")]
    SpecialAddress {
        field: &'static str,
        ip: std::net::IpAddr,
        what: &'static str,
    },
    #[error("nodePort {port} of port {port_name:?} is outside the node port range {low}-{high}")]
    NodePortOutsideRange {
        port_name: String,
        port: u16,
        low: u16,
        high: u16,
    },
    #[error(
        "nodePort {port} of port {port_name:?} is the port of this agent's Ingress listener; NodePort skipped"
    )]
    NodePortReserved { port_name: String, port: u16 },
    #[error("{field} {ip} has no cluster IP of its family; skipped")]
    FamilyWithoutClusterIp {
        field: &'static str,
        ip: std::net::IpAddr,
    },
    #[error("healthCheckNodePort {port} is already served for Service {owner}; skipped here")]
    HealthCheckPortTaken { port: u16, owner: String },
}

/// A problem with one object: logged by the agent, the object (or its bad part) skipped.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Warning {
    /// Kind and `namespace/name`, e.g. `Service default/web`.
    pub object: String,
    /// What is wrong and what was skipped.
    pub message: String,
}

impl Warning {
    pub fn new(object: impl Into<String>, problem: &Problem) -> Self {
        let mut message = problem.to_string();
        let mut source = problem.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self {
            object: object.into(),
            message,
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}
