/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection tracking of external flows in an LRU map: established flows keep their
 * backend when the endpoint set changes; the reply entry drives the reverse NAT. */
#ifndef SLUICE_CT_H
#define SLUICE_CT_H

#include "sluice_maps.h"
#include "sluice_parse.h"

static __always_inline void ct_fill(struct ct_key *key, const __u32 s[4], const __u32 d[4],
				    __u16 sport, __u16 dport, __u8 proto, __u8 dir)
{
	__builtin_memcpy(key->saddr, s, 16);
	__builtin_memcpy(key->daddr, d, 16);
	key->sport = sport;
	key->dport = dport;
	key->proto = proto;
	key->dir = dir;
}

static __always_inline struct ct_val *ct_lookup(const struct pkt *p, __u8 dir)
{
	struct ct_key key = {};

	ct_fill(&key, p->saddr, p->daddr, p->sport, p->dport, p->proto, dir);
	return bpf_map_lookup_elem(&sl_ct_v1, &key);
}

/* Records client -> frontend (DNAT to backend) and backend -> client (SNAT to frontend). */
static __always_inline void ct_create(const struct pkt *p, const struct lb_backend *be,
				      __u32 group, __u8 flags, __u64 now)
{
	struct ct_key key = {};
	struct ct_val val = {};

	ct_fill(&key, p->saddr, p->daddr, p->sport, p->dport, p->proto, CT_DIR_ORIG);
	__builtin_memcpy(val.nat_addr, be->addr, 16);
	val.nat_port = be->port;
	val.flags = flags;
	val.group = group;
	val.last_ns = now;
	bpf_map_update_elem(&sl_ct_v1, &key, &val, BPF_ANY);

	ct_fill(&key, be->addr, p->saddr, be->port, p->sport, p->proto, CT_DIR_REPLY);
	__builtin_memcpy(val.nat_addr, p->daddr, 16);
	val.nat_port = p->dport;
	bpf_map_update_elem(&sl_ct_v1, &key, &val, BPF_ANY);
}

#endif
