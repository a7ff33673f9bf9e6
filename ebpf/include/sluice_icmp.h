/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Refusals answered from tc: the packet is turned into an ICMP port unreachable (IPv4) or
 * ICMPv6 destination unreachable / port unreachable (IPv6) quoting the original header, and
 * sent back out of the interface it came in on (MACs swapped), so a client of a service
 * without endpoints fails at once, as with kube-proxy's reject, whoever owns the address. */
#ifndef SLUICE_ICMP_H
#define SLUICE_ICMP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "sluice_parse.h"

/* linux/icmp.h drags in libc headers that do not build for the BPF target. */
#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PORT_UNREACH 4

/* ICMP and ICMPv6 share this layout for destination unreachable. */
struct icmp_unreach {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__u32 unused;
};

#define ICMP_TTL 64
/* What the reply quotes of the refused packet: its IP header and the first 8 bytes after it
 * (the ports), enough for the client's stack to find the socket (RFC 792, RFC 4443). */
#define QUOTE4 (sizeof(struct iphdr) + 8)
#define QUOTE6 (sizeof(struct ipv6hdr) + 8)

struct icmp4_reply {
	struct ethhdr eth;
	struct iphdr ip;
	struct icmp_unreach icmp;
	__u8 quote[QUOTE4];
} __attribute__((packed));

struct icmp6_reply {
	struct ethhdr eth;
	struct ipv6hdr ip6;
	struct icmp_unreach icmp6;
	__u8 quote[QUOTE6];
} __attribute__((packed));

/* IPv6 pseudo-header for the ICMPv6 checksum. */
struct icmp6_pseudo {
	__u32 saddr[4];
	__u32 daddr[4];
	__u32 len;
	__u32 next; /* 3 zero bytes, then the next header */
};

/* A member of a packed reply, for bpf_csum_diff (which takes any alignment). */
#define MEMBER(r, m) ((__be32 *)((void *)(r) + __builtin_offsetof(typeof(*(r)), m)))

static __always_inline __u16 csum_fold(__s64 sum)
{
	__u32 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/* Reads the Ethernet header (MACs swapped for the way back) and the quoted bytes. */
static __always_inline int icmp_load(struct __sk_buff *skb, struct ethhdr *eth, void *quote,
				     __u32 quote_len)
{
	__u8 mac[ETH_ALEN];

	if (bpf_skb_load_bytes(skb, 0, eth, sizeof(*eth)))
		return -1;
	if (bpf_skb_load_bytes(skb, sizeof(*eth), quote, quote_len))
		return -1;
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	return 0;
}

/* Replaces the packet by `reply` and sends it back out of the interface it arrived on. */
static __always_inline int icmp_send_back(struct __sk_buff *skb, void *reply, __u32 len)
{
	if (bpf_skb_change_tail(skb, len, 0))
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, 0, reply, len, BPF_F_RECOMPUTE_CSUM))
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

static __always_inline int icmp4_reject(struct __sk_buff *skb, const struct pkt *p)
{
	struct icmp4_reply r = {};
	__s64 sum;

	/* Headers with IP options are not quoted: dropped (no client sends those here). */
	if (p->l4_off != sizeof(struct ethhdr) + sizeof(struct iphdr))
		return TC_ACT_SHOT;
	if (icmp_load(skb, &r.eth, r.quote, sizeof(r.quote)))
		return TC_ACT_SHOT;
	r.ip.version = 4;
	r.ip.ihl = 5;
	r.ip.tot_len = bpf_htons(sizeof(r) - sizeof(r.eth));
	r.ip.ttl = ICMP_TTL;
	r.ip.protocol = IPPROTO_ICMP;
	r.ip.saddr = p->daddr[0];
	r.ip.daddr = p->saddr[0];
	sum = bpf_csum_diff(0, 0, MEMBER(&r, ip), sizeof(r.ip), 0);
	if (sum < 0)
		return TC_ACT_SHOT;
	r.ip.check = csum_fold(sum);
	r.icmp.type = ICMP_DEST_UNREACH;
	r.icmp.code = ICMP_PORT_UNREACH;
	sum = bpf_csum_diff(0, 0, MEMBER(&r, icmp), sizeof(r.icmp) + sizeof(r.quote), 0);
	if (sum < 0)
		return TC_ACT_SHOT;
	r.icmp.checksum = csum_fold(sum);
	return icmp_send_back(skb, &r, sizeof(r));
}

static __always_inline int icmp6_reject(struct __sk_buff *skb, const struct pkt *p)
{
	struct icmp6_reply r = {};
	struct icmp6_pseudo ph = {};
	__u32 body = sizeof(r.icmp6) + sizeof(r.quote);
	__s64 sum;

	if (icmp_load(skb, &r.eth, r.quote, sizeof(r.quote)))
		return TC_ACT_SHOT;
	r.ip6.version = 6;
	r.ip6.payload_len = bpf_htons(body);
	r.ip6.nexthdr = IPPROTO_ICMPV6;
	r.ip6.hop_limit = ICMP_TTL;
	__builtin_memcpy(&r.ip6.saddr, p->daddr, 16);
	__builtin_memcpy(&r.ip6.daddr, p->saddr, 16);
	r.icmp6.type = ICMPV6_DEST_UNREACH;
	r.icmp6.code = ICMPV6_PORT_UNREACH;
	__builtin_memcpy(ph.saddr, p->daddr, 16);
	__builtin_memcpy(ph.daddr, p->saddr, 16);
	ph.len = bpf_htonl(body);
	ph.next = bpf_htonl(IPPROTO_ICMPV6);
	sum = bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
	if (sum < 0)
		return TC_ACT_SHOT;
	sum = bpf_csum_diff(0, 0, MEMBER(&r, icmp6), body, (__wsum)sum);
	if (sum < 0)
		return TC_ACT_SHOT;
	r.icmp6.checksum = csum_fold(sum);
	return icmp_send_back(skb, &r, sizeof(r));
}

/* Answers the refused packet `p`; returns the tc verdict. */
static __always_inline int icmp_reject(struct __sk_buff *skb, const struct pkt *p)
{
	if (p->family == SL_FAMILY_V4)
		return icmp4_reject(skb, p);
	return icmp6_reject(skb, p);
}

#endif
