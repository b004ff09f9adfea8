/*
 * core_priv.h - what core.c and its two parts (core_parse.h, core_encap.h) share: the parsed view of
 * one frame (struct pkt), byte-order loads/stores that never alias packet
 * bytes, and the RFC 1071 checksum helpers.
 *
 * core_parse.h classifies a frame into a struct pkt (docs/packet-core.md §2),
 * core.c matches the bind, hashes and picks the row (§3, §6), core_encap.h writes
 * the GUE frame or the ICMP error reply (§4, §5).
 */
#ifndef FWD_CORE_PRIV_H
#define FWD_CORE_PRIV_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fwd_internal.h"

#define ETH_HLEN 14
#define VLAN_HLEN 4
#define ETH_P_IPV4 0x0800
#define ETH_P_IPV6 0x86dd
#define ETH_P_8021Q 0x8100
#define IPPROTO_ICMP4 1
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_ICMP6 58
#define IPV6_MAX_EXT 8

/* How the bind is chosen (docs/packet-core.md §2). */
enum pkt_kind {
	PKT_PORTS,   /* TCP/UDP or reversed ICMP-error quote: prefix, proto, dport range */
	PKT_FRAG,    /* TCP/UDP fragment: first bind with prefix and proto; ports 0 */
	PKT_ECHO,    /* ICMP echo request: first bind holding the destination; ports 0 */
};

/* One classified frame. Addresses point into the frame (or the ICMP quote). */
struct pkt {
	const uint8_t *ip;     /* start of the IP packet (after L2) */
	const uint8_t *src;    /* flow source address (reversed for ICMP errors) */
	const uint8_t *dst;    /* flow destination address */
	uint64_t dst_w[2];     /* dst as addr_load_words gives it (bind matching) */
	uint32_t l2;           /* 14 or 18 */
	uint32_t ip_len;       /* IPv4 total length or 40 + IPv6 payload length */
	uint32_t first_vip;    /* first bind whose prefix holds the outer destination */
	uint32_t first_rule;   /* where bind matching starts in rules4 / rules6 */
	uint16_t sport, dport; /* host order; 0 for PKT_FRAG / PKT_ECHO */
	uint16_t hint;         /* GUE source port hint */
	uint8_t family;        /* 4 or 6 */
	uint8_t proto;         /* 6/17 (the quoted one for ICMP errors); ICMP for echo */
	uint8_t kind;          /* enum pkt_kind */
	/* non-zero when an oversize frame gets an ICMP reply: the inner packet may not be
	 * fragmented (IPv4 DF: the raw flags byte, so no shift or mask per frame; any IPv6)
	 * and is not itself an ICMP error */
	uint8_t reply_ok;
	uint8_t reason;        /* FWD_DROP_* when pkt_parse returns FWD_DROP */
	/* set by core.c from the row, read by gue_encap (not read back from res:
	 * a narrow load from a wider store would stall on store forwarding) */
	uint16_t primary, secondary, gue_sport;
};

/* ---- byte order, without aliasing packet bytes ---- */

static inline uint16_t load_be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

/* Big-endian stores as one bswap + one unaligned store (no aliasing casts). */
static inline void store_be16(uint8_t *p, uint16_t v)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	v = __builtin_bswap16(v);
#endif
	memcpy(p, &v, 2);
}

static inline void store_be32(uint8_t *p, uint32_t v)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	v = __builtin_bswap32(v);
#endif
	memcpy(p, &v, 4);
}

static inline void store_be64(uint8_t *p, uint64_t v)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	v = __builtin_bswap64(v);
#endif
	memcpy(p, &v, 8);
}

/* An address as the raw words of struct fwd_snap_bind (IPv4: 4 bytes in w[0], w[1] = 0). */
static inline void addr_load_words(uint8_t family, const uint8_t *a, uint64_t w[2])
{
	if (family == 4) {
		uint32_t v;

		memcpy(&v, a, 4);
		w[0] = v;
		w[1] = 0;
	} else {
		memcpy(&w[0], a, 8);
		memcpy(&w[1], a + 8, 8);
	}
}

/* ---- RFC 1071 checksum ----
 * Header words are summed as host values of their big-endian fields (never
 * read back from bytes just stored: that would stall on store forwarding);
 * runs of bytes (payload, IPv6 addresses) go through csum_acc and csum_be16.
 * A 32-bit sum of 16-bit values is folded by csum_finish, whose result is
 * stored with store_be16.
 */

/*
 * Add p[0..n) to a native-order ones' complement accumulator. p must sit at
 * an even offset of the summed region; an odd tail counts as padded with 0.
 */
static inline uint64_t csum_acc(uint64_t sum, const uint8_t *p, size_t n)
{
	uint64_t v, a = 0, b = 0;

	/* 16 bytes per round into two accumulators of 32-bit halves: no carry to
	 * propagate (2^32 = 1 modulo 0xffff; under 2^46 for any IP packet), and
	 * the two chains run side by side */
	for (; n >= 16; p += 16, n -= 16) {
		uint64_t w;

		memcpy(&v, p, 8);
		memcpy(&w, p + 8, 8);
		a += (v & 0xffffffffu) + (v >> 32);
		b += (w & 0xffffffffu) + (w >> 32);
	}
	a += b;
	sum += a;
	sum += sum < a;
	for (; n >= 8; p += 8, n -= 8) {
		memcpy(&v, p, 8);
		sum += v;
		sum += sum < v;
	}
	if (n) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
		unsigned o = 0;

		v = 0;
		if (n & 4) {
			uint32_t w;

			memcpy(&w, p, 4);
			v = w;
			o = 4;
		}
		if (n & 2) {
			uint16_t w;

			memcpy(&w, p + o, 2);
			v |= (uint64_t)w << (8 * o);
			o += 2;
		}
		if (n & 1)
			v |= (uint64_t)p[o] << (8 * o);
#else
		uint8_t tail[8] = {0};

		memcpy(tail, p, n);
		memcpy(&v, tail, 8);
#endif
		sum += v;
		sum += sum < v;
	}
	return sum;
}

/* Fold a csum_acc accumulator to a 16-bit big-endian value (not complemented). */
static inline uint32_t csum_be16(uint64_t sum)
{
	sum = (sum & 0xffffffffu) + (sum >> 32);
	sum = (sum & 0xffffffffu) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	sum = (uint16_t)(sum << 8 | sum >> 8);   /* native words -> big-endian value */
#endif
	return (uint32_t)sum;
}

/* Sum of the big-endian 16-bit words of an IPv4 address. */
static inline uint32_t csum_addr4(const uint8_t *a)
{
	return (uint32_t)load_be16(a) + load_be16(a + 2);
}

/*
 * Fold once and complement: for a sum of two values <= 0xffff (at most
 * 0x1fffe, whose fold is <= 0xffff). Store the result with store_be16.
 */
static inline uint16_t csum_finish2(uint32_t sum)
{
	return (uint16_t)~((sum & 0xffff) + (sum >> 16));
}

/* Fold and complement; store the result with store_be16. */
static inline uint16_t csum_finish(uint32_t sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

#endif
