//! Pure translation of the [`Plan`] into the exact content of the BPF maps, and the diff
//! between two such contents. No I/O here: this is what the unit tests exercise.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use sluice_plan::{
    Backend, Family, FrontendAddr, FrontendKind, FrontendPlan, NodePlan, Plan, Protocol, Route,
    Selection, ServicePlan, ServicePortName, SetName,
};

use crate::abi::{self, CidrKeyData, SlotKey, SrcKeyData, SvcKey, SvcVal};
use crate::maglev;

/// `(prefix length, data)` of an `sl_src_v1` LPM entry.
pub type SrcKey = (u32, SrcKeyData);

/// Everything the agent owns in the maps (conntrack, affinity and reverse-NAT entries are
/// written by the datapath and only ever pruned by the agent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapContent {
    pub svc: BTreeMap<SvcKey, SvcVal>,
    pub slot: BTreeMap<SlotKey, abi::Backend>,
    pub maglev: BTreeMap<SlotKey, abi::Backend>,
    pub src: BTreeMap<SrcKey, u32>,
    /// Cluster CIDRs, `(prefix length, data)`.
    pub cidr: BTreeMap<(u32, CidrKeyData), u32>,
}

/// What a group's slots are filled from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupKind {
    /// Slots 0..count-1, picked at random.
    Random(SetName),
    /// A Maglev table over the set (consistent hashing).
    Maglev(SetName),
}

/// Identity of a group: one backend set of one service port, for one address family, in one
/// layout.
pub type GroupName = (ServicePortName, GroupKind, u8);

/// Stable group ids, so a restart (or an unrelated change) never renumbers a service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Groups {
    pub ids: BTreeMap<GroupName, u32>,
}

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

fn family_code(family: Family) -> u8 {
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

/// One frontend entry: where it is looked up (address, scope) and the route it executes.
struct Entry {
    ip: IpAddr,
    port: u16,
    scope: u8,
    route: Route,
    group: Option<GroupKind>,
    /// Extra flags decided from the frontend plan (source ranges, off-cluster masquerade).
    flags: u16,
}

/// The map entries one frontend needs. Node ports are expanded to every NodePort address.
///
/// * socket-LB (`SCOPE_SOCK`) serves the node's own processes and the pods in its cgroup:
///   the `node` route (local pods get the node's backend set — equal by construction — and
///   need no masquerade, since socket-LB changes no packet);
/// * tc/XDP (`SCOPE_EXT`) serves packets arriving from outside: the `outside` route, and for
///   cluster IPs the `pods` route's "no masquerade" for sources inside the cluster CIDRs.
fn entries(fe: &FrontendPlan, node: &NodePlan) -> Vec<Entry> {
    let addresses: Vec<IpAddr> = match fe.key.addr {
        FrontendAddr::Ip(ip) => vec![ip],
        FrontendAddr::NodePorts(family) => node.nodeport_addresses(family).copied().collect(),
    };
    let external_group = |route: Route| {
        route.set().map(|set| match fe.selection {
            Selection::ConsistentHash => GroupKind::Maglev(set),
            Selection::Random => GroupKind::Random(set),
        })
    };
    let mut ext_flags = 0;
    if !fe.allowed_sources.is_empty() {
        ext_flags |= abi::SVC_SRC_RANGES;
    }
    if fe.kind == FrontendKind::ClusterIp
        && matches!(
            fe.outside,
            Route::Forward {
                masquerade: true,
                ..
            }
        )
        && matches!(
            fe.pods,
            Route::Forward {
                masquerade: false,
                ..
            }
        )
    {
        // Sources inside the cluster CIDRs keep their address; others are masqueraded.
        ext_flags |= abi::SVC_MASQ_OFFCLUSTER;
    }
    let mut out = Vec::new();
    for ip in addresses {
        out.push(Entry {
            ip,
            port: fe.key.port,
            scope: abi::SCOPE_SOCK,
            route: fe.node,
            group: fe.node.set().map(GroupKind::Random),
            flags: 0,
        });
        out.push(Entry {
            ip,
            port: fe.key.port,
            scope: abi::SCOPE_EXT,
            route: fe.outside,
            group: external_group(fe.outside),
            flags: ext_flags,
        });
    }
    out
}

/// Gives every group the plan needs an id: the one it had (`prev`), else the one its
/// frontends already carry in the kernel (`current`, after a restart), else a fresh id never
/// used by anything still in the kernel.
pub fn assign_groups(plan: &Plan, prev: &Groups, current: &MapContent) -> Groups {
    let mut wanted: BTreeMap<GroupName, Option<u32>> = BTreeMap::new();
    for (name, svc) in &plan.services {
        for fe in &svc.frontends {
            let family = family_code(fe.key.family());
            for entry in entries(fe, &plan.node) {
                let Some(kind) = entry.group else { continue };
                let gname = (name.clone(), kind, family);
                let key = svc_key(&entry, name.protocol);
                let found = prev
                    .ids
                    .get(&gname)
                    .copied()
                    .or_else(|| current.svc.get(&key).map(|v| v.group));
                let slot = wanted.entry(gname).or_insert(None);
                if slot.is_none() {
                    *slot = found;
                }
            }
        }
    }
    let mut used: BTreeSet<u32> = current.svc.values().map(|v| v.group).collect();
    used.extend(current.slot.keys().map(|k| k.group));
    used.extend(current.maglev.keys().map(|k| k.group));
    let mut ids = BTreeMap::new();
    let mut taken = BTreeSet::new();
    // First keep every known id (a collision keeps the first claimant), then allocate.
    for (gname, id) in &wanted {
        if let Some(id) = id
            && taken.insert(*id)
        {
            ids.insert(gname.clone(), *id);
        }
    }
    let mut next = 1u32;
    for gname in wanted.keys() {
        if ids.contains_key(gname) {
            continue;
        }
        while used.contains(&next) || taken.contains(&next) {
            next += 1;
        }
        taken.insert(next);
        ids.insert(gname.clone(), next);
    }
    Groups { ids }
}

fn svc_key(entry: &Entry, protocol: Protocol) -> SvcKey {
    let (addr, _) = ip_words(entry.ip);
    SvcKey {
        addr,
        port: entry.port.to_be(),
        proto: protocol.number(),
        scope: entry.scope,
    }
}

/// The full map content for `plan` with the given group ids.
pub fn render(plan: &Plan, groups: &Groups) -> MapContent {
    let mut out = MapContent::default();
    for net in &plan.node.pod_cidrs {
        let (addr, family) = ip_words(net.network());
        let data = CidrKeyData {
            family,
            pad: [0; 3],
            addr,
        };
        out.cidr.insert((32 + u32::from(net.prefix_len()), data), 1);
    }
    for (name, svc) in &plan.services {
        for fe in &svc.frontends {
            render_frontend(&mut out, svc, fe, &plan.node, groups, name);
        }
    }
    out
}

fn render_frontend(
    out: &mut MapContent,
    svc: &ServicePlan,
    fe: &FrontendPlan,
    node: &NodePlan,
    groups: &Groups,
    name: &ServicePortName,
) {
    let family = fe.key.family();
    for entry in entries(fe, node) {
        let key = svc_key(&entry, name.protocol);
        let group = entry.group.and_then(|kind| {
            groups
                .ids
                .get(&(name.clone(), kind, family_code(family)))
                .map(|id| (kind, *id))
        });
        let mut flags = entry.flags;
        let (group_id, count) = match (entry.route, group) {
            (Route::Forward { masquerade, .. }, Some((kind, id))) => {
                // Off-cluster masquerading already covers the masquerade of this route.
                if masquerade
                    && entry.scope == abi::SCOPE_EXT
                    && flags & abi::SVC_MASQ_OFFCLUSTER == 0
                {
                    flags |= abi::SVC_MASQ;
                }
                if matches!(kind, GroupKind::Maglev(_)) {
                    flags |= abi::SVC_MAGLEV;
                }
                let set = match kind {
                    GroupKind::Random(set) | GroupKind::Maglev(set) => set,
                };
                let backends: Vec<&Backend> = svc.backends(set, family).collect();
                fill_group(out, kind, id, &backends);
                (id, u16::try_from(backends.len()).unwrap_or(u16::MAX))
            }
            (Route::Reject, _) => {
                flags |= abi::SVC_REJECT;
                (0, 0)
            }
            // Drop (or a forward without a group, which the plan never asks for).
            _ => (0, 0),
        };
        if svc.affinity_timeout.is_some() {
            flags |= abi::SVC_AFFINITY;
        }
        if flags & abi::SVC_SRC_RANGES != 0 {
            add_source_ranges(out, fe, group_id);
        }
        if let Some(existing) = out.svc.get(&key) {
            if existing.group != group_id {
                tracing::warn!(service = %name, frontend = %entry.ip, port = entry.port,
                    "frontend already used by another service port; skipped");
            }
            continue;
        }
        out.svc.insert(
            key,
            SvcVal {
                group: group_id,
                count,
                flags,
                affinity_timeout: svc.affinity_timeout.unwrap_or(0),
            },
        );
    }
}

fn fill_group(out: &mut MapContent, kind: GroupKind, group: u32, backends: &[&Backend]) {
    match kind {
        GroupKind::Maglev(_) => {
            // The names hashed are `ip:port` (no brackets for IPv6): kept stable across versions so an
            // upgrade does not move flows.
            let names: Vec<String> = backends
                .iter()
                .map(|b| format!("{}:{}", b.ip, b.port))
                .collect();
            for (slot, idx) in maglev::table(&names, abi::MAGLEV_M).into_iter().enumerate() {
                out.maglev.insert(
                    SlotKey {
                        group,
                        slot: slot as u32,
                    },
                    backend_of(backends[idx as usize]),
                );
            }
        }
        GroupKind::Random(_) => {
            for (slot, b) in backends.iter().enumerate() {
                out.slot.insert(
                    SlotKey {
                        group,
                        slot: slot as u32,
                    },
                    backend_of(b),
                );
            }
        }
    }
}

fn add_source_ranges(out: &mut MapContent, fe: &FrontendPlan, group: u32) {
    let family = family_code(fe.key.family());
    for net in &fe.allowed_sources {
        let (addr, rfam) = ip_words(net.network());
        if rfam != family {
            continue;
        }
        let data = SrcKeyData {
            group,
            family,
            pad: [0; 3],
            addr,
        };
        out.src.insert((64 + u32::from(net.prefix_len()), data), 1);
    }
}

/// Entries to write and keys to delete to turn `current` into `want`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapDiff<K, V> {
    pub upsert: Vec<(K, V)>,
    pub delete: Vec<K>,
}

impl<K, V> MapDiff<K, V> {
    pub fn len(&self) -> usize {
        self.upsert.len() + self.delete.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub fn diff_map<K: Ord + Clone, V: PartialEq + Clone>(
    current: &BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
) -> MapDiff<K, V> {
    let upsert = want
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let delete = current
        .keys()
        .filter(|k| !want.contains_key(*k))
        .cloned()
        .collect();
    MapDiff { upsert, delete }
}

/// Backends that left a group (their UDP conntrack and affinity entries must go).
pub fn removed_backends(current: &MapContent, want: &MapContent) -> BTreeSet<(u32, abi::Backend)> {
    let collect = |c: &MapContent| -> BTreeSet<(u32, abi::Backend)> {
        c.slot
            .iter()
            .chain(c.maglev.iter())
            .map(|(k, b)| (k.group, *b))
            .collect()
    };
    let before = collect(current);
    let after = collect(want);
    before.difference(&after).copied().collect()
}

/// Backends of connectionless (UDP) frontends found in the maps: after a restart, compute
/// decides which of them went stale while the agent was down.
pub fn connectionless_backends(content: &MapContent) -> BTreeSet<(Protocol, IpAddr, u16)> {
    let udp_groups: BTreeSet<u32> = content
        .svc
        .iter()
        .filter(|(k, v)| k.proto == Protocol::Udp.number() && v.count > 0)
        .map(|(_, v)| v.group)
        .collect();
    content
        .slot
        .iter()
        .chain(&content.maglev)
        .filter(|(k, _)| udp_groups.contains(&k.group))
        .map(|(_, b)| {
            let ip = crate::dump::backend_ip(b);
            (Protocol::Udp, ip, u16::from_be(b.port))
        })
        .collect()
}
