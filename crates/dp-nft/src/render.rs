//! Pure translation of the plan into nftables objects, one service port and one address
//! family at a time (so a change re-renders only the service it touches).
//!
//! Layout (per family table `ip sluice` / `ip6 sluice`), modelled on kube-proxy's:
//! * verdict map `service-ips`: `addr . proto . port` of cluster, external and LB IPs that
//!   forward for some source → `goto` the frontend's route chain;
//! * verdict map `service-nodeports`: `proto . port` → route chain, for destinations in the
//!   `nodeport-ips` set;
//! * `no-endpoint-services` / `no-endpoint-nodeports`: frontends that refuse everyone
//!   (`reject` / `drop`), checked in the filter hooks after DNAT;
//! * `firewall-ips`: LB IPs with allowed source ranges → `goto fw-*` (filter prerouting,
//!   before DNAT);
//! * route chains `svc-*` (cluster IPs) and `ext-*` (other frontends): one rule per source
//!   class whose route differs from the outside route (`ip saddr @cluster-cidrs` for pods,
//!   `fib saddr type local` for the node), then the outside route — each a `goto` (with the
//!   masquerade mark set in the same rule when asked) or `drop`;
//! * a forward route `goto`s the shared pick chain of its backend set (`pick-cluster-ip-tcp-16`:
//!   set, key, protocol, capacity), which DNATs to an endpoint drawn from the frontend's slots
//!   in the matching slot map ([`crate::slots`]); endpoints are map data, so an endpoint change
//!   writes map elements only. Pods reaching themselves are masqueraded in postrouting
//!   (`hairpin-endpoints`, counted by the dataplane);
//! * with session affinity, routes `goto` dispatch chains `cl-*` / `lo-*` instead: affinity
//!   lookups, then a uniform random cascade over per-backend `ep-*` chains (hairpin
//!   masquerade, affinity set update, DNAT).
//!
//! Chain names carry a stable hash plus a readable, sanitised suffix (any Service or port name
//! is safe: unusual characters become `_`, long names are cut; the hash keeps them unique).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use sluice_plan::{
    Backend, Family, FrontendAddr, FrontendKind, FrontendPlan, NodePlan, Protocol, Route,
    ServicePlan, ServicePortName, SetName, SourceClass,
};

use crate::ir::{Container, ContainerKind, Key, Rule, SetRef, Stmt, Value, Verdict};
pub use crate::ir::{Element, addr_keyword, addr_type, table_family};
use crate::slots::{
    DrawKey, EXACT_DRAWS, FoundSlots, Keyed, Picker, SlotIndexes, Slots, assign, capacity_for, fits,
};

/// Names of the verdict maps and sets whose elements are rendered per service.
pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
pub const FIREWALL_IPS: &str = "firewall-ips";
pub const NODEPORT_IPS: &str = "nodeport-ips";
pub const CLUSTER_CIDRS: &str = "cluster-cidrs";
/// `address . address` of every endpoint on the slot path: a connection whose source is the
/// endpoint it was translated to (a pod reaching itself through a service) is masqueraded.
pub const HAIRPIN_ENDPOINTS: &str = "hairpin-endpoints";

/// The chain refusing connections with an ICMP error, and the one setting the masquerade mark.
pub const REJECT_CHAIN: &str = "reject-chain";
pub const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";

/// Longest readable part of a chain name (the hash keeps names unique).
const READABLE_MAX: usize = 64;

/// Every map/set whose elements come from the plan, in declaration order (the slot maps,
/// declared with their pickers, are not among them).
pub fn element_containers() -> [Container; 8] {
    let c = |name, kind| Container { name, kind };
    [
        c(SERVICE_IPS, ContainerKind::FrontendVmap),
        c(SERVICE_NODEPORTS, ContainerKind::PortVmap),
        c(NO_ENDPOINT_SERVICES, ContainerKind::FrontendVmap),
        c(NO_ENDPOINT_NODEPORTS, ContainerKind::PortVmap),
        c(FIREWALL_IPS, ContainerKind::FrontendVmap),
        c(NODEPORT_IPS, ContainerKind::Addrs),
        c(CLUSTER_CIDRS, ContainerKind::Prefixes),
        c(HAIRPIN_ENDPOINTS, ContainerKind::AddrPairs),
    ]
}

/// A backend set on the slot path: its slots, and the frontends drawing from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDraw {
    pub set: SetName,
    pub protocol: Protocol,
    pub slots: Slots,
    /// The frontends whose routes use the set, in order.
    pub frontends: Vec<DrawKey>,
}

impl SetDraw {
    /// The picker a frontend keyed `keyed` draws with.
    pub fn picker(&self, keyed: Keyed) -> Picker {
        Picker {
            set: self.set,
            keyed,
            protocol: self.protocol,
            capacity: self.slots.capacity(),
        }
    }

    /// The slot map elements of every frontend.
    pub fn elements(&self) -> impl Iterator<Item = Element> + '_ {
        self.frontends
            .iter()
            .flat_map(move |key| self.frontend_elements(*key))
    }

    /// The slot map elements of one frontend.
    pub fn frontend_elements(&self, key: DrawKey) -> impl Iterator<Item = Element> + '_ {
        let set = SetRef::Slots(self.picker(key.keyed()));
        self.slots.entries().map(move |(slot, endpoint)| Element {
            set,
            key: match key {
                DrawKey::Address(addr, port) => Key::AddrSlot { addr, port, slot },
                DrawKey::Port(port) => Key::PortSlot { port, slot },
            },
            value: Some(Value::Endpoint(endpoint)),
        })
    }
}

/// What one service port contributes to one family's table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRules {
    /// Chains: name → rules.
    pub chains: BTreeMap<String, Vec<Rule>>,
    /// Map elements of the static maps, sorted.
    pub elements: Vec<Element>,
    /// Affinity sets: name → timeout in seconds.
    pub affinity_sets: BTreeMap<String, u32>,
    /// The backend sets on the slot path (their elements are made on demand: [`SetDraw::elements`]).
    pub draws: BTreeMap<SetName, SetDraw>,
    /// Endpoint addresses of the slot path, sorted and unique: each is an element of
    /// `hairpin-endpoints` while some service port has it (the dataplane counts).
    pub hairpins: Vec<IpAddr>,
}

/// Nothing (what a removed service port renders to).
pub static NO_RULES: ServiceRules = ServiceRules {
    chains: BTreeMap::new(),
    elements: Vec::new(),
    affinity_sets: BTreeMap::new(),
    draws: BTreeMap::new(),
    hairpins: Vec::new(),
};

impl ServiceRules {
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.elements.is_empty() && self.affinity_sets.is_empty()
    }

    /// The pickers this service port's routes use.
    pub fn pickers(&self) -> impl Iterator<Item = Picker> + '_ {
        self.draws
            .values()
            .flat_map(|d| d.frontends.iter().map(|key| d.picker(key.keyed())))
    }

    /// Every slot map element of this service port.
    pub fn slot_elements(&self) -> impl Iterator<Item = Element> + '_ {
        self.draws.values().flat_map(SetDraw::elements)
    }

    /// The slot layouts of this rendering, to render the same plan again to the same rules.
    pub fn kept_slots(&self) -> KeptSlots {
        KeptSlots(
            self.draws
                .values()
                .map(|d| (d.set, SlotIndexes::new(&d.slots)))
                .collect(),
        )
    }
}

/// The slot layouts one service port's rendering used in one family, kept (compactly) instead
/// of the rendering: with the plan it was rendered from, they render it again exactly
/// ([`Previous::Kept`]), so the dataplane need not keep chains and elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeptSlots(Box<[(SetName, SlotIndexes)]>);

/// The `hairpin-endpoints` element of an endpoint address.
pub fn hairpin_element(ip: IpAddr) -> Element {
    Element {
        set: SetRef::Named(HAIRPIN_ENDPOINTS),
        key: Key::Pair(ip, ip),
        value: None,
    }
}

/// The `hairpin-endpoints` elements `rules` need together (sorted, unique).
pub fn hairpin_elements<'a>(rules: impl IntoIterator<Item = &'a ServiceRules>) -> Vec<Element> {
    let mut ips: Vec<IpAddr> = rules
        .into_iter()
        .flat_map(|r| r.hairpins.iter().copied())
        .collect();
    ips.sort_unstable();
    ips.dedup();
    ips.into_iter().map(hairpin_element).collect()
}

/// What a backend set's slots held before: kept where the capacity still fits, so a change
/// writes only the slots that differ.
#[derive(Debug, Clone, Copy)]
pub enum Previous<'a> {
    Nothing,
    /// The service port's earlier rendering.
    Rules(&'a ServiceRules),
    /// What a restarted agent found in the kernel.
    Found(&'a FoundSlots),
    /// The slots kept from rendering this very plan ([`ServiceRules::kept_slots`]): taken as
    /// they are, so the rendering is the one made then.
    Kept(&'a KeptSlots),
}

impl<'a> Previous<'a> {
    fn slots(&self, set: SetName, protocol: Protocol, key: DrawKey) -> Option<&'a Slots> {
        match *self {
            Previous::Nothing | Previous::Kept(_) => None,
            Previous::Rules(rules) => rules.draws.get(&set).map(|d| &d.slots),
            Previous::Found(found) => found.get(&(set, protocol, key)),
        }
    }

    /// The layout kept for `set`, over the plan's `endpoints` (sorted, unique).
    fn kept(&self, set: SetName, endpoints: &[SocketAddr]) -> Option<Slots> {
        let Previous::Kept(KeptSlots(kept)) = *self else {
            return None;
        };
        let (_, indexes) = kept.iter().find(|(s, _)| *s == set)?;
        indexes.expand(endpoints)
    }
}

/// Renders service ports of one family from scratch, e.g. for `sluice plan` and golden files.
pub fn render_all<'a>(
    plans: impl IntoIterator<Item = &'a ServicePlan>,
    family: Family,
) -> Vec<ServiceRules> {
    plans
        .into_iter()
        .map(|plan| render_service(plan, family, Previous::Nothing))
        .collect()
}

/// The node-wide set elements of one family.
pub fn render_node(node: &NodePlan, family: Family) -> Vec<Element> {
    let mut out: Vec<Element> = node
        .pod_cidrs
        .iter()
        .filter(|c| family.contains(&c.addr()))
        .map(|c| Element {
            set: SetRef::Named(CLUSTER_CIDRS),
            key: Key::Prefix(*c),
            value: None,
        })
        .collect();
    out.extend(node.nodeport_addresses(family).map(|ip| Element {
        set: SetRef::Named(NODEPORT_IPS),
        key: Key::Addr(*ip),
        value: None,
    }));
    out.sort();
    out
}

/// Renders one service port for one family, keeping its endpoints' slots from `previous`.
pub fn render_service(plan: &ServicePlan, family: Family, previous: Previous<'_>) -> ServiceRules {
    let mut r = Renderer {
        plan,
        family,
        previous,
        out: ServiceRules::default(),
    };
    for frontend in plan.frontends.iter().filter(|f| f.key.family() == family) {
        r.frontend(frontend);
    }
    r.out.elements.sort();
    r.out.hairpins.sort_unstable();
    r.out.hairpins.dedup();
    r.out
}

struct Renderer<'a> {
    plan: &'a ServicePlan,
    family: Family,
    previous: Previous<'a>,
    out: ServiceRules,
}

impl Renderer<'_> {
    fn frontend(&mut self, fe: &FrontendPlan) {
        let (protocol, port) = (fe.key.protocol, fe.key.port);
        let (forward_map, refuse_map, key) = match fe.key.addr {
            FrontendAddr::Ip(addr) => (
                SERVICE_IPS,
                NO_ENDPOINT_SERVICES,
                Key::Frontend {
                    addr,
                    protocol,
                    port,
                },
            ),
            FrontendAddr::NodePorts(_) => (
                SERVICE_NODEPORTS,
                NO_ENDPOINT_NODEPORTS,
                Key::Port { protocol, port },
            ),
        };
        if fe.forwards() {
            let draw_key = match fe.key.addr {
                FrontendAddr::Ip(addr) => DrawKey::Address(addr, port),
                FrontendAddr::NodePorts(_) => DrawKey::Port(port),
            };
            let chain = self.route_chain(fe, draw_key);
            self.element(forward_map, key, Verdict::Goto(chain));
        } else if let Some(refusal) = fe.refusal() {
            // Nobody is forwarded: refused after NAT in the filter hooks, as kube-proxy does.
            let verdict = match refusal {
                Route::Reject => Verdict::goto(REJECT_CHAIN),
                _ => Verdict::Drop,
            };
            self.element(refuse_map, key, verdict);
        }
        if !fe.allowed_sources.is_empty()
            && let FrontendAddr::Ip(_) = fe.key.addr
        {
            let chain = self.firewall_chain(fe);
            self.element(FIREWALL_IPS, key, Verdict::Goto(chain));
        }
    }

    /// The chain applying `fe`'s routes (shared by the service's frontends with equal routes
    /// and, on the slot path, keyed alike), `fe` registered with the sets it draws from.
    fn route_chain(&mut self, fe: &FrontendPlan, key: DrawKey) -> String {
        let prefix = if fe.kind == FrontendKind::ClusterIp {
            "svc"
        } else {
            "ext"
        };
        let routes = [fe.pods, fe.node, fe.outside];
        let slotted = self.plan.affinity_timeout.is_none();
        if slotted {
            for set in routes.iter().filter_map(Route::set) {
                self.draw(set, key);
            }
        }
        let identity = if slotted {
            format!("{routes:?}|{:?}", key.keyed())
        } else {
            format!("{routes:?}")
        };
        let name = self.chain_name(prefix, &identity);
        if self.out.chains.contains_key(&name) {
            return name;
        }
        let mut rules = Vec::new();
        for class in [SourceClass::Pods, SourceClass::Node] {
            let route = fe.route(class);
            if route == fe.outside {
                continue;
            }
            let mut stmts = vec![match class {
                SourceClass::Pods => Stmt::SaddrInSet(CLUSTER_CIDRS.into()),
                _ => Stmt::FibSaddrLocal,
            }];
            stmts.extend(self.verdict(route, key.keyed()));
            rules.push(Rule(stmts));
        }
        rules.push(Rule(self.verdict(fe.outside, key.keyed())));
        self.out.chains.insert(name.clone(), rules);
        name
    }

    /// `set` on the slot path, with `key` among its frontends: laid out on first use (from
    /// the previous slots where the capacity still fits). Left out when the set has no
    /// backend of this family (the plan never forwards there; the route then drops).
    fn draw(&mut self, set: SetName, key: DrawKey) {
        if let Some(draw) = self.out.draws.get_mut(&set) {
            if !draw.frontends.contains(&key) {
                draw.frontends.push(key);
            }
            return;
        }
        let mut endpoints: Vec<SocketAddr> = self
            .plan
            .backends(set, self.family)
            .map(|b| SocketAddr::new(b.ip, b.port))
            .collect();
        endpoints.sort_unstable();
        endpoints.dedup();
        if endpoints.is_empty() {
            return;
        }
        let protocol = self.plan.name.protocol;
        let slots = self
            .previous
            .kept(set, &endpoints)
            .unwrap_or_else(|| self.layout(set, protocol, key, &endpoints));
        self.out
            .hairpins
            .extend(endpoints.iter().map(SocketAddr::ip));
        let draw = SetDraw {
            set,
            protocol,
            slots,
            frontends: vec![key],
        };
        self.out.draws.insert(set, draw);
    }

    /// A layout of `endpoints` keeping the previous slots where their capacity still fits.
    fn layout(
        &self,
        set: SetName,
        protocol: Protocol,
        key: DrawKey,
        endpoints: &[SocketAddr],
    ) -> Slots {
        let previous = self
            .previous
            .slots(set, protocol, key)
            .filter(|p| fits(p.capacity(), endpoints.len()));
        let capacity = previous.map_or_else(|| capacity_for(endpoints.len()), Slots::capacity);
        assign(previous, endpoints, capacity)
    }

    /// The statement(s) of one route: the masquerade mark when asked, then the pick chain of
    /// the set (or, with session affinity, its dispatch chain).
    fn verdict(&mut self, route: Route, keyed: Keyed) -> Vec<Stmt> {
        match route {
            Route::Forward { set, masquerade } => {
                let chain = match self.out.draws.get(&set) {
                    Some(draw) => draw.picker(keyed).chain(),
                    None => self.dispatch_chain(set),
                };
                let goto = Stmt::Verdict(Verdict::Goto(chain));
                if masquerade {
                    vec![Stmt::MarkSetOr(MASQUERADE_MARK), goto]
                } else {
                    vec![goto]
                }
            }
            Route::Drop => vec![Stmt::Verdict(Verdict::Drop)],
            // Not reachable through a route chain (a rejecting frontend rejects everyone and
            // is refused in the filter hooks), kept total for safety.
            Route::Reject => vec![Stmt::Verdict(Verdict::goto(REJECT_CHAIN))],
        }
    }

    /// `fw-*`: sources in the allowed ranges go on, everything else is dropped.
    fn firewall_chain(&mut self, fe: &FrontendPlan) -> String {
        let ranges = format!("{:?}", fe.allowed_sources);
        let name = self.chain_name("fw", &ranges);
        if !self.out.chains.contains_key(&name) {
            // One rule per range: an inline set would be an anonymous set, which nft 1.0.x
            // creates in quadratic time (docs/nftables.md).
            let mut rules: Vec<Rule> = fe
                .allowed_sources
                .iter()
                .map(|r| Rule::new([Stmt::SaddrIn(*r), Stmt::Verdict(Verdict::Return)]))
                .collect();
            rules.push(Rule::verdict(Verdict::Drop));
            self.out.chains.insert(name.clone(), rules);
        }
        name
    }

    /// `cl-*` / `lo-*` (session affinity): a uniform random choice among the backends of
    /// `set` and this family over per-endpoint chains (never empty: the plan forwards only to
    /// sets with backends).
    fn dispatch_chain(&mut self, set: SetName) -> String {
        let prefix = match set {
            SetName::Cluster => "cl",
            SetName::Local => "lo",
        };
        let name = self.chain_name(prefix, "");
        if self.out.chains.contains_key(&name) {
            return name;
        }
        let backends: Vec<Backend> = self.plan.backends(set, self.family).copied().collect();
        let rules = self.cascade(&backends);
        self.out.chains.insert(name.clone(), rules);
        name
    }

    /// Affinity lookups, then a uniform random choice as a cascade (endpoint i taken with
    /// probability 1/(N-i) among the rest) over per-endpoint chains. Not `numgen ... vmap
    /// { ... }`: nft 1.0.x creates anonymous maps in quadratic time.
    fn cascade(&mut self, backends: &[Backend]) -> Vec<Rule> {
        let endpoint_chains: Vec<String> =
            backends.iter().map(|b| self.endpoint_chain(b)).collect();
        let mut rules = Vec::new();
        if self.plan.affinity_timeout.is_some() {
            for ep in &endpoint_chains {
                rules.push(Rule::new([
                    Stmt::SaddrInSet(affinity_set_name(ep)),
                    Stmt::Verdict(Verdict::goto(ep)),
                ]));
            }
        }
        let count = endpoint_chains.len();
        for (i, ep) in endpoint_chains.iter().enumerate() {
            let goto = Stmt::Verdict(Verdict::goto(ep));
            if i + 1 == count {
                rules.push(Rule::new([goto]));
            } else {
                let rest = u32::try_from(count - i).unwrap_or(u32::MAX);
                rules.push(Rule::new([Stmt::OneIn(rest), goto]));
            }
        }
        if rules.is_empty() {
            rules.push(Rule::verdict(Verdict::Drop));
        }
        rules
    }

    /// `ep-*` for one backend (shared by both sets) and its name.
    fn endpoint_chain(&mut self, backend: &Backend) -> String {
        let affinity = self.plan.affinity_timeout;
        // The affinity timeout is part of the identity: changing it re-creates the set.
        let identity = format!("{}|{}|{affinity:?}", backend.ip, backend.port);
        let name = self.chain_name("ep", &identity);
        if self.out.chains.contains_key(&name) {
            return name;
        }
        // Hairpin: a pod reaching itself through the service must see another source.
        let mut rules = vec![Rule::new([
            Stmt::SaddrIs(backend.ip),
            Stmt::Verdict(Verdict::jump(MARK_FOR_MASQUERADE)),
        ])];
        if let Some(timeout) = affinity {
            let set = affinity_set_name(&name);
            rules.push(Rule::new([Stmt::UpdateSaddr(set.clone())]));
            self.out.affinity_sets.insert(set, timeout);
        }
        rules.push(Rule::new([
            Stmt::L4Proto(self.plan.name.protocol),
            Stmt::Dnat(backend.ip, backend.port),
        ]));
        self.out.chains.insert(name.clone(), rules);
        name
    }

    /// `{prefix}-{hash of service and identity}-{readable service}`.
    fn chain_name(&self, prefix: &str, identity: &str) -> String {
        let hash = short_hash(&format!("{}|{identity}", self.plan.name));
        format!("{prefix}-{hash}-{}", readable(&self.plan.name))
    }

    fn element(&mut self, set: &'static str, key: Key, value: Verdict) {
        self.out.elements.push(Element {
            set: SetRef::Named(set),
            key,
            value: Some(Value::Verdict(value)),
        });
    }
}

/// The rules of a picker's chain: [`EXACT_DRAWS`] draws from the exact region, each taking
/// the drawn slot's endpoint or (empty slot) passing on to the next, then one draw from the
/// always-full spread region.
pub fn picker_rules(picker: Picker) -> Vec<Rule> {
    let mut rules = vec![Rule::new([Stmt::pick(picker, 0)]); EXACT_DRAWS];
    rules.push(Rule::new([Stmt::pick(picker, picker.capacity)]));
    rules
}

/// Mark bit meaning "masquerade this connection on the way out" (kube-proxy uses the same bit).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// The affinity set of an endpoint chain (`ep-X-...` → `aff-X`).
pub fn affinity_set_name(endpoint_chain: &str) -> String {
    let hash = endpoint_chain.split('-').nth(1).unwrap_or_default();
    format!("aff-{hash}")
}

/// `namespace/name/proto/portname` — kube-proxy's readable chain-name suffix — restricted to
/// characters nft accepts in an unquoted name, and cut to [`READABLE_MAX`] bytes.
pub fn readable(name: &ServicePortName) -> String {
    let mut s = format!("{}/{}/{}", name.namespace(), name.name(), name.protocol);
    if !name.port_name.is_empty() {
        let _ = write!(s, "/{}", name.port_name);
    }
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    out.truncate(READABLE_MAX);
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_plan::Protocol;

    #[test]
    fn readable_names_are_safe_for_nft_and_short() {
        let odd = ServicePortName::new(
            "default",
            "we b;\"x\ny\u{e9}",
            "a".repeat(300),
            Protocol::Tcp,
        );
        let name = readable(&odd);
        assert!(name.len() <= READABLE_MAX, "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c)),
            "{name}"
        );
        assert!(name.starts_with("default/we_b__x_y_/tcp/aaa"), "{name}");
    }
}
