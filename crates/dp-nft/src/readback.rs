//! Reading our table back through the `nftables` crate's typed JSON schema (for the `nft -f`
//! executor; the netlink executor reads the same over netlink): chain and set names (what a
//! restart reconciles), the slot maps' elements (what a restart keeps), and the DNAT targets
//! of connectionless service traffic (whose conntrack entries may have gone stale while the
//! agent was down). The slot maps are read from the JSON directly: the crate's schema has no
//! concatenated map data.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use nftables::expr::{Expression, MetaKey, NamedExpression};
use nftables::schema::{NfListObject, NfObject, Nftables};
use nftables::stmt::{Match, Statement};
use sluice_plan::Protocol;

use crate::exec::Readback;
use crate::slots::{self, DrawKey, Keyed, Picker, SlotElement};
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

/// The names of our table's maps (the typed schema skips those with concatenated data) and
/// the elements of our slot maps, from `nft -j list table` output.
pub fn slot_readback(json: &[u8]) -> Result<(Vec<String>, Vec<SlotElement>), serde_json::Error> {
    let listing: serde_json::Value = serde_json::from_slice(json)?;
    let (mut names, mut out) = (Vec::new(), Vec::new());
    for map in listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("map"))
        .filter(|m| m["table"] == TABLE)
    {
        let Some(name) = map["name"].as_str() else {
            continue;
        };
        names.push(name.to_owned());
        if let Some(picker) = Picker::from_map(name) {
            let elements = map["elem"].as_array().into_iter().flatten();
            out.extend(elements.filter_map(|e| slot_element(e, picker)));
        }
    }
    Ok((names, out))
}

/// `[{"concat": [ADDR, PORT, SLOT]}, {"concat": [ADDR, PORT]}]` (or `[PORT, SLOT]` as key).
fn slot_element(element: &serde_json::Value, picker: Picker) -> Option<SlotElement> {
    let key = element.get(0)?.get("concat")?.as_array()?;
    let number = |v: &serde_json::Value| v.as_u64();
    let (draw, slot) = match (picker.keyed, key.as_slice()) {
        (Keyed::Address, [addr, port, slot]) => {
            let addr: IpAddr = addr.as_str()?.parse().ok()?;
            (
                DrawKey::Address(addr, u16::try_from(number(port)?).ok()?),
                slot,
            )
        }
        (Keyed::Port, [port, slot]) => (DrawKey::Port(u16::try_from(number(port)?).ok()?), slot),
        _ => return None,
    };
    let value = element.get(1)?.get("concat")?.as_array()?;
    let ip: IpAddr = value.first()?.as_str()?.parse().ok()?;
    let port = u16::try_from(number(value.get(1)?)?).ok()?;
    let slot = u32::try_from(number(slot)?).ok()?;
    Some((picker, draw, slot, SocketAddr::new(ip, port)))
}

/// Adds what the slot maps hold to `back`: each frontend's slots, and the UDP targets.
pub fn add_slots(back: &mut Readback, elements: &[SlotElement]) {
    let (found, udp) = slots::from_elements(elements);
    back.backends.extend(udp);
    back.slots = found;
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

    /// `nft -j list table ip sluice` of nft 1.0.6: a UDP service's slots, address- and
    /// port-keyed.
    const SLOT_LISTING: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "sluice", "handle": 26}},
      {"map": {"family": "ip", "name": "slots-cluster-ip-udp-4", "table": "sluice", "type": ["ipv4_addr", "inet_service", "integer"], "handle": 1, "map": "ipv4_addr . inet_service",
               "elem": [[{"concat": ["10.96.0.53", 53, 0]}, {"concat": ["10.244.1.9", 5353]}], [{"concat": ["10.96.0.53", 53, 4]}, {"concat": ["10.244.1.9", 5353]}]]}},
      {"map": {"family": "ip", "name": "slots-local-port-udp-4", "table": "sluice", "type": ["inet_service", "integer"], "handle": 2, "map": "ipv4_addr . inet_service",
               "elem": [[{"concat": [30053, 0]}, {"concat": ["10.244.1.9", 5353]}]]}}]}"#;

    #[test]
    fn reads_slot_maps_and_their_udp_endpoints() {
        let (names, elements) = slot_readback(SLOT_LISTING.as_bytes()).expect("parses");
        assert_eq!(names, ["slots-cluster-ip-udp-4", "slots-local-port-udp-4"]);
        assert_eq!(elements.len(), 3);
        let mut back = Readback::default();
        add_slots(&mut back, &elements);
        let cluster_ip = DrawKey::Address("10.96.0.53".parse().unwrap(), 53);
        let slots = &back.slots[&(sluice_plan::SetName::Cluster, Protocol::Udp, cluster_ip)];
        assert_eq!(slots.capacity(), 4);
        assert_eq!(slots.entries().count(), 2);
        assert!(back.slots.contains_key(&(
            sluice_plan::SetName::Local,
            Protocol::Udp,
            DrawKey::Port(30053)
        )));
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
