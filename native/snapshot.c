/*
 * snapshot.c - builds and frees the immutable data-plane snapshot.
 *
 * A snapshot is what workers read per packet: node settings, binds and, per
 * table, the hash key, backend addresses and rows. Everything is copied (the
 * tables go on changing while workers still read an old snapshot), and the
 * input is validated here so the packet core can trust it.
 */
#include <stdlib.h>
#include <string.h>

#include "fwd_api.h"
#include "fwd_internal.h"
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

/* Copy a bind with the unused address bytes (IPv4: 4..15) cleared. */
static void bind_copy(struct fwd_bind_spec *dst, const struct fwd_bind_spec *src)
{
	uint32_t alen = src->prefix.family == 4 ? 4 : 16;

	*dst = *src;
	memset(dst->prefix.bytes + alen, 0, sizeof(dst->prefix.bytes) - alen);
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
		bind_copy(&s->binds[i], &binds[i]);
	for (uint32_t i = 0; i < ntables; i++) {
		struct fwd_snap_table *st = calloc(1, sizeof(*st));

		if (!st) {
			fwd_snapshot_free(s);
			return NULL;
		}
		fwd_table_snap_fill(tables[i], st);
		s->tables[i] = st;
		s->ntables = i + 1;
	}
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
	return 0;
}
