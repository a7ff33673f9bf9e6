//! The decision table: for each frontend a service port owns, what happens to a new
//! connection from pods, from the node itself and from outside. Every Kubernetes traffic rule
//! that shapes forwarding is applied here and nowhere else (see docs/plan.md for the table).

use std::net::IpAddr;

use ipnet::IpNet;
use sluice_plan::{
    Family, FrontendKey, FrontendKind, FrontendPlan, Route, Selection, ServicePlan, SetName,
};

use crate::service::PortIntent;

/// Node-wide facts the decisions depend on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context<'a> {
    /// `--cluster-cidr` is known, so pods can be told apart from other sources.
    pub pods_known: bool,
    /// Every address of this node (the source address of node-local clients).
    pub node_addresses: &'a [IpAddr],
}

/// The plan of one service port over the frontends it owns.
pub(crate) fn plan_port(
    port: &PortIntent,
    owned: &[(FrontendKey, FrontendKind)],
    ctx: Context<'_>,
) -> ServicePlan {
    ServicePlan {
        name: port.name.clone(),
        frontends: owned
            .iter()
            .map(|(key, kind)| decide_frontend(port, *key, *kind, ctx))
            .collect(),
        cluster: port.endpoints.cluster.clone(),
        local: port.endpoints.local.clone(),
        affinity_timeout: port.affinity_timeout,
    }
}

fn decide_frontend(
    port: &PortIntent,
    key: FrontendKey,
    kind: FrontendKind,
    ctx: Context<'_>,
) -> FrontendPlan {
    let family = key.family();
    let has = |set: SetName| {
        let list = match set {
            SetName::Cluster => &port.endpoints.cluster,
            SetName::Local => &port.endpoints.local,
        };
        list.iter().any(|b| family.contains(&b.ip))
    };
    let [pods, node, outside] = if !port.endpoints.has_any(family) {
        // No endpoint of this family anywhere: refuse, whoever asks.
        [Route::Reject; 3]
    } else if kind == FrontendKind::ClusterIp {
        cluster_ip_routes(port, ctx, has)
    } else {
        external_routes(port, ctx, has)
    };
    let allowed_sources = allowed_sources(port, kind, family);
    let node = node_route_after_source_ranges(node, &allowed_sources, ctx);
    FrontendPlan {
        key,
        kind,
        allowed_sources,
        pods,
        node,
        outside,
        selection: if kind.is_external() {
            Selection::ConsistentHash
        } else {
            Selection::Random
        },
    }
}

/// ClusterIP: the internal set (iTP) for everyone; sources that are not pods are masqueraded
/// when the pod CIDRs are known (kube-proxy without a local detector masquerades nobody).
/// No usable endpoint while some exist (iTP=Local, none here): drop.
fn cluster_ip_routes(
    port: &PortIntent,
    ctx: Context<'_>,
    has: impl Fn(SetName) -> bool,
) -> [Route; 3] {
    let set = if port.internal_local {
        SetName::Local
    } else {
        SetName::Cluster
    };
    if !has(set) {
        return [Route::Drop; 3];
    }
    let others = Route::Forward {
        set,
        masquerade: ctx.pods_known,
    };
    [Route::forward(set), others, others]
}

/// NodePort / externalIP / LB IP.
/// * eTP=Cluster: any endpoint, always masqueraded (the reply must come back through us).
/// * eTP=Local: clients outside keep their address and reach only this node's endpoints
///   (none here: dropped, so load balancers move on); pods and the node itself are
///   short-circuited to any endpoint (the node masqueraded: its address may not be routable
///   from the pod).
fn external_routes(
    port: &PortIntent,
    ctx: Context<'_>,
    has: impl Fn(SetName) -> bool,
) -> [Route; 3] {
    let cluster = if has(SetName::Cluster) {
        Route::masqueraded(SetName::Cluster)
    } else {
        Route::Drop
    };
    if !port.external_local {
        return [cluster, cluster, cluster];
    }
    let outside = if has(SetName::Local) {
        Route::forward(SetName::Local)
    } else {
        Route::Drop
    };
    let pods = match (ctx.pods_known, has(SetName::Cluster)) {
        (true, true) => Route::forward(SetName::Cluster),
        (true, false) => Route::Drop,
        // Pods cannot be recognised: they are treated like any outside client.
        (false, _) => outside,
    };
    [pods, cluster, outside]
}

/// `loadBalancerSourceRanges` apply to LoadBalancer IPs only, per family as kube-proxy's
/// per-family proxiers do (ranges of the other family alone restrict nothing).
fn allowed_sources(port: &PortIntent, kind: FrontendKind, family: Family) -> Vec<IpNet> {
    if kind != FrontendKind::LoadBalancerIp {
        return Vec::new();
    }
    port.source_ranges
        .iter()
        .filter(|net| family.contains(&net.addr()))
        .copied()
        .collect()
}

/// Node-local clients use one of the node's addresses as source: they are allowed through
/// source ranges only when some node address is inside them. (`Reject` stays: with no
/// endpoint at all nobody is served, and a refusal is the clearer answer.)
fn node_route_after_source_ranges(route: Route, allowed: &[IpNet], ctx: Context<'_>) -> Route {
    let node_allowed = allowed.is_empty()
        || ctx
            .node_addresses
            .iter()
            .any(|ip| allowed.iter().any(|net| net.contains(ip)));
    match route {
        Route::Forward { .. } if !node_allowed => Route::Drop,
        other => other,
    }
}
