//! Pure unit tests: ABI layout vs. BTF, rendering and diffing of map contents.

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::net::IpAddr;

use sluice_plan::{Protocol, ServicePortName, SetName};

use crate::abi::*;
use crate::state::{self, GroupKind, Groups, MapContent};

// ---- minimal ELF + BTF reader (only what the layout test needs) ----

fn u16le(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32le(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64le(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

fn elf_section<'a>(elf: &'a [u8], want: &str) -> &'a [u8] {
    let shoff = u64le(elf, 0x28) as usize;
    let shentsize = u16le(elf, 0x3a) as usize;
    let shnum = u16le(elf, 0x3c) as usize;
    let shstrndx = u16le(elf, 0x3e) as usize;
    let sh = |i: usize| shoff + i * shentsize;
    let strtab_off = u64le(elf, sh(shstrndx) + 0x18) as usize;
    for i in 0..shnum {
        let name_off = u32le(elf, sh(i)) as usize;
        let name_bytes = &elf[strtab_off + name_off..];
        let end = name_bytes.iter().position(|b| *b == 0).expect("NUL");
        if &name_bytes[..end] == want.as_bytes() {
            let off = u64le(elf, sh(i) + 0x18) as usize;
            let size = u64le(elf, sh(i) + 0x20) as usize;
            return &elf[off..off + size];
        }
    }
    panic!("no {want} section");
}

/// struct name -> (size, [(member, byte offset)])
fn btf_structs(btf: &[u8]) -> BTreeMap<String, (u32, Vec<(String, u32)>)> {
    assert_eq!(u16le(btf, 0), 0xeb9f, "BTF magic");
    let hdr_len = u32le(btf, 4) as usize;
    let type_off = hdr_len + u32le(btf, 8) as usize;
    let type_len = u32le(btf, 12) as usize;
    let str_off = hdr_len + u32le(btf, 16) as usize;
    let name = |off: u32| {
        let s = &btf[str_off + off as usize..];
        String::from_utf8_lossy(&s[..s.iter().position(|b| *b == 0).expect("NUL")]).into_owned()
    };
    let mut out = BTreeMap::new();
    let mut p = type_off;
    while p < type_off + type_len {
        let name_off = u32le(btf, p);
        let info = u32le(btf, p + 4);
        let size = u32le(btf, p + 8);
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        p += 12;
        let extra = match kind {
            1 | 14 | 17 => 4,
            3 => 12,
            4 | 5 | 15 | 19 => 12 * vlen,
            6 | 13 => 8 * vlen,
            _ => 0,
        };
        if kind == 4 && name_off != 0 {
            let members = (0..vlen)
                .map(|i| {
                    let m = p + 12 * i;
                    (name(u32le(btf, m)), (u32le(btf, m + 8) & 0x00ff_ffff) / 8)
                })
                .collect();
            out.insert(name(name_off), (size, members));
        }
        p += extra;
    }
    out
}

macro_rules! check_layout {
    ($structs:expr, $c:literal, $rust:ty, [$($field:ident),*]) => {{
        let (size, members) = $structs.get($c).unwrap_or_else(|| panic!("{} not in BTF", $c));
        assert_eq!(*size as usize, size_of::<$rust>(), "size of {}", $c);
        $(
            let off = members.iter().find(|(n, _)| n == stringify!($field))
                .unwrap_or_else(|| panic!("{}.{} not in BTF", $c, stringify!($field))).1;
            assert_eq!(off as usize, offset_of!($rust, $field), "{}.{}", $c, stringify!($field));
        )*
        assert_eq!(members.len(), [$(stringify!($field)),*].len(), "member count of {}", $c);
    }};
}

#[test]
fn layout_matches_btf() {
    for obj in [crate::SOCK_OBJ, crate::TC_OBJ] {
        let structs = btf_structs(elf_section(obj, ".BTF"));
        check_layout!(structs, "lb_svc_key", SvcKey, [addr, port, proto, scope]);
        check_layout!(
            structs,
            "lb_svc_val",
            SvcVal,
            [group, count, flags, affinity_timeout]
        );
        check_layout!(structs, "lb_slot_key", SlotKey, [group, slot]);
        check_layout!(structs, "lb_backend", Backend, [addr, port, family, pad]);
        check_layout!(structs, "lb_aff_key", AffKey, [cookie, addr, group, pad]);
        check_layout!(structs, "lb_aff_val", AffVal, [backend, pad, last_ns]);
        check_layout!(
            structs,
            "lb_rev_key",
            RevKey,
            [cookie, addr, port, pad, pad2]
        );
        check_layout!(structs, "lb_rev_val", RevVal, [addr, port, pad]);
        check_layout!(
            structs,
            "ct_key",
            CtKey,
            [saddr, daddr, sport, dport, proto, dir, pad]
        );
        check_layout!(
            structs,
            "ct_val",
            CtVal,
            [nat_addr, nat_port, flags, pad, group, last_ns]
        );
        let (size, members) = structs.get("lb_cidr_key").expect("lb_cidr_key in BTF");
        assert_eq!(*size as usize, 4 + size_of::<CidrKeyData>());
        for (field, off) in [
            ("family", offset_of!(CidrKeyData, family)),
            ("addr", offset_of!(CidrKeyData, addr)),
        ] {
            let m = members.iter().find(|(n, _)| n == field).expect("member");
            assert_eq!(m.1 as usize, 4 + off, "lb_cidr_key.{field}");
        }
        // The LPM key is aya's `Key { prefix_len, data }` around SrcKeyData.
        let (size, members) = structs.get("lb_src_key").expect("lb_src_key in BTF");
        assert_eq!(*size as usize, 4 + size_of::<SrcKeyData>());
        for (field, off) in [
            ("group", offset_of!(SrcKeyData, group)),
            ("family", offset_of!(SrcKeyData, family)),
            ("addr", offset_of!(SrcKeyData, addr)),
        ] {
            let m = members.iter().find(|(n, _)| n == field).expect("member");
            assert_eq!(m.1 as usize, 4 + off, "lb_src_key.{field}");
        }
    }
}

// ---- rendering ----

#[path = "../tests/common/shim.rs"]
#[allow(dead_code)]
mod shim;
use shim::{DesiredState, Endpoint, ServicePortState, TrafficPolicy};

fn name(n: &str, proto: Protocol) -> ServicePortName {
    ServicePortName::new("default", n, "", proto)
}

fn ep(ip: &str, port: u16, local: bool) -> Endpoint {
    Endpoint {
        ip: ip.parse().expect("ip"),
        port,
        is_local: local,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn nodeport_service() -> ServicePortState {
    ServicePortState {
        port: 80,
        cluster_ips: vec![ip("10.96.0.10")],
        node_port: Some(30080),
        load_balancer_ips: vec![ip("192.0.2.10")],
        load_balancer_source_ranges: vec!["198.51.100.0/24".parse().expect("cidr")],
        endpoints: vec![ep("10.244.1.2", 8080, true), ep("10.244.2.2", 8080, false)],
        ..Default::default()
    }
}

fn desired_with(svc: ServicePortState) -> DesiredState {
    let mut d = DesiredState {
        node_port_addresses: vec![ip("172.18.0.2")],
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
        ..Default::default()
    };
    d.services.insert(name("web", Protocol::Tcp), svc);
    d
}

fn render(d: &DesiredState) -> (Groups, MapContent) {
    let plan = d.plan();
    let g = state::assign_groups(&plan, &Groups::default(), &MapContent::default());
    let c = state::render(&plan, &g);
    (g, c)
}

fn svc_key(addr: &str, port: u16, scope: u8) -> SvcKey {
    SvcKey {
        addr: state::ip_words(ip(addr)).0,
        port: port.to_be(),
        proto: 6,
        scope,
    }
}

#[test]
fn renders_every_frontend_with_its_flags() {
    let (g, c) = render(&desired_with(nodeport_service()));
    // ClusterIP, node port and LB IP, each in both scopes.
    assert_eq!(c.svc.len(), 6);
    let cip_ext = c.svc[&svc_key("10.96.0.10", 80, SCOPE_EXT)];
    assert_eq!(
        cip_ext.flags, SVC_MASQ_OFFCLUSTER,
        "random pick, masquerade off-cluster sources"
    );
    let cip = c.svc[&svc_key("10.96.0.10", 80, SCOPE_SOCK)];
    assert_eq!(cip.count, 2);
    assert_eq!(cip.flags, 0);
    let np_ext = c.svc[&svc_key("172.18.0.2", 30080, SCOPE_EXT)];
    assert_eq!(np_ext.flags, SVC_MAGLEV | SVC_MASQ);
    let lb_ext = c.svc[&svc_key("192.0.2.10", 80, SCOPE_EXT)];
    assert_eq!(lb_ext.flags, SVC_MAGLEV | SVC_MASQ | SVC_SRC_RANGES);
    assert_eq!(np_ext.group, lb_ext.group);
    assert_eq!(
        g.ids[&(
            name("web", Protocol::Tcp),
            GroupKind::Maglev(SetName::Cluster),
            FAMILY_V4
        )],
        np_ext.group
    );
    // The node's own address is outside the source ranges: node-local clients are refused.
    let lb_sock = c.svc[&svc_key("192.0.2.10", 80, SCOPE_SOCK)];
    assert_eq!((lb_sock.count, lb_sock.flags & SVC_REJECT), (0, 0));
    // One Maglev table for the external group, one slot group shared by the random entries.
    assert_eq!(c.maglev.len(), MAGLEV_M as usize);
    assert_eq!(c.slot.len(), 2);
    assert_eq!(c.src.len(), 1);
    let ((plen, data), _) = c.src.iter().next().expect("range");
    assert_eq!(*plen, 64 + 24);
    assert_eq!(data.group, lb_ext.group);
}

#[test]
fn local_policy_uses_local_endpoints_without_masquerade() {
    let mut svc = nodeport_service();
    svc.external_traffic_policy = TrafficPolicy::Local;
    let (_, c) = render(&desired_with(svc));
    let np_ext = c.svc[&svc_key("172.18.0.2", 30080, SCOPE_EXT)];
    assert_eq!(np_ext.count, 1);
    assert_eq!(np_ext.flags & SVC_MASQ, 0);
    assert!(
        c.maglev
            .values()
            .all(|b| b.addr == state::ip_words(ip("10.244.1.2")).0)
    );
    // Node-local sockets to the NodePort are short-circuited to all endpoints.
    let np_sock = c.svc[&svc_key("172.18.0.2", 30080, SCOPE_SOCK)];
    assert_eq!(np_sock.count, 2);
}

#[test]
fn no_endpoints_rejects_and_remote_only_drops() {
    let mut svc = nodeport_service();
    svc.endpoints.clear();
    let (_, c) = render(&desired_with(svc));
    let v = c.svc[&svc_key("10.96.0.10", 80, SCOPE_SOCK)];
    assert_eq!((v.count, v.flags & SVC_REJECT), (0, SVC_REJECT));

    let mut svc = nodeport_service();
    svc.internal_traffic_policy = TrafficPolicy::Local;
    svc.endpoints = vec![ep("10.244.2.2", 8080, false)];
    let (_, c) = render(&desired_with(svc));
    let v = c.svc[&svc_key("10.96.0.10", 80, SCOPE_SOCK)];
    assert_eq!((v.count, v.flags & SVC_REJECT), (0, 0));
}

#[test]
fn one_endpoint_change_touches_few_entries() {
    let mut svc = nodeport_service();
    svc.endpoints = (1..=10)
        .map(|i| ep(&format!("10.244.2.{i}"), 8080, false))
        .collect();
    let d1 = desired_with(svc.clone());
    let (g1, c1) = render(&d1);
    svc.endpoints.remove(4);
    let d2 = desired_with(svc);
    let plan2 = d2.plan();
    let g2 = state::assign_groups(&plan2, &g1, &c1);
    assert_eq!(g1, g2, "group ids are stable");
    let c2 = state::render(&plan2, &g2);
    let maglev = state::diff_map(&c1.maglev, &c2.maglev);
    assert!(maglev.delete.is_empty());
    // The removed backend owned ~M/10 slots; Maglev moves little else.
    assert!(
        maglev.upsert.len() < 102 + 60,
        "{} maglev slots rewritten",
        maglev.upsert.len()
    );
    let svc_diff = state::diff_map(&c1.svc, &c2.svc);
    // Only backend counts change on frontends.
    assert!(svc_diff.delete.is_empty());
    for (key, after) in &svc_diff.upsert {
        let before = c1.svc[key];
        assert_eq!((before.count, after.count), (10, 9), "{key:?}");
        assert_eq!((before.group, before.flags), (after.group, after.flags));
    }
    let removed = state::removed_backends(&c1, &c2);
    assert!(!removed.is_empty());
    assert!(
        removed
            .iter()
            .all(|(_, b)| b.addr == state::ip_words(ip("10.244.2.5")).0)
    );
}

#[test]
fn restart_reuses_group_ids_from_kernel_content() {
    let d = desired_with(nodeport_service());
    let (_, c) = render(&d);
    // A new process knows nothing but what the maps hold.
    let plan = d.plan();
    let g = state::assign_groups(&plan, &Groups::default(), &c);
    let again = state::render(&plan, &g);
    assert_eq!(again, c);
    assert!(state::diff_map(&c.svc, &again.svc).is_empty());
}

#[test]
fn new_service_never_reuses_an_id_still_in_the_kernel() {
    let d = desired_with(nodeport_service());
    let (_, c) = render(&d);
    let mut d2 = DesiredState {
        node_port_addresses: d.node_port_addresses.clone(),
        ..Default::default()
    };
    let mut other = nodeport_service();
    other.cluster_ips = vec![ip("10.96.0.99")];
    other.node_port = Some(30099);
    other.load_balancer_ips.clear();
    d2.services.insert(name("other", Protocol::Tcp), other);
    let g2 = state::assign_groups(&d2.plan(), &Groups::default(), &c);
    let old: std::collections::BTreeSet<u32> = c.svc.values().map(|v| v.group).collect();
    assert!(g2.ids.values().all(|id| !old.contains(id)));
}

#[test]
fn families_get_their_own_groups() {
    let mut svc = nodeport_service();
    svc.cluster_ips.push(ip("fd00::10"));
    svc.endpoints.push(ep("fd00:244::2", 8080, false));
    let (_, c) = render(&desired_with(svc));
    let v4 = c.svc[&svc_key("10.96.0.10", 80, SCOPE_SOCK)];
    let v6 = c.svc[&svc_key("fd00::10", 80, SCOPE_SOCK)];
    assert_ne!(v4.group, v6.group);
    assert_eq!((v4.count, v6.count), (2, 1));
}

#[test]
fn restart_with_two_dual_stack_services_rewrites_nothing() {
    let mut d = desired_with(nodeport_service());
    d.node_port_addresses.push(ip("fd77::1"));
    let mut other = nodeport_service();
    other.cluster_ips = vec![ip("10.96.0.11")];
    other.node_port = Some(30090);
    other.load_balancer_ips.clear();
    other.load_balancer_source_ranges.clear();
    for e in &mut other.endpoints {
        e.port = 9090;
    }
    other.endpoints.push(ep("fd78::2", 9090, true));
    d.services.insert(name("lines", Protocol::Tcp), other);
    let (g1, c) = render(&d);
    let plan = d.plan();
    let g2 = state::assign_groups(&plan, &Groups::default(), &c);
    assert_eq!(g1, g2);
    assert_eq!(state::render(&plan, &g2), c);
}
