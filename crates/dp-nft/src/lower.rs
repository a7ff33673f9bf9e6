//! Lowers the typed rules and elements of [`crate::ir`] onto nf_tables expressions and
//! element keys — the same expressions nft 1.0.6 generates for the text form (checked against
//! `nft --debug=netlink`), so either path leaves the same ruleset.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use sluice_nftnl::consts::{NFPROTO_IPV4, NFPROTO_IPV6, reg};
use sluice_nftnl::expr::{
    CT_STATE, CT_STATUS, DYNSET_OP_UPDATE, FIB_F_SADDR, FIB_RESULT_ADDRTYPE, NAT_DNAT,
    NAT_RANGE_PROTO_RANDOM_FULLY, NAT_RANGE_PROTO_SPECIFIED, NUMGEN_RANDOM, REJECT_ICMP_UNREACH,
};
use sluice_nftnl::{CmpOp, Data, Expr, MetaKey, PayloadBase, Verdict as NlVerdict};
use sluice_plan::Family;

use crate::ir::{Key, Rule, Stmt, Value, Verdict};
use crate::slots::{DrawKey, Keyed, Picker};

/// `ct state new`: the `IP_CT_NEW` bit of the state bitmask.
const CT_STATE_NEW_BIT: u32 = 1 << 3;
/// `ct status dnat`: `IPS_DST_NAT`.
const CT_STATUS_DNAT_BIT: u32 = 1 << 5;
/// `RTN_LOCAL`, the route type `fib ... type local` compares with.
const RTN_LOCAL: u32 = 2;
/// ICMP "port unreachable" codes (what a plain `reject` sends).
const ICMP_PORT_UNREACH: u8 = 3;
const ICMPV6_PORT_UNREACH: u8 = 4;

pub fn nfproto(family: Family) -> u8 {
    match family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

/// Offset of the source address in the network header, and the address length.
fn saddr(family: Family) -> (u32, u32) {
    match family {
        Family::V4 => (12, 4),
        Family::V6 => (8, 16),
    }
}

fn daddr(family: Family) -> (u32, u32) {
    match family {
        Family::V4 => (16, 4),
        Family::V6 => (24, 16),
    }
}

pub fn addr_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    }
}

fn load(base: PayloadBase, (offset, len): (u32, u32), dreg: u32) -> Expr<'static> {
    Expr::Payload {
        base,
        offset,
        len,
        dreg,
    }
}

fn cmp(op: CmpOp, data: Data) -> Expr<'static> {
    Expr::Cmp {
        sreg: reg::R1,
        op,
        data,
    }
}

fn meta(key: MetaKey, dreg: u32) -> Expr<'static> {
    Expr::Meta { key, dreg }
}

fn verdict(v: &Verdict) -> NlVerdict<'_> {
    match v {
        Verdict::Accept => NlVerdict::Accept,
        Verdict::Drop => NlVerdict::Drop,
        Verdict::Return => NlVerdict::Return,
        Verdict::Jump(c) => NlVerdict::Jump(c),
        Verdict::Goto(c) => NlVerdict::Goto(c),
    }
}

/// The verdict of a map element, for the netlink encoder.
pub fn element_verdict(v: &Verdict) -> NlVerdict<'_> {
    verdict(v)
}

/// The expressions of `rule` in a table of `family`.
pub fn rule<'a>(rule: &'a Rule, family: Family) -> Vec<Expr<'a>> {
    let mut out = Vec::with_capacity(rule.0.len() * 3);
    for stmt in &rule.0 {
        stmt_exprs(stmt, family, &mut out);
    }
    out
}

fn stmt_exprs<'a>(stmt: &'a Stmt, family: Family, out: &mut Vec<Expr<'a>>) {
    if !match_exprs(stmt, family, out) {
        action_exprs(stmt, family, out);
    }
}

/// Matches (loads and comparisons); `false` when `stmt` is not one.
fn match_exprs<'a>(stmt: &'a Stmt, family: Family, out: &mut Vec<Expr<'a>>) -> bool {
    match stmt {
        Stmt::SaddrIs(ip) => {
            out.push(load(PayloadBase::Network, saddr(family), reg::R1));
            out.push(cmp(CmpOp::Eq, Data::new(&addr_bytes(ip))));
        }
        Stmt::SaddrIn(net) => prefix(net, family, out),
        Stmt::SaddrInSet(set) => {
            out.push(load(PayloadBase::Network, saddr(family), reg::R1));
            out.push(lookup(set, None));
        }
        Stmt::DaddrInSet(set) => {
            out.push(load(PayloadBase::Network, daddr(family), reg::R1));
            out.push(lookup(set, None));
        }
        Stmt::SaddrDaddrInSet(set) => {
            out.push(load(PayloadBase::Network, saddr(family), reg::R1));
            out.push(load(
                PayloadBase::Network,
                daddr(family),
                after_addr(family),
            ));
            out.push(lookup(set, None));
        }
        Stmt::CtStatusDnat => {
            out.push(Expr::Ct {
                key: CT_STATUS,
                dreg: reg::R1,
            });
            out.push(mask(CT_STATUS_DNAT_BIT, 0));
            out.push(cmp(CmpOp::Neq, Data::host_u32(0)));
        }
        Stmt::FibSaddrLocal => {
            out.push(Expr::Fib {
                dreg: reg::R1,
                result: FIB_RESULT_ADDRTYPE,
                flags: FIB_F_SADDR,
            });
            out.push(cmp(CmpOp::Eq, Data::host_u32(RTN_LOCAL)));
        }
        Stmt::CtStateNew => {
            out.push(Expr::Ct {
                key: CT_STATE,
                dreg: reg::R1,
            });
            out.push(mask(CT_STATE_NEW_BIT, 0));
            out.push(cmp(CmpOp::Neq, Data::host_u32(0)));
        }
        Stmt::MarkClear(bits) => {
            out.push(meta(MetaKey::Mark, reg::R1));
            out.push(mask(*bits, 0));
            out.push(cmp(CmpOp::Eq, Data::host_u32(0)));
        }
        Stmt::L4Proto(p) => {
            out.push(meta(MetaKey::L4Proto, reg::R1));
            out.push(cmp(CmpOp::Eq, Data::new(&[p.number()])));
        }
        Stmt::OneIn(n) => {
            out.push(Expr::Numgen {
                dreg: reg::R1,
                modulus: *n,
                kind: NUMGEN_RANDOM,
                offset: 0,
            });
            out.push(cmp(CmpOp::Eq, Data::host_u32(0)));
        }
        _ => return false,
    }
    true
}

/// Everything that is not a match: marks, map lookups, NAT, verdicts.
fn action_exprs<'a>(stmt: &'a Stmt, family: Family, out: &mut Vec<Expr<'a>>) {
    match stmt {
        Stmt::MarkSetOr(bits) => set_mark(!*bits, *bits, out),
        Stmt::MarkSetXor(bits) => set_mark(u32::MAX, *bits, out),
        Stmt::FrontendVmap(map) => frontend_vmap(map, family, out),
        Stmt::PortVmap(map) => {
            out.push(meta(MetaKey::L4Proto, reg::R1));
            out.push(load(PayloadBase::Transport, (2, 2), reg::R32_00 + 1));
            out.push(lookup(map, Some(reg::VERDICT)));
        }
        Stmt::UpdateSaddr(set) => {
            out.push(load(PayloadBase::Network, saddr(family), reg::R1));
            out.push(Expr::Dynset {
                set,
                op: DYNSET_OP_UPDATE,
                sreg_key: reg::R1,
            });
        }
        Stmt::Dnat(ip, port) => dnat(ip, *port, family, out),
        Stmt::PickDnat {
            picker,
            offset,
            map,
        } => pick_dnat(picker, *offset, map, family, out),
        Stmt::MasqueradeFullyRandom => out.push(Expr::Masq {
            flags: NAT_RANGE_PROTO_RANDOM_FULLY,
        }),
        Stmt::Reject => out.push(Expr::Reject {
            kind: REJECT_ICMP_UNREACH,
            icmp_code: match family {
                Family::V4 => ICMP_PORT_UNREACH,
                Family::V6 => ICMPV6_PORT_UNREACH,
            },
        }),
        Stmt::Verdict(v) => out.push(Expr::Verdict(verdict(v))),
        // Lowered by `match_exprs`.
        Stmt::SaddrIs(_)
        | Stmt::SaddrIn(_)
        | Stmt::SaddrInSet(_)
        | Stmt::DaddrInSet(_)
        | Stmt::SaddrDaddrInSet(_)
        | Stmt::CtStatusDnat
        | Stmt::FibSaddrLocal
        | Stmt::CtStateNew
        | Stmt::MarkClear(_)
        | Stmt::L4Proto(_)
        | Stmt::OneIn(_) => {}
    }
}

fn lookup(set: &str, dreg: Option<u32>) -> Expr<'_> {
    Expr::Lookup {
        set,
        sreg: reg::R1,
        dreg,
    }
}

/// `reg1 = (reg1 & bits) ^ xor` on a 32-bit host-order value.
fn mask(bits: u32, xor: u32) -> Expr<'static> {
    Expr::Bitwise {
        sreg: reg::R1,
        dreg: reg::R1,
        mask: Data::host_u32(bits),
        xor: Data::host_u32(xor),
    }
}

fn set_mark(keep: u32, xor: u32, out: &mut Vec<Expr<'_>>) {
    out.push(meta(MetaKey::Mark, reg::R1));
    out.push(mask(keep, xor));
    out.push(Expr::MetaSet {
        key: MetaKey::Mark,
        sreg: reg::R1,
    });
}

/// `ip saddr NET`: a byte-aligned prefix compares only its bytes; any other prefix masks the
/// whole address first (what nft generates).
fn prefix(net: &IpNet, family: Family, out: &mut Vec<Expr<'_>>) {
    let (offset, len) = saddr(family);
    let network = addr_bytes(&net.network());
    let bits = u32::from(net.prefix_len());
    if bits == len * 8 {
        out.push(load(PayloadBase::Network, (offset, len), reg::R1));
        out.push(cmp(CmpOp::Eq, Data::new(&network)));
    } else if bits > 0 && bits % 8 == 0 {
        let bytes = bits / 8;
        out.push(load(PayloadBase::Network, (offset, bytes), reg::R1));
        out.push(cmp(CmpOp::Eq, Data::new(&network[..bytes as usize])));
    } else {
        let netmask = addr_bytes(&net.netmask());
        out.push(load(PayloadBase::Network, (offset, len), reg::R1));
        out.push(Expr::Bitwise {
            sreg: reg::R1,
            dreg: reg::R1,
            mask: Data::new(&netmask),
            xor: Data::new(&vec![0; len as usize]),
        });
        out.push(cmp(CmpOp::Eq, Data::new(&network)));
    }
}

/// `ip daddr . meta l4proto . th dport vmap @map`: the three parts in consecutive registers
/// (each padded to 4 bytes), looked up together.
fn frontend_vmap<'a>(map: &'a str, family: Family, out: &mut Vec<Expr<'a>>) {
    let (proto_reg, port_reg) = match family {
        // 4-byte registers 1 and 2 after the address.
        Family::V4 => (reg::R32_00 + 1, reg::R32_00 + 2),
        // The second 16-byte register, then 4-byte register 5.
        Family::V6 => (reg::R2, reg::R32_00 + 5),
    };
    out.push(load(PayloadBase::Network, daddr(family), reg::R1));
    out.push(meta(MetaKey::L4Proto, proto_reg));
    out.push(load(PayloadBase::Transport, (2, 2), port_reg));
    out.push(lookup(map, Some(reg::VERDICT)));
}

/// The register right after an address of `family` in a concatenation: 4-byte register 1
/// after an IPv4 address, the second 16-byte register after an IPv6 one.
fn after_addr(family: Family) -> u32 {
    match family {
        Family::V4 => reg::R32_00 + 1,
        Family::V6 => reg::R2,
    }
}

/// `dnat to ip daddr . tcp dport . numgen random mod C offset O map @slots-...` as nft 1.0.6
/// writes it: the protocol the port implies, then the key parts in consecutive registers
/// (address, port padded to 4 bytes, slot number), looked up into the address (register 1)
/// and port (the register after it). The kernel derives the NAT flags from the registers, so
/// nft sends none.
fn pick_dnat<'a>(
    picker: &Picker,
    offset: u32,
    map: &'a str,
    family: Family,
    out: &mut Vec<Expr<'a>>,
) {
    out.push(meta(MetaKey::L4Proto, reg::R1));
    out.push(cmp(CmpOp::Eq, Data::new(&[picker.protocol.number()])));
    let numgen_reg = match picker.keyed {
        Keyed::Address => {
            out.push(load(PayloadBase::Network, daddr(family), reg::R1));
            let port_reg = after_addr(family);
            out.push(load(PayloadBase::Transport, (2, 2), port_reg));
            match family {
                Family::V4 => reg::R32_00 + 2,
                Family::V6 => reg::R32_00 + 5,
            }
        }
        Keyed::Port => {
            out.push(load(PayloadBase::Transport, (2, 2), reg::R1));
            reg::R32_00 + 1
        }
    };
    out.push(Expr::Numgen {
        dreg: numgen_reg,
        modulus: picker.capacity,
        kind: NUMGEN_RANDOM,
        offset,
    });
    out.push(Expr::Lookup {
        set: map,
        sreg: reg::R1,
        dreg: Some(reg::R1),
    });
    out.push(Expr::Nat {
        kind: NAT_DNAT,
        family: u32::from(nfproto(family)),
        reg_addr: reg::R1,
        reg_proto: after_addr(family),
        flags: None,
    });
}

fn dnat(ip: &IpAddr, port: u16, family: Family, out: &mut Vec<Expr<'_>>) {
    out.push(Expr::Immediate {
        dreg: reg::R1,
        data: Data::new(&addr_bytes(ip)),
    });
    out.push(Expr::Immediate {
        dreg: reg::R2,
        data: Data::new(&port.to_be_bytes()),
    });
    out.push(Expr::Nat {
        kind: NAT_DNAT,
        family: u32::from(nfproto(family)),
        reg_addr: reg::R1,
        reg_proto: reg::R2,
        flags: Some(NAT_RANGE_PROTO_SPECIFIED),
    });
}

/// One element key as the kernel stores it: concatenated parts each padded to 4 bytes.
/// Intervals are two keys (start, and end marked `INTERVAL_END`), see [`interval`].
pub fn key_bytes(key: &Key) -> Vec<u8> {
    let padded = |bytes: &[u8]| {
        let mut v = bytes.to_vec();
        v.resize(bytes.len().div_ceil(4) * 4, 0);
        v
    };
    match key {
        Key::Frontend {
            addr,
            protocol,
            port,
        } => {
            let mut out = addr_bytes(addr);
            out.extend(padded(&[protocol.number()]));
            out.extend(padded(&port.to_be_bytes()));
            out
        }
        Key::Port { protocol, port } => {
            let mut out = padded(&[protocol.number()]);
            out.extend(padded(&port.to_be_bytes()));
            out
        }
        Key::Addr(ip) => addr_bytes(ip),
        Key::Prefix(net) => addr_bytes(&net.network()),
        // The slot is what `numgen` writes: a 32-bit number in host byte order.
        Key::AddrSlot { addr, port, slot } => {
            let mut out = addr_bytes(addr);
            out.extend(padded(&port.to_be_bytes()));
            out.extend(slot.to_ne_bytes());
            out
        }
        Key::PortSlot { port, slot } => {
            let mut out = padded(&port.to_be_bytes());
            out.extend(slot.to_ne_bytes());
            out
        }
        Key::Pair(a, b) => {
            let mut out = addr_bytes(a);
            out.extend(addr_bytes(b));
            out
        }
    }
}

/// The data of a map element that is not a verdict: an endpoint is its address, then its
/// port (network byte order) padded to 4 bytes. `None` for verdicts.
pub fn value_bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::Verdict(_) => None,
        Value::Endpoint(target) => Some(endpoint_bytes(target)),
    }
}

fn endpoint_bytes(target: &SocketAddr) -> Vec<u8> {
    let mut out = addr_bytes(&target.ip());
    out.extend(target.port().to_be_bytes());
    out.extend([0, 0]);
    out
}

/// The frontend and slot of a slot map key, from its bytes (`None` when they do not fit
/// `keyed`).
pub fn slot_key_from_bytes(bytes: &[u8], keyed: Keyed) -> Option<(DrawKey, u32)> {
    let slot_at = bytes.len().checked_sub(4)?;
    let slot = u32::from_ne_bytes(bytes[slot_at..].try_into().ok()?);
    let port_at = slot_at.checked_sub(4)?;
    let port = u16::from_be_bytes(bytes[port_at..port_at + 2].try_into().ok()?);
    let key = match (keyed, port_at) {
        (Keyed::Port, 0) => DrawKey::Port(port),
        (Keyed::Address, 4) => {
            DrawKey::Address(IpAddr::from(<[u8; 4]>::try_from(&bytes[..4]).ok()?), port)
        }
        (Keyed::Address, 16) => {
            DrawKey::Address(IpAddr::from(<[u8; 16]>::try_from(&bytes[..16]).ok()?), port)
        }
        _ => return None,
    };
    Some((key, slot))
}

/// The endpoint a slot map element holds, from its data bytes.
pub fn endpoint_from_bytes(bytes: &[u8]) -> Option<SocketAddr> {
    let (ip, port) = match bytes.len() {
        8 => (
            IpAddr::from(<[u8; 4]>::try_from(&bytes[..4]).ok()?),
            &bytes[4..6],
        ),
        20 => (
            IpAddr::from(<[u8; 16]>::try_from(&bytes[..16]).ok()?),
            &bytes[16..18],
        ),
        _ => return None,
    };
    Some(SocketAddr::new(
        ip,
        u16::from_be_bytes(port.try_into().ok()?),
    ))
}

/// An interval `[start, end)` of an interval set: the first address and the first address
/// after the range, `None` when the range reaches the top of the address space (nft then sends
/// the start alone, flagged open-ended).
pub fn interval(net: &IpNet) -> (Vec<u8>, Option<Vec<u8>>) {
    let start = addr_bytes(&net.network());
    let mut end = addr_bytes(&net.broadcast());
    // Increment as a big-endian number; overflow means "up to the top".
    for byte in end.iter_mut().rev() {
        let (next, carry) = byte.overflowing_add(1);
        *byte = next;
        if !carry {
            return (start, Some(end));
        }
    }
    (start, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_plan::Protocol;

    #[test]
    fn frontend_keys_pad_protocol_and_port_to_four_bytes() {
        let key = Key::Frontend {
            addr: "10.96.0.10".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 80,
        };
        assert_eq!(
            key_bytes(&key),
            [10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0],
            "as nft sends `10.96.0.10 . tcp . 80`"
        );
        let port = Key::Port {
            protocol: Protocol::Udp,
            port: 30053,
        };
        assert_eq!(key_bytes(&port), [17, 0, 0, 0, 0x75, 0x65, 0, 0]);
    }

    #[test]
    fn slot_elements_are_frontend_and_host_order_slot_keys_and_address_port_data() {
        let key = Key::AddrSlot {
            addr: "10.96.0.1".parse().unwrap(),
            port: 80,
            slot: 3,
        };
        let mut expected = vec![10, 96, 0, 1, 0, 80, 0, 0];
        expected.extend(3u32.to_ne_bytes());
        assert_eq!(
            key_bytes(&key),
            expected,
            "as nft sends `10.96.0.1 . 80 . 3`"
        );
        let draw = DrawKey::Address("10.96.0.1".parse().unwrap(), 80);
        assert_eq!(
            slot_key_from_bytes(&expected, Keyed::Address),
            Some((draw, 3))
        );
        let mut expected = vec![0x75, 0x65, 0, 0];
        expected.extend(7u32.to_ne_bytes());
        assert_eq!(
            key_bytes(&Key::PortSlot {
                port: 30053,
                slot: 7
            }),
            expected
        );
        assert_eq!(
            slot_key_from_bytes(&expected, Keyed::Port),
            Some((DrawKey::Port(30053), 7))
        );
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        let bytes = value_bytes(&Value::Endpoint(v6)).unwrap();
        assert_eq!(bytes.len(), 20, "as nft sends `fd00::1 . 80`");
        assert_eq!(&bytes[16..], &[0, 80, 0, 0]);
        assert_eq!(endpoint_from_bytes(&bytes), Some(v6));
        let v4: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let bytes = value_bytes(&Value::Endpoint(v4)).unwrap();
        assert_eq!(bytes, [10, 0, 0, 1, 0x1f, 0x90, 0, 0]);
        assert_eq!(endpoint_from_bytes(&bytes), Some(v4));
    }

    #[test]
    fn intervals_end_after_the_range_or_are_open_at_the_top() {
        let (start, end) = interval(&"10.244.0.0/16".parse().unwrap());
        assert_eq!(start, [10, 244, 0, 0]);
        assert_eq!(end, Some(vec![10, 245, 0, 0]));
        let (start, end) = interval(&"255.0.0.0/8".parse().unwrap());
        assert_eq!(start, [255, 0, 0, 0]);
        assert_eq!(end, None);
        assert_eq!(interval(&"::/0".parse().unwrap()).1, None);
    }

    #[test]
    fn prefixes_compare_whole_bytes_or_mask_like_nft() {
        let count = |net: &str| {
            let mut out = Vec::new();
            prefix(&net.parse().unwrap(), Family::V4, &mut out);
            out
        };
        // /24: load 3 bytes, compare.
        assert!(matches!(
            count("203.0.113.0/24")[..],
            [Expr::Payload { len: 3, .. }, Expr::Cmp { .. }]
        ));
        // /20: load 4, mask, compare.
        assert!(matches!(
            count("203.0.112.0/20")[..],
            [
                Expr::Payload { len: 4, .. },
                Expr::Bitwise { .. },
                Expr::Cmp { .. }
            ]
        ));
        // /32: a plain address comparison.
        assert!(matches!(
            count("10.1.2.3/32")[..],
            [Expr::Payload { len: 4, .. }, Expr::Cmp { .. }]
        ));
    }
}
