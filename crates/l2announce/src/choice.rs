//! Which node announces each address: rendezvous (highest-random-weight) hashing over the
//! eligible nodes. Every agent computes the same answer from the same inputs, without
//! talking to the others, and a node coming or going moves only the addresses it wins or
//! held.
//!
//! The score function is part of the protocol between agents (during a rolling upgrade old
//! and new agents must agree), so it is a fixed FNV-1a + finaliser defined here, never a
//! library hasher whose output may change between releases. A test pins its values.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;

/// Nodes with this label never announce (the well-known Kubernetes label MetalLB honours).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// A node that may announce addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCandidate {
    pub name: String,
    /// Its sluice agent renewed its heartbeat recently.
    pub agent_alive: bool,
    /// The Node's `Ready` condition is `True`.
    pub ready: bool,
    /// The Node carries [`EXCLUDE_LABEL`].
    pub excluded: bool,
}

impl NodeCandidate {
    /// From a Node object; `None` when it has no name. `agent_alive` comes from the caller
    /// (heartbeat Leases).
    pub fn from_node(node: &Node, agent_alive: bool) -> Option<Self> {
        let name = node.metadata.name.clone()?;
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let excluded = node
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(EXCLUDE_LABEL));
        Some(Self {
            name,
            agent_alive,
            ready,
            excluded,
        })
    }

    fn eligible(&self) -> bool {
        self.agent_alive && self.ready && !self.excluded
    }
}

/// Which nodes may announce one address.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Eligibility {
    /// Every eligible node (all Services on the address have `externalTrafficPolicy:
    /// Cluster`).
    #[default]
    AnyNode,
    /// Only these nodes (those with a ready local endpoint of every `Local` Service on the
    /// address).
    Only(BTreeSet<String>),
}

impl Eligibility {
    /// Both restrictions at once (for an address shared by several Services).
    pub fn and(self, other: Eligibility) -> Eligibility {
        match (self, other) {
            (Eligibility::AnyNode, e) | (e, Eligibility::AnyNode) => e,
            (Eligibility::Only(a), Eligibility::Only(b)) => {
                Eligibility::Only(a.intersection(&b).cloned().collect())
            }
        }
    }

    fn allows(&self, node: &str) -> bool {
        match self {
            Eligibility::AnyNode => true,
            Eligibility::Only(nodes) => nodes.contains(node),
        }
    }
}

/// The announcing node of every address (`None`: no node is eligible, nobody announces).
pub fn choose_announcers(
    addresses: &BTreeMap<IpAddr, Eligibility>,
    nodes: &[NodeCandidate],
) -> BTreeMap<IpAddr, Option<String>> {
    let eligible: Vec<&NodeCandidate> = nodes.iter().filter(|n| n.eligible()).collect();
    addresses
        .iter()
        .map(|(ip, eligibility)| {
            let winner = eligible
                .iter()
                .filter(|n| eligibility.allows(&n.name))
                // Highest score wins; the name breaks (astronomically unlikely) ties.
                .max_by(|a, b| (score(*ip, &a.name), &b.name).cmp(&(score(*ip, &b.name), &a.name)))
                .map(|n| n.name.clone());
            (*ip, winner)
        })
        .collect()
}

/// The addresses `node` announces, from [`choose_announcers`]' result.
pub fn announced_by(choice: &BTreeMap<IpAddr, Option<String>>, node: &str) -> BTreeSet<IpAddr> {
    choice
        .iter()
        .filter(|(_, winner)| winner.as_deref() == Some(node))
        .map(|(ip, _)| *ip)
        .collect()
}

/// Rendezvous weight of `node` for `ip`: FNV-1a 64 over the address bytes (4 or 16), a
/// 0xff separator and the node name, then the murmur3 64-bit finaliser for avalanche.
pub fn score(ip: IpAddr, node: &str) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let address: Vec<u8> = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let bytes = address.iter().chain(&[0xff]).chain(node.as_bytes());
    let mut hash = bytes.fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME)
    });
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}
