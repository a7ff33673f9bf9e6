//! Pure Service semantics: `(&Snapshot, &NodeInfo, &ComputeConfig) -> DesiredState`.
//!
//! All of kube-proxy's Service rules live here exactly once (which services and ports exist,
//! their frontends, traffic policies, session affinity, endpoint selection with terminating
//! fallback and topology hints). Dataplane backends only program the result. No I/O, no
//! clock, no randomness: equal inputs give an equal [`DesiredState`].
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
//! * `local_endpoints` is filled for every service, not only for Local policies; backends pick
//!   with [`ServicePortState::internal_endpoints`](sluice_model::ServicePortState::internal_endpoints)
//!   / `external_endpoints`.
//! * Endpoint lists of a dual-stack service hold both families; a backend pairs each cluster
//!   IP with the endpoints of its own family.
//! * LoadBalancer status IPs and source ranges are read for `type: LoadBalancer` only (stale
//!   status on a service whose type changed is ignored).

mod endpoints;
mod error;
mod node;
mod service;
mod topology;

use std::net::IpAddr;

use ipnet::IpNet;
use sluice_model::{DesiredState, NodeInfo, Snapshot};

pub use error::{Problem, Warning};
pub use node::{node_info, node_info_checked, node_port_addresses};
pub use service::{compute_service, port_endpoints};

/// Node-independent configuration of the computation (agent flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComputeConfig {
    /// `--nodeport-addresses`: NodePorts are served on node addresses inside these CIDRs;
    /// empty means on every node address.
    pub nodeport_addresses: Vec<IpNet>,
    /// `--cluster-cidr`: pod CIDRs, copied into [`DesiredState::cluster_cidrs`].
    pub cluster_cidrs: Vec<IpNet>,
}

/// Result of [`compute`]: the state to program and the problems found on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Computed {
    pub state: DesiredState,
    pub warnings: Vec<Warning>,
}

/// Computes the whole L4 desired state of this node from the cluster snapshot.
///
/// EndpointSlices are grouped by service once, so the cost is linear in services + slices.
pub fn compute(snapshot: &Snapshot, node: &NodeInfo, config: &ComputeConfig) -> Computed {
    let mut warnings = Vec::new();
    let mut state = DesiredState::default();
    let slices_by_service = snapshot.slices_by_service();
    for (key, service) in &snapshot.services {
        let slices = slices_by_service
            .get(key)
            .map(Vec::as_slice)
            .unwrap_or_default();
        state
            .services
            .extend(compute_service(key, service, slices, node, &mut warnings));
    }
    state.node_port_addresses = node_port_addresses(&node.addresses, &config.nodeport_addresses);
    state.cluster_cidrs = config.cluster_cidrs.clone();
    Computed { state, warnings }
}

/// `addresses` sorted and de-duplicated.
fn sorted_unique(mut addresses: Vec<IpAddr>) -> Vec<IpAddr> {
    addresses.sort_unstable();
    addresses.dedup();
    addresses
}
