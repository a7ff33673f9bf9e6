//! Pure translation of a [`DesiredState`] into the exact content of the BPF maps, and the
//! diff between two such contents. No I/O here: this is what the unit tests exercise.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use sluice_model::{DesiredState, Endpoint, ServicePortName, ServicePortState, TrafficPolicy};

use crate::abi::{self, Backend, CidrKeyData, SlotKey, SrcKeyData, SvcKey, SvcVal};
use crate::maglev;

/// `(prefix length, data)` of an `sl_src_v1` LPM entry.
pub type SrcKey = (u32, SrcKeyData);

/// Everything the agent owns in the maps (conntrack, affinity and reverse-NAT entries are
/// written by the datapath and only ever pruned by the agent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapContent {
    pub svc: BTreeMap<SvcKey, SvcVal>,
    pub slot: BTreeMap<SlotKey, Backend>,
    pub maglev: BTreeMap<SlotKey, Backend>,
    pub src: BTreeMap<SrcKey, u32>,
    /// Cluster CIDRs, `(prefix length, data)`.
    pub cidr: BTreeMap<(u32, CidrKeyData), u32>,
}

/// Which backend set a group holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupKind {
    /// ClusterIP from local sockets: `internal_endpoints()`.
    Internal,
    /// NodePort / externalIP / LB IP from local sockets: `cluster_endpoints` (short-circuit).
    ShortCircuit,
    /// NodePort / externalIP / LB IP from outside (tc): `external_endpoints()`, Maglev.
    External,
}

/// Identity of a group: one backend set of one service port, for one address family.
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

fn family_of(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        abi::FAMILY_V4
    } else {
        abi::FAMILY_V6
    }
}

pub fn backend_of(ep: &Endpoint) -> Backend {
    let (addr, family) = ip_words(ep.ip);
    Backend {
        addr,
        port: ep.port.to_be(),
        family,
        pad: 0,
    }
}

/// One frontend entry a service port wants.
struct Frontend {
    ip: IpAddr,
    port: u16,
    kind: GroupKind,
    lb_ip: bool,
}

fn frontends(svc: &ServicePortState, node_port_addresses: &[IpAddr]) -> Vec<Frontend> {
    let mut out = Vec::new();
    for ip in &svc.cluster_ips {
        out.push(Frontend {
            ip: *ip,
            port: svc.port,
            kind: GroupKind::Internal,
            lb_ip: false,
        });
    }
    let mut external: Vec<(IpAddr, u16, bool)> = Vec::new();
    if let Some(np) = svc.node_port {
        external.extend(node_port_addresses.iter().map(|ip| (*ip, np, false)));
    }
    external.extend(svc.external_ips.iter().map(|ip| (*ip, svc.port, false)));
    external.extend(svc.load_balancer_ips.iter().map(|ip| (*ip, svc.port, true)));
    for (ip, port, lb_ip) in external {
        for kind in [GroupKind::ShortCircuit, GroupKind::External] {
            out.push(Frontend {
                ip,
                port,
                kind,
                lb_ip,
            });
        }
    }
    out
}

fn endpoints_for(svc: &ServicePortState, kind: GroupKind, family: u8) -> Vec<&Endpoint> {
    let eps = match kind {
        GroupKind::Internal => svc.internal_endpoints(),
        GroupKind::ShortCircuit => &svc.cluster_endpoints,
        GroupKind::External => svc.external_endpoints(),
    };
    eps.iter().filter(|e| family_of(&e.ip) == family).collect()
}

/// Gives every group the desired state needs an id: the one it had (`prev`), else the one
/// its frontends already carry in the kernel (`current`, after a restart), else a fresh id
/// never used by anything still in the kernel.
pub fn assign_groups(desired: &DesiredState, prev: &Groups, current: &MapContent) -> Groups {
    let mut wanted: BTreeMap<GroupName, Option<u32>> = BTreeMap::new();
    for (name, svc) in &desired.services {
        for fe in frontends(svc, &desired.node_port_addresses) {
            let (addr, family) = ip_words(fe.ip);
            let gname = (name.clone(), fe.kind, family);
            let scope = if fe.kind == GroupKind::External {
                abi::SCOPE_EXT
            } else {
                abi::SCOPE_SOCK
            };
            let key = SvcKey {
                addr,
                port: fe.port.to_be(),
                proto: name.protocol.number(),
                scope,
            };
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

/// The full map content for `desired` with the given group ids.
pub fn render(desired: &DesiredState, groups: &Groups) -> MapContent {
    let mut out = MapContent::default();
    for net in &desired.cluster_cidrs {
        let (addr, family) = ip_words(net.network());
        let data = CidrKeyData {
            family,
            pad: [0; 3],
            addr,
        };
        out.cidr.insert((32 + u32::from(net.prefix_len()), data), 1);
    }
    for (name, svc) in &desired.services {
        let proto = name.protocol.number();
        let mut groups_done = BTreeSet::new();
        for fe in frontends(svc, &desired.node_port_addresses) {
            let (addr, family) = ip_words(fe.ip);
            let gname = (name.clone(), fe.kind, family);
            let Some(&group) = groups.ids.get(&gname) else {
                continue;
            };
            let eps = endpoints_for(svc, fe.kind, family);
            let mut flags = 0u16;
            if !svc.has_any_endpoints {
                flags |= abi::SVC_REJECT;
            }
            if svc.session_affinity_timeout.is_some() {
                flags |= abi::SVC_AFFINITY;
            }
            let scope = if fe.kind == GroupKind::External {
                flags |= abi::SVC_MAGLEV;
                if svc.external_traffic_policy == TrafficPolicy::Cluster {
                    flags |= abi::SVC_MASQ;
                }
                if fe.lb_ip && !svc.load_balancer_source_ranges.is_empty() {
                    flags |= abi::SVC_SRC_RANGES;
                }
                abi::SCOPE_EXT
            } else {
                abi::SCOPE_SOCK
            };
            let key = SvcKey {
                addr,
                port: fe.port.to_be(),
                proto,
                scope,
            };
            let val = SvcVal {
                group,
                count: u16::try_from(eps.len()).unwrap_or(u16::MAX),
                flags,
                affinity_timeout: svc.session_affinity_timeout.unwrap_or(0),
            };
            if let Some(existing) = out.svc.get(&key) {
                if existing.group != group {
                    tracing::warn!(service = %name, frontend = %fe.ip, port = fe.port,
                        "frontend already used by another service port; skipped");
                }
                continue;
            }
            out.svc.insert(key, val);
            if fe.kind == GroupKind::Internal {
                // ClusterIP packets routed to this node from outside (socket-LB never saw
                // them): same endpoints; masquerade sources outside the cluster CIDRs.
                let ext = SvcKey {
                    scope: abi::SCOPE_EXT,
                    ..key
                };
                out.svc.entry(ext).or_insert(SvcVal {
                    flags: val.flags | abi::SVC_MASQ_OFFCLUSTER,
                    ..val
                });
            }
            if !groups_done.insert(gname) {
                continue;
            }
            if fe.kind == GroupKind::External {
                let names: Vec<String> =
                    eps.iter().map(|e| format!("{}:{}", e.ip, e.port)).collect();
                for (slot, idx) in maglev::table(&names, abi::MAGLEV_M).into_iter().enumerate() {
                    out.maglev.insert(
                        SlotKey {
                            group,
                            slot: slot as u32,
                        },
                        backend_of(eps[idx as usize]),
                    );
                }
                for net in &svc.load_balancer_source_ranges {
                    let (raddr, rfam) = ip_words(net.network());
                    if rfam != family {
                        continue;
                    }
                    let data = SrcKeyData {
                        group,
                        family,
                        pad: [0; 3],
                        addr: raddr,
                    };
                    out.src.insert((64 + u32::from(net.prefix_len()), data), 1);
                }
            } else {
                for (slot, ep) in eps.iter().enumerate() {
                    out.slot.insert(
                        SlotKey {
                            group,
                            slot: slot as u32,
                        },
                        backend_of(ep),
                    );
                }
            }
        }
    }
    out
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
pub fn removed_backends(current: &MapContent, want: &MapContent) -> BTreeSet<(u32, Backend)> {
    let collect = |c: &MapContent| -> BTreeSet<(u32, Backend)> {
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
