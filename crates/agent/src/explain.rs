//! `sluice explain IP:PORT[/PROTO] [--from SRC]` and `sluice explain https://HOST/PATH`: walks
//! the live state the way the packet or request would and prints each step — frontend,
//! Service, source class and policy, candidate backends, verdict — and why it would be
//! rejected or dropped.
//!
//! With the agent running, the walk follows the plan the agent decided (from its admin
//! endpoint) and then checks that the kernel holds the matching entries; with the agent
//! stopped it follows what the kernel holds (pinned maps / nftables). Requests to the Ingress
//! proxy are walked in the agent only (its routes live in memory).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sluice_dataplane::ServiceFailure;
use sluice_plan::{
    Family, FrontendAddr, FrontendKey, FrontendKind, FrontendPlan, Plan, Protocol, Route,
    ServicePlan, SetName, SourceClass,
};

use crate::admin::{AdminClient, AdminError};
use crate::inspect::kernel::{KernelFrontend, KernelLookup, KernelRoute, KernelView};
use crate::inspect::{Output, StateFlags, parse_protocol, read_kernel};

#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    /// `IP:PORT[/tcp|udp|sctp]` (IPv6 as `[ADDR]:PORT`; TCP by default), or an `http://` or
    /// `https://` URL served by the Ingress proxy.
    pub target: String,
    /// The client's address (default: every source class: pods, this node, outside).
    #[arg(long)]
    pub from: Option<IpAddr>,
    #[command(flatten)]
    pub state: StateFlags,
}

/// A packet's destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl FromStr for Destination {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (socket, protocol) = match text.rsplit_once('/') {
            Some((socket, proto)) => (
                socket,
                parse_protocol(&proto.to_ascii_lowercase())
                    .ok_or_else(|| format!("unknown protocol {proto:?} (tcp, udp or sctp)"))?,
            ),
            None => (text, Protocol::Tcp),
        };
        let socket: SocketAddr = socket
            .parse()
            .map_err(|_| format!("{socket:?} is not IP:PORT (IPv6 as [ADDR]:PORT)"))?;
        Ok(Destination {
            ip: socket.ip(),
            port: socket.port(),
            protocol,
        })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            SocketAddr::new(self.ip, self.port),
            self.protocol
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Forward,
    Reject,
    Drop,
    NotHandled,
}

impl Outcome {
    fn of(route: Route) -> Outcome {
        match route {
            Route::Forward { .. } => Outcome::Forward,
            Route::Reject => Outcome::Reject,
            Route::Drop => Outcome::Drop,
        }
    }

    fn of_kernel(route: &KernelRoute) -> Outcome {
        match route {
            KernelRoute::Forward { .. } => Outcome::Forward,
            KernelRoute::Reject => Outcome::Reject,
            KernelRoute::Drop => Outcome::Drop,
        }
    }
}

/// The end of a walk: what happens and why. `code` is one of `forwarded`, `no-endpoints`,
/// `no-local-endpoint`, `source-range`, `not-a-nodeport-address`, `no-route`, `dropped`
/// (L4); `routed`, `no-certificate`, `no-route`, `no-endpoints`, `no-listener` (HTTP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub outcome: Outcome,
    pub code: String,
    pub reason: String,
    pub backends: Vec<String>,
}

/// One step of a walk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub what: String,
    pub detail: String,
}

/// What the kernel must hold if it executes the plan for this walk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expect {
    pub frontend: String,
    pub class: String,
    pub outcome: Outcome,
    pub backends: Vec<String>,
    pub allowed_sources: Vec<String>,
}

/// Whether the kernel holds what the walk expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelCheck {
    pub agrees: bool,
    pub detail: String,
}

/// One source class's walk to one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct L4Walk {
    pub destination: String,
    pub source: Option<IpAddr>,
    pub class: String,
    /// `plan` (the running agent's decision) or `kernel` (the agent is not running).
    pub from_state: String,
    pub steps: Vec<Step>,
    pub verdict: Verdict,
    pub expect: Option<Expect>,
    pub kernel: Option<KernelCheck>,
}

fn step(what: &str, detail: impl Into<String>) -> Step {
    Step {
        what: what.to_owned(),
        detail: detail.into(),
    }
}

fn verdict(outcome: Outcome, code: &str, reason: impl Into<String>) -> Verdict {
    Verdict {
        outcome,
        code: code.to_owned(),
        reason: reason.into(),
        backends: Vec::new(),
    }
}

fn list<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

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

fn walk_plan_class(
    walk: &mut L4Walk,
    plan: &Plan,
    refused: &[ServiceFailure],
    dst: &Destination,
    from: Option<IpAddr>,
    class: SourceClass,
) {
    let exact = FrontendKey {
        addr: FrontendAddr::Ip(dst.ip),
        protocol: dst.protocol,
        port: dst.port,
    };
    let nodeports = FrontendKey {
        addr: FrontendAddr::NodePorts(Family::of(&dst.ip)),
        ..exact
    };
    let found = plan.frontend(&exact).or_else(|| {
        let (svc, fe) = plan.frontend(&nodeports)?;
        if plan.node.nodeport_addresses.contains(&dst.ip) {
            return Some((svc, fe));
        }
        walk.steps.push(step(
            "frontend",
            format!(
                "{} is NodePort {} of service port {}",
                nodeports, dst.port, svc.name
            ),
        ));
        walk.verdict = verdict(
            Outcome::NotHandled,
            "not-a-nodeport-address",
            format!(
                "{} is not a NodePort address of node {} (NodePorts listen on: {}); the packet \
                 is not translated",
                dst.ip,
                plan.node.name,
                list(&plan.node.nodeport_addresses)
            ),
        );
        None
    });
    let Some((svc, fe)) = found else {
        if walk.verdict.code == "no-route" {
            walk.verdict = no_frontend(plan, dst);
        }
        return;
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
    if fe.key.addr != exact.addr {
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

/// One request's walk through the Ingress route table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpWalk {
    pub url: String,
    pub steps: Vec<Step>,
    pub verdict: Verdict,
}

/// `http[s]://HOST[:PORT]/PATH` → (https, host, path without query).
fn parse_url(url: &str) -> Result<(bool, String, String), String> {
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(format!("{url:?}: expected an http:// or https:// URL"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6).to_owned(),
        None => authority.split(':').next().unwrap_or(authority).to_owned(),
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    let path = path.split(['?', '#']).next().unwrap_or("/").to_owned();
    Ok((https, host.to_ascii_lowercase(), path))
}

/// Walks a request through the proxy's current route table (inside the agent).
pub fn walk_http(
    table: &sluice_ingress::RouteTable,
    config: &sluice_ingress::IngressConfig,
    url: &str,
) -> Result<HttpWalk, String> {
    let (https, host, path) = parse_url(url)?;
    let mut walk = route_request(table, config, url, https, &host, &path);
    if https
        && walk.verdict.code != "no-certificate"
        && walk.verdict.code != "no-listener"
        && matches!(tls_for(table, &host), Tls::DefaultOnly)
    {
        default_certificate_verdict(&mut walk, &host);
    }
    Ok(walk)
}

fn route_request(
    table: &sluice_ingress::RouteTable,
    config: &sluice_ingress::IngressConfig,
    url: &str,
    https: bool,
    host: &str,
    path: &str,
) -> HttpWalk {
    let mut walk = HttpWalk {
        url: url.to_owned(),
        steps: Vec::new(),
        verdict: verdict(Outcome::NotHandled, "no-route", ""),
    };
    let listener = if https {
        config.https_bind
    } else {
        config.http_bind
    };
    let Some(listener) = listener else {
        walk.verdict = verdict(
            Outcome::Reject,
            "no-listener",
            format!(
                "the {} listener is disabled",
                if https { "HTTPS" } else { "HTTP" }
            ),
        );
        return walk;
    };
    walk.steps.push(step("listener", listener.to_string()));
    if https && !tls_step(&mut walk, table, host) {
        return walk;
    }
    let normalized = match sluice_ingress::normalize_path(path) {
        Ok(p) => p.into_owned(),
        Err(err) => {
            walk.verdict = verdict(
                Outcome::Reject,
                "no-route",
                format!("400: path {path:?}: {err:?}"),
            );
            return walk;
        }
    };
    walk.steps
        .push(step("request", format!("host {host}, path {normalized}")));
    let Some(backend) = table.lookup(host, &normalized) else {
        walk.verdict = verdict(
            Outcome::Reject,
            "no-route",
            format!(
                "404: no Ingress rule matches host {host} and path {normalized}, and there is no \
                 default backend"
            ),
        );
        return walk;
    };
    let endpoints: Vec<String> = backend
        .endpoints()
        .iter()
        .map(ToString::to_string)
        .collect();
    walk.steps.push(step(
        "route",
        format!(
            "backend {backend} (Service {}, port {})",
            backend.service(),
            backend.port()
        ),
    ));
    walk.verdict = if endpoints.is_empty() {
        verdict(
            Outcome::Reject,
            "no-endpoints",
            format!("503: {backend} has no ready endpoint"),
        )
    } else {
        walk.steps.push(step("endpoints", list(&endpoints)));
        Verdict {
            outcome: Outcome::Forward,
            code: "routed".into(),
            reason: format!(
                "proxied to one of {} endpoint(s) (least outstanding requests)",
                endpoints.len()
            ),
            backends: endpoints,
        }
    };
    walk
}

/// How the TLS handshake for `host` goes.
enum Tls {
    /// A certificate naming the host.
    Own,
    /// Only the default certificate (the first one configured), which does not name it.
    DefaultOnly,
    /// No certificate at all: the handshake fails.
    None(Vec<String>),
}

fn tls_for(table: &sluice_ingress::RouteTable, host: &str) -> Tls {
    let names = crate::inspect::rows::route_rows(&table.describe()).tls;
    let own = names.iter().any(|name| {
        name == host
            || name
                .strip_prefix("*.")
                .is_some_and(|parent| host.split_once('.').is_some_and(|(_, p)| p == parent))
    });
    if own {
        Tls::Own
    } else if table.has_certificate_for(None) {
        Tls::DefaultOnly
    } else {
        Tls::None(names)
    }
}

/// The certificate step; false (and the verdict) when the handshake fails.
fn tls_step(walk: &mut HttpWalk, table: &sluice_ingress::RouteTable, host: &str) -> bool {
    match tls_for(table, host) {
        Tls::Own => walk
            .steps
            .push(step("tls", format!("certificate for SNI {host}"))),
        Tls::DefaultOnly => walk.steps.push(step(
            "tls",
            format!("no certificate for SNI {host}: the default certificate is presented"),
        )),
        Tls::None(names) => {
            walk.verdict = verdict(
                Outcome::Reject,
                "no-certificate",
                format!(
                    "no certificate for SNI {host} (certificates: {}) and no default \
                     certificate: the TLS handshake fails",
                    list(&names)
                ),
            );
            return false;
        }
    }
    true
}

/// A request over TLS for a host without its own certificate is refused by every client that
/// verifies names, whatever the route: that is the verdict (the route is still shown).
fn default_certificate_verdict(walk: &mut HttpWalk, host: &str) {
    let route = format!("{}: {}", walk.verdict.code, walk.verdict.reason);
    walk.verdict = verdict(
        Outcome::Reject,
        "no-certificate",
        format!(
            "no certificate names {host}: the default certificate is presented, which does not \
             name {host}, so clients that verify it refuse the connection (without \
             verification: {route})"
        ),
    );
}

/// This node's addresses as the kernel has them (for classifying `--from`).
fn local_addresses() -> Vec<IpAddr> {
    use sluice_hostnet::HostNetwork as _;
    sluice_hostnet::RtNetlink::new()
        .global_addresses()
        .unwrap_or_default()
}

/// `sluice explain`.
pub fn run(args: &ExplainArgs) -> anyhow::Result<()> {
    let admin = AdminClient::new(&args.state.admin_socket);
    if args.target.starts_with("http://") || args.target.starts_with("https://") {
        let walk = admin.explain_http(&args.target)?;
        print!("{}", render(args.state.output, &walk, print_http));
        return Ok(());
    }
    let dst: Destination = args.target.parse().map_err(anyhow::Error::msg)?;
    let walks = match admin.explain(&dst, args.from) {
        Ok(mut walks) => {
            match read_kernel(&args.state) {
                Ok(kernel) => cross_check(&mut walks, &kernel),
                Err(err) => {
                    for walk in &mut walks {
                        walk.kernel = Some(KernelCheck {
                            agrees: false,
                            detail: format!(
                                "cannot read the kernel: {}",
                                sluice_dataplane::error_chain(&err)
                            ),
                        });
                    }
                }
            }
            walks
        }
        Err(AdminError::NotRunning { .. }) => {
            let kernel = read_kernel(&args.state)?;
            walk_kernel(&kernel, &local_addresses(), &dst, args.from)
        }
        Err(err) => return Err(err.into()),
    };
    print!("{}", render(args.state.output, walks.as_slice(), print_l4));
    Ok(())
}

fn render<T: Serialize + ?Sized>(output: Output, value: &T, text: impl Fn(&T) -> String) -> String {
    match output {
        Output::Json => serde_json::to_string_pretty(value).unwrap_or_default() + "\n",
        Output::Table => text(value),
    }
}

fn print_steps(out: &mut String, steps: &[Step]) {
    for s in steps {
        out.push_str(&format!("  {:<13} {}\n", s.what, s.detail));
    }
}

fn print_l4(walks: &[L4Walk]) -> String {
    let mut out = String::new();
    for walk in walks {
        let from = walk
            .source
            .map(|s| format!(" from {s}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{}{from} ({} sources, from the {})\n",
            walk.destination, walk.class, walk.from_state
        ));
        print_steps(&mut out, &walk.steps);
        if let Some(check) = &walk.kernel {
            let mark = if check.agrees { "ok" } else { "MISMATCH" };
            out.push_str(&format!("  {:<13} {mark}: {}\n", "kernel", check.detail));
        }
        out.push_str(&format!(
            "  {:<13} {} ({}): {}\n\n",
            "verdict",
            outcome_word(walk.verdict.outcome),
            walk.verdict.code,
            walk.verdict.reason
        ));
    }
    out
}

fn print_http(walk: &HttpWalk) -> String {
    let mut out = format!("{}\n", walk.url);
    print_steps(&mut out, &walk.steps);
    out.push_str(&format!(
        "  {:<13} {} ({}): {}\n",
        "verdict",
        outcome_word(walk.verdict.outcome),
        walk.verdict.code,
        walk.verdict.reason
    ));
    out
}

fn outcome_word(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Forward => "FORWARD",
        Outcome::Reject => "REJECT",
        Outcome::Drop => "DROP",
        Outcome::NotHandled => "NOT HANDLED",
    }
}

#[cfg(test)]
mod tests;
