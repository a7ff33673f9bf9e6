//! Pure construction of transactions: a full resync of one family, or only what changed for
//! some service ports. A [`Transaction`] is a list of typed commands; it prints as an `nft -f`
//! script (one command a line) and is sent as one netlink batch — either way the kernel
//! applies it atomically, so packets never see a half-updated table.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::LazyLock;

use sluice_plan::Family;

use crate::ir::{
    BaseChain, ChainType, Container, Element, Hook, Rule, SetRef, Stmt, Verdict, slot_map_body,
};
use crate::render::{
    MARK_FOR_MASQUERADE, MASQUERADE_MARK, REJECT_CHAIN, ServiceRules, SetDraw, addr_type,
    element_containers, picker_rules, table_family,
};
use crate::slots::Picker;

pub const TABLE: &str = "sluice";

/// Elements per `add element` / `delete element` command, so no command grows with the
/// cluster.
const ELEMENTS_PER_COMMAND: usize = 1000;

/// What already exists in the kernel for one family, as read back by `restore`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Existing {
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
}

/// One command of a transaction, in one family's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    AddTable,
    DeleteTable,
    /// A static map or set (idempotent).
    AddContainer(Container),
    /// A picker's slot map (idempotent).
    AddSlotMap(Picker),
    /// Deletes every element of a picker's slot map.
    FlushSlotMap(Picker),
    /// A session-affinity set: client addresses, each remembered for `timeout` seconds.
    AddAffinitySet {
        name: &'a str,
        timeout: u32,
    },
    AddChain {
        name: &'a str,
        base: Option<BaseChain>,
    },
    /// Deletes every rule of the chain.
    FlushChain(&'a str),
    AddRule {
        chain: &'a str,
        rule: &'a Rule,
    },
    /// Deletes every element of a static map or set.
    FlushContainer(Container),
    DeleteElements {
        set: SetRef,
        elements: Vec<&'a Element>,
    },
    AddElements {
        set: SetRef,
        elements: Vec<&'a Element>,
    },
    /// The slots of one backend set, for each of its frontends (full rewrites: the elements
    /// are made while the command is written, so a cluster's many slots are never all held
    /// as elements at once).
    AddSlots(&'a SetDraw),
    DeleteChain(&'a str),
    DeleteSet(&'a str),
}

impl Command<'_> {
    /// The `nft -f` line of this command (without the newline).
    pub fn text(&self, family: Family) -> CommandText<'_> {
        CommandText {
            command: self,
            family,
        }
    }
}

/// [`Command`] printed for one family.
#[derive(Debug, Clone, Copy)]
pub struct CommandText<'a> {
    command: &'a Command<'a>,
    family: Family,
}

impl fmt::Display for CommandText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = format!("{} {TABLE}", table_family(self.family));
        match self.command {
            Command::AddTable => write!(f, "add table {p}"),
            Command::DeleteTable => write!(f, "delete table {p}"),
            Command::AddContainer(c) => write!(
                f,
                "add {} {p} {} {}",
                c.keyword(),
                c.name,
                c.body(self.family)
            ),
            Command::AddSlotMap(picker) => write!(
                f,
                "add map {p} {} {}",
                picker.map(),
                slot_map_body(picker, self.family)
            ),
            Command::FlushSlotMap(picker) => write!(f, "flush map {p} {}", picker.map()),
            Command::AddAffinitySet { name, timeout } => write!(
                f,
                "add set {p} {name} {{ type {} ; flags dynamic,timeout ; timeout {timeout}s ; }}",
                addr_type(self.family)
            ),
            Command::AddChain { name, base: None } => write!(f, "add chain {p} {name}"),
            Command::AddChain {
                name,
                base: Some(base),
            } => write!(f, "add chain {p} {name} {{ {base} }}"),
            Command::FlushChain(name) => write!(f, "flush chain {p} {name}"),
            Command::AddRule { chain, rule } => {
                write!(f, "add rule {p} {chain} {}", rule.text(self.family))
            }
            Command::FlushContainer(c) => write!(f, "flush {} {p} {}", c.keyword(), c.name),
            Command::DeleteElements { set, elements } => {
                let keys: Vec<String> = elements.iter().map(|e| e.key.to_string()).collect();
                write!(f, "delete element {p} {set} {{ {} }}", keys.join(", "))
            }
            Command::AddElements { set, elements } => {
                let items: Vec<String> = elements.iter().map(|e| e.add_text()).collect();
                write!(f, "add element {p} {set} {{ {} }}", items.join(", "))
            }
            Command::AddSlots(draw) => {
                for (i, key) in draw.frontends.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    let items: Vec<String> =
                        draw.frontend_elements(*key).map(|e| e.add_text()).collect();
                    let map = draw.picker(key.keyed()).map();
                    write!(f, "add element {p} {map} {{ {} }}", items.join(", "))?;
                }
                Ok(())
            }
            Command::DeleteChain(name) => write!(f, "delete chain {p} {name}"),
            Command::DeleteSet(name) => write!(f, "delete set {p} {name}"),
        }
    }
}

/// Commands applied together, atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction<'a> {
    commands: Vec<(Family, Command<'a>)>,
}

impl<'a> Transaction<'a> {
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Number of commands (lines of the script).
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn commands(&self) -> impl Iterator<Item = (Family, &Command<'a>)> {
        self.commands.iter().map(|(f, c)| (*f, c))
    }

    /// Appends `other`'s commands (e.g. the other family's).
    pub fn extend(&mut self, other: Transaction<'a>) {
        self.commands.extend(other.commands);
    }

    /// Appends one command.
    pub fn push(&mut self, family: Family, command: Command<'a>) {
        self.commands.push((family, command));
    }
}

impl fmt::Display for Transaction<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (family, command) in &self.commands {
            writeln!(f, "{}", command.text(*family))?;
        }
        Ok(())
    }
}

/// A picker's chain and its draws, as a transaction declares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickerChain {
    pub picker: Picker,
    pub chain: String,
    pub rules: Vec<Rule>,
}

impl PickerChain {
    pub fn new(picker: Picker) -> Self {
        Self {
            picker,
            chain: picker.chain(),
            rules: picker_rules(picker),
        }
    }
}

/// A static chain: name, hook (base chains), rules.
#[derive(Debug)]
pub struct StaticChain {
    pub name: &'static str,
    pub base: Option<BaseChain>,
    pub rules: Vec<Rule>,
}

/// The same in both families' tables (addresses are typed per family when printed or
/// lowered).
static STATIC_CHAINS: LazyLock<Vec<StaticChain>> = LazyLock::new(|| {
    let mut chains = hook_chains();
    chains.extend(shared_chains());
    chains
});

/// The static chains of `family`'s table.
pub fn static_chains(_family: Family) -> &'static [StaticChain] {
    &STATIC_CHAINS
}

fn chain(name: &'static str, base: Option<BaseChain>, rules: Vec<Rule>) -> StaticChain {
    StaticChain { name, base, rules }
}

fn base(kind: ChainType, hook: Hook, priority: i32) -> Option<BaseChain> {
    Some(BaseChain {
        kind,
        hook,
        priority,
    })
}

fn jump(chain: &str) -> Vec<Rule> {
    vec![Rule::verdict(Verdict::jump(chain))]
}

fn new_then_jump(chain: &str) -> Vec<Rule> {
    vec![Rule::new([
        Stmt::CtStateNew,
        Stmt::Verdict(Verdict::jump(chain)),
    ])]
}

/// The base chains: NAT hooks into the service dispatch and masquerading, filter hooks into
/// the firewall and no-endpoint checks (new connections only).
fn hook_chains() -> Vec<StaticChain> {
    let (nat, filter) = (ChainType::Nat, ChainType::Filter);
    vec![
        chain(
            "nat-prerouting",
            base(nat, Hook::Prerouting, -100),
            jump("services"),
        ),
        chain(
            "nat-output",
            base(nat, Hook::Output, -100),
            jump("services"),
        ),
        chain(
            "nat-postrouting",
            base(nat, Hook::Postrouting, 100),
            jump("masquerading"),
        ),
        chain(
            "filter-prerouting",
            base(filter, Hook::Prerouting, -110),
            new_then_jump("firewall-check"),
        ),
        chain(
            "filter-input",
            base(filter, Hook::Input, -110),
            new_then_jump("endpoints-check"),
        ),
        chain(
            "filter-forward",
            base(filter, Hook::Forward, -110),
            new_then_jump("endpoints-check"),
        ),
        chain(
            "filter-output",
            base(filter, Hook::Output, -110),
            new_then_jump("endpoints-check"),
        ),
    ]
}

/// The chains every service shares: map lookups, masquerade marking, rejection.
fn shared_chains() -> Vec<StaticChain> {
    use crate::render::{
        FIREWALL_IPS, HAIRPIN_ENDPOINTS, NO_ENDPOINT_NODEPORTS, NO_ENDPOINT_SERVICES, NODEPORT_IPS,
        SERVICE_IPS, SERVICE_NODEPORTS,
    };
    let by_frontend = |map| Rule::new([Stmt::FrontendVmap(map)]);
    let by_node_port = |map| Rule::new([Stmt::DaddrInSet(NODEPORT_IPS), Stmt::PortVmap(map)]);
    let masquerading = vec![
        // A pod reaching itself through a service (slot path; per-endpoint chains mark it
        // themselves): its own address as source and destination after DNAT.
        Rule::new([
            Stmt::CtStatusDnat,
            Stmt::SaddrDaddrInSet(HAIRPIN_ENDPOINTS),
            Stmt::MarkSetOr(MASQUERADE_MARK),
        ]),
        Rule::new([
            Stmt::MarkClear(MASQUERADE_MARK),
            Stmt::Verdict(Verdict::Return),
        ]),
        Rule::new([Stmt::MarkSetXor(MASQUERADE_MARK)]),
        Rule::new([Stmt::MasqueradeFullyRandom]),
    ];
    vec![
        chain(
            "services",
            None,
            vec![by_frontend(SERVICE_IPS), by_node_port(SERVICE_NODEPORTS)],
        ),
        chain("firewall-check", None, vec![by_frontend(FIREWALL_IPS)]),
        chain(
            "endpoints-check",
            None,
            vec![
                by_frontend(NO_ENDPOINT_SERVICES),
                by_node_port(NO_ENDPOINT_NODEPORTS),
            ],
        ),
        chain(
            MARK_FOR_MASQUERADE,
            None,
            vec![Rule::new([Stmt::MarkSetOr(MASQUERADE_MARK)])],
        ),
        chain("masquerading", None, masquerading),
        chain(REJECT_CHAIN, None, vec![Rule::new([Stmt::Reject])]),
    ]
}

/// Names of the static chains (never deleted by reconciliation).
pub fn is_base_chain(family: Family, name: &str) -> bool {
    static_chains(family).iter().any(|c| c.name == name)
}

/// A transaction being built, in phases that keep every intermediate step valid: objects are
/// created before anything refers to them, and unreferenced before they are deleted; a map key
/// that moves to another value is deleted before it is added again.
#[derive(Default)]
struct Script<'a> {
    /// Pickers declared (their map, chain and draws), before anything jumps to them.
    pickers: Vec<&'a PickerChain>,
    add_sets: Vec<(&'a str, u32)>,
    add_chains: Vec<&'a str>,
    flush_chains: Vec<&'a str>,
    add_rules: Vec<(&'a str, &'a Rule)>,
    /// Static maps and sets rewritten whole (full resync only).
    flush_containers: Vec<Container>,
    flush_slot_maps: Vec<Picker>,
    delete_elements: Vec<&'a Element>,
    add_elements: Vec<&'a Element>,
    /// Backend sets whose slots are written whole (full resync only).
    add_slots: Vec<&'a SetDraw>,
    delete_chains: Vec<&'a str>,
    delete_sets: Vec<&'a str>,
}

impl<'a> Script<'a> {
    fn rules(&mut self, chain: &'a str, rules: &'a [Rule]) {
        self.add_rules.extend(rules.iter().map(|r| (chain, r)));
    }

    /// Adds the difference between two renderings of one service port.
    fn service(&mut self, old: &'a ServiceRules, new: &'a ServiceRules) {
        for (name, timeout) in &new.affinity_sets {
            if !old.affinity_sets.contains_key(name) {
                self.add_sets.push((name, *timeout));
            }
        }
        for (name, rules) in &new.chains {
            match old.chains.get(name) {
                None => {
                    self.add_chains.push(name);
                    self.rules(name, rules);
                }
                Some(before) if before != rules => {
                    self.flush_chains.push(name);
                    self.rules(name, rules);
                }
                Some(_) => {}
            }
        }
        for name in old.chains.keys().filter(|c| !new.chains.contains_key(*c)) {
            // Flushed first, so nothing it jumps to is still referenced when that goes too.
            self.flush_chains.push(name);
            self.delete_chains.push(name);
        }
        self.elements(&old.elements, &new.elements);
        for name in old
            .affinity_sets
            .keys()
            .filter(|n| !new.affinity_sets.contains_key(*n))
        {
            self.delete_sets.push(name);
        }
    }

    /// Element changes: a changed value is a delete plus an add (nft refuses to overwrite a
    /// map key).
    fn elements(&mut self, old: &'a [Element], new: &'a [Element]) {
        let before: BTreeSet<&Element> = old.iter().collect();
        let after: BTreeSet<&Element> = new.iter().collect();
        self.delete_elements.extend(before.difference(&after));
        self.add_elements.extend(after.difference(&before));
    }

    fn finish(self, family: Family, tx: &mut Transaction<'a>) {
        for p in self.pickers {
            tx.push(family, Command::AddSlotMap(p.picker));
            tx.push(
                family,
                Command::AddChain {
                    name: &p.chain,
                    base: None,
                },
            );
            tx.push(family, Command::FlushChain(&p.chain));
            for rule in &p.rules {
                tx.push(
                    family,
                    Command::AddRule {
                        chain: &p.chain,
                        rule,
                    },
                );
            }
        }
        for (name, timeout) in self.add_sets {
            tx.push(family, Command::AddAffinitySet { name, timeout });
        }
        for name in self.add_chains {
            tx.push(family, Command::AddChain { name, base: None });
        }
        for name in self.flush_chains {
            tx.push(family, Command::FlushChain(name));
        }
        for (chain, rule) in self.add_rules {
            tx.push(family, Command::AddRule { chain, rule });
        }
        for container in self.flush_containers {
            tx.push(family, Command::FlushContainer(container));
        }
        for picker in self.flush_slot_maps {
            tx.push(family, Command::FlushSlotMap(picker));
        }
        element_commands(family, tx, self.delete_elements, false);
        element_commands(family, tx, self.add_elements, true);
        for draw in self.add_slots {
            tx.push(family, Command::AddSlots(draw));
        }
        for name in self.delete_chains {
            tx.push(family, Command::DeleteChain(name));
        }
        for name in self.delete_sets {
            tx.push(family, Command::DeleteSet(name));
        }
    }
}

/// Element commands grouped by container, chunked so one command never grows with the
/// cluster: the static maps' elements in text order, the slot maps' by key (numbers in
/// numeric order, and no text made for the many of them).
fn element_commands<'a>(
    family: Family,
    tx: &mut Transaction<'a>,
    elements: Vec<&'a Element>,
    add: bool,
) {
    let (mut slots, mut named): (Vec<&Element>, Vec<&Element>) = elements
        .into_iter()
        .partition(|e| matches!(e.set, SetRef::Slots(_)));
    named.sort_by_cached_key(|e| e.text_order());
    slots.sort_unstable();
    named.append(&mut slots);
    for group in named.chunk_by(|a, b| a.set == b.set) {
        let set = group[0].set;
        for chunk in group.chunks(ELEMENTS_PER_COMMAND) {
            let elements = chunk.to_vec();
            tx.push(
                family,
                if add {
                    Command::AddElements { set, elements }
                } else {
                    Command::DeleteElements { set, elements }
                },
            );
        }
    }
}

/// Only what changed: `pickers` newly needed, for each service port (old rendering, new
/// rendering), and elements outside the services' own (node addresses, hairpins, slots) that
/// go and come. Empty when nothing differs.
pub fn delta<'a>(
    family: Family,
    pickers: &'a [PickerChain],
    services: impl IntoIterator<Item = (&'a ServiceRules, &'a ServiceRules)>,
    shared: Option<(&'a [Element], &'a [Element])>,
) -> Transaction<'a> {
    let mut s = Script::default();
    s.pickers.extend(pickers);
    for (old, new) in services {
        s.service(old, new);
    }
    if let Some((old, new)) = shared {
        s.elements(old, new);
    }
    let mut tx = Transaction::default();
    s.finish(family, &mut tx);
    tx
}

/// A complete resync of one family: declares the table, every static object and the
/// `pickers` in use (idempotent `add`), rewrites every chain and map (the services' slots
/// included), and deletes chains and sets that `existing` has but the plan does not.
/// `shared` are the elements outside the services' own (node addresses, hairpins). No table
/// flush: conntrack state and affinity sets survive.
pub fn full<'a>(
    family: Family,
    pickers: &'a [PickerChain],
    services: impl IntoIterator<Item = &'a ServiceRules>,
    shared: &'a [Element],
    existing: &'a Existing,
) -> Transaction<'a> {
    let mut tx = Transaction::default();
    tx.push(family, Command::AddTable);
    for container in element_containers() {
        tx.push(family, Command::AddContainer(container));
    }
    let statics = static_chains(family);
    for c in statics {
        tx.push(
            family,
            Command::AddChain {
                name: c.name,
                base: c.base,
            },
        );
    }
    let mut s = Script::default();
    for c in statics {
        s.flush_chains.push(c.name);
        s.rules(c.name, &c.rules);
    }
    let mut wanted_chains: BTreeSet<&str> = BTreeSet::new();
    let mut wanted_sets: BTreeSet<String> = BTreeSet::new();
    s.pickers.extend(pickers);
    for p in pickers {
        wanted_chains.insert(&p.chain);
        wanted_sets.insert(p.picker.map());
        s.flush_slot_maps.push(p.picker);
    }
    s.add_elements.extend(shared);
    for rules in services {
        for (name, timeout) in &rules.affinity_sets {
            s.add_sets.push((name, *timeout));
            wanted_sets.insert(name.clone());
        }
        for (name, chain_rules) in &rules.chains {
            s.add_chains.push(name);
            s.flush_chains.push(name);
            s.rules(name, chain_rules);
            wanted_chains.insert(name);
        }
        s.add_elements.extend(&rules.elements);
        s.add_slots.extend(rules.draws.values());
    }
    for name in existing
        .chains
        .iter()
        .filter(|c| !wanted_chains.contains(c.as_str()) && !is_base_chain(family, c))
    {
        s.flush_chains.push(name);
        s.delete_chains.push(name);
    }
    for name in existing.sets.iter().filter(|n| {
        let ours = n.starts_with("aff-") || Picker::from_map(n).is_some();
        ours && !wanted_sets.contains(n.as_str())
    }) {
        s.delete_sets.push(name);
    }
    // Maps are rewritten whole: flushed (after the rules that use them are in place) and
    // refilled, all in the same transaction.
    s.flush_containers = element_containers().to_vec();
    s.finish(family, &mut tx);
    tx
}

/// Removes both tables whether or not they exist (`add` first makes `delete` always valid).
pub fn cleanup() -> Transaction<'static> {
    let mut tx = Transaction::default();
    for family in Family::ALL {
        tx.push(family, Command::AddTable);
        tx.push(family, Command::DeleteTable);
    }
    tx
}
