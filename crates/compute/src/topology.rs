//! kube-proxy's `CategorizeEndpoints`: which endpoints this node uses for Cluster and for
//! Local traffic policy, with the serving-terminating fallback and topology hints.

use k8s_openapi::api::core::v1::Service;
use sluice_model::{Endpoint, NodeInfo};

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
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Categorized {
    pub cluster: Vec<Endpoint>,
    pub local: Vec<Endpoint>,
    pub has_any: bool,
}

/// Which hints restrict the cluster endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    All,
    SameNode,
    SameZone,
}

/// Splits `candidates` (sorted, unique) into cluster and local endpoint lists.
pub(crate) fn categorize(candidates: &[Candidate], topology: bool, node: &NodeInfo) -> Categorized {
    let mode = if topology {
        mode_from_hints(candidates, node)
    } else {
        Mode::All
    };
    let mut cluster = select(candidates, |c| c.ready && available(c, mode, node));
    if cluster.is_empty() {
        // Topology only ever narrows when a ready endpoint matches it, so an empty list here
        // means nothing is ready anywhere: fall back to endpoints still finishing requests.
        cluster = select(candidates, Candidate::serving_terminating);
    }
    // Topology never applies to Local policy; its fallback is decided on local endpoints alone.
    let mut local = select(candidates, |c| c.is_local && c.ready);
    if local.is_empty() {
        local = select(candidates, |c| c.is_local && c.serving_terminating());
    }
    let has_any = candidates
        .iter()
        .any(|c| c.ready || c.serving_terminating());
    Categorized {
        cluster,
        local,
        has_any,
    }
}

/// kube-proxy's `topologyModeFromHints`: node hints if every ready endpoint has some and one
/// names this node; else zone hints likewise; else no filtering.
fn mode_from_hints(candidates: &[Candidate], node: &NodeInfo) -> Mode {
    let ready: Vec<&Candidate> = candidates.iter().filter(|c| c.ready).collect();
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

fn select(candidates: &[Candidate], keep: impl Fn(&Candidate) -> bool) -> Vec<Endpoint> {
    candidates
        .iter()
        .filter(|c| keep(c))
        .map(|c| Endpoint {
            ip: c.ip,
            port: c.port,
            node_name: c.node_name.clone(),
            is_local: c.is_local,
            ready: c.ready,
        })
        .collect()
}
