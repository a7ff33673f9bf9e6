/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Backend selection: frontend lookup, random or Maglev slot, session affinity. */
#ifndef SLUICE_LB_H
#define SLUICE_LB_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "sluice_abi.h"
#include "sluice_maps.h"

static __always_inline int lb_is_nodeport_addr(const __u32 addr[4], __u8 family)
{
	struct lb_nodeip_key key = {};

	__builtin_memcpy(key.addr, addr, 16);
	key.family = family;
	return bpf_map_lookup_elem(&sl_nodeip_v1, &key) != 0;
}

/* The frontend entry for (addr, port, proto) in `scope`: the entry of that address, else,
 * for one of this node's NodePort addresses, the family's address-less NodePort entry. */
static __always_inline struct lb_svc_val *lb_lookup_svc(const __u32 addr[4], __u8 family,
							__u16 port, __u8 proto, __u8 scope)
{
	struct lb_svc_key key = {};
	struct lb_svc_val *svc;

	__builtin_memcpy(key.addr, addr, 16);
	key.port = port;
	key.proto = proto;
	key.scope = scope | (family == SL_FAMILY_V6 ? SL_SCOPE_V6 : 0);
	svc = bpf_map_lookup_elem(&sl_svc_v1, &key);
	if (svc || !lb_is_nodeport_addr(addr, family))
		return svc;
	__builtin_memset(key.addr, 0, sizeof(key.addr));
	key.scope = scope | (family == SL_FAMILY_V4 ? SL_SCOPE_NODEPORT4 : SL_SCOPE_NODEPORT6);
	return bpf_map_lookup_elem(&sl_svc_v1, &key);
}

/* Returns the affinity entry of (client, group) if it is still fresh. */
static __always_inline struct lb_backend *lb_affinity_get(const struct lb_svc_val *svc,
							  struct lb_aff_key *akey, __u64 now)
{
	struct lb_aff_val *aval;

	if (!(svc->flags & SL_SVC_AFFINITY))
		return 0;
	aval = bpf_map_lookup_elem(&sl_aff_v1, akey);
	if (!aval)
		return 0;
	if (now - aval->last_ns > (__u64)svc->affinity_timeout * 1000000000ULL)
		return 0;
	aval->last_ns = now;
	return &aval->backend;
}

static __always_inline void lb_affinity_put(const struct lb_svc_val *svc,
					    struct lb_aff_key *akey,
					    const struct lb_backend *be, __u64 now)
{
	struct lb_aff_val aval = {};

	if (!(svc->flags & SL_SVC_AFFINITY))
		return;
	aval.backend = *be;
	aval.last_ns = now;
	bpf_map_update_elem(&sl_aff_v1, akey, &aval, BPF_ANY);
}

/* Picks a backend for a new flow; `hash` is used by Maglev groups, else a random slot. */
static __always_inline struct lb_backend *lb_pick(const struct lb_svc_val *svc, __u32 hash)
{
	struct lb_slot_key skey = {};

	skey.group = svc->group;
	if (svc->flags & SL_SVC_MAGLEV) {
		skey.slot = hash % SL_MAGLEV_M;
		return bpf_map_lookup_elem(&sl_maglev_v1, &skey);
	}
	if (svc->count == 0)
		return 0;
	skey.slot = bpf_get_prandom_u32() % svc->count;
	return bpf_map_lookup_elem(&sl_slot_v1, &skey);
}

/* loadBalancerSourceRanges: 1 when the client may use this frontend. */
static __always_inline int lb_src_allowed(const struct lb_svc_val *svc, __u8 family,
					  const __u32 saddr[4])
{
	struct lb_src_key key = {};

	if (!(svc->flags & SL_SVC_SRC_RANGES))
		return 1;
	key.prefixlen = 64 + (family == SL_FAMILY_V4 ? 32 : 128);
	key.group = svc->group;
	key.family = family;
	key.addr[0] = saddr[0];
	key.addr[1] = saddr[1];
	key.addr[2] = saddr[2];
	key.addr[3] = saddr[3];
	return bpf_map_lookup_elem(&sl_src_v1, &key) != 0;
}

#endif
