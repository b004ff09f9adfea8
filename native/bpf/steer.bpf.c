/*
 * steer.bpf.c - fwd's XDP steering program: redirect to the AF_XDP socket of
 * the receiving queue exactly the frames the packet core would not PASS,
 * and leave everything else to the kernel (SSH, BGP, health checks, ARP, ND).
 *
 * It mirrors docs/packet-core.md §2: Ethernet with at most one 802.1Q tag,
 * IPv4 (options) / IPv6 (at most 8 hop-by-hop, routing, destination options
 * and fragment headers). A frame whose destination is inside no bind prefix
 * is passed before anything else is looked at. Past that VIP test, every
 * frame the core would DROP (malformed, truncated) is redirected so the core
 * counts it; frames too short to show a destination are passed (the kernel
 * drops them as well). Then:
 *   TCP/UDP           bind with prefix, proto and destination port range
 *   TCP/UDP fragment  bind with prefix and proto (ports not read)
 *   ICMP echo request redirected when the echo switch is on
 *   ICMPv4 type 3 /   the quoted packet reversed (its source as destination,
 *   ICMPv6 type 2     its source port as destination port) matches a bind
 *   anything else     passed
 *
 * Rules come from steer.h's double-banked maps (filled by native/steer.c).
 */
#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "steer.h"

#define ETH_P_IP_ 0x0800
#define ETH_P_IPV6_ 0x86DD
#define ETH_P_8021Q_ 0x8100
#define PROTO_ICMP 1
#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_ICMP6 58
#define MAX_IP_LEN 0x3fff   /* an XDP frame (no multi-buffer) is shorter: longer = truncated */

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, STEER_XSKS_MAX);
	__type(key, __u32);
	__type(value, __u32);
} xsks_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct steer_bank);
} steer_banks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);   /* the bank in use: 0 or 1 */
} steer_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STEER_NSTATS);
	__type(key, __u32);
	__type(value, __u64);
} steer_stats SEC(".maps");

enum { V_PASS, V_REDIRECT };
enum { M_VIP, M_PROTO, M_PORTS };   /* what a bind must match besides the prefix */

struct match {
	const struct steer_bank *bank;
	__u32 addr[4];
	__u16 dport;
	__u8 family;
	__u8 proto;
	__u8 mode;
	__u8 found;
};

/* The frame's bytes [off, off + n) or NULL; callers also check off + n <= lim. */
#define PKT(off, n)                                                              \
	({                                                                       \
		__u8 *p_ = (__u8 *)data + ((off) & 0xffff);                      \
		(void *)(p_ + (n)) > data_end ? (__u8 *)0 : p_;                  \
	})

static long match_one(__u32 i, void *arg)
{
	struct match *m = arg;
	const struct steer_bind *b;

	if (i >= STEER_MAX_BINDS)
		return 1;
	b = &m->bank->binds[i];
	if (b->family != m->family)
		return 0;
	if (m->mode != M_VIP && b->proto != m->proto)
		return 0;
	if (m->mode == M_PORTS && (m->dport < b->port_lo || m->dport > b->port_hi))
		return 0;
	if ((m->addr[0] & b->mask[0]) != b->addr[0] || (m->addr[1] & b->mask[1]) != b->addr[1] ||
	    (m->addr[2] & b->mask[2]) != b->addr[2] || (m->addr[3] & b->mask[3]) != b->addr[3])
		return 0;
	m->found = 1;
	return 1;
}

/* V_REDIRECT when a bind matches (mode M_*), else V_PASS. */
static __always_inline int bind_match(const struct steer_bank *bank, __u8 family, const __u8 *addr,
				      __u8 proto, __u16 dport, __u8 mode)
{
	struct match m = {.bank = bank, .dport = dport, .family = family, .proto = proto,
			  .mode = mode};
	__u32 n = bank->nbinds;

	__builtin_memcpy(m.addr, addr, 4);
	if (family == 6)
		__builtin_memcpy(&m.addr[1], addr + 4, 12);
	bpf_loop(n < STEER_MAX_BINDS ? n : STEER_MAX_BINDS, match_one, &m, 0);
	return m.found ? V_REDIRECT : V_PASS;
}

/*
 * Walk IPv6 extension headers from *off (next header *nh) up to lim, like
 * the core: 0 with *nh and *off at the upper layer, -1 when there are more than
 * STEER_MAX_EXT or one runs past lim.
 */
static __always_inline int ext_walk(void *data, void *data_end, __u8 *nh, __u32 *off, __u32 lim,
				    int *frag)
{
	__u32 o = *off;
	__u8 h = *nh;

#pragma unroll
	for (int n = 0; n <= STEER_MAX_EXT; n++) {
		__u32 hl = 8;
		__u8 *p;

		if (h != 0 && h != 43 && h != 60 && h != 44) {
			*nh = h;
			*off = o;
			return 0;
		}
		if (n == STEER_MAX_EXT || o + 8 > lim || !(p = PKT(o, 8)))
			return -1;
		if (h == 44)
			*frag = 1;
		else
			hl = ((__u32)p[1] + 1) * 8;
		if (o + hl > lim)
			return -1;
		h = p[0];
		o += hl;
	}
	return -1;
}

/*
 * ICMPv4 type 3 / ICMPv6 type 2 to a VIP prefix: the quote at q (up to lim)
 * must be a full IP header of the outer's family with 4 bytes of TCP/UDP;
 * the reversed flow must match a bind. Malformed quotes: the core drops them.
 */
static __always_inline int quote_match(void *data, void *data_end, const struct steer_bank *bank,
				       __u8 family, __u32 q, __u32 lim)
{
	__u32 l4;
	__u8 *qp, *pp, proto;

	if (family == 4) {
		if (q + 20 > lim || !(qp = PKT(q, 20)))
			return V_REDIRECT;
		if ((qp[0] >> 4) != 4 || (qp[0] & 15) < 5)
			return V_REDIRECT;
		l4 = q + (qp[0] & 15) * 4;
		proto = qp[9];
	} else {
		int frag = 0;

		if (q + 40 > lim || !(qp = PKT(q, 40)))
			return V_REDIRECT;
		if ((qp[0] >> 4) != 6)
			return V_REDIRECT;
		proto = qp[6];
		l4 = q + 40;
		if (ext_walk(data, data_end, &proto, &l4, lim, &frag))
			return V_REDIRECT;
	}
	if ((proto != PROTO_TCP && proto != PROTO_UDP) || l4 + 4 > lim || !(pp = PKT(l4, 4)))
		return V_REDIRECT;
	/* Re-derive the quote's pointer: the walk's pointer checks do not carry over. */
	if (!(qp = PKT(q, family == 4 ? 20 : 40)))
		return V_REDIRECT;
	return bind_match(bank, family, qp + (family == 4 ? 12 : 8), proto,
			  bpf_ntohs(*(__u16 *)pp), M_PORTS);
}

/* Upper layer at l4 (up to lim) of a packet to a VIP prefix. */
static __always_inline int l4_match(void *data, void *data_end, const struct steer_bank *bank,
				    __u8 family, const __u8 *dst, __u8 proto, __u32 l4, __u32 lim,
				    int frag)
{
	__u8 *p;

	if (proto == PROTO_TCP || proto == PROTO_UDP) {
		__u16 dport;

		if (frag)
			return bind_match(bank, family, dst, proto, 0, M_PROTO);
		if (l4 + 8 > lim || !(p = PKT(l4, 8)))   /* TCP needs more, see below */
			return V_REDIRECT;
		dport = bpf_ntohs(*(__u16 *)(p + 2));
		if (proto == PROTO_TCP) {
			if (l4 + 20 > lim || !(p = PKT(l4, 20)) || (p[12] >> 4) < 5)
				return V_REDIRECT;
		} else if (bpf_ntohs(*(__u16 *)(p + 4)) < 8) {
			return V_REDIRECT;
		}
		return bind_match(bank, family, dst, proto, dport, M_PORTS);
	}
	if (proto != (family == 4 ? PROTO_ICMP : PROTO_ICMP6) || frag)
		return V_PASS;
	if (l4 + 1 > lim || !(p = PKT(l4, 1)))
		return V_REDIRECT;
	if (p[0] == (family == 4 ? 8 : 128))
		return bank->forward_icmp_echo ? V_REDIRECT : V_PASS;
	if (p[0] != (family == 4 ? 3 : 2))
		return V_PASS;
	return quote_match(data, data_end, bank, family, l4 + 8, lim);
}

static __always_inline int classify(void *data, void *data_end, const struct steer_bank *bank)
{
	__u32 l2 = 14, ip_len, lim, l4;
	__u8 dst[16], *ip, proto;
	__u16 type;
	int frag = 0;

	if (!(ip = PKT(0, 14)))
		return V_PASS;
	type = bpf_ntohs(*(__u16 *)(ip + 12));
	if (type == ETH_P_8021Q_) {
		if (!(ip = PKT(0, 18)))
			return V_PASS;
		type = bpf_ntohs(*(__u16 *)(ip + 16));
		l2 = 18;
	}
	if (type == ETH_P_IP_) {
		if (!(ip = PKT(l2, 20)))
			return V_PASS;
		__builtin_memcpy(dst, ip + 16, 4);
		if (bind_match(bank, 4, dst, 0, 0, M_VIP) == V_PASS)
			return V_PASS;
		if (!(ip = PKT(l2, 20)))
			return V_PASS;
		if ((ip[0] >> 4) != 4 || (ip[0] & 15) < 5)
			return V_REDIRECT;
		ip_len = bpf_ntohs(*(__u16 *)(ip + 2));
		l4 = l2 + (ip[0] & 15) * 4;
		if (ip_len < l4 - l2 || ip_len > MAX_IP_LEN)
			return V_REDIRECT;
		lim = l2 + ip_len;
		if (!PKT(0, lim))
			return V_REDIRECT;
		frag = (bpf_ntohs(*(__u16 *)(ip + 6)) & 0x3fff) != 0;
		proto = ip[9];
		return l4_match(data, data_end, bank, 4, dst, proto, l4, lim, frag);
	}
	if (type == ETH_P_IPV6_) {
		if (!(ip = PKT(l2, 40)))
			return V_PASS;
		__builtin_memcpy(dst, ip + 24, 16);
		if (bind_match(bank, 6, dst, 0, 0, M_VIP) == V_PASS)
			return V_PASS;
		if (!(ip = PKT(l2, 40)))
			return V_PASS;
		ip_len = 40 + bpf_ntohs(*(__u16 *)(ip + 4));
		if ((ip[0] >> 4) != 6 || ip_len == 40 || ip_len > MAX_IP_LEN)
			return V_REDIRECT;
		lim = l2 + ip_len;
		if (!PKT(0, lim))
			return V_REDIRECT;
		proto = ip[6];
		l4 = l2 + 40;
		if (ext_walk(data, data_end, &proto, &l4, lim, &frag))
			return V_REDIRECT;
		return l4_match(data, data_end, bank, 6, dst, proto, l4, lim, frag);
	}
	return V_PASS;
}

static __always_inline void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&steer_stats, &which);

	if (c)
		*c += 1;
}

SEC("xdp")
int fwd_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	const struct steer_bank *bank;
	__u32 zero = 0, *active;
	long rc;

	active = bpf_map_lookup_elem(&steer_cfg, &zero);
	bank = active ? bpf_map_lookup_elem(&steer_banks, active) : 0;
	if (!bank || !bank->nbinds || classify(data, data_end, bank) == V_PASS) {
		count(STEER_PASSED);
		return XDP_PASS;
	}
	rc = bpf_redirect_map(&xsks_map, ctx->rx_queue_index, XDP_PASS);
	count(rc == XDP_REDIRECT ? STEER_REDIRECTED : STEER_REDIRECT_FAILED);
	return (int)rc;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
