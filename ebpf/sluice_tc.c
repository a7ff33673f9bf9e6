// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tc (tcx) programs on the node's external interfaces, IPv4 and IPv6:
 *  - sl_tc_ingress: NodePort / externalIP / LoadBalancer IP from outside -> DNAT to a
 *    backend (Maglev), conntrack, source ranges, masquerade mark for eTP=Cluster.
 *  - sl_tc_egress: reverse NAT of replies (backend -> client becomes frontend -> client).
 * Masquerading itself is done by netfilter (a rule matching SL_MASQ_MARK installed by the
 * agent), which also un-NATs the replies before they reach sl_tc_egress.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "include/sluice_abi.h"
#include "include/sluice_maps.h"
#include "include/sluice_parse.h"
#include "include/sluice_nat.h"
#include "include/sluice_ct.h"
#include "include/sluice_lb.h"
#include "include/sluice_maglev.h"

SEC("classifier")
int sl_tc_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct pkt p = {};
	struct ct_val *ct;
	struct lb_svc_val *svc;
	struct lb_backend *be;
	struct lb_aff_key akey = {};
	__u64 now;
	__u8 flags;

	if (parse(data, data_end, &p))
		return TC_ACT_OK;
	now = bpf_ktime_get_ns();

	ct = ct_lookup(&p, CT_DIR_ORIG);
	if (ct) {
		__u32 nat[4] = {ct->nat_addr[0], ct->nat_addr[1], ct->nat_addr[2], ct->nat_addr[3]};

		ct->last_ns = now;
		if (ct->flags & SL_SVC_MASQ)
			skb->mark |= SL_MASQ_MARK;
		if (nat_dst(skb, &p, nat, ct->nat_port))
			return TC_ACT_SHOT;
		return TC_ACT_OK;
	}

	svc = lb_lookup_svc(p.daddr, p.dport, p.proto, SL_SCOPE_EXT);
	if (!svc)
		return TC_ACT_OK;
	if (!lb_src_allowed(svc, p.family, p.saddr))
		return TC_ACT_SHOT;
	if (svc->count == 0)
		/* No endpoints anywhere: let the stack answer (RST / port unreachable for a
		 * node address). Endpoints only elsewhere (eTP=Local): drop, as kube-proxy. */
		return (svc->flags & SL_SVC_REJECT) ? TC_ACT_OK : TC_ACT_SHOT;

	__builtin_memcpy(akey.addr, p.saddr, 16);
	akey.group = svc->group;
	be = lb_affinity_get(svc, &akey, now);
	if (!be) {
		be = lb_pick(svc, sl_flow_hash(p.saddr, p.daddr, p.sport, p.dport, p.proto));
		if (!be)
			return TC_ACT_SHOT;
		lb_affinity_put(svc, &akey, be, now);
	}
	if (be->family != p.family)
		return TC_ACT_SHOT;
	flags = svc->flags & SL_SVC_MASQ;
	ct_create(&p, be, svc->group, flags, now);
	if (flags)
		skb->mark |= SL_MASQ_MARK;
	{
		__u32 nat[4] = {be->addr[0], be->addr[1], be->addr[2], be->addr[3]};

		if (nat_dst(skb, &p, nat, be->port))
			return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

SEC("classifier")
int sl_tc_egress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct pkt p = {};
	struct ct_val *ct;
	__u32 nat[4];

	if (parse(data, data_end, &p))
		return TC_ACT_OK;
	ct = ct_lookup(&p, CT_DIR_REPLY);
	if (!ct)
		return TC_ACT_OK;
	ct->last_ns = bpf_ktime_get_ns();
	__builtin_memcpy(nat, ct->nat_addr, 16);
	if (nat_src(skb, &p, nat, ct->nat_port))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

char _license[] SEC("license") = "Dual BSD/GPL";
