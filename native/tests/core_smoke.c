/*
 * core_smoke.c - standalone smoke test of the packet core: builds a snapshot
 * by hand (snapshot.c only derives its precomputed parts), checks GLB Director's published
 * example byte by byte, then throws random and truncated frames at
 * fwd_process with small and large headroom. Meant for sanitizer builds:
 *
 *   cc -std=gnu11 -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all \
 *      -Inative native/tests/core_smoke.c native/core.c native/snapshot.c \
 *      native/table.c native/siphash.c -o /tmp/core_smoke && /tmp/core_smoke 200000
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fwd_internal.h"

#define CHECK(c)                                                                 \
	do {                                                                     \
		if (!(c)) {                                                      \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__,  \
				__LINE__, #c);                                   \
			exit(1);                                                 \
		}                                                                \
	} while (0)

static uint64_t rng = 88172645463325252ull;

static uint32_t rand_u32(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)rng;
}

static struct fwd_snapshot *snap_build(void)
{
	static const uint8_t key[16] = {0x12, 0x34, 0x56, 0x78, 0x90, 0x12, 0x34, 0x56,
					0x12, 0x34, 0x56, 0x78, 0x90, 0x12, 0x34, 0x56};
	static const uint8_t be[3][4] = {{1, 2, 3, 4}, {2, 3, 4, 5}, {3, 4, 5, 6}};
	struct fwd_snapshot *s = calloc(1, sizeof(*s));
	struct fwd_snap_table *t = calloc(1, sizeof(*t)), *t6 = calloc(1, sizeof(*t6));

	CHECK(s && t && t6);
	s->node.has_tunnel_src4 = 1;
	memcpy(s->node.tunnel_src4, (uint8_t[]){192, 0, 2, 1}, 4);
	s->node.has_tunnel_src6 = 1;
	s->node.tunnel_src6[0] = 0x20;
	s->node.tunnel_src6[15] = 1;
	s->node.mtu = 1500;
	s->node.forward_icmp_echo = 1;
	memcpy(t->hash_key, key, 16);
	t->nbackends = 3;
	for (int i = 0; i < 3; i++) {
		t->backends[i].family = 4;
		memcpy(t->backends[i].bytes, be[i], 4);
	}
	for (int r = 0; r < FWD_ROWS; r++)
		t->rows[r] = (struct fwd_row){(uint16_t)(r % 3), (uint16_t)((r + 1) % 3)};
	t->rows[0x5cbd] = (struct fwd_row){2, 1};
	memcpy(t6->hash_key, key, 16);
	t6->nbackends = 2;
	t6->backends[0].family = 6;
	t6->backends[0].bytes[0] = 0x20;
	t6->backends[0].bytes[15] = 2;
	t6->backends[1].family = 4;
	memcpy(t6->backends[1].bytes, be[0], 4);
	for (int r = 0; r < FWD_ROWS; r++)
		t6->rows[r] = r % 5 ? (struct fwd_row){0, 1} : (struct fwd_row){FWD_NONE, FWD_NONE};
	fwd_snap_table_precompute(t, &s->node);
	fwd_snap_table_precompute(t6, &s->node);
	s->tables[0] = t;
	s->tables[1] = t6;
	s->ntables = 2;

	struct fwd_bind_spec b[4];

	b[0] = (struct fwd_bind_spec){.prefix = {4, {1, 1, 1, 1}}, .prefix_len = 32, .proto = 6,
				      .port_lo = 80, .port_hi = 80, .hash_fields = 1, .table = 0};
	b[1] = (struct fwd_bind_spec){.prefix = {4, {1, 1, 0, 0}}, .prefix_len = 16, .proto = 17,
				      .port_lo = 0, .port_hi = 65535, .hash_fields = 15, .table = 1};
	b[2] = (struct fwd_bind_spec){.prefix = {6, {0x20}}, .prefix_len = 8, .proto = 6,
				      .port_lo = 0, .port_hi = 65535, .hash_fields = 15, .table = 1};
	b[3] = (struct fwd_bind_spec){.prefix = {6, {0}}, .prefix_len = 0, .proto = 17,
				      .port_lo = 1, .port_hi = 1000, .hash_fields = 3, .table = 0};
	for (int i = 0; i < 4; i++)
		fwd_snap_bind_compile(&s->binds[i], &b[i]);
	s->nbinds = 4;
	fwd_snap_link(s);
	return s;
}

/* GLB's example: 10.11.12.13:45678 -> 1.1.1.1:80 SYN. */
static void glb_example_check(const struct fwd_snapshot *s)
{
	static const uint8_t syn[] = {
		0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00,
		0x45, 0, 0, 40, 0, 7, 0, 0, 64, 6, 0, 0, 10, 11, 12, 13, 1, 1, 1, 1,
		0xb2, 0x6e, 0, 80, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02, 0x20, 0, 0, 0, 0, 0};
	static const uint8_t outer[] = {
		0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00,
		0x45, 0, 0, 80, 0, 0, 0x40, 0, 64, 17, 0x70, 0x92, 192, 0, 2, 1, 3, 4, 5, 6,
		0xee, 0xd3, 0x4c, 0x43, 0, 60, 0, 0,
		2, 4, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5};
	static struct fwd_counters scratch;   /* counters are required; not checked here */
	uint8_t buf[256];
	struct fwd_result res;

	memcpy(buf + 128, syn, sizeof(syn));
	CHECK(fwd_process(s, buf, sizeof(buf), 128, sizeof(syn), &res, &scratch) == FWD_FORWARD);
	CHECK(res.flow_hash == 0x008972f1657a5cbdull && res.row == 0x5cbd);
	CHECK(res.gue_sport == 61139 && res.primary == 2 && res.secondary == 1);
	CHECK(res.out_len == sizeof(outer) + 40);
	CHECK(memcmp(buf + res.out_off, outer, sizeof(outer)) == 0);
	CHECK(memcmp(buf + res.out_off + sizeof(outer), syn + 14, 40) == 0);
}

static size_t frame_random(uint8_t *f, size_t cap)
{
	size_t len = rand_u32() % cap;
	uint32_t kind = rand_u32();

	for (size_t i = 0; i < len; i++)
		f[i] = (uint8_t)rand_u32();
	if (len < 64)
		return len;
	/* Make most frames plausible so the parser gets deep. */
	size_t l2 = 14;

	if (kind & 1) {
		f[12] = 0x81, f[13] = 0;
		l2 = 18;
	}
	if (kind & 2) {
		f[l2 - 2] = 0x08, f[l2 - 1] = 0;
		f[l2] = 0x40 | (5 + (kind >> 8) % 3);
		uint16_t tl = (uint16_t)(rand_u32() % (len - l2 + 8));

		f[l2 + 2] = tl >> 8, f[l2 + 3] = (uint8_t)tl;
		f[l2 + 6] &= (kind & 4) ? 0xff : 0x40;
		f[l2 + 7] = (kind & 4) ? f[l2 + 7] : 0;
		f[l2 + 9] = (uint8_t[]){1, 6, 17}[(kind >> 4) % 3];
		memcpy(f + l2 + 16, (uint8_t[]){1, 1, 1, 1}, 4);
		if (f[l2 + 9] == 1) {
			size_t o = l2 + (f[l2] & 15) * 4;

			f[o] = (kind & 32) ? 3 : 8;
			f[o + 8] = 0x45;
			f[o + 17] = (kind & 64) ? 6 : 17;
		}
	} else {
		f[l2 - 2] = 0x86, f[l2 - 1] = 0xdd;
		f[l2] = 0x60;
		uint16_t pl = (uint16_t)(rand_u32() % (len - l2));

		f[l2 + 4] = pl >> 8, f[l2 + 5] = (uint8_t)pl;
		f[l2 + 6] = (uint8_t[]){0, 44, 58, 6, 17, 60}[(kind >> 4) % 6];
		f[l2 + 24] = 0x20;
	}
	return len;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 100000;
	struct fwd_snapshot *s = snap_build();
	struct fwd_counters *c = calloc(1, sizeof(*c));
	static uint8_t buf[4096], f[2048];
	uint64_t seen[4] = {0};

	CHECK(c);
	glb_example_check(s);
	for (long i = 0; i < n; i++) {
		size_t len = frame_random(f, i % 8 ? 200 : sizeof(f));
		uint32_t off = rand_u32() % 4 ? FWD_MIN_HEADROOM : rand_u32() % 64;
		struct fwd_result res;

		s->node.mtu = rand_u32() % 2 ? 1500 : rand_u32() % 1600;
		for (uint32_t k = 0; k < 1 + (rand_u32() & 3); k++) {   /* every prefix too */
			size_t cut = k ? rand_u32() % (len + 1) : len;

			memcpy(buf + off, f, cut);
			int v = fwd_process(s, buf, (uint32_t)(off + cut + (rand_u32() % 64)), off,
					    (uint32_t)cut, &res, c);

			CHECK(v >= 0 && v <= 3 && v == res.verdict);
			CHECK((v == FWD_DROP) == (res.reason != 0));
			if (v == FWD_FORWARD || v == FWD_REPLY)
				CHECK(res.out_len > 0 && res.out_off + res.out_len <= sizeof(buf));
			else
				CHECK(res.out_len == 0);
			seen[v]++;
		}
	}
	/* Caller errors: frame past the buffer, zero-length frame. */
	struct fwd_result res;

	CHECK(fwd_process(s, buf, 100, 128, 10, &res, c) == FWD_DROP);
	CHECK(fwd_process(s, buf, 200, 128, 0, &res, c) == FWD_DROP &&
	      res.reason == FWD_DROP_TRUNCATED);
	printf("ok: pass %llu forward %llu drop %llu reply %llu\n", (unsigned long long)seen[0],
	       (unsigned long long)seen[1], (unsigned long long)seen[2],
	       (unsigned long long)seen[3]);
	free(c);
	free(s->tables[0]);
	free(s->tables[1]);
	free(s);
	return 0;
}
