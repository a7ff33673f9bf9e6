//! Pure translation of the plan into map rows: one service port at a time
//! ([`render_service`]), the node-wide rows ([`render_node`]), and the whole plan for
//! `sluice plan` ([`render_plan`]). No I/O here.
//!
//! Which entries a frontend gets (the scopes of `ebpf/include/sluice_abi.h`):
//! * `sock`: socket-LB, the `node` route (processes of this node);
//! * `ext`: tc/XDP, the `outside` route;
//! * `ext-pods`: tc/XDP for sources inside the pod CIDRs, the `pods` route — only when it
//!   differs from the `outside` route (the `ext` entry then carries [`abi::SVC_PODS`]).
//!
//! NodePort frontends have no address in their key: one entry per family stands for every
//! address in `sl_nodeip_v1`, so a node address change rewrites only that small map.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use sluice_plan::{
    Backend, Family, FrontendAddr, FrontendPlan, NodePlan, Plan, Route, Selection, ServicePlan,
};

use crate::abi::{self, CidrKey, NodeIpKey, SlotKey, SrcKey, SvcKey, SvcVal};
use crate::groups::{GroupKind, GroupSlot, ServiceGroups};
use crate::maglev;

/// Network-order words of an address and its `SL_FAMILY_*`.
pub fn ip_words(ip: IpAddr) -> ([u32; 4], u8) {
    match ip {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], abi::FAMILY_V4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let mut w = [0u32; 4];
            for (i, word) in w.iter_mut().enumerate() {
                *word = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
            }
            (w, abi::FAMILY_V6)
        }
    }
}

pub fn family_code(family: Family) -> u8 {
    match family {
        Family::V4 => abi::FAMILY_V4,
        Family::V6 => abi::FAMILY_V6,
    }
}

pub fn backend_of(b: &Backend) -> abi::Backend {
    let (addr, family) = ip_words(b.ip);
    abi::Backend {
        addr,
        port: b.port.to_be(),
        family,
        pad: 0,
    }
}

/// Entries per agent-owned map (indexed like [`abi::MapKind::AGENT`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts(pub [usize; 6]);

impl Counts {
    pub fn get(&self, map: abi::MapKind) -> usize {
        self.0[agent_index(map)]
    }

    pub fn add(&mut self, map: abi::MapKind, n: usize) {
        self.0[agent_index(map)] += n;
    }

    pub fn plus(mut self, other: Counts) -> Counts {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
        self
    }

    /// `self - other`, never below zero.
    pub fn minus(mut self, other: Counts) -> Counts {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.saturating_sub(b);
        }
        self
    }
}

fn agent_index(map: abi::MapKind) -> usize {
    abi::MapKind::AGENT
        .iter()
        .position(|m| *m == map)
        .expect("an agent-owned map")
}

/// The rows one service port owns, each list sorted by key and without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRows {
    pub svc: Vec<(SvcKey, SvcVal)>,
    pub slot: Vec<(SlotKey, abi::Backend)>,
    pub maglev: Vec<(SlotKey, abi::Backend)>,
    pub src: Vec<SrcKey>,
}

impl ServiceRows {
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        c.add(abi::MapKind::Svc, self.svc.len());
        c.add(abi::MapKind::Slot, self.slot.len());
        c.add(abi::MapKind::Maglev, self.maglev.len());
        c.add(abi::MapKind::Src, self.src.len());
        c
    }

    pub fn is_empty(&self) -> bool {
        self.counts() == Counts::default()
    }
}

/// One entry of a frontend: its key, the route it executes, the group it draws from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub key: SvcKey,
    pub route: Route,
    pub group: Option<GroupSlot>,
    pub family: Family,
    /// Flags decided by the frontend rather than the route (source ranges, pods entry).
    pub flags: u16,
}

fn key_of(fe: &FrontendPlan, scope: u8) -> SvcKey {
    let (port, proto) = (fe.key.port, fe.key.protocol.number());
    let nodeports = |family_scope: u8| SvcKey {
        addr: [0; 4],
        port: port.to_be(),
        proto,
        scope: scope | family_scope,
    };
    match fe.key.addr {
        FrontendAddr::Ip(ip) => address_key(ip, port, proto, scope),
        FrontendAddr::NodePorts(Family::V4) => nodeports(abi::SCOPE_NODEPORT4),
        FrontendAddr::NodePorts(Family::V6) => nodeports(abi::SCOPE_NODEPORT6),
    }
}

/// The key of `ip`'s entry in `scope` (an IPv6 address's with [`abi::SCOPE_V6`]).
pub(crate) fn address_key(ip: IpAddr, port: u16, proto: u8, scope: u8) -> SvcKey {
    let (addr, family) = ip_words(ip);
    let v6 = if family == abi::FAMILY_V6 {
        abi::SCOPE_V6
    } else {
        0
    };
    SvcKey {
        addr,
        port: port.to_be(),
        proto,
        scope: scope | v6,
    }
}

/// The group a route draws from at `scope`; refusals with source ranges still need an id
/// (the ranges are keyed by group, and are checked before the refusal).
fn group_of(fe: &FrontendPlan, scope: u8, route: Route) -> Option<GroupSlot> {
    let family = family_code(fe.key.family());
    let kind = match (route.set(), scope) {
        (Some(set), abi::SCOPE_SOCK) => GroupKind::Random(set),
        (Some(set), _) => match fe.selection {
            Selection::ConsistentHash => GroupKind::Maglev(set),
            Selection::Random => GroupKind::Random(set),
        },
        (None, abi::SCOPE_SOCK) => return None,
        (None, _) if fe.allowed_sources.is_empty() => return None,
        (None, _) => GroupKind::Ranges,
    };
    Some((kind, family))
}

/// The entries of one frontend (two or three).
pub(crate) fn frontend_entries(fe: &FrontendPlan) -> Vec<Entry> {
    let ranges = if fe.allowed_sources.is_empty() {
        0
    } else {
        abi::SVC_SRC_RANGES
    };
    let pods_differ = fe.pods != fe.outside;
    let entry = |scope: u8, route: Route, flags: u16| Entry {
        key: key_of(fe, scope),
        route,
        group: group_of(fe, scope, route),
        family: fe.key.family(),
        flags,
    };
    let mut out = vec![
        entry(abi::SCOPE_SOCK, fe.node, 0),
        entry(
            abi::SCOPE_EXT,
            fe.outside,
            ranges | if pods_differ { abi::SVC_PODS } else { 0 },
        ),
    ];
    if pods_differ {
        out.push(entry(abi::SCOPE_EXT_PODS, fe.pods, ranges));
    }
    out
}

/// Every group the service port's frontends draw from.
pub fn needed_groups(plan: &ServicePlan) -> BTreeSet<GroupSlot> {
    plan.frontends
        .iter()
        .flat_map(frontend_entries)
        .filter_map(|e| e.group)
        .collect()
}

fn entry_value(plan: &ServicePlan, entry: &Entry, group: Option<u32>) -> SvcVal {
    let mut flags = entry.flags;
    let mut count = 0;
    match entry.route {
        Route::Forward { set, masquerade } => {
            if masquerade && entry.key.scope & abi::SCOPE_CLASS_MASK != abi::SCOPE_SOCK {
                flags |= abi::SVC_MASQ;
            }
            if matches!(entry.group, Some((GroupKind::Maglev(_), _))) {
                flags |= abi::SVC_MAGLEV;
            }
            count = u16::try_from(plan.backends(set, entry.family).count()).unwrap_or(u16::MAX);
        }
        Route::Reject => flags |= abi::SVC_REJECT,
        Route::Drop => flags |= abi::SVC_DROP,
    }
    if plan.affinity_timeout.is_some() {
        flags |= abi::SVC_AFFINITY;
    }
    SvcVal {
        group: group.unwrap_or(0),
        count,
        flags,
        affinity_timeout: plan.affinity_timeout.unwrap_or(0),
    }
}

/// The rows of one service port with the given group ids. A group missing from `groups`
/// (never the case for ids from [`crate::groups`]) leaves its entries without backends.
pub fn render_service(plan: &ServicePlan, groups: &ServiceGroups) -> ServiceRows {
    let mut svc = BTreeMap::new();
    let mut src = BTreeSet::new();
    let mut filled = BTreeSet::new();
    let mut out = ServiceRows::default();
    for fe in &plan.frontends {
        for entry in frontend_entries(fe) {
            let id = entry.group.and_then(|g| groups.ids.get(&g).copied());
            svc.insert(entry.key, entry_value(plan, &entry, id));
            let (Some(slot), Some(id)) = (entry.group, id) else {
                continue;
            };
            if entry.flags & abi::SVC_SRC_RANGES != 0 {
                add_source_ranges(&mut src, fe, id);
            }
            if filled.insert(slot) {
                fill_group(&mut out, plan, slot, id, fe.key.family());
            }
        }
    }
    out.svc = svc.into_iter().collect();
    out.src = src.into_iter().collect();
    out.slot.sort_unstable();
    out.maglev.sort_unstable();
    out
}

fn fill_group(out: &mut ServiceRows, plan: &ServicePlan, slot: GroupSlot, id: u32, fam: Family) {
    let backends: Vec<&Backend> = match slot.0 {
        GroupKind::Random(set) | GroupKind::Maglev(set) => plan.backends(set, fam).collect(),
        GroupKind::Ranges => return,
    };
    if let GroupKind::Maglev(_) = slot.0 {
        out.maglev.extend(maglev_rows(id, &backends));
    } else {
        out.slot.extend(backends.iter().enumerate().map(|(i, b)| {
            (
                SlotKey {
                    group: id,
                    slot: i as u32,
                },
                backend_of(b),
            )
        }));
    }
}

/// A Maglev table as rows. The names hashed are `ip:port` (no brackets for IPv6): kept stable
/// across versions so an upgrade does not move flows.
fn maglev_rows(group: u32, backends: &[&Backend]) -> Vec<(SlotKey, abi::Backend)> {
    let names: Vec<String> = backends
        .iter()
        .map(|b| format!("{}:{}", b.ip, b.port))
        .collect();
    let resolved: Vec<abi::Backend> = backends.iter().map(|b| backend_of(b)).collect();
    maglev::table(&names, abi::MAGLEV_M)
        .into_iter()
        .enumerate()
        .map(|(slot, idx)| {
            let key = SlotKey {
                group,
                slot: slot as u32,
            };
            (key, resolved[idx as usize])
        })
        .collect()
}

fn add_source_ranges(out: &mut BTreeSet<SrcKey>, fe: &FrontendPlan, group: u32) {
    let family = family_code(fe.key.family());
    for net in &fe.allowed_sources {
        let (addr, rfam) = ip_words(net.network());
        if rfam == family {
            out.insert(SrcKey {
                prefixlen: 64 + u32::from(net.prefix_len()),
                group,
                family,
                pad: [0; 3],
                addr,
            });
        }
    }
}

/// The node-wide rows: pod CIDRs (`sl_cidr_v1`) and NodePort addresses (`sl_nodeip_v1`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRows {
    pub cidr: Vec<CidrKey>,
    pub nodeip: Vec<NodeIpKey>,
}

impl NodeRows {
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        c.add(abi::MapKind::Cidr, self.cidr.len());
        c.add(abi::MapKind::NodeIp, self.nodeip.len());
        c
    }
}

pub fn render_node(node: &NodePlan) -> NodeRows {
    let cidr: BTreeSet<CidrKey> = node
        .pod_cidrs
        .iter()
        .map(|net| {
            let (addr, family) = ip_words(net.network());
            CidrKey {
                prefixlen: 32 + u32::from(net.prefix_len()),
                family,
                pad: [0; 3],
                addr,
            }
        })
        .collect();
    let nodeip: BTreeSet<NodeIpKey> = node
        .nodeport_addresses
        .iter()
        .map(|ip| {
            let (addr, family) = ip_words(*ip);
            NodeIpKey {
                addr,
                family,
                pad: [0; 3],
            }
        })
        .collect();
    NodeRows {
        cidr: cidr.into_iter().collect(),
        nodeip: nodeip.into_iter().collect(),
    }
}

/// Everything the agent owns in the maps, as the kernel holds it (conntrack, affinity and
/// reverse-NAT entries are written by the datapath and only ever pruned by the agent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapContent {
    pub svc: BTreeMap<SvcKey, SvcVal>,
    pub slot: BTreeMap<SlotKey, abi::Backend>,
    pub maglev: BTreeMap<SlotKey, abi::Backend>,
    pub src: BTreeSet<SrcKey>,
    pub cidr: BTreeSet<CidrKey>,
    pub nodeip: BTreeSet<NodeIpKey>,
}

impl MapContent {
    pub fn add_service(&mut self, rows: &ServiceRows) {
        self.svc.extend(rows.svc.iter().copied());
        self.slot.extend(rows.slot.iter().copied());
        self.maglev.extend(rows.maglev.iter().copied());
        self.src.extend(rows.src.iter().copied());
    }

    pub fn add_node(&mut self, rows: &NodeRows) {
        self.cidr.extend(rows.cidr.iter().copied());
        self.nodeip.extend(rows.nodeip.iter().copied());
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        c.add(abi::MapKind::Svc, self.svc.len());
        c.add(abi::MapKind::Slot, self.slot.len());
        c.add(abi::MapKind::Maglev, self.maglev.len());
        c.add(abi::MapKind::Src, self.src.len());
        c.add(abi::MapKind::Cidr, self.cidr.len());
        c.add(abi::MapKind::NodeIp, self.nodeip.len());
        c
    }
}

/// The whole plan's rows with group ids handed out in plan order (what `sluice plan` shows;
/// a running agent keeps the ids it handed out earlier instead).
pub fn render_plan(plan: &Plan) -> MapContent {
    let mut ids = crate::groups::GroupIds::default();
    let mut out = MapContent::default();
    out.add_node(&render_node(&plan.node));
    for svc in plan.services.values() {
        let groups = ServiceGroups::assign(svc, &ServiceGroups::default(), &mut ids).0;
        out.add_service(&render_service(svc, &groups));
    }
    out
}
