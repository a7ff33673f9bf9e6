//! Map contents as readable rows (`sluice plan --proxy-mode ebpf`, golden files, `inspect`).
//!
//! ```text
//! sl_svc_v1 10.96.0.10:80/tcp sock -> group 1 count 2
//! sl_svc_v1 10.96.0.10:80/tcp ext -> group 1 count 2 masquerade pods
//! sl_svc_v1 10.96.0.10:80/tcp ext-pods -> group 1 count 2
//! sl_svc_v1 nodeports-v4:30080/tcp ext -> group 2 count 1 maglev
//! sl_svc_v1 203.0.113.5:443/tcp ext -> group 2 count 1 maglev src-ranges
//! sl_slot_v1 group 1 slot 0 -> 10.244.1.2:8080
//! sl_maglev_v1 group 2 -> 10.244.1.3:8080 x1021
//! sl_src_v1 group 2 203.0.113.0/24
//! sl_nodeip_v1 172.18.0.2
//! sl_cidr_v1 10.244.0.0/16
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::abi::{self, Backend, SvcKey, SvcVal};
use crate::render::MapContent;

/// An address from network-order words (`IPv4` in the first).
pub(crate) fn addr(words: [u32; 4], family: u8) -> IpAddr {
    if family == abi::FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    } else {
        let mut octets = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            octets[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(octets))
    }
}

/// A frontend key's address (`nodeports-v4` for the address-less NodePort entries); IPv4
/// keys use only the first word.
fn frontend(key: &SvcKey) -> String {
    let port = u16::from_be(key.port);
    if key.scope & abi::SCOPE_NODEPORT4 != 0 {
        return format!("nodeports-v4:{port}");
    }
    if key.scope & abi::SCOPE_NODEPORT6 != 0 {
        return format!("nodeports-v6:{port}");
    }
    socket(addr(key.addr, key.addr_family()), key.port)
}

fn scope(key: &SvcKey) -> &'static str {
    match key.scope & abi::SCOPE_CLASS_MASK {
        abi::SCOPE_SOCK => "sock",
        abi::SCOPE_EXT => "ext",
        abi::SCOPE_EXT_PODS => "ext-pods",
        _ => "?",
    }
}

fn socket(ip: IpAddr, port_be: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{}", u16::from_be(port_be)),
        IpAddr::V6(v6) => format!("[{v6}]:{}", u16::from_be(port_be)),
    }
}

fn backend(b: &Backend) -> String {
    socket(backend_ip(b), b.port)
}

/// The address of a backend entry.
pub(crate) fn backend_ip(b: &Backend) -> IpAddr {
    addr(b.addr, b.family)
}

fn protocol(number: u8) -> &'static str {
    match number {
        6 => "tcp",
        17 => "udp",
        132 => "sctp",
        _ => "?",
    }
}

fn flags(v: &SvcVal) -> String {
    let names = [
        (abi::SVC_REJECT, "reject"),
        (abi::SVC_AFFINITY, "affinity"),
        (abi::SVC_SRC_RANGES, "src-ranges"),
        (abi::SVC_MASQ, "masquerade"),
        (abi::SVC_MAGLEV, "maglev"),
        (abi::SVC_DROP, "drop"),
        (abi::SVC_PODS, "pods"),
    ];
    let mut out = String::new();
    for (bit, name) in names {
        if v.flags & bit != 0 {
            out.push(' ');
            out.push_str(name);
        }
    }
    if v.flags & abi::SVC_AFFINITY != 0 {
        let _ = write!(out, " timeout {}s", v.affinity_timeout);
    }
    out
}

/// Every entry of `content`, one row each (Maglev tables summarised per backend).
pub fn rows(content: &MapContent) -> String {
    let mut out = String::new();
    for (k, v) in &content.svc {
        let _ = writeln!(
            out,
            "{} {}/{} {} -> group {} count {}{}",
            abi::MAP_SVC,
            frontend(k),
            protocol(k.proto),
            scope(k),
            v.group,
            v.count,
            flags(v)
        );
    }
    for (k, b) in &content.slot {
        let _ = writeln!(
            out,
            "{} group {} slot {} -> {}",
            abi::MAP_SLOT,
            k.group,
            k.slot,
            backend(b)
        );
    }
    let mut maglev: BTreeMap<u32, BTreeMap<String, usize>> = BTreeMap::new();
    for (k, b) in &content.maglev {
        *maglev
            .entry(k.group)
            .or_default()
            .entry(backend(b))
            .or_default() += 1;
    }
    for (group, shares) in maglev {
        let shares: Vec<String> = shares.iter().map(|(b, n)| format!("{b} x{n}")).collect();
        let _ = writeln!(
            out,
            "{} group {group} -> {}",
            abi::MAP_MAGLEV,
            shares.join(", ")
        );
    }
    for key in &content.src {
        let _ = writeln!(
            out,
            "{} group {} {}/{}",
            abi::MAP_SRC,
            key.group,
            addr(key.addr, key.family),
            key.prefixlen - 64
        );
    }
    for key in &content.nodeip {
        let _ = writeln!(out, "{} {}", abi::MAP_NODEIP, addr(key.addr, key.family));
    }
    for key in &content.cidr {
        let _ = writeln!(
            out,
            "{} {}/{}",
            abi::MAP_CIDR,
            addr(key.addr, key.family),
            key.prefixlen - 32
        );
    }
    out
}
