//! Ethernet frames for ARP (RFC 826) and IPv6 neighbour discovery (RFC 4861): parsing the
//! requests we answer and building replies and unsolicited announcements. Pure code.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERNET_HEADER_LEN: usize = 14;
/// Frames shorter than this (without FCS) are padded, as Ethernet requires.
const MIN_FRAME_LEN: usize = 60;
const ARP_LEN: usize = 28;
const IPV6_HEADER_LEN: usize = 40;
const ICMPV6: u8 = 58;
const NEIGHBOR_SOLICITATION: u8 = 135;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
const OPTION_SOURCE_LINK_ADDRESS: u8 = 1;
const OPTION_TARGET_LINK_ADDRESS: u8 = 2;
/// NDP messages must arrive with hop limit 255 (proof they were not routed).
const NDP_HOP_LIMIT: u8 = 255;

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const BROADCAST: Mac = Mac([0xff; 6]);
    pub const ZERO: Mac = Mac([0; 6]);

    /// The multicast MAC an IPv6 multicast group maps to (33:33 + low 32 bits).
    pub fn ipv6_multicast(group: Ipv6Addr) -> Mac {
        let o = group.octets();
        Mac([0x33, 0x33, o[12], o[13], o[14], o[15]])
    }

    fn from_slice(bytes: &[u8]) -> Mac {
        let mut mac = [0; 6];
        mac.copy_from_slice(&bytes[..6]);
        Mac(mac)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `ff02::1:ffXX:XXXX`: the group a neighbour solicitation for `target` is sent to.
pub fn solicited_node_group(target: Ipv6Addr) -> Ipv6Addr {
    let o = target.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// Why a frame is not one we answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("frame of {len} bytes is too short for {what}")]
    TooShort { what: &'static str, len: usize },
    #[error("ethertype {0:#06x} is neither ARP nor IPv6")]
    OtherEthertype(u16),
    #[error("ARP for hardware type {htype} / protocol {ptype:#06x}, not Ethernet/IPv4")]
    NotEthernetIpv4Arp { htype: u16, ptype: u16 },
    #[error("ARP operation {0} is not a request")]
    NotArpRequest(u16),
    #[error("not an ICMPv6 packet without extension headers (next header {0})")]
    NotIcmpv6(u8),
    #[error("ICMPv6 type {0} is not a neighbour solicitation")]
    NotSolicitation(u8),
    #[error("neighbour solicitation with hop limit {0}, not 255")]
    BadHopLimit(u8),
    #[error("ICMPv6 checksum {found:#06x}, expected {expected:#06x}")]
    BadChecksum { found: u16, expected: u16 },
    #[error("malformed neighbour discovery option")]
    BadOption,
    #[error("neighbour solicitation for multicast target {0}")]
    MulticastTarget(Ipv6Addr),
}

/// An ARP request: who has `target_ip`? tell `sender_ip` at `sender_mac`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRequest {
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

/// A neighbour solicitation: who has `target`? `source` is `::` during duplicate address
/// detection; `source_mac` is the sender's link-layer address (option, else frame source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborSolicitation {
    pub source: Ipv6Addr,
    pub source_mac: Mac,
    pub target: Ipv6Addr,
}

/// A frame we may answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Arp(ArpRequest),
    Ndp(NeighborSolicitation),
}

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn ipv4_at(bytes: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3])
}

fn ipv6_at(bytes: &[u8], at: usize) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&bytes[at..at + 16]);
    Ipv6Addr::from(o)
}

/// Parses an Ethernet frame holding an ARP request or a neighbour solicitation.
pub fn parse_request(frame: &[u8]) -> Result<Request, ParseError> {
    if frame.len() < ETHERNET_HEADER_LEN {
        return Err(ParseError::TooShort {
            what: "Ethernet",
            len: frame.len(),
        });
    }
    let source_mac = Mac::from_slice(&frame[6..12]);
    let payload = &frame[ETHERNET_HEADER_LEN..];
    match be16(frame, 12) {
        ETHERTYPE_ARP => parse_arp(payload).map(Request::Arp),
        ETHERTYPE_IPV6 => parse_solicitation(payload, source_mac).map(Request::Ndp),
        other => Err(ParseError::OtherEthertype(other)),
    }
}

fn parse_arp(arp: &[u8]) -> Result<ArpRequest, ParseError> {
    if arp.len() < ARP_LEN {
        return Err(ParseError::TooShort {
            what: "ARP",
            len: arp.len(),
        });
    }
    let (htype, ptype) = (be16(arp, 0), be16(arp, 2));
    if htype != 1 || ptype != 0x0800 || arp[4] != 6 || arp[5] != 4 {
        return Err(ParseError::NotEthernetIpv4Arp { htype, ptype });
    }
    match be16(arp, 6) {
        1 => Ok(ArpRequest {
            sender_mac: Mac::from_slice(&arp[8..14]),
            sender_ip: ipv4_at(arp, 14),
            target_ip: ipv4_at(arp, 24),
        }),
        op => Err(ParseError::NotArpRequest(op)),
    }
}

fn parse_solicitation(ip: &[u8], frame_source: Mac) -> Result<NeighborSolicitation, ParseError> {
    if ip.len() < IPV6_HEADER_LEN + 24 {
        return Err(ParseError::TooShort {
            what: "neighbour solicitation",
            len: ip.len(),
        });
    }
    if ip[6] != ICMPV6 || ip[0] >> 4 != 6 {
        return Err(ParseError::NotIcmpv6(ip[6]));
    }
    let payload_len = usize::from(be16(ip, 4));
    let icmp = ip
        .get(IPV6_HEADER_LEN..IPV6_HEADER_LEN + payload_len)
        .ok_or(ParseError::TooShort {
            what: "IPv6 payload",
            len: ip.len(),
        })?;
    if icmp.len() < 24 {
        return Err(ParseError::TooShort {
            what: "neighbour solicitation",
            len: icmp.len(),
        });
    }
    if icmp[0] != NEIGHBOR_SOLICITATION || icmp[1] != 0 {
        return Err(ParseError::NotSolicitation(icmp[0]));
    }
    if ip[7] != NDP_HOP_LIMIT {
        return Err(ParseError::BadHopLimit(ip[7]));
    }
    let (source, destination) = (ipv6_at(ip, 8), ipv6_at(ip, 24));
    let expected = icmpv6_checksum(source, destination, icmp);
    if expected != 0 {
        return Err(ParseError::BadChecksum {
            found: be16(icmp, 2),
            expected: icmpv6_checksum_with_zero_field(source, destination, icmp),
        });
    }
    let target = ipv6_at(icmp, 8);
    if target.is_multicast() {
        return Err(ParseError::MulticastTarget(target));
    }
    let source_mac = source_link_address(&icmp[24..])?.unwrap_or(frame_source);
    Ok(NeighborSolicitation {
        source,
        source_mac,
        target,
    })
}

/// The source link-layer address option, if present. Options of length 0 are invalid.
fn source_link_address(mut options: &[u8]) -> Result<Option<Mac>, ParseError> {
    let mut found = None;
    while options.len() >= 2 {
        let len = usize::from(options[1]) * 8;
        if len == 0 || len > options.len() {
            return Err(ParseError::BadOption);
        }
        if options[0] == OPTION_SOURCE_LINK_ADDRESS && len >= 8 {
            found = Some(Mac::from_slice(&options[2..8]));
        }
        options = &options[len..];
    }
    Ok(found)
}

/// One's-complement sum of 16-bit words (odd tail padded with zero), folded.
fn ones_complement_sum(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// ICMPv6 checksum over the pseudo-header and `icmp` as it is (0 when `icmp` carries a
/// correct checksum).
pub fn icmpv6_checksum(source: Ipv6Addr, destination: Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut sum = ones_complement_sum(0, &source.octets());
    sum = ones_complement_sum(sum, &destination.octets());
    // icmp.len() fits: IPv6 payload lengths are 16-bit.
    sum = ones_complement_sum(sum, &(icmp.len() as u32).to_be_bytes());
    sum = ones_complement_sum(sum, &[0, 0, 0, ICMPV6]);
    sum = ones_complement_sum(sum, icmp);
    !(sum as u16)
}

fn icmpv6_checksum_with_zero_field(source: Ipv6Addr, destination: Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut copy = icmp.to_vec();
    copy[2..4].copy_from_slice(&[0, 0]);
    icmpv6_checksum(source, destination, &copy)
}

fn ethernet(destination: Mac, source: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(MIN_FRAME_LEN.max(ETHERNET_HEADER_LEN + payload.len()));
    frame.extend_from_slice(&destination.0);
    frame.extend_from_slice(&source.0);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame.resize(frame.len().max(MIN_FRAME_LEN), 0);
    frame
}

fn arp(
    op: u16,
    sender_mac: Mac,
    sender_ip: Ipv4Addr,
    target_mac: Mac,
    target_ip: Ipv4Addr,
) -> [u8; ARP_LEN] {
    let mut arp = [0u8; ARP_LEN];
    arp[0..2].copy_from_slice(&1u16.to_be_bytes());
    arp[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
    arp[4] = 6;
    arp[5] = 4;
    arp[6..8].copy_from_slice(&op.to_be_bytes());
    arp[8..14].copy_from_slice(&sender_mac.0);
    arp[14..18].copy_from_slice(&sender_ip.octets());
    arp[18..24].copy_from_slice(&target_mac.0);
    arp[24..28].copy_from_slice(&target_ip.octets());
    arp
}

/// The ARP reply, unicast to the asker: `request.target_ip` is at `our_mac`.
pub fn arp_reply(our_mac: Mac, request: &ArpRequest) -> Vec<u8> {
    let payload = arp(
        2,
        our_mac,
        request.target_ip,
        request.sender_mac,
        request.sender_ip,
    );
    ethernet(request.sender_mac, our_mac, ETHERTYPE_ARP, &payload)
}

/// A gratuitous ARP (request form, sender = target = `ip`, broadcast): every host on the
/// segment that has an entry for `ip` updates it to `our_mac`.
pub fn gratuitous_arp(our_mac: Mac, ip: Ipv4Addr) -> Vec<u8> {
    let payload = arp(1, our_mac, ip, Mac::ZERO, ip);
    ethernet(Mac::BROADCAST, our_mac, ETHERTYPE_ARP, &payload)
}

/// Flags of a neighbour advertisement.
const FLAG_SOLICITED: u8 = 0x40;
const FLAG_OVERRIDE: u8 = 0x20;

/// A neighbour advertisement for `target` at `our_mac`, sent from `target` to `destination`.
fn advertisement(
    our_mac: Mac,
    target: Ipv6Addr,
    destination: Ipv6Addr,
    dest_mac: Mac,
    flags: u8,
) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[NEIGHBOR_ADVERTISEMENT, 0, 0, 0, flags, 0, 0, 0]);
    icmp.extend_from_slice(&target.octets());
    icmp.extend_from_slice(&[OPTION_TARGET_LINK_ADDRESS, 1]);
    icmp.extend_from_slice(&our_mac.0);
    let checksum = icmpv6_checksum(target, destination, &icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());

    let mut ip = Vec::with_capacity(IPV6_HEADER_LEN + icmp.len());
    ip.extend_from_slice(&[0x60, 0, 0, 0]);
    // 32 bytes: always fits in 16 bits.
    ip.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[ICMPV6, NDP_HOP_LIMIT]);
    ip.extend_from_slice(&target.octets());
    ip.extend_from_slice(&destination.octets());
    ip.extend_from_slice(&icmp);
    ethernet(dest_mac, our_mac, ETHERTYPE_IPV6, &ip)
}

/// The neighbour advertisement answering `solicitation`: solicited and override, unicast
/// to the asker; to all nodes (not solicited) when the asker has no address yet (DAD).
pub fn neighbor_advertisement(our_mac: Mac, solicitation: &NeighborSolicitation) -> Vec<u8> {
    if solicitation.source.is_unspecified() {
        return unsolicited_advertisement(our_mac, solicitation.target);
    }
    advertisement(
        our_mac,
        solicitation.target,
        solicitation.source,
        solicitation.source_mac,
        FLAG_SOLICITED | FLAG_OVERRIDE,
    )
}

/// An unsolicited neighbour advertisement with the override flag to all nodes (`ff02::1`):
/// hosts with an entry for `target` update it to `our_mac`.
pub fn unsolicited_advertisement(our_mac: Mac, target: Ipv6Addr) -> Vec<u8> {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    advertisement(
        our_mac,
        target,
        all_nodes,
        Mac::ipv6_multicast(all_nodes),
        FLAG_OVERRIDE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Captured from Linux 6.18: 02:..:0a (10.9.0.1) asks for 10.9.0.77 (unpadded on veth).
    const KERNEL_ARP_REQUEST: &str =
        "ffffffffffff02000000000a0806000108000604000102000000000a0a0900010000000000000a09004d";
    /// Captured from Linux 6.18: fd00::1 solicits fd00::77, with a source link-layer option.
    const KERNEL_NS: &str = "3333ff00007702000000000a86dd6000000000203afffd000000000000000000000000000001ff0200000000000000000001ff00007787007ca400000000fd000000000000000000000000000077010102000000000a";
    /// Captured from Linux 6.18: duplicate address detection (source ::) with a nonce option.
    const KERNEL_DAD_NS: &str = "3333ff00000a02000000000a86dd6000000000203aff00000000000000000000000000000000ff0200000000000000000001ff00000a8700c1ea00000000fe80000000000000000000fffe00000a0e01942f91a5874a";

    const ASKER: Mac = Mac([2, 0, 0, 0, 0, 0x0a]);
    const OURS: Mac = Mac([2, 0, 0, 0, 0, 0x0b]);

    #[test]
    fn parses_kernel_arp_requests_and_answers_byte_for_byte() {
        let Request::Arp(request) = parse_request(&hex(KERNEL_ARP_REQUEST)).unwrap() else {
            panic!("not ARP");
        };
        assert_eq!(
            request,
            ArpRequest {
                sender_mac: ASKER,
                sender_ip: "10.9.0.1".parse().unwrap(),
                target_ip: "10.9.0.77".parse().unwrap(),
            }
        );
        let reply = arp_reply(OURS, &request);
        let mut want = hex(concat!(
            "02000000000a",
            "02000000000b",
            "0806", // to the asker, from us
            "0001",
            "0800",
            "06",
            "04",
            "0002", // Ethernet/IPv4, reply
            "02000000000b",
            "0a09004d", // 10.9.0.77 is at our MAC
            "02000000000a",
            "0a090001", // to the asker
        ));
        want.resize(60, 0);
        assert_eq!(reply, want);
    }

    #[test]
    fn gratuitous_arp_is_a_broadcast_request_for_our_own_address() {
        let frame = gratuitous_arp(OURS, "192.0.2.7".parse().unwrap());
        let mut want = hex(concat!(
            "ffffffffffff",
            "02000000000b",
            "0806",
            "0001",
            "0800",
            "06",
            "04",
            "0001",
            "02000000000b",
            "c0000207",
            "000000000000",
            "c0000207",
        ));
        want.resize(60, 0);
        assert_eq!(frame, want);
    }

    #[test]
    fn parses_kernel_neighbor_solicitations() {
        let ns = parse_request(&hex(KERNEL_NS)).unwrap();
        assert_eq!(
            ns,
            Request::Ndp(NeighborSolicitation {
                source: "fd00::1".parse().unwrap(),
                source_mac: ASKER,
                target: "fd00::77".parse().unwrap(),
            })
        );
        let Request::Ndp(dad) = parse_request(&hex(KERNEL_DAD_NS)).unwrap() else {
            panic!("not NDP");
        };
        assert!(dad.source.is_unspecified());
        assert_eq!(
            dad.source_mac, ASKER,
            "no link-layer option: the frame source"
        );
        assert_eq!(dad.target, "fe80::ff:fe00:a".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn advertisements_carry_a_correct_checksum_and_the_right_flags() {
        let Request::Ndp(ns) = parse_request(&hex(KERNEL_NS)).unwrap() else {
            panic!("not NDP");
        };
        let na = neighbor_advertisement(OURS, &ns);
        let mut want = hex(&concat!(
            "02000000000a",
            "02000000000b",
            "86dd",
            "60000000",
            "0020",
            "3a",
            "ff",                               // 32 bytes ICMPv6, hop limit 255
            "fd000000000000000000000000000077", // from the target
            "fd000000000000000000000000000001", // to the asker
            "88",
            "00",
            "XXXX",
            "60000000", // NA, solicited + override
            "fd000000000000000000000000000077",
            "0201",
            "02000000000b", // target link-layer address
        )
        .replace("XXXX", "0000"));
        // Checksum computed independently (python: RFC 1071 over the pseudo-header).
        want[56..58].copy_from_slice(&0x1ba7u16.to_be_bytes());
        assert_eq!(na.len(), 86);
        assert_eq!(na, want, "{:02x?}", na);
        let icmp = &na[54..];
        let (src, dst) = (ipv6_at(&na, 22), ipv6_at(&na, 38));
        assert_eq!(icmpv6_checksum(src, dst, icmp), 0, "verifies");
    }

    #[test]
    fn dad_and_unsolicited_advertisements_go_to_all_nodes_without_solicited_flag() {
        let target: Ipv6Addr = "2001:db8::5".parse().unwrap();
        let dad = NeighborSolicitation {
            source: Ipv6Addr::UNSPECIFIED,
            source_mac: ASKER,
            target,
        };
        for frame in [
            neighbor_advertisement(OURS, &dad),
            unsolicited_advertisement(OURS, target),
        ] {
            assert_eq!(frame[..6], hex("333300000001")[..]);
            assert_eq!(ipv6_at(&frame, 38), "ff02::1".parse::<Ipv6Addr>().unwrap());
            assert_eq!(frame[58], FLAG_OVERRIDE);
            assert_eq!(
                icmpv6_checksum(ipv6_at(&frame, 22), ipv6_at(&frame, 38), &frame[54..]),
                0
            );
        }
    }

    #[test]
    fn malformed_or_foreign_frames_are_refused_with_a_reason() {
        let ns = hex(KERNEL_NS);
        let mut bad_sum = ns.clone();
        bad_sum[57] ^= 1;
        let mut hop = ns.clone();
        hop[21] = 254;
        let mut zero_option = ns.clone();
        zero_option[79] = 0;
        let sum =
            icmpv6_checksum_with_zero_field(ipv6_at(&ns, 22), ipv6_at(&ns, 38), &zero_option[54..]);
        zero_option[56..58].copy_from_slice(&sum.to_be_bytes());
        let mut multicast_target = ns.clone();
        multicast_target[62] = 0xff;
        let mut reply = hex(KERNEL_ARP_REQUEST);
        reply[21] = 2;
        let cases: Vec<(Vec<u8>, ParseError)> = vec![
            (
                ns[..20].to_vec(),
                ParseError::TooShort {
                    what: "neighbour solicitation",
                    len: 6,
                },
            ),
            (
                bad_sum,
                ParseError::BadChecksum {
                    found: 0x7ca5,
                    expected: 0x7ca4,
                },
            ),
            (hop, ParseError::BadHopLimit(254)),
            (zero_option, ParseError::BadOption),
            (reply, ParseError::NotArpRequest(2)),
            (
                hex("ffffffffffff02000000000a0800"),
                ParseError::OtherEthertype(0x0800),
            ),
        ];
        for (frame, want) in cases {
            assert_eq!(parse_request(&frame), Err(want.clone()), "{want}");
        }
        // A multicast target must be refused even with a correct checksum.
        let (src, dst) = (
            ipv6_at(&multicast_target, 22),
            ipv6_at(&multicast_target, 38),
        );
        let sum = icmpv6_checksum_with_zero_field(src, dst, &multicast_target[54..]);
        multicast_target[56..58].copy_from_slice(&sum.to_be_bytes());
        assert!(matches!(
            parse_request(&multicast_target),
            Err(ParseError::MulticastTarget(_))
        ));
    }

    #[test]
    fn solicited_node_groups_and_their_macs() {
        let target: Ipv6Addr = "2001:db8::abcd:1234".parse().unwrap();
        let group = solicited_node_group(target);
        assert_eq!(group, "ff02::1:ffcd:1234".parse::<Ipv6Addr>().unwrap());
        assert_eq!(Mac::ipv6_multicast(group).to_string(), "33:33:ff:cd:12:34");
    }
}
