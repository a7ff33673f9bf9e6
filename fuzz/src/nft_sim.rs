//! A small model of the nf_tables objects sluice's scripts touch, applying `nft -f` text the
//! way the kernel does where it matters for our scripts: all-or-nothing transactions, objects
//! that must exist before use, a chain deleted only when it has no rules and nothing jumps to
//! it, a map key that cannot be added twice with different values, every `@set` and
//! `jump`/`goto` target defined at the end. It reads only the line shapes sluice writes and
//! refuses any other, so a renderer change that writes something new shows up here.

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

impl Ruleset {
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
