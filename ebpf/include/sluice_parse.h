/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Packet parsing for tc: Ethernet + IPv4 + TCP/UDP ports. */
#ifndef SLUICE_PARSE_H
#define SLUICE_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct pkt4 {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u32 l3_off;
	__u32 l4_off;
};

/* Offset of the checksum field inside the L4 header. */
static __always_inline __u32 l4_csum_off(__u8 proto)
{
	return proto == IPPROTO_TCP ? offsetof(struct tcphdr, check)
				    : offsetof(struct udphdr, check);
}

/* 0 on success (TCP/UDP over IPv4, not a later fragment), -1 otherwise. */
static __always_inline int parse4(void *data, void *data_end, struct pkt4 *p)
{
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u16 *ports;

	if ((void *)(eth + 1) > data_end)
		return -1;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return -1;
	if (ip->ihl < 5)
		return -1;
	if (ip->frag_off & bpf_htons(0x1fff)) /* no ports in non-first fragments */
		return -1;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return -1;
	p->l3_off = sizeof(*eth);
	p->l4_off = sizeof(*eth) + ip->ihl * 4;
	ports = data + p->l4_off;
	if ((void *)(ports + 2) > data_end)
		return -1;
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->proto = ip->protocol;
	p->sport = ports[0];
	p->dport = ports[1];
	return 0;
}

#endif
