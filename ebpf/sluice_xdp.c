// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * XDP accelerator for the external path (NodePort / externalIP / LB IP from outside): the
 * same decision as sl_tc_ingress (shared maps, shared conntrack), the DNAT done in place
 * before an skb exists, then XDP_PASS so the kernel routes the packet. Flows that must be
 * masqueraded are left untranslated: XDP cannot set skb->mark, and packet metadata
 * (bpf_xdp_adjust_meta) is refused on some kernels, so sl_tc_ingress translates them from the
 * conntrack entry created here. Replies are reverse-NATed by sl_tc_egress.
 *
 * The checksum update is incremental (RFC 1624) and so needs full checksums on received
 * packets: true for real NICs; veth pairs need tx checksum offload off on the peer.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "include/sluice_abi.h"
#include "include/sluice_maps.h"
#include "include/sluice_parse.h"
#include "include/sluice_ext.h"

static __always_inline __u16 csum_fold64(__u64 csum)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		if (csum >> 16)
			csum = (csum & 0xffff) + (csum >> 16);
	return ~csum;
}

/* *sum += (new - old) over `words` 32-bit words (both buffers 16 bytes). */
static __always_inline void csum_update(__u16 *sum, __u32 *old, __u32 *new, __u32 size)
{
	__u32 seed = (~(__u32)*sum) & 0xffff;
	__s64 d = bpf_csum_diff(old, size, new, size, seed);

	if (d >= 0)
		*sum = csum_fold64(d);
}

static __always_inline int xdp_nat_dst(void *data, void *data_end, const struct pkt *p,
				       const struct ext_verdict *v)
{
	__u16 *csum;
	__u16 *dport;
	__u32 old_a[4] = {p->daddr[0], p->daddr[1], p->daddr[2], p->daddr[3]};
	__u32 new_a[4] = {v->addr[0], v->addr[1], v->addr[2], v->addr[3]};
	__u32 old_p = 0, new_p = 0;
	int udp_nocsum;
	__u32 alen = p->family == SL_FAMILY_V4 ? 4 : 16;

	if (p->l4_off > 14 + 60)
		return -1;
	csum = data + p->l4_off + l4_csum_off(p->proto);
	dport = data + p->l4_off + 2;
	if ((void *)(csum + 1) > data_end || (void *)(dport + 1) > data_end)
		return -1;
	udp_nocsum = p->proto == IPPROTO_UDP && *csum == 0;

	__builtin_memcpy(&old_p, dport, 2);
	__builtin_memcpy(&new_p, &v->port, 2);
	if (!udp_nocsum) {
		if (alen == 4)
			csum_update(csum, old_a, new_a, 4);
		else
			csum_update(csum, old_a, new_a, 16);
		csum_update(csum, &old_p, &new_p, 4);
		if (p->proto == IPPROTO_UDP && *csum == 0)
			*csum = 0xffff;
	}
	*dport = v->port;

	if (p->family == SL_FAMILY_V4) {
		struct iphdr *ip = data + p->l3_off;

		if ((void *)(ip + 1) > data_end)
			return -1;
		csum_update(&ip->check, old_a, new_a, 4);
		ip->daddr = v->addr[0];
	} else {
		struct ipv6hdr *ip6 = data + p->l3_off;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		__builtin_memcpy(&ip6->daddr, new_a, 16);
	}
	return 0;
}

SEC("xdp")
int sl_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct pkt p = {};
	struct ext_verdict v = {};

	if (parse(data, data_end, &p))
		return XDP_PASS;
	ext_decide(&p, &v);
	if (v.action == EXT_DROP)
		return XDP_DROP;
	/* Masqueraded flows need skb->mark: tc translates them from the conntrack entry.
	 * Refusals are answered by tc too (it can resize the packet and redirect it). */
	if (v.action != EXT_NAT || v.masq)
		return XDP_PASS;
	if (xdp_nat_dst(data, data_end, &p, &v))
		return XDP_DROP;
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
