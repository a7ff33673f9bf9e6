/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* DNAT of the original direction and reverse NAT of replies (tc, IPv4 and IPv6). */
#ifndef SLUICE_NAT_H
#define SLUICE_NAT_H

#include "sluice_csum.h"

static __always_inline int nat_dst(struct __sk_buff *skb, const struct pkt *p,
				   const __u32 addr[4], __u16 port)
{
	if (!addr_eq(addr, p->daddr) && csum_set_addr(skb, p, 1, p->daddr, addr))
		return -1;
	if (port != p->dport && csum_set_port(skb, p, p->l4_off + 2, p->dport, port))
		return -1;
	return 0;
}

static __always_inline int nat_src(struct __sk_buff *skb, const struct pkt *p,
				   const __u32 addr[4], __u16 port)
{
	if (!addr_eq(addr, p->saddr) && csum_set_addr(skb, p, 0, p->saddr, addr))
		return -1;
	if (port != p->sport && csum_set_port(skb, p, p->l4_off, p->sport, port))
		return -1;
	return 0;
}

#endif
