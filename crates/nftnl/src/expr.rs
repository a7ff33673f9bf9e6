//! The nf_tables expressions sluice's rules are made of, and their netlink encoding
//! (`NFTA_EXPR_NAME` + `NFTA_EXPR_DATA`, attribute numbers from the kernel's UAPI header).

use crate::consts::{EXPR_DATA, EXPR_NAME, LIST_ELEM, data, verdict};
use crate::msg::Attrs;

/// A register value up to 16 bytes (the width of one nf_tables register), stored inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Data {
    len: u8,
    bytes: [u8; 16],
}

impl Data {
    /// Panics when `bytes` is longer than a register (a programming error).
    pub fn new(bytes: &[u8]) -> Self {
        assert!(bytes.len() <= 16, "register value of {} bytes", bytes.len());
        let mut out = [0; 16];
        out[..bytes.len()].copy_from_slice(bytes);
        Self {
            len: bytes.len() as u8,
            bytes: out,
        }
    }

    /// A 32-bit value in host byte order (marks, ct state, fib results, numgen results).
    pub fn host_u32(value: u32) -> Self {
        Self::new(&value.to_ne_bytes())
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A verdict (`NFTA_DATA_VERDICT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'a> {
    Accept,
    Drop,
    Return,
    Jump(&'a str),
    Goto(&'a str),
}

impl Verdict<'_> {
    /// Writes `NFTA_DATA_VERDICT { CODE, [CHAIN] }` into an `NFTA_*_DATA` nest.
    pub fn write(&self, a: &mut Attrs<'_>) {
        let (code, chain) = match *self {
            Verdict::Accept => (verdict::ACCEPT, None),
            Verdict::Drop => (verdict::DROP, None),
            Verdict::Return => (verdict::RETURN, None),
            Verdict::Jump(c) => (verdict::JUMP, Some(c)),
            Verdict::Goto(c) => (verdict::GOTO, Some(c)),
        };
        a.nest(data::VERDICT, |v| {
            v.i32(data::VERDICT_CODE, code);
            if let Some(chain) = chain {
                v.str(data::VERDICT_CHAIN, chain);
            }
        });
    }
}

/// Where a payload load reads from (`enum nft_payload_bases`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadBase {
    Network = 1,
    Transport = 2,
}

/// Meta keys used (`enum nft_meta_keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    Mark = 3,
    L4Proto = 16,
}

/// Comparison operators used (`enum nft_cmp_ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
}

/// `NFT_CT_STATE`, `NFT_CT_STATUS` (`enum nft_ct_keys`).
pub const CT_STATE: u32 = 0;
pub const CT_STATUS: u32 = 2;
/// `NFT_NG_RANDOM`.
pub const NUMGEN_RANDOM: u32 = 1;
/// `NFT_FIB_RESULT_ADDRTYPE` and `NFTA_FIB_F_SADDR`.
pub const FIB_RESULT_ADDRTYPE: u32 = 3;
pub const FIB_F_SADDR: u32 = 1;
/// `NFT_NAT_DNAT`; `NF_NAT_RANGE_PROTO_SPECIFIED`; `NF_NAT_RANGE_PROTO_RANDOM_FULLY`.
pub const NAT_DNAT: u32 = 1;
pub const NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;
pub const NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;
/// `NFT_REJECT_ICMP_UNREACH`.
pub const REJECT_ICMP_UNREACH: u32 = 0;
/// `NFT_DYNSET_OP_UPDATE`.
pub const DYNSET_OP_UPDATE: u32 = 1;

/// One expression of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expr<'a> {
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Meta {
        key: MetaKey,
        dreg: u32,
    },
    MetaSet {
        key: MetaKey,
        sreg: u32,
    },
    Ct {
        key: u32,
        dreg: u32,
    },
    Cmp {
        sreg: u32,
        op: CmpOp,
        data: Data,
    },
    /// `dreg = (sreg & mask) ^ xor`.
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Data,
        xor: Data,
    },
    /// A set membership test, or a map lookup into `dreg` (verdict maps: register 0).
    Lookup {
        set: &'a str,
        sreg: u32,
        dreg: Option<u32>,
    },
    Immediate {
        dreg: u32,
        data: Data,
    },
    /// An immediate verdict (register 0).
    Verdict(Verdict<'a>),
    /// `dreg = random % modulus + offset` (a 32-bit host-order value).
    Numgen {
        dreg: u32,
        modulus: u32,
        kind: u32,
        offset: u32,
    },
    Fib {
        dreg: u32,
        result: u32,
        flags: u32,
    },
    /// Address and port from registers; `flags` left out when `None` (the kernel then
    /// derives them from the registers given, as for `dnat to ... map @m`).
    Nat {
        kind: u32,
        family: u32,
        reg_addr: u32,
        reg_proto: u32,
        flags: Option<u32>,
    },
    Masq {
        flags: u32,
    },
    Reject {
        kind: u32,
        icmp_code: u8,
    },
    Dynset {
        set: &'a str,
        op: u32,
        sreg_key: u32,
    },
}

impl Expr<'_> {
    /// The kernel's name of the expression type.
    pub fn name(&self) -> &'static str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Ct { .. } => "ct",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Lookup { .. } => "lookup",
            Expr::Immediate { .. } | Expr::Verdict(_) => "immediate",
            Expr::Numgen { .. } => "numgen",
            Expr::Fib { .. } => "fib",
            Expr::Nat { .. } => "nat",
            Expr::Masq { .. } => "masq",
            Expr::Reject { .. } => "reject",
            Expr::Dynset { .. } => "dynset",
        }
    }

    /// Writes one `NFTA_LIST_ELEM { NAME, DATA { ... } }`.
    pub fn write(&self, a: &mut Attrs<'_>) {
        a.nest(LIST_ELEM, |e| {
            e.str(EXPR_NAME, self.name());
            e.nest(EXPR_DATA, |d| self.write_data(d));
        });
    }

    fn write_data(&self, d: &mut Attrs<'_>) {
        if !self.write_match_data(d) {
            self.write_action_data(d);
        }
    }

    /// Loads, comparisons and lookups; `false` for other expressions.
    fn write_match_data(&self, d: &mut Attrs<'_>) -> bool {
        match *self {
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                // NFTA_PAYLOAD_DREG, _BASE, _OFFSET, _LEN
                d.u32(1, dreg)
                    .u32(2, base as u32)
                    .u32(3, offset)
                    .u32(4, len);
            }
            Expr::Meta { key, dreg } => {
                // NFTA_META_KEY, NFTA_META_DREG
                d.u32(2, key as u32).u32(1, dreg);
            }
            Expr::MetaSet { key, sreg } => {
                // NFTA_META_KEY, NFTA_META_SREG
                d.u32(2, key as u32).u32(3, sreg);
            }
            Expr::Ct { key, dreg } => {
                // NFTA_CT_KEY, NFTA_CT_DREG
                d.u32(2, key).u32(1, dreg);
            }
            Expr::Cmp { sreg, op, data } => {
                // NFTA_CMP_SREG, _OP, _DATA { NFTA_DATA_VALUE }
                d.u32(1, sreg).u32(2, op as u32);
                d.nest(3, |v| {
                    v.bytes(data::VALUE, data.as_slice());
                });
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                // NFTA_BITWISE_SREG, _DREG, _LEN, _MASK, _XOR (operation: mask-and-xor, the
                // default, so _OP is left out)
                let len = mask.as_slice().len() as u32;
                d.u32(1, sreg).u32(2, dreg).u32(3, len);
                d.nest(4, |v| {
                    v.bytes(data::VALUE, mask.as_slice());
                });
                d.nest(5, |v| {
                    v.bytes(data::VALUE, xor.as_slice());
                });
            }
            Expr::Lookup { set, sreg, dreg } => {
                // NFTA_LOOKUP_SET, _SREG, [_DREG]
                d.str(1, set).u32(2, sreg);
                if let Some(dreg) = dreg {
                    d.u32(3, dreg);
                }
            }
            _ => return false,
        }
        true
    }

    /// Immediates, verdicts and statements.
    fn write_action_data(&self, d: &mut Attrs<'_>) {
        match *self {
            Expr::Immediate { dreg, data } => {
                // NFTA_IMMEDIATE_DREG, _DATA { NFTA_DATA_VALUE }
                d.u32(1, dreg);
                d.nest(2, |v| {
                    v.bytes(data::VALUE, data.as_slice());
                });
            }
            Expr::Verdict(verdict) => {
                d.u32(1, 0);
                d.nest(2, |v| verdict.write(v));
            }
            Expr::Numgen {
                dreg,
                modulus,
                kind,
                offset,
            } => {
                // NFTA_NG_DREG, _MODULUS, _TYPE, _OFFSET
                d.u32(1, dreg).u32(2, modulus).u32(3, kind).u32(4, offset);
            }
            Expr::Fib {
                dreg,
                result,
                flags,
            } => {
                // NFTA_FIB_FLAGS, _RESULT, _DREG
                d.u32(3, flags).u32(2, result).u32(1, dreg);
            }
            Expr::Nat {
                kind,
                family,
                reg_addr,
                reg_proto,
                flags,
            } => {
                // NFTA_NAT_TYPE, _FAMILY, _REG_ADDR_MIN, _REG_PROTO_MIN, _FLAGS
                d.u32(1, kind)
                    .u32(2, family)
                    .u32(3, reg_addr)
                    .u32(5, reg_proto);
                if let Some(flags) = flags {
                    d.u32(7, flags);
                }
            }
            Expr::Masq { flags } => {
                // NFTA_MASQ_FLAGS
                d.u32(1, flags);
            }
            Expr::Reject { kind, icmp_code } => {
                // NFTA_REJECT_TYPE, NFTA_REJECT_ICMP_CODE (one byte)
                d.u32(1, kind).u8(2, icmp_code);
            }
            Expr::Dynset { set, op, sreg_key } => {
                // NFTA_DYNSET_SREG_KEY, _OP, _SET_NAME
                d.u32(4, sreg_key).u32(3, op).str(1, set);
            }
            // Written by `write_match_data`.
            Expr::Payload { .. }
            | Expr::Meta { .. }
            | Expr::MetaSet { .. }
            | Expr::Ct { .. }
            | Expr::Cmp { .. }
            | Expr::Bitwise { .. }
            | Expr::Lookup { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(expr: Expr<'_>) -> Vec<u8> {
        let mut buf = Vec::new();
        crate::msg::tests_support::attrs(&mut buf, |a| expr.write(a));
        buf
    }

    #[test]
    fn a_payload_load_is_name_and_four_numbers() {
        let bytes = encode(Expr::Payload {
            base: PayloadBase::Network,
            offset: 12,
            len: 4,
            dreg: 1,
        });
        // LIST_ELEM(4) + NAME("payload\0" = 4+8) + DATA(4 + 4 * 8)
        assert_eq!(bytes.len(), 4 + 12 + 36);
        assert_eq!(&bytes[8..16], b"payload\0");
        let data = &bytes[16..];
        assert_eq!(&data[4..12], &[8, 0, 1, 0, 0, 0, 0, 1]);
        assert_eq!(&data[28..36], &[8, 0, 4, 0, 0, 0, 0, 4]);
    }

    #[test]
    fn a_goto_carries_the_code_and_the_chain_name() {
        let bytes = encode(Expr::Verdict(Verdict::Goto("ep-X")));
        let code = (-4i32).to_be_bytes();
        let at = bytes
            .windows(4)
            .position(|w| w == code)
            .expect("verdict code present");
        assert_eq!(&bytes[at + 8..at + 13], b"ep-X\0");
    }
}
