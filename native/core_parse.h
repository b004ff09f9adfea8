/*
 * core_parse.h - classification of one frame (docs/packet-core.md §2): Ethernet
 * with at most one 802.1Q tag, the IPv4/IPv6 header checks, the VIP test, the
 * IPv6 extension chain and the per-protocol rules that decide which flow is
 * hashed. Read only; every read is checked against the frame length or, past
 * the IP header, against the IP length (Ethernet padding is not packet).
 */
#ifndef FWD_CORE_PARSE_H
#define FWD_CORE_PARSE_H

#include "core_priv.h"

enum { EXT_OK, EXT_TOO_MANY, EXT_TRUNCATED };

/*
 * Walk hop-by-hop (0), routing (43), destination options (60) and fragment
 * (44) headers of the IPv6 packet ip[0..end) from *off. On EXT_OK *nh is the
 * upper-layer protocol and *off its start. *frag_id takes the low 16 bits of
 * the identification of the last fragment header seen.
 */
static inline int ipv6_ext_walk(const uint8_t *ip, uint32_t end, uint8_t *nh, uint32_t *off,
			 int *frag, uint16_t *frag_id)
{
	uint32_t o = *off;
	uint8_t h = *nh;

	for (int n = 0; h == 0 || h == 43 || h == 60 || h == 44; n++) {
		uint32_t hl;

		if (n == IPV6_MAX_EXT)
			return EXT_TOO_MANY;
		if (end - o < 8)   /* every extension header is at least 8 bytes */
			return EXT_TRUNCATED;
		if (h == 44) {
			hl = 8;
			*frag = 1;
			*frag_id = load_be16(ip + o + 6);
		} else {
			hl = ((uint32_t)ip[o + 1] + 1) * 8;
			if (hl > end - o)
				return EXT_TRUNCATED;
		}
		h = ip[o];
		o += hl;
	}
	*nh = h;
	*off = o;
	return EXT_OK;
}

/* Index of the first bind whose prefix holds the destination (words w0, w1), or s->nbinds. */
static inline uint32_t vip_find(const struct fwd_snapshot *s, uint8_t family, uint64_t w0, uint64_t w1)
{
	uint32_t i, n = s->nbinds;

	for (i = 0; i < n; i++)
		if (bind_holds(&s->binds[i], family, w0, w1))
			break;
	return i;
}

static inline int parse_drop(struct pkt *p, uint8_t reason)
{
	p->reason = reason;
	return FWD_DROP;
}

/*
 * ICMPv4 type 3 / ICMPv6 type 2: the quote q[0..qn) must be a complete IP
 * header of the outer's version with >= 4 bytes of TCP/UDP after it. The flow
 * is the quoted one reversed. Its length field is not checked (quotes are cut).
 */
static int quote_parse(struct pkt *p, const uint8_t *q, uint32_t qn)
{
	const uint8_t *qsrc, *qdst;
	uint32_t hl;
	uint8_t proto;

	if (p->family == 4) {
		if (qn < 20 || (q[0] >> 4) != 4 || (q[0] & 15) < 5)
			return parse_drop(p, FWD_DROP_BAD_ICMP);
		hl = (uint32_t)(q[0] & 15) * 4;
		if (hl > qn)
			return parse_drop(p, FWD_DROP_BAD_ICMP);
		proto = q[9];
		qsrc = q + 12;
		qdst = q + 16;
	} else {
		int frag = 0;
		uint16_t id = 0;

		if (qn < 40 || (q[0] >> 4) != 6)
			return parse_drop(p, FWD_DROP_BAD_ICMP);
		proto = q[6];
		hl = 40;
		if (ipv6_ext_walk(q, qn, &proto, &hl, &frag, &id) != EXT_OK)
			return parse_drop(p, FWD_DROP_BAD_ICMP);
		qsrc = q + 8;
		qdst = q + 24;
	}
	if ((proto != IPPROTO_TCP_ && proto != IPPROTO_UDP_) || qn - hl < 4)
		return parse_drop(p, FWD_DROP_BAD_ICMP);
	p->proto = proto;
	p->src = qdst;
	p->dst = qsrc;
	addr_load_words(p->family, qsrc, p->dst_w);
	p->sport = load_be16(q + hl + 2);
	p->dport = load_be16(q + hl);
	p->hint = p->sport;
	p->kind = PKT_PORTS;
	p->icmp_err = 1;
	p->first_vip = 0;   /* the reversed destination may be any bind's */
	return FWD_FORWARD;
}

static inline int pkt_parse(const struct fwd_snapshot *s, const uint8_t *f, uint32_t len, struct pkt *p)
{
	const uint8_t *ip;
	uint32_t l2 = ETH_HLEN, avail, hl;
	uint16_t type, frag_id = 0;
	uint8_t proto;
	int frag = 0;

	if (len < ETH_HLEN)
		return parse_drop(p, FWD_DROP_TRUNCATED);
	type = load_be16(f + 12);
	if (type == ETH_P_8021Q) {
		if (len < ETH_HLEN + VLAN_HLEN)
			return parse_drop(p, FWD_DROP_TRUNCATED);
		type = load_be16(f + 16);
		l2 += VLAN_HLEN;
	}
	ip = f + l2;
	avail = len - l2;
	p->ip = ip;
	p->l2 = l2;
	p->sport = 0;
	p->dport = 0;
	p->icmp_err = 0;

	if (type == ETH_P_IPV4) {
		if (avail < 20)
			return parse_drop(p, FWD_DROP_TRUNCATED);
		if ((ip[0] >> 4) != 4 || (ip[0] & 15) < 5)
			return parse_drop(p, FWD_DROP_BAD_IPV4);
		hl = (uint32_t)(ip[0] & 15) * 4;
		p->ip_len = load_be16(ip + 2);
		if (p->ip_len < hl)
			return parse_drop(p, FWD_DROP_BAD_IPV4);
		if (p->ip_len > avail)
			return parse_drop(p, FWD_DROP_TRUNCATED);
		p->family = 4;
		p->src = ip + 12;
		p->dst = ip + 16;
		addr_load_words(4, p->dst, p->dst_w);
		p->first_vip = vip_find(s, 4, p->dst_w[0], 0);
		if (p->first_vip == s->nbinds)
			return FWD_PASS;
		frag = (load_be16(ip + 6) & 0x3fff) != 0;
		frag_id = load_be16(ip + 4);
		p->no_frag = (ip[6] & 0x40) != 0;
		proto = ip[9];
	} else if (type == ETH_P_IPV6) {
		if (avail < 40)
			return parse_drop(p, FWD_DROP_TRUNCATED);
		p->ip_len = 40u + load_be16(ip + 4);
		if ((ip[0] >> 4) != 6 || p->ip_len == 40)
			return parse_drop(p, FWD_DROP_BAD_IPV6);
		if (p->ip_len > avail)
			return parse_drop(p, FWD_DROP_TRUNCATED);
		p->family = 6;
		p->src = ip + 8;
		p->dst = ip + 24;
		addr_load_words(6, p->dst, p->dst_w);
		p->first_vip = vip_find(s, 6, p->dst_w[0], p->dst_w[1]);
		if (p->first_vip == s->nbinds)
			return FWD_PASS;
		proto = ip[6];
		hl = 40;
		switch (ipv6_ext_walk(ip, p->ip_len, &proto, &hl, &frag, &frag_id)) {
		case EXT_TOO_MANY:
			return parse_drop(p, FWD_DROP_BAD_IPV6);
		case EXT_TRUNCATED:
			return parse_drop(p, FWD_DROP_TRUNCATED);
		}
		p->no_frag = 1;
	} else {
		return FWD_PASS;
	}

	const uint8_t *l4 = ip + hl;
	uint32_t l4len = p->ip_len - hl;

	if (proto == IPPROTO_TCP_ || proto == IPPROTO_UDP_) {
		p->proto = proto;
		if (frag) {
			p->kind = PKT_FRAG;
			p->hint = frag_id;
			return FWD_FORWARD;
		}
		if (proto == IPPROTO_TCP_) {
			if (l4len < 20)
				return parse_drop(p, FWD_DROP_TRUNCATED);
			if ((l4[12] >> 4) < 5)
				return parse_drop(p, FWD_DROP_BAD_L4);
		} else {
			if (l4len < 8)
				return parse_drop(p, FWD_DROP_TRUNCATED);
			if (load_be16(l4 + 4) < 8)
				return parse_drop(p, FWD_DROP_BAD_L4);
		}
		p->sport = load_be16(l4);
		p->dport = load_be16(l4 + 2);
		p->hint = p->sport;
		p->kind = PKT_PORTS;
		return FWD_FORWARD;
	}

	uint8_t icmp = p->family == 4 ? IPPROTO_ICMP4 : IPPROTO_ICMP6;

	if (proto != icmp || frag)   /* ICMP fragments are not classified: PASS */
		return FWD_PASS;
	if (l4len < 1)
		return parse_drop(p, FWD_DROP_TRUNCATED);
	if (l4[0] == (p->family == 4 ? 8 : 128)) {
		if (!s->node.forward_icmp_echo)
			return FWD_PASS;
		if (l4len < 8)
			return parse_drop(p, FWD_DROP_TRUNCATED);
		p->proto = icmp;
		p->kind = PKT_ECHO;
		/* IPv4 identification / low 16 bits of the IPv6 flow label */
		p->hint = load_be16(ip + (p->family == 4 ? 4 : 2));
		return FWD_FORWARD;
	}
	if (l4[0] != (p->family == 4 ? 3 : 2))
		return FWD_PASS;
	return quote_parse(p, l4 + 8, l4len < 8 ? 0 : l4len - 8);
}

#endif
