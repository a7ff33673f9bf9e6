//! `#[repr(C)]` mirror of `ebpf/include/sluice_abi.h`. Padding is explicit so every byte of a
//! key is defined (hash maps compare keys bytewise). `tests::layout_matches_btf` checks sizes
//! and offsets against the compiled objects' BTF.

use std::fmt;

/// `SL_SCOPE_*`: which traffic (and so which route of the plan) a frontend entry serves.
pub const SCOPE_SOCK: u8 = 0;
pub const SCOPE_EXT: u8 = 1;
pub const SCOPE_EXT_PODS: u8 = 2;
/// Or'ed into the scope of an address-less NodePort entry (one per family).
pub const SCOPE_NODEPORT4: u8 = 0x10;
pub const SCOPE_NODEPORT6: u8 = 0x20;
/// Or'ed into the scope of an IPv6 address's entry. Without it an IPv4 address and the IPv6
/// address that starts with the same 32 bits and ends in zeros (32.1.13.184 and 2001:db8::,
/// 0.0.0.0 and ::) had one key, so one of the two frontends was lost.
pub const SCOPE_V6: u8 = 0x40;
/// The scope bits that name the class (without the NodePort bits).
pub const SCOPE_CLASS_MASK: u8 = 0x0f;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const SVC_REJECT: u16 = 0x1;
pub const SVC_AFFINITY: u16 = 0x2;
pub const SVC_SRC_RANGES: u16 = 0x4;
pub const SVC_MASQ: u16 = 0x8;
pub const SVC_MAGLEV: u16 = 0x10;
/// `0x20` was `SL_SVC_MASQ_OFFCLUSTER`: retired, never reused.
pub const SVC_DROP: u16 = 0x40;
pub const SVC_PODS: u16 = 0x80;

/// `SL_MASQ_MARK`: the skb mark the netfilter masquerade rule matches.
pub const MASQ_MARK: u32 = 0x4000;
/// `SL_MAGLEV_M`: slots per Maglev table (prime).
pub const MAGLEV_M: u32 = 1021;

pub const CT_DIR_ORIG: u8 = 0;
pub const CT_DIR_REPLY: u8 = 1;
/// `ct_val.flags`: a FIN went this entry's direction.
pub const CT_F_FIN: u8 = 0x1;
/// `ct_val.flags`: RST seen or FIN both ways; `last_ns` is the closing time.
pub const CT_F_CLOSED: u8 = 0x2;

pub const MAP_SVC: &str = "sl_svc_v1";
pub const MAP_SLOT: &str = "sl_slot_v1";
pub const MAP_MAGLEV: &str = "sl_maglev_v1";
pub const MAP_AFF: &str = "sl_aff_v1";
pub const MAP_REV: &str = "sl_rev_v1";
pub const MAP_SRC: &str = "sl_src_v1";
pub const MAP_CT: &str = "sl_ct_v1";
pub const MAP_CIDR: &str = "sl_cidr_v1";
pub const MAP_NODEIP: &str = "sl_nodeip_v1";

/// Every map of the programs. The first six are written by the agent; the last three by the
/// datapath (LRU maps the agent only prunes, and copies when it grows them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapKind {
    Svc,
    Slot,
    Maglev,
    Src,
    Cidr,
    NodeIp,
    Aff,
    Rev,
    Ct,
}

impl MapKind {
    pub const ALL: [MapKind; 9] = [
        MapKind::Svc,
        MapKind::Slot,
        MapKind::Maglev,
        MapKind::Src,
        MapKind::Cidr,
        MapKind::NodeIp,
        MapKind::Aff,
        MapKind::Rev,
        MapKind::Ct,
    ];
    /// The maps whose whole content the agent decides.
    pub const AGENT: [MapKind; 6] = [
        MapKind::Svc,
        MapKind::Slot,
        MapKind::Maglev,
        MapKind::Src,
        MapKind::Cidr,
        MapKind::NodeIp,
    ];

    /// The map's name in the objects (and its first pin name).
    pub fn name(self) -> &'static str {
        match self {
            MapKind::Svc => MAP_SVC,
            MapKind::Slot => MAP_SLOT,
            MapKind::Maglev => MAP_MAGLEV,
            MapKind::Src => MAP_SRC,
            MapKind::Cidr => MAP_CIDR,
            MapKind::NodeIp => MAP_NODEIP,
            MapKind::Aff => MAP_AFF,
            MapKind::Rev => MAP_REV,
            MapKind::Ct => MAP_CT,
        }
    }

    /// The short name used by `--bpf-map-sizes` and metrics labels (`svc`, `ct`, ...).
    pub fn short(self) -> &'static str {
        match self {
            MapKind::Svc => "svc",
            MapKind::Slot => "slot",
            MapKind::Maglev => "maglev",
            MapKind::Src => "src",
            MapKind::Cidr => "cidr",
            MapKind::NodeIp => "nodeip",
            MapKind::Aff => "aff",
            MapKind::Rev => "rev",
            MapKind::Ct => "ct",
        }
    }

    pub fn from_short(short: &str) -> Option<MapKind> {
        MapKind::ALL.into_iter().find(|m| m.short() == short)
    }

    /// Written by the datapath (LRU: never full, the oldest entries go).
    pub fn datapath_owned(self) -> bool {
        matches!(self, MapKind::Aff | MapKind::Rev | MapKind::Ct)
    }

    /// Key and value sizes in bytes.
    pub fn sizes(self) -> (usize, usize) {
        use std::mem::size_of;
        match self {
            MapKind::Svc => (size_of::<SvcKey>(), size_of::<SvcVal>()),
            MapKind::Slot | MapKind::Maglev => (size_of::<SlotKey>(), size_of::<Backend>()),
            MapKind::Src => (size_of::<SrcKey>(), 4),
            MapKind::Cidr => (size_of::<CidrKey>(), 4),
            MapKind::NodeIp => (size_of::<NodeIpKey>(), 4),
            MapKind::Aff => (size_of::<AffKey>(), size_of::<AffVal>()),
            MapKind::Rev => (size_of::<RevKey>(), size_of::<RevVal>()),
            MapKind::Ct => (size_of::<CtKey>(), size_of::<CtVal>()),
        }
    }
}

impl fmt::Display for MapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SvcKey {
    /// Network order; IPv4 in `addr[0]`; all zero for an address-less NodePort entry.
    pub addr: [u32; 4],
    /// Network order.
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
}

impl SvcKey {
    /// The family of an addressed entry's address ([`SCOPE_V6`]); not meaningful for the
    /// address-less NodePort entries, whose scope names their family.
    pub fn addr_family(&self) -> u8 {
        if self.scope & SCOPE_V6 != 0 {
            FAMILY_V6
        } else {
            FAMILY_V4
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SvcVal {
    pub group: u32,
    pub count: u16,
    pub flags: u16,
    pub affinity_timeout: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SlotKey {
    pub group: u32,
    pub slot: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Backend {
    pub addr: [u32; 4],
    pub port: u16,
    pub family: u8,
    pub pad: u8,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct AffKey {
    pub cookie: u64,
    pub addr: [u32; 4],
    pub group: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AffVal {
    pub backend: Backend,
    pub pad: u32,
    pub last_ns: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RevKey {
    pub cookie: u64,
    pub addr: [u32; 4],
    pub port: u16,
    pub pad: u16,
    pub pad2: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RevVal {
    pub addr: [u32; 4],
    pub port: u16,
    pub pad: u16,
}

/// `sl_src_v1` LPM key (`loadBalancerSourceRanges`): `prefixlen` = 64 + CIDR length.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SrcKey {
    pub prefixlen: u32,
    pub group: u32,
    pub family: u8,
    pub pad: [u8; 3],
    pub addr: [u32; 4],
}

/// `sl_cidr_v1` LPM key (pod CIDRs): `prefixlen` = 32 + CIDR length.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct CidrKey {
    pub prefixlen: u32,
    pub family: u8,
    pub pad: [u8; 3],
    pub addr: [u32; 4],
}

/// `sl_nodeip_v1` key: one NodePort address of this node.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeIpKey {
    pub addr: [u32; 4],
    pub family: u8,
    pub pad: [u8; 3],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct CtKey {
    /// Network order; IPv4 in `[0]`.
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub pad: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtVal {
    pub nat_addr: [u32; 4],
    pub nat_port: u16,
    pub flags: u8,
    pub pad: u8,
    pub group: u32,
    pub last_ns: u64,
}

/// Plain old data: `#[repr(C)]` integers with explicit padding, every bit pattern valid.
///
/// # Safety
/// Implement only for such types (no implicit padding, no pointers, no invariants).
pub unsafe trait Pod: Copy + Default + 'static {}

// SAFETY: all these are repr(C) plain integers with explicit padding fields, so every bit
// pattern is valid and there are no implicit padding bytes.
unsafe impl Pod for SvcKey {}
// SAFETY: as above.
unsafe impl Pod for SvcVal {}
// SAFETY: as above.
unsafe impl Pod for SlotKey {}
// SAFETY: as above.
unsafe impl Pod for Backend {}
// SAFETY: as above.
unsafe impl Pod for AffKey {}
// SAFETY: as above.
unsafe impl Pod for AffVal {}
// SAFETY: as above.
unsafe impl Pod for RevKey {}
// SAFETY: as above.
unsafe impl Pod for RevVal {}
// SAFETY: as above.
unsafe impl Pod for SrcKey {}
// SAFETY: as above.
unsafe impl Pod for CidrKey {}
// SAFETY: as above.
unsafe impl Pod for NodeIpKey {}
// SAFETY: as above.
unsafe impl Pod for CtKey {}
// SAFETY: as above.
unsafe impl Pod for CtVal {}
// SAFETY: a plain integer.
unsafe impl Pod for u32 {}

/// The bytes of a key or value, as the kernel compares and stores them.
pub fn bytes_of<T: Pod>(value: &T) -> &[u8] {
    // SAFETY: `T: Pod` has no implicit padding, so all `size_of::<T>()` bytes are
    // initialised; the slice borrows `value` for its lifetime.
    unsafe {
        std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
    }
}

/// A key or value from kernel bytes (`None` when the length is wrong).
pub fn from_bytes<T: Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() != std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length matches, every bit pattern is a valid `T: Pod`, and
    // `read_unaligned` has no alignment requirement.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}
