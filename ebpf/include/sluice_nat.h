/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* DNAT of the original direction and reverse NAT of replies (IPv4, tc). */
#ifndef SLUICE_NAT_H
#define SLUICE_NAT_H

#include "sluice_csum.h"

static __always_inline int nat4_dst(struct __sk_buff *skb, const struct pkt4 *p, __u32 addr,
				    __u16 port)
{
	if (addr != p->daddr &&
	    csum_set_addr4(skb, p, p->l3_off + offsetof(struct iphdr, daddr), p->daddr, addr))
		return -1;
	if (port != p->dport && csum_set_port(skb, p, p->l4_off + 2, p->dport, port))
		return -1;
	return 0;
}

static __always_inline int nat4_src(struct __sk_buff *skb, const struct pkt4 *p, __u32 addr,
				    __u16 port)
{
	if (addr != p->saddr &&
	    csum_set_addr4(skb, p, p->l3_off + offsetof(struct iphdr, saddr), p->saddr, addr))
		return -1;
	if (port != p->sport && csum_set_port(skb, p, p->l4_off, p->sport, port))
		return -1;
	return 0;
}

#endif
