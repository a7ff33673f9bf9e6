//! Reading our table back through the `nftables` crate's typed JSON schema (for the `nft -f`
//! executor; the netlink executor reads the same over netlink): chain and set names (what a
//! restart reconciles), the endpoint slots and the rules drawing from them (what a restart
//! keeps), and the DNAT targets of connectionless service traffic (whose conntrack entries may
//! have gone stale while the agent was down). The slot map and its rules are read from the
//! JSON directly: the crate's schema has no concatenated map data.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use nftables::expr::{Expression, MetaKey, NamedExpression};
use nftables::schema::{NfListObject, NfObject, Nftables};
use nftables::stmt::{Match, Statement};
use sluice_plan::Protocol;

use crate::exec::Readback;
use crate::ir::ENDPOINT_SLOTS;
use crate::slots::{self, SlotRule};
use crate::transaction::TABLE;

/// Parses `nft -j list ...` output. Each object is decoded on its own: objects the schema
/// cannot express (nft 1.0.6 prints some maps with concatenated types the crate refuses) are
/// skipped — we need chains, affinity sets and endpoint rules, which it reads.
pub fn parse(json: &[u8]) -> Result<Nftables<'static>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Listing {
        nftables: Vec<serde_json::Value>,
    }
    let listing: Listing = serde_json::from_slice(json)?;
    let objects: Vec<NfObject<'static>> = listing
        .nftables
        .into_iter()
        .filter_map(|value| serde_json::from_value(value).ok())
        .collect();
    Ok(Nftables {
        objects: Cow::Owned(objects),
    })
}

fn objects<'a, 'b: 'a>(doc: &'a Nftables<'b>) -> impl Iterator<Item = &'a NfListObject<'b>> {
    doc.objects.iter().filter_map(|o| match o {
        NfObject::ListObject(obj) => Some(obj),
        _ => None,
    })
}

/// Whether `nft -j list tables` shows our table.
pub fn has_table(doc: &Nftables<'_>, name: &str) -> bool {
    objects(doc).any(|o| matches!(o, NfListObject::Table(t) if t.name == name))
}

/// The rules drawing from `endpoint-slots` and its elements, from `nft -j list table` output.
pub fn slot_readback(
    json: &[u8],
) -> Result<(Vec<SlotRule>, BTreeMap<u32, SocketAddr>), serde_json::Error> {
    let listing: serde_json::Value = serde_json::from_slice(json)?;
    let mut rules = Vec::new();
    let mut elements = BTreeMap::new();
    for object in listing["nftables"].as_array().into_iter().flatten() {
        if let Some(map) = object.get("map").filter(|m| m["name"] == ENDPOINT_SLOTS) {
            elements.extend(
                map["elem"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(slot_element),
            );
        } else if let Some(rule) = object.get("rule").filter(|r| r["table"] == TABLE) {
            rules.extend(slot_rule(rule));
        }
    }
    Ok((rules, elements))
}

/// `[SLOT, {"concat": [ADDR, PORT]}]`.
fn slot_element(element: &serde_json::Value) -> Option<(u32, SocketAddr)> {
    let slot = u32::try_from(element.get(0)?.as_u64()?).ok()?;
    let parts = element.get(1)?.get("concat")?.as_array()?;
    let ip: IpAddr = parts.first()?.as_str()?.parse().ok()?;
    let port = u16::try_from(parts.get(1)?.as_u64()?).ok()?;
    Some((slot, SocketAddr::new(ip, port)))
}

/// `meta l4proto P dnat to numgen random mod M [offset O] map @endpoint-slots`.
fn slot_rule(rule: &serde_json::Value) -> Option<SlotRule> {
    let statements = rule["expr"].as_array()?;
    let draw = statements.iter().find_map(|s| {
        let map = s.get("dnat")?.get("addr")?.get("map")?;
        if map["data"].as_str()? != format!("@{ENDPOINT_SLOTS}") {
            return None;
        }
        let numgen = map["key"].get("numgen")?;
        let modulus = u32::try_from(numgen["mod"].as_u64()?).ok()?;
        let offset = u32::try_from(numgen["offset"].as_u64().unwrap_or(0)).ok()?;
        Some((offset, modulus))
    })?;
    let protocol = statements.iter().find_map(|s| {
        let m = s.get("match")?;
        if m["left"]["meta"]["key"] != "l4proto" {
            return None;
        }
        match m["right"].as_str()? {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => Some(Protocol::Sctp),
            _ => None,
        }
    });
    Some(SlotRule {
        chain: rule["chain"].as_str()?.to_owned(),
        protocol,
        offset: draw.0,
        modulus: draw.1,
    })
}

/// Adds what the slot map and its rules say to `back`: the blocks, and the UDP targets.
pub fn add_slots(back: &mut Readback, rules: &[SlotRule], elements: &BTreeMap<u32, SocketAddr>) {
    back.backends.extend(slots::udp_targets(rules, elements));
    back.layout = slots::layout_from(rules, elements);
}

/// Chains, sets and connectionless DNAT targets of our table.
pub fn readback(doc: &Nftables<'_>) -> Readback {
    let mut out = Readback::default();
    for object in objects(doc) {
        match object {
            NfListObject::Chain(c) if c.table == TABLE => {
                out.existing.chains.insert(c.name.to_string());
            }
            NfListObject::Set(s) if s.table == TABLE => {
                out.existing.sets.insert(s.name.to_string());
            }
            NfListObject::Rule(r) if r.table == TABLE => {
                out.backends.extend(dnat_target(&r.expr));
            }
            _ => {}
        }
    }
    out
}

/// `meta l4proto udp dnat to IP:PORT` → (udp, IP, PORT). Only connectionless protocols
/// matter (their flows outlive a backend).
fn dnat_target(statements: &[Statement<'_>]) -> Option<(Protocol, IpAddr, u16)> {
    let protocol = statements.iter().find_map(|s| match s {
        Statement::Match(Match { left, right, .. }) if is_l4proto(left) => match right {
            Expression::String(p) if p == "udp" => Some(Protocol::Udp),
            _ => None,
        },
        _ => None,
    })?;
    let nat = statements.iter().find_map(|s| match s {
        Statement::DNAT(Some(nat)) => Some(nat),
        _ => None,
    })?;
    let ip = match nat.addr.as_ref()? {
        Expression::String(text) => text.parse().ok()?,
        _ => return None,
    };
    let port = match nat.port.as_ref()? {
        Expression::Number(n) => u16::try_from(*n).ok()?,
        _ => return None,
    };
    Some((protocol, ip, port))
}

fn is_l4proto(expr: &Expression<'_>) -> bool {
    matches!(expr, Expression::Named(NamedExpression::Meta(m)) if m.key == MetaKey::L4proto)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed `nft -j list table ip sluice` output of nft 1.0.6 for one UDP endpoint chain of
    /// an unnamed service port (whose chain name has no trailing port name).
    const LISTING: &str = r#"{"nftables": [
      {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
      {"table": {"family": "ip", "name": "sluice", "handle": 1}},
      {"set": {"family": "ip", "name": "aff-ABCDEFGH", "table": "sluice", "type": "ipv4_addr", "handle": 4, "flags": ["timeout", "dynamic"], "timeout": 10800}},
      {"chain": {"family": "ip", "table": "sluice", "name": "ep-ABCDEFGH-kube-system/dns/udp", "handle": 9}},
      {"rule": {"family": "ip", "table": "sluice", "chain": "ep-ABCDEFGH-kube-system/dns/udp", "handle": 10, "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "10.244.1.5"}},
        {"jump": {"target": "mark-for-masquerade"}}]}},
      {"rule": {"family": "ip", "table": "sluice", "chain": "ep-ABCDEFGH-kube-system/dns/udp", "handle": 11, "expr": [
        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}},
        {"dnat": {"addr": "10.244.1.5", "port": 5353}}]}},
      {"rule": {"family": "ip", "table": "sluice", "chain": "ep-QQQQQQQQ-default/web/tcp", "handle": 12, "expr": [
        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
        {"dnat": {"addr": "10.244.1.6", "port": 8080}}]}}
    ]}"#;

    /// Trimmed `nft -j list table ip sluice` of nft 1.0.6: a UDP service on the slot path.
    const SLOT_LISTING: &str = r#"{"nftables": [
      {"map": {"family": "ip", "name": "endpoint-slots", "table": "sluice", "type": "integer", "handle": 3, "map": "ipv4_addr . inet_service",
               "elem": [[0, {"concat": ["10.244.1.9", 5353]}], [4, {"concat": ["10.244.1.9", 5353]}], [5, {"concat": ["10.244.1.9", 5353]}]]}},
      {"rule": {"family": "ip", "table": "sluice", "chain": "cl-ABCDEFGH-kube-system/dns/udp", "handle": 7, "expr": [
        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}},
        {"dnat": {"family": "ip", "addr": {"map": {"key": {"numgen": {"mode": "random", "mod": 4}}, "data": "@endpoint-slots"}}}}]}},
      {"rule": {"family": "ip", "table": "sluice", "chain": "cl-ABCDEFGH-kube-system/dns/udp", "handle": 8, "expr": [
        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}},
        {"dnat": {"family": "ip", "addr": {"map": {"key": {"numgen": {"mode": "random", "mod": 8, "offset": 4}}, "data": "@endpoint-slots"}}}}]}}
    ]}"#;

    #[test]
    fn reads_slot_blocks_and_their_udp_endpoints() {
        let (rules, elements) = slot_readback(SLOT_LISTING.as_bytes()).expect("parses");
        assert_eq!(rules.len(), 2);
        assert_eq!((rules[1].offset, rules[1].modulus), (4, 8));
        assert_eq!(rules[0].protocol, Some(Protocol::Udp));
        let mut back = Readback::default();
        add_slots(&mut back, &rules, &elements);
        let placed = &back.layout["cl-ABCDEFGH-kube-system/dns/udp"];
        assert_eq!((placed.base, placed.slots.exact.len()), (0, 4));
        assert_eq!(placed.slots.spread.iter().flatten().count(), 2);
        assert_eq!(
            back.backends.into_iter().collect::<Vec<_>>(),
            vec![(Protocol::Udp, "10.244.1.9".parse().unwrap(), 5353)]
        );
    }

    #[test]
    fn finds_chains_sets_and_udp_targets_whatever_the_chain_name() {
        let doc = parse(LISTING.as_bytes()).expect("nft 1.0.6 JSON parses");
        let back = readback(&doc);
        assert!(
            back.existing
                .chains
                .contains("ep-ABCDEFGH-kube-system/dns/udp")
        );
        assert!(back.existing.sets.contains("aff-ABCDEFGH"));
        assert_eq!(
            back.backends.into_iter().collect::<Vec<_>>(),
            vec![(Protocol::Udp, "10.244.1.5".parse().unwrap(), 5353)],
            "TCP targets are not needed"
        );
    }
}
