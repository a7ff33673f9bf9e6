// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Socket-level load balancing: a local process's connect()/sendmsg() to a service frontend
 * is rewritten to a backend once per connection (or datagram); recvmsg()/getpeername()
 * show the frontend again so the application never sees the backend address.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "include/sluice_abi.h"
#include "include/sluice_maps.h"
#include "include/sluice_lb.h"

#define SYS_REJECT 0
#define SYS_PROCEED 1

static __always_inline void sock_rev_put(struct bpf_sock_addr *ctx, const struct lb_backend *be,
					 const __u32 fe[4], __u16 fe_port)
{
	struct lb_rev_key key = {};
	struct lb_rev_val val = {};

	key.cookie = bpf_get_socket_cookie(ctx);
	key.addr[0] = be->addr[0];
	key.addr[1] = be->addr[1];
	key.addr[2] = be->addr[2];
	key.addr[3] = be->addr[3];
	key.port = be->port;
	val.addr[0] = fe[0];
	val.addr[1] = fe[1];
	val.addr[2] = fe[2];
	val.addr[3] = fe[3];
	val.port = fe_port;
	bpf_map_update_elem(&sl_rev_v1, &key, &val, BPF_ANY);
}

static __always_inline void sock_rev_get(struct bpf_sock_addr *ctx, __u32 addr[4], __u16 *port)
{
	struct lb_rev_key key = {};
	struct lb_rev_val *val;

	key.cookie = bpf_get_socket_cookie(ctx);
	key.addr[0] = addr[0];
	key.addr[1] = addr[1];
	key.addr[2] = addr[2];
	key.addr[3] = addr[3];
	key.port = *port;
	val = bpf_map_lookup_elem(&sl_rev_v1, &key);
	if (!val)
		return;
	addr[0] = val->addr[0];
	addr[1] = val->addr[1];
	addr[2] = val->addr[2];
	addr[3] = val->addr[3];
	*port = val->port;
}

/* Translates addr/port in place; returns SYS_REJECT for a frontend that refuses or drops. */
static __always_inline int sock_xlate(struct bpf_sock_addr *ctx, __u32 addr[4], __u16 *port,
				      __u8 family, int remember)
{
	struct lb_svc_val *svc;
	struct lb_backend *be;
	struct lb_aff_key akey = {};
	__u32 fe[4] = {addr[0], addr[1], addr[2], addr[3]};
	__u16 fe_port = *port;
	__u64 now;
	__u8 proto = ctx->protocol;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_SCTP)
		return SYS_PROCEED;
	svc = lb_lookup_svc(addr, family, *port, proto, SL_SCOPE_SOCK);
	if (!svc)
		return SYS_PROCEED;
	if (svc->flags & SL_SVC_REJECT) {
		/* No endpoint at all: ECONNREFUSED, what a client of kube-proxy's REJECT sees. */
		bpf_set_retval(-ECONNREFUSED);
		return SYS_REJECT;
	}
	if ((svc->flags & SL_SVC_DROP) || svc->count == 0) {
		/* Endpoints exist but none may serve this node (eTP/iTP=Local elsewhere, source
		 * ranges): fail at once with EPERM. Leaving the address untranslated would send
		 * the packet off the node, where another node could serve it. */
		return SYS_REJECT;
	}

	now = bpf_ktime_get_ns();
	akey.cookie = bpf_get_netns_cookie(ctx);
	akey.group = svc->group;
	be = lb_affinity_get(svc, &akey, now);
	if (!be) {
		be = lb_pick(svc, bpf_get_prandom_u32());
		if (!be)
			return SYS_PROCEED;
		lb_affinity_put(svc, &akey, be, now);
	}
	if (be->family != family)
		return SYS_PROCEED;
	addr[0] = be->addr[0];
	addr[1] = be->addr[1];
	addr[2] = be->addr[2];
	addr[3] = be->addr[3];
	*port = be->port;
	if (remember)
		sock_rev_put(ctx, be, fe, fe_port);
	return SYS_PROCEED;
}

static __always_inline int sock4_fwd(struct bpf_sock_addr *ctx)
{
	__u32 addr[4] = {ctx->user_ip4, 0, 0, 0};
	__u16 port = (__u16)ctx->user_port;
	int ret = sock_xlate(ctx, addr, &port, SL_FAMILY_V4, 1);

	ctx->user_ip4 = addr[0];
	ctx->user_port = port;
	return ret;
}

/* Dual-stack sockets reach IPv4 services through v4-mapped addresses (::ffff:a.b.c.d). */
static __always_inline int is_v4_mapped(const __u32 a[4])
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0xffff);
}

static __always_inline void to_lookup_form(__u32 addr[4], int mapped)
{
	if (mapped) {
		addr[0] = addr[3];
		addr[1] = addr[2] = addr[3] = 0;
	}
}

static __always_inline void to_ctx_form(struct bpf_sock_addr *ctx, __u32 addr[4], int mapped)
{
	if (mapped) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0xffff);
		ctx->user_ip6[3] = addr[0];
	} else {
		ctx->user_ip6[0] = addr[0];
		ctx->user_ip6[1] = addr[1];
		ctx->user_ip6[2] = addr[2];
		ctx->user_ip6[3] = addr[3];
	}
}

static __always_inline int sock6_fwd(struct bpf_sock_addr *ctx)
{
	__u32 addr[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	__u16 port = (__u16)ctx->user_port;
	int mapped = is_v4_mapped(addr);
	int ret;

	to_lookup_form(addr, mapped);
	ret = sock_xlate(ctx, addr, &port, mapped ? SL_FAMILY_V4 : SL_FAMILY_V6, 1);
	to_ctx_form(ctx, addr, mapped);
	ctx->user_port = port;
	return ret;
}

static __always_inline int sock4_rev(struct bpf_sock_addr *ctx)
{
	__u32 addr[4] = {ctx->user_ip4, 0, 0, 0};
	__u16 port = (__u16)ctx->user_port;

	sock_rev_get(ctx, addr, &port);
	ctx->user_ip4 = addr[0];
	ctx->user_port = port;
	return SYS_PROCEED;
}

static __always_inline int sock6_rev(struct bpf_sock_addr *ctx)
{
	__u32 addr[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	__u16 port = (__u16)ctx->user_port;
	int mapped = is_v4_mapped(addr);

	to_lookup_form(addr, mapped);
	sock_rev_get(ctx, addr, &port);
	to_ctx_form(ctx, addr, mapped);
	ctx->user_port = port;
	return SYS_PROCEED;
}

SEC("cgroup/connect4")
int sl_connect4(struct bpf_sock_addr *ctx) { return sock4_fwd(ctx); }

SEC("cgroup/sendmsg4")
int sl_sendmsg4(struct bpf_sock_addr *ctx) { return sock4_fwd(ctx); }

SEC("cgroup/recvmsg4")
int sl_recvmsg4(struct bpf_sock_addr *ctx) { return sock4_rev(ctx); }

SEC("cgroup/getpeername4")
int sl_getpeername4(struct bpf_sock_addr *ctx) { return sock4_rev(ctx); }

SEC("cgroup/connect6")
int sl_connect6(struct bpf_sock_addr *ctx) { return sock6_fwd(ctx); }

SEC("cgroup/sendmsg6")
int sl_sendmsg6(struct bpf_sock_addr *ctx) { return sock6_fwd(ctx); }

SEC("cgroup/recvmsg6")
int sl_recvmsg6(struct bpf_sock_addr *ctx) { return sock6_rev(ctx); }

SEC("cgroup/getpeername6")
int sl_getpeername6(struct bpf_sock_addr *ctx) { return sock6_rev(ctx); }

char _license[] SEC("license") = "Dual BSD/GPL";
