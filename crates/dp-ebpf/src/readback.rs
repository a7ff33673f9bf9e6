//! The programmed state read back from the pins under `--bpffs-path`, in plain terms, for
//! `sluice inspect` and `sluice explain`: frontends with what each entry does, this node's
//! NodePort addresses and pod CIDRs, and the datapath's translated flows. No map bytes leave
//! this crate. Reading loads nothing and changes nothing, so it works with the agent stopped
//! (and leaves a generation the running agent is filling alone).
//!
//! The maps carry no Service names: a frontend is known by its key only.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use sluice_plan::{Family, FrontendAddr, FrontendKey, Plan, Protocol};

use crate::abi::{self, CtKey, CtVal, SlotKey, SvcKey, SvcVal};
use crate::dump::addr;
use crate::render::MapContent;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot list the pin directory {dir}")]
    List {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the pinned map {path}")]
    Map {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
}

/// Whether [`read_pinned`] also reads the conntrack map (up to a million entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFlows {
    Yes,
    No,
}

/// What one entry of a frontend does with a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryAction {
    /// DNAT to one of `backends` (sorted, unique; a Maglev table's every backend).
    Forward {
        backends: Vec<SocketAddr>,
        masquerade: bool,
    },
    /// Refused (`ECONNREFUSED` for sockets, ICMP port unreachable from tc).
    Reject,
    /// Discarded (`EPERM` for sockets): also an entry left without backends.
    Drop,
}

/// One entry (scope) of a frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryState {
    pub action: EntryAction,
    /// `loadBalancerSourceRanges`, checked before the action (empty: every source).
    pub allowed_sources: Vec<IpNet>,
    pub maglev: bool,
    /// Session affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
}

/// A frontend and its entries. NodePort frontends have a `NodePorts` key: they answer on
/// every address of [`PinnedState::nodeport_addresses`] of their family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendState {
    pub key: FrontendKey,
    /// Socket-LB (`sock`): this node's processes, the plan's `node` route.
    pub sock: Option<EntryState>,
    /// tc/XDP (`ext`): packets from elsewhere, the `outside` route.
    pub ext: Option<EntryState>,
    /// tc/XDP (`ext-pods`) for sources inside the pod CIDRs, the `pods` route: present only
    /// where it differs from `ext`.
    pub ext_pods: Option<EntryState>,
}

impl FrontendState {
    /// The entry packets from pod sources get: `ext-pods`, else `ext` (as the datapath
    /// looks them up).
    pub fn pods(&self) -> Option<&EntryState> {
        self.ext_pods.as_ref().or(self.ext.as_ref())
    }
}

/// One flow the external path translated (its original direction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowState {
    pub protocol: Protocol,
    pub client: SocketAddr,
    pub frontend: SocketAddr,
    pub backend: SocketAddr,
    pub masquerade: bool,
    /// RST seen or FIN both ways: the entry lives on for the close timeout only.
    pub closed: bool,
    /// Since the flow's last packet (`None` when the clock cannot be read).
    pub idle: Option<Duration>,
}

/// Everything the eBPF dataplane has programmed on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PinnedState {
    /// Sorted by key (as every list here).
    pub frontends: Vec<FrontendState>,
    pub nodeport_addresses: Vec<IpAddr>,
    pub pod_cidrs: Vec<IpNet>,
    /// Sorted by frontend, then client; empty unless asked for.
    pub flows: Vec<FlowState>,
}

/// Reads the pins under `dir` (each map's current generation); `None` when no eBPF
/// dataplane state is pinned there.
pub fn read_pinned(dir: &Path, flows: ReadFlows) -> Result<Option<PinnedState>, ReadError> {
    let Some((content, conntrack)) = crate::kernel::read_pinned(dir, flows == ReadFlows::Yes)?
    else {
        return Ok(None);
    };
    let mut state = PinnedState::from_content(&content);
    let now = crate::kernel::monotonic_ns();
    state.flows = decode_flows(&conntrack, now);
    Ok(Some(state))
}

impl PinnedState {
    /// The state of the agent-owned rows in `content`.
    pub fn from_content(content: &MapContent) -> PinnedState {
        let nodeport_addresses: BTreeSet<IpAddr> = content
            .nodeip
            .iter()
            .map(|k| addr(k.addr, k.family))
            .collect();
        let pod_cidrs: BTreeSet<IpNet> = content
            .cidr
            .iter()
            .filter_map(|k| net(k.addr, k.family, k.prefixlen.checked_sub(32)?))
            .collect();
        PinnedState {
            frontends: frontends(content),
            nodeport_addresses: nodeport_addresses.into_iter().collect(),
            pod_cidrs: pod_cidrs.into_iter().collect(),
            flows: Vec::new(),
        }
    }

    /// What the maps hold once `plan` is programmed (group ids handed out as `sluice plan`
    /// does), read back: for tests of readers without a kernel.
    pub fn of_plan(plan: &Plan) -> PinnedState {
        PinnedState::from_content(&crate::render::render_plan(plan))
    }
}

fn net(words: [u32; 4], family: u8, prefix_len: u32) -> Option<IpNet> {
    IpNet::new(addr(words, family), u8::try_from(prefix_len).ok()?).ok()
}

fn protocol_of(number: u8) -> Option<Protocol> {
    [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
        .into_iter()
        .find(|p| p.number() == number)
}

/// A frontend entry's key in plan terms (`None` for a protocol the plan does not know).
fn frontend_key(key: &SvcKey) -> Option<FrontendKey> {
    let addr = if key.scope & abi::SCOPE_NODEPORT4 != 0 {
        FrontendAddr::NodePorts(Family::V4)
    } else if key.scope & abi::SCOPE_NODEPORT6 != 0 {
        FrontendAddr::NodePorts(Family::V6)
    } else {
        FrontendAddr::Ip(addr(key.addr, key.addr_family()))
    };
    Some(FrontendKey {
        addr,
        protocol: protocol_of(key.proto)?,
        port: u16::from_be(key.port),
    })
}

fn frontends(content: &MapContent) -> Vec<FrontendState> {
    let mut by_key: BTreeMap<FrontendKey, FrontendState> = BTreeMap::new();
    for (key, value) in &content.svc {
        let Some(fkey) = frontend_key(key) else {
            continue;
        };
        let fe = by_key.entry(fkey).or_insert_with(|| FrontendState {
            key: fkey,
            sock: None,
            ext: None,
            ext_pods: None,
        });
        let slot = match key.scope & abi::SCOPE_CLASS_MASK {
            abi::SCOPE_SOCK => &mut fe.sock,
            abi::SCOPE_EXT => &mut fe.ext,
            abi::SCOPE_EXT_PODS => &mut fe.ext_pods,
            _ => continue,
        };
        *slot = Some(entry(content, value));
    }
    by_key.into_values().collect()
}

/// What the datapath does with an entry (the order of its checks: refusal, drop, no
/// backend to pick).
fn entry(content: &MapContent, value: &SvcVal) -> EntryState {
    let flag = |bit: u16| value.flags & bit != 0;
    let action = if flag(abi::SVC_REJECT) {
        EntryAction::Reject
    } else if flag(abi::SVC_DROP) || value.count == 0 {
        EntryAction::Drop
    } else {
        let backends = group_backends(content, value);
        if backends.is_empty() {
            EntryAction::Drop
        } else {
            EntryAction::Forward {
                backends,
                masquerade: flag(abi::SVC_MASQ),
            }
        }
    };
    EntryState {
        action,
        allowed_sources: if flag(abi::SVC_SRC_RANGES) {
            source_ranges(content, value.group)
        } else {
            Vec::new()
        },
        maglev: flag(abi::SVC_MAGLEV),
        affinity_timeout: flag(abi::SVC_AFFINITY).then_some(value.affinity_timeout),
    }
}

/// The backends an entry picks from: its Maglev table, or its first `count` slots.
fn group_backends(content: &MapContent, value: &SvcVal) -> Vec<SocketAddr> {
    let socket = |b: &abi::Backend| SocketAddr::new(addr(b.addr, b.family), u16::from_be(b.port));
    let slot = |slot| SlotKey {
        group: value.group,
        slot,
    };
    let found: BTreeSet<SocketAddr> = if value.flags & abi::SVC_MAGLEV != 0 {
        content
            .maglev
            .range(slot(0)..=slot(u32::MAX))
            .map(|(_, b)| socket(b))
            .collect()
    } else {
        (0..u32::from(value.count))
            .filter_map(|i| content.slot.get(&slot(i)).map(socket))
            .collect()
    };
    found.into_iter().collect()
}

fn source_ranges(content: &MapContent, group: u32) -> Vec<IpNet> {
    content
        .src
        .iter()
        .filter(|k| k.group == group)
        .filter_map(|k| net(k.addr, k.family, k.prefixlen.checked_sub(64)?))
        .collect()
}

pub(crate) fn decode_flows(conntrack: &[(CtKey, CtVal)], now_ns: Option<u64>) -> Vec<FlowState> {
    let mut flows: Vec<FlowState> = conntrack
        .iter()
        .filter(|(k, _)| k.dir == abi::CT_DIR_ORIG)
        .filter_map(|(k, v)| flow(k, v, now_ns))
        .collect();
    flows.sort_by_key(|f| (f.frontend, f.client));
    flows
}

fn flow(key: &CtKey, value: &CtVal, now_ns: Option<u64>) -> Option<FlowState> {
    let family = if key.saddr[1..] == [0, 0, 0] && key.daddr[1..] == [0, 0, 0] {
        abi::FAMILY_V4
    } else {
        abi::FAMILY_V6
    };
    let socket = |words, port: u16| SocketAddr::new(addr(words, family), u16::from_be(port));
    Some(FlowState {
        protocol: protocol_of(key.proto)?,
        client: socket(key.saddr, key.sport),
        frontend: socket(key.daddr, key.dport),
        backend: socket(value.nat_addr, value.nat_port),
        masquerade: value.flags & (abi::SVC_MASQ as u8) != 0,
        closed: value.flags & abi::CT_F_CLOSED != 0,
        idle: now_ns.map(|now| Duration::from_nanos(now.saturating_sub(value.last_ns))),
    })
}
