//! Pure construction of `nft -f` scripts: a full resync of one family, or only what changed
//! for some service ports. nft applies every script as one atomic transaction, so packets
//! never see a half-updated table.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use sluice_plan::Family;

use crate::render::{
    Element, MASQUERADE_MARK, ServiceRules, addr_keyword, addr_type, element_containers,
    table_family,
};

pub const TABLE: &str = "sluice";

/// What already exists in the kernel for one family, as read back by `restore`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Existing {
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
}

/// Static chains: (name, base-chain declaration or empty, rules).
fn base_chains(family: Family) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let a = addr_keyword(family);
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

/// A transaction being built, in phases that keep every intermediate step valid: objects are
/// created before anything refers to them, and unreferenced before they are deleted; a map key
/// that moves to another value is deleted before it is added again.
struct Script {
    prefix: String,
    add_sets: Vec<String>,
    add_chains: Vec<String>,
    flush_chains: Vec<String>,
    add_rules: Vec<String>,
    /// `flush map|set` lines (full resync only).
    flush_containers: Vec<String>,
    delete_elements: Vec<Element>,
    add_elements: Vec<Element>,
    delete_chains: Vec<String>,
    delete_sets: Vec<String>,
}

impl Script {
    fn new(family: Family) -> Self {
        Self {
            prefix: format!("{} {TABLE}", table_family(family)),
            add_sets: Vec::new(),
            add_chains: Vec::new(),
            flush_chains: Vec::new(),
            add_rules: Vec::new(),
            flush_containers: Vec::new(),
            delete_elements: Vec::new(),
            add_elements: Vec::new(),
            delete_chains: Vec::new(),
            delete_sets: Vec::new(),
        }
    }

    fn affinity_set(&mut self, family: Family, name: &str, timeout: u32) {
        self.add_sets.push(format!(
            "add set {} {name} {{ type {} ; flags dynamic,timeout ; timeout {timeout}s ; }}",
            self.prefix,
            addr_type(family)
        ));
    }

    fn rules(&mut self, chain: &str, rules: &[String]) {
        for rule in rules {
            self.add_rules
                .push(format!("add rule {} {chain} {rule}", self.prefix));
        }
    }

    /// Adds the difference between two renderings of one service port.
    fn service(&mut self, family: Family, old: &ServiceRules, new: &ServiceRules) {
        for (name, timeout) in &new.affinity_sets {
            if !old.affinity_sets.contains_key(name) {
                self.affinity_set(family, name, *timeout);
            }
        }
        for (name, rules) in &new.chains {
            match old.chains.get(name) {
                None => {
                    self.add_chains.push(name.clone());
                    self.rules(name, rules);
                }
                Some(before) if before != rules => {
                    self.flush_chains.push(name.clone());
                    self.rules(name, rules);
                }
                Some(_) => {}
            }
        }
        for name in old.chains.keys().filter(|c| !new.chains.contains_key(*c)) {
            // Flushed first, so nothing it jumps to is still referenced when that goes too.
            self.flush_chains.push(name.clone());
            self.delete_chains.push(name.clone());
        }
        self.elements(&old.elements, &new.elements);
        for name in old
            .affinity_sets
            .keys()
            .filter(|n| !new.affinity_sets.contains_key(*n))
        {
            self.delete_sets.push(name.clone());
        }
    }

    /// Element changes: a changed value is a delete plus an add (nft refuses to overwrite a
    /// map key).
    fn elements(&mut self, old: &[Element], new: &[Element]) {
        let before: BTreeSet<&Element> = old.iter().collect();
        let after: BTreeSet<&Element> = new.iter().collect();
        self.delete_elements
            .extend(before.difference(&after).map(|e| (*e).clone()));
        self.add_elements
            .extend(after.difference(&before).map(|e| (*e).clone()));
    }

    fn finish(self) -> String {
        let p = &self.prefix;
        let mut text = String::new();
        for line in &self.add_sets {
            let _ = writeln!(text, "{line}");
        }
        for name in &self.add_chains {
            let _ = writeln!(text, "add chain {p} {name}");
        }
        for name in &self.flush_chains {
            let _ = writeln!(text, "flush chain {p} {name}");
        }
        for line in &self.add_rules {
            let _ = writeln!(text, "{line}");
        }
        for line in &self.flush_containers {
            let _ = writeln!(text, "{line}");
        }
        element_lines(&mut text, p, "delete element", &self.delete_elements);
        element_lines(&mut text, p, "add element", &self.add_elements);
        for name in &self.delete_chains {
            let _ = writeln!(text, "delete chain {p} {name}");
        }
        for name in &self.delete_sets {
            let _ = writeln!(text, "delete set {p} {name}");
        }
        text
    }
}

/// Element commands grouped by container, chunked so one line never grows with the cluster.
fn element_lines(text: &mut String, prefix: &str, verb: &str, elements: &[Element]) {
    let mut sorted: Vec<&Element> = elements.iter().collect();
    sorted.sort();
    for group in sorted.chunk_by(|a, b| a.0 == b.0) {
        let container = group[0].0;
        for chunk in group.chunks(1000) {
            let items: Vec<String> = chunk
                .iter()
                .map(|(_, key, value)| match (verb, value) {
                    // A delete names the key only.
                    ("add element", Some(v)) => format!("{key} : {v}"),
                    _ => key.clone(),
                })
                .collect();
            let _ = writeln!(
                text,
                "{verb} {prefix} {container} {{ {} }}",
                items.join(", ")
            );
        }
    }
}

/// Only what changed: for each service port (old rendering, new rendering) and, when the node
/// changed, the node-wide elements. Empty when nothing differs.
pub fn delta<'a>(
    family: Family,
    services: impl IntoIterator<Item = (&'a ServiceRules, &'a ServiceRules)>,
    node: Option<(&[Element], &[Element])>,
) -> String {
    let mut s = Script::new(family);
    for (old, new) in services {
        s.service(family, old, new);
    }
    if let Some((old, new)) = node {
        s.elements(old, new);
    }
    s.finish()
}

/// A complete resync of one family: declares the table and every static object (idempotent
/// `add`), rewrites every chain and map, and deletes chains and sets that `existing` has but
/// the plan does not. No table flush: conntrack state and affinity sets survive.
pub fn full<'a>(
    family: Family,
    services: impl IntoIterator<Item = &'a ServiceRules>,
    node: &[Element],
    existing: &Existing,
) -> String {
    let mut text = String::new();
    let prefix = format!("{} {TABLE}", table_family(family));
    let _ = writeln!(text, "add table {prefix}");
    for (name, kind, body) in element_containers(family) {
        let _ = writeln!(text, "add {kind} {prefix} {name} {body}");
    }
    let bases = base_chains(family);
    for (name, decl, _) in &bases {
        if decl.is_empty() {
            let _ = writeln!(text, "add chain {prefix} {name}");
        } else {
            let _ = writeln!(text, "add chain {prefix} {name} {{ {decl} }}");
        }
    }
    let mut s = Script::new(family);
    for (name, _, rules) in &bases {
        s.flush_chains.push((*name).to_owned());
        s.rules(name, rules);
    }
    let mut wanted_chains = BTreeSet::new();
    let mut wanted_sets = BTreeSet::new();
    let mut elements: Vec<Element> = node.to_vec();
    for rules in services {
        for (name, timeout) in &rules.affinity_sets {
            s.affinity_set(family, name, *timeout);
            wanted_sets.insert(name.clone());
        }
        for (name, chain_rules) in &rules.chains {
            s.add_chains.push(name.clone());
            s.flush_chains.push(name.clone());
            s.rules(name, chain_rules);
            wanted_chains.insert(name.clone());
        }
        elements.extend(rules.elements.iter().cloned());
    }
    for name in existing
        .chains
        .iter()
        .filter(|c| !wanted_chains.contains(*c) && !is_base_chain(family, c))
    {
        s.flush_chains.push(name.clone());
        s.delete_chains.push(name.clone());
    }
    for name in existing
        .sets
        .iter()
        .filter(|n| n.starts_with("aff-") && !wanted_sets.contains(*n))
    {
        s.delete_sets.push(name.clone());
    }
    // Maps are rewritten whole: flushed (after the rules that use them are in place) and
    // refilled, all in the same transaction.
    s.flush_containers = element_containers(family)
        .iter()
        .map(|(name, kind, _)| format!("flush {kind} {prefix} {name}"))
        .collect();
    s.add_elements = elements;
    text.push_str(&s.finish());
    text
}

/// Removes both tables whether or not they exist (`add` first makes `delete` always valid).
pub fn cleanup() -> String {
    let mut text = String::new();
    for family in Family::ALL {
        let _ = writeln!(text, "add table {} {TABLE}", table_family(family));
        let _ = writeln!(text, "delete table {} {TABLE}", table_family(family));
    }
    text
}
