/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Map key/value layouts shared with userspace. Mirrored by `#[repr(C)]` structs in
 * crates/dp-ebpf/src/abi.rs; a test there compares sizes and offsets with this object's BTF.
 * Changing a layout means bumping the `_v1` suffix of the map that holds it.
 *
 * Byte order: addresses and ports are in network order everywhere (as on the wire and in
 * bpf_sock_addr), every other integer is host order.
 */
#ifndef SLUICE_ABI_H
#define SLUICE_ABI_H

#include <linux/types.h>

#define SL_FAMILY_V4 4
#define SL_FAMILY_V6 6

/* Which kind of traffic a frontend entry serves (lb_svc_key.scope, low bits). */
#define SL_SCOPE_SOCK 0     /* connect()/sendmsg() of local processes (socket-LB): `node` route */
#define SL_SCOPE_EXT 1      /* packets arriving on an external interface (tc/XDP): `outside` */
#define SL_SCOPE_EXT_PODS 2 /* the same, from a source inside the pod CIDRs: `pods` route;
			     * present only where it differs from the SL_SCOPE_EXT entry */
/* Or'ed into the scope of a NodePort entry: the key has no address (addr all 0) and stands
 * for every address in sl_nodeip_v1 of that family, so a node address change rewrites only
 * sl_nodeip_v1. */
#define SL_SCOPE_NODEPORT4 0x10
#define SL_SCOPE_NODEPORT6 0x20
/* Or'ed into the scope of an IPv6 address's entry: else an IPv4 address and the IPv6 address
 * that starts with the same 32 bits and ends in zeros (32.1.13.184 and 2001:db8::) would have
 * one key. */
#define SL_SCOPE_V6 0x40

/* lb_svc_val.flags */
#define SL_SVC_REJECT 0x1     /* route Reject: refuse at once (ECONNREFUSED / ICMP unreachable) */
#define SL_SVC_AFFINITY 0x2   /* sessionAffinity: ClientIP */
#define SL_SVC_SRC_RANGES 0x4 /* loadBalancerSourceRanges apply to this frontend */
#define SL_SVC_MASQ 0x8       /* the route masquerades (tc: netfilter, by mark) */
#define SL_SVC_MAGLEV 0x10    /* pick from the Maglev table rather than at random */
/* 0x20 was SL_SVC_MASQ_OFFCLUSTER (superseded by SL_SCOPE_EXT_PODS): never reuse it, pinned
 * maps written by an older agent may still carry it until the first resync. */
#define SL_SVC_DROP 0x40      /* route Drop: discard (socket-LB: EPERM) */
#define SL_SVC_PODS 0x80      /* an SL_SCOPE_EXT_PODS entry exists for this frontend */

/* skb->mark bit asking the netfilter rule installed by the agent to masquerade. */
#define SL_MASQ_MARK 0x4000

/* Size of each service's Maglev lookup table (prime). */
#define SL_MAGLEV_M 1021

/* A service frontend: address + port + protocol, per scope. */
struct lb_svc_key {
	__u32 addr[4]; /* IPv4 in addr[0], rest 0 */
	__u16 port;
	__u8 proto;
	__u8 scope;
};

struct lb_svc_val {
	__u32 group;            /* backend group id: key of sl_slot_v1 / sl_maglev_v1 */
	__u16 count;            /* number of backends in the group */
	__u16 flags;            /* SL_SVC_* */
	__u32 affinity_timeout; /* seconds */
};

/* One backend of a group: slot 0..count-1 (or a Maglev slot 0..SL_MAGLEV_M-1). */
struct lb_slot_key {
	__u32 group;
	__u32 slot;
};

struct lb_backend {
	__u32 addr[4];
	__u16 port;
	__u8 family;
	__u8 pad;
};

/* Session affinity: the client is a netns cookie (socket-LB) or an address (tc). */
struct lb_aff_key {
	__u64 cookie;
	__u32 addr[4];
	__u32 group;
	__u32 pad;
};

struct lb_aff_val {
	struct lb_backend backend;
	__u32 pad;
	__u64 last_ns;
};

/* Socket-LB reverse translation, for recvmsg()/getpeername(). */
struct lb_rev_key {
	__u64 cookie; /* socket cookie */
	__u32 addr[4]; /* backend */
	__u16 port;
	__u16 pad;
	__u32 pad2;
};

struct lb_rev_val {
	__u32 addr[4]; /* service frontend */
	__u16 port;
	__u16 pad;
};

/* loadBalancerSourceRanges: LPM key, prefixlen = 64 + CIDR length. */
struct lb_src_key {
	__u32 prefixlen;
	__u32 group;
	__u8 family;
	__u8 pad[3];
	__u32 addr[4];
};

/* This node's NodePort addresses (sl_nodeip_v1, value 1): where the SL_SCOPE_NODEPORT*
 * entries apply. */
struct lb_nodeip_key {
	__u32 addr[4];
	__u8 family;
	__u8 pad[3];
};

/* Cluster (pod) CIDRs: LPM key, prefixlen = 32 + CIDR length. */
struct lb_cidr_key {
	__u32 prefixlen;
	__u8 family;
	__u8 pad[3];
	__u32 addr[4];
};

/* Connection tracking of external (tc) flows. Both directions have an entry: the original
 * direction (client -> frontend) and the reply (backend -> client). IPv4 in addr[0]. */
struct ct_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 dir; /* CT_DIR_* */
	__u16 pad;
};

#define CT_DIR_ORIG 0
#define CT_DIR_REPLY 1

/* ct_val.flags, next to SL_SVC_MASQ */
#define CT_F_FIN 0x1    /* a FIN went this entry's direction */
#define CT_F_CLOSED 0x2 /* RST seen, or FIN both ways: last_ns is the closing time */

struct ct_val {
	__u32 nat_addr[4]; /* ORIG: backend; REPLY: frontend */
	__u16 nat_port;
	__u8 flags;        /* SL_SVC_MASQ, CT_F_* */
	__u8 pad;
	__u32 group;
	__u64 last_ns;
};

#endif
