/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection tracking of external flows in an LRU map: established flows keep their
 * backend when the endpoint set changes; the reply entry drives the reverse NAT. Entries of
 * closed TCP connections (RST, or FIN both ways) and of idle UDP flows expire (the next
 * packet of that 5-tuple is a new flow); other TCP entries leave by LRU eviction only. */
#ifndef SLUICE_CT_H
#define SLUICE_CT_H

#include "sluice_maps.h"
#include "sluice_parse.h"

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_RST 0x04

/* Set by the loader (EbpfConfig::conntrack): how long a closed TCP connection's entries and an
 * idle UDP flow's entries stay valid. */
volatile const __u64 sl_ct_closed_ns = 10ULL * 1000000000ULL;
volatile const __u64 sl_ct_udp_idle_ns = 60ULL * 1000000000ULL;

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

/* The entry of `p` in direction `dir`; its key is left in `key`. */
static __always_inline struct ct_val *ct_lookup(const struct pkt *p, __u8 dir, struct ct_key *key)
{
	ct_fill(key, p->saddr, p->daddr, p->sport, p->dport, p->proto, dir);
	return bpf_map_lookup_elem(&sl_ct_v1, key);
}

/* The key of the other direction of the flow of (`key`, `val`). */
static __always_inline void ct_other_key(const struct ct_key *key, const struct ct_val *val,
					 struct ct_key *other)
{
	if (key->dir == CT_DIR_ORIG)
		ct_fill(other, val->nat_addr, key->saddr, val->nat_port, key->sport, key->proto,
			CT_DIR_REPLY);
	else
		ct_fill(other, key->daddr, val->nat_addr, key->dport, val->nat_port, key->proto,
			CT_DIR_ORIG);
}

/* Notes a FIN or RST of `p` on its entry; RST or FIN both ways closes both entries. */
static __always_inline void ct_track_close(const struct pkt *p, const struct ct_key *key,
					   struct ct_val *ct, __u64 now)
{
	struct ct_key okey = {};
	struct ct_val *other;

	if (p->proto != IPPROTO_TCP || (ct->flags & CT_F_CLOSED) ||
	    !(p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)))
		return;
	if (p->tcp_flags & TCP_FLAG_FIN)
		ct->flags |= CT_F_FIN;
	ct_other_key(key, ct, &okey);
	other = bpf_map_lookup_elem(&sl_ct_v1, &okey);
	if (!(p->tcp_flags & TCP_FLAG_RST) && !(other && (other->flags & CT_F_FIN)))
		return;
	ct->flags |= CT_F_CLOSED;
	ct->last_ns = now;
	if (other) {
		other->flags |= CT_F_CLOSED;
		other->last_ns = now;
	}
}

/* Marks a packet of the flow: a closed flow keeps its closing time. */
static __always_inline void ct_touch(struct ct_val *ct, __u64 now)
{
	if (!(ct->flags & CT_F_CLOSED))
		ct->last_ns = now;
}

/* Whether the ORIG entry (`key`, `ct`) no longer stands for a live flow; such an entry and
 * its reply entry are removed. */
static __always_inline int ct_expire(const struct ct_key *key, const struct ct_val *ct,
				     __u64 now)
{
	struct ct_key okey = {};
	struct ct_val *other;

	if (ct->flags & CT_F_CLOSED) {
		if (now - ct->last_ns <= sl_ct_closed_ns)
			return 0;
	} else if (key->proto != IPPROTO_UDP || now - ct->last_ns <= sl_ct_udp_idle_ns) {
		return 0;
	}
	ct_other_key(key, ct, &okey);
	other = bpf_map_lookup_elem(&sl_ct_v1, &okey);
	/* A UDP flow whose replies are still flowing is not idle. */
	if (other && !(ct->flags & CT_F_CLOSED) && now - other->last_ns <= sl_ct_udp_idle_ns)
		return 0;
	bpf_map_delete_elem(&sl_ct_v1, &okey);
	bpf_map_delete_elem(&sl_ct_v1, key);
	return 1;
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
