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

/*
 * What gue_encap reads of one backend, 48 bytes together (snapshot.c): as the
 * primary, the outer IP header's two addresses and checksum words; as the
 * secondary, the GUE hop.
 */
struct fwd_snap_encap {
	/* tunnel source of the backend's family then the backend's address:
	 * IPv4 bytes 0..8, IPv6 bytes 0..32. The address, as a hop, is at hop_len. */
	uint8_t addrs[32];
	/* one's complement sums folded to 16 bits: IPv4 outer header's constant
	 * words and both addresses / IPv6 pseudo header's addresses */
	uint32_t csum_outer;
	uint32_t hop_sum;     /* the address's own words (as a GUE hop) */
	uint32_t hop_lo;      /* GUE private data low word with this hop: type 0/1, index 0, count 1 */
	uint8_t family;       /* 4 or 6 */
	uint8_t hop_len;      /* 4 or 16; 0 in struct fwd_snap_table.no_hop */
	uint8_t has_src;      /* the node has a tunnel source of this family */
	uint8_t plain;        /* family when has_src, else 0 (gue_encap_plain's one test) */
};

struct fwd_snap_table {
	uint8_t hash_key[16];
	uint64_t sip_init[4];   /* SipHash state after keying with hash_key (snapshot.c) */
	uint32_t nbackends;
	struct fwd_addr backends[FWD_MAX_BACKENDS];
	struct fwd_snap_encap encap[FWD_MAX_BACKENDS];   /* per backend (snapshot.c) */
	struct fwd_snap_encap no_hop;                     /* all zero: the GUE header without hops */
	struct fwd_row rows[FWD_ROWS];
	struct fwd_nexthop nexthops[FWD_MAX_BACKENDS];   /* used when the snapshot says so */
};

/*
 * A bind compiled from its spec: prefix and mask as raw words in memory order
 * (an address is loaded with memcpy, so a match is XOR and AND, no byte
 * swaps). IPv4 uses word 0's first 4 bytes; the rest of both words is zero.
 * The core matches the per-family rules fwd_snap_link derives from these and
 * reads hash_fields and table here.
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

/* An IPv4 bind as one 16-byte rule: prefix and mask as raw 32-bit words. */
struct fwd_snap_rule4 {
	uint32_t net, mask;
	uint16_t port_lo, port_hi;
	uint16_t bind;   /* index into fwd_snapshot.binds */
	uint8_t proto;
};

/* An IPv6 bind as the IPv6 path scans them: prefix and mask as raw words. */
struct fwd_snap_rule6 {
	uint64_t net[2], mask[2];
	uint16_t port_lo, port_hi;
	uint16_t bind;   /* index into fwd_snapshot.binds */
	uint8_t proto;
};

struct fwd_snapshot {
	struct fwd_node_spec node;
	uint32_t nbinds;
	struct fwd_snap_bind binds[FWD_MAX_BINDS];
	/* the binds of each family, in config order, as the per-family paths scan them (fwd_snap_link) */
	uint32_t nrules4, nrules6;
	struct fwd_snap_rule4 rules4[FWD_MAX_BINDS];
	struct fwd_snap_rule6 rules6[FWD_MAX_BINDS];
	/* per bind (fwd_snap_link): its table's sip_init advanced through the
	 * message-free first half-round (fwd_sip_advance), so the hash starts one
	 * load after the bind, and the table itself */
	uint64_t bind_sip[FWD_MAX_BINDS][4];
	const struct fwd_snap_table *bind_table[FWD_MAX_BINDS];
	uint32_t ntables;
	struct fwd_snap_table *tables[FWD_MAX_TABLES];
	uint8_t use_nexthops;   /* set by fwd_snapshot_set_nexthop */
	/* outer MACs from the input frame: no node MACs, no next hops (fwd_snap_link, set_nexthop) */
	uint8_t plain_l2;
	/* largest outer packet of the plain encapsulation (gue_encap4/6_hops): the
	 * MTU capped by what the length field can say, 0 unless plain_l2 */
	uint32_t plain_mtu4, plain_mtu6;
	uint8_t published;      /* set by fwd_runtime_publish: no more changes */
};

/*
 * snapshot.c's derivations, for it and for native/tests/core_smoke.c (which
 * builds snapshots by hand): a bind as the core tests it, a table's keyed
 * SipHash state and per-backend encapsulation data (after backends/hash_key
 * are set), and the per-bind copies of table data.
 */
__attribute__((visibility("hidden"))) void fwd_snap_bind_compile(struct fwd_snap_bind *dst,
								  const struct fwd_bind_spec *src);
__attribute__((visibility("hidden"))) void fwd_snap_table_precompute(struct fwd_snap_table *st,
								      const struct fwd_node_spec *node);
/* Last step, once binds, tables and node are in place: rules4/6, the per-bind copies, plain_l2. */
__attribute__((visibility("hidden"))) void fwd_snap_link(struct fwd_snapshot *s);

#endif
