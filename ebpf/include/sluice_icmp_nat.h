/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ICMP errors about translated flows, translated too, so path-MTU discovery and port
 * unreachables work through the NAT:
 *  - leaving (tc egress): an error about a client -> backend packet (from the backend, or from
 *    this node forwarding it, e.g. "fragmentation needed") quotes the backend; the client sent
 *    to the frontend, so the quote (and an outer source that is the backend) become the
 *    frontend again;
 *  - arriving (tc ingress): an error about a reply we sent as the frontend (quoted frontend ->
 *    client) goes to the backend with the backend quoted, for flows that keep the client's
 *    address (masqueraded flows' backends know only the node; not translated).
 * IPv4 errors: destination unreachable, time exceeded; IPv6: destination unreachable, packet
 * too big, time exceeded. Quoted IPv4 headers with options and quoted IPv6 extension headers
 * are left alone. The quoted transport checksum is not updated (no receiver checks it). */
#ifndef SLUICE_ICMP_NAT_H
#define SLUICE_ICMP_NAT_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "sluice_abi.h"
#include "sluice_maps.h"
#include "sluice_parse.h"
#include "sluice_ct.h"

#define ICMP_TIME_EXCEEDED 11
#define ICMPV6_PKT_TOOBIG 2
#define ICMPV6_TIME_EXCEED 3

/* An ICMP error and the packet it quotes. */
struct icmp_err {
	__u32 outer_saddr[4];
	__u32 outer_daddr[4];
	__u32 saddr[4]; /* quoted */
	__u32 daddr[4]; /* quoted */
	__u16 sport;    /* quoted */
	__u16 dport;    /* quoted */
	__u32 icmp_off;
	__u32 inner_l3;
	__u8 family;
	__u8 proto; /* quoted */
	__u16 pad;
};

static __always_inline int icmp_err_type(__u8 family, __u8 type)
{
	if (family == SL_FAMILY_V4)
		return type == 3 || type == ICMP_TIME_EXCEEDED;
	return type == 1 || type == ICMPV6_PKT_TOOBIG || type == ICMPV6_TIME_EXCEED;
}

/* Parses the quoted header at `off`: 0 when it is TCP/UDP of `family` we can translate. */
static __always_inline int parse_quote(void *data, void *data_end, __u32 off, struct icmp_err *e)
{
	__u16 *ports;

	if (e->family == SL_FAMILY_V4) {
		struct iphdr *ip = data + off;

		if ((void *)(ip + 1) > data_end || ip->ihl != 5)
			return -1;
		e->proto = ip->protocol;
		e->saddr[0] = ip->saddr;
		e->daddr[0] = ip->daddr;
		ports = (void *)(ip + 1);
	} else {
		struct ipv6hdr *ip6 = data + off;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		e->proto = ip6->nexthdr;
		__builtin_memcpy(e->saddr, &ip6->saddr, 16);
		__builtin_memcpy(e->daddr, &ip6->daddr, 16);
		ports = (void *)(ip6 + 1);
	}
	if (e->proto != IPPROTO_TCP && e->proto != IPPROTO_UDP)
		return -1;
	if ((void *)(ports + 2) > data_end)
		return -1;
	e->sport = ports[0];
	e->dport = ports[1];
	return 0;
}

/* 0 when the frame is an ICMP error about a TCP/UDP packet. */
static __always_inline int parse_icmp_err(void *data, void *data_end, struct icmp_err *e)
{
	struct ethhdr *eth = data;
	__u8 *icmp;

	if ((void *)(eth + 1) > data_end)
		return -1;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end || ip->ihl != 5 || ip->protocol != IPPROTO_ICMP)
			return -1;
		e->family = SL_FAMILY_V4;
		e->outer_saddr[0] = ip->saddr;
		e->outer_daddr[0] = ip->daddr;
		e->icmp_off = sizeof(*eth) + sizeof(*ip);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end || ip6->nexthdr != IPPROTO_ICMPV6)
			return -1;
		e->family = SL_FAMILY_V6;
		__builtin_memcpy(e->outer_saddr, &ip6->saddr, 16);
		__builtin_memcpy(e->outer_daddr, &ip6->daddr, 16);
		e->icmp_off = sizeof(*eth) + sizeof(*ip6);
	} else {
		return -1;
	}
	icmp = data + e->icmp_off;
	if ((void *)(icmp + 8) > data_end || !icmp_err_type(e->family, icmp[0]))
		return -1;
	e->inner_l3 = e->icmp_off + 8;
	return parse_quote(data, data_end, e->inner_l3, e);
}

/* Rewrites an IPv4 address of the error (`outer` header or the quoted one; `dst` or source)
 * and every checksum covering it. */
static __always_inline int icmp4_set_addr(struct __sk_buff *skb, const struct icmp_err *e,
					  int outer, int dst, __u32 old, __u32 new)
{
	__u32 ip = outer ? sizeof(struct ethhdr) : e->inner_l3;
	__u32 check = ip + offsetof(struct iphdr, check);
	__u32 icmp_check = e->icmp_off + 2;
	__u16 old_check = 0, new_check = 0;

	if (bpf_skb_load_bytes(skb, check, &old_check, 2))
		return -1;
	if (bpf_l3_csum_replace(skb, check, old, new, 4))
		return -1;
	if (!outer) {
		/* The quoted header is ICMP payload: its address and checksum both changed. */
		if (bpf_skb_load_bytes(skb, check, &new_check, 2))
			return -1;
		if (bpf_l4_csum_replace(skb, icmp_check, old, new, 4) ||
		    bpf_l4_csum_replace(skb, icmp_check, old_check, new_check, 2))
			return -1;
	}
	return bpf_skb_store_bytes(skb, ip + (dst ? offsetof(struct iphdr, daddr)
						  : offsetof(struct iphdr, saddr)),
				   &new, 4, 0);
}

/* The same for IPv6: the outer addresses are in the ICMPv6 pseudo-header. */
static __always_inline int icmp6_set_addr(struct __sk_buff *skb, const struct icmp_err *e,
					  int outer, int dst, const __u32 old[4],
					  const __u32 new[4])
{
	__u32 ip = outer ? sizeof(struct ethhdr) : e->inner_l3;
	__u32 o[4] = {old[0], old[1], old[2], old[3]};
	__u32 n[4] = {new[0], new[1], new[2], new[3]};
	__s64 diff = bpf_csum_diff(o, sizeof(o), n, sizeof(n), 0);

	if (diff < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, e->icmp_off + 2, 0, diff, outer ? BPF_F_PSEUDO_HDR : 0))
		return -1;
	return bpf_skb_store_bytes(skb, ip + (dst ? offsetof(struct ipv6hdr, daddr)
						  : offsetof(struct ipv6hdr, saddr)),
				   n, sizeof(n), 0);
}

static __always_inline int icmp_set_addr(struct __sk_buff *skb, const struct icmp_err *e,
					 int outer, int dst, const __u32 old[4],
					 const __u32 new[4])
{
	if (e->family == SL_FAMILY_V4)
		return icmp4_set_addr(skb, e, outer, dst, old[0], new[0]);
	return icmp6_set_addr(skb, e, outer, dst, old, new);
}

/* Rewrites a quoted port (its bytes are covered by the ICMP checksum only). */
static __always_inline int icmp_set_port(struct __sk_buff *skb, const struct icmp_err *e,
					 int dst, __u16 old, __u16 new)
{
	__u32 l4 = e->inner_l3 + (e->family == SL_FAMILY_V4 ? sizeof(struct iphdr)
							     : sizeof(struct ipv6hdr));

	if (old == new)
		return 0;
	if (bpf_l4_csum_replace(skb, e->icmp_off + 2, old, new, 2))
		return -1;
	return bpf_skb_store_bytes(skb, l4 + (dst ? 2 : 0), &new, 2, 0);
}

/* Leaving: an error about client -> backend becomes one about client -> frontend. */
static __always_inline int icmp_err_egress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct icmp_err e = {};
	struct ct_key key = {};
	struct ct_val *ct;
	__u32 frontend[4];
	__u16 port;

	if (parse_icmp_err(data, data_end, &e))
		return TC_ACT_OK;
	ct_fill(&key, e.daddr, e.saddr, e.dport, e.sport, e.proto, CT_DIR_REPLY);
	ct = bpf_map_lookup_elem(&sl_ct_v1, &key);
	if (!ct)
		return TC_ACT_OK;
	__builtin_memcpy(frontend, ct->nat_addr, 16);
	port = ct->nat_port;
	if (addr_eq(e.outer_saddr, e.daddr) && icmp_set_addr(skb, &e, 1, 0, e.outer_saddr, frontend))
		return TC_ACT_SHOT;
	if (!addr_eq(e.daddr, frontend) && icmp_set_addr(skb, &e, 0, 1, e.daddr, frontend))
		return TC_ACT_SHOT;
	if (icmp_set_port(skb, &e, 1, e.dport, port))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

/* Arriving: an error about frontend -> client goes to the backend, quoting it. */
static __always_inline int icmp_err_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct icmp_err e = {};
	struct ct_key key = {};
	struct ct_val *ct;
	__u32 backend[4];
	__u16 port;

	if (parse_icmp_err(data, data_end, &e))
		return TC_ACT_OK;
	ct_fill(&key, e.daddr, e.saddr, e.dport, e.sport, e.proto, CT_DIR_ORIG);
	ct = bpf_map_lookup_elem(&sl_ct_v1, &key);
	if (!ct || (ct->flags & SL_SVC_MASQ) || !addr_eq(e.outer_daddr, e.saddr))
		return TC_ACT_OK;
	__builtin_memcpy(backend, ct->nat_addr, 16);
	port = ct->nat_port;
	if (!addr_eq(e.saddr, backend) &&
	    (icmp_set_addr(skb, &e, 1, 1, e.outer_daddr, backend) ||
	     icmp_set_addr(skb, &e, 0, 0, e.saddr, backend)))
		return TC_ACT_SHOT;
	if (icmp_set_port(skb, &e, 0, e.sport, port))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

#endif
