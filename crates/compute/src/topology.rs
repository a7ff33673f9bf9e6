//! kube-proxy's `CategorizeEndpoints`: which endpoints this node uses for Cluster and for
//! Local traffic policy, with the serving-terminating fallback and topology hints.
//!
//! Categorisation runs per address family, as kube-proxy's per-family proxiers do: hints,
//! the fallback and "has any endpoint" of IPv4 never depend on IPv6 endpoints.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use sluice_model::NodeInfo;
use sluice_plan::{Backend, Family};

use crate::endpoints::Candidate;

/// `spec.trafficDistribution` values that ask for topology-aware routing.
const TOPOLOGY_DISTRIBUTIONS: [&str; 3] = ["PreferClose", "PreferSameZone", "PreferSameNode"];
const TOPOLOGY_MODE_ANNOTATION: &str = "service.kubernetes.io/topology-mode";
const LEGACY_HINTS_ANNOTATION: &str = "service.kubernetes.io/topology-aware-hints";

/// Whether the service opted into topology-aware routing (trafficDistribution, or the
/// `topology-mode` annotation, or else the legacy `topology-aware-hints` one, set to auto).
pub(crate) fn topology_requested(service: &Service) -> bool {
    let distribution = service
        .spec
        .as_ref()
        .and_then(|s| s.traffic_distribution.as_deref());
    if distribution.is_some_and(|d| TOPOLOGY_DISTRIBUTIONS.contains(&d)) {
        return true;
    }
    let annotations = service.metadata.annotations.as_ref();
    // As kube-proxy: the newer annotation wins whenever it is set, even to another value.
    let mode = annotations
        .and_then(|a| a.get(TOPOLOGY_MODE_ANNOTATION))
        .filter(|v| !v.is_empty())
        .or_else(|| annotations.and_then(|a| a.get(LEGACY_HINTS_ANNOTATION)));
    matches!(mode.map(String::as_str), Some("Auto" | "auto"))
}

/// Endpoint lists of one service port as this node uses them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Categorized {
    /// Backends for Cluster policies, both families, sorted.
    pub cluster: Vec<Backend>,
    /// This node's backends for Local policies, both families, sorted.
    pub local: Vec<Backend>,
    /// Per family (v4, v6): some endpoint is ready or serving-terminating anywhere.
    pub any: [bool; 2],
    /// Addresses of the ready (not terminating) endpoints on this node, both families: what
    /// a health check node port counts (over all ports of the service, see `service`).
    pub local_ready: BTreeSet<IpAddr>,
}

impl Categorized {
    pub fn has_any(&self, family: Family) -> bool {
        self.any[family_index(family)]
    }
}

fn family_index(family: Family) -> usize {
    match family {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

/// Which hints restrict the cluster endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    All,
    SameNode,
    SameZone,
}

/// Splits `candidates` (sorted, unique) into cluster and local backend lists, per family.
pub(crate) fn categorize(candidates: &[Candidate], topology: bool, node: &NodeInfo) -> Categorized {
    let mut out = Categorized::default();
    for family in Family::ALL {
        let of_family: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| family.contains(&c.ip))
            .collect();
        let mode = if topology {
            mode_from_hints(&of_family, node)
        } else {
            Mode::All
        };
        let mut cluster = select(&of_family, |c| c.ready && available(c, mode, node));
        if cluster.is_empty() {
            // Topology only ever narrows when a ready endpoint matches it, so an empty list here
            // means nothing is ready: fall back to endpoints still finishing requests.
            cluster = select(&of_family, |c| c.serving_terminating());
        }
        // Topology never applies to Local policy; its fallback is decided on local endpoints alone.
        let mut local = select(&of_family, |c| c.is_local && c.ready);
        out.local_ready.extend(local.iter().map(|b| b.ip));
        if local.is_empty() {
            local = select(&of_family, |c| c.is_local && c.serving_terminating());
        }
        out.any[family_index(family)] =
            of_family.iter().any(|c| c.ready || c.serving_terminating());
        out.cluster.extend(cluster);
        out.local.extend(local);
    }
    out.cluster.sort_unstable();
    out.local.sort_unstable();
    out
}

/// kube-proxy's `topologyModeFromHints`: node hints if every ready endpoint has some and one
/// names this node; else zone hints likewise; else no filtering.
fn mode_from_hints(candidates: &[&Candidate], node: &NodeInfo) -> Mode {
    let ready: Vec<&Candidate> = candidates.iter().copied().filter(|c| c.ready).collect();
    if ready.is_empty() {
        return Mode::All;
    }
    let usable = |hints: fn(&Candidate) -> &[String], wanted: &str| {
        ready.iter().all(|c| !hints(c).is_empty())
            && ready.iter().any(|c| hints(c).iter().any(|h| h == wanted))
    };
    if !node.name.is_empty() && usable(|c| &c.node_hints, &node.name) {
        return Mode::SameNode;
    }
    match node.zone.as_deref() {
        Some(zone) if usable(|c| &c.zone_hints, zone) => Mode::SameZone,
        _ => Mode::All,
    }
}

fn available(candidate: &Candidate, mode: Mode, node: &NodeInfo) -> bool {
    match mode {
        Mode::All => true,
        Mode::SameNode => candidate.node_hints.contains(&node.name),
        Mode::SameZone => node
            .zone
            .as_ref()
            .is_some_and(|zone| candidate.zone_hints.contains(zone)),
    }
}

fn select(candidates: &[&Candidate], keep: impl Fn(&Candidate) -> bool) -> Vec<Backend> {
    candidates
        .iter()
        .filter(|c| keep(c))
        .map(|c| Backend::new(c.ip, c.port))
        .collect()
}
