/*
 * snapshot.c - builds and frees the immutable data-plane snapshot.
 *
 * A snapshot is what workers read per packet: node settings, binds and, per
 * table, the hash key, backend addresses and rows. Everything is copied (the
 * tables go on changing while workers still read an old snapshot), and the
 * input is validated here so the packet core can trust it. What the core would
 * otherwise derive per packet from the config is derived here once: binds as
 * raw masks, the keyed SipHash state, per-backend outer addresses and
 * checksum words.
 */
#include <stdlib.h>
#include <string.h>

#include "core_priv.h"
#include "siphash.h"
#include "table_priv.h"

/* Nonzero when the bits of a's bytes past prefix_len are all zero. */
static int prefix_host_bits_zero(const struct fwd_addr *a, uint32_t prefix_len, uint32_t alen)
{
	for (uint32_t i = prefix_len / 8; i < alen; i++) {
		uint32_t keep = i * 8 >= prefix_len ? 0 : prefix_len - i * 8; /* 1..7 here */
		uint8_t host = (uint8_t)(0xFFu >> keep);

		if (a->bytes[i] & host)
			return 0;
	}
	return 1;
}

static int bind_valid(const struct fwd_bind_spec *b, uint32_t ntables)
{
	uint32_t alen;

	if (b->prefix.family != 4 && b->prefix.family != 6)
		return 0;
	alen = b->prefix.family == 4 ? 4 : 16;
	if (b->prefix_len > alen * 8 || !prefix_host_bits_zero(&b->prefix, b->prefix_len, alen))
		return 0;
	if (b->proto != 6 && b->proto != 17)
		return 0;
	if (b->hash_fields == 0 || (b->hash_fields & ~0xFu))
		return 0;
	return b->table < ntables;
}

static int snapshot_args_valid(const struct fwd_node_spec *node, const struct fwd_bind_spec *binds,
			       uint32_t nbinds, struct fwd_table **tables, uint32_t ntables)
{
	if (!node || nbinds > FWD_MAX_BINDS || ntables > FWD_MAX_TABLES)
		return 0;
	if ((nbinds && !binds) || (ntables && !tables))
		return 0;
	for (uint32_t i = 0; i < ntables; i++)
		if (!tables[i])
			return 0;
	for (uint32_t i = 0; i < nbinds; i++)
		if (!bind_valid(&binds[i], ntables))
			return 0;
	return 1;
}

/* A bind in the form the packet core tests (struct fwd_snap_bind). */
void fwd_snap_bind_compile(struct fwd_snap_bind *dst, const struct fwd_bind_spec *src)
{
	uint32_t alen = src->prefix.family == 4 ? 4 : 16;
	uint8_t net[16] = {0}, mask[16] = {0};

	for (uint32_t i = 0; i < alen; i++) {
		uint32_t bits = src->prefix_len > i * 8 ? src->prefix_len - i * 8 : 0;

		mask[i] = bits >= 8 ? 0xff : (uint8_t)(0xff00u >> bits);
		net[i] = src->prefix.bytes[i] & mask[i];
	}
	memcpy(dst->net, net, 16);
	memcpy(dst->mask, mask, 16);
	dst->family = src->prefix.family;
	dst->proto = src->proto;
	dst->hash_fields = src->hash_fields;
	dst->port_lo = src->port_lo;
	dst->port_hi = src->port_hi;
	dst->table = src->table;
}

/* Sum of the big-endian 16-bit words of an address (4 or 16 bytes). */
static uint32_t addr_words(const struct fwd_addr *a)
{
	uint32_t sum = 0;

	for (uint32_t i = 0; i < (a->family == 4 ? 4u : 16u); i += 2)
		sum += load_be16(a->bytes + i);
	return sum;
}

/*
 * What gue_encap would otherwise recompute per packet: the keyed SipHash
 * state, and per backend the outer addresses and checksum words that depend
 * only on the backend and the node's tunnel source of its family.
 */
void fwd_snap_table_precompute(struct fwd_snap_table *st, const struct fwd_node_spec *node)
{
	uint64_t k0 = fwd_load_le64(st->hash_key), k1 = fwd_load_le64(st->hash_key + 8);
	struct fwd_addr src4 = {.family = 4}, src6 = {.family = 6};

	st->sip_init[0] = FWD_SIP_C0 ^ k0;
	st->sip_init[1] = FWD_SIP_C1 ^ k1;
	st->sip_init[2] = FWD_SIP_C2 ^ k0;
	st->sip_init[3] = FWD_SIP_C3 ^ k1;
	memcpy(src4.bytes, node->tunnel_src4, 4);
	memcpy(src6.bytes, node->tunnel_src6, 16);
	memset(&st->no_hop, 0, sizeof(st->no_hop));
	for (uint32_t i = 0; i < st->nbackends; i++) {
		const struct fwd_addr *a = &st->backends[i];
		struct fwd_snap_encap *e = &st->encap[i];
		uint32_t alen = a->family == 4 ? 4 : 16;

		memset(e, 0, sizeof(*e));
		memcpy(e->addrs, a->family == 4 ? src4.bytes : src6.bytes, alen);
		memcpy(e->addrs + alen, a->bytes, alen);
		e->family = a->family;
		e->hop_len = (uint8_t)alen;
		e->has_src = a->family == 4 ? node->has_tunnel_src4 : node->has_tunnel_src6;
		e->hop_sum = addr_words(a);
		e->hop_lo = a->family == 4 ? 1 : 1 << 16 | 1;
		if (a->family == 4)   /* 45 00 | DF | ttl 64, udp | both addresses */
			e->csum_outer = 0x4500 + 0x4000 + (64 << 8 | IPPROTO_UDP_) +
					addr_words(&src4) + e->hop_sum;
		else
			e->csum_outer = addr_words(&src6) + e->hop_sum;
		/* folded to 16 bits (the same sum modulo 0xffff, never 0 unless all words are):
		 * the IPv4 outer header's checksum then needs one fold per packet (csum_finish2) */
		e->csum_outer = (e->csum_outer & 0xffff) + (e->csum_outer >> 16);
		e->csum_outer = (e->csum_outer & 0xffff) + (e->csum_outer >> 16);
		e->plain = e->has_src ? e->family : 0;
	}
}

void fwd_snap_link(struct fwd_snapshot *s)
{
	s->nrules4 = 0;
	s->nrules6 = 0;
	for (uint32_t i = 0; i < s->nbinds; i++) {
		const struct fwd_snap_bind *b = &s->binds[i];

		if (b->family == 4) {
			struct fwd_snap_rule4 *r = &s->rules4[s->nrules4++];

			memcpy(&r->net, b->net, 4);   /* the address bytes, as the core loads them */
			memcpy(&r->mask, b->mask, 4);
			r->port_lo = b->port_lo;
			r->port_hi = b->port_hi;
			r->bind = (uint16_t)i;
			r->proto = b->proto;
		} else {
			struct fwd_snap_rule6 *r = &s->rules6[s->nrules6++];

			memcpy(r->net, b->net, 16);
			memcpy(r->mask, b->mask, 16);
			r->port_lo = b->port_lo;
			r->port_hi = b->port_hi;
			r->bind = (uint16_t)i;
			r->proto = b->proto;
		}
	}
	for (uint32_t i = 0; i < s->nbinds; i++) {
		const struct fwd_snap_table *t =
			s->binds[i].table < s->ntables ? s->tables[s->binds[i].table] : NULL;

		s->bind_table[i] = t;
		if (t) {
			memcpy(s->bind_sip[i], t->sip_init, sizeof(s->bind_sip[i]));
			fwd_sip_advance(s->bind_sip[i]);   /* flow_hash starts from here */
		}
	}
	s->plain_l2 = !s->use_nexthops && !s->node.has_dst_mac && !s->node.has_src_mac;
	s->plain_mtu4 = s->plain_l2 ? (s->node.mtu < 65535 ? s->node.mtu : 65535) : 0;
	s->plain_mtu6 = s->plain_l2 ? (s->node.mtu < 40 + 65535 ? s->node.mtu : 40 + 65535) : 0;
}

struct fwd_snapshot *fwd_snapshot_new(const struct fwd_node_spec *node,
				      const struct fwd_bind_spec *binds, uint32_t nbinds,
				      struct fwd_table **tables, uint32_t ntables)
{
	struct fwd_snapshot *s;

	if (!snapshot_args_valid(node, binds, nbinds, tables, ntables))
		return NULL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->node = *node;
	s->nbinds = nbinds;
	for (uint32_t i = 0; i < nbinds; i++)
		fwd_snap_bind_compile(&s->binds[i], &binds[i]);
	for (uint32_t i = 0; i < ntables; i++) {
		struct fwd_snap_table *st = calloc(1, sizeof(*st));

		if (!st) {
			fwd_snapshot_free(s);
			return NULL;
		}
		fwd_table_snap_fill(tables[i], st);
		fwd_snap_table_precompute(st, node);
		s->tables[i] = st;
		s->ntables = i + 1;
	}
	fwd_snap_link(s);
	return s;
}

void fwd_snapshot_free(struct fwd_snapshot *s)
{
	if (!s)
		return;
	for (uint32_t i = 0; i < s->ntables; i++)
		free(s->tables[i]);
	free(s);
}

int fwd_snapshot_set_nexthop(struct fwd_snapshot *s, uint32_t table, uint32_t backend,
			     const struct fwd_nexthop *nh)
{
	if (!s || !nh || s->published || table >= s->ntables || !s->tables[table] ||
	    backend >= s->tables[table]->nbackends)
		return -1;
	s->tables[table]->nexthops[backend] = *nh;
	s->use_nexthops = 1;
	s->plain_l2 = 0;
	s->plain_mtu4 = 0;
	s->plain_mtu6 = 0;
	return 0;
}
