/*
 * core_encap.h - the output frames (docs/packet-core.md §4, §5): the GUE frame
 * towards the primary backend, with the secondary in the hop list, and the
 * ICMP fragmentation-needed / packet-too-big reply when that frame would
 * exceed the egress MTU. Both are written in place: the inner IP packet stays
 * where it was received and the new headers go in the headroom before it.
 */
#ifndef FWD_CORE_ENCAP_H
#define FWD_CORE_ENCAP_H

#include "core_priv.h"

#define GUE_HLEN 8          /* base header + private data (type, hop index, count) */
#define ICMP4_REPLY_MAX 576 /* total length of an ICMPv4 error */
#define ICMP6_REPLY_MAX 1280

static inline int encap_drop(struct fwd_result *res, uint8_t reason)
{
	res->reason = reason;
	return FWD_DROP;
}

/* Sum of an IPv6 pseudo header (RFC 8200 §8.1) less the addresses' words. */
static inline uint32_t csum_pseudo6(uint32_t ulen, uint8_t nh)
{
	return (ulen >> 16) + (ulen & 0xffff) + nh;
}

/*
 * ICMPv4 type 3 code 4 / ICMPv6 type 2 back to the client, from the VIP,
 * quoting the inner packet; the input's L2 header is reversed, VLAN kept.
 */
__attribute__((noinline, cold)) static int icmp_reply(uint8_t *buf, uint32_t off, struct pkt pv,
						     uint32_t mtu_rep, struct fwd_result *res)
{
	const struct pkt *p = &pv;   /* a copy: the caller's struct pkt stays in registers */
	uint32_t iph = p->family == 4 ? 20 : 40, hdr = iph + 8;
	uint8_t *f = buf + off, l2h[18];
	const uint8_t *ip = p->ip;

	if (off < hdr)
		return encap_drop(res, FWD_DROP_NO_HEADROOM);

	uint32_t q = p->ip_len, qmax = (p->family == 4 ? ICMP4_REPLY_MAX : ICMP6_REPLY_MAX) - hdr;

	if (q > qmax)
		q = qmax;
	memcpy(l2h, f + 6, 6);
	memcpy(l2h + 6, f, 6);
	memcpy(l2h + 12, f + 12, p->l2 - 12);   /* 802.1Q TPID and TCI when tagged */

	uint8_t *o = f - hdr, *h = o + p->l2, *ic = h + iph;
	uint64_t acc = csum_acc(0, ip, q);   /* the quote: the inner packet, in place */

	memcpy(o, l2h, p->l2 - 2);
	if (p->family == 4) {
		store_be16(o + p->l2 - 2, ETH_P_IPV4);
		memset(h, 0, 20);
		h[0] = 0x45;
		store_be16(h + 2, (uint16_t)(hdr + q));
		h[8] = 64;
		h[9] = IPPROTO_ICMP4;
		memcpy(h + 12, ip + 16, 4);
		memcpy(h + 16, ip + 12, 4);
		store_be16(h + 10, csum_finish(0x4500 + hdr + q + (64 << 8 | IPPROTO_ICMP4) +
					       csum_addr4(ip + 12) + csum_addr4(ip + 16)));
		ic[0] = 3;
		ic[1] = 4;
		memset(ic + 2, 0, 4);
		store_be16(ic + 6, (uint16_t)mtu_rep);
		store_be16(ic + 2, csum_finish(csum_be16(acc) + (3 << 8 | 4) + (mtu_rep & 0xffff)));
	} else {
		store_be16(o + p->l2 - 2, ETH_P_IPV6);
		h[0] = 0x60;
		h[1] = h[2] = h[3] = 0;
		store_be16(h + 4, (uint16_t)(8 + q));
		h[6] = IPPROTO_ICMP6;
		h[7] = 64;
		memcpy(h + 8, ip + 24, 16);
		memcpy(h + 24, ip + 8, 16);
		ic[0] = 2;
		ic[1] = 0;
		ic[2] = ic[3] = 0;
		store_be32(ic + 4, mtu_rep);
		acc = csum_acc(acc, ip + 8, 32);   /* pseudo header: both addresses */
		store_be16(ic + 2, csum_finish(csum_be16(acc) + csum_pseudo6(8 + q, IPPROTO_ICMP6) +
					       (2 << 8) + (mtu_rep >> 16) + (mtu_rep & 0xffff)));
	}
	res->out_off = off - hdr;
	res->out_len = p->l2 + hdr + q;
	return FWD_REPLY;
}

/*
 * The outer Ethernet addresses when they come from the input frame (no node
 * MACs, no next hops): f[6..12) then f[0..6), then the EtherType, as two
 * 8-byte loads and three overlapping stores (o[0..8), o[6..14), o[12..14)):
 * no shifting or masking, which would take ALU slots the per-packet path is
 * short of (docs/packet-core.md §7). o[0..14) ends before f, so both loads
 * come before any store can touch f.
 */
static inline void eth_swap_macs(uint8_t *o, const uint8_t *f, uint16_t type)
{
	uint64_t a, b;

	memcpy(&a, f + 6, 8);   /* f[6..12) and two bytes overwritten below */
	memcpy(&b, f, 8);       /* f[0..6) and two bytes overwritten below */
	memcpy(o, &a, 8);
	memcpy(o + 6, &b, 8);
	store_be16(o + 12, type);
}

/*
 * The usual cases in straight-line code: outer IPv4 with one IPv4 hop or none,
 * the Ethernet addresses from the input frame, within the MTU. hop_bytes is a
 * constant (gue_encap_plain branches on the row's hop length): the store
 * addresses then do not wait for the row, which waits for the hash, and the
 * next frame's loads are not held up (or replayed) behind them. Returns 0,
 * having written nothing, when the frame is not that case.
 */
static inline __attribute__((always_inline)) int
gue_encap4_hops(const struct fwd_snapshot *s, const struct fwd_snap_encap *pe,
		const struct fwd_snap_encap *he, uint32_t hop_bytes, uint8_t *buf, uint32_t off,
		const struct pkt *p, struct fwd_result *res)
{
	uint32_t over = 20 + 8 + GUE_HLEN + hop_bytes, outer_len = over + p->ip_len;
	uint32_t hdr = ETH_HLEN + over;

	if (outer_len > s->plain_mtu4 || off + p->l2 < hdr)   /* pe->plain == 4 */
		return 0;

	uint8_t *f = buf + off, *o = f + p->l2 - hdr, *h = o + ETH_HLEN, *u = h + 20, *g = u + 8;

	eth_swap_macs(o, f, ETH_P_IPV4);
	store_be64(h, 0x4500000000004000ull | (uint64_t)outer_len << 32);
	store_be32(h + 8, (uint32_t)(64 << 8 | IPPROTO_UDP_) << 16 |
				  csum_finish2(pe->csum_outer + outer_len));
	memcpy(h + 12, pe->addrs, 8);
	store_be64(u, (uint64_t)p->gue_sport << 48 | (uint64_t)FWD_GUE_PORT << 32 |
			      (uint64_t)(outer_len - 20) << 16);
	store_be64(g, (uint64_t)((1 + hop_bytes / 4) << 8 | (p->family == 4 ? 4 : 41)) << 48 |
			      he->hop_lo);
	if (hop_bytes)
		memcpy(g + 8, he->addrs + 4, 4);
	res->out_off = off + p->l2 - hdr;
	res->out_len = hdr + p->ip_len;
	return 1;
}

/* The same for an outer IPv6 header with one IPv6 hop or none (UDP checksum over the inner packet). */
static inline __attribute__((always_inline)) int
gue_encap6_hops(const struct fwd_snapshot *s, const struct fwd_snap_encap *pe,
		const struct fwd_snap_encap *he, uint32_t hop_bytes, uint8_t *buf, uint32_t off,
		const struct pkt *p, struct fwd_result *res)
{
	uint32_t over = 40 + 8 + GUE_HLEN + hop_bytes, outer_len = over + p->ip_len;
	uint32_t hdr = ETH_HLEN + over, udp_len = outer_len - 40;

	if (outer_len > s->plain_mtu6 || off + p->l2 < hdr)   /* pe->plain == 6 */
		return 0;

	uint8_t *f = buf + off, *o = f + p->l2 - hdr, *h = o + ETH_HLEN, *u = h + 40, *g = u + 8;
	uint32_t gue_hi = (1 + hop_bytes / 4) << 8 | (p->family == 4 ? 4 : 41);
	/* the inner packet, the pseudo header (addresses in csum_outer), UDP and
	 * GUE header words, the hop */
	uint32_t sum = csum_be16(csum_acc(0, p->ip, p->ip_len)) + pe->csum_outer +
		       csum_pseudo6(udp_len, IPPROTO_UDP_) + p->gue_sport + FWD_GUE_PORT + udp_len +
		       gue_hi + he->hop_lo + he->hop_sum;
	uint16_t c = csum_finish(sum);

	eth_swap_macs(o, f, ETH_P_IPV6);
	store_be64(h, 0x6000000000000000ull | (uint64_t)udp_len << 16 | IPPROTO_UDP_ << 8 | 64);
	memcpy(h + 8, pe->addrs, 32);
	store_be64(u, (uint64_t)p->gue_sport << 48 | (uint64_t)FWD_GUE_PORT << 32 |
			      (uint64_t)udp_len << 16 | (c ? c : 0xffff));
	store_be64(g, (uint64_t)gue_hi << 48 | he->hop_lo);
	if (hop_bytes)
		memcpy(g + 8, he->addrs + 16, 16);
	res->out_off = off + p->l2 - hdr;
	res->out_len = hdr + p->ip_len;
	return 1;
}

static inline int gue_encap_plain(const struct fwd_snapshot *s, const struct fwd_snap_encap *pe,
				   const struct fwd_snap_encap *he, uint8_t *buf, uint32_t off,
				   const struct pkt *p, struct fwd_result *res)
{
	if (pe->plain == 4) {
		if (he->hop_len == 4)
			return gue_encap4_hops(s, pe, he, 4, buf, off, p, res);
		if (he->hop_len == 0)
			return gue_encap4_hops(s, pe, he, 0, buf, off, p, res);
	} else if (pe->plain == 6) {
		if (he->hop_len == 16)
			return gue_encap6_hops(s, pe, he, 16, buf, off, p, res);
		if (he->hop_len == 0)
			return gue_encap6_hops(s, pe, he, 0, buf, off, p, res);
	}
	return 0;
}

static inline int gue_encap(const struct fwd_snapshot *s, const struct fwd_snap_table *t, uint8_t *buf,
			    uint32_t off, const struct pkt *p, struct fwd_result *res)
{
	/* The records are found once for both paths, with one index type, and pe is
	 * made opaque to the optimizer: otherwise gcc computed the primary's record
	 * address twice (an int and an unsigned index, and the record's offset
	 * folded into each field's displacement). */
	uint32_t pi = p->primary, si = p->secondary;
	const struct fwd_snap_encap *pe = &t->encap[pi];
	/* the hop: the secondary, or none (no_hop's zero length and words) */
	const struct fwd_snap_encap *he = si != pi && si < t->nbackends ? &t->encap[si] : &t->no_hop;

	__asm__("" : "+r"(pe));
	if (gue_encap_plain(s, pe, he, buf, off, p, res))
		return FWD_FORWARD;

	const struct fwd_node_spec *node = &s->node;
	uint32_t v4 = pe->family == 4, iph = v4 ? 20 : 40, hop_bytes = he->hop_len;
	/* what the outer total length / payload length can say */
	uint32_t mtu = node->mtu, mtu_max = v4 ? 65535 : 40 + 65535;

	if (!pe->has_src)
		return encap_drop(res, FWD_DROP_NO_TUNNEL_SOURCE);
	if (mtu > mtu_max)
		mtu = mtu_max;

	uint32_t over = iph + 8 + GUE_HLEN + hop_bytes;   /* outer IP length - ip_len */
	uint32_t outer_len = over + p->ip_len;

	if (outer_len > mtu) {
		if (p->reply_ok)
			return icmp_reply(buf, off, *p, mtu > over ? mtu - over : 0, res);
		return encap_drop(res, FWD_DROP_TOO_BIG);
	}

	uint32_t hdr = ETH_HLEN + over;   /* bytes written before the inner packet */

	if (off + p->l2 < hdr)
		return encap_drop(res, FWD_DROP_NO_HEADROOM);

	/* o[0..16) ends before f: hdr >= 50 > l2 + 16, so the MACs are read before
	 * the outer headers overwrite the input's L2 header. */
	uint8_t *f = buf + off, *o = f + p->l2 - hdr;
	uint16_t type = v4 ? ETH_P_IPV4 : ETH_P_IPV6;

	if (s->use_nexthops) {   /* live: the route's egress and neighbour decide */
		const struct fwd_nexthop *nh = &t->nexthops[pi];

		if (!nh->ifindex)
			return encap_drop(res, FWD_DROP_NO_NEXTHOP);
		memcpy(o, nh->dst_mac, 6);
		memcpy(o + 6, nh->src_mac, 6);
		store_be16(o + 12, type);
		res->egress_ifindex = nh->ifindex;
	} else if (node->has_dst_mac || node->has_src_mac) {
		memcpy(o, node->has_dst_mac ? node->dst_mac : f + 6, 6);
		memcpy(o + 6, node->has_src_mac ? node->src_mac : f, 6);
		store_be16(o + 12, type);
	} else {
		eth_swap_macs(o, f, type);
	}

	uint8_t *h = o + ETH_HLEN, *u = h + iph, *g = u + 8;
	uint32_t udp_len = outer_len - iph;
	/* GUE: hlen (32-bit words after the base header), inner proto, flags 0 |
	 * private data (the hop's: type, next hop 0, count) */
	uint32_t gue_hi = (1 + hop_bytes / 4) << 8 | (p->family == 4 ? 4 : 41);

	/* UDP: sport, 19523, length, checksum 0 (set below over IPv6) */
	store_be64(u, (uint64_t)p->gue_sport << 48 | (uint64_t)FWD_GUE_PORT << 32 |
			      (uint64_t)udp_len << 16);
	store_be64(g, (uint64_t)gue_hi << 48 | he->hop_lo);
	if (hop_bytes == 4)
		memcpy(g + 8, he->addrs + 4, 4);
	else if (hop_bytes == 16)
		memcpy(g + 8, he->addrs + 16, 16);
	if (v4) {
		/* 45 00 len | id 0, DF | ttl 64, udp, checksum (constant words and
		 * both addresses are in csum_outer) | source, destination */
		store_be64(h, 0x4500000000004000ull | (uint64_t)outer_len << 32);
		store_be32(h + 8, (uint32_t)(64 << 8 | IPPROTO_UDP_) << 16 |
					  csum_finish2(pe->csum_outer + outer_len));
		memcpy(h + 12, pe->addrs, 8);
	} else {
		store_be64(h, 0x6000000000000000ull | (uint64_t)udp_len << 16 |
				      IPPROTO_UDP_ << 8 | 64);
		memcpy(h + 8, pe->addrs, 32);

		/* the inner packet, the pseudo header (addresses in csum_outer), UDP
		 * and GUE header words, the hop */
		uint32_t sum = csum_be16(csum_acc(0, p->ip, p->ip_len)) + pe->csum_outer +
			       csum_pseudo6(udp_len, IPPROTO_UDP_) + p->gue_sport + FWD_GUE_PORT +
			       udp_len + gue_hi + he->hop_lo + he->hop_sum;
		uint16_t c = csum_finish(sum);

		store_be16(u + 6, c ? c : 0xffff);
	}
	res->out_off = off + p->l2 - hdr;
	res->out_len = hdr + p->ip_len;
	return FWD_FORWARD;
}

#endif
