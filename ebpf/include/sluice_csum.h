/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Checksum-correct rewrites for tc. The kernel helpers handle CHECKSUM_PARTIAL skbs
 * (veth tx offload), which a hand-rolled RFC 1624 update does not. */
#ifndef SLUICE_CSUM_H
#define SLUICE_CSUM_H

#include <linux/bpf.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include "sluice_parse.h"

/* Rewrites the IPv4 address at `addr_off` (saddr or daddr) and fixes both checksums. */
static __always_inline int csum_set_addr4(struct __sk_buff *skb, const struct pkt4 *p,
					  __u32 addr_off, __u32 old, __u32 new)
{
	__u32 l4c = p->l4_off + l4_csum_off(p->proto);
	__u64 flags = BPF_F_PSEUDO_HDR | sizeof(new);

	if (p->proto == IPPROTO_UDP)
		flags |= BPF_F_MARK_MANGLED_0; /* UDP checksum 0 means "none": keep it so */
	if (bpf_l4_csum_replace(skb, l4c, old, new, flags))
		return -1;
	if (bpf_l3_csum_replace(skb, p->l3_off + offsetof(struct iphdr, check), old, new,
				sizeof(new)))
		return -1;
	return bpf_skb_store_bytes(skb, addr_off, &new, sizeof(new), 0);
}

/* Rewrites the L4 port at `port_off` (source or destination) and fixes the L4 checksum. */
static __always_inline int csum_set_port(struct __sk_buff *skb, const struct pkt4 *p,
					 __u32 port_off, __u16 old, __u16 new)
{
	__u32 l4c = p->l4_off + l4_csum_off(p->proto);
	__u64 flags = sizeof(new);

	if (p->proto == IPPROTO_UDP)
		flags |= BPF_F_MARK_MANGLED_0;
	if (bpf_l4_csum_replace(skb, l4c, old, new, flags))
		return -1;
	return bpf_skb_store_bytes(skb, port_off, &new, sizeof(new), 0);
}

#endif
