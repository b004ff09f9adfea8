/*
 * fwd_internal.h - layouts shared by the C files but hidden from Python.
 *
 * A snapshot is what a worker reads per packet: node settings, binds and, per
 * table, the hash key, backend addresses and the 65,536 rows, all copied out
 * of the control plane's fwd_table so it never changes after publication.
 */
#ifndef FWD_INTERNAL_H
#define FWD_INTERNAL_H

#include "fwd_api.h"

struct fwd_row {
	uint16_t primary;    /* backend index or FWD_NONE */
	uint16_t secondary;
};

struct fwd_snap_table {
	uint8_t hash_key[16];
	uint64_t sip_init[4];   /* SipHash state after keying with hash_key (snapshot.c) */
	uint32_t nbackends;
	struct fwd_addr backends[FWD_MAX_BACKENDS];
	/* per backend, precomputed by snapshot.c (one's complement sums, not folded):
	 * csum_outer: IPv4 outer header's constant words and addresses / IPv6 pseudo
	 * header's addresses; csum_addr: the address's own words (as a GUE hop) */
	uint32_t csum_outer[FWD_MAX_BACKENDS];
	uint32_t csum_addr[FWD_MAX_BACKENDS];
	struct fwd_row rows[FWD_ROWS];
	struct fwd_nexthop nexthops[FWD_MAX_BACKENDS];   /* used when the snapshot says so */
};

/*
 * A bind as the packet core tests it: prefix and mask as raw words in memory
 * order (an address is loaded with memcpy, so a match is XOR and AND, no byte
 * swaps). IPv4 uses word 0's first 4 bytes; the rest of both words is zero.
 */
struct fwd_snap_bind {
	uint64_t net[2];
	uint64_t mask[2];
	uint8_t family;
	uint8_t proto;
	uint8_t hash_fields;
	uint16_t port_lo, port_hi;
	uint16_t table;
};

struct fwd_snapshot {
	struct fwd_node_spec node;
	uint32_t nbinds;
	struct fwd_snap_bind binds[FWD_MAX_BINDS];
	/* per bind, its table's sip_init (fwd_snap_link): the hash starts one load after the bind */
	uint64_t bind_sip[FWD_MAX_BINDS][4];
	uint32_t ntables;
	struct fwd_snap_table *tables[FWD_MAX_TABLES];
	uint8_t use_nexthops;   /* set by fwd_snapshot_set_nexthop */
	uint8_t published;      /* set by fwd_runtime_publish: no more changes */
};

/*
 * snapshot.c's derivations, for it and for native/tests/core_smoke.c (which
 * builds snapshots by hand): a bind as the core tests it, a table's keyed
 * SipHash state and per-backend checksum words (after backends/hash_key are
 * set), and the per-bind copies of table data.
 */
__attribute__((visibility("hidden"))) void fwd_snap_bind_compile(struct fwd_snap_bind *dst,
								  const struct fwd_bind_spec *src);
__attribute__((visibility("hidden"))) void fwd_snap_table_precompute(struct fwd_snap_table *st,
								      const struct fwd_node_spec *node);
/* Last step, once binds and tables are in place: the per-bind copies (bind_sip). */
__attribute__((visibility("hidden"))) void fwd_snap_link(struct fwd_snapshot *s);

#endif
