//! The L4 plan: for every frontend of every service port, what happens to a new connection,
//! decided per source class. Produced by `sluice-compute`; executed by the dataplanes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;

use crate::names::{Family, Protocol, ServiceName, ServicePortName};

/// What the agent knows about its node that shapes forwarding (node-wide, not per service).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodePlan {
    /// Node name (as in EndpointSlice `nodeName`).
    pub name: String,
    /// Addresses that serve NodePorts (node addresses inside `--nodeport-addresses`), sorted.
    pub nodeport_addresses: Vec<IpAddr>,
    /// Pod CIDRs (`--cluster-cidr`): sources inside them are [`SourceClass::Pods`].
    pub pod_cidrs: Vec<IpNet>,
}

impl NodePlan {
    /// NodePort addresses of one family.
    pub fn nodeport_addresses(&self, family: Family) -> impl Iterator<Item = &IpAddr> {
        self.nodeport_addresses
            .iter()
            .filter(move |ip| family.contains(ip))
    }
}

/// Where a frontend listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrontendAddr {
    /// One address (cluster IP, external IP, load-balancer IP).
    Ip(IpAddr),
    /// Every NodePort address of this node of that family ([`NodePlan::nodeport_addresses`]).
    /// A node address change therefore never touches a service.
    NodePorts(Family),
}

impl FrontendAddr {
    pub fn family(&self) -> Family {
        match self {
            FrontendAddr::Ip(ip) => Family::of(ip),
            FrontendAddr::NodePorts(family) => *family,
        }
    }
}

/// A frontend: the destination a client connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct FrontendKey {
    pub addr: FrontendAddr,
    pub protocol: Protocol,
    pub port: u16,
}

impl FrontendKey {
    pub fn family(&self) -> Family {
        self.addr.family()
    }
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            FrontendAddr::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port)?,
            FrontendAddr::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port)?,
            FrontendAddr::NodePorts(family) => write!(f, "nodeports-{family}:{}", self.port)?,
        }
        write!(f, "/{}", self.protocol)
    }
}

/// Which Service field a frontend comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancerIp,
}

impl FrontendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FrontendKind::ClusterIp => "cluster-ip",
            FrontendKind::NodePort => "node-port",
            FrontendKind::ExternalIp => "external-ip",
            FrontendKind::LoadBalancerIp => "load-balancer-ip",
        }
    }

    /// Reached from outside the cluster (everything but the cluster IP).
    pub fn is_external(self) -> bool {
        self != FrontendKind::ClusterIp
    }
}

/// Who opens a connection, as far as forwarding distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceClass {
    /// A source inside [`NodePlan::pod_cidrs`] (a pod on any node).
    Pods,
    /// A process of this node itself (a local source address).
    Node,
    /// Anyone else (other hosts, load balancers, clients on the Internet).
    Outside,
}

impl SourceClass {
    pub const ALL: [SourceClass; 3] = [SourceClass::Pods, SourceClass::Node, SourceClass::Outside];

    pub fn as_str(self) -> &'static str {
        match self {
            SourceClass::Pods => "pods",
            SourceClass::Node => "node",
            SourceClass::Outside => "outside",
        }
    }
}

/// One of the two backend sets of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SetName {
    /// Endpoints for `Cluster` policies (topology and terminating fallback applied).
    Cluster,
    /// This node's endpoints, for `Local` policies (terminating fallback applied).
    Local,
}

impl SetName {
    pub fn as_str(self) -> &'static str {
        match self {
            SetName::Cluster => "cluster",
            SetName::Local => "local",
        }
    }
}

/// What happens to a new connection of one source class to one frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase", tag = "action")]
pub enum Route {
    /// Send to one backend of `set` (never empty for the frontend's family), masquerading the
    /// source address when `masquerade`.
    Forward { set: SetName, masquerade: bool },
    /// Refuse at once (TCP RST / ICMP unreachable / `ECONNREFUSED`): no endpoint exists.
    Reject,
    /// Discard silently: endpoints exist but none may be used for this source.
    Drop,
}

impl Route {
    pub fn forward(set: SetName) -> Route {
        Route::Forward {
            set,
            masquerade: false,
        }
    }

    pub fn masqueraded(set: SetName) -> Route {
        Route::Forward {
            set,
            masquerade: true,
        }
    }

    pub fn set(&self) -> Option<SetName> {
        match self {
            Route::Forward { set, .. } => Some(*set),
            _ => None,
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Forward { set, masquerade } => {
                write!(f, "forward {}", set.as_str())?;
                if *masquerade {
                    f.write_str(" masquerade")?;
                }
                Ok(())
            }
            Route::Reject => f.write_str("reject"),
            Route::Drop => f.write_str("drop"),
        }
    }
}

/// How a backend is chosen for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// Uniformly at random.
    Random,
    /// By a consistent hash of the flow (Maglev where the dataplane has it), so every node
    /// picks the same backend for a flow and a backend change moves few flows.
    ConsistentHash,
}

/// One frontend of a service port and its decided routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FrontendPlan {
    pub key: FrontendKey,
    pub kind: FrontendKind,
    /// `loadBalancerSourceRanges`: when non-empty, packets from [`SourceClass::Pods`] and
    /// [`SourceClass::Outside`] whose source address is outside every range are dropped before
    /// any route applies. Node-local clients are already decided in `node` (their source
    /// address is one of the node's).
    pub allowed_sources: Vec<IpNet>,
    pub pods: Route,
    pub node: Route,
    pub outside: Route,
    pub selection: Selection,
}

impl FrontendPlan {
    pub fn route(&self, class: SourceClass) -> Route {
        match class {
            SourceClass::Pods => self.pods,
            SourceClass::Node => self.node,
            SourceClass::Outside => self.outside,
        }
    }

    /// The one non-forwarding outcome of this frontend, if any class has one. A plan never
    /// mixes `Reject` and `Drop` on one frontend ([`ServicePlan::validate`]): `Reject` means no
    /// endpoint exists at all, so it applies to every class.
    pub fn refusal(&self) -> Option<Route> {
        [self.pods, self.node, self.outside]
            .into_iter()
            .find(|r| matches!(r, Route::Reject | Route::Drop))
    }

    /// Whether any class is forwarded.
    pub fn forwards(&self) -> bool {
        [self.pods, self.node, self.outside]
            .iter()
            .any(|r| r.set().is_some())
    }
}

/// One backend: an endpoint address and target port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Backend {
    pub ip: IpAddr,
    pub port: u16,
    /// Relative share of new connections (1 for every endpoint today; the field exists so
    /// weighted distribution needs no new contract).
    pub weight: u16,
}

impl Backend {
    pub fn new(ip: IpAddr, port: u16) -> Backend {
        Backend {
            ip,
            port,
            weight: 1,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.port),
        }
    }
}

/// Everything one service port needs programmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServicePlan {
    pub name: ServicePortName,
    /// The frontends this service port owns (conflicts already resolved), sorted by key.
    pub frontends: Vec<FrontendPlan>,
    /// Backends of [`SetName::Cluster`], both families, sorted.
    pub cluster: Vec<Backend>,
    /// Backends of [`SetName::Local`], both families, sorted.
    pub local: Vec<Backend>,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout: Option<u32>,
}

impl ServicePlan {
    /// A backend set.
    pub fn set(&self, set: SetName) -> &[Backend] {
        match set {
            SetName::Cluster => &self.cluster,
            SetName::Local => &self.local,
        }
    }

    /// The backends of `set` of one family, in order.
    pub fn backends(&self, set: SetName, family: Family) -> impl Iterator<Item = &Backend> {
        self.set(set).iter().filter(move |b| family.contains(&b.ip))
    }

    /// Every backend of the plan (both sets, both families), sorted and unique.
    pub fn all_backends(&self) -> Vec<Backend> {
        let mut all: Vec<Backend> = self.cluster.iter().chain(&self.local).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Checks the invariants every dataplane relies on:
    /// * every forwarding route names a set with a backend of the frontend's family;
    /// * a frontend never mixes `Reject` with forwarding or `Drop` (no endpoint means none for
    ///   anyone);
    /// * frontends are sorted and unique, and of the service port's protocol.
    pub fn validate(&self) -> Result<(), PlanError> {
        let fail = |frontend: &FrontendKey, problem: &'static str| PlanError::Invalid {
            service: self.name.to_string(),
            frontend: frontend.to_string(),
            problem,
        };
        for pair in self.frontends.windows(2) {
            if pair[0].key >= pair[1].key {
                return Err(fail(&pair[1].key, "frontends not sorted or duplicated"));
            }
        }
        for fe in &self.frontends {
            if fe.key.protocol != self.name.protocol {
                return Err(fail(&fe.key, "protocol differs from the service port's"));
            }
            let routes = [fe.pods, fe.node, fe.outside];
            for route in routes {
                if let Some(set) = route.set()
                    && self.backends(set, fe.key.family()).next().is_none()
                {
                    return Err(fail(&fe.key, "forwards to a set without backends"));
                }
            }
            let rejects = routes.iter().filter(|r| **r == Route::Reject).count();
            if rejects != 0 && rejects != routes.len() {
                return Err(fail(&fe.key, "reject mixed with other routes"));
            }
        }
        Ok(())
    }
}

/// The health check node port of an `externalTrafficPolicy: Local` LoadBalancer service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    pub service: ServiceName,
    /// Ready endpoints on this node (terminating ones excluded, so load balancers drain a
    /// node whose pods are terminating); a dual-stack pod counts once.
    pub local_endpoints: usize,
}

/// The whole plan of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub node: Arc<NodePlan>,
    /// By name; serialised as a list (each service plan carries its name).
    #[serde(serialize_with = "values_as_list")]
    pub services: BTreeMap<ServicePortName, Arc<ServicePlan>>,
    /// Health check node ports to serve, by port.
    pub health_checks: BTreeMap<u16, HealthCheck>,
}

impl Plan {
    /// The service port owning `key`, with its frontend plan.
    pub fn frontend(&self, key: &FrontendKey) -> Option<(&ServicePlan, &FrontendPlan)> {
        self.services.values().find_map(|svc| {
            svc.frontends
                .iter()
                .find(|fe| fe.key == *key)
                .map(|fe| (svc.as_ref(), fe))
        })
    }
}

fn values_as_list<S: serde::Serializer>(
    map: &BTreeMap<ServicePortName, Arc<ServicePlan>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(map.values())
}

/// A plan that breaks an invariant (a compute bug; dataplanes refuse it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("invalid plan for {service}, frontend {frontend}: {problem}")]
    Invalid {
        service: String,
        frontend: String,
        problem: &'static str,
    },
}
