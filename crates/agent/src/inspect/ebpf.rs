//! Reads the eBPF dataplane's pinned maps (under `--bpffs-path`) back into a
//! [`KernelView`]: each frontend's `sock` entry (socket-LB, this node's own processes) is the
//! `node` route, its `ext` entry (tc/XDP, packets from elsewhere) the `outside` and `pods`
//! routes; groups resolve to their slots or Maglev table. The maps carry no Service names.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{HashMap, Map, MapData};
use ipnet::IpNet;
use sluice_dp_ebpf::abi::{
    self, Backend, CidrKeyData, CtKey, CtVal, SlotKey, SrcKeyData, SvcKey, SvcVal,
};
use sluice_plan::{FrontendAddr, FrontendKey, Protocol};

use super::InspectError;
use super::kernel::{KernelFrontend, KernelRoute, KernelView};

/// What the agent-owned maps hold.
#[derive(Debug, Default, Clone)]
pub struct Pinned {
    pub svc: BTreeMap<SvcKey, SvcVal>,
    pub slot: BTreeMap<SlotKey, Backend>,
    pub maglev: BTreeMap<SlotKey, Backend>,
    /// (prefix length, data) → value.
    pub src: Vec<(u32, SrcKeyData)>,
    pub cidr: Vec<(u32, CidrKeyData)>,
}

fn open(dir: &Path, name: &str) -> Result<Map, InspectError> {
    let path = dir.join(name);
    let map_err = |detail: String| InspectError::Map {
        path: path.display().to_string(),
        detail,
    };
    let data = MapData::from_pin(&path).map_err(|e| map_err(e.to_string()))?;
    Map::from_map_data(data).map_err(|e| map_err(e.to_string()))
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
    dir: &Path,
    name: &str,
) -> Result<T, InspectError> {
    T::try_from(open(dir, name)?).map_err(|e| InspectError::Map {
        path: dir.join(name).display().to_string(),
        detail: e.to_string(),
    })
}

fn read_err(dir: &Path, name: &str, e: aya::maps::MapError) -> InspectError {
    InspectError::Map {
        path: dir.join(name).display().to_string(),
        detail: e.to_string(),
    }
}

/// Whether the eBPF dataplane's maps are pinned under `dir`.
pub fn present(dir: &Path) -> bool {
    dir.join(abi::MAP_SVC).exists()
}

/// Reads the agent-owned maps under `dir`.
pub fn read_pinned(dir: &Path) -> Result<Pinned, InspectError> {
    let mut out = Pinned::default();
    let svc: HashMap<MapData, SvcKey, SvcVal> = typed(dir, abi::MAP_SVC)?;
    for item in svc.iter() {
        let (k, v) = item.map_err(|e| read_err(dir, abi::MAP_SVC, e))?;
        out.svc.insert(k, v);
    }
    for (name, target) in [
        (abi::MAP_SLOT, &mut out.slot),
        (abi::MAP_MAGLEV, &mut out.maglev),
    ] {
        let map: HashMap<MapData, SlotKey, Backend> = typed(dir, name)?;
        for item in map.iter() {
            let (k, v) = item.map_err(|e| read_err(dir, name, e))?;
            target.insert(k, v);
        }
    }
    let src: LpmTrie<MapData, SrcKeyData, u32> = typed(dir, abi::MAP_SRC)?;
    for item in src.iter() {
        let (k, _) = item.map_err(|e| read_err(dir, abi::MAP_SRC, e))?;
        out.src.push((k.prefix_len(), k.data()));
    }
    let cidr: LpmTrie<MapData, CidrKeyData, u32> = typed(dir, abi::MAP_CIDR)?;
    for item in cidr.iter() {
        let (k, _) = item.map_err(|e| read_err(dir, abi::MAP_CIDR, e))?;
        out.cidr.push((k.prefix_len(), k.data()));
    }
    Ok(out)
}

/// The datapath's conntrack entries (original direction only: client → frontend, and the
/// backend chosen).
pub fn read_conntrack(dir: &Path) -> Result<Vec<(CtKey, CtVal)>, InspectError> {
    let ct: HashMap<MapData, CtKey, CtVal> = typed(dir, abi::MAP_CT)?;
    let mut out = Vec::new();
    for item in ct.iter() {
        let (k, v) = item.map_err(|e| read_err(dir, abi::MAP_CT, e))?;
        if k.dir == abi::CT_DIR_ORIG {
            out.push((k, v));
        }
    }
    Ok(out)
}

/// An address from network-order words (`IPv4` in the first).
pub fn addr(words: [u32; 4], v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    } else {
        let mut octets = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            octets[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(octets))
    }
}

/// Keys carry no family: an address with only its first word set is IPv4 (as the dataplane's
/// own dump reads them).
pub fn key_addr(words: [u32; 4]) -> IpAddr {
    addr(words, words[1..] == [0, 0, 0])
}

fn backend_addr(b: &Backend) -> SocketAddr {
    SocketAddr::new(
        addr(b.addr, b.family == abi::FAMILY_V4),
        u16::from_be(b.port),
    )
}

pub fn protocol(number: u8) -> Option<Protocol> {
    match number {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    }
}

/// The backends of one entry's group.
fn group_backends(pinned: &Pinned, value: &SvcVal) -> Vec<SocketAddr> {
    let mut out: BTreeSet<SocketAddr> = BTreeSet::new();
    if value.flags & abi::SVC_MAGLEV != 0 {
        let range = SlotKey {
            group: value.group,
            slot: 0,
        }..SlotKey {
            group: value.group,
            slot: u32::MAX,
        };
        out.extend(pinned.maglev.range(range).map(|(_, b)| backend_addr(b)));
    } else {
        out.extend((0..u32::from(value.count)).filter_map(|slot| {
            let key = SlotKey {
                group: value.group,
                slot,
            };
            pinned.slot.get(&key).map(backend_addr)
        }));
    }
    out.into_iter().collect()
}

fn route(pinned: &Pinned, value: Option<&SvcVal>, masquerade: bool) -> KernelRoute {
    let Some(value) = value else {
        return KernelRoute::Drop;
    };
    if value.flags & abi::SVC_REJECT != 0 {
        return KernelRoute::Reject;
    }
    let backends = group_backends(pinned, value);
    if backends.is_empty() {
        // No group: the entry is left untranslated (endpoints exist only elsewhere).
        return KernelRoute::Drop;
    }
    KernelRoute::Forward {
        backends,
        masquerade,
    }
}

fn flags(value: &SvcVal) -> Vec<String> {
    let names = [
        (abi::SVC_AFFINITY, "affinity"),
        (abi::SVC_MAGLEV, "maglev"),
        (abi::SVC_SRC_RANGES, "src-ranges"),
    ];
    names
        .iter()
        .filter(|(bit, _)| value.flags & bit != 0)
        .map(|(_, name)| (*name).to_owned())
        .collect()
}

/// Source ranges of a group (`sl_src_v1`: group 32 bits + family 8 + pad 24, then the address).
fn source_ranges(pinned: &Pinned, group: u32) -> Vec<IpNet> {
    pinned
        .src
        .iter()
        .filter(|(_, data)| data.group == group)
        .filter_map(|(plen, data)| {
            let ip = addr(data.addr, data.family == abi::FAMILY_V4);
            IpNet::new(ip, u8::try_from(plen.checked_sub(64)?).ok()?).ok()
        })
        .collect()
}

/// The view of the pinned maps.
pub fn decode(pinned: &Pinned) -> KernelView {
    let mut entries: BTreeMap<FrontendKey, [Option<&SvcVal>; 2]> = BTreeMap::new();
    for (key, value) in &pinned.svc {
        let Some(protocol) = protocol(key.proto) else {
            continue;
        };
        let frontend = FrontendKey {
            addr: FrontendAddr::Ip(key_addr(key.addr)),
            protocol,
            port: u16::from_be(key.port),
        };
        let scope = usize::from(key.scope == abi::SCOPE_EXT);
        entries.entry(frontend).or_default()[scope] = Some(value);
    }
    let frontends = entries
        .into_iter()
        .map(|(key, [sock, ext])| {
            let ext_flags = ext.map_or(0, |v| v.flags);
            let masq = ext_flags & abi::SVC_MASQ != 0;
            let masq_outside = masq || ext_flags & abi::SVC_MASQ_OFFCLUSTER != 0;
            let mut all_flags: Vec<String> = sock.into_iter().chain(ext).flat_map(flags).collect();
            all_flags.sort();
            all_flags.dedup();
            KernelFrontend {
                key,
                service: None,
                location: format!("{} {key}", abi::MAP_SVC),
                pods: route(pinned, ext, masq),
                node: route(pinned, sock, false),
                outside: route(pinned, ext, masq_outside),
                allowed_sources: ext
                    .filter(|v| v.flags & abi::SVC_SRC_RANGES != 0)
                    .map(|v| source_ranges(pinned, v.group))
                    .unwrap_or_default(),
                flags: all_flags,
            }
        })
        .collect();
    KernelView {
        dataplane: "ebpf".into(),
        frontends,
        nodeport_addresses: Vec::new(),
        cluster_cidrs: pinned
            .cidr
            .iter()
            .filter_map(|(plen, data)| {
                let ip = addr(data.addr, data.family == abi::FAMILY_V4);
                IpNet::new(ip, u8::try_from(plen.checked_sub(32)?).ok()?).ok()
            })
            .collect(),
    }
}

/// Reads and decodes; `None` when no maps are pinned under `dir`.
pub fn read(dir: &Path) -> Result<Option<KernelView>, InspectError> {
    if !present(dir) {
        return Ok(None);
    }
    Ok(Some(decode(&read_pinned(dir)?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_dp_ebpf::state::{Groups, assign_groups, render};

    /// The map content the dataplane renders for a plan, decoded back: the same routes.
    #[test]
    fn rendered_maps_decode_to_the_plans_routes() {
        let yaml = include_str!("testdata/ebpf-objects.yaml");
        let plan = crate::inspect::tests::plan_of(yaml, "node-a", &["10.244.0.0/16"]);
        let groups = assign_groups(&plan, &Groups::default(), &Default::default());
        let content = render(&plan, &groups);
        let pinned = Pinned {
            svc: content.svc.clone(),
            slot: content.slot.clone(),
            maglev: content.maglev.clone(),
            src: content.src.keys().copied().collect(),
            cidr: content.cidr.keys().copied().collect(),
        };
        let view = decode(&pinned);
        let web = view
            .frontend("10.96.0.10".parse().unwrap(), Protocol::Tcp, 80)
            .expect("cluster IP");
        assert_eq!(
            web.node.backends(),
            [
                "10.244.1.2:8080".parse::<SocketAddr>().unwrap(),
                "10.244.2.2:8080".parse().unwrap()
            ]
        );
        let lb = view
            .frontend("203.0.113.10".parse().unwrap(), Protocol::Tcp, 80)
            .expect("LB IP");
        assert_eq!(
            lb.allowed_sources,
            vec!["198.51.100.0/24".parse::<IpNet>().unwrap()]
        );
        assert!(lb.flags.contains(&"maglev".to_owned()), "{:?}", lb.flags);
        assert_eq!(
            lb.outside.backends(),
            ["10.244.1.2:8080".parse::<SocketAddr>().unwrap()]
        );
        let np = view
            .frontend("192.0.2.11".parse().unwrap(), Protocol::Tcp, 30080)
            .expect("NodePort per address");
        assert_eq!(
            np.outside,
            KernelRoute::Drop,
            "eTP Local, no local endpoint"
        );
        let empty = view
            .frontend("10.96.0.11".parse().unwrap(), Protocol::Tcp, 80)
            .expect("no endpoints");
        assert_eq!(empty.node, KernelRoute::Reject);
        assert_eq!(
            view.cluster_cidrs,
            vec!["10.244.0.0/16".parse::<IpNet>().unwrap()]
        );
    }
}
