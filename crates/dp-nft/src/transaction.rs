//! Pure construction of `nft -f` scripts: a full resync of one family, or only the difference
//! between what is programmed and what should be. Every script is applied as one atomic
//! transaction by nft, so packets never see a half-updated table.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::render::{Family, Rendered, element_containers};

pub const TABLE: &str = "sluice";

/// Mark bit meaning "masquerade this connection on the way out" (kube-proxy uses the same bit).
pub const MASQUERADE_MARK: &str = "0x4000";

/// What already exists in the kernel for one family, as read back by `restore`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Existing {
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
    /// `(ip, port)` the found ruleset DNATs UDP service traffic to (its `ep-*` chains of UDP
    /// service ports): the endpoints a previous agent programmed, so the first sync after a
    /// restart can remove conntrack entries toward those that went away meanwhile.
    pub udp_endpoints: BTreeSet<(std::net::IpAddr, u16)>,
}

/// Static chains: (name, base-chain declaration or empty, rules).
fn base_chains(family: Family) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let a = family.addr_keyword();
    vec![
        (
            "nat-prerouting",
            "type nat hook prerouting priority dstnat ; policy accept ;",
            vec!["jump services".into()],
        ),
        (
            "nat-output",
            "type nat hook output priority -100 ; policy accept ;",
            vec!["jump services".into()],
        ),
        (
            "nat-postrouting",
            "type nat hook postrouting priority srcnat ; policy accept ;",
            vec!["jump masquerading".into()],
        ),
        (
            "filter-prerouting",
            "type filter hook prerouting priority -110 ; policy accept ;",
            vec!["ct state new jump firewall-check".into()],
        ),
        (
            "filter-input",
            "type filter hook input priority -110 ; policy accept ;",
            vec!["ct state new jump endpoints-check".into()],
        ),
        (
            "filter-forward",
            "type filter hook forward priority -110 ; policy accept ;",
            vec!["ct state new jump endpoints-check".into()],
        ),
        (
            "filter-output",
            "type filter hook output priority -110 ; policy accept ;",
            vec!["ct state new jump endpoints-check".into()],
        ),
        (
            "services",
            "",
            vec![
                format!("{a} daddr . meta l4proto . th dport vmap @service-ips"),
                format!("{a} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"),
            ],
        ),
        (
            "firewall-check",
            "",
            vec![format!(
                "{a} daddr . meta l4proto . th dport vmap @firewall-ips"
            )],
        ),
        (
            "endpoints-check",
            "",
            vec![
                format!("{a} daddr . meta l4proto . th dport vmap @no-endpoint-services"),
                format!(
                    "{a} daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"
                ),
            ],
        ),
        (
            "mark-for-masquerade",
            "",
            vec![format!("meta mark set meta mark | {MASQUERADE_MARK}")],
        ),
        (
            "masquerading",
            "",
            vec![
                format!("meta mark & {MASQUERADE_MARK} == 0 return"),
                format!("meta mark set meta mark ^ {MASQUERADE_MARK}"),
                "masquerade fully-random".into(),
            ],
        ),
        ("reject-chain", "", vec!["reject".into()]),
    ]
}

/// Names of the static chains (never deleted by reconciliation).
pub fn is_base_chain(family: Family, name: &str) -> bool {
    base_chains(family).iter().any(|(n, _, _)| *n == name)
}

struct Script {
    prefix: String,
    text: String,
}

impl Script {
    fn new(family: Family) -> Self {
        Self {
            prefix: format!("{} {TABLE}", family.table_family()),
            text: String::new(),
        }
    }

    fn line(&mut self, verb: &str, rest: std::fmt::Arguments<'_>) {
        let _ = writeln!(self.text, "{verb} {} {rest}", self.prefix);
    }

    fn rules(&mut self, chain: &str, rules: &[String]) {
        for rule in rules {
            self.line("add rule", format_args!("{chain} {rule}"));
        }
    }

    fn elements(&mut self, verb: &str, container: &str, items: &[String]) {
        // Chunked so one line never grows unbounded with the cluster.
        for chunk in items.chunks(1000) {
            self.line(verb, format_args!("{container} {{ {} }}", chunk.join(", ")));
        }
    }
}

fn element_text(key: &str, value: &Option<String>) -> String {
    match value {
        Some(v) => format!("{key} : {v}"),
        None => key.to_owned(),
    }
}

/// A complete resync of one family: declares the table and every static object (idempotent
/// `add`), rewrites every chain and map, and deletes chains and sets that `existing` has but
/// `desired` does not. No table flush: conntrack state and affinity sets survive.
pub fn full(family: Family, desired: &Rendered, existing: &Existing) -> String {
    let mut s = Script::new(family);
    let _ = writeln!(s.text, "add table {}", s.prefix);
    for (name, kind, body) in element_containers(family) {
        let _ = writeln!(s.text, "add {kind} {} {name} {body}", s.prefix);
    }
    for (name, timeout) in &desired.affinity_sets {
        s.line(
            "add set",
            format_args!(
                "{name} {{ type {} ; flags dynamic,timeout ; timeout {timeout}s ; }}",
                family.addr_type()
            ),
        );
    }
    let bases = base_chains(family);
    for (name, decl, _) in &bases {
        if decl.is_empty() {
            s.line("add chain", format_args!("{name}"));
        } else {
            s.line("add chain", format_args!("{name} {{ {decl} }}"));
        }
    }
    for name in desired.chains.keys() {
        s.line("add chain", format_args!("{name}"));
    }
    let stale_chains: Vec<&String> = existing
        .chains
        .iter()
        .filter(|c| !desired.chains.contains_key(*c) && !is_base_chain(family, c))
        .collect();
    for (name, _, _) in &bases {
        s.line("flush chain", format_args!("{name}"));
    }
    for name in desired.chains.keys().chain(stale_chains.iter().copied()) {
        s.line("flush chain", format_args!("{name}"));
    }
    for (name, _, rules) in &bases {
        s.rules(name, rules);
    }
    for (name, rules) in &desired.chains {
        s.rules(name, rules);
    }
    for (container, kind, _) in element_containers(family) {
        let _ = writeln!(s.text, "flush {kind} {} {container}", s.prefix);
        let items: Vec<String> = desired
            .elements
            .get(container)
            .into_iter()
            .flatten()
            .map(|(k, v)| element_text(k, v))
            .collect();
        s.elements("add element", container, &items);
    }
    for name in stale_chains {
        s.line("delete chain", format_args!("{name}"));
    }
    for name in existing
        .sets
        .iter()
        .filter(|n| n.starts_with("aff-") && !desired.affinity_sets.contains_key(*n))
    {
        s.line("delete set", format_args!("{name}"));
    }
    s.text
}

/// Only the difference between `old` (what is programmed) and `new`. Empty when equal.
pub fn diff(family: Family, old: &Rendered, new: &Rendered) -> String {
    let mut s = Script::new(family);
    for (name, timeout) in &new.affinity_sets {
        if !old.affinity_sets.contains_key(name) {
            s.line(
                "add set",
                format_args!(
                    "{name} {{ type {} ; flags dynamic,timeout ; timeout {timeout}s ; }}",
                    family.addr_type()
                ),
            );
        }
    }
    let added: Vec<&String> = new
        .chains
        .keys()
        .filter(|c| !old.chains.contains_key(*c))
        .collect();
    let changed: Vec<&String> = new
        .chains
        .iter()
        .filter(|(c, rules)| old.chains.get(*c).is_some_and(|r| r != *rules))
        .map(|(c, _)| c)
        .collect();
    let removed: Vec<&String> = old
        .chains
        .keys()
        .filter(|c| !new.chains.contains_key(*c))
        .collect();
    for name in &added {
        s.line("add chain", format_args!("{name}"));
    }
    // Removed chains are flushed first so nothing they jump to is still referenced.
    for name in changed.iter().chain(&removed) {
        s.line("flush chain", format_args!("{name}"));
    }
    for name in added.iter().chain(&changed) {
        s.rules(name, &new.chains[*name]);
    }
    let empty = BTreeMap::new();
    let containers: BTreeSet<&&str> = old.elements.keys().chain(new.elements.keys()).collect();
    for container in containers {
        let before = old.elements.get(*container).unwrap_or(&empty);
        let after = new.elements.get(*container).unwrap_or(&empty);
        // A changed value is a delete plus an add (nft refuses to overwrite a map key).
        let gone: Vec<String> = before
            .iter()
            .filter(|(k, v)| after.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        let new_items: Vec<String> = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(*v))
            .map(|(k, v)| element_text(k, v))
            .collect();
        s.elements("delete element", container, &gone);
        s.elements("add element", container, &new_items);
    }
    for name in &removed {
        s.line("delete chain", format_args!("{name}"));
    }
    for name in old
        .affinity_sets
        .keys()
        .filter(|n| !new.affinity_sets.contains_key(*n))
    {
        s.line("delete set", format_args!("{name}"));
    }
    s.text
}

/// Removes both tables whether or not they exist (`add` first makes `delete` always valid).
pub fn cleanup() -> String {
    let mut text = String::new();
    for family in Family::ALL {
        let _ = writeln!(text, "add table {} {TABLE}", family.table_family());
        let _ = writeln!(text, "delete table {} {TABLE}", family.table_family());
    }
    text
}
