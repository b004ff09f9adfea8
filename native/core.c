/*
 * core.c - the packet core's entry points (docs/packet-core.md §2-§6):
 * fwd_process classifies a frame (core_parse.h), matches the bind, hashes the
 * flow, reads the row and writes the output frame (core_encap.h), then counts; plus its
 * batch form and the benchmark loop. No I/O, no allocation, no locks per
 * packet: everything it reads lives in the immutable snapshot.
 */
#include <stdlib.h>
#include <time.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* The per-packet path is one translation unit, so the compiler keeps struct
 * pkt in registers across parse -> match -> hash -> encap. */
#include "core_encap.h"
#include "core_parse.h"
#include "core_priv.h"
#include "siphash.h"

/*
 * First bind from rules4[from] (config order) of the given proto whose port
 * range holds dport (when ports count) and whose prefix holds the IPv4
 * destination (raw word w): a bind index, or s->nbinds.
 */
static inline uint32_t rule4_scan(const struct fwd_snapshot *s, uint32_t from, uint32_t w,
				  uint8_t proto, int ports, uint16_t dport)
{
	for (uint32_t k = from, n = s->nrules4; k < n; k++) {
		const struct fwd_snap_rule4 *r = &s->rules4[k];

		if (r->proto != proto)
			continue;
		if (ports && (dport < r->port_lo || dport > r->port_hi))
			continue;
		if (((w ^ r->net) & r->mask) == 0)
			return r->bind;
	}
	return s->nbinds;
}

/* The same over rules6 for an IPv6 destination (raw words w). */
static inline uint32_t rule6_scan(const struct fwd_snapshot *s, uint32_t from, const uint64_t w[2],
				  uint8_t proto, int ports, uint16_t dport)
{
	for (uint32_t k = from, n = s->nrules6; k < n; k++) {
		const struct fwd_snap_rule6 *r = &s->rules6[k];

		if (r->proto != proto)
			continue;
		if (ports && (dport < r->port_lo || dport > r->port_hi))
			continue;
		if ((((w[0] ^ r->net[0]) & r->mask[0]) | ((w[1] ^ r->net[1]) & r->mask[1])) == 0)
			return r->bind;
	}
	return s->nbinds;
}

/* The bind the packet belongs to (config order, from its first VIP rule), or nbinds. */
static inline uint32_t bind_match(const struct fwd_snapshot *s, const struct pkt *p)
{
	int ports = p->kind == PKT_PORTS;

	if (p->kind == PKT_ECHO)
		return p->first_vip;
	if (p->family == 4)
		return rule4_scan(s, p->first_rule, (uint32_t)p->dst_w[0], p->proto, ports, p->dport);
	return rule6_scan(s, p->first_rule, p->dst_w, p->proto, ports, p->dport);
}

/* A port's two big-endian bytes as a little-endian value (SipHash reads words that way). */
static inline uint64_t port_le(uint16_t port)
{
	return (uint64_t)(port >> 8 | (port & 0xff) << 8);
}

/*
 * SipHash of the enabled fields in this order: src addr, dst addr, sport,
 * dport (network order), assembled in registers from the keyed state instead
 * of in a message buffer: IPv6 addresses are two whole words each, IPv4
 * addresses half a word, and the ports fill the last (partial) word.
 */
static inline __attribute__((always_inline)) uint64_t flow_hash_any(struct fwd_sip st, const struct pkt *p, unsigned fields)
{
	uint64_t acc = 0;    /* bytes not yet absorbed, little-endian */
	unsigned n = 0;      /* how many (0..7) */
	unsigned done = 0;   /* bytes absorbed */

	if (p->family == 4) {
		if (fields & FWD_HASH_SRC_ADDR) {
			acc = fwd_load_le32(p->src);
			n = 4;
		}
		if (fields & FWD_HASH_DST_ADDR) {
			acc |= (uint64_t)fwd_load_le32(p->dst) << (8 * n);
			n += 4;
		}
	} else {
		if (fields & FWD_HASH_SRC_ADDR) {
			fwd_sip_absorb(&st, fwd_load_le64(p->src));
			fwd_sip_absorb(&st, fwd_load_le64(p->src + 8));
			done = 16;
		}
		if (fields & FWD_HASH_DST_ADDR) {
			fwd_sip_absorb(&st, fwd_load_le64(p->dst));
			fwd_sip_absorb(&st, fwd_load_le64(p->dst + 8));
			done += 16;
		}
	}
	if (n == 8) {   /* both IPv4 addresses */
		fwd_sip_absorb(&st, acc);
		acc = 0;
		n = 0;
		done = 8;
	}
	if (fields & FWD_HASH_SRC_PORT) {
		acc |= port_le(p->sport) << (8 * n);
		n += 2;
	}
	if (fields & FWD_HASH_DST_PORT) {
		acc |= port_le(p->dport) << (8 * n);
		n += 2;
	}
	if (n == 8) {   /* one IPv4 address and both ports */
		fwd_sip_absorb(&st, acc);
		acc = 0;
		n = 0;
		done += 8;
	}
	return fwd_sip_finish(&st, acc, done + n);
}

/*
 * The same with straight-line code for the usual field sets (source address,
 * plus source port). sip is the bind's keyed state advanced through its
 * message-free first half-round (bind_sip, fwd_sip_advance).
 */
static inline uint64_t flow_hash(const uint64_t sip[4], const struct pkt *p, unsigned fields)
{
	struct fwd_sip st = {sip[0], sip[1], sip[2], sip[3]};

	if (p->family == 4) {
		if (fields == FWD_HASH_SRC_ADDR)
			return fwd_sip_finish_first(&st, fwd_load_le32(p->src), 4);
		if (fields == (FWD_HASH_SRC_ADDR | FWD_HASH_SRC_PORT))
			return fwd_sip_finish_first(&st, fwd_load_le32(p->src) | port_le(p->sport) << 32, 6);
	} else if (fields == FWD_HASH_SRC_ADDR || fields == (FWD_HASH_SRC_ADDR | FWD_HASH_SRC_PORT)) {
		fwd_sip_absorb_first(&st, fwd_load_le64(p->src));
		fwd_sip_absorb(&st, fwd_load_le64(p->src + 8));
		if (fields == FWD_HASH_SRC_ADDR)
			return fwd_sip_finish(&st, 0, 16);
		return fwd_sip_finish(&st, port_le(p->sport), 18);
	}
	fwd_sip_unadvance(&st);   /* the general path starts from the keyed state */
	return flow_hash_any(st, p, fields);
}

/*
 * packets += 1 and bytes += n as one 16-byte add where SSE2 is there: the
 * vector unit does it, and the integer ALUs the path is short of do not.
 */
static inline void count_pktbytes(struct fwd_pktbytes *pb, uint64_t n)
{
#ifdef __SSE2__
	/* {1, n}: n moved to the high lane, the 1 from a constant (not a register) */
	__m128i inc = _mm_or_si128(_mm_slli_si128(_mm_cvtsi64_si128((long long)n), 8),
				   _mm_set_epi64x(0, 1));

	_mm_storeu_si128((__m128i *)pb, _mm_add_epi64(_mm_loadu_si128((const __m128i *)pb), inc));
#else
	pb->packets++;
	pb->bytes += n;
#endif
}

/* Counts the verdict and stores it: the last step for every frame. */
static inline int verdict_count(int v, struct fwd_result *res, struct fwd_counters *c)
{
	res->verdict = (uint8_t)v;
	c->verdicts[v]++;
	if (v == FWD_DROP)
		c->drops[res->reason]++;
	else if (v == FWD_REPLY)
		c->icmp_replies++;
	return v;
}

/*
 * First half of a frame: classify, match the bind, hash. Returns FWD_FORWARD
 * when the frame goes on to stage_forward (p, *tp and *hp set), else the
 * final verdict, already counted.
 */
static inline int stage_classify(const struct fwd_snapshot *s, uint8_t *buf, uint32_t buf_size,
				 uint32_t off, uint32_t len, struct fwd_result *res,
				 struct fwd_counters *c, struct pkt *p,
				 const struct fwd_snap_table **tp, uint64_t *hp)
{
	const struct fwd_snap_table *t;
	const struct fwd_snap_bind *b;
	uint32_t bi;
	int v;

	*res = (struct fwd_result){.bind = FWD_NONE, .table = FWD_NONE, .primary = FWD_NONE,
				   .secondary = FWD_NONE};
	if ((uint64_t)off + len > buf_size) {   /* caller error: no frame to read */
		res->reason = FWD_DROP_TRUNCATED;
		return verdict_count(FWD_DROP, res, c);
	}
	v = pkt_parse(s, buf + off, len, p);
	if (v != FWD_FORWARD) {
		if (v == FWD_DROP)
			res->reason = p->reason;
		return verdict_count(v, res, c);
	}
	bi = bind_match(s, p);
	if (bi == s->nbinds)
		return verdict_count(FWD_PASS, res, c);
	b = &s->binds[bi];
	res->bind = (uint16_t)bi;
	res->table = b->table;
	count_pktbytes(&c->binds[bi], len);
	if (!(t = s->bind_table[bi])) {   /* no such table: snapshot_new forbids */
		res->reason = FWD_DROP_NO_BACKEND;
		return verdict_count(FWD_DROP, res, c);
	}
	*tp = t;
	*hp = flow_hash(s->bind_sip[bi], p, b->hash_fields);
	return FWD_FORWARD;
}

/* Second half: the row, the output frame, the counters. */
static inline int stage_forward(const struct fwd_snapshot *s, const struct fwd_snap_table *t,
				uint64_t h, uint8_t *buf, uint32_t off, struct pkt *p,
				struct fwd_result *res, struct fwd_counters *c)
{
	struct fwd_row row = t->rows[h & 0xffff];
	int v;

	p->primary = row.primary;
	p->secondary = row.secondary;
	p->gue_sport = (uint16_t)(0x8000 | ((h ^ p->hint) & 0x7fff));
	res->flow_hash = h;
	res->row = (uint32_t)(h & 0xffff);
	res->gue_sport = p->gue_sport;
	res->primary = row.primary;
	res->secondary = row.secondary;
	if (row.primary >= t->nbackends) {   /* FWD_NONE: no ranked backend */
		res->reason = FWD_DROP_NO_BACKEND;
		return verdict_count(FWD_DROP, res, c);
	}
	v = gue_encap(s, t, buf, off, p, res);
	if (v != FWD_FORWARD)
		return verdict_count(v, res, c);
	res->verdict = FWD_FORWARD;
	/* res read before c is written (they may alias as far as the compiler knows) */
	struct fwd_pktbytes *be = &c->backends[res->table][row.primary];
	uint64_t out_len = res->out_len;

	count_pktbytes(be, out_len);
	c->verdicts[FWD_FORWARD]++;
	return FWD_FORWARD;
}

__attribute__((noinline)) int fwd_process(const struct fwd_snapshot *s, uint8_t *buf,
					  uint32_t buf_size, uint32_t off, uint32_t len,
					  struct fwd_result *res, struct fwd_counters *c)
{
	const struct fwd_snap_table *t;
	struct pkt p;
	uint64_t h;
	int v = stage_classify(s, buf, buf_size, off, len, res, c, &p, &t, &h);

	return v == FWD_FORWARD ? stage_forward(s, t, h, buf, off, &p, res, c) : v;
}

void fwd_process_batch(const struct fwd_snapshot *s, uint8_t *bufs, uint32_t stride,
		       uint32_t headroom, const uint32_t *lens, uint32_t n,
		       struct fwd_result *results, struct fwd_counters *counters)
{
	for (uint32_t i = 0; i < n; i++)
		fwd_process(s, bufs + (size_t)i * stride, stride, headroom, lens[i], &results[i],
			    counters);
}

static volatile uint64_t bench_sink;   /* keeps mode 1's reads alive */

/* Where fwd_bench's work buffers start within a page (its frames' copies start on a page). */
#define BENCH_WORK_PAGE_OFFSET 2048

uint64_t fwd_bench(const struct fwd_snapshot *s, const uint8_t *bufs, uint32_t stride,
		   uint32_t headroom, const uint32_t *lens, uint32_t n, uint32_t iters, int mode,
		   uint32_t slots)
{
	struct fwd_counters *c = mode == 0 ? calloc(1, sizeof(*c)) : NULL;   /* once, not per packet */
	/* one arena at fixed page offsets: the frames' copies, then the work buffers, at the same
	 * addresses modulo 4096 in every call and for both loops (not wherever malloc put them) */
	size_t span = ((size_t)n * stride + 4095) / 4096 * 4096;
	size_t work_span = BENCH_WORK_PAGE_OFFSET + (size_t)slots * stride;
	uint8_t *arena = aligned_alloc(4096, span + (work_span + 4095) / 4096 * 4096);
	uint8_t *work = arena ? arena + span + BENCH_WORK_PAGE_OFFSET : NULL;
	uint32_t room = stride - headroom;
	struct fwd_result res;
	struct timespec t0, t1;
	uint64_t acc = 0;

	if (!arena || !slots || (mode == 0 && !c) || headroom > stride || stride % 64) {
		free(c);
		free(arena);
		return 0;
	}
	memcpy(arena, bufs, (size_t)n * stride);
	bufs = arena;
	memset(work, 0, (size_t)slots * stride);
	/* the thread's CPU time: on a shared machine a preempted run is not charged for the wait */
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
	for (uint32_t it = 0; it < iters; it++) {
		for (uint32_t i0 = 0; i0 < n; i0 += slots) {
			uint32_t m = n - i0 < slots ? n - i0 : slots;

			/* the group lands in its slots first, as in a back end's rx ring */
			for (uint32_t k = 0; k < m; k++)
				memcpy(work + (size_t)k * stride + headroom,
				       bufs + (size_t)(i0 + k) * stride + headroom,
				       lens[i0 + k] < room ? lens[i0 + k] : room);
			for (uint32_t k = 0; k < m; k++) {
				uint8_t *buf = work + (size_t)k * stride;
				uint32_t len = lens[i0 + k] < room ? lens[i0 + k] : room;

				if (mode == 0) {   /* one call per frame, as xsk.c and rawsock.c make */
					fwd_process(s, buf, stride, headroom, len, &res, c);
					acc += res.out_len;
				} else {
					for (int b = 0; b < 64; b += 8) {
						uint64_t w;

						memcpy(&w, buf + headroom + b, 8);
						acc += w;
					}
				}
			}
		}
	}
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
	bench_sink += acc;
	free(c);
	free(arena);
	return (uint64_t)(t1.tv_sec - t0.tv_sec) * 1000000000u + (uint64_t)t1.tv_nsec -
	       (uint64_t)t0.tv_nsec;
}
