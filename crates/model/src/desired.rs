//! What the L4 dataplanes must program. Produced by `sluice-compute`, consumed by every
//! dataplane backend. All of kube-proxy's semantics are resolved before this point: a backend
//! never looks at a Kubernetes object, only at these types.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// L4 protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Lower-case name as used by nftables (`tcp`, `udp`, `sctp`).
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

/// Identity of one port of one Service: `namespace/name:portName/protocol`, as kube-proxy's
/// `ServicePortName`. The port name is empty for single-port services without a name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port_name.is_empty() {
            write!(f, ":{}", self.port_name)?;
        }
        write!(f, "/{}", self.protocol)
    }
}

/// `Cluster` or `Local`, for both `externalTrafficPolicy` and `internalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// One backend of a service port: an endpoint address and the resolved target port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    /// `nodeName` of the endpoint, if the slice said.
    pub node_name: Option<String>,
    /// The endpoint runs on this node.
    pub is_local: bool,
    /// `conditions.ready` (false only for serving+terminating fallback endpoints).
    pub ready: bool,
}

/// Everything needed to program one service port on this node.
///
/// Endpoint lists are already categorised the way kube-proxy does it (ready vs. terminating
/// fallback, topology hints, traffic policies): a backend programs
/// [`internal_endpoints`](Self::internal_endpoints) for ClusterIP traffic and
/// [`external_endpoints`](Self::external_endpoints) for NodePort / externalIP / LB traffic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServicePortState {
    /// Service port (the port on cluster, external and LB IPs).
    pub port: u16,
    /// `spec.clusterIPs` (dual-stack: one per family). Empty only for NodePort-less oddities.
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.ports[].nodePort` for NodePort and LoadBalancer services.
    pub node_port: Option<u16>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` (LoadBalancer services only).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`: when non-empty, traffic to the LB IPs from other
    /// sources is dropped (as kube-proxy: applies to LoadBalancer IPs).
    pub load_balancer_source_ranges: Vec<IpNet>,
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
    /// `sessionAffinity: ClientIP` timeout in seconds; `None` for no affinity.
    pub session_affinity_timeout: Option<u32>,
    /// `spec.healthCheckNodePort` (LoadBalancer with eTP=Local).
    pub health_check_node_port: Option<u16>,
    /// Endpoints used when the policy is `Cluster` (topology hints applied). Sorted.
    pub cluster_endpoints: Vec<Endpoint>,
    /// This node's endpoints, used when the policy is `Local`. Sorted.
    pub local_endpoints: Vec<Endpoint>,
    /// The service has at least one endpoint anywhere (ready or serving-terminating), even if
    /// none is usable from this node. kube-proxy drops instead of rejecting in that case.
    pub has_any_endpoints: bool,
}

impl ServicePortState {
    /// Endpoints for traffic to the cluster IPs.
    pub fn internal_endpoints(&self) -> &[Endpoint] {
        match self.internal_traffic_policy {
            TrafficPolicy::Cluster => &self.cluster_endpoints,
            TrafficPolicy::Local => &self.local_endpoints,
        }
    }

    /// Endpoints for traffic from outside to NodePort, externalIPs and LB IPs.
    /// (Traffic from inside the cluster to those addresses is "short-circuited" to
    /// [`cluster_endpoints`](Self::cluster_endpoints), as kube-proxy does.)
    pub fn external_endpoints(&self) -> &[Endpoint] {
        match self.external_traffic_policy {
            TrafficPolicy::Cluster => &self.cluster_endpoints,
            TrafficPolicy::Local => &self.local_endpoints,
        }
    }

    /// Whether the service is reachable from outside the cluster at all (NodePort, external IPs
    /// or LB IPs).
    pub fn has_external_frontends(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }
}

/// The whole L4 state for this node. Deterministic: the same inputs give an equal value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DesiredState {
    pub services: BTreeMap<ServicePortName, ServicePortState>,
    /// Addresses on which NodePorts are served (node addresses after `--nodeport-addresses`).
    pub node_port_addresses: Vec<IpAddr>,
    /// Pod CIDRs of the cluster (`--cluster-cidr`): traffic from elsewhere to a ClusterIP is
    /// masqueraded, as kube-proxy does.
    pub cluster_cidrs: Vec<IpNet>,
}
