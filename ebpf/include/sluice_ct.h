/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection tracking of external flows in an LRU map: established flows keep their
 * backend when the endpoint set changes; the reply entry drives the reverse NAT. */
#ifndef SLUICE_CT_H
#define SLUICE_CT_H

#include "sluice_maps.h"
#include "sluice_parse.h"

static __always_inline struct ct_val *ct_lookup(const struct pkt4 *p, __u8 dir)
{
	struct ct_key key = {};

	key.saddr = p->saddr;
	key.daddr = p->daddr;
	key.sport = p->sport;
	key.dport = p->dport;
	key.proto = p->proto;
	key.dir = dir;
	return bpf_map_lookup_elem(&sl_ct_v1, &key);
}

/* Records client -> frontend (DNAT to backend) and backend -> client (SNAT to frontend). */
static __always_inline void ct_create(const struct pkt4 *p, const struct lb_backend *be,
				      __u32 group, __u8 flags, __u64 now)
{
	struct ct_key key = {};
	struct ct_val val = {};

	key.saddr = p->saddr;
	key.daddr = p->daddr;
	key.sport = p->sport;
	key.dport = p->dport;
	key.proto = p->proto;
	key.dir = CT_DIR_ORIG;
	val.nat_addr = be->addr[0];
	val.nat_port = be->port;
	val.flags = flags;
	val.group = group;
	val.last_ns = now;
	bpf_map_update_elem(&sl_ct_v1, &key, &val, BPF_ANY);

	key.saddr = be->addr[0];
	key.sport = be->port;
	key.daddr = p->saddr;
	key.dport = p->sport;
	key.dir = CT_DIR_REPLY;
	val.nat_addr = p->daddr;
	val.nat_port = p->dport;
	bpf_map_update_elem(&sl_ct_v1, &key, &val, BPF_ANY);
}

#endif
