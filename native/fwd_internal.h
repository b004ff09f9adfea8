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
	uint32_t nbackends;
	struct fwd_addr backends[FWD_MAX_BACKENDS];
	struct fwd_row rows[FWD_ROWS];
	struct fwd_nexthop nexthops[FWD_MAX_BACKENDS];   /* used when the snapshot says so */
};

struct fwd_snapshot {
	struct fwd_node_spec node;
	uint32_t nbinds;
	struct fwd_bind_spec binds[FWD_MAX_BINDS];
	uint32_t ntables;
	struct fwd_snap_table *tables[FWD_MAX_TABLES];
	uint8_t use_nexthops;   /* set by fwd_snapshot_set_nexthop */
	uint8_t published;      /* set by fwd_runtime_publish: no more changes */
};

#endif
