/*
 * table.c - the forwarding table: backend list, GLB rendezvous ranking, rows.
 *
 * Owns struct fwd_table, the control plane's mutable view of one table
 * (docs/packet-core.md §1 is the algorithm). A full build scores every ranked
 * backend for each of the 65,536 rows; that is 65 M SipHashes at 1,000
 * backends, too slow for a health flip. So each row keeps its TABLE_K best
 * ranked backends (score + stable slot id, sorted by rank), and an update
 * edits those lists: a new backend costs one score per row, a removed one is
 * deleted from the lists holding it, a state/health change only re-derives
 * rows. Invariant between calls: a row's list is the true top-depth of the
 * ranked backends, depth >= min(ranked, 2). A row whose derivation needs
 * more is ranked again from scratch (counted in rows_rescored).
 *
 * A row whose list holds only bad backends (fwd rule) is "deep": its primary
 * is the first good backend past the list. That backend is cached with its
 * score and kept up to date from the backends that become or stop being good,
 * so a mostly unhealthy table is not rescanned on every change.
 *
 * Scores are SipHash-2-4 over row_seed ++ address. The row seed is exactly
 * the first 8-byte block, so the SipHash state after it is computed once per
 * row and each score only absorbs the address words (same value as
 * fwd_siphash24_u64 on the whole message, about half the work).
 *
 * Backends live in slots (ids stable per address while listed), so a list
 * reordering moves nothing; rows hold slot ids and are exported as indices
 * into the current list. Score ties (p = 2^-64) break on the address, which
 * keeps the order independent of the list order.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fwd_api.h"
#include "fwd_internal.h"
#include "siphash.h"
#include "table_priv.h"

#define TABLE_K 8                          /* ranked backends kept per row */
#define TABLE_SLOTS (2 * FWD_MAX_BACKENDS) /* old and new lists coexist during an update */
#define TABLE_MAP_SIZE (2 * TABLE_SLOTS)   /* address map, power of two, load <= 1/2 */
#define TABLE_UNKNOWN 0xFFFEu              /* first good backend not known */
#define TABLE_PENDING 0xFFFDu              /* cached one, before this update's changes */
#define TABLE_INLINE static inline __attribute__((always_inline))

/*
 * An update bringing in more than 1/TABLE_FULL_SHARE of the ranked backends
 * is rebuilt from scratch, which is then cheaper. 0: always incremental
 * after the first build (lets tests exercise the incremental path).
 */
/*
 * Rows in the table. Always FWD_ROWS (GLB's 65,536) except in the table fuzz target, which
 * shrinks it so that each input runs many times faster: rows differ only by their index.
 */
#ifndef TABLE_ROWS
#define TABLE_ROWS FWD_ROWS
#endif

#ifndef TABLE_FULL_SHARE
#define TABLE_FULL_SHARE 2
#endif

/* address map entries: tag << 16 | value */
#define MAP_OLD 1   /* value = slot of the current list, not (yet) in the new one */
#define MAP_KEPT 2  /* value = slot of the current list, also in the new one */
#define MAP_NEW 3   /* value = index in the new list, address not in the current one */

/* slot_mark bits, valid during one update */
#define SLOT_LEAVE 1   /* leaves the ranking (gone or now inactive) */
#define SLOT_CHANGE 2  /* stays ranked; state or health changed */

struct fwd_table {
	uint8_t seed[16];
	uint8_t hash_key[16];
	uint64_t k0, k1;        /* seed as SipHash key words */
	int glb_compat;
	int built;

	/* the list: position -> slot */
	uint32_t nlist;
	uint16_t list[FWD_MAX_BACKENDS];

	/* slots */
	struct fwd_addr slot_addr[TABLE_SLOTS];   /* normalised: unused bytes zero */
	uint64_t slot_w0[TABLE_SLOTS];            /* address as SipHash message words */
	uint64_t slot_w1[TABLE_SLOTS];
	uint8_t slot_state[TABLE_SLOTS];
	uint8_t slot_healthy[TABLE_SLOTS];
	uint8_t slot_good[TABLE_SLOTS];           /* healthy and active/filling */
	uint8_t slot_mark[TABLE_SLOTS];
	uint16_t slot_index[TABLE_SLOTS];         /* position in the list */
	uint32_t nfree;
	uint16_t free_slots[TABLE_SLOTS];

	/* the ranked backends, by family (scoring loops) */
	uint32_t nranked, ngood;
	uint32_t nranked4, nranked6, ngood4, ngood6;
	uint16_t ranked4[FWD_MAX_BACKENDS], ranked6[FWD_MAX_BACKENDS];
	uint16_t good4[FWD_MAX_BACKENDS], good6[FWD_MAX_BACKENDS];

	/* per-update scratch */
	uint32_t map[TABLE_MAP_SIZE];
	struct fwd_addr new_addr[FWD_MAX_BACKENDS];
	uint16_t new_match[FWD_MAX_BACKENDS];     /* new position -> kept slot or FWD_NONE */
	uint8_t seen[TABLE_SLOTS];
	uint16_t gone[FWD_MAX_BACKENDS];
	uint16_t join[FWD_MAX_BACKENDS];          /* slots joining the ranking */
	uint16_t gain[FWD_MAX_BACKENDS];          /* slots becoming good (ranked) */

	/* per row */
	uint64_t *row_seed;      /* TABLE_ROWS: value whose LE bytes are GLB's row seed */
	uint64_t *score;         /* TABLE_ROWS * TABLE_K, ascending within a row */
	uint16_t *rank;          /* TABLE_ROWS * TABLE_K slot ids, same order */
	uint8_t *depth;          /* TABLE_ROWS: entries in the row's list */
	uint8_t *deep;           /* TABLE_ROWS: the row's result depends on backends past its list */
	uint16_t *beyond;        /* TABLE_ROWS: deep rows: first good backend (FWD_NONE: none) */
	uint64_t *beyond_score;
	uint16_t *primary;       /* TABLE_ROWS slot ids or FWD_NONE */
	uint16_t *secondary;
};

/* What one fwd_table_set_backends call does; lives on its stack. */
struct table_update {
	const struct fwd_backend_spec *specs;
	uint32_t n;
	uint32_t ngone;
	uint32_t nranked_old;
	uint32_t nranked_kept;   /* ranked before and after */
	uint32_t njoin, nleave, nchange, nchanged;
	uint32_t ngain, nlose;   /* backends becoming / no longer good (only gains listed) */
	int full, all_rows, ranking_changed;
	uint32_t rows_changed, rows_rescored;
};

/* A row's first good backend in rank order, when known. */
struct row_good {
	uint16_t slot;   /* a slot, FWD_NONE (no good backend), TABLE_UNKNOWN or TABLE_PENDING */
	uint64_t score;
};

static const struct row_good row_good_unknown = { TABLE_UNKNOWN, 0 };

/* ---- addresses ---- */

static uint32_t addr_len(uint8_t family)
{
	return family == 4 ? 4 : 16;
}

static void addr_normalise(struct fwd_addr *dst, const struct fwd_addr *src)
{
	memset(dst, 0, sizeof(*dst));
	dst->family = src->family;
	memcpy(dst->bytes, src->bytes, addr_len(src->family));
}

static int addr_cmp(const struct fwd_addr *a, const struct fwd_addr *b)
{
	if (a->family != b->family)
		return a->family < b->family ? -1 : 1;
	return memcmp(a->bytes, b->bytes, sizeof(a->bytes));
}

static uint32_t addr_hash(const struct fwd_addr *a)
{
	static const uint8_t key[16] = { 'f', 'w', 'd', '-', 'a', 'd', 'd', 'r' };

	return (uint32_t)fwd_siphash24_u64(a->bytes, sizeof(a->bytes), key) ^ a->family;
}

/* ---- scores ---- */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* SipHash state after the first block (the row seed) of a row's score messages. */
struct sip_mid {
	uint64_t v0, v1, v2, v3;
};

static void mid_init(const struct fwd_table *t, uint32_t r, struct sip_mid *m)
{
	uint64_t rs = t->row_seed[r];   /* the block's LE load is the value itself */
	uint64_t v0 = 0x736f6d6570736575ULL ^ t->k0;
	uint64_t v1 = 0x646f72616e646f6dULL ^ t->k1;
	uint64_t v2 = 0x6c7967656e657261ULL ^ t->k0;
	uint64_t v3 = 0x7465646279746573ULL ^ t->k1 ^ rs;

	FWD_SIPROUND(v0, v1, v2, v3);
	FWD_SIPROUND(v0, v1, v2, v3);
	m->v0 = v0 ^ rs;
	m->v1 = v1;
	m->v2 = v2;
	m->v3 = v3;
}

/* Absorb the address words w0 (IPv4: last block) or w0, w1 (IPv6) and finish. */
TABLE_INLINE uint64_t mid_score(const struct sip_mid *m, int v6, uint64_t w0, uint64_t w1)
{
	uint64_t v0 = m->v0, v1 = m->v1, v2 = m->v2, v3 = m->v3;
	uint64_t last = w0;

	if (v6) {
		v3 ^= w0;
		FWD_SIPROUND(v0, v1, v2, v3);
		FWD_SIPROUND(v0, v1, v2, v3);
		v0 ^= w0;
		v3 ^= w1;
		FWD_SIPROUND(v0, v1, v2, v3);
		FWD_SIPROUND(v0, v1, v2, v3);
		v0 ^= w1;
		last = 24ull << 56;
	}
	v3 ^= last;
	FWD_SIPROUND(v0, v1, v2, v3);
	FWD_SIPROUND(v0, v1, v2, v3);
	v0 ^= last;
	v2 ^= 0xff;
	FWD_SIPROUND(v0, v1, v2, v3);
	FWD_SIPROUND(v0, v1, v2, v3);
	FWD_SIPROUND(v0, v1, v2, v3);
	FWD_SIPROUND(v0, v1, v2, v3);
	/* GLB reads the 8 output bytes (LE encoding of the value) big-endian */
	return __builtin_bswap64(v0 ^ v1 ^ v2 ^ v3);
}

static inline uint64_t score_slot(const struct fwd_table *t, const struct sip_mid *m,
				  uint16_t slot)
{
	return mid_score(m, t->slot_addr[slot].family == 6, t->slot_w0[slot], t->slot_w1[slot]);
}

/* The message words of an address: IPv4 is the final block (with the length 12). */
static void slot_set_addr(struct fwd_table *t, uint16_t slot, const struct fwd_addr *a)
{
	t->slot_addr[slot] = *a;
	if (a->family == 4) {
		t->slot_w0[slot] = (uint64_t)a->bytes[0] | (uint64_t)a->bytes[1] << 8 |
				   (uint64_t)a->bytes[2] << 16 | (uint64_t)a->bytes[3] << 24 |
				   12ull << 56;
		t->slot_w1[slot] = 0;
	} else {
		t->slot_w0[slot] = fwd_load_le64(a->bytes);
		t->slot_w1[slot] = fwd_load_le64(a->bytes + 8);
	}
}

static inline int rank_less(const struct fwd_table *t, uint64_t sa, uint16_t a, uint64_t sb,
			    uint16_t b)
{
	if (sa != sb)
		return sa < sb;
	return addr_cmp(&t->slot_addr[a], &t->slot_addr[b]) < 0;
}

/*
 * Insert (s, slot) into a sorted list of *depth entries (at most TABLE_K);
 * on a full list the last entry falls off, and nothing happens when the new
 * one does not beat it. Returns 1 if inserted.
 */
static inline int rank_insert(const struct fwd_table *t, uint64_t *sc, uint16_t *sl,
			      uint32_t *depth, uint64_t s, uint16_t slot)
{
	uint32_t i = *depth;

	if (i == TABLE_K) {
		if (!rank_less(t, s, slot, sc[TABLE_K - 1], sl[TABLE_K - 1]))
			return 0;
		i = TABLE_K - 1;
	} else {
		*depth = i + 1;
	}
	for (; i > 0 && rank_less(t, s, slot, sc[i - 1], sl[i - 1]); i--) {
		sc[i] = sc[i - 1];
		sl[i] = sl[i - 1];
	}
	sc[i] = s;
	sl[i] = slot;
	return 1;
}

/* Keep g the first good backend in rank order, given good backend slot with score s. */
static inline void good_consider(const struct fwd_table *t, struct row_good *g, uint64_t s,
				 uint16_t slot)
{
	if (g->slot == FWD_NONE || rank_less(t, s, slot, g->score, g->slot)) {
		g->slot = slot;
		g->score = s;
	}
}

/* ---- one row ---- */

struct row_rank {
	uint64_t *sc;
	uint16_t *sl;
	uint32_t depth;
	struct row_good best;
};

/* Score the ranked backends of one family into rr (inlined: v6 becomes a constant). */
TABLE_INLINE void row_rank_family(const struct fwd_table *t, const struct sip_mid *m, int v6,
			    struct row_rank *rr, const uint16_t *slots, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		uint16_t slot = slots[i];
		uint64_t s = mid_score(m, v6, t->slot_w0[slot], t->slot_w1[slot]);

		if (rr->depth < TABLE_K || s <= rr->sc[TABLE_K - 1])
			rank_insert(t, rr->sc, rr->sl, &rr->depth, s, slot);
		if (t->slot_good[slot])
			good_consider(t, &rr->best, s, slot);
	}
}

/*
 * Rank row r from scratch: its list becomes the top TABLE_K of all ranked
 * backends. Returns the first good backend in rank order.
 */
static struct row_good row_rescore(struct fwd_table *t, uint32_t r)
{
	struct sip_mid m;
	struct row_rank rr = {
		.sc = t->score + (size_t)r * TABLE_K,
		.sl = t->rank + (size_t)r * TABLE_K,
		.depth = 0,
		.best = { FWD_NONE, 0 },
	};

	mid_init(t, r, &m);
	row_rank_family(t, &m, 0, &rr, t->ranked4, t->nranked4);
	row_rank_family(t, &m, 1, &rr, t->ranked6, t->nranked6);
	t->depth[r] = (uint8_t)rr.depth;
	return rr.best;
}

/* The first good backend of row r in rank order, scoring only the good ones. */
static struct row_good row_first_good(const struct fwd_table *t, uint32_t r)
{
	struct row_good g = { FWD_NONE, 0 };
	struct sip_mid m;

	mid_init(t, r, &m);
	for (uint32_t i = 0; i < t->ngood4; i++)
		good_consider(t, &g, score_slot(t, &m, t->good4[i]), t->good4[i]);
	for (uint32_t i = 0; i < t->ngood6; i++)
		good_consider(t, &g, score_slot(t, &m, t->good6[i]), t->good6[i]);
	return g;
}

/* GLB rule on the first two ranked backends a, b. */
static void row_pick_glb(const struct fwd_table *t, uint16_t a, uint16_t b, uint16_t *p,
			 uint16_t *s)
{
	uint8_t st = t->slot_state[a];
	int bad = st == FWD_STATE_DRAINING || st == FWD_STATE_INACTIVE || !t->slot_healthy[a];

	if (bad && t->slot_state[b] == FWD_STATE_ACTIVE) {
		*p = b;
		*s = a;
	} else {
		*p = a;
		*s = b;
	}
}

/*
 * A deep row's cached first good backend brought up to date with this
 * update: unknown if it stopped being good, else the best of it and the
 * backends that became good.
 */
static struct row_good row_beyond_update(const struct fwd_table *t, const struct table_update *u,
					 uint32_t r)
{
	struct row_good g = { t->beyond[r], t->beyond_score[r] };
	struct sip_mid m;

	if (g.slot != FWD_NONE && !t->slot_good[g.slot])
		return row_good_unknown;
	mid_init(t, r, &m);
	for (uint32_t i = 0; i < u->ngain; i++)
		good_consider(t, &g, score_slot(t, &m, t->gain[i]), t->gain[i]);
	return g;
}

/*
 * fwd rule when order[0] of row r is bad: (first good, order[0]), or keep
 * the GLB result when nothing is good. g: the row's first good backend if
 * known (or pending, for a deep row). Returns 1 (and caches the first good
 * backend past the list, FWD_NONE if none) when no backend of the list is
 * good: the row then depends on backends that become good or join later.
 */
static int row_pick_fwd(struct fwd_table *t, struct table_update *u, uint32_t r,
			struct row_good g, uint16_t *p, uint16_t *s)
{
	const uint16_t *sl = t->rank + (size_t)r * TABLE_K;
	uint32_t depth = t->depth[r];

	for (uint32_t i = 1; i < depth; i++) {
		if (t->slot_good[sl[i]]) {
			*p = sl[i];
			*s = sl[0];
			return 0;
		}
	}
	/* Past here no backend of the list is good. Even when the list holds
	 * every ranked backend (nothing good anywhere), the row stays deep:
	 * a good backend that joins later without entering the list must
	 * still become its primary. */
	if (g.slot == TABLE_PENDING)
		g = row_beyond_update(t, u, r);
	if (t->ngood == 0) {
		g.slot = FWD_NONE;
	} else if (g.slot == TABLE_UNKNOWN || g.slot == FWD_NONE) {
		g = row_first_good(t, r);
		u->rows_rescored++;
	}
	if (g.slot != FWD_NONE) {
		*p = g.slot;
		*s = sl[0];
	}
	t->beyond[r] = g.slot;
	t->beyond_score[r] = g.score;
	return 1;
}

/* Derive row r's (primary, secondary) from its list, ranking it again if too short. */
static void row_derive(struct fwd_table *t, struct table_update *u, uint32_t r, struct row_good g)
{
	uint32_t n = t->nranked;
	uint16_t p = FWD_NONE, s = FWD_NONE;
	uint8_t deep = 0;

	if (n > 0) {
		const uint16_t *sl = t->rank + (size_t)r * TABLE_K;

		if (t->depth[r] < (n < 2 ? n : 2)) {
			g = row_rescore(t, r);
			u->rows_rescored++;
		}
		if (n == 1) {
			p = s = sl[0];
		} else {
			row_pick_glb(t, sl[0], sl[1], &p, &s);
			if (!t->glb_compat && !t->slot_good[sl[0]])
				deep = (uint8_t)row_pick_fwd(t, u, r, g, &p, &s);
		}
	}
	t->deep[r] = deep;
	if (t->primary[r] != p || t->secondary[r] != s) {
		u->rows_changed++;
		t->primary[r] = p;
		t->secondary[r] = s;
	}
}

/* Drop leaving backends from row r's list. Returns 1 if the row must be re-derived. */
static int row_drop_marked(struct fwd_table *t, uint32_t r)
{
	uint64_t *sc = t->score + (size_t)r * TABLE_K;
	uint16_t *sl = t->rank + (size_t)r * TABLE_K;
	uint32_t depth = t->depth[r], w = 0;
	int touched = 0;

	for (uint32_t i = 0; i < depth; i++) {
		uint8_t mark = t->slot_mark[sl[i]];

		if (mark)
			touched = 1;
		if (mark & SLOT_LEAVE)
			continue;
		sc[w] = sc[i];
		sl[w] = sl[i];
		w++;
	}
	t->depth[r] = (uint8_t)w;
	return touched;
}

/*
 * Rank the joining backends into row r's list, keeping it the true top-depth:
 * a newcomer goes in when the list holds every ranked backend so far, or
 * when it beats the list's last entry. Returns 1 if the list changed.
 */
static int row_add_joins(struct fwd_table *t, const struct table_update *u, uint32_t r,
			 const struct sip_mid *m)
{
	uint64_t *sc = t->score + (size_t)r * TABLE_K;
	uint16_t *sl = t->rank + (size_t)r * TABLE_K;
	uint32_t depth = t->depth[r], ranked = u->nranked_kept;
	int touched = 0;

	for (uint32_t j = 0; j < u->njoin; j++, ranked++) {
		uint16_t slot = t->join[j];
		uint64_t s = score_slot(t, m, slot);

		if (depth == ranked ||
		    (depth > 0 && rank_less(t, s, slot, sc[depth - 1], sl[depth - 1])))
			touched |= rank_insert(t, sc, sl, &depth, s, slot);
	}
	t->depth[r] = (uint8_t)depth;
	return touched;
}

/*
 * Apply an incremental update to row r. A deep row is re-derived when any
 * backend became or stopped being good; its cache is refreshed only if the
 * new list still holds no good backend.
 */
static void row_update(struct fwd_table *t, struct table_update *u, uint32_t r)
{
	int touched = u->all_rows;
	struct row_good g = row_good_unknown;

	if (u->nleave || u->nchange)
		touched |= row_drop_marked(t, r);
	if (u->njoin) {
		struct sip_mid m;

		mid_init(t, r, &m);
		touched |= row_add_joins(t, u, r, &m);
	}
	if (t->deep[r] && (u->ngain || u->nlose)) {
		g.slot = TABLE_PENDING;
		touched = 1;
	} else if (t->deep[r]) {
		g.slot = t->beyond[r];
		g.score = t->beyond_score[r];
	}
	if (touched)
		row_derive(t, u, r, g);
}

/* ---- the update ---- */

static int spec_valid(const struct fwd_backend_spec *b)
{
	return (b->addr.family == 4 || b->addr.family == 6) && b->state <= FWD_STATE_INACTIVE &&
	       b->healthy <= 1;
}

static const struct fwd_addr *map_key(const struct fwd_table *t, uint32_t e)
{
	uint32_t v = e & 0xFFFF;

	return (e >> 16) == MAP_NEW ? &t->new_addr[v] : &t->slot_addr[v];
}

/* Position of a's entry in the address map, or of the empty place where it goes. */
static uint32_t map_find(const struct fwd_table *t, const struct fwd_addr *a)
{
	uint32_t i = addr_hash(a) & (TABLE_MAP_SIZE - 1);

	while (t->map[i] && addr_cmp(map_key(t, t->map[i]), a) != 0)
		i = (i + 1) & (TABLE_MAP_SIZE - 1);
	return i;
}

/*
 * Validate the new list and match it against the current one by address.
 * Writes only scratch (map, new_addr, new_match). -1 on a bad entry or a
 * duplicate address.
 */
static int update_match(struct fwd_table *t, const struct fwd_backend_spec *b, uint32_t n)
{
	memset(t->map, 0, sizeof(t->map));
	for (uint32_t i = 0; i < t->nlist; i++) {
		uint16_t slot = t->list[i];

		t->map[map_find(t, &t->slot_addr[slot])] = (uint32_t)MAP_OLD << 16 | slot;
	}
	for (uint32_t j = 0; j < n; j++) {
		uint32_t pos, e;

		if (!spec_valid(&b[j]))
			return -1;
		addr_normalise(&t->new_addr[j], &b[j].addr);
		pos = map_find(t, &t->new_addr[j]);
		e = t->map[pos];
		if (e == 0) {
			t->map[pos] = (uint32_t)MAP_NEW << 16 | j;
			t->new_match[j] = FWD_NONE;
		} else if ((e >> 16) == MAP_OLD) {
			t->map[pos] = (uint32_t)MAP_KEPT << 16 | (e & 0xFFFF);
			t->new_match[j] = (uint16_t)(e & 0xFFFF);
		} else {
			return -1;
		}
	}
	return 0;
}

static int state_ranked(uint8_t state)
{
	return state != FWD_STATE_INACTIVE;
}

static int spec_good(const struct fwd_backend_spec *b)
{
	return b->healthy && (b->state == FWD_STATE_ACTIVE || b->state == FWD_STATE_FILLING);
}

/* slot leaves the ranking (gone or now inactive). */
static void slot_leave(struct fwd_table *t, struct table_update *u, uint16_t slot)
{
	t->slot_mark[slot] = SLOT_LEAVE;
	u->nleave++;
	if (t->slot_good[slot])
		u->nlose++;
	t->slot_good[slot] = 0;
}

/* Set slot's state/health from b, classifying the change into u. */
static void slot_update(struct fwd_table *t, struct table_update *u, uint16_t slot, int is_new,
			const struct fwd_backend_spec *b)
{
	int was = !is_new && state_ranked(t->slot_state[slot]);
	int now = state_ranked(b->state);
	int was_good = was && t->slot_good[slot], now_good = spec_good(b);

	if (now && !was) {
		t->join[u->njoin++] = slot;
	} else if (was && !now) {
		slot_leave(t, u, slot);
	} else if (!is_new &&
		   (t->slot_state[slot] != b->state || t->slot_healthy[slot] != b->healthy)) {
		u->nchanged++;
		if (now) {
			t->slot_mark[slot] = SLOT_CHANGE;
			u->nchange++;
			if (was_good && !now_good)
				u->nlose++;
		}
	}
	if (now && now_good && !was_good)
		t->gain[u->ngain++] = slot;
	t->slot_state[slot] = b->state;
	t->slot_healthy[slot] = b->healthy;
	t->slot_good[slot] = (uint8_t)now_good;
}

/* Install the new list into the slots (after update_match). Cannot fail. */
static void update_apply(struct fwd_table *t, struct table_update *u)
{
	memset(t->seen, 0, sizeof(t->seen));
	for (uint32_t j = 0; j < u->n; j++)
		if (t->new_match[j] != FWD_NONE)
			t->seen[t->new_match[j]] = 1;
	for (uint32_t i = 0; i < t->nlist; i++) {
		uint16_t slot = t->list[i];

		if (t->seen[slot])
			continue;
		t->gone[u->ngone++] = slot;
		if (state_ranked(t->slot_state[slot]))
			slot_leave(t, u, slot);
	}
	for (uint32_t j = 0; j < u->n; j++) {
		uint16_t slot = t->new_match[j];
		int is_new = slot == FWD_NONE;

		if (is_new) {
			slot = t->free_slots[--t->nfree];
			slot_set_addr(t, slot, &t->new_addr[j]);
		}
		slot_update(t, u, slot, is_new, &u->specs[j]);
		t->list[j] = slot;
		t->slot_index[slot] = (uint16_t)j;
	}
	t->nlist = u->n;
}

/* Rebuild the per-family arrays of ranked and good backends from the list. */
static void update_ranked(struct fwd_table *t)
{
	t->nranked4 = t->nranked6 = t->ngood4 = t->ngood6 = 0;
	for (uint32_t i = 0; i < t->nlist; i++) {
		uint16_t slot = t->list[i];
		int v4 = t->slot_addr[slot].family == 4;

		if (!state_ranked(t->slot_state[slot]))
			continue;
		if (v4)
			t->ranked4[t->nranked4++] = slot;
		else
			t->ranked6[t->nranked6++] = slot;
		if (!t->slot_good[slot])
			continue;
		if (v4)
			t->good4[t->ngood4++] = slot;
		else
			t->good6[t->ngood6++] = slot;
	}
	t->nranked = t->nranked4 + t->nranked6;
	t->ngood = t->ngood4 + t->ngood6;
}

/* Decide between a full build and an incremental update. */
static void update_plan(const struct fwd_table *t, struct table_update *u)
{
	uint32_t n_old = u->nranked_old, n_new = t->nranked;

	u->nranked_kept = n_old - u->nleave;
	u->full = !t->built ||
		  (TABLE_FULL_SHARE > 0 && (uint64_t)u->njoin * TABLE_FULL_SHARE > n_new);
	u->all_rows = n_old != n_new && (n_old < 2 || n_new < 2);
	u->ranking_changed = u->njoin || u->nleave || u->nchange;
}

static void update_rows(struct fwd_table *t, struct table_update *u)
{
	if (u->full) {
		for (uint32_t r = 0; r < TABLE_ROWS; r++)
			row_derive(t, u, r, row_rescore(t, r));
		u->rows_rescored += TABLE_ROWS;
		return;
	}
	if (!u->ranking_changed && !u->all_rows)
		return;
	for (uint32_t r = 0; r < TABLE_ROWS; r++)
		row_update(t, u, r);
}

/* Release the slots of removed backends and clear the marks. */
static void update_finish(struct fwd_table *t, const struct table_update *u)
{
	for (uint32_t i = 0; i < u->ngone; i++)
		t->free_slots[t->nfree++] = t->gone[i];
	memset(t->slot_mark, 0, sizeof(t->slot_mark));
	t->built = 1;
}

static void stats_fill(struct fwd_update_stats *stats, const struct table_update *u, uint64_t t0)
{
	if (!stats)
		return;
	stats->added = u->njoin;
	stats->removed = u->nleave;
	stats->changed = u->nchanged;
	stats->rows_changed = u->rows_changed;
	stats->rows_rescored = u->rows_rescored;
	stats->full_build = (uint32_t)u->full;
	stats->nanoseconds = now_ns() - t0;
}

int fwd_table_set_backends(struct fwd_table *t, const struct fwd_backend_spec *backends,
			   uint32_t n, struct fwd_update_stats *stats)
{
	uint64_t t0 = now_ns();
	struct table_update u;

	if (stats)
		memset(stats, 0, sizeof(*stats));
	if (!t || (n > 0 && !backends) || n > FWD_MAX_BACKENDS)
		return -1;
	if (update_match(t, backends, n) < 0)
		return -1;
	memset(&u, 0, sizeof(u));
	u.specs = backends;
	u.n = n;
	u.nranked_old = t->nranked;
	update_apply(t, &u);
	update_ranked(t);
	update_plan(t, &u);
	update_rows(t, &u);
	update_finish(t, &u);
	stats_fill(stats, &u, t0);
	return 0;
}

/* ---- life cycle and export ---- */

static int table_alloc_rows(struct fwd_table *t)
{
	t->row_seed = malloc(sizeof(uint64_t) * TABLE_ROWS);
	t->score = malloc(sizeof(uint64_t) * TABLE_ROWS * TABLE_K);
	t->rank = malloc(sizeof(uint16_t) * TABLE_ROWS * TABLE_K);
	t->depth = calloc(TABLE_ROWS, 1);
	t->deep = calloc(TABLE_ROWS, 1);
	t->beyond = malloc(sizeof(uint16_t) * TABLE_ROWS);
	t->beyond_score = malloc(sizeof(uint64_t) * TABLE_ROWS);
	t->primary = malloc(sizeof(uint16_t) * TABLE_ROWS);
	t->secondary = malloc(sizeof(uint16_t) * TABLE_ROWS);
	if (!t->row_seed || !t->score || !t->rank || !t->depth || !t->deep || !t->beyond ||
	    !t->beyond_score || !t->primary || !t->secondary)
		return -1;
	memset(t->primary, 0xFF, sizeof(uint16_t) * TABLE_ROWS);
	memset(t->secondary, 0xFF, sizeof(uint16_t) * TABLE_ROWS);
	return 0;
}

/* row_seed = siphash24(key=seed, msg=u32_big_endian(r)). */
static void table_seed_rows(struct fwd_table *t)
{
	for (uint32_t r = 0; r < TABLE_ROWS; r++) {
		uint8_t m[4] = { (uint8_t)(r >> 24), (uint8_t)(r >> 16), (uint8_t)(r >> 8),
				 (uint8_t)r };

		t->row_seed[r] = fwd_siphash24_u64(m, 4, t->seed);
	}
}

struct fwd_table *fwd_table_new(const uint8_t *seed, const uint8_t *hash_key, int glb_compat)
{
	struct fwd_table *t;

	if (!seed || !hash_key)
		return NULL;
	t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	if (table_alloc_rows(t) < 0) {
		fwd_table_free(t);
		return NULL;
	}
	memcpy(t->seed, seed, 16);
	memcpy(t->hash_key, hash_key, 16);
	t->k0 = fwd_load_le64(seed);
	t->k1 = fwd_load_le64(seed + 8);
	t->glb_compat = glb_compat != 0;
	for (uint32_t i = 0; i < TABLE_SLOTS; i++)
		t->free_slots[i] = (uint16_t)(TABLE_SLOTS - 1 - i);
	t->nfree = TABLE_SLOTS;
	table_seed_rows(t);
	return t;
}

void fwd_table_free(struct fwd_table *t)
{
	if (!t)
		return;
	free(t->secondary);
	free(t->primary);
	free(t->beyond_score);
	free(t->beyond);
	free(t->deep);
	free(t->depth);
	free(t->rank);
	free(t->score);
	free(t->row_seed);
	free(t);
}

uint32_t fwd_table_backend_count(const struct fwd_table *t)
{
	return t ? t->nlist : 0;
}

static uint16_t slot_to_index(const struct fwd_table *t, uint16_t slot)
{
	return slot == FWD_NONE ? FWD_NONE : t->slot_index[slot];
}

void fwd_table_rows(const struct fwd_table *t, uint16_t *primary, uint16_t *secondary)
{
	if (!t || !primary || !secondary)
		return;
	for (uint32_t r = 0; r < TABLE_ROWS; r++) {
		primary[r] = slot_to_index(t, t->primary[r]);
		secondary[r] = slot_to_index(t, t->secondary[r]);
	}
}

#if TABLE_ROWS == FWD_ROWS /* a snapshot holds exactly FWD_ROWS rows */
void fwd_table_snap_fill(const struct fwd_table *t, struct fwd_snap_table *st)
{
	memcpy(st->hash_key, t->hash_key, sizeof(st->hash_key));
	st->nbackends = t->nlist;
	for (uint32_t i = 0; i < t->nlist; i++)
		st->backends[i] = t->slot_addr[t->list[i]];
	for (uint32_t r = 0; r < FWD_ROWS; r++) {
		st->rows[r].primary = slot_to_index(t, t->primary[r]);
		st->rows[r].secondary = slot_to_index(t, t->secondary[r]);
	}
}
#endif
