/*
 * core.c - the packet core's entry points (docs/packet-core.md §2-§6):
 * fwd_process classifies a frame (parse.c), matches the bind, hashes the flow,
 * reads the row and writes the output frame (encap.c), then counts; plus its
 * batch form and the benchmark loop. No I/O, no allocation, no locks per
 * packet: everything it reads lives in the immutable snapshot.
 */
#include <stdlib.h>
#include <time.h>

#include "core_priv.h"
#include "siphash.h"

/* First bind (from p->first_vip, in config order) the packet belongs to, or nbinds. */
static uint32_t bind_match(const struct fwd_snapshot *s, const struct pkt *p)
{
	uint32_t i = p->first_vip, n = s->nbinds;

	if (p->kind == PKT_ECHO)
		return i;
	for (; i < n; i++) {
		const struct fwd_bind_spec *b = &s->binds[i];

		if (b->proto != p->proto)
			continue;
		if (p->kind == PKT_PORTS && (p->dport < b->port_lo || p->dport > b->port_hi))
			continue;
		if (bind_holds(b, p->family, p->dst))
			return i;
	}
	return n;
}

/*
 * SipHash of the enabled fields: src addr, dst addr, sport, dport (big-endian).
 * flatten: the default field sets (source address only) get SipHash inlined
 * with a constant length, which drops its block loop and tail switch.
 */
__attribute__((flatten)) static uint64_t flow_hash(const struct pkt *p, uint8_t fields, const uint8_t *key)
{
	uint8_t m[40];
	uint32_t n = 0;

	if (p->family == 4) {
		if (fields & FWD_HASH_SRC_ADDR) {
			memcpy(m, p->src, 4);
			n = 4;
		}
		if (fields & FWD_HASH_DST_ADDR) {
			memcpy(m + n, p->dst, 4);
			n += 4;
		}
	} else {
		if (fields & FWD_HASH_SRC_ADDR) {
			memcpy(m, p->src, 16);
			n = 16;
		}
		if (fields & FWD_HASH_DST_ADDR) {
			memcpy(m + n, p->dst, 16);
			n += 16;
		}
	}
	if (fields & FWD_HASH_SRC_PORT) {
		store_be16(m + n, p->sport);
		n += 2;
	}
	if (fields & FWD_HASH_DST_PORT) {
		store_be16(m + n, p->dport);
		n += 2;
	}
	if (n == 4)
		return fwd_siphash24_u64(m, 4, key);
	if (n == 16)
		return fwd_siphash24_u64(m, 16, key);
	return fwd_siphash24_u64(m, n, key);
}

/* fwd_process's body; batch and bench call it directly (no PLT hop inside the .so). */
static inline int process_one(const struct fwd_snapshot *s, uint8_t *buf, uint32_t buf_size,
			      uint32_t off, uint32_t len, struct fwd_result *res,
			      struct fwd_counters *c)
{
	const struct fwd_snap_table *t;
	const struct fwd_bind_spec *b;
	struct pkt p;
	uint32_t bi;
	int v;

	*res = (struct fwd_result){.bind = FWD_NONE, .table = FWD_NONE, .primary = FWD_NONE,
				   .secondary = FWD_NONE};
	if (off > buf_size || len > buf_size - off) {   /* caller error: no frame to read */
		res->reason = FWD_DROP_TRUNCATED;
		v = FWD_DROP;
		goto done;
	}
	v = pkt_parse(s, buf + off, len, &p);
	if (v != FWD_FORWARD) {
		if (v == FWD_DROP)
			res->reason = p.reason;
		goto done;
	}
	bi = bind_match(s, &p);
	if (bi == s->nbinds) {
		v = FWD_PASS;
		goto done;
	}
	b = &s->binds[bi];
	res->bind = (uint16_t)bi;
	res->table = b->table;
	if (c) {
		c->binds[bi].packets++;
		c->binds[bi].bytes += len;
	}
	if (b->table >= s->ntables || !(t = s->tables[b->table])) {   /* snapshot_new forbids */
		res->reason = FWD_DROP_NO_BACKEND;
		v = FWD_DROP;
		goto done;
	}

	uint64_t h = flow_hash(&p, b->hash_fields, t->hash_key);
	struct fwd_row row = t->rows[h & 0xffff];

	p.primary = row.primary;
	p.secondary = row.secondary;
	p.gue_sport = (uint16_t)(0x8000 | ((h ^ p.hint) & 0x7fff));
	res->flow_hash = h;
	res->row = (uint32_t)(h & 0xffff);
	res->gue_sport = p.gue_sport;
	res->primary = row.primary;
	res->secondary = row.secondary;
	if (row.primary >= t->nbackends) {   /* FWD_NONE: no ranked backend */
		res->reason = FWD_DROP_NO_BACKEND;
		v = FWD_DROP;
		goto done;
	}
	v = gue_encap(s, t, buf, off, &p, res);
	if (c && v == FWD_FORWARD) {
		c->backends[b->table][row.primary].packets++;
		c->backends[b->table][row.primary].bytes += res->out_len;
	}
done:
	res->verdict = (uint8_t)v;
	if (c) {
		c->verdicts[v]++;
		if (v == FWD_DROP)
			c->drops[res->reason]++;
		else if (v == FWD_REPLY)
			c->icmp_replies++;
	}
	return v;
}

int fwd_process(const struct fwd_snapshot *s, uint8_t *buf, uint32_t buf_size, uint32_t off,
		uint32_t len, struct fwd_result *res, struct fwd_counters *c)
{
	return process_one(s, buf, buf_size, off, len, res, c);
}

void fwd_process_batch(const struct fwd_snapshot *s, uint8_t *bufs, uint32_t stride,
		       uint32_t headroom, const uint32_t *lens, uint32_t n,
		       struct fwd_result *results, struct fwd_counters *counters)
{
	for (uint32_t i = 0; i < n; i++)
		process_one(s, bufs + (size_t)i * stride, stride, headroom, lens[i], &results[i],
			    counters);
}

#define BENCH_BUF 16384

static volatile uint64_t bench_sink;   /* keeps mode 1's reads alive */

uint64_t fwd_bench(const struct fwd_snapshot *s, const uint8_t *bufs, uint32_t stride,
		   uint32_t headroom, const uint32_t *lens, uint32_t n, uint32_t iters, int mode)
{
	_Alignas(64) uint8_t work[BENCH_BUF];
	struct fwd_counters *c = mode == 0 ? calloc(1, sizeof(*c)) : NULL;   /* once, not per packet */
	struct fwd_result res;
	struct timespec t0, t1;
	uint64_t acc = 0;

	memset(work, 0, sizeof(work));
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (uint32_t it = 0; it < iters; it++) {
		for (uint32_t i = 0; i < n; i++) {
			uint32_t len = lens[i];

			if (headroom > BENCH_BUF - 64 || len > BENCH_BUF - 64 - headroom)
				continue;
			memcpy(work + headroom, bufs + (size_t)i * stride + headroom, len);
			if (mode == 0) {
				process_one(s, work, BENCH_BUF, headroom, len, &res, c);
				acc += res.out_len;
			} else {
				for (int k = 0; k < 64; k += 8) {
					uint64_t w;

					memcpy(&w, work + headroom + k, 8);
					acc += w;
				}
			}
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	bench_sink += acc;
	free(c);
	return (uint64_t)(t1.tv_sec - t0.tv_sec) * 1000000000u + (uint64_t)t1.tv_nsec -
	       (uint64_t)t0.tv_nsec;
}
