//! Reading our table back through the `nftables` crate's typed JSON schema (for the `nft -f`
//! executor; the netlink executor reads the same over netlink): chain and set names (what a
//! restart reconciles) and the DNAT targets of connectionless service traffic (whose conntrack
//! entries may have gone stale while the agent was down).

use std::borrow::Cow;
use std::net::IpAddr;

use nftables::expr::{Expression, MetaKey, NamedExpression};
use nftables::schema::{NfListObject, NfObject, Nftables};
use nftables::stmt::{Match, Statement};
use sluice_plan::Protocol;

use crate::exec::Readback;
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
