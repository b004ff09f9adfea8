/*
 * fuzz_table.c - libFuzzer target for the table builder (fwd_table_* in
 * fwd_api.h): a sequence of arbitrary backend lists applied to one table.
 *
 * table.c is compiled here with TABLE_FULL_SHARE=0, so after the first build
 * every change goes through the incremental path (adds, removals, state and
 * health changes, reorderings, all at once). After each accepted list:
 *   - every row names ranked (non-inactive) backends of the list, none when
 *     nothing is ranked; primary == secondary only when one backend is ranked;
 *   - fwd rule: the primary is good (healthy, active/filling) whenever any
 *     backend is good;
 *   - a sample of rows equals a brute-force derivation written from
 *     docs/packet-core.md §1 (scores from fwd_siphash24, the public SipHash);
 *   - the stats count the backends that joined and left the ranking;
 * and after the last step the rows equal those of a fresh table given the
 * same list (a full build).
 * A refused list (duplicate address, bad family/state/health) must leave the
 * table exactly as it was.
 *
 * Input: byte 0 = flags (bit 0 glb_compat, bit 1 seed choice), then steps.
 * A step: a count byte (n = c % 17), then n entries. An entry: one byte a
 * (a & 0x80: a literal address follows, 4 bytes or, with a & 0x40, 16; else
 * address a % 48 of a fixed pool, IPv4 and IPv6, some sharing a prefix) and
 * one byte b (state b & 7, 4..7 invalid; healthy (b >> 3) & 1, or 2 when
 * b & 0x70 == 0x70, invalid).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fwd_api.h"

#define MAX_STEPS 8
#define MAX_LIST 16   /* > 8 (a row's kept list): deep rows happen */
#define POOL 48
#define SAMPLE_ROWS 24

#define CHECK(c)                                                                       \
	do {                                                                           \
		if (!(c)) {                                                            \
			fprintf(stderr, "fuzz_table: %s:%d: invariant failed: %s\n",   \
				__FILE__, __LINE__, #c);                               \
			abort();                                                       \
		}                                                                      \
	} while (0)

static const uint8_t KEY[16] = {0x12, 0x34, 0x56, 0x78, 0x90, 0x12, 0x34, 0x56,
				0x12, 0x34, 0x56, 0x78, 0x90, 0x12, 0x34, 0x56};
static const uint8_t SEEDS[2][16] = {
	{0x34, 0x56, 0x78, 0x90, 0x12, 0x34, 0x56, 0x78, 0x34, 0x56, 0x78, 0x90, 0x12, 0x34, 0x56, 0x78},
	{0},
};

static struct fwd_addr pool[POOL];
static uint16_t *rows_p, *rows_s, *full_p, *full_s, *old_p, *old_s;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	for (uint32_t i = 0; i < POOL; i++) {
		struct fwd_addr *a = &pool[i];

		memset(a, 0, sizeof(*a));
		if (i % 2 == 0) {   /* 10.0.0.x, 10.0.1.x */
			a->family = 4;
			a->bytes[0] = 10;
			a->bytes[2] = (uint8_t)(i / 24);
			a->bytes[3] = (uint8_t)(i + 1);
		} else {            /* 2001:db8::x, and ::ffff:10.0.0.x (same low bytes as an IPv4) */
			a->family = 6;
			if (i % 4 == 1) {
				a->bytes[0] = 0x20;
				a->bytes[1] = 0x01;
				a->bytes[2] = 0x0d;
				a->bytes[3] = 0xb8;
			} else {
				a->bytes[10] = a->bytes[11] = 0xff;
				a->bytes[12] = 10;
			}
			a->bytes[15] = (uint8_t)(i - 1 + 1);
		}
	}
	rows_p = malloc(6 * sizeof(uint16_t) * TABLE_ROWS);
	CHECK(rows_p);
	rows_s = rows_p + TABLE_ROWS;
	full_p = rows_s + TABLE_ROWS;
	full_s = full_p + TABLE_ROWS;
	old_p = full_s + TABLE_ROWS;
	old_s = old_p + TABLE_ROWS;
	return 0;
}

/* ---- a reading of the input ---- */

struct reader {
	const uint8_t *p;
	size_t n;
};

static int take(struct reader *r, uint8_t *out)
{
	if (!r->n)
		return 0;
	*out = *r->p++;
	r->n--;
	return 1;
}

/* One step's list; 0 when the input ran out. */
static int read_list(struct reader *r, struct fwd_backend_spec *list, uint32_t *n)
{
	uint8_t c, a, b;

	if (!take(r, &c))
		return 0;
	*n = c % (MAX_LIST + 1);
	for (uint32_t i = 0; i < *n; i++) {
		struct fwd_backend_spec *s = &list[i];

		memset(s, 0, sizeof(*s));
		if (!take(r, &a))
			return 0;
		if (a & 0x80) {
			uint32_t len = a & 0x40 ? 16 : 4;

			s->addr.family = a & 0x40 ? 6 : 4;
			if ((a & 0x3f) == 0x3f)
				s->addr.family = a & 0x20 ? 0 : 5;   /* bad family */
			for (uint32_t k = 0; k < len; k++)
				if (!take(r, &s->addr.bytes[k]))
					return 0;
		} else {
			s->addr = pool[a % POOL];
			if (s->addr.family == 4)   /* junk past an IPv4 address is ignored */
				s->addr.bytes[4 + (a & 7)] = (uint8_t)(a >> 3);
		}
		if (!take(r, &b))
			return 0;
		s->state = b & 7;
		s->healthy = (b & 0x70) == 0x70 ? 2 : (b >> 3) & 1;
	}
	return 1;
}

/* ---- the spec (docs/packet-core.md §1), by brute force ---- */

static int addr_eq(const struct fwd_addr *a, const struct fwd_addr *b)
{
	return a->family == b->family &&
	       memcmp(a->bytes, b->bytes, a->family == 4 ? 4 : 16) == 0;
}

/* Would fwd_table_set_backends accept this list? */
static int list_valid(const struct fwd_backend_spec *l, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		if ((l[i].addr.family != 4 && l[i].addr.family != 6) ||
		    l[i].state > FWD_STATE_INACTIVE || l[i].healthy > 1)
			return 0;
		for (uint32_t j = 0; j < i; j++)
			if (addr_eq(&l[i].addr, &l[j].addr))
				return 0;
	}
	return 1;
}

static int ranked(const struct fwd_backend_spec *b)
{
	return b->state != FWD_STATE_INACTIVE;
}

static int good(const struct fwd_backend_spec *b)
{
	return b->healthy && (b->state == FWD_STATE_ACTIVE || b->state == FWD_STATE_FILLING);
}

static uint64_t be64_load(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

/* Expected (primary, secondary) of row r, as list indices. */
static void spec_row(const uint8_t *seed, int glb, const struct fwd_backend_spec *l, uint32_t n,
		     uint32_t r, uint16_t *p, uint16_t *s)
{
	uint8_t rm[4] = {(uint8_t)(r >> 24), (uint8_t)(r >> 16), (uint8_t)(r >> 8), (uint8_t)r};
	uint8_t msg[24], out[8];
	uint64_t score[MAX_LIST];
	uint16_t order[MAX_LIST];
	uint32_t m = 0;

	fwd_siphash24(rm, 4, seed, msg);   /* row_seed: the 8 output bytes */
	for (uint32_t i = 0; i < n; i++) {
		uint32_t alen = l[i].addr.family == 4 ? 4 : 16, k;

		if (!ranked(&l[i]))
			continue;
		memcpy(msg + 8, l[i].addr.bytes, alen);
		fwd_siphash24(msg, 8 + alen, seed, out);
		score[i] = be64_load(out);
		/* insertion by (score, family, address): ties break on the address */
		for (k = m; k > 0; k--) {
			const struct fwd_backend_spec *o = &l[order[k - 1]];
			int less = score[i] != score[order[k - 1]] ? score[i] < score[order[k - 1]]
				   : l[i].addr.family != o->addr.family ? l[i].addr.family < o->addr.family
				   : memcmp(l[i].addr.bytes, o->addr.bytes, alen) < 0;

			if (!less)
				break;
			order[k] = order[k - 1];
		}
		order[k] = (uint16_t)i;
		m++;
	}
	*p = *s = FWD_NONE;
	if (m == 0)
		return;
	if (m == 1) {
		*p = *s = order[0];
		return;
	}
	*p = order[0];
	*s = order[1];
	if (!glb) {   /* fwd rule: the first good backend in rank order, the old owner second */
		for (uint32_t k = 0; k < m; k++) {
			if (good(&l[order[k]])) {
				if (k > 0) {
					*p = order[k];
					*s = order[0];
				}
				return;
			}
		}
	}
	/* GLB rule (also fwd's when nothing is good) */
	const struct fwd_backend_spec *a = &l[order[0]], *b = &l[order[1]];

	if ((a->state == FWD_STATE_DRAINING || !a->healthy) && b->state == FWD_STATE_ACTIVE) {
		*p = order[1];
		*s = order[0];
	}
}

/* ---- the checks ---- */

static void check_rows(const struct fwd_backend_spec *l, uint32_t n, int glb)
{
	uint32_t nranked = 0, ngood = 0;

	for (uint32_t i = 0; i < n; i++) {
		nranked += (uint32_t)ranked(&l[i]);
		ngood += (uint32_t)(ranked(&l[i]) && good(&l[i]));
	}
	for (uint32_t r = 0; r < TABLE_ROWS; r++) {
		uint16_t p = rows_p[r], s = rows_s[r];

		if (nranked == 0) {
			CHECK(p == FWD_NONE && s == FWD_NONE);
			continue;
		}
		CHECK(p < n && s < n && ranked(&l[p]) && ranked(&l[s]));
		CHECK((p == s) == (nranked == 1));
		if (!glb && ngood)
			CHECK(good(&l[p]));
	}
}

static void check_stats(const struct fwd_update_stats *st, const struct fwd_backend_spec *old,
			uint32_t nold, const struct fwd_backend_spec *l, uint32_t n)
{
	uint32_t added = 0, removed = 0;

	for (uint32_t i = 0; i < n; i++) {
		int was = 0;

		for (uint32_t j = 0; j < nold; j++)
			if (addr_eq(&old[j].addr, &l[i].addr))
				was = ranked(&old[j]);
		added += (uint32_t)(ranked(&l[i]) && !was);
	}
	for (uint32_t j = 0; j < nold; j++) {
		int now = 0;

		for (uint32_t i = 0; i < n; i++)
			if (addr_eq(&old[j].addr, &l[i].addr))
				now = ranked(&l[i]);
		removed += (uint32_t)(ranked(&old[j]) && !now);
	}
	CHECK(st->added == added && st->removed == removed);
}

/*
 * The rows after the incremental updates equal those of a fresh table given
 * the last list (a full build). Once per input, after the last step: it costs
 * a table; the corpus holds inputs ending at every step anyway.
 */
static void check_full_build(const struct fwd_table *t, const uint8_t *seed, int glb,
			     const struct fwd_backend_spec *l, uint32_t n)
{
	struct fwd_table *f = fwd_table_new(seed, KEY, glb);
	struct fwd_update_stats st;

	CHECK(f && fwd_table_set_backends(f, l, n, &st) == 0 && st.full_build);
	fwd_table_rows(t, rows_p, rows_s);
	fwd_table_rows(f, full_p, full_s);
	fwd_table_free(f);
	for (uint32_t r = 0; r < TABLE_ROWS; r++) {
		if (rows_p[r] != full_p[r] || rows_s[r] != full_s[r]) {
			fprintf(stderr, "fuzz_table: row %u: incremental (%u, %u), full build (%u, %u)\n",
				r, rows_p[r], rows_s[r], full_p[r], full_s[r]);
			abort();
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct fwd_backend_spec list[MAX_LIST], prev[MAX_LIST];
	struct reader rd = {data, size};
	struct fwd_update_stats st;
	struct fwd_table *t;
	uint32_t n, nprev = 0, sample_seed;
	int glb, built = 0, updates = 0;
	uint8_t flags;

	if (!take(&rd, &flags))
		return 0;
	glb = flags & 1;
	const uint8_t *seed = SEEDS[(flags >> 1) & 1];

	sample_seed = (uint32_t)flags * 2654435761u;
	t = fwd_table_new(seed, KEY, glb);
	CHECK(t);
	for (int step = 0; step < MAX_STEPS && read_list(&rd, list, &n); step++) {
		int valid = list_valid(list, n), rc;

		if (built)
			fwd_table_rows(t, old_p, old_s);
		rc = fwd_table_set_backends(t, list, n, &st);
		CHECK(rc == (valid ? 0 : -1));
		if (!valid) {   /* refused: nothing changed */
			CHECK(fwd_table_backend_count(t) == nprev);
			if (built) {
				fwd_table_rows(t, rows_p, rows_s);
				CHECK(memcmp(rows_p, old_p, sizeof(uint16_t) * TABLE_ROWS) == 0);
				CHECK(memcmp(rows_s, old_s, sizeof(uint16_t) * TABLE_ROWS) == 0);
			}
			continue;
		}
		CHECK(st.full_build == (uint32_t)!built);
		updates += built;
		check_stats(&st, prev, nprev, list, n);
		built = 1;
		CHECK(fwd_table_backend_count(t) == n);
		fwd_table_rows(t, rows_p, rows_s);
		check_rows(list, n, glb);

		/* a sample of rows against the spec */
		for (uint32_t k = 0; k < SAMPLE_ROWS; k++) {
			uint32_t r = k < 2 ? k * (TABLE_ROWS - 1)
					   : (sample_seed + k * 40503u * (uint32_t)(step + 1)) % TABLE_ROWS;
			uint16_t p, s;

			spec_row(seed, glb, list, n, r, &p, &s);
			if (rows_p[r] != p || rows_s[r] != s) {
				fprintf(stderr, "fuzz_table: step %d row %u: table (%u, %u), spec (%u, %u)\n",
					step, r, rows_p[r], rows_s[r], p, s);
				abort();
			}
		}
		memcpy(prev, list, sizeof(list[0]) * n);
		nprev = n;
	}
	if (updates)   /* (a single build was a full one) */
		check_full_build(t, seed, glb, prev, nprev);
	fwd_table_free(t);
	return 0;
}
