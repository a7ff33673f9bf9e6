//! Pure rendering of the desired state into nftables objects for one address family.
//!
//! Layout (per family table `ip sluice` / `ip6 sluice`):
//! * verdict map `service-ips`: `addr . proto . port` of cluster, external and LB IPs →
//!   `goto svc-*` (cluster IPs) or `goto ext-*` (external frontends);
//! * verdict map `service-nodeports`: `proto . port` → `goto ext-*`, for destinations in the
//!   `nodeport-ips` set;
//! * `no-endpoint-services` / `no-endpoint-nodeports`: frontends of services without usable
//!   endpoints → `goto reject-chain` (no endpoint anywhere) or `drop` (endpoints exist but none
//!   is usable from this node), checked in the filter hooks;
//! * `firewall-ips`: LB IPs with `loadBalancerSourceRanges` → `goto fw-*`;
//! * per service port: `svc-*` (ClusterIP entry: masquerade traffic from outside the pod
//!   CIDRs), `ext-*` (external entry: masquerade for eTP=Cluster; eTP=Local short-circuits pods
//!   and the node to the cluster set and sends everyone else to local endpoints only),
//!   `cl-*` / `lo-*` (affinity, then a uniform random choice over the cluster / local endpoints);
//! * per endpoint: `ep-*` (hairpin masquerade, affinity update, DNAT).
//!
//! Chain names carry a stable hash plus a readable suffix, like kube-proxy's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use sluice_model::{DesiredState, Endpoint, ServicePortName, ServicePortState, TrafficPolicy};

/// Address family of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    /// nftables table family keyword.
    pub fn table_family(self) -> &'static str {
        match self {
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip6",
        }
    }

    /// Payload keyword for address matches (`ip saddr`, `ip6 saddr`).
    pub fn addr_keyword(self) -> &'static str {
        self.table_family()
    }

    pub fn addr_type(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4_addr",
            Family::Ipv6 => "ipv6_addr",
        }
    }

    pub fn contains(self, ip: &IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::Ipv4, IpAddr::V4(_)) | (Family::Ipv6, IpAddr::V6(_))
        )
    }

    fn contains_net(self, net: &IpNet) -> bool {
        self.contains(&net.addr())
    }
}

/// Names of the verdict maps and sets whose elements are rendered per service.
pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
pub const FIREWALL_IPS: &str = "firewall-ips";
pub const NODEPORT_IPS: &str = "nodeport-ips";
pub const CLUSTER_CIDRS: &str = "cluster-cidrs";

/// Every map/set whose elements come from the desired state: (name, `map`/`set`, type body).
pub fn element_containers(family: Family) -> [(&'static str, &'static str, String); 7] {
    let addr = family.addr_type();
    let frontend_map = format!("{{ type {addr} . inet_proto . inet_service : verdict ; }}");
    let port_map = "{ type inet_proto . inet_service : verdict ; }".to_owned();
    [
        (SERVICE_IPS, "map", frontend_map.clone()),
        (SERVICE_NODEPORTS, "map", port_map.clone()),
        (NO_ENDPOINT_SERVICES, "map", frontend_map.clone()),
        (NO_ENDPOINT_NODEPORTS, "map", port_map),
        (FIREWALL_IPS, "map", frontend_map),
        (NODEPORT_IPS, "set", format!("{{ type {addr} ; }}")),
        (
            CLUSTER_CIDRS,
            "set",
            format!("{{ type {addr} ; flags interval ; }}"),
        ),
    ]
}

/// Everything of one family that depends on the desired state (the static base chains are in
/// [`crate::transaction`]). Ordered collections keep the output deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    /// Per-service and per-endpoint chains: name → rules.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Map or set name → element key → element value (`None` for plain set elements).
    pub elements: BTreeMap<&'static str, BTreeMap<String, Option<String>>>,
    /// Affinity sets: name → timeout in seconds.
    pub affinity_sets: BTreeMap<String, u32>,
}

/// Renders the desired state for one address family.
pub fn render(desired: &DesiredState, family: Family) -> Rendered {
    let mut out = Rendered::default();
    for (container, _, _) in element_containers(family) {
        out.elements.insert(container, BTreeMap::new());
    }
    let cidrs: Vec<IpNet> = desired
        .cluster_cidrs
        .iter()
        .filter(|c| family.contains_net(c))
        .copied()
        .collect();
    for cidr in &cidrs {
        out.elements
            .get_mut(CLUSTER_CIDRS)
            .expect("declared")
            .insert(cidr.to_string(), None);
    }
    for ip in desired
        .node_port_addresses
        .iter()
        .filter(|ip| family.contains(ip))
    {
        out.elements
            .get_mut(NODEPORT_IPS)
            .expect("declared")
            .insert(ip.to_string(), None);
    }
    for (name, state) in &desired.services {
        ServiceRenderer {
            family,
            name,
            state,
            cidrs: &cidrs,
            out: &mut out,
        }
        .render();
    }
    out
}

struct ServiceRenderer<'a> {
    family: Family,
    name: &'a ServicePortName,
    state: &'a ServicePortState,
    cidrs: &'a [IpNet],
    out: &'a mut Rendered,
}

impl ServiceRenderer<'_> {
    fn render(mut self) {
        let fam = self.family;
        let state = self.state;
        let proto = self.name.protocol.as_str();
        let cluster_ips: Vec<&IpAddr> = state
            .cluster_ips
            .iter()
            .filter(|ip| fam.contains(ip))
            .collect();
        let external_ips: Vec<&IpAddr> = state
            .external_ips
            .iter()
            .chain(&state.load_balancer_ips)
            .filter(|ip| fam.contains(ip))
            .collect();
        let cluster_eps: Vec<&Endpoint> = state
            .cluster_endpoints
            .iter()
            .filter(|e| fam.contains(&e.ip))
            .collect();
        let local_eps: Vec<&Endpoint> = state
            .local_endpoints
            .iter()
            .filter(|e| fam.contains(&e.ip))
            .collect();
        let internal_local = state.internal_traffic_policy == TrafficPolicy::Local;
        let external_local = state.external_traffic_policy == TrafficPolicy::Local;
        let internal_eps = if internal_local {
            &local_eps
        } else {
            &cluster_eps
        };
        // Without any usable endpoint the frontends are rejected (no endpoint anywhere) or
        // dropped (endpoints exist, but not for this node), as kube-proxy does.
        let no_endpoint_verdict = if state.has_any_endpoints {
            "drop"
        } else {
            "goto reject-chain"
        };

        let hash = short_hash(&self.name.to_string());
        let suffix = readable(self.name);
        let svc = format!("svc-{hash}-{suffix}");
        let ext = format!("ext-{hash}-{suffix}");
        let cl = format!("cl-{hash}-{suffix}");
        let lo = format!("lo-{hash}-{suffix}");
        let fw = format!("fw-{hash}-{suffix}");

        // --- ClusterIP frontends
        if !cluster_ips.is_empty() {
            if internal_eps.is_empty() {
                for ip in &cluster_ips {
                    self.element(
                        NO_ENDPOINT_SERVICES,
                        frontend_key(ip, proto, state.port),
                        no_endpoint_verdict,
                    );
                }
            } else {
                let mut rules = Vec::new();
                if !self.cidrs.is_empty() {
                    // Traffic from outside the pod network (the node itself, other hosts) is
                    // masqueraded so replies come back through this node. (A named set: nft
                    // 1.0.x creates anonymous sets in quadratic time, see docs/nftables.md.)
                    rules.push(format!(
                        "{} saddr != @{CLUSTER_CIDRS} jump mark-for-masquerade",
                        fam.addr_keyword()
                    ));
                }
                rules.push(format!("goto {}", if internal_local { &lo } else { &cl }));
                self.chain(&svc, rules);
                for ip in &cluster_ips {
                    self.element(
                        SERVICE_IPS,
                        frontend_key(ip, proto, state.port),
                        &format!("goto {svc}"),
                    );
                }
            }
        }

        // --- External frontends (NodePort, externalIPs, LB IPs)
        let node_port = state.node_port;
        let has_external = node_port.is_some() || !external_ips.is_empty();
        let usable_external = !cluster_eps.is_empty() || !local_eps.is_empty();
        if has_external && usable_external {
            let a = fam.addr_keyword();
            let mut rules = Vec::new();
            if external_local {
                if !self.cidrs.is_empty() {
                    // Pods reaching an external address short-circuit to any endpoint.
                    rules.push(format!("{a} saddr @{CLUSTER_CIDRS} goto {cl}"));
                }
                // So does the node itself (masqueraded: its address may not be routable back).
                rules.push("fib saddr type local jump mark-for-masquerade".to_owned());
                rules.push(format!("fib saddr type local goto {cl}"));
                rules.push(format!("goto {lo}"));
            } else {
                rules.push("jump mark-for-masquerade".to_owned());
                rules.push(format!("goto {cl}"));
            }
            self.chain(&ext, rules);
            for ip in &external_ips {
                self.element(
                    SERVICE_IPS,
                    frontend_key(ip, proto, state.port),
                    &format!("goto {ext}"),
                );
            }
            if let Some(port) = node_port {
                self.element(
                    SERVICE_NODEPORTS,
                    format!("{proto} . {port}"),
                    &format!("goto {ext}"),
                );
            }
        } else if has_external {
            for ip in &external_ips {
                self.element(
                    NO_ENDPOINT_SERVICES,
                    frontend_key(ip, proto, state.port),
                    no_endpoint_verdict,
                );
            }
            if let Some(port) = node_port {
                self.element(
                    NO_ENDPOINT_NODEPORTS,
                    format!("{proto} . {port}"),
                    no_endpoint_verdict,
                );
            }
        }

        // --- loadBalancerSourceRanges on LB IPs
        let lb_ips: Vec<&IpAddr> = state
            .load_balancer_ips
            .iter()
            .filter(|ip| fam.contains(ip))
            .collect();
        if !state.load_balancer_source_ranges.is_empty() && !lb_ips.is_empty() {
            // One rule per range: an inline set would be an anonymous set (see above).
            let mut rules: Vec<String> = state
                .load_balancer_source_ranges
                .iter()
                .filter(|r| fam.contains_net(r))
                .map(|r| format!("{} saddr {r} return", fam.addr_keyword()))
                .collect();
            rules.push("drop".to_owned());
            self.chain(&fw, rules);
            for ip in lb_ips {
                self.element(
                    FIREWALL_IPS,
                    frontend_key(ip, proto, state.port),
                    &format!("goto {fw}"),
                );
            }
        }

        // --- endpoint dispatch chains, only those referenced above
        let needs_cl = self.out.chains.contains_key(&ext)
            || (self.out.chains.contains_key(&svc) && !internal_local);
        let needs_lo = (self.out.chains.contains_key(&ext) && external_local)
            || (self.out.chains.contains_key(&svc) && internal_local);
        if needs_cl {
            self.dispatch_chain(&cl, &cluster_eps);
        }
        if needs_lo {
            self.dispatch_chain(&lo, &local_eps);
        }
    }

    /// Affinity lookups, then a random choice among `endpoints` (drop when there are none:
    /// only reachable for eTP=Local without local endpoints).
    fn dispatch_chain(&mut self, chain: &str, endpoints: &[&Endpoint]) {
        if endpoints.is_empty() {
            self.chain(chain, vec!["drop".to_owned()]);
            return;
        }
        let a = self.family.addr_keyword();
        let mut rules = Vec::new();
        let endpoint_chains: Vec<String> =
            endpoints.iter().map(|ep| self.endpoint_chain(ep)).collect();
        if self.state.session_affinity_timeout.is_some() {
            for ep_chain in &endpoint_chains {
                rules.push(format!(
                    "{a} saddr @{} goto {ep_chain}",
                    affinity_set_name(ep_chain)
                ));
            }
        }
        // A uniform choice as a cascade (endpoint i taken with probability 1/(N-i) among the
        // rest), not `numgen ... vmap { ... }`: nft 1.0.x creates anonymous maps in quadratic
        // time, which made a 10k-service sync take minutes.
        let last = endpoint_chains.len() - 1;
        for (i, ep_chain) in endpoint_chains.iter().enumerate() {
            if i == last {
                rules.push(format!("goto {ep_chain}"));
            } else {
                let remaining = endpoint_chains.len() - i;
                rules.push(format!(
                    "numgen random mod {remaining} == 0 goto {ep_chain}"
                ));
            }
        }
        self.chain(chain, rules);
    }

    /// Renders `ep-*` for one endpoint (shared by the cluster and local sets) and returns its name.
    fn endpoint_chain(&mut self, ep: &Endpoint) -> String {
        let a = self.family.addr_keyword();
        let affinity = self.state.session_affinity_timeout;
        // The affinity timeout is part of the identity: changing it re-creates the set.
        let identity = format!("{}|{}|{}|{:?}", self.name, ep.ip, ep.port, affinity);
        let name = format!("ep-{}-{}", short_hash(&identity), readable(self.name));
        if self.out.chains.contains_key(&name) {
            return name;
        }
        let dest = match ep.ip {
            IpAddr::V4(ip) => format!("{ip}:{}", ep.port),
            IpAddr::V6(ip) => format!("[{ip}]:{}", ep.port),
        };
        let mut rules = vec![format!("{a} saddr {} jump mark-for-masquerade", ep.ip)];
        if let Some(timeout) = affinity {
            let set = affinity_set_name(&name);
            rules.push(format!("update @{set} {{ {a} saddr }}"));
            self.out.affinity_sets.insert(set, timeout);
        }
        rules.push(format!(
            "meta l4proto {} dnat to {dest}",
            self.name.protocol.as_str()
        ));
        self.chain(&name, rules);
        name
    }

    fn chain(&mut self, name: &str, rules: Vec<String>) {
        self.out.chains.insert(name.to_owned(), rules);
    }

    fn element(&mut self, container: &'static str, key: String, value: &str) {
        self.out
            .elements
            .get_mut(container)
            .expect("declared")
            .insert(key, Some(value.to_owned()));
    }
}

fn frontend_key(ip: &IpAddr, proto: &str, port: u16) -> String {
    format!("{ip} . {proto} . {port}")
}

/// The affinity set of an endpoint chain (`ep-X-...` → `aff-X`).
pub fn affinity_set_name(endpoint_chain: &str) -> String {
    let hash = endpoint_chain.split('-').nth(1).unwrap_or_default();
    format!("aff-{hash}")
}

/// `namespace/name/proto/portname` — kube-proxy's readable chain-name suffix.
fn readable(name: &ServicePortName) -> String {
    let mut s = format!("{}/{}/{}", name.namespace, name.name, name.protocol);
    if !name.port_name.is_empty() {
        let _ = write!(s, "/{}", name.port_name);
    }
    s
}

/// 8 base32 characters of FNV-1a 64: stable across builds and Rust versions (chain names must
/// survive an agent upgrade so a restart reconciles instead of rebuilding).
pub fn short_hash(input: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in input.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..8)
        .map(|i| ALPHABET[((hash >> (i * 5)) & 31) as usize] as char)
        .collect()
}
