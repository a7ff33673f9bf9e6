//! Unit tests: the ABI layout against the objects' BTF.

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};

use crate::abi::*;

// ---- minimal ELF + BTF reader (only what the layout test needs) ----

fn u16le(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32le(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64le(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

fn elf_section<'a>(elf: &'a [u8], want: &str) -> &'a [u8] {
    let shoff = u64le(elf, 0x28) as usize;
    let shentsize = u16le(elf, 0x3a) as usize;
    let shnum = u16le(elf, 0x3c) as usize;
    let shstrndx = u16le(elf, 0x3e) as usize;
    let sh = |i: usize| shoff + i * shentsize;
    let strtab_off = u64le(elf, sh(shstrndx) + 0x18) as usize;
    for i in 0..shnum {
        let name_off = u32le(elf, sh(i)) as usize;
        let name_bytes = &elf[strtab_off + name_off..];
        let end = name_bytes.iter().position(|b| *b == 0).expect("NUL");
        if &name_bytes[..end] == want.as_bytes() {
            let off = u64le(elf, sh(i) + 0x18) as usize;
            let size = u64le(elf, sh(i) + 0x20) as usize;
            return &elf[off..off + size];
        }
    }
    panic!("no {want} section");
}

/// struct name -> (size, [(member, byte offset)])
fn btf_structs(btf: &[u8]) -> BTreeMap<String, (u32, Vec<(String, u32)>)> {
    assert_eq!(u16le(btf, 0), 0xeb9f, "BTF magic");
    let hdr_len = u32le(btf, 4) as usize;
    let type_off = hdr_len + u32le(btf, 8) as usize;
    let type_len = u32le(btf, 12) as usize;
    let str_off = hdr_len + u32le(btf, 16) as usize;
    let name = |off: u32| {
        let s = &btf[str_off + off as usize..];
        String::from_utf8_lossy(&s[..s.iter().position(|b| *b == 0).expect("NUL")]).into_owned()
    };
    let mut out = BTreeMap::new();
    let mut p = type_off;
    while p < type_off + type_len {
        let name_off = u32le(btf, p);
        let info = u32le(btf, p + 4);
        let size = u32le(btf, p + 8);
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        p += 12;
        let extra = match kind {
            1 | 14 | 17 => 4,
            3 => 12,
            4 | 5 | 15 | 19 => 12 * vlen,
            6 | 13 => 8 * vlen,
            _ => 0,
        };
        if kind == 4 && name_off != 0 {
            let members = (0..vlen)
                .map(|i| {
                    let m = p + 12 * i;
                    (name(u32le(btf, m)), (u32le(btf, m + 8) & 0x00ff_ffff) / 8)
                })
                .collect();
            out.insert(name(name_off), (size, members));
        }
        p += extra;
    }
    out
}

macro_rules! check_layout {
    ($structs:expr, $c:literal, $rust:ty, [$($field:ident),*]) => {{
        let (size, members) = $structs.get($c).unwrap_or_else(|| panic!("{} not in BTF", $c));
        assert_eq!(*size as usize, size_of::<$rust>(), "size of {}", $c);
        $(
            let off = members.iter().find(|(n, _)| n == stringify!($field))
                .unwrap_or_else(|| panic!("{}.{} not in BTF", $c, stringify!($field))).1;
            assert_eq!(off as usize, offset_of!($rust, $field), "{}.{}", $c, stringify!($field));
        )*
        assert_eq!(members.len(), [$(stringify!($field)),*].len(), "member count of {}", $c);
    }};
}

#[test]
fn layout_matches_btf() {
    for obj in [crate::SOCK_OBJ, crate::TC_OBJ, crate::XDP_OBJ] {
        let structs = btf_structs(elf_section(obj, ".BTF"));
        check_layout!(structs, "lb_svc_key", SvcKey, [addr, port, proto, scope]);
        check_layout!(
            structs,
            "lb_svc_val",
            SvcVal,
            [group, count, flags, affinity_timeout]
        );
        check_layout!(structs, "lb_slot_key", SlotKey, [group, slot]);
        check_layout!(structs, "lb_backend", Backend, [addr, port, family, pad]);
        check_layout!(structs, "lb_aff_key", AffKey, [cookie, addr, group, pad]);
        check_layout!(structs, "lb_aff_val", AffVal, [backend, pad, last_ns]);
        check_layout!(
            structs,
            "lb_rev_key",
            RevKey,
            [cookie, addr, port, pad, pad2]
        );
        check_layout!(structs, "lb_rev_val", RevVal, [addr, port, pad]);
        check_layout!(
            structs,
            "ct_key",
            CtKey,
            [saddr, daddr, sport, dport, proto, dir, pad]
        );
        check_layout!(
            structs,
            "ct_val",
            CtVal,
            [nat_addr, nat_port, flags, pad, group, last_ns]
        );
        check_layout!(
            structs,
            "lb_src_key",
            SrcKey,
            [prefixlen, group, family, pad, addr]
        );
        check_layout!(
            structs,
            "lb_cidr_key",
            CidrKey,
            [prefixlen, family, pad, addr]
        );
        check_layout!(structs, "lb_nodeip_key", NodeIpKey, [addr, family, pad]);
    }
}

mod helpers;
mod programmer;
mod readback;
mod render;
