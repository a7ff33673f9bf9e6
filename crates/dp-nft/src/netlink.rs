//! [`NetlinkNft`]: an [`NftExecutor`] that writes each transaction as one nf_tables netlink
//! batch itself, instead of handing a script to `nft` (which first reads the whole ruleset
//! back from the kernel to build its cache: seconds at 10,000 services). It remembers the
//! ruleset generation its last batch produced, so "has anyone changed the ruleset since?" is
//! one small request.
//!
//! Reading the table back (chain and set names, the slot maps' elements, UDP DNAT targets) is
//! done with netlink dumps too; conntrack deletions run `conntrack` ([`NftCommand`]).

use sluice_nftnl::consts::{chain, data, elem, msg, rule, set, table};
use sluice_nftnl::{Attrs, Batch, NfSocket, Refusal, attributes};
use std::collections::HashMap;
use std::net::IpAddr;

use sluice_nftnl::consts::{EXPR_DATA, EXPR_NAME, LIST_ELEM};
use sluice_nftnl::expr::NAT_DNAT;
use sluice_plan::{Family, Protocol, StaleFlow};

use crate::exec::{Drift, NftCommand, NftError, NftExecutor, Readback};
use crate::ir::{BaseChain, ChainType, Container, ContainerKind, Element, Hook, Key, Value};
use crate::lower;
use crate::slots::{self, Keyed, Picker, SlotElement};
use crate::transaction::{Command, Existing, TABLE, Transaction};

use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE};

/// Set user data nft 1.0.6 attaches, copied so `nft list` prints our sets exactly like its
/// own: key byte order "big endian" for address sets; for verdict maps, the byte orders and
/// type information nft records for concatenated keys.
const ADDR_SET_UDATA: &[u8] = &[0, 4, 2, 0, 0, 0];
const VMAP_UDATA: &[u8] = &[
    0, 4, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0, 3, 8, 0, 4, 0x0d, 0, 0, 0, 1, 0, 6, 4, 0, 0, 0, 0,
];
/// Element user data "interval open at the top" (a range reaching the last address).
const OPEN_INTERVAL_UDATA: &[u8] = &[1, 4, 1, 0, 0, 0];
/// What nft 1.0.6 records for `type ipv4_addr . ipv4_addr` (and the IPv6 form).
const PAIR_SET_UDATA: &[u8] = &[0, 4, 0, 0, 0, 0, 3, 8, 0, 4, 0x0d, 0, 0, 0, 1, 0];

/// nft's numbers in `typeof` user data: expression kinds (concatenation, payload, numgen),
/// protocol descriptions and their fields.
const UDATA_CONCAT: u32 = 13;
const UDATA_PAYLOAD: u32 = 7;
const UDATA_NUMGEN: u32 = 23;
const UDATA_NUMGEN_RANDOM: u32 = 1;
const UDATA_PROTO_IP: u32 = 12;
const UDATA_PROTO_IP6: u32 = 13;
const UDATA_IP_DADDR: u32 = 12;
const UDATA_IP6_DADDR: u32 = 9;
const UDATA_PROTO_TCP: u32 = 8;
const UDATA_PROTO_UDP: u32 = 6;
const UDATA_PROTO_SCTP: u32 = 10;
const UDATA_DPORT: u32 = 2;

/// nft's datatype numbers (`enum datatypes`), and how concatenations combine them.
const TYPE_INTEGER: u32 = 4;
const TYPE_IPV4_ADDR: u32 = 7;
const TYPE_IPV6_ADDR: u32 = 8;
const TYPE_INET_PROTO: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_BITS: u32 = 6;

/// `NF_ACCEPT` as a base chain policy.
const POLICY_ACCEPT: u32 = 1;

/// The netlink executor. See the module docs.
#[derive(Debug)]
pub struct NetlinkNft {
    sock: NfSocket,
    tools: NftCommand,
    /// The generation our last committed batch produced (or the last one checked), when known.
    generation: Option<u32>,
}

fn netlink(action: &'static str) -> impl FnOnce(sluice_nftnl::Error) -> NftError {
    move |source| NftError::Netlink { action, source }
}

impl NetlinkNft {
    /// Opens a socket in the calling thread's network namespace and checks that nf_tables
    /// answers; `tools` deletes conntrack entries.
    pub fn with_tools(tools: NftCommand) -> Result<Self, NftError> {
        let mut sock = NfSocket::open().map_err(netlink("opening a socket"))?;
        sock.generation()
            .map_err(netlink("reading the ruleset generation"))?;
        Ok(Self {
            sock,
            tools,
            generation: None,
        })
    }

    /// In the agent's own network namespace (conntrack entries deleted with `conntrack`).
    pub fn new() -> Result<Self, NftError> {
        Self::with_tools(NftCommand::default())
    }

    fn dump_names(
        &mut self,
        family: Family,
        request: u8,
        name_attr: u16,
        skip: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<String>, NftError> {
        let mut names = Vec::new();
        self.sock
            .dump(
                request,
                lower::nfproto(family),
                |a| {
                    a.str(1, TABLE);
                },
                |attrs| {
                    let mut table = None;
                    let mut name = None;
                    for (kind, value) in attributes(attrs) {
                        match kind {
                            1 => table = Some(c_str(value)),
                            k if k == name_attr => name = Some(c_str(value)),
                            _ => {}
                        }
                    }
                    if let (Some(TABLE), Some(name)) = (table.as_deref(), name)
                        && !skip(attrs)
                    {
                        names.push(name);
                    }
                },
            )
            .or_else(table_absent)
            .map_err(netlink("listing our chains and sets"))?;
        Ok(names)
    }

    /// The elements of `picker`'s slot map.
    fn slot_elements(
        &mut self,
        family: Family,
        picker: Picker,
    ) -> Result<Vec<SlotElement>, NftError> {
        let map = picker.map();
        let mut out = Vec::new();
        self.sock
            .dump(
                msg::GETSETELEM,
                lower::nfproto(family),
                |a| {
                    a.str(elem::LIST_TABLE, TABLE).str(elem::LIST_SET, &map);
                },
                |attrs| out.extend(slot_elements(attrs, picker)),
            )
            .or_else(table_absent)
            .map_err(netlink("listing the endpoint slots"))?;
        Ok(out)
    }
}

/// The elements of one `GETSETELEM` dump message of `picker`'s slot map.
fn slot_elements(attrs: &[u8], picker: Picker) -> Vec<SlotElement> {
    let Some((_, list)) = attributes(attrs).find(|(k, _)| *k == elem::LIST_ELEMENTS) else {
        return Vec::new();
    };
    let value = |element: &[u8], kind: u16| {
        let (_, nest) = attributes(element).find(|(k, _)| *k == kind)?;
        attributes(nest)
            .find(|(k, _)| *k == data::VALUE)
            .map(|(_, v)| v.to_vec())
    };
    attributes(list)
        .filter_map(|(_, element)| {
            let key = value(element, elem::KEY)?;
            let (draw_key, slot) = lower::slot_key_from_bytes(&key, picker.keyed)?;
            let endpoint = lower::endpoint_from_bytes(&value(element, elem::DATA)?)?;
            Some((picker, draw_key, slot, endpoint))
        })
        .collect()
}

/// A dump filtered by a table that does not exist fails with ENOENT: nothing to list.
fn table_absent(err: sluice_nftnl::Error) -> Result<(), sluice_nftnl::Error> {
    match &err {
        sluice_nftnl::Error::Request { source, .. }
            if source.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        _ => Err(err),
    }
}

fn c_str(value: &[u8]) -> String {
    String::from_utf8_lossy(value.strip_suffix(&[0]).unwrap_or(value)).into_owned()
}

/// `meta l4proto udp dnat to IP:PORT` in a dumped rule → (udp, IP, PORT): the registers the
/// `nat` expression reads were loaded by `immediate`s. Only connectionless protocols matter
/// (their flows outlive a backend).
fn udp_dnat_target(rule_attrs: &[u8]) -> Option<(Protocol, IpAddr, u16)> {
    let table = attributes(rule_attrs).find(|(k, _)| *k == rule::TABLE)?;
    if c_str(table.1) != TABLE {
        return None;
    }
    let (_, exprs) = attributes(rule_attrs).find(|(k, _)| *k == rule::EXPRESSIONS)?;
    let mut udp = false;
    let mut registers: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut meta_l4proto = false;
    for (_, expr) in attributes(exprs).filter(|(k, _)| *k == LIST_ELEM) {
        let name = attributes(expr)
            .find(|(k, _)| *k == EXPR_NAME)
            .map(|(_, v)| c_str(v))?;
        let (_, data) = attributes(expr).find(|(k, _)| *k == EXPR_DATA)?;
        let u32_attr = |kind: u16| {
            attributes(data)
                .find(|(k, _)| *k == kind)
                .and_then(|(_, v)| v.try_into().ok().map(u32::from_be_bytes))
        };
        let value = |kind: u16| {
            let (_, nest) = attributes(data).find(|(k, _)| *k == kind)?;
            attributes(nest)
                .find(|(k, _)| *k == data::VALUE)
                .map(|(_, v)| v.to_vec())
        };
        match name.as_str() {
            // NFTA_META_KEY
            "meta" => meta_l4proto = u32_attr(2) == Some(sluice_nftnl::MetaKey::L4Proto as u32),
            // NFTA_CMP_DATA after the l4proto load
            "cmp" => udp |= meta_l4proto && value(3).as_deref() == Some(&[17][..]),
            // NFTA_IMMEDIATE_DREG, NFTA_IMMEDIATE_DATA
            "immediate" => {
                if let (Some(dreg), Some(v)) = (u32_attr(1), value(2)) {
                    registers.insert(dreg, v);
                }
            }
            // NFTA_NAT_TYPE, NFTA_NAT_REG_ADDR_MIN, NFTA_NAT_REG_PROTO_MIN
            "nat" if udp && u32_attr(1) == Some(NAT_DNAT) => {
                let addr = registers.get(&u32_attr(3)?)?;
                let port = registers.get(&u32_attr(5)?)?;
                let ip = match addr.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(addr.as_slice()).ok()?),
                    16 => IpAddr::from(<[u8; 16]>::try_from(addr.as_slice()).ok()?),
                    _ => return None,
                };
                let port = u16::from_be_bytes(port.get(..2)?.try_into().ok()?);
                return Some((Protocol::Udp, ip, port));
            }
            _ => {}
        }
    }
    None
}

/// Anonymous sets (`NFT_SET_ANONYMOUS`) belong to rules, not to the table's namespace.
fn is_anonymous_set(attrs: &[u8]) -> bool {
    attributes(attrs)
        .find(|(kind, _)| *kind == set::FLAGS)
        .and_then(|(_, v)| v.try_into().ok().map(u32::from_be_bytes))
        .is_some_and(|flags| flags & 1 != 0)
}

impl NftExecutor for NetlinkNft {
    fn apply(&mut self, tx: &Transaction<'_>) -> Result<(), NftError> {
        let mut batch = self.sock.batch();
        let first = batch.first_seq();
        // Which command each message came from (long element lists take several messages).
        let mut origin: Vec<usize> = Vec::with_capacity(tx.len());
        for (index, (family, command)) in tx.commands().enumerate() {
            let messages = encode(&mut batch, family, command);
            origin.extend(std::iter::repeat_n(index, messages));
        }
        match self.sock.commit(batch) {
            Ok(commit) => {
                self.generation = commit.ours();
                Ok(())
            }
            Err(sluice_nftnl::Error::Refused { refusals, lost }) => {
                Err(refused(tx, first, &origin, refusals, lost))
            }
            Err(source) => {
                self.generation = None;
                Err(netlink("committing a transaction")(source))
            }
        }
    }

    fn read_back(&mut self, family: Family) -> Result<Readback, NftError> {
        let existing = self.read_names(family)?;
        if existing.chains.is_empty() {
            return Ok(Readback::default());
        }
        let mut back = Readback {
            existing,
            ..Readback::default()
        };
        self.sock
            .dump(
                msg::GETRULE,
                lower::nfproto(family),
                |a| {
                    a.str(rule::TABLE, TABLE);
                },
                |attrs| back.backends.extend(udp_dnat_target(attrs)),
            )
            .or_else(table_absent)
            .map_err(netlink("listing our rules"))?;
        let pickers: Vec<Picker> = back
            .existing
            .sets
            .iter()
            .filter_map(|name| Picker::from_map(name))
            .collect();
        let mut elements = Vec::new();
        for picker in pickers {
            elements.extend(self.slot_elements(family, picker)?);
        }
        let (found, udp) = slots::from_elements(&elements);
        back.backends.extend(udp);
        back.slots = found;
        Ok(back)
    }

    fn flush_conntrack(&mut self, flow: &StaleFlow) -> Result<(), NftError> {
        self.tools.flush_conntrack(flow)
    }

    fn drift(&mut self) -> Result<Drift, NftError> {
        let now = self
            .sock
            .generation()
            .map_err(netlink("reading the ruleset generation"))?;
        if self.generation == Some(now) {
            return Ok(Drift::None);
        }
        self.generation = Some(now);
        Ok(Drift::Possible)
    }

    fn read_names(&mut self, family: Family) -> Result<Existing, NftError> {
        let chains = self.dump_names(family, msg::GETCHAIN, chain::NAME, |_| false)?;
        let sets = self.dump_names(family, msg::GETSET, set::NAME, is_anonymous_set)?;
        Ok(Existing {
            chains: chains.into_iter().collect(),
            sets: sets.into_iter().collect(),
        })
    }
}

/// The error of a refused batch: the first refused command in `nft` syntax, and how many more.
fn refused(
    tx: &Transaction<'_>,
    first: u32,
    origin: &[usize],
    mut refusals: Vec<Refusal>,
    lost: bool,
) -> NftError {
    refusals.sort_by_key(|r| r.seq.wrapping_sub(first));
    let count = refusals.len();
    let Some(refusal) = refusals.into_iter().next() else {
        return NftError::Netlink {
            action: "committing a transaction",
            source: sluice_nftnl::Error::Refused {
                refusals: Vec::new(),
                lost,
            },
        };
    };
    // Message i of the batch has sequence number first + 1 + i; `first` itself is the batch
    // (the commit as a whole failed).
    let message = refusal.seq.wrapping_sub(first).wrapping_sub(1) as usize;
    let command = origin
        .get(message)
        .and_then(|index| tx.commands().nth(*index))
        .map(|(family, c)| c.text(family).to_string())
        .unwrap_or_else(|| "the transaction as a whole".to_owned());
    let more = match (count, lost) {
        (1, false) => String::new(),
        (n, false) => format!(" (and {} more refused commands)", n - 1),
        (n, true) => format!(" (and {} or more refused commands)", n),
    };
    NftError::Refused {
        command,
        more,
        source: refusal,
    }
}

/// Appends the message(s) of one command; returns how many.
fn encode(batch: &mut Batch, family: Family, command: &Command<'_>) -> usize {
    let fam = lower::nfproto(family);
    let create = NLM_F_CREATE;
    // The kernel insists on an id with every new set (rules of the same batch may refer to it).
    let set_id = batch.next_seq();
    match command {
        Command::AddTable => batch.message(msg::NEWTABLE, fam, 0, |a| {
            a.str(table::NAME, TABLE).u32(table::FLAGS, 0);
        }),
        Command::DeleteTable => batch.message(msg::DELTABLE, fam, 0, |a| {
            a.str(table::NAME, TABLE);
        }),
        Command::AddContainer(c) => batch.message(msg::NEWSET, fam, create, |a| {
            container(a, c, family);
            a.u32(set::ID, set_id);
        }),
        Command::AddSlotMap(picker) => batch.message(msg::NEWSET, fam, create, |a| {
            slot_map(a, picker, family);
            a.u32(set::ID, set_id);
        }),
        Command::FlushSlotMap(picker) => batch.message(msg::DELSETELEM, fam, 0, |a| {
            a.str(elem::LIST_TABLE, TABLE)
                .str(elem::LIST_SET, &picker.map());
        }),
        Command::AddAffinitySet { name, timeout } => batch.message(msg::NEWSET, fam, create, |a| {
            a.str(set::TABLE, TABLE).str(set::NAME, name);
            a.u32(set::FLAGS, set::F_TIMEOUT | set::F_EVAL);
            addr_key(a, family);
            a.u64(set::TIMEOUT, u64::from(*timeout) * 1000);
            a.u32(set::ID, set_id);
            a.bytes(set::USERDATA, ADDR_SET_UDATA);
        }),
        Command::AddChain { name, base } => batch.message(msg::NEWCHAIN, fam, create, |a| {
            a.str(chain::TABLE, TABLE).str(chain::NAME, name);
            if let Some(base) = base {
                base_chain(a, base);
            }
        }),
        Command::FlushChain(name) => batch.message(msg::DELRULE, fam, 0, |a| {
            a.str(rule::TABLE, TABLE).str(rule::CHAIN, name);
        }),
        Command::AddRule { chain, rule } => {
            let exprs = lower::rule(rule, family);
            batch.message(msg::NEWRULE, fam, create | NLM_F_APPEND, |a| {
                a.str(rule::TABLE, TABLE).str(rule::CHAIN, chain);
                a.nest(rule::EXPRESSIONS, |list| {
                    exprs.iter().for_each(|e| e.write(list));
                });
            })
        }
        Command::FlushContainer(c) => batch.message(msg::DELSETELEM, fam, 0, |a| {
            a.str(elem::LIST_TABLE, TABLE).str(elem::LIST_SET, c.name);
        }),
        Command::DeleteElements { set, elements } => {
            return element_messages(batch, fam, msg::DELSETELEM, 0, &set.name(), elements);
        }
        Command::AddElements { set, elements } => {
            let name = set.name();
            return element_messages(batch, fam, msg::NEWSETELEM, create, &name, elements);
        }
        Command::AddSlots(draw) => {
            let mut messages = 0;
            for key in &draw.frontends {
                let elements: Vec<Element> = draw.frontend_elements(*key).collect();
                let refs: Vec<&Element> = elements.iter().collect();
                let map = draw.picker(key.keyed()).map();
                messages += element_messages(batch, fam, msg::NEWSETELEM, create, &map, &refs);
            }
            return messages;
        }
        Command::DeleteChain(name) => batch.message(msg::DELCHAIN, fam, 0, |a| {
            a.str(chain::TABLE, TABLE).str(chain::NAME, name);
        }),
        Command::DeleteSet(name) => batch.message(msg::DELSET, fam, 0, |a| {
            a.str(set::TABLE, TABLE).str(set::NAME, name);
        }),
    };
    1
}

/// Bytes of element list per message: a netlink attribute (the list is one) holds at most
/// 64 KiB.
const ELEMENT_LIST_BYTES: usize = 48 * 1024;

/// Element messages, as many as the list needs; returns how many.
fn element_messages(
    batch: &mut Batch,
    family: u8,
    kind: u8,
    flags: u16,
    set_name: &str,
    elements: &[&Element],
) -> usize {
    let with_data = kind == msg::NEWSETELEM;
    let mut messages = 0;
    let mut rest = elements;
    while !rest.is_empty() {
        let mut bytes = 0;
        let count = rest
            .iter()
            .take_while(|e| {
                bytes += encoded_size(e);
                bytes <= ELEMENT_LIST_BYTES
            })
            .count()
            .max(1);
        let (chunk, tail) = rest.split_at(count);
        batch.message(kind, family, flags, |a| {
            element_list(a, set_name, chunk, with_data);
        });
        messages += 1;
        rest = tail;
    }
    messages
}

/// An upper bound of one element's encoded size (an interval is two elements).
fn encoded_size(e: &Element) -> usize {
    let chain = match &e.value {
        Some(Value::Verdict(crate::ir::Verdict::Jump(c) | crate::ir::Verdict::Goto(c))) => c.len(),
        _ => 0,
    };
    2 * (64 + 24 + chain)
}

fn addr_key(a: &mut Attrs<'_>, family: Family) {
    let (kind, len) = match family {
        Family::V4 => (TYPE_IPV4_ADDR, 4),
        Family::V6 => (TYPE_IPV6_ADDR, 16),
    };
    a.u32(set::KEY_TYPE, kind).u32(set::KEY_LEN, len);
}

fn container(a: &mut Attrs<'_>, c: &Container, family: Family) {
    a.str(set::TABLE, TABLE).str(set::NAME, c.name);
    let concat = |types: &[u32]| types.iter().fold(0, |acc, t| (acc << TYPE_BITS) | t);
    let (addr_type, addr_len) = match family {
        Family::V4 => (TYPE_IPV4_ADDR, 4),
        Family::V6 => (TYPE_IPV6_ADDR, 16),
    };
    let vmap = |a: &mut Attrs<'_>, key_type: u32, key_len: u32| {
        a.u32(set::FLAGS, set::F_MAP)
            .u32(set::KEY_TYPE, key_type)
            .u32(set::KEY_LEN, key_len)
            .u32(set::DATA_TYPE, set::DATA_VERDICT)
            .u32(set::DATA_LEN, 0)
            .bytes(set::USERDATA, VMAP_UDATA);
    };
    match c.kind {
        ContainerKind::FrontendVmap => vmap(
            a,
            concat(&[addr_type, TYPE_INET_PROTO, TYPE_INET_SERVICE]),
            addr_len + 8,
        ),
        ContainerKind::PortVmap => vmap(a, concat(&[TYPE_INET_PROTO, TYPE_INET_SERVICE]), 8),
        ContainerKind::AddrPairs => {
            a.u32(set::FLAGS, 0)
                .u32(set::KEY_TYPE, concat(&[addr_type, addr_type]))
                .u32(set::KEY_LEN, 2 * addr_len)
                .bytes(set::USERDATA, PAIR_SET_UDATA);
        }
        ContainerKind::Addrs | ContainerKind::Prefixes => {
            let flags = match c.kind {
                ContainerKind::Prefixes => set::F_INTERVAL,
                _ => 0,
            };
            a.u32(set::FLAGS, flags);
            addr_key(a, family);
            a.bytes(set::USERDATA, ADDR_SET_UDATA);
        }
    }
}

/// A picker's slot map: `[address .] port . slot → address . port`, described for nft as
/// `typeof` expressions.
fn slot_map(a: &mut Attrs<'_>, picker: &Picker, family: Family) {
    let (addr_type, addr_len) = match family {
        Family::V4 => (TYPE_IPV4_ADDR, 4),
        Family::V6 => (TYPE_IPV6_ADDR, 16),
    };
    let concat = |types: &[u32]| types.iter().fold(0, |acc, t| (acc << TYPE_BITS) | t);
    let (key_type, key_len) = match picker.keyed {
        Keyed::Address => (
            concat(&[addr_type, TYPE_INET_SERVICE, TYPE_INTEGER]),
            addr_len + 8,
        ),
        Keyed::Port => (concat(&[TYPE_INET_SERVICE, TYPE_INTEGER]), 8),
    };
    a.str(set::TABLE, TABLE).str(set::NAME, &picker.map());
    a.u32(set::FLAGS, set::F_MAP)
        .u32(set::KEY_TYPE, key_type)
        .u32(set::KEY_LEN, key_len)
        .u32(set::DATA_TYPE, concat(&[addr_type, TYPE_INET_SERVICE]))
        .u32(set::DATA_LEN, addr_len + 4)
        .bytes(set::USERDATA, &typeof_udata(picker, family));
}

/// nft's user data for `typeof [ADDR daddr .] PROTO dport . numgen random mod C : ADDR daddr
/// . PROTO dport` (libnftnl's TLVs: byte orders, then the key and data expressions), so
/// `nft list` prints the map as nft would have made it.
fn typeof_udata(picker: &Picker, family: Family) -> Vec<u8> {
    fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
        out.push(kind);
        out.push(u8::try_from(value.len()).expect("short udata"));
        out.extend_from_slice(value);
    }
    fn expr(kind: u32, fields: &[u32]) -> Vec<u8> {
        let mut data = Vec::new();
        for (i, field) in fields.iter().enumerate() {
            tlv(&mut data, i as u8, &field.to_ne_bytes());
        }
        let mut out = Vec::new();
        tlv(&mut out, 0, &kind.to_ne_bytes());
        tlv(&mut out, 1, &data);
        out
    }
    fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
        let mut data = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            tlv(&mut data, i as u8, part);
        }
        let mut out = Vec::new();
        tlv(&mut out, 0, &UDATA_CONCAT.to_ne_bytes());
        tlv(&mut out, 1, &data);
        out
    }
    let daddr = match family {
        Family::V4 => expr(UDATA_PAYLOAD, &[UDATA_PROTO_IP, UDATA_IP_DADDR]),
        Family::V6 => expr(UDATA_PAYLOAD, &[UDATA_PROTO_IP6, UDATA_IP6_DADDR]),
    };
    let proto = match picker.protocol {
        Protocol::Tcp => UDATA_PROTO_TCP,
        Protocol::Udp => UDATA_PROTO_UDP,
        Protocol::Sctp => UDATA_PROTO_SCTP,
    };
    let dport = expr(UDATA_PAYLOAD, &[proto, UDATA_DPORT]);
    let numgen = expr(UDATA_NUMGEN, &[UDATA_NUMGEN_RANDOM, picker.capacity, 0]);
    let key = match picker.keyed {
        Keyed::Address => concat(&[daddr.clone(), dport.clone(), numgen]),
        Keyed::Port => concat(&[dport.clone(), numgen]),
    };
    let mut out = Vec::new();
    tlv(&mut out, 0, &0u32.to_ne_bytes());
    tlv(&mut out, 1, &0u32.to_ne_bytes());
    tlv(&mut out, 3, &key);
    tlv(&mut out, 4, &concat(&[daddr, dport]));
    tlv(&mut out, 6, &0u32.to_ne_bytes());
    out
}

fn base_chain(a: &mut Attrs<'_>, base: &BaseChain) {
    use sluice_nftnl::consts::hook;
    let kind = match base.kind {
        ChainType::Nat => "nat",
        ChainType::Filter => "filter",
    };
    let hooknum = match base.hook {
        Hook::Prerouting => hook::PREROUTING,
        Hook::Input => hook::INPUT,
        Hook::Forward => hook::FORWARD,
        Hook::Output => hook::OUTPUT,
        Hook::Postrouting => hook::POSTROUTING,
    };
    a.str(chain::TYPE, kind).u32(chain::POLICY, POLICY_ACCEPT);
    a.nest(chain::HOOK, |h| {
        h.u32(chain::HOOK_HOOKNUM, hooknum)
            .i32(chain::HOOK_PRIORITY, base.priority);
    });
}

/// `NFTA_SET_ELEM_LIST_*` with the elements (and their verdicts when `with_data`).
fn element_list(a: &mut Attrs<'_>, set_name: &str, elements: &[&Element], with_data: bool) {
    a.str(elem::LIST_TABLE, TABLE).str(elem::LIST_SET, set_name);
    a.nest(elem::LIST_ELEMENTS, |list| {
        let mut index = 0u16;
        let mut next = || {
            index += 1;
            index
        };
        for e in elements {
            let value = e.value.as_ref().filter(|_| with_data);
            match &e.key {
                Key::Prefix(net) => {
                    let (start, end) = lower::interval(net);
                    element(list, next(), &start, None, value, end.is_none());
                    if let Some(end) = end {
                        element(list, next(), &end, Some(elem::F_INTERVAL_END), None, false);
                    }
                }
                key => element(list, next(), &lower::key_bytes(key), None, value, false),
            }
        }
    });
}

fn element(
    list: &mut Attrs<'_>,
    index: u16,
    key: &[u8],
    flags: Option<u32>,
    value: Option<&Value>,
    open: bool,
) {
    list.nest(index, |el| {
        if let Some(flags) = flags {
            el.u32(elem::FLAGS, flags);
        }
        el.nest(elem::KEY, |k| {
            k.bytes(data::VALUE, key);
        });
        match value {
            Some(Value::Verdict(v)) => {
                el.nest(elem::DATA, |d| lower::element_verdict(v).write(d));
            }
            Some(other) => {
                let bytes = lower::value_bytes(other).unwrap_or_default();
                el.nest(elem::DATA, |d| {
                    d.bytes(data::VALUE, &bytes);
                });
            }
            None => {}
        }
        if open {
            el.bytes(elem::USERDATA, OPEN_INTERVAL_UDATA);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_plan::SetName;

    /// What nft 1.0.6 sent (`nft --debug=mnl`, x86-64) for two of the slot maps.
    #[test]
    fn slot_map_user_data_is_what_nft_writes() {
        let v4_ip_tcp_2 = Picker {
            set: SetName::Cluster,
            keyed: Keyed::Address,
            protocol: Protocol::Tcp,
            capacity: 2,
        };
        let nft: &[u8] = &[
            0, 4, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0, 3, 80, 0, 4, 13, 0, 0, 0, 1, 72, 0, 20, 0, 4, 7, 0,
            0, 0, 1, 12, 0, 4, 12, 0, 0, 0, 1, 4, 12, 0, 0, 0, 1, 20, 0, 4, 7, 0, 0, 0, 1, 12, 0,
            4, 8, 0, 0, 0, 1, 4, 2, 0, 0, 0, 2, 26, 0, 4, 23, 0, 0, 0, 1, 18, 0, 4, 1, 0, 0, 0, 1,
            4, 2, 0, 0, 0, 2, 4, 0, 0, 0, 0, 4, 52, 0, 4, 13, 0, 0, 0, 1, 44, 0, 20, 0, 4, 7, 0, 0,
            0, 1, 12, 0, 4, 12, 0, 0, 0, 1, 4, 12, 0, 0, 0, 1, 20, 0, 4, 7, 0, 0, 0, 1, 12, 0, 4,
            8, 0, 0, 0, 1, 4, 2, 0, 0, 0, 6, 4, 0, 0, 0, 0,
        ];
        assert_eq!(typeof_udata(&v4_ip_tcp_2, Family::V4), nft);
        let v6_port_udp_16 = Picker {
            keyed: Keyed::Port,
            protocol: Protocol::Udp,
            capacity: 16,
            ..v4_ip_tcp_2
        };
        let nft: &[u8] = &[
            0, 4, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0, 3, 58, 0, 4, 13, 0, 0, 0, 1, 50, 0, 20, 0, 4, 7, 0,
            0, 0, 1, 12, 0, 4, 6, 0, 0, 0, 1, 4, 2, 0, 0, 0, 1, 26, 0, 4, 23, 0, 0, 0, 1, 18, 0, 4,
            1, 0, 0, 0, 1, 4, 16, 0, 0, 0, 2, 4, 0, 0, 0, 0, 4, 52, 0, 4, 13, 0, 0, 0, 1, 44, 0,
            20, 0, 4, 7, 0, 0, 0, 1, 12, 0, 4, 13, 0, 0, 0, 1, 4, 9, 0, 0, 0, 1, 20, 0, 4, 7, 0, 0,
            0, 1, 12, 0, 4, 6, 0, 0, 0, 1, 4, 2, 0, 0, 0, 6, 4, 0, 0, 0, 0,
        ];
        assert_eq!(typeof_udata(&v6_port_udp_16, Family::V6), nft);
    }
}
