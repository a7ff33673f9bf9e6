/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Flow hash for Maglev: deterministic (no per-boot seed) so every node and every restart
 * maps a flow to the same slot; the tables themselves are computed in userspace. */
#ifndef SLUICE_MAGLEV_H
#define SLUICE_MAGLEV_H

#include <linux/types.h>

static __always_inline __u32 sl_mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __always_inline __u32 sl_flow_hash(const __u32 saddr[4], const __u32 daddr[4],
					  __u16 sport, __u16 dport, __u8 proto)
{
	__u32 h = 0x9e3779b9;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		h = sl_mix32(h ^ saddr[i]);
		h = sl_mix32(h ^ daddr[i]);
	}
	h = sl_mix32(h ^ (((__u32)sport << 16) | dport));
	h = sl_mix32(h ^ proto);
	return h;
}

#endif
