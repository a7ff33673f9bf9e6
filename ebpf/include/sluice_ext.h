/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The decision for a packet arriving from outside, shared by tc and XDP: conntrack first,
 * then frontend lookup (the `pods` route for sources inside the pod CIDRs where it differs
 * from the `outside` one), source ranges, refusals, affinity, Maglev. */
#ifndef SLUICE_EXT_H
#define SLUICE_EXT_H

#include "sluice_abi.h"
#include "sluice_maps.h"
#include "sluice_parse.h"
#include "sluice_ct.h"
#include "sluice_lb.h"
#include "sluice_maglev.h"

#define EXT_PASS 0   /* not ours: untouched */
#define EXT_DROP 1
#define EXT_NAT 2    /* rewrite the destination to addr:port */
#define EXT_REJECT 3 /* answer with ICMP port unreachable (tc; XDP leaves it to tc) */

struct ext_verdict {
	__u32 addr[4];
	__u16 port;
	__u8 action;
	__u8 masq;
};

static __always_inline int in_cluster_cidr(__u8 family, const __u32 addr[4])
{
	struct lb_cidr_key key = {};

	key.prefixlen = 32 + (family == SL_FAMILY_V4 ? 32 : 128);
	key.family = family;
	__builtin_memcpy(key.addr, addr, 16);
	return bpf_map_lookup_elem(&sl_cidr_v1, &key) != 0;
}

/* The frontend entry for this packet: the `pods` route's entry when the frontend has one and
 * the source is inside the pod CIDRs, else the `outside` route's. */
static __always_inline struct lb_svc_val *ext_lookup(const struct pkt *p)
{
	struct lb_svc_val *svc, *pods;

	svc = lb_lookup_svc(p->daddr, p->family, p->dport, p->proto, SL_SCOPE_EXT);
	if (!svc || !(svc->flags & SL_SVC_PODS) || !in_cluster_cidr(p->family, p->saddr))
		return svc;
	pods = lb_lookup_svc(p->daddr, p->family, p->dport, p->proto, SL_SCOPE_EXT_PODS);
	return pods ? pods : svc;
}

static __always_inline void ext_decide(const struct pkt *p, struct ext_verdict *v)
{
	struct ct_key ckey = {};
	struct ct_val *ct;
	struct lb_svc_val *svc;
	struct lb_backend *be;
	struct lb_aff_key akey = {};
	__u64 now = bpf_ktime_get_ns();

	v->action = EXT_PASS;
	v->masq = 0;
	ct = ct_lookup(p, CT_DIR_ORIG, &ckey);
	if (ct && ct_expire(&ckey, ct, now))
		ct = 0;
	if (ct) {
		ct_track_close(p, &ckey, ct, now);
		ct_touch(ct, now);
		__builtin_memcpy(v->addr, ct->nat_addr, 16);
		v->port = ct->nat_port;
		v->masq = (ct->flags & SL_SVC_MASQ) != 0;
		v->action = EXT_NAT;
		return;
	}
	svc = ext_lookup(p);
	if (!svc)
		return;
	/* Source ranges come first: a client outside them is dropped even when the service
	 * would refuse (as kube-proxy's firewall chain). */
	if (!lb_src_allowed(svc, p->family, p->saddr)) {
		v->action = EXT_DROP;
		return;
	}
	if (svc->flags & SL_SVC_REJECT) {
		v->action = EXT_REJECT;
		return;
	}
	if ((svc->flags & SL_SVC_DROP) || svc->count == 0) {
		v->action = EXT_DROP;
		return;
	}
	__builtin_memcpy(akey.addr, p->saddr, 16);
	akey.group = svc->group;
	be = lb_affinity_get(svc, &akey, now);
	if (!be) {
		be = lb_pick(svc, sl_flow_hash(p->saddr, p->daddr, p->sport, p->dport, p->proto));
		if (!be) {
			v->action = EXT_DROP;
			return;
		}
		lb_affinity_put(svc, &akey, be, now);
	}
	if (be->family != p->family) {
		v->action = EXT_DROP;
		return;
	}
	v->masq = (svc->flags & SL_SVC_MASQ) != 0;
	ct_create(p, be, svc->group, v->masq ? SL_SVC_MASQ : 0, now);
	__builtin_memcpy(v->addr, be->addr, 16);
	v->port = be->port;
	v->action = EXT_NAT;
}

#endif
