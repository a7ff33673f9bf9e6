//! `#[repr(C)]` mirror of `ebpf/include/sluice_abi.h`. Padding is explicit so every byte of a
//! key is defined (hash maps compare keys bytewise). `tests::layout_matches_btf` checks sizes
//! and offsets against the compiled object's BTF.

/// `SL_SCOPE_*`: which traffic a frontend entry serves.
pub const SCOPE_SOCK: u8 = 0;
pub const SCOPE_EXT: u8 = 1;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const SVC_REJECT: u16 = 0x1;
pub const SVC_AFFINITY: u16 = 0x2;
pub const SVC_SRC_RANGES: u16 = 0x4;
pub const SVC_MASQ: u16 = 0x8;
pub const SVC_MAGLEV: u16 = 0x10;
pub const SVC_MASQ_OFFCLUSTER: u16 = 0x20;

/// `SL_MASQ_MARK`: the skb mark the netfilter masquerade rule matches.
pub const MASQ_MARK: u32 = 0x4000;
/// `SL_MAGLEV_M`: slots per Maglev table (prime).
pub const MAGLEV_M: u32 = 1021;

pub const CT_DIR_ORIG: u8 = 0;
pub const CT_DIR_REPLY: u8 = 1;

pub const MAP_SVC: &str = "sl_svc_v1";
pub const MAP_SLOT: &str = "sl_slot_v1";
pub const MAP_MAGLEV: &str = "sl_maglev_v1";
pub const MAP_AFF: &str = "sl_aff_v1";
pub const MAP_REV: &str = "sl_rev_v1";
pub const MAP_SRC: &str = "sl_src_v1";
pub const MAP_CT: &str = "sl_ct_v1";
pub const MAP_CIDR: &str = "sl_cidr_v1";
pub const ALL_MAPS: &[&str] = &[
    MAP_SVC, MAP_SLOT, MAP_MAGLEV, MAP_AFF, MAP_REV, MAP_SRC, MAP_CT, MAP_CIDR,
];

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SvcKey {
    /// Network order; IPv4 in `addr[0]`.
    pub addr: [u32; 4],
    /// Network order.
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
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

/// Data part of the `sl_src_v1` LPM key (aya's `lpm_trie::Key` adds the prefix length).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SrcKeyData {
    pub group: u32,
    pub family: u8,
    pub pad: [u8; 3],
    pub addr: [u32; 4],
}

/// Data part of the `sl_cidr_v1` LPM key (cluster CIDRs).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct CidrKeyData {
    pub family: u8,
    pub pad: [u8; 3],
    pub addr: [u32; 4],
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

// SAFETY: all these are repr(C) plain integers with explicit padding fields, so every bit
// pattern is valid and there are no implicit padding bytes.
unsafe impl aya::Pod for SvcKey {}
// SAFETY: as above.
unsafe impl aya::Pod for SvcVal {}
// SAFETY: as above.
unsafe impl aya::Pod for SlotKey {}
// SAFETY: as above.
unsafe impl aya::Pod for Backend {}
// SAFETY: as above.
unsafe impl aya::Pod for AffKey {}
// SAFETY: as above.
unsafe impl aya::Pod for AffVal {}
// SAFETY: as above.
unsafe impl aya::Pod for RevKey {}
// SAFETY: as above.
unsafe impl aya::Pod for RevVal {}
// SAFETY: as above.
unsafe impl aya::Pod for SrcKeyData {}
// SAFETY: as above.
unsafe impl aya::Pod for CidrKeyData {}
// SAFETY: as above.
unsafe impl aya::Pod for CtKey {}
// SAFETY: as above.
unsafe impl aya::Pod for CtVal {}
