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

/* The extension headers walked: hop-by-hop 0, routing 43, fragment 44, destination options 60. */
#define IPV6_EXT_MASK (1ull << 0 | 1ull << 43 | 1ull << 44 | 1ull << 60)

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

	for (int n = 0; h < 64 && (IPV6_EXT_MASK >> h & 1); n++) {
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

/* Position in s->rules4 of the first IPv4 bind holding the destination (raw word w), or nrules4. */
static inline uint32_t vip_find4(const struct fwd_snapshot *s, uint32_t w)
{
	uint32_t k, n = s->nrules4;

	for (k = 0; k < n; k++)
		if (((w ^ s->rules4[k].net) & s->rules4[k].mask) == 0)
			break;
	return k;
}

/* The same in s->rules6 for an IPv6 destination (raw words w), or nrules6. */
static inline uint32_t vip_find6(const struct fwd_snapshot *s, const uint64_t w[2])
{
	uint32_t k, n = s->nrules6;

	for (k = 0; k < n; k++) {
		const struct fwd_snap_rule6 *r = &s->rules6[k];

		if ((((w[0] ^ r->net[0]) & r->mask[0]) | ((w[1] ^ r->net[1]) & r->mask[1])) == 0)
			break;
	}
	return k;
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
 * Inlined: a struct pkt whose address escapes to a call lives in memory, not
 * in registers, on every frame's path.
 */
static inline __attribute__((always_inline)) int quote_parse(struct pkt *p, const uint8_t *q, uint32_t qn)
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
	p->reply_ok = 0;   /* never an ICMP error about an ICMP error */
	p->first_vip = 0;   /* the reversed destination may be any bind's */
	p->first_rule = 0;
	return FWD_FORWARD;
}

/*
 * From the EtherType on, l2 (14 or 18) a constant: pkt_parse inlines this
 * once per header length, so the offsets fold into the loads.
 */
static inline __attribute__((always_inline)) int
pkt_parse_l3(const struct fwd_snapshot *s, const uint8_t *f, uint32_t len, struct pkt *p,
	     uint32_t l2, uint16_t type)
{
	const uint8_t *ip;
	uint32_t avail, hl;
	uint16_t frag_id = 0;
	uint8_t proto;
	int frag = 0;

	ip = f + l2;
	avail = len - l2;
	p->ip = ip;
	p->l2 = l2;
	p->sport = 0;
	p->dport = 0;

	if (type == ETH_P_IPV4) {
		if (avail < 20)
			return parse_drop(p, FWD_DROP_TRUNCATED);
		if ((uint8_t)(ip[0] - 0x45) > 0x4f - 0x45)   /* version 4, IHL >= 5 */
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
		p->first_rule = vip_find4(s, (uint32_t)p->dst_w[0]);
		if (p->first_rule == s->nrules4)
			return FWD_PASS;
		p->first_vip = s->rules4[p->first_rule].bind;
		frag = (load_be16(ip + 6) & 0x3fff) != 0;
		frag_id = load_be16(ip + 4);
		p->reply_ok = ip[6] & 0x40;   /* DF */
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
		p->first_rule = vip_find6(s, p->dst_w);
		if (p->first_rule == s->nrules6)
			return FWD_PASS;
		p->first_vip = s->rules6[p->first_rule].bind;
		proto = ip[6];
		hl = 40;
		switch (ipv6_ext_walk(ip, p->ip_len, &proto, &hl, &frag, &frag_id)) {
		case EXT_TOO_MANY:
			return parse_drop(p, FWD_DROP_BAD_IPV6);
		case EXT_TRUNCATED:
			return parse_drop(p, FWD_DROP_TRUNCATED);
		}
		p->reply_ok = 1;
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

static inline int pkt_parse(const struct fwd_snapshot *s, const uint8_t *f, uint32_t len, struct pkt *p)
{
	uint16_t type;

	if (len < ETH_HLEN)
		return parse_drop(p, FWD_DROP_TRUNCATED);
	type = load_be16(f + 12);
	if (type != ETH_P_8021Q)
		return pkt_parse_l3(s, f, len, p, ETH_HLEN, type);
	if (len < ETH_HLEN + VLAN_HLEN)
		return parse_drop(p, FWD_DROP_TRUNCATED);
	return pkt_parse_l3(s, f, len, p, ETH_HLEN + VLAN_HLEN, load_be16(f + 16));
}

#endif
