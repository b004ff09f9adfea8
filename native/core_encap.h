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
__attribute__((noinline, cold)) static int icmp_reply(uint8_t *buf, uint32_t off, const struct pkt *p, uint32_t mtu_rep,
		      struct fwd_result *res)
{
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

static inline int gue_encap(const struct fwd_snapshot *s, const struct fwd_snap_table *t, uint8_t *buf,
			    uint32_t off, const struct pkt *p, struct fwd_result *res)
{
	const struct fwd_node_spec *node = &s->node;
	uint32_t pi = p->primary, si = p->secondary;
	const struct fwd_addr *pa = &t->backends[pi];
	const uint8_t *tsrc, *hop = NULL;
	uint32_t iph, hop_bytes = 0, hop_sum = 0, gue_lo = 0, mtu = node->mtu;

	if (pa->family == 4) {
		if (!node->has_tunnel_src4)
			return encap_drop(res, FWD_DROP_NO_TUNNEL_SOURCE);
		iph = 20;
		tsrc = node->tunnel_src4;
		if (mtu > 65535)   /* what the outer total length can say */
			mtu = 65535;
	} else {
		if (!node->has_tunnel_src6)
			return encap_drop(res, FWD_DROP_NO_TUNNEL_SOURCE);
		iph = 40;
		tsrc = node->tunnel_src6;
		if (mtu > 40 + 65535)   /* what the payload length can say */
			mtu = 40 + 65535;
	}
	if (si != pi && si < t->nbackends) {
		hop = t->backends[si].bytes;
		hop_sum = t->csum_addr[si];
		/* GUE private data, low word: type (0 IPv4 hops, 1 IPv6), next hop 0, count 1 */
		if (t->backends[si].family == 4) {
			hop_bytes = 4;
			gue_lo = 1;
		} else {
			hop_bytes = 16;
			gue_lo = 1 << 16 | 1;
		}
	}

	uint32_t over = iph + 8 + GUE_HLEN + hop_bytes;   /* outer IP length - ip_len */
	uint32_t outer_len = over + p->ip_len;

	if (outer_len > mtu) {
		if (p->no_frag && !p->icmp_err)
			return icmp_reply(buf, off, p, mtu > over ? mtu - over : 0, res);
		return encap_drop(res, FWD_DROP_TOO_BIG);
	}

	uint32_t hdr = ETH_HLEN + over;   /* bytes written before the inner packet */

	if (off + p->l2 < hdr)
		return encap_drop(res, FWD_DROP_NO_HEADROOM);

	/* o[0..12) ends before f: hdr >= 50 > l2 + 12, so the MACs are read before
	 * the outer headers overwrite the input's L2 header. */
	uint8_t *f = buf + off, *o = f + p->l2 - hdr;
	const uint8_t *dmac = node->has_dst_mac ? node->dst_mac : f + 6;
	const uint8_t *smac = node->has_src_mac ? node->src_mac : f;

	if (s->use_nexthops) {   /* live: the route's egress and neighbour decide */
		const struct fwd_nexthop *nh = &t->nexthops[pi];

		if (!nh->ifindex)
			return encap_drop(res, FWD_DROP_NO_NEXTHOP);
		dmac = nh->dst_mac;
		smac = nh->src_mac;
		res->egress_ifindex = nh->ifindex;
	}
	memcpy(o, dmac, 6);
	memcpy(o + 6, smac, 6);

	uint8_t *h = o + ETH_HLEN, *u = h + iph, *g = u + 8;
	uint32_t udp_len = outer_len - iph;
	/* GUE: hlen (32-bit words after the base header), inner proto, flags 0 |
	 * private data (gue_lo above) */
	uint32_t gue_hi = (1 + hop_bytes / 4) << 8 | (p->family == 4 ? 4 : 41);

	/* UDP: sport, 19523, length, checksum 0 (set below over IPv6) */
	store_be64(u, (uint64_t)p->gue_sport << 48 | (uint64_t)FWD_GUE_PORT << 32 |
			      (uint64_t)udp_len << 16);
	store_be64(g, (uint64_t)gue_hi << 48 | gue_lo);
	if (hop_bytes == 4)
		memcpy(g + 8, hop, 4);
	else if (hop_bytes == 16)
		memcpy(g + 8, hop, 16);
	if (iph == 20) {
		store_be16(o + 12, ETH_P_IPV4);
		/* 45 00 len | id 0, DF | ttl 64, udp, checksum (constant words and
		 * both addresses are in csum_outer) */
		store_be64(h, 0x4500000000004000ull | (uint64_t)outer_len << 32);
		store_be32(h + 8, (uint32_t)(64 << 8 | IPPROTO_UDP_) << 16 |
					  csum_finish(t->csum_outer[pi] + outer_len));
		memcpy(h + 12, tsrc, 4);
		memcpy(h + 16, pa->bytes, 4);
	} else {
		store_be16(o + 12, ETH_P_IPV6);
		store_be64(h, 0x6000000000000000ull | (uint64_t)udp_len << 16 |
				      IPPROTO_UDP_ << 8 | 64);
		memcpy(h + 8, tsrc, 16);
		memcpy(h + 24, pa->bytes, 16);

		/* the inner packet, the pseudo header (addresses in csum_outer), UDP
		 * and GUE header words, the hop */
		uint32_t sum = csum_be16(csum_acc(0, p->ip, p->ip_len)) + t->csum_outer[pi] +
			       csum_pseudo6(udp_len, IPPROTO_UDP_) + p->gue_sport + FWD_GUE_PORT +
			       udp_len + gue_hi + gue_lo + hop_sum;
		uint16_t c = csum_finish(sum);

		store_be16(u + 6, c ? c : 0xffff);
	}
	res->out_off = off + p->l2 - hdr;
	res->out_len = hdr + p->ip_len;
	return FWD_FORWARD;
}

#endif
