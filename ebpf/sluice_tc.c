// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tc (tcx) programs on the node's external interfaces, IPv4 and IPv6:
 *  - sl_tc_ingress: NodePort / externalIP / LoadBalancer IP / ClusterIP from outside -> DNAT
 *    to a backend (Maglev), conntrack, source ranges, masquerade mark, and refusals answered
 *    with ICMP (port) unreachable sent back out of the same interface.
 *  - sl_tc_egress: reverse NAT of replies (backend -> client becomes frontend -> client).
 *  Both translate ICMP errors about translated flows (sluice_icmp_nat.h).
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
#include "include/sluice_ext.h"
#include "include/sluice_icmp.h"
#include "include/sluice_icmp_nat.h"

SEC("classifier")
int sl_tc_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct pkt p = {};
	struct ext_verdict v = {};

	if (parse(data, data_end, &p))
		return icmp_err_ingress(skb);
	ext_decide(&p, &v);
	if (v.action == EXT_DROP)
		return TC_ACT_SHOT;
	if (v.action == EXT_REJECT)
		return icmp_reject(skb, &p);
	if (v.action != EXT_NAT)
		return TC_ACT_OK;
	if (v.masq)
		skb->mark |= SL_MASQ_MARK;
	if (nat_dst(skb, &p, v.addr, v.port))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

SEC("classifier")
int sl_tc_egress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct pkt p = {};
	struct ct_key key = {};
	struct ct_val *ct;
	__u64 now;
	__u32 nat[4];

	if (parse(data, data_end, &p))
		return icmp_err_egress(skb);
	ct = ct_lookup(&p, CT_DIR_REPLY, &key);
	if (!ct)
		return TC_ACT_OK;
	now = bpf_ktime_get_ns();
	ct_track_close(&p, &key, ct, now);
	ct_touch(ct, now);
	__builtin_memcpy(nat, ct->nat_addr, 16);
	if (nat_src(skb, &p, nat, ct->nat_port))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

char _license[] SEC("license") = "Dual BSD/GPL";
