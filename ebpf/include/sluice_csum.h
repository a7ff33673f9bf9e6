/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Checksum-correct rewrites for tc. The kernel helpers handle CHECKSUM_PARTIAL skbs
 * (veth tx offload), which a hand-rolled RFC 1624 update does not. */
#ifndef SLUICE_CSUM_H
#define SLUICE_CSUM_H

#include <linux/bpf.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include "sluice_parse.h"

static __always_inline __u64 l4_flags(const struct pkt *p, __u64 flags)
{
	/* UDP checksum 0 means "none": keep it so. */
	return p->proto == IPPROTO_UDP ? flags | BPF_F_MARK_MANGLED_0 : flags;
}

/* Rewrites the source (dst = 0) or destination (dst = 1) address and fixes the checksums. */
static __always_inline int csum_set_addr(struct __sk_buff *skb, const struct pkt *p, int dst,
					 const __u32 old[4], const __u32 new[4])
{
	__u32 l4c = p->l4_off + l4_csum_off(p->proto);

	if (p->family == SL_FAMILY_V4) {
		__u32 off = p->l3_off + (dst ? offsetof(struct iphdr, daddr)
					     : offsetof(struct iphdr, saddr));

		if (bpf_l4_csum_replace(skb, l4c, old[0], new[0],
					l4_flags(p, BPF_F_PSEUDO_HDR | sizeof(__u32))))
			return -1;
		if (bpf_l3_csum_replace(skb, p->l3_off + offsetof(struct iphdr, check), old[0],
					new[0], sizeof(__u32)))
			return -1;
		return bpf_skb_store_bytes(skb, off, &new[0], sizeof(__u32), 0);
	} else {
		__u32 off = p->l3_off + (dst ? offsetof(struct ipv6hdr, daddr)
					     : offsetof(struct ipv6hdr, saddr));
		__u32 o[4] = {old[0], old[1], old[2], old[3]};
		__u32 n[4] = {new[0], new[1], new[2], new[3]};
		__s64 diff = bpf_csum_diff(o, sizeof(o), n, sizeof(n), 0);

		if (diff < 0)
			return -1;
		if (bpf_l4_csum_replace(skb, l4c, 0, diff, l4_flags(p, BPF_F_PSEUDO_HDR)))
			return -1;
		return bpf_skb_store_bytes(skb, off, n, sizeof(n), 0);
	}
}

/* Rewrites the L4 port at `port_off` (source or destination) and fixes the L4 checksum. */
static __always_inline int csum_set_port(struct __sk_buff *skb, const struct pkt *p,
					 __u32 port_off, __u16 old, __u16 new)
{
	__u32 l4c = p->l4_off + l4_csum_off(p->proto);

	if (bpf_l4_csum_replace(skb, l4c, old, new, l4_flags(p, sizeof(new))))
		return -1;
	return bpf_skb_store_bytes(skb, port_off, &new, sizeof(new), 0);
}

#endif
