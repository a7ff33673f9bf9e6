//! Pure Service semantics: Kubernetes objects in, the decided [`Plan`](sluice_plan::Plan) out.
//!
//! All of kube-proxy's Service rules live here exactly once: which services and ports exist,
//! their frontends, conflicts between Services, traffic policies, session affinity, endpoint
//! selection with terminating fallback and topology hints, source ranges, masquerading, health
//! check counts and stale UDP flows. Dataplanes only translate the result. No I/O, no clock, no
//! randomness: equal inputs give an equal plan.
//!
//! * [`Planner`] keeps a node's plan and recomputes only the Services a [`ChangeSet`] affects,
//!   returning a [`PlanDelta`](sluice_plan::PlanDelta).
//! * [`compute`] plans a snapshot from scratch (tests, `sluice plan`).
//!
//! Problems in single objects never fail the computation: they become [`Warning`]s naming the
//! object, and only the bad part is skipped.
//!
//! Where sluice deliberately differs from kube-proxy (all order-independence or clarity):
//!
//! * Topology hints are honoured only when the service asks for them
//!   (`spec.trafficDistribution` PreferClose/PreferSameZone/PreferSameNode, or the
//!   `service.kubernetes.io/topology-mode` / legacy `topology-aware-hints` annotation set to
//!   `Auto`); current kube-proxy trusts hints whenever the slices carry them. When requested,
//!   node hints are tried first, then zone hints, exactly as kube-proxy's `topologyModeFromHints`.
//! * An (ip, port) found more than once (e.g. in two slices while an endpoint moves) keeps its
//!   best copy (ready, then serving-terminating) instead of the copy in the first slice, so
//!   the result never depends on slice names or order.
//! * Frontend conflicts (two Services claiming one IP and port) are resolved by age, not by
//!   which object the proxy saw last ([`conflicts`] module docs).
//! * externalIPs equal to a node address are refused unless allowed (the CVE-2020-8554 class;
//!   kube-proxy leaves this to an admission plugin).
//! * externalIPs and LoadBalancer IPs that are unspecified, loopback, link-local or link-local
//!   multicast are refused, as the API server refuses such externalIPs (a `dir:` source has
//!   no API server to refuse them).
//! * Node-local clients are held to `loadBalancerSourceRanges` through the node's own addresses.
//! * LoadBalancer status IPs and source ranges are read for `type: LoadBalancer` only (stale
//!   status on a service whose type changed is ignored).

#![forbid(unsafe_code)]

mod conflicts;
mod decide;
mod endpoints;
mod error;
mod fields;
mod node;
mod planner;
mod service;
mod stale;
mod topology;

use std::net::IpAddr;

use ipnet::IpNet;
use sluice_model::{NodeInfo, Snapshot};
use sluice_plan::Plan;

pub use error::{Problem, Warning};
pub use fields::{DEFAULT_AFFINITY_TIMEOUT, SOURCE_RANGES_ANNOTATION};
pub use node::{node_info, node_info_checked, node_port_addresses};
pub use planner::Planner;
pub use service::{SERVICE_PROXY_NAME_LABEL, port_endpoints};
pub use sluice_model::ChangeSet;
pub use stale::stale_after_restore;

/// Node-independent configuration of the computation (agent flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputeConfig {
    /// `--nodeport-addresses`: NodePorts are served on node addresses inside these CIDRs;
    /// empty means on every node address.
    pub nodeport_addresses: Vec<IpNet>,
    /// `--cluster-cidr`: pod CIDRs; sources inside them are pods.
    pub cluster_cidrs: Vec<IpNet>,
    /// `--service-proxy-name`: Services labelled `service.kubernetes.io/service-proxy-name`
    /// are handled only when the label names this value.
    pub service_proxy_name: Option<String>,
    /// `--allow-external-ips-on-node-addresses`: accept externalIPs that are node addresses.
    pub allow_external_ips_on_node_addresses: bool,
    /// Ports of this agent's own listeners (the Ingress proxy): NodePorts on them are refused.
    pub reserved_node_ports: Vec<u16>,
    /// The cluster's node port range (`--service-node-port-range` of the API server); NodePorts
    /// outside it are reported (a manifest directory is not validated by an API server).
    pub node_port_range: Option<(u16, u16)>,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        ComputeConfig {
            nodeport_addresses: Vec::new(),
            cluster_cidrs: Vec::new(),
            service_proxy_name: None,
            allow_external_ips_on_node_addresses: false,
            reserved_node_ports: Vec::new(),
            node_port_range: Some((30000, 32767)),
        }
    }
}

/// Result of [`compute`]: the plan and the problems found on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Computed {
    pub plan: Plan,
    pub warnings: Vec<Warning>,
}

/// Plans a whole snapshot from scratch (equal to what a [`Planner`] holds after any sequence
/// of updates ending in the same snapshot).
pub fn compute(snapshot: &Snapshot, node: &NodeInfo, config: &ComputeConfig) -> Computed {
    let (plan, warnings) = planner::plan_all(snapshot, node, config);
    Computed { plan, warnings }
}

/// `addresses` sorted and de-duplicated.
fn sorted_unique(mut addresses: Vec<IpAddr>) -> Vec<IpAddr> {
    addresses.sort_unstable();
    addresses.dedup();
    addresses
}
