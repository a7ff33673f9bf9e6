//! Which addresses this node answers ARP/NDP for (pure): the assigned addresses of
//! `l2Announce` pools, who may announce each (eTP=Local: nodes with a ready local endpoint),
//! which nodes are candidates (ready, agent alive), and the rendezvous choice.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use sluice_l2announce::{Eligibility, NodeCandidate, announced_by, choose_announcers};
use sluice_lbipam::Allocation;
use sluice_model::{ObjectKey, Snapshot};

/// What the L2 side needs from one allocation run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct L2Input {
    /// Every address to announce, with the nodes that may announce it.
    pub targets: BTreeMap<IpAddr, Eligibility>,
    /// This node's InternalIP/ExternalIP addresses (its Node object): the responders answer
    /// on the interfaces that carry them.
    pub node_addresses: Vec<IpAddr>,
}

/// Which nodes may announce, as far as this agent can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Membership {
    /// Cannot judge (before the first lists, or while our own heartbeat is not held, e.g.
    /// the API server is unreachable): keep announcing what we announced.
    #[default]
    Unknown,
    Known(Vec<NodeCandidate>),
}

/// The addresses to announce: assigned from an `l2Announce` pool **and** already in the
/// Service's status (so the datapath forwards them everywhere), each with the nodes allowed
/// to announce it: any node for `externalTrafficPolicy: Cluster`; for `Local`, only nodes
/// with a ready endpoint of the Service (of every such Service, for a shared address).
pub fn l2_targets(allocation: &Allocation, snapshot: &Snapshot) -> BTreeMap<IpAddr, Eligibility> {
    let slices = snapshot.slices_by_service();
    let mut targets = BTreeMap::new();
    for (ip, users) in allocation.l2_addresses() {
        let in_status = users
            .iter()
            .any(|(key, _)| status_ips(snapshot, key).contains(&ip));
        if !in_status {
            continue;
        }
        let eligibility = users
            .iter()
            .map(|(key, local)| match local {
                false => Eligibility::AnyNode,
                true => Eligibility::Only(ready_endpoint_nodes(slices.get(key))),
            })
            .fold(Eligibility::AnyNode, Eligibility::and);
        targets.insert(ip, eligibility);
    }
    targets
}

fn status_ips(snapshot: &Snapshot, key: &ObjectKey) -> Vec<IpAddr> {
    let Some(service) = snapshot.services.get(key) else {
        return Vec::new();
    };
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    ingress
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

/// Nodes with a ready endpoint in these slices (`ready` unset counts as ready, as the API
/// documents).
fn ready_endpoint_nodes(
    slices: Option<&Vec<&Arc<sluice_model::EndpointSlice>>>,
) -> BTreeSet<String> {
    slices
        .into_iter()
        .flatten()
        .flat_map(|slice| slice.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .filter_map(|e| e.node_name.as_deref().map(str::to_owned))
        .collect()
}

/// `--source k8s`: every Node, live when its agent's heartbeat is; `Unknown` until both are
/// listed and while our own heartbeat is not held (then the API server, or our link to it,
/// is in trouble and "everybody else is dead" would be a wrong conclusion).
pub fn cluster_membership<'a>(
    nodes: Option<impl IntoIterator<Item = &'a Node>>,
    live: Option<&BTreeSet<String>>,
    own_heartbeat_held: bool,
) -> Membership {
    let (Some(nodes), Some(live), true) = (nodes, live, own_heartbeat_held) else {
        return Membership::Unknown;
    };
    let candidates = nodes
        .into_iter()
        .filter_map(|node| {
            let name = node.metadata.name.as_deref()?;
            NodeCandidate::from_node(node, live.contains(name))
        })
        .collect();
    Membership::Known(candidates)
}

/// `--source dir:`: no heartbeats; every Node in the directory counts as alive, and a Node
/// without a `Ready` condition (hand-written manifests) as ready.
pub fn directory_membership<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Membership {
    let candidates = nodes
        .into_iter()
        .filter_map(|node| {
            let mut candidate = NodeCandidate::from_node(node, true)?;
            candidate.ready |= !has_ready_condition(node);
            Some(candidate)
        })
        .collect();
    Membership::Known(candidates)
}

fn has_ready_condition(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready"))
}

/// The addresses `me` announces. With `Unknown` membership: what we announced before, minus
/// addresses that are no longer targets (a deleted Service's address goes at once).
pub fn decide(
    targets: &BTreeMap<IpAddr, Eligibility>,
    membership: &Membership,
    me: &str,
    before: &BTreeSet<IpAddr>,
) -> BTreeSet<IpAddr> {
    match membership {
        Membership::Unknown => before
            .iter()
            .filter(|ip| targets.contains_key(ip))
            .copied()
            .collect(),
        Membership::Known(candidates) => announced_by(&choose_announcers(targets, candidates), me),
    }
}

/// The InternalIP/ExternalIP addresses of the Node object named `node`.
pub fn node_addresses(snapshot: &Snapshot, node: &str) -> Vec<IpAddr> {
    let Some(node) = snapshot.nodes.get(&ObjectKey::cluster(node)) else {
        return Vec::new();
    };
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    addresses
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests;
