//! L4 walks: through the running agent's plan, or through what the kernel holds, and the
//! check of a plan walk against the kernel.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use sluice_dataplane::ServiceFailure;
use sluice_plan::{
    Family, FrontendAddr, FrontendKey, FrontendKind, FrontendPlan, Plan, Route, ServicePlan,
    SetName, SourceClass,
};

use super::{Destination, Expect, KernelCheck, L4Walk, Outcome, Verdict, list, step, verdict};
use crate::inspect::kernel::{KernelFrontend, KernelLookup, KernelRoute, KernelView};

/// The source classes to walk, each with why.
fn classes(
    from: Option<IpAddr>,
    pod_cidrs: &[IpNet],
    node_addresses: &[IpAddr],
) -> Vec<(SourceClass, String)> {
    let Some(src) = from else {
        return SourceClass::ALL
            .iter()
            .map(|c| (*c, "no --from: each source class in turn".to_owned()))
            .collect();
    };
    if let Some(cidr) = pod_cidrs.iter().find(|c| c.contains(&src)) {
        return vec![(
            SourceClass::Pods,
            format!("{src} is inside the pod CIDR {cidr} (--cluster-cidr)"),
        )];
    }
    if src.is_loopback() || node_addresses.contains(&src) {
        return vec![(
            SourceClass::Node,
            format!("{src} is an address of this node"),
        )];
    }
    vec![(
        SourceClass::Outside,
        format!("{src} is neither a pod address nor one of this node's"),
    )]
}

/// Walks the running agent's plan (done inside the agent, for the admin endpoint).
pub fn walk_plan(
    plan: &Plan,
    node_addresses: &[IpAddr],
    refused: &[ServiceFailure],
    dst: &Destination,
    from: Option<IpAddr>,
) -> Vec<L4Walk> {
    classes(from, &plan.node.pod_cidrs, node_addresses)
        .into_iter()
        .map(|(class, why)| {
            let mut walk = L4Walk {
                destination: dst.to_string(),
                source: from,
                class: class.as_str().to_owned(),
                from_state: "plan".into(),
                steps: vec![step("source", format!("{}: {why}", class.as_str()))],
                verdict: verdict(Outcome::NotHandled, "no-route", ""),
                expect: None,
                kernel: None,
            };
            walk_plan_class(&mut walk, plan, refused, dst, from, class);
            walk
        })
        .collect()
}

/// Where a destination leads in the plan.
enum PlanLookup<'a> {
    Found(&'a ServicePlan, &'a FrontendPlan),
    /// The port is a NodePort of this service port, but the address does not serve NodePorts.
    NotNodePortAddress(&'a ServicePlan, FrontendKey),
    None,
}

fn find_frontend<'a>(plan: &'a Plan, dst: &Destination) -> PlanLookup<'a> {
    let exact = FrontendKey {
        addr: FrontendAddr::Ip(dst.ip),
        protocol: dst.protocol,
        port: dst.port,
    };
    if let Some((svc, fe)) = plan.frontend(&exact) {
        return PlanLookup::Found(svc, fe);
    }
    let nodeports = FrontendKey {
        addr: FrontendAddr::NodePorts(Family::of(&dst.ip)),
        ..exact
    };
    match plan.frontend(&nodeports) {
        Some((svc, fe)) if plan.node.nodeport_addresses.contains(&dst.ip) => {
            PlanLookup::Found(svc, fe)
        }
        Some((svc, _)) => PlanLookup::NotNodePortAddress(svc, nodeports),
        None => PlanLookup::None,
    }
}

fn walk_plan_class(
    walk: &mut L4Walk,
    plan: &Plan,
    refused: &[ServiceFailure],
    dst: &Destination,
    from: Option<IpAddr>,
    class: SourceClass,
) {
    let (svc, fe) = match find_frontend(plan, dst) {
        PlanLookup::Found(svc, fe) => (svc, fe),
        PlanLookup::NotNodePortAddress(svc, key) => {
            walk.steps.push(step(
                "frontend",
                format!(
                    "{key} is NodePort {} of service port {}",
                    dst.port, svc.name
                ),
            ));
            walk.verdict = verdict(
                Outcome::NotHandled,
                "not-a-nodeport-address",
                format!(
                    "{} is not a NodePort address of node {} (NodePorts listen on: {}); the \
                     packet is not translated",
                    dst.ip,
                    plan.node.name,
                    list(&plan.node.nodeport_addresses)
                ),
            );
            return;
        }
        PlanLookup::None => {
            walk.verdict = no_frontend(plan, dst);
            return;
        }
    };
    walk.steps.push(step(
        "frontend",
        format!(
            "{} ({}) of service port {}",
            fe.key,
            fe.kind.as_str(),
            svc.name
        ),
    ));
    if fe.key.addr != FrontendAddr::Ip(dst.ip) {
        walk.steps.push(step(
            "nodeport",
            format!(
                "{} is a NodePort address of node {}",
                dst.ip, plan.node.name
            ),
        ));
    }
    if let Some(failure) = refused.iter().find(|f| f.service == svc.name) {
        walk.steps.push(step(
            "warning",
            format!(
                "the dataplane refused this service port at the last sync ({}); it is retried",
                failure.reason
            ),
        ));
    }
    decide_plan_route(walk, plan, svc, fe, from, class);
}

/// No frontend at `dst`: why (same address on other ports, or nothing at all).
fn no_frontend(plan: &Plan, dst: &Destination) -> Verdict {
    let same_ip: Vec<String> = plan
        .services
        .values()
        .flat_map(|s| &s.frontends)
        .filter(|fe| fe.key.addr == FrontendAddr::Ip(dst.ip))
        .map(|fe| fe.key.to_string())
        .collect();
    let reason = if same_ip.is_empty() {
        format!(
            "no Service frontend at {dst}: the packet is not translated and goes wherever the \
             routing table sends it"
        )
    } else {
        format!(
            "{} is a frontend only for {}; nothing serves {dst}",
            dst.ip,
            list(same_ip)
        )
    };
    verdict(Outcome::NotHandled, "no-route", reason)
}

fn decide_plan_route(
    walk: &mut L4Walk,
    plan: &Plan,
    svc: &ServicePlan,
    fe: &FrontendPlan,
    from: Option<IpAddr>,
    class: SourceClass,
) {
    let family = fe.key.family();
    walk.steps.push(step(
        "selection",
        match fe.selection {
            sluice_plan::Selection::Random => "a backend at random".to_owned(),
            sluice_plan::Selection::ConsistentHash => {
                "a backend by consistent hash of the flow (Maglev on the eBPF external path)".into()
            }
        },
    ));
    if let Some(timeout) = svc.affinity_timeout {
        walk.steps.push(step(
            "affinity",
            format!("sessionAffinity ClientIP: a client keeps its backend for {timeout}s"),
        ));
    }
    let route = fe.route(class);
    let backends: Vec<String> = route
        .set()
        .map(|set| svc.backends(set, family).map(ToString::to_string).collect())
        .unwrap_or_default();
    walk.expect = Some(Expect {
        frontend: fe.key.to_string(),
        class: class.as_str().to_owned(),
        outcome: Outcome::of(route),
        backends: backends.clone(),
        allowed_sources: fe.allowed_sources.iter().map(ToString::to_string).collect(),
    });
    if source_range_drop(walk, &fe.allowed_sources, from, class) {
        return;
    }
    walk.steps
        .push(step("route", format!("{}: {route}", class.as_str())));
    walk.verdict = match route {
        Route::Forward { set, masquerade } => {
            forward_verdict(walk, set.as_str(), masquerade, backends)
        }
        Route::Reject => no_endpoints(&svc.name.to_string()),
        Route::Drop => plan_drop_reason(plan, svc, fe, class),
    };
}

/// Source ranges: records the step; true (and the verdict) when `from` is outside them.
fn source_range_drop(
    walk: &mut L4Walk,
    allowed: &[IpNet],
    from: Option<IpAddr>,
    class: SourceClass,
) -> bool {
    if allowed.is_empty() {
        return false;
    }
    walk.steps.push(step(
        "source ranges",
        format!("loadBalancerSourceRanges {}", list(allowed)),
    ));
    let Some(src) = from else {
        return false;
    };
    if class == SourceClass::Node || allowed.iter().any(|net| net.contains(&src)) {
        return false;
    }
    walk.verdict = verdict(
        Outcome::Drop,
        "source-range",
        format!(
            "source {src} is outside loadBalancerSourceRanges ({}): dropped before any route",
            list(allowed)
        ),
    );
    true
}

fn forward_verdict(
    walk: &mut L4Walk,
    set: &str,
    masquerade: bool,
    backends: Vec<String>,
) -> Verdict {
    walk.steps.push(step(
        "backends",
        format!("{} set, {}: {}", set, backends.len(), list(&backends)),
    ));
    if masquerade {
        walk.steps.push(step(
            "masquerade",
            "the source address is rewritten to this node's (replies return through it)",
        ));
    }
    Verdict {
        outcome: Outcome::Forward,
        code: "forwarded".into(),
        reason: format!("forwarded to one of {} backend(s)", backends.len()),
        backends,
    }
}

fn no_endpoints(service: &str) -> Verdict {
    verdict(
        Outcome::Reject,
        "no-endpoints",
        format!(
            "{service} has no endpoint (none ready, serving or terminating): connections are \
             refused at once (TCP reset / ICMP port unreachable)"
        ),
    )
}

/// Why the plan drops this class: the node held to source ranges, or no local endpoint.
fn plan_drop_reason(
    plan: &Plan,
    svc: &ServicePlan,
    fe: &FrontendPlan,
    class: SourceClass,
) -> Verdict {
    let family = fe.key.family();
    let local = svc.backends(SetName::Local, family).count();
    let cluster = svc.backends(SetName::Cluster, family).count();
    if class == SourceClass::Node && !fe.allowed_sources.is_empty() && local + cluster > 0 {
        return verdict(
            Outcome::Drop,
            "source-range",
            format!(
                "this node's own addresses are outside loadBalancerSourceRanges ({})",
                list(&fe.allowed_sources)
            ),
        );
    }
    if local == 0 {
        let policy = if fe.kind == FrontendKind::ClusterIp {
            "internalTrafficPolicy: Local"
        } else {
            "externalTrafficPolicy: Local"
        };
        return verdict(
            Outcome::Drop,
            "no-local-endpoint",
            format!(
                "{policy}: only endpoints on node {} may answer and it has none ({cluster} \
                 endpoint(s) on other nodes); dropped",
                plan.node.name
            ),
        );
    }
    verdict(
        Outcome::Drop,
        "dropped",
        "dropped as the plan decides for this source",
    )
}

/// Walks what the kernel holds (the agent is not running).
pub fn walk_kernel(
    view: &KernelView,
    node_addresses: &[IpAddr],
    dst: &Destination,
    from: Option<IpAddr>,
) -> Vec<L4Walk> {
    classes(from, &view.cluster_cidrs, node_addresses)
        .into_iter()
        .map(|(class, why)| {
            let mut walk = L4Walk {
                destination: dst.to_string(),
                source: from,
                class: class.as_str().to_owned(),
                from_state: "kernel".into(),
                steps: vec![step("source", format!("{}: {why}", class.as_str()))],
                verdict: verdict(Outcome::NotHandled, "no-route", ""),
                expect: None,
                kernel: Some(KernelCheck {
                    agrees: true,
                    detail: format!(
                        "read from the {} dataplane (agent not running)",
                        view.dataplane
                    ),
                }),
            };
            walk_kernel_class(&mut walk, view, node_addresses, dst, from, class);
            walk
        })
        .collect()
}

fn walk_kernel_class(
    walk: &mut L4Walk,
    view: &KernelView,
    node_addresses: &[IpAddr],
    dst: &Destination,
    from: Option<IpAddr>,
    class: SourceClass,
) {
    let fe = match view.lookup(dst.ip, dst.protocol, dst.port) {
        KernelLookup::Found(fe) => fe,
        KernelLookup::NotNodePortAddress(fe) => {
            walk.steps
                .push(step("frontend", format!("{} in {}", fe.key, fe.location)));
            walk.verdict = verdict(
                Outcome::NotHandled,
                "not-a-nodeport-address",
                format!(
                    "{} is not a NodePort address of this node (NodePorts listen on: {})",
                    dst.ip,
                    list(&view.nodeport_addresses)
                ),
            );
            return;
        }
        // eBPF keeps one entry per NodePort address: a port served on this node's own
        // addresses but not on the destination is a NodePort missing that address.
        KernelLookup::OtherAddresses(others) => {
            let on_this_node = view.frontends.iter().any(|fe| {
                fe.key.port == dst.port
                    && fe.key.protocol == dst.protocol
                    && matches!(fe.key.addr, FrontendAddr::Ip(ip) if node_addresses.contains(&ip))
            });
            let code = if on_this_node {
                "not-a-nodeport-address"
            } else {
                "no-route"
            };
            walk.verdict = verdict(
                Outcome::NotHandled,
                code,
                format!(
                    "{}/{} is served on {} but not on {}",
                    dst.port,
                    dst.protocol,
                    list(others),
                    dst.ip
                ),
            );
            return;
        }
        KernelLookup::OtherPorts(others) => {
            walk.verdict = verdict(
                Outcome::NotHandled,
                "no-route",
                format!(
                    "{} is a frontend only for {}; nothing serves {dst}",
                    dst.ip,
                    list(others)
                ),
            );
            return;
        }
        KernelLookup::None => {
            walk.verdict = verdict(
                Outcome::NotHandled,
                "no-route",
                format!("no frontend at {dst} in the kernel: the packet is not translated"),
            );
            return;
        }
    };
    decide_kernel_route(walk, fe, from, class);
}

fn decide_kernel_route(
    walk: &mut L4Walk,
    fe: &KernelFrontend,
    from: Option<IpAddr>,
    class: SourceClass,
) {
    let name = fe.service.clone().unwrap_or_else(|| {
        "(unnamed: the eBPF maps carry no Service names; start the agent for them)".into()
    });
    walk.steps.push(step(
        "frontend",
        format!("{} in {} of service port {name}", fe.key, fe.location),
    ));
    if !fe.flags.is_empty() {
        walk.steps.push(step("flags", fe.flags.join(", ")));
    }
    if source_range_drop(walk, &fe.allowed_sources, from, class) {
        return;
    }
    let route = fe.route(class);
    walk.steps
        .push(step("route", format!("{}: {route}", class.as_str())));
    walk.verdict = match route {
        KernelRoute::Forward {
            backends,
            masquerade,
        } => {
            let backends = backends.iter().map(ToString::to_string).collect();
            forward_verdict(walk, "programmed", *masquerade, backends)
        }
        KernelRoute::Reject => no_endpoints(fe.service.as_deref().unwrap_or("the Service")),
        KernelRoute::Drop => {
            let node_in_ranges = class == SourceClass::Node && !fe.allowed_sources.is_empty();
            if node_in_ranges && !fe.outside.backends().is_empty() {
                verdict(
                    Outcome::Drop,
                    "source-range",
                    format!(
                        "this node's own addresses are outside the source ranges ({})",
                        list(&fe.allowed_sources)
                    ),
                )
            } else {
                verdict(
                    Outcome::Drop,
                    "no-local-endpoint",
                    "no endpoint may answer this source here: the traffic policy is Local and \
                     this node has no endpoint of the Service; dropped",
                )
            }
        }
    };
}

/// Checks each walk's expectation against the kernel.
pub fn cross_check(walks: &mut [L4Walk], kernel: &KernelView) {
    for walk in walks {
        let Some(expect) = &walk.expect else { continue };
        walk.kernel = Some(check_one(expect, kernel, walk.destination.parse().ok()));
    }
}

fn check_one(expect: &Expect, kernel: &KernelView, dst: Option<Destination>) -> KernelCheck {
    let Some(dst) = dst else {
        return KernelCheck {
            agrees: false,
            detail: "cannot parse the destination".into(),
        };
    };
    let Some(fe) = kernel.frontend(dst.ip, dst.protocol, dst.port) else {
        return KernelCheck {
            agrees: false,
            detail: format!(
                "the {} dataplane has no entry for {}: not programmed (yet)",
                kernel.dataplane, expect.frontend
            ),
        };
    };
    let class = SourceClass::ALL
        .into_iter()
        .find(|c| c.as_str() == expect.class)
        .unwrap_or(SourceClass::Outside);
    let route = fe.route(class);
    let have: BTreeSet<String> = route.backends().iter().map(ToString::to_string).collect();
    let want: BTreeSet<String> = expect.backends.iter().cloned().collect();
    let sources: Vec<String> = fe.allowed_sources.iter().map(ToString::to_string).collect();
    let compared = crate::inspect::compared_classes(&kernel.dataplane).contains(&class);
    let agrees = !compared
        || (Outcome::of_kernel(route) == expect.outcome
            && have == want
            && sources == expect.allowed_sources);
    let mut detail = format!("{}: {} for {}", fe.location, route, class.as_str());
    if !have.is_empty() {
        detail.push_str(&format!(" [{}]", list(&have)));
    }
    if !compared {
        detail.push_str(
            " (the eBPF external path serves pods of other nodes with the outside route)",
        );
    } else if !agrees {
        detail.push_str(&format!(
            "; the plan says {:?} [{}] sources [{}]: the kernel differs",
            expect.outcome,
            list(&want),
            list(&expect.allowed_sources)
        ));
    }
    KernelCheck { agrees, detail }
}
