/*
 * redirect.bpf.c - fwd-redirect: GUE decapsulation and GLB's "second chance"
 * on an L7 node, as a tc ingress program (cls_bpf, direct-action).
 *
 * Why tc and not XDP: the decision needs the kernel's socket tables
 * (bpf_skc_lookup_tcp, bpf_tcp_check_syncookie), decapsulated packets go up
 * the local stack anyway (an skb is built for them in any case), and
 * forwarded ones leave through bpf_redirect_neigh, which resolves the next
 * hop's MAC itself. tc works on every device (veth, bridges ports, bonds)
 * with no driver support and no XDP program needed on a peer.
 * See docs/redirect.md.
 *
 * Frames that are not IPv4/IPv6 UDP to port 19523 addressed to this host
 * (pkt_type HOST) are left alone (TC_ACT_OK). GUE packets (layout:
 * docs/packet-core.md §4, ARCHITECTURE §5) are checked in this order, the
 * first failure deciding the drop counter:
 *   outer source in the allow trie      else drop_not_allowed
 *   outer IPv4 MF flag clear            else drop_fragment
 *   IP / UDP lengths inside the frame, 8 bytes of GUE   else drop_truncated
 *   GUE byte 0 bits 7..5 = 0 (version 0, C 0)           else drop_bad_version
 *   GUE flags = 0                       else drop_bad_flags
 *   hlen != 0                           else drop_bad_hlen
 *   private data type 0 (IPv4 hops) / 1 (IPv6 hops)     else drop_bad_hop_type
 *   hlen = 1 + hop_count (type 0) / 1 + 4 hop_count (1) else drop_bad_hlen
 *   next hop index <= hop count         else drop_bad_next_hop
 *   GUE proto 4 or 41                   else drop_bad_inner_proto
 *   hops and the inner IP header inside the UDP datagram else drop_truncated
 *   inner header of that version, IHL >= 5, total length >= IHL
 *                                       else drop_bad_inner
 *   inner length inside the datagram    else drop_truncated
 * Then the inner packet decides:
 *   not TCP (or a fragment)             decapsulate (decap_non_tcp)
 *   TCP SYN without ACK                 decapsulate (decap_syn)
 *   a local socket owns the flow        decapsulate (decap_socket): established,
 *                                       time-wait or request socket
 *   ACK to a listener, valid SYN cookie decapsulate (decap_syncookie)
 *   ICMP error quoting a TCP packet     the quoted flow reversed is looked up the
 *                                       same way (no SYN-cookie test)
 *   no hop left (next hop = count)      decapsulate (decap_last_hop)
 *   next hop = this node                decapsulate (decap_self)
 *   no outer source for the hop         drop_no_source
 *   next hop no unicast address         drop_no_route: 0/8, 127/8, 224/4 and above
 *                                       (multicast, class E, broadcast), ff00::/8,
 *                                       ::/80 (::, ::1, IPv4-compatible/-mapped)
 *   otherwise                           forward: outer source = this node, outer
 *                                       destination = hops[next], next += 1
 * A truncated inner TCP header is dropped (drop_truncated).
 *
 * Forwarding keeps the outer TTL / hop limit (like GLB); outer IPv4 gets its
 * header checksum updated and UDP checksum 0; outer IPv6 gets its UDP
 * checksum computed over the whole datagram. When the hop's family differs
 * from the outer one the outer header is converted (bpf_skb_change_proto).
 * Egress: bpf_fib_lookup (needs forwarding enabled on the interface) gives the
 * interface and MACs; when forwarding is disabled, as on most L7 nodes, the
 * packet leaves by the interface it came in on through bpf_redirect_neigh.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "redirect.h"

#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
#endif

#define AF_INET_ 2
#define AF_INET6_ 10
#define PACKET_HOST_ 0
#define ETH_HLEN_ 14
#define IP_MF_ 0x2000
#define IP_OFFSET_ 0x1fff
#define TCP_LISTEN_ 10
#define MAX_EXT 8          /* inner IPv6 extension headers walked */
#define CSUM_CHUNK 256     /* bytes summed per bpf_csum_diff call */
#define CSUM_CHUNKS 64     /* up to 16 KiB datagrams */

char LICENSE[] SEC("license") = "GPL";  /* bpf_skc_lookup_tcp & co are GPL-only */

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, REDIRECT_MAX_ALLOW);
	__type(key, struct redirect_lpm_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} redirect_allow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct redirect_config);
} redirect_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RC_NCOUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} redirect_counters SEC(".maps");

struct csum_buf {
	__u8 b[CSUM_CHUNK];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct csum_buf);
} redirect_scratch SEC(".maps");

/* What parsing learnt about one GUE packet. Offsets are from the frame start. */
struct gue {
	__u32 udp;        /* UDP header */
	__u32 end;        /* end of the UDP datagram */
	__u32 gue;        /* GUE base header */
	__u32 inner;      /* inner IP packet */
	__u16 udp_len;
	__u8 family;      /* outer: 4 or 6 */
	__u8 ip_len;      /* outer IP header length */
	__u8 hop_family;  /* 4 (private type 0) or 6 (type 1) */
	__u8 hop_size;    /* 4 or 16 */
	__u8 next_hop;
	__u8 hop_count;
	__u8 inner_family;
	__u8 ttl;
	__u8 tos;
	__u8 pad;
	__u8 saddr[16];   /* outer addresses; IPv4 in the first 4 bytes */
	__u8 daddr[16];
};

static __always_inline void count(__u32 c)
{
	__u64 *v = bpf_map_lookup_elem(&redirect_counters, &c);

	if (v)
		*v += 1;
}

static __always_inline int drop(__u32 c)
{
	count(c);
	return TC_ACT_SHOT;
}

static __always_inline int allowed(const struct gue *g)
{
	struct redirect_lpm_key k = {.prefixlen = 128};

	if (g->family == 4) {
		k.addr[10] = 0xff;
		k.addr[11] = 0xff;
		__builtin_memcpy(&k.addr[12], g->saddr, 4);
	} else {
		__builtin_memcpy(k.addr, g->saddr, 16);
	}
	return bpf_map_lookup_elem(&redirect_allow, &k) != 0;
}

static __always_inline __u32 fold(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u32)s;
}

/* ---- decapsulation ------------------------------------------------------------------ */

static __always_inline int decap(struct __sk_buff *skb, const struct gue *g, __u32 counter)
{
	__u64 flags = g->inner_family == 4 ? BPF_F_ADJ_ROOM_DECAP_L3_IPV4 : BPF_F_ADJ_ROOM_DECAP_L3_IPV6;
	__be16 proto = bpf_htons(g->inner_family == 4 ? ETH_P_IP : ETH_P_IPV6);
	__s32 diff = -(__s32)(g->inner - ETH_HLEN_);

	if (bpf_skb_adjust_room(skb, diff, BPF_ADJ_ROOM_MAC, flags))
		return drop(RC_DROP_ERROR);
	if (bpf_skb_store_bytes(skb, 12, &proto, 2, 0))
		return drop(RC_DROP_ERROR);
	count(counter);
	return TC_ACT_OK;
}

/* ---- local ownership of a TCP flow -------------------------------------------------- */

enum { OWN_NONE, OWN_SOCKET, OWN_COOKIE };

/*
 * Who owns the flow in t: a non-listening socket (established, time-wait,
 * request) -> OWN_SOCKET; a listener and (when iph is given) a valid
 * SYN-cookie ACK -> OWN_COOKIE; else OWN_NONE.
 */
static __always_inline int owner(struct __sk_buff *skb, struct bpf_sock_tuple *t, __u32 tlen,
				 void *iph, __u32 iph_len, struct tcphdr *th)
{
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, t, tlen, BPF_F_CURRENT_NETNS, 0);
	int own = OWN_NONE;

	if (!sk)
		return OWN_NONE;
	if (sk->state != TCP_LISTEN_)
		own = OWN_SOCKET;
	else if (iph && bpf_tcp_check_syncookie(sk, iph, iph_len, th, sizeof(*th)) == 0)
		own = OWN_COOKIE;
	bpf_sk_release(sk);
	return own;
}

enum { V_NON_TCP, V_SYN, V_SOCKET, V_COOKIE, V_HOPS, V_TRUNCATED };

static __always_inline int verdict_of(int own)
{
	return own == OWN_SOCKET ? V_SOCKET : own == OWN_COOKIE ? V_COOKIE : V_HOPS;
}

static __always_inline int is_icmp4_error(__u8 type)
{
	return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
}

/* Inner IPv4 at g->inner (header already validated: ihl, length). */
static __always_inline int classify4(struct __sk_buff *skb, const struct gue *g, struct iphdr *ip,
				     int *icmp)
{
	struct bpf_sock_tuple t = {};
	struct tcphdr th;
	__u32 l4 = g->inner + ip->ihl * 4;
	__u32 end = g->inner + bpf_ntohs(ip->tot_len);

	if (ip->frag_off & bpf_htons(IP_MF_ | IP_OFFSET_))
		return V_NON_TCP;
	if (ip->protocol == IPPROTO_ICMP) {
		struct iphdr q;
		__u8 type;
		__be16 ports[2];
		__u32 ql4;

		if (l4 + 8 + sizeof(q) > end || bpf_skb_load_bytes(skb, l4, &type, 1))
			return V_NON_TCP;
		if (!is_icmp4_error(type) || bpf_skb_load_bytes(skb, l4 + 8, &q, sizeof(q)))
			return V_NON_TCP;
		if (q.version != 4 || q.ihl < 5 || q.protocol != IPPROTO_TCP)
			return V_NON_TCP;
		ql4 = l4 + 8 + q.ihl * 4;
		if (ql4 + 4 > end || bpf_skb_load_bytes(skb, ql4, ports, 4))
			return V_NON_TCP;
		/* The quote is a packet of the flow's other direction: reverse it. */
		t.ipv4.saddr = q.daddr;
		t.ipv4.daddr = q.saddr;
		t.ipv4.sport = ports[1];
		t.ipv4.dport = ports[0];
		*icmp = 1;
		return verdict_of(owner(skb, &t, sizeof(t.ipv4), 0, 0, 0));
	}
	if (ip->protocol != IPPROTO_TCP)
		return V_NON_TCP;
	if (l4 + sizeof(th) > end || bpf_skb_load_bytes(skb, l4, &th, sizeof(th)))
		return V_TRUNCATED;
	if (th.syn && !th.ack)
		return V_SYN;
	t.ipv4.saddr = ip->saddr;
	t.ipv4.daddr = ip->daddr;
	t.ipv4.sport = th.source;
	t.ipv4.dport = th.dest;
	return verdict_of(owner(skb, &t, sizeof(t.ipv4), ip, sizeof(*ip), &th));
}

static __always_inline int is_icmp6_error(__u8 type)
{
	return type >= 1 && type <= 4;
}

/* Inner IPv6 at g->inner (40 + payload length inside the datagram). */
static __always_inline int classify6(struct __sk_buff *skb, const struct gue *g, struct ipv6hdr *ip,
				     int *icmp)
{
	struct bpf_sock_tuple t = {};
	struct tcphdr th;
	__u32 l4 = g->inner + sizeof(*ip);
	__u32 end = l4 + bpf_ntohs(ip->payload_len);
	__u8 nh = ip->nexthdr;

	/* Extension headers: hop-by-hop, routing, destination options walked; a fragment
	 * header makes the packet one for the local stack (its flow cannot be read). */
	for (int i = 0; i < MAX_EXT; i++) {
		__u8 ext[2];

		if (nh != 0 && nh != 43 && nh != 60)
			break;
		if (l4 + 8 > end || bpf_skb_load_bytes(skb, l4, ext, 2))
			return V_NON_TCP;
		nh = ext[0];
		l4 += ((__u32)ext[1] + 1) * 8;
	}
	if (nh == IPPROTO_ICMPV6) {
		struct ipv6hdr q;
		__u8 type;
		__be16 ports[2];

		if (l4 + 8 + sizeof(q) + 4 > end || bpf_skb_load_bytes(skb, l4, &type, 1))
			return V_NON_TCP;
		if (!is_icmp6_error(type) || bpf_skb_load_bytes(skb, l4 + 8, &q, sizeof(q)))
			return V_NON_TCP;
		if (q.version != 6 || q.nexthdr != IPPROTO_TCP)
			return V_NON_TCP;
		if (bpf_skb_load_bytes(skb, l4 + 8 + sizeof(q), ports, 4))
			return V_NON_TCP;
		__builtin_memcpy(t.ipv6.saddr, &q.daddr, 16);
		__builtin_memcpy(t.ipv6.daddr, &q.saddr, 16);
		t.ipv6.sport = ports[1];
		t.ipv6.dport = ports[0];
		*icmp = 1;
		return verdict_of(owner(skb, &t, sizeof(t.ipv6), 0, 0, 0));
	}
	if (nh != IPPROTO_TCP)
		return V_NON_TCP;
	if (l4 + sizeof(th) > end || bpf_skb_load_bytes(skb, l4, &th, sizeof(th)))
		return V_TRUNCATED;
	if (th.syn && !th.ack)
		return V_SYN;
	__builtin_memcpy(t.ipv6.saddr, &ip->saddr, 16);
	__builtin_memcpy(t.ipv6.daddr, &ip->daddr, 16);
	t.ipv6.sport = th.source;
	t.ipv6.dport = th.dest;
	return verdict_of(owner(skb, &t, sizeof(t.ipv6), ip, sizeof(*ip), &th));
}

/* ---- forwarding ----------------------------------------------------------------------- */

/* UDP checksum of the datagram at udp (len bytes, checksum field zeroed) over IPv6, the
 * pseudo-header's addresses read from the packet. */
static __always_inline int udp6_csum(struct __sk_buff *skb, __u32 udp, __u32 len, __u16 *out)
{
	__u32 zero = 0;
	struct csum_buf *buf = bpf_map_lookup_elem(&redirect_scratch, &zero);
	__be32 ph[2] = {bpf_htonl(len), bpf_htonl(IPPROTO_UDP)};
	__s64 s;
	__u32 off = 0;

	if (!buf)
		return -1;
	/* pseudo-header: source and destination (32 bytes at 14 + 8), length, next header */
	if (bpf_skb_load_bytes(skb, ETH_HLEN_ + 8, buf->b, 32))
		return -1;
	s = bpf_csum_diff(0, 0, (__be32 *)buf->b, 32, 0);
	s = bpf_csum_diff(0, 0, ph, sizeof(ph), (__wsum)s);
	if (s < 0)
		return -1;
	for (int i = 0; i < CSUM_CHUNKS; i++) {
		__u64 n = len - off;

		if (off >= len)
			break;
		if (n > CSUM_CHUNK)
			n = CSUM_CHUNK;
		asm volatile("" : "+r"(n));  /* check the register the helper gets */
		if (n < 1 || n > CSUM_CHUNK)
			return -1;
		if (n < CSUM_CHUNK)
			*(__u32 *)&buf->b[(n & ~3u) & (CSUM_CHUNK - 4)] = 0;  /* zero pad to 4 */
		if (bpf_skb_load_bytes(skb, udp + off, buf->b, n))
			return -1;
		n = (n + 3) & ~3ull;  /* the zero pad */
		asm volatile("" : "+r"(n));
		if (n > CSUM_CHUNK)
			return -1;
		s = bpf_csum_diff(0, 0, (__be32 *)buf->b, n, (__wsum)s);
		if (s < 0)
			return -1;
		off += CSUM_CHUNK;
	}
	if (off < len)
		return -1;  /* longer than CSUM_CHUNKS * CSUM_CHUNK */
	*out = ~fold((__u32)s) & 0xffff;
	if (*out == 0)
		*out = 0xffff;
	return 0;
}

/* The outer source for a hop of family hf, or 0 when there is none. */
static __always_inline const __u8 *source_for(const struct gue *g, const struct redirect_config *cfg,
					      __u8 hf)
{
	__u8 mode = cfg->src_mode[hf == 4 ? 0 : 1];
	const __u8 *configured = hf == 4 ? cfg->src4 : cfg->src6;

	if (mode == SRC_EXPLICIT)
		return configured;
	if (hf == g->family)
		return g->daddr;
	if (mode == SRC_FALLBACK)
		return configured;
	return 0;
}

static __always_inline int same(const __u8 *a, const __u8 *b, __u8 family)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	if (family == 4)
		return x[0] == y[0];
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

/* Rewrite the outer IP header to src -> hop (family hf), next hop + 1; 0 or a drop counter. */
static __always_inline int rewrite(struct __sk_buff *skb, struct gue *g, const __u8 *src,
				   const __u8 *hop, __u8 hf)
{
	__u8 next = g->next_hop + 1;

	if (g->family == 4 && hf == 4) {
		__be32 old[2], new[2];
		__u16 zero = 0;

		__builtin_memcpy(&old[0], g->saddr, 4);
		__builtin_memcpy(&old[1], g->daddr, 4);
		__builtin_memcpy(&new[0], src, 4);
		__builtin_memcpy(&new[1], hop, 4);
		if (bpf_skb_store_bytes(skb, ETH_HLEN_ + 12, new, 8, 0) ||
		    bpf_l3_csum_replace(skb, ETH_HLEN_ + 10, old[0], new[0], 4) ||
		    bpf_l3_csum_replace(skb, ETH_HLEN_ + 10, old[1], new[1], 4) ||
		    bpf_skb_store_bytes(skb, g->udp + 6, &zero, 2, 0) ||
		    bpf_skb_store_bytes(skb, g->gue + 6, &next, 1, 0))
			return RC_DROP_ERROR;
		return 0;
	}
	if (g->family == 6 && hf == 6) {
		if (bpf_skb_store_bytes(skb, ETH_HLEN_ + 8, src, 16, 0) ||
		    bpf_skb_store_bytes(skb, ETH_HLEN_ + 24, hop, 16, 0) ||
		    bpf_skb_store_bytes(skb, g->gue + 6, &next, 1, 0))
			return RC_DROP_ERROR;
		return 0;
	}
	if (g->family == 4) {
		/* IPv4 -> IPv6: drop IPv4 options first, then let the kernel grow the header. */
		struct ipv6hdr ip6 = {};
		__be16 et = bpf_htons(ETH_P_IPV6);
		__s32 delta = 40 - (__s32)g->ip_len;

		if (g->ip_len > 20 &&
		    bpf_skb_adjust_room(skb, -(__s32)(g->ip_len - 20), BPF_ADJ_ROOM_NET, 0))
			return RC_DROP_ERROR;
		if (bpf_skb_change_proto(skb, bpf_htons(ETH_P_IPV6), 0))
			return RC_DROP_ERROR;
		ip6.version = 6;
		ip6.priority = g->tos >> 4;
		ip6.flow_lbl[0] = (g->tos & 15) << 4;
		ip6.payload_len = bpf_htons(g->udp_len);
		ip6.nexthdr = IPPROTO_UDP;
		ip6.hop_limit = g->ttl;
		__builtin_memcpy(&ip6.saddr, src, 16);
		__builtin_memcpy(&ip6.daddr, hop, 16);
		g->udp += delta;
		g->gue += delta;
		g->end += delta;
		g->ip_len = 40;
		if (bpf_skb_store_bytes(skb, 12, &et, 2, 0) ||
		    bpf_skb_store_bytes(skb, ETH_HLEN_, &ip6, sizeof(ip6), 0) ||
		    bpf_skb_store_bytes(skb, g->gue + 6, &next, 1, 0))
			return RC_DROP_ERROR;
		return 0;
	} else {
		/* IPv6 -> IPv4 */
		struct iphdr ip4 = {};
		__be16 et = bpf_htons(ETH_P_IP);
		__u16 zero = 0;
		__u64 s;

		if (bpf_skb_change_proto(skb, bpf_htons(ETH_P_IP), 0))
			return RC_DROP_ERROR;
		ip4.version = 4;
		ip4.ihl = 5;
		ip4.tos = g->tos;
		ip4.tot_len = bpf_htons(20 + g->udp_len);
		ip4.frag_off = bpf_htons(0x4000);  /* DF, like the L4 node's encapsulation */
		ip4.ttl = g->ttl;
		ip4.protocol = IPPROTO_UDP;
		__builtin_memcpy(&ip4.saddr, src, 4);
		__builtin_memcpy(&ip4.daddr, hop, 4);
		s = bpf_csum_diff(0, 0, (__be32 *)&ip4, sizeof(ip4), 0);
		ip4.check = ~fold(s) & 0xffff;
		g->udp -= 20;
		g->gue -= 20;
		g->end -= 20;
		g->ip_len = 20;
		if (bpf_skb_store_bytes(skb, 12, &et, 2, 0) ||
		    bpf_skb_store_bytes(skb, ETH_HLEN_, &ip4, sizeof(ip4), 0) ||
		    bpf_skb_store_bytes(skb, g->udp + 6, &zero, 2, 0) ||
		    bpf_skb_store_bytes(skb, g->gue + 6, &next, 1, 0))
			return RC_DROP_ERROR;
		return 0;
	}
}

/*
 * A hop that can be no L7 node: unspecified, loopback, multicast, broadcast (IPv4 class E
 * included) and ::/80. The FIB refuses these only when forwarding is on; with forwarding off
 * (most L7 nodes) bpf_redirect_neigh would be handed them and the packet counted forwarded.
 */
static __always_inline int unicast(const __u8 *a, __u8 family)
{
	if (family == 4)
		return a[0] != 0 && a[0] != 127 && a[0] < 224;
	if (a[0] == 0xff)
		return 0;
	for (int i = 0; i < 10; i++)
		if (a[i])
			return 1;
	return 0;
}

static __always_inline int forward(struct __sk_buff *skb, struct gue *g)
{
	__u32 zero = 0;
	const struct redirect_config *cfg = bpf_map_lookup_elem(&redirect_config, &zero);
	struct bpf_fib_lookup fib = {};
	__u8 hop[16] = {};
	const __u8 *src;
	__u8 hf = g->hop_family;
	__u32 hop_off = g->gue + 8 + (__u32)g->next_hop * g->hop_size;
	int rc;

	if (!cfg)
		return drop(RC_DROP_ERROR);
	if (bpf_skb_load_bytes(skb, hop_off, hop, hf == 4 ? 4 : 16))
		return drop(RC_DROP_TRUNCATED);
	src = source_for(g, cfg, hf);
	/* The next hop is this node: take the packet here rather than loop through the wire. */
	if ((hf == g->family && same(hop, g->daddr, hf)) || (src && same(hop, src, hf)))
		return decap(skb, g, RC_DECAP_SELF);
	if (!src)
		return drop(RC_DROP_NO_SOURCE);
	if (!unicast(hop, hf))
		return drop(RC_DROP_NO_ROUTE);
	rc = rewrite(skb, g, src, hop, hf);
	if (rc)
		return drop(rc);
	if (hf == 6) {
		__u16 csum = 0;

		if (bpf_skb_store_bytes(skb, g->udp + 6, &csum, 2, 0) ||
		    udp6_csum(skb, g->udp, g->udp_len, &csum) ||
		    bpf_skb_store_bytes(skb, g->udp + 6, &csum, 2, 0))
			return drop(RC_DROP_ERROR);
	}

	fib.family = hf == 4 ? AF_INET_ : AF_INET6_;
	fib.l4_protocol = IPPROTO_UDP;
	fib.tot_len = g->ip_len + g->udp_len;
	fib.ifindex = skb->ifindex;
	if (hf == 4) {
		__builtin_memcpy(&fib.ipv4_src, src, 4);
		__builtin_memcpy(&fib.ipv4_dst, hop, 4);
	} else {
		__builtin_memcpy(fib.ipv6_src, src, 16);
		__builtin_memcpy(fib.ipv6_dst, hop, 16);
	}
	skb->tstamp = 0;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		if (bpf_skb_store_bytes(skb, 0, fib.dmac, 6, 0) ||
		    bpf_skb_store_bytes(skb, 6, fib.smac, 6, 0))
			return drop(RC_DROP_ERROR);
		count(RC_FORWARDED);
		return bpf_redirect(fib.ifindex, 0);
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		struct bpf_redir_neigh nh = {.nh_family = fib.family};

		__builtin_memcpy(nh.ipv6_nh, fib.ipv6_dst, 16);  /* ipv4_nh shares the first 4 bytes */
		count(RC_FORWARDED);
		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	if (rc == BPF_FIB_LKUP_RET_FWD_DISABLED) {
		/* Not a router: out of the interface the packet came in on; the kernel routes
		 * (on that interface) and resolves the neighbour. */
		__u32 mtu = 0;

		if (bpf_check_mtu(skb, skb->ifindex, &mtu, 0, 0) != 0)
			return drop(RC_DROP_TOO_BIG);
		count(RC_FORWARDED);
		return bpf_redirect_neigh(skb->ifindex, 0, 0, 0);
	}
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return drop(RC_DROP_TOO_BIG);
	return drop(RC_DROP_NO_ROUTE);
}

/* ---- parsing -------------------------------------------------------------------------- */

/* TC_ACT_OK for non-GUE traffic, else a verdict; fills g up to the GUE header. */
static __always_inline int parse_outer(struct __sk_buff *skb, struct gue *g, int *is_gue)
{
	struct udphdr udp;
	__be16 proto;
	__u32 ip_end;

	if (bpf_skb_load_bytes(skb, 12, &proto, 2))
		return TC_ACT_OK;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, ETH_HLEN_, &ip, sizeof(ip)))
			return TC_ACT_OK;
		if (ip.version != 4 || ip.ihl < 5 || ip.protocol != IPPROTO_UDP)
			return TC_ACT_OK;
		if (ip.frag_off & bpf_htons(IP_OFFSET_))
			return TC_ACT_OK;  /* a later fragment: no UDP header to recognise */
		g->family = 4;
		g->ip_len = ip.ihl * 4;
		g->ttl = ip.ttl;
		g->tos = ip.tos;
		__builtin_memcpy(g->saddr, &ip.saddr, 4);
		__builtin_memcpy(g->daddr, &ip.daddr, 4);
		g->udp = ETH_HLEN_ + g->ip_len;
		if (bpf_skb_load_bytes(skb, g->udp, &udp, sizeof(udp)) ||
		    udp.dest != bpf_htons(REDIRECT_GUE_PORT))
			return TC_ACT_OK;
		*is_gue = 1;
		count(RC_RX);
		if (!allowed(g))
			return drop(RC_DROP_NOT_ALLOWED);
		if (ip.frag_off & bpf_htons(IP_MF_))
			return drop(RC_DROP_FRAGMENT);
		ip_end = ETH_HLEN_ + bpf_ntohs(ip.tot_len);
		if (bpf_ntohs(ip.tot_len) < g->ip_len + sizeof(udp))
			return drop(RC_DROP_TRUNCATED);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip;

		if (bpf_skb_load_bytes(skb, ETH_HLEN_, &ip, sizeof(ip)))
			return TC_ACT_OK;
		if (ip.version != 6 || ip.nexthdr != IPPROTO_UDP)
			return TC_ACT_OK;
		g->family = 6;
		g->ip_len = 40;
		g->ttl = ip.hop_limit;
		g->tos = ip.priority << 4 | ip.flow_lbl[0] >> 4;
		__builtin_memcpy(g->saddr, &ip.saddr, 16);
		__builtin_memcpy(g->daddr, &ip.daddr, 16);
		g->udp = ETH_HLEN_ + 40;
		if (bpf_skb_load_bytes(skb, g->udp, &udp, sizeof(udp)) ||
		    udp.dest != bpf_htons(REDIRECT_GUE_PORT))
			return TC_ACT_OK;
		*is_gue = 1;
		count(RC_RX);
		if (!allowed(g))
			return drop(RC_DROP_NOT_ALLOWED);
		ip_end = ETH_HLEN_ + 40 + bpf_ntohs(ip.payload_len);
		if (bpf_ntohs(ip.payload_len) < sizeof(udp))
			return drop(RC_DROP_TRUNCATED);
	} else {
		return TC_ACT_OK;
	}
	if (ip_end > skb->len)
		return drop(RC_DROP_TRUNCATED);
	g->udp_len = bpf_ntohs(udp.len);
	g->end = g->udp + g->udp_len;
	if (g->udp_len < sizeof(udp) || g->end > ip_end)
		return drop(RC_DROP_TRUNCATED);
	g->gue = g->udp + sizeof(udp);
	return TC_ACT_UNSPEC;
}

static __always_inline int parse_gue(struct __sk_buff *skb, struct gue *g)
{
	__u8 h[8];
	__u32 hlen, words;

	if (g->gue + 8 > g->end || bpf_skb_load_bytes(skb, g->gue, h, 8))
		return drop(RC_DROP_TRUNCATED);
	if (h[0] & 0xe0)
		return drop(RC_DROP_BAD_VERSION);
	if (h[2] | h[3])
		return drop(RC_DROP_BAD_FLAGS);
	hlen = h[0] & 0x1f;
	if (hlen == 0)
		return drop(RC_DROP_BAD_HLEN);
	if (h[4] != 0 || h[5] > 1)
		return drop(RC_DROP_BAD_HOP_TYPE);
	g->hop_family = h[5] == 0 ? 4 : 6;
	g->hop_size = h[5] == 0 ? 4 : 16;
	g->next_hop = h[6];
	g->hop_count = h[7];
	words = 1 + (__u32)g->hop_count * (g->hop_size / 4);
	if (hlen != words)
		return drop(RC_DROP_BAD_HLEN);
	if (g->next_hop > g->hop_count)
		return drop(RC_DROP_BAD_NEXT_HOP);
	if (h[1] != IPPROTO_IPIP && h[1] != IPPROTO_IPV6)
		return drop(RC_DROP_BAD_INNER_PROTO);
	g->inner_family = h[1] == IPPROTO_IPIP ? 4 : 6;
	g->inner = g->gue + 4 + hlen * 4;
	return TC_ACT_UNSPEC;
}

SEC("tc")
int fwd_redirect(struct __sk_buff *skb)
{
	struct gue g = {};
	int is_gue = 0, icmp = 0, v, rc;

	if (skb->pkt_type != PACKET_HOST_)
		return TC_ACT_OK;
	rc = parse_outer(skb, &g, &is_gue);
	if (rc != TC_ACT_UNSPEC)
		return rc;
	rc = parse_gue(skb, &g);
	if (rc != TC_ACT_UNSPEC)
		return rc;

	if (g.inner_family == 4) {
		struct iphdr ip;

		if (g.inner + sizeof(ip) > g.end || bpf_skb_load_bytes(skb, g.inner, &ip, sizeof(ip)))
			return drop(RC_DROP_TRUNCATED);
		if (ip.version != 4 || ip.ihl < 5 || bpf_ntohs(ip.tot_len) < ip.ihl * 4)
			return drop(RC_DROP_BAD_INNER);
		if (g.inner + bpf_ntohs(ip.tot_len) > g.end)
			return drop(RC_DROP_TRUNCATED);
		v = classify4(skb, &g, &ip, &icmp);
	} else {
		struct ipv6hdr ip;

		if (g.inner + sizeof(ip) > g.end || bpf_skb_load_bytes(skb, g.inner, &ip, sizeof(ip)))
			return drop(RC_DROP_TRUNCATED);
		if (ip.version != 6)
			return drop(RC_DROP_BAD_INNER);
		if (g.inner + sizeof(ip) + bpf_ntohs(ip.payload_len) > g.end)
			return drop(RC_DROP_TRUNCATED);
		v = classify6(skb, &g, &ip, &icmp);
	}
	if (icmp)
		count(RC_ICMP_TCP_QUOTE);

	switch (v) {
	case V_NON_TCP:
		return decap(skb, &g, RC_DECAP_NON_TCP);
	case V_SYN:
		return decap(skb, &g, RC_DECAP_SYN);
	case V_SOCKET:
		return decap(skb, &g, RC_DECAP_SOCKET);
	case V_COOKIE:
		return decap(skb, &g, RC_DECAP_SYNCOOKIE);
	case V_TRUNCATED:
		return drop(RC_DROP_TRUNCATED);
	}
	if (g.next_hop >= g.hop_count)
		return decap(skb, &g, RC_DECAP_LAST_HOP);
	return forward(skb, &g);
}
