/*
 * fwd_api.h - the C interface Python may call (through cffi) and the back ends use.
 *
 * One source of truth: fwd/_build_native.py feeds the text between the
 * "cdef-begin" and "cdef-end" markers to cffi's cdef(), so that part holds
 * only plain declarations (no #include, literal array sizes, simple #defines).
 * Behaviour is specified in docs/packet-core.md.
 */
#ifndef FWD_API_H
#define FWD_API_H

#include <stdint.h>

/* cdef-begin */

#define FWD_ROWS 65536
#define FWD_MAX_BACKENDS 2048   /* per table */
#define FWD_MAX_TABLES 16
#define FWD_MAX_BINDS 1024
#define FWD_NONE 65535          /* "no backend / no bind / no table" in u16 fields */
#define FWD_MIN_HEADROOM 128    /* bytes a back end must leave before each frame */
#define FWD_GUE_PORT 19523

/* verdicts */
#define FWD_PASS 0     /* not ours: give the frame to the kernel unchanged */
#define FWD_FORWARD 1  /* send the output frame towards the primary backend */
#define FWD_DROP 2     /* discard; fwd_result.reason says why */
#define FWD_REPLY 3    /* send the output frame (ICMP error) back where the input came from */

/* drop reasons (index into fwd_counters.drops) */
#define FWD_DROP_NONE 0
#define FWD_DROP_TRUNCATED 1        /* frame shorter than a header or than the IP length */
#define FWD_DROP_BAD_IPV4 2         /* version/IHL/total length inconsistent */
#define FWD_DROP_BAD_IPV6 3         /* payload length 0 (jumbo) or extension chain too long/bad */
#define FWD_DROP_BAD_L4 4           /* TCP data offset < 5, UDP length < 8 */
#define FWD_DROP_BAD_ICMP 5         /* ICMP error whose quoted packet cannot be parsed */
#define FWD_DROP_NO_BACKEND 6       /* the table row has no backend */
#define FWD_DROP_TOO_BIG 7          /* encapsulated frame > MTU and the inner may be fragmented */
#define FWD_DROP_NO_TUNNEL_SOURCE 8 /* no tunnel source address of the backend's family */
#define FWD_DROP_NO_HEADROOM 9      /* not enough room before/after the frame to rewrite it */
#define FWD_DROP_NO_NEXTHOP 10      /* live mode: the primary's next hop is not resolved (yet) */
#define FWD_DROP_REASONS 11

/* backend states */
#define FWD_STATE_ACTIVE 0
#define FWD_STATE_FILLING 1
#define FWD_STATE_DRAINING 2
#define FWD_STATE_INACTIVE 3

/* hash field bits (fwd_bind_spec.hash_fields); hashed in this order */
#define FWD_HASH_SRC_ADDR 1
#define FWD_HASH_DST_ADDR 2
#define FWD_HASH_SRC_PORT 4
#define FWD_HASH_DST_PORT 8

struct fwd_addr {
	uint8_t family;     /* 4 or 6 */
	uint8_t bytes[16];  /* network order; IPv4 uses bytes[0..3], the rest is zero */
};

struct fwd_backend_spec {
	struct fwd_addr addr;
	uint8_t state;      /* FWD_STATE_* */
	uint8_t healthy;    /* 0 or 1 */
};

struct fwd_update_stats {
	uint32_t added;           /* backends that joined the ranking */
	uint32_t removed;         /* backends that left the ranking (gone or inactive) */
	uint32_t changed;         /* backends whose state/health changed */
	uint32_t rows_changed;    /* rows whose (primary, secondary) changed */
	uint32_t rows_rescored;   /* rows whose ranking had to be recomputed from scratch */
	uint32_t full_build;      /* 1 when the whole ranking was (re)built */
	uint64_t nanoseconds;     /* wall time spent in the call */
};

/* ---- forwarding table (control plane object, not thread safe) ---- */
struct fwd_table;

/* seed: 16 bytes (ranking), hash_key: 16 bytes (per packet). NULL on bad args/ENOMEM. */
struct fwd_table *fwd_table_new(const uint8_t *seed, const uint8_t *hash_key, int glb_compat);
void fwd_table_free(struct fwd_table *t);

/*
 * Make the table's backend list equal to backends[0..n) (n <= FWD_MAX_BACKENDS).
 * Backends are matched by address with the current list: new addresses are
 * ranked in, missing ones ranked out, state/health changes re-derive only the
 * rows they touch. The first call builds everything. Returns 0, or -1 on bad
 * input (duplicate address, bad family/state, n too large) with the table
 * unchanged.
 */
int fwd_table_set_backends(struct fwd_table *t, const struct fwd_backend_spec *backends,
			   uint32_t n, struct fwd_update_stats *stats);

/* Number of backends in the list last given to fwd_table_set_backends. */
uint32_t fwd_table_backend_count(const struct fwd_table *t);

/*
 * Copy the 65,536 rows out as indices into the list last given to
 * fwd_table_set_backends (FWD_NONE where a row has no backend).
 * primary and secondary each point to FWD_ROWS uint16_t.
 */
void fwd_table_rows(const struct fwd_table *t, uint16_t *primary, uint16_t *secondary);

/* ---- data plane snapshot (immutable once built; shared by workers) ---- */
struct fwd_bind_spec {
	struct fwd_addr prefix;   /* host bits must be zero */
	uint8_t prefix_len;       /* 0..32 or 0..128 */
	uint8_t proto;            /* 6 (tcp) or 17 (udp) */
	uint16_t port_lo;         /* inclusive range of destination ports */
	uint16_t port_hi;
	uint8_t hash_fields;      /* FWD_HASH_* bits, never 0 */
	uint16_t table;           /* index into the tables array given to fwd_snapshot_new */
};

struct fwd_node_spec {
	uint8_t has_tunnel_src4;
	uint8_t tunnel_src4[4];
	uint8_t has_tunnel_src6;
	uint8_t tunnel_src6[16];
	uint32_t mtu;                /* egress MTU: largest outer IP packet, bytes */
	uint8_t forward_icmp_echo;   /* 1: echo requests to a VIP are forwarded; 0: PASS */
	uint8_t has_src_mac;         /* 0: use the input frame's destination MAC */
	uint8_t src_mac[6];
	uint8_t has_dst_mac;         /* 0: use the input frame's source MAC */
	uint8_t dst_mac[6];
};

struct fwd_snapshot;

/*
 * Build an immutable snapshot: copies the node settings, the binds and the
 * current rows/backends/hash key of each table. tables[i] is table index i.
 * NULL on bad input (nbinds/ntables too large, bind.table out of range).
 */
struct fwd_snapshot *fwd_snapshot_new(const struct fwd_node_spec *node,
				      const struct fwd_bind_spec *binds, uint32_t nbinds,
				      struct fwd_table **tables, uint32_t ntables);
void fwd_snapshot_free(struct fwd_snapshot *s);

/* Where FORWARD frames for one backend leave: set by the live layer from netlink. */
struct fwd_nexthop {
	uint32_t ifindex;      /* egress interface; 0 = unresolved (frames dropped: no_nexthop) */
	uint8_t src_mac[6];    /* egress interface MAC */
	uint8_t dst_mac[6];    /* gateway's or on-link backend's MAC */
};

/*
 * Give backend `backend` of table `table` its next hop in a snapshot that is
 * not yet published. Once any next hop is set on a snapshot, FORWARD frames
 * of backends without one are dropped with FWD_DROP_NO_NEXTHOP, the others
 * take the next hop's MACs (over the node's) and fwd_result.egress_ifindex.
 * Returns 0 or -1 (index out of range, NULL, or already published).
 */
int fwd_snapshot_set_nexthop(struct fwd_snapshot *s, uint32_t table, uint32_t backend,
			     const struct fwd_nexthop *nh);

/* ---- packet core ---- */
struct fwd_result {
	uint8_t verdict;      /* FWD_PASS/FORWARD/DROP/REPLY */
	uint8_t reason;       /* FWD_DROP_* when verdict == FWD_DROP, else 0 */
	uint16_t bind;        /* matched bind index or FWD_NONE */
	uint16_t table;       /* table index or FWD_NONE */
	uint16_t primary;     /* backend index (list order) or FWD_NONE */
	uint16_t secondary;   /* backend index or FWD_NONE */
	uint16_t gue_sport;   /* outer UDP source port (host order) when forwarded */
	uint32_t row;         /* table row used */
	uint64_t flow_hash;   /* SipHash result */
	uint32_t out_off;     /* output frame = buf[out_off .. out_off + out_len) */
	uint32_t out_len;     /* for FORWARD and REPLY */
	uint32_t egress_ifindex; /* FORWARD: interface to send on (0 = the receiving one) */
};

struct fwd_pktbytes {
	uint64_t packets;
	uint64_t bytes;
};

/* Per worker, owned by one thread: no atomics. Sum across workers to read. */
struct fwd_counters {
	uint64_t verdicts[4];
	uint64_t drops[11];
	uint64_t icmp_replies;                   /* REPLY frames generated */
	struct fwd_pktbytes binds[1024];         /* input frame bytes, by bind */
	struct fwd_pktbytes backends[16][2048];  /* output frame bytes, by [table][backend index] */
};

/*
 * Process one frame in place. The frame is buf[off .. off+len); the bytes
 * before it (off >= FWD_MIN_HEADROOM) and after it up to buf_size may be
 * overwritten. Never allocates, never blocks. Returns the verdict.
 * counters must not be NULL (the per-packet path does not test it): a caller
 * that does not read them passes a scratch block of its own.
 */
int fwd_process(const struct fwd_snapshot *s, uint8_t *buf, uint32_t buf_size,
		uint32_t off, uint32_t len, struct fwd_result *res,
		struct fwd_counters *counters);

/*
 * Process n frames laid out at a fixed stride: frame i is
 * bufs[i*stride + headroom .. + lens[i]); results[i] offsets are relative to
 * the start of slot i (bufs + i*stride). counters must not be NULL.
 */
void fwd_process_batch(const struct fwd_snapshot *s, uint8_t *bufs, uint32_t stride,
		       uint32_t headroom, const uint32_t *lens, uint32_t n,
		       struct fwd_result *results, struct fwd_counters *counters);

/*
 * Benchmark on the calling thread: for iters rounds over the n frames (same
 * layout as fwd_process_batch, stride a multiple of 64; the originals are not
 * modified), copy each group of `slots` frames into `slots` work buffers of
 * that stride, then (mode 0) call fwd_process on each, as the back ends do,
 * or (mode 1) only read each frame's first 64 bytes (the floor). slots 1
 * reuses one buffer; 64 is the back ends' rx burst. The frames are first
 * copied to a page-aligned arena and the work buffers start 2048 bytes into a
 * page, so both loops see the same placement in every call. Returns the
 * thread's CPU time in ns (0 on bad arguments or no memory).
 */
uint64_t fwd_bench(const struct fwd_snapshot *s, const uint8_t *bufs, uint32_t stride,
		   uint32_t headroom, const uint32_t *lens, uint32_t n, uint32_t iters,
		   int mode, uint32_t slots);

/* SipHash-2-4, 64-bit result (out: 8 bytes, as the reference implementation writes it). */
void fwd_siphash24(const uint8_t *in, uint64_t inlen, const uint8_t *key, uint8_t *out);

/* cdef-end */

#endif
