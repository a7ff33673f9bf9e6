//! A small model of the nf_tables objects sluice's scripts touch, applying `nft -f` text the
//! way the kernel does where it matters for our scripts: all-or-nothing transactions, objects
//! that must exist before use, a chain deleted only when it has no rules and nothing jumps to
//! it, a map key that cannot be added twice with different values, every `@set` and
//! `jump`/`goto` target defined at the end. It reads only the line shapes sluice writes and
//! refuses any other, so a renderer change that writes something new shows up here.
//!
//! [`Ruleset::semantic`] compares what packets see rather than how it was reached: where each
//! endpoint sits in a slot map depends on the changes that led there (a change keeps the
//! slots of the endpoints that stay), and a pick chain no service uses any more stays until
//! the next full rewrite; a set keeps its capacity (which pick chain and map it uses) while
//! its endpoint count stays in range, where a full rewrite would choose afresh.

use std::collections::BTreeMap;

/// Elements of a set or map: key → value (`None` for set elements).
type Elements = BTreeMap<String, Option<String>>;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub chains: BTreeMap<String, Vec<String>>,
    /// Sets and maps: name → (declaration, elements).
    pub containers: BTreeMap<String, (String, Elements)>,
}

/// Tables by `FAMILY NAME` (`ip sluice`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub tables: BTreeMap<String, Table>,
}

/// Longest object name nf_tables takes (`NFT_NAME_MAXLEN` minus the NUL).
const MAX_NAME: usize = 255;

fn check_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'));
    let starts = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if !ok_chars || !starts || name.len() > MAX_NAME {
        return Err(format!("bad object name {name:?}"));
    }
    Ok(())
}

/// `{ a : b, c }` → [(a, Some(b)), (c, None)].
fn parse_elements(body: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let inner = body
        .strip_prefix("{ ")
        .and_then(|b| b.strip_suffix(" }"))
        .ok_or_else(|| format!("bad element list {body:?}"))?;
    Ok(inner
        .split(", ")
        .map(|item| match item.split_once(" : ") {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (item.to_owned(), None),
        })
        .collect())
}

/// Chains a rule or a verdict jumps to.
fn targets(text: &str) -> impl Iterator<Item = &str> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out = Vec::new();
    for pair in words.windows(2) {
        if matches!(pair[0], "jump" | "goto") {
            out.push(pair[1]);
        }
    }
    out.into_iter()
}

impl Table {
    fn references_to(&self, chain: &str) -> usize {
        let in_rules = self
            .chains
            .values()
            .flatten()
            .filter(|r| targets(r).any(|t| t == chain))
            .count();
        let in_maps = self
            .containers
            .values()
            .flat_map(|(_, e)| e.values().flatten())
            .filter(|v| targets(v).any(|t| t == chain))
            .count();
        in_rules + in_maps
    }

    fn container(&mut self, name: &str) -> Result<&mut Elements, String> {
        self.containers
            .get_mut(name)
            .map(|(_, e)| e)
            .ok_or_else(|| format!("no set or map {name}"))
    }

    fn chain(&mut self, name: &str) -> Result<&mut Vec<String>, String> {
        self.chains
            .get_mut(name)
            .ok_or_else(|| format!("no chain {name}"))
    }

    fn command(&mut self, verb: &str, what: &str, name: &str, rest: &str) -> Result<(), String> {
        match (verb, what) {
            ("add", "chain") => {
                check_name(name)?;
                self.chains.entry(name.to_owned()).or_default();
            }
            ("add", "set" | "map") => {
                check_name(name)?;
                self.containers
                    .entry(name.to_owned())
                    .or_insert_with(|| (rest.to_owned(), Elements::new()));
            }
            ("flush", "chain") => self.chain(name)?.clear(),
            ("flush", "set" | "map") => self.container(name)?.clear(),
            ("add", "rule") => self.chain(name)?.push(rest.to_owned()),
            ("add", "element") => {
                let elements = self.container(name)?;
                for (key, value) in parse_elements(rest)? {
                    match elements.get(&key) {
                        Some(old) if *old != value => {
                            return Err(format!("{name}: key {key} exists with {old:?}"));
                        }
                        _ => drop(elements.insert(key, value)),
                    }
                }
            }
            ("delete", "element") => {
                let elements = self.container(name)?;
                for (key, _) in parse_elements(rest)? {
                    elements
                        .remove(&key)
                        .ok_or_else(|| format!("{name}: no element {key}"))?;
                }
            }
            ("delete", "chain") => {
                if !self.chain(name)?.is_empty() {
                    return Err(format!("chain {name} still has rules"));
                }
                if self.references_to(name) > 0 {
                    return Err(format!("chain {name} is still jumped to"));
                }
                self.chains.remove(name);
            }
            ("delete", "set" | "map") => {
                let used = self
                    .chains
                    .values()
                    .flatten()
                    .any(|r| r.contains(&format!("@{name}")));
                if used {
                    return Err(format!("set {name} is still used"));
                }
                self.containers
                    .remove(name)
                    .ok_or_else(|| format!("no set {name}"))?;
            }
            _ => return Err(format!("unexpected command {verb} {what}")),
        }
        Ok(())
    }

    /// Every `jump`/`goto` target and `@set` is defined.
    fn check_references(&self) -> Result<(), String> {
        let texts = self.chains.values().flatten().chain(
            self.containers
                .values()
                .flat_map(|(_, e)| e.values().flatten()),
        );
        for text in texts {
            for target in targets(text) {
                if !self.chains.contains_key(target) {
                    return Err(format!("{text:?} jumps to missing chain {target}"));
                }
            }
            for word in text.split_whitespace() {
                if let Some(set) = word.strip_prefix('@')
                    && !self.containers.contains_key(set)
                {
                    return Err(format!("{text:?} uses missing set {set}"));
                }
            }
        }
        Ok(())
    }
}

/// `slots-SET-KEY-PROTO-CAPACITY` → the capacity.
fn slot_capacity(map: &str) -> Option<usize> {
    map.strip_prefix("slots-")?.rsplit('-').next()?.parse().ok()
}

impl Table {
    /// The pick chains nothing jumps to and their slot maps, when those are empty.
    fn drop_unused_pickers(&mut self) {
        let unused: Vec<String> = self
            .chains
            .keys()
            .filter(|c| c.starts_with("pick-") && self.references_to(c) == 0)
            .cloned()
            .collect();
        for chain in unused {
            let map = chain.replacen("pick-", "slots-", 1);
            if self.containers.get(&map).is_none_or(|(_, e)| e.is_empty()) {
                self.chains.remove(&chain);
                self.containers.remove(&map);
            }
        }
    }

    /// Each slot map's elements as what a draw sees, per frontend: the endpoints of the exact
    /// region (each once), and those of the spread region with whether it is full and even.
    fn summarize_slots(&mut self) {
        for (name, (_, elements)) in self.containers.iter_mut() {
            let Some(capacity) = slot_capacity(name) else {
                continue;
            };
            let mut exact: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut spread: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
            for (key, value) in elements.iter() {
                let (frontend, slot) = key.rsplit_once(" . ").unwrap_or((key, ""));
                let endpoint = value.clone().unwrap_or_default();
                match slot.parse::<usize>() {
                    Ok(s) if s < capacity => {
                        exact.entry(frontend.into()).or_default().push(endpoint)
                    }
                    _ => {
                        *spread
                            .entry(frontend.into())
                            .or_default()
                            .entry(endpoint)
                            .or_default() += 1
                    }
                }
            }
            let mut summary = Elements::new();
            for (frontend, mut endpoints) in exact {
                endpoints.sort();
                summary.insert(format!("{frontend} exact"), Some(endpoints.join(", ")));
            }
            for (frontend, counts) in spread {
                let total: usize = counts.values().sum();
                let even = counts
                    .values()
                    .max()
                    .zip(counts.values().min())
                    .is_some_and(|(a, b)| a - b <= 1);
                let endpoints: Vec<&str> = counts.keys().map(String::as_str).collect();
                let shape = if total == capacity && even {
                    "full and even"
                } else {
                    "uneven"
                };
                summary.insert(
                    format!("{frontend} spread"),
                    Some(format!("{} ({shape})", endpoints.join(", "))),
                );
            }
            *elements = summary;
        }
    }
}

/// `pick-...-16` / `slots-...-16` without the capacity; other words as they are.
fn without_capacity(word: &str) -> String {
    match slot_capacity(&word.replacen("pick-", "slots-", 1)) {
        Some(_) if word.starts_with("pick-") || word.starts_with("slots-") => word
            .rsplit_once('-')
            .map_or(word, |(head, _)| head)
            .to_owned(),
        _ => word.to_owned(),
    }
}

impl Table {
    /// Pick chains and slot maps named without their capacity (the draws of a pick chain
    /// summarized as the map they read), rules pointing there likewise.
    fn forget_capacities(&mut self) {
        let chains = std::mem::take(&mut self.chains);
        for (name, rules) in chains {
            let renamed = without_capacity(&name);
            let rules = if name.starts_with("pick-") {
                vec![format!(
                    "draws from {}",
                    renamed.replacen("pick-", "slots-", 1)
                )]
            } else {
                rules
                    .iter()
                    .map(|r| {
                        r.split(' ')
                            .map(without_capacity)
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .collect()
            };
            self.chains.insert(renamed, rules);
        }
        let containers = std::mem::take(&mut self.containers);
        for (name, (declaration, elements)) in containers {
            let renamed = without_capacity(&name);
            let entry = self
                .containers
                .entry(renamed)
                .or_insert_with(|| (String::new(), Elements::new()));
            if slot_capacity(&name).is_none() {
                entry.0 = declaration;
            }
            entry.1.extend(elements);
        }
    }
}

impl Ruleset {
    /// What packets see: slot maps summarized per frontend, unused pick chains left out,
    /// capacities forgotten.
    pub fn semantic(&self) -> Ruleset {
        let mut out = self.clone();
        for table in out.tables.values_mut() {
            table.drop_unused_pickers();
            table.summarize_slots();
            table.forget_capacities();
        }
        out
    }

    /// Applies a script as one transaction: on any error nothing changes.
    pub fn apply(&mut self, script: &str) -> Result<(), String> {
        let mut next = self.clone();
        for (i, line) in script.lines().enumerate() {
            next.line(line)
                .map_err(|e| format!("line {}: {line}: {e}", i + 1))?;
        }
        for (name, table) in &next.tables {
            table
                .check_references()
                .map_err(|e| format!("table {name}: {e}"))?;
        }
        *self = next;
        Ok(())
    }

    fn line(&mut self, line: &str) -> Result<(), String> {
        let words: Vec<&str> = line.splitn(6, ' ').collect();
        let (verb, what) = match words.as_slice() {
            [verb, what, ..] => (*verb, *what),
            _ => return Err("too short".into()),
        };
        let table = match words.get(2..4) {
            Some([family, name]) if matches!(*family, "ip" | "ip6") => format!("{family} {name}"),
            _ => return Err("no table".into()),
        };
        if what == "table" {
            match verb {
                "add" => drop(self.tables.entry(table).or_default()),
                "delete" => {
                    self.tables
                        .remove(&table)
                        .ok_or_else(|| format!("no table {table}"))?;
                }
                _ => return Err(format!("unexpected {verb} table")),
            }
            return Ok(());
        }
        let name = words.get(4).ok_or("no object name")?;
        let rest = words.get(5).copied().unwrap_or_default();
        self.tables
            .get_mut(&table)
            .ok_or_else(|| format!("no table {table}"))?
            .command(verb, what, name, rest)
    }
}
