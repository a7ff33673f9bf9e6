//! The typed form of what this backend programs: rules made of statements from a closed set,
//! map and set elements, static containers and base chains. Each prints as `nft -f` syntax
//! (what `sluice plan`, the golden files and people read) and lowers to netlink expressions
//! (`crate::lower`): one description, two encodings.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use sluice_plan::{Family, Protocol};

use crate::slots::{Keyed, Picker};

/// A verdict ending a rule or stored in a verdict map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

impl Verdict {
    pub fn goto(chain: impl Into<String>) -> Self {
        Verdict::Goto(chain.into())
    }

    pub fn jump(chain: impl Into<String>) -> Self {
        Verdict::Jump(chain.into())
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Return => f.write_str("return"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
        }
    }
}

/// One statement of a rule: the closed set this backend uses. Addresses are of the rule's
/// family (`ip` or `ip6` in the text).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stmt {
    /// `ip saddr 10.0.0.1`
    SaddrIs(IpAddr),
    /// `ip saddr 10.0.0.0/8` (printed as given)
    SaddrIn(IpNet),
    /// `ip saddr @set`
    SaddrInSet(String),
    /// `ip daddr @set`
    DaddrInSet(&'static str),
    /// `ip saddr . ip daddr @set`
    SaddrDaddrInSet(&'static str),
    /// `ct status dnat`: the connection's destination was translated.
    CtStatusDnat,
    /// `fib saddr type local`
    FibSaddrLocal,
    /// `ct state new`
    CtStateNew,
    /// `meta mark & BITS == 0`
    MarkClear(u32),
    /// `meta l4proto tcp`
    L4Proto(Protocol),
    /// `numgen random mod N == 0`: true with probability 1/N.
    OneIn(u32),
    /// `meta mark set meta mark | BITS`
    MarkSetOr(u32),
    /// `meta mark set meta mark ^ BITS`
    MarkSetXor(u32),
    /// `ip daddr . meta l4proto . th dport vmap @map`
    FrontendVmap(&'static str),
    /// `meta l4proto . th dport vmap @map`
    PortVmap(&'static str),
    /// `update @set { ip saddr }`
    UpdateSaddr(String),
    /// `dnat to ADDR:PORT`
    Dnat(IpAddr, u16),
    /// `dnat to ip daddr . tcp dport . numgen random mod C offset O map @slots-...`: the
    /// endpoint in the slot drawn uniformly from `[offset, offset + C)` of the destination's
    /// slots in `picker`'s map; no match (the next rule runs) when that slot is empty. `map`
    /// is `picker.map()`, kept so the lowered rule can borrow it ([`Stmt::pick`]).
    PickDnat {
        picker: Picker,
        offset: u32,
        map: String,
    },
    /// `masquerade fully-random`
    MasqueradeFullyRandom,
    /// `reject` (ICMP port unreachable)
    Reject,
    Verdict(Verdict),
}

impl Stmt {
    /// A draw of `picker` from the slots at `offset`.
    pub fn pick(picker: Picker, offset: u32) -> Self {
        Stmt::PickDnat {
            picker,
            offset,
            map: picker.map(),
        }
    }
}

/// A rule: statements evaluated in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule(pub Vec<Stmt>);

impl Rule {
    pub fn new(stmts: impl Into<Vec<Stmt>>) -> Self {
        Rule(stmts.into())
    }

    /// A rule that is only a verdict.
    pub fn verdict(verdict: Verdict) -> Self {
        Rule(vec![Stmt::Verdict(verdict)])
    }

    /// The `nft` syntax of this rule in a table of `family`.
    pub fn text(&self, family: Family) -> RuleText<'_> {
        RuleText { rule: self, family }
    }
}

/// [`Rule`] printed for one family.
#[derive(Debug, Clone, Copy)]
pub struct RuleText<'a> {
    rule: &'a Rule,
    family: Family,
}

impl fmt::Display for RuleText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, stmt) in self.rule.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write_stmt(f, stmt, self.family)?;
        }
        Ok(())
    }
}

fn write_stmt(f: &mut fmt::Formatter<'_>, stmt: &Stmt, family: Family) -> fmt::Result {
    let a = addr_keyword(family);
    match stmt {
        Stmt::SaddrIs(ip) => write!(f, "{a} saddr {ip}"),
        Stmt::SaddrIn(net) => write!(f, "{a} saddr {net}"),
        Stmt::SaddrInSet(set) => write!(f, "{a} saddr @{set}"),
        Stmt::DaddrInSet(set) => write!(f, "{a} daddr @{set}"),
        Stmt::SaddrDaddrInSet(set) => write!(f, "{a} saddr . {a} daddr @{set}"),
        Stmt::CtStatusDnat => f.write_str("ct status dnat"),
        Stmt::FibSaddrLocal => f.write_str("fib saddr type local"),
        Stmt::CtStateNew => f.write_str("ct state new"),
        Stmt::MarkClear(bits) => write!(f, "meta mark & {bits:#x} == 0"),
        Stmt::L4Proto(p) => write!(f, "meta l4proto {p}"),
        Stmt::OneIn(n) => write!(f, "numgen random mod {n} == 0"),
        Stmt::MarkSetOr(bits) => write!(f, "meta mark set meta mark | {bits:#x}"),
        Stmt::MarkSetXor(bits) => write!(f, "meta mark set meta mark ^ {bits:#x}"),
        Stmt::FrontendVmap(map) => write!(f, "{a} daddr . meta l4proto . th dport vmap @{map}"),
        Stmt::PortVmap(map) => write!(f, "meta l4proto . th dport vmap @{map}"),
        Stmt::UpdateSaddr(set) => write!(f, "update @{set} {{ {a} saddr }}"),
        Stmt::Dnat(IpAddr::V4(ip), port) => write!(f, "dnat to {ip}:{port}"),
        Stmt::Dnat(IpAddr::V6(ip), port) => write!(f, "dnat to [{ip}]:{port}"),
        Stmt::PickDnat {
            picker,
            offset,
            map,
        } => {
            f.write_str("dnat to ")?;
            if picker.keyed == Keyed::Address {
                write!(f, "{a} daddr . ")?;
            }
            write!(
                f,
                "{} dport . numgen random mod {}",
                picker.protocol, picker.capacity
            )?;
            if *offset > 0 {
                write!(f, " offset {offset}")?;
            }
            write!(f, " map @{map}")
        }
        Stmt::MasqueradeFullyRandom => f.write_str("masquerade fully-random"),
        Stmt::Reject => f.write_str("reject"),
        Stmt::Verdict(v) => write!(f, "{v}"),
    }
}

/// The declaration body of a picker's slot map. A slot number is what `numgen` yields (a
/// plain 32-bit integer, which has no `type` name in nft 1.0.6), hence `typeof`.
pub fn slot_map_body(picker: &Picker, family: Family) -> String {
    let a = addr_keyword(family);
    let p = picker.protocol;
    let address = match picker.keyed {
        Keyed::Address => format!("{a} daddr . "),
        Keyed::Port => String::new(),
    };
    format!(
        "{{ typeof {address}{p} dport . numgen random mod {} : {a} daddr . {p} dport ; }}",
        picker.capacity
    )
}

/// nftables table family keyword (`ip` / `ip6`).
pub fn table_family(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// Payload keyword for address matches (`ip saddr`, `ip6 saddr`).
pub fn addr_keyword(family: Family) -> &'static str {
    table_family(family)
}

/// nft's name of the address type of `family`.
pub fn addr_type(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    }
}

/// The key of a map or set element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// `addr . proto . port` (maps keyed by frontend)
    Frontend {
        addr: IpAddr,
        protocol: Protocol,
        port: u16,
    },
    /// `proto . port` (maps keyed by node port)
    Port { protocol: Protocol, port: u16 },
    /// One address.
    Addr(IpAddr),
    /// An address range (interval sets), printed as given.
    Prefix(IpNet),
    /// A slot of an address-keyed slot map: `address . port . slot`.
    AddrSlot { addr: IpAddr, port: u16, slot: u32 },
    /// A slot of a port-keyed slot map: `port . slot`.
    PortSlot { port: u16, slot: u32 },
    /// Two addresses, `source . destination`.
    Pair(IpAddr, IpAddr),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Frontend {
                addr,
                protocol,
                port,
            } => write!(f, "{addr} . {protocol} . {port}"),
            Key::Port { protocol, port } => write!(f, "{protocol} . {port}"),
            Key::Addr(ip) => write!(f, "{ip}"),
            Key::Prefix(net) => write!(f, "{net}"),
            Key::AddrSlot { addr, port, slot } => write!(f, "{addr} . {port} . {slot}"),
            Key::PortSlot { port, slot } => write!(f, "{port} . {slot}"),
            Key::Pair(a, b) => write!(f, "{a} . {b}"),
        }
    }
}

/// The value of a map element.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    Verdict(Verdict),
    /// An endpoint, `address . port` (slot maps).
    Endpoint(SocketAddr),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Verdict(v) => write!(f, "{v}"),
            Value::Endpoint(target) => write!(f, "{} . {}", target.ip(), target.port()),
        }
    }
}

/// The map or set an element belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetRef {
    /// A map or set declared with the table.
    Named(&'static str),
    /// A picker's slot map.
    Slots(Picker),
}

impl SetRef {
    pub fn name(&self) -> std::borrow::Cow<'static, str> {
        match self {
            SetRef::Named(name) => (*name).into(),
            SetRef::Slots(picker) => picker.map().into(),
        }
    }
}

impl fmt::Display for SetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// One map or set element: container, key, value (`None` for set elements).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    pub set: SetRef,
    pub key: Key,
    pub value: Option<Value>,
}

impl Element {
    /// How an `add element` line lists it (`key : value`, or the key alone).
    pub fn add_text(&self) -> String {
        match &self.value {
            Some(v) => format!("{} : {v}", self.key),
            None => self.key.to_string(),
        }
    }

    /// The order elements are listed in scripts: by container, then by their text (slots by
    /// number), stable across releases so golden files and diffs stay readable.
    pub fn text_order(&self) -> (String, String, String) {
        let value = self.value.as_ref().map(Value::to_string);
        let key = match self.key {
            Key::AddrSlot { addr, port, slot } => format!("{addr} . {port:05} . {slot:010}"),
            Key::PortSlot { port, slot } => format!("{port:05} . {slot:010}"),
            _ => self.key.to_string(),
        };
        (self.set.name().into_owned(), key, value.unwrap_or_default())
    }
}

/// What a static map or set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ContainerKind {
    /// `addr . proto . port : verdict`
    FrontendVmap,
    /// `proto . port : verdict`
    PortVmap,
    /// Addresses.
    Addrs,
    /// Address ranges (`flags interval`).
    Prefixes,
    /// `address . address` pairs.
    AddrPairs,
}

/// A map or set declared with the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Container {
    pub name: &'static str,
    pub kind: ContainerKind,
}

impl Container {
    /// `map` or `set`.
    pub fn keyword(&self) -> &'static str {
        match self.kind {
            ContainerKind::FrontendVmap | ContainerKind::PortVmap => "map",
            ContainerKind::Addrs | ContainerKind::Prefixes | ContainerKind::AddrPairs => "set",
        }
    }

    /// The declaration body, e.g. `{ type ipv4_addr ; flags interval ; }`.
    pub fn body(&self, family: Family) -> String {
        let addr = addr_type(family);
        match self.kind {
            ContainerKind::FrontendVmap => {
                format!("{{ type {addr} . inet_proto . inet_service : verdict ; }}")
            }
            ContainerKind::PortVmap => "{ type inet_proto . inet_service : verdict ; }".into(),
            ContainerKind::Addrs => format!("{{ type {addr} ; }}"),
            ContainerKind::Prefixes => format!("{{ type {addr} ; flags interval ; }}"),
            ContainerKind::AddrPairs => format!("{{ type {addr} . {addr} ; }}"),
        }
    }
}

/// Base chain types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    Nat,
    Filter,
}

/// Netfilter hooks used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

/// Where a base chain hooks in (its policy is always accept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: ChainType,
    pub hook: Hook,
    pub priority: i32,
}

impl fmt::Display for BaseChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ChainType::Nat => "nat",
            ChainType::Filter => "filter",
        };
        // nft's names for the standard NAT priorities, as kube-proxy writes them.
        let priority = match (self.kind, self.hook, self.priority) {
            (ChainType::Nat, Hook::Prerouting, -100) => "dstnat".to_owned(),
            (ChainType::Nat, Hook::Postrouting, 100) => "srcnat".to_owned(),
            (_, _, p) => p.to_string(),
        };
        write!(
            f,
            "type {kind} hook {} priority {priority} ; policy accept ;",
            self.hook.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_print_as_nft_syntax_per_family() {
        let rule = Rule::new([
            Stmt::FibSaddrLocal,
            Stmt::MarkSetOr(0x4000),
            Stmt::Verdict(Verdict::goto("cl-X")),
        ]);
        assert_eq!(
            rule.text(Family::V4).to_string(),
            "fib saddr type local meta mark set meta mark | 0x4000 goto cl-X"
        );
        let dnat = Rule::new([
            Stmt::L4Proto(Protocol::Udp),
            Stmt::Dnat("fd00::5".parse().unwrap(), 53),
        ]);
        assert_eq!(
            dnat.text(Family::V6).to_string(),
            "meta l4proto udp dnat to [fd00::5]:53"
        );
        let update = Rule::new([Stmt::UpdateSaddr("aff-X".into())]);
        assert_eq!(
            update.text(Family::V6).to_string(),
            "update @aff-X { ip6 saddr }"
        );
    }

    #[test]
    fn draws_and_slot_maps_print_as_nft_syntax_per_family_and_key() {
        use sluice_plan::SetName;
        let picker = Picker {
            set: SetName::Cluster,
            keyed: Keyed::Address,
            protocol: Protocol::Udp,
            capacity: 16,
        };
        let exact = Rule::new([Stmt::pick(picker, 0)]);
        assert_eq!(
            exact.text(Family::V6).to_string(),
            "dnat to ip6 daddr . udp dport . numgen random mod 16 map @slots-cluster-ip-udp-16"
        );
        let by_port = Picker {
            keyed: Keyed::Port,
            ..picker
        };
        let spread = Rule::new([Stmt::pick(by_port, 16)]);
        assert_eq!(
            spread.text(Family::V4).to_string(),
            "dnat to udp dport . numgen random mod 16 offset 16 map @slots-cluster-port-udp-16"
        );
        assert_eq!(
            slot_map_body(&by_port, Family::V4),
            "{ typeof udp dport . numgen random mod 16 : ip daddr . udp dport ; }"
        );
        let hairpin = Rule::new([Stmt::CtStatusDnat, Stmt::SaddrDaddrInSet("pairs")]);
        assert_eq!(
            hairpin.text(Family::V4).to_string(),
            "ct status dnat ip saddr . ip daddr @pairs"
        );
        let slot = Element {
            set: SetRef::Slots(picker),
            key: Key::AddrSlot {
                addr: "fd00::10".parse().unwrap(),
                port: 53,
                slot: 3,
            },
            value: Some(Value::Endpoint("[fd00::5]:5353".parse().unwrap())),
        };
        assert_eq!(slot.add_text(), "fd00::10 . 53 . 3 : fd00::5 . 5353");
        assert_eq!(slot.set.name(), "slots-cluster-ip-udp-16");
    }
}
