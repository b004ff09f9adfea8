/*
 * siphash.h - SipHash-2-4 (Aumasson & Bernstein), 64-bit output.
 *
 * Inline so the per-packet hash of 4-40 bytes and the table builder's
 * 12/24-byte scores compile to straight-line code. The 8 output bytes are
 * the little-endian encoding of the final value, as the reference code
 * writes them; fwd_siphash24_u64() returns that value directly.
 */
#ifndef FWD_SIPHASH_H
#define FWD_SIPHASH_H

#include <stdint.h>
#include <string.h>

#define FWD_ROTL64(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

#define FWD_SIPROUND(v0, v1, v2, v3)                                          \
	do {                                                                  \
		v0 += v1; v1 = FWD_ROTL64(v1, 13); v1 ^= v0; v0 = FWD_ROTL64(v0, 32); \
		v2 += v3; v3 = FWD_ROTL64(v3, 16); v3 ^= v2;                  \
		v0 += v3; v3 = FWD_ROTL64(v3, 21); v3 ^= v0;                  \
		v2 += v1; v1 = FWD_ROTL64(v1, 17); v1 ^= v2; v2 = FWD_ROTL64(v2, 32); \
	} while (0)

static inline uint64_t fwd_load_le64(const uint8_t *p)
{
	return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 |
	       (uint64_t)p[3] << 24 | (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 |
	       (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
}

#define FWD_SIP_C0 0x736f6d6570736575ULL
#define FWD_SIP_C1 0x646f72616e646f6dULL
#define FWD_SIP_C2 0x6c7967656e657261ULL
#define FWD_SIP_C3 0x7465646279746573ULL

static inline uint32_t fwd_load_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t fwd_siphash24_u64(const uint8_t *in, uint64_t inlen, const uint8_t *key)
{
	uint64_t k0 = fwd_load_le64(key), k1 = fwd_load_le64(key + 8);
	uint64_t v0 = FWD_SIP_C0 ^ k0;
	uint64_t v1 = FWD_SIP_C1 ^ k1;
	uint64_t v2 = FWD_SIP_C2 ^ k0;
	uint64_t v3 = FWD_SIP_C3 ^ k1;
	const uint8_t *end = in + (inlen & ~(uint64_t)7);
	uint64_t b = inlen << 56;

	for (; in != end; in += 8) {
		uint64_t m = fwd_load_le64(in);
		v3 ^= m;
		FWD_SIPROUND(v0, v1, v2, v3);
		FWD_SIPROUND(v0, v1, v2, v3);
		v0 ^= m;
	}
	switch (inlen & 7) {
	case 7: b |= (uint64_t)in[6] << 48; /* fall through */
	case 6: b |= (uint64_t)in[5] << 40; /* fall through */
	case 5: b |= (uint64_t)in[4] << 32; /* fall through */
	case 4: b |= (uint64_t)in[3] << 24; /* fall through */
	case 3: b |= (uint64_t)in[2] << 16; /* fall through */
	case 2: b |= (uint64_t)in[1] << 8;  /* fall through */
	case 1: b |= (uint64_t)in[0];       /* fall through */
	case 0: break;
	}
	v3 ^= b;
	FWD_SIPROUND(v0, v1, v2, v3);
	FWD_SIPROUND(v0, v1, v2, v3);
	v0 ^= b;
	v2 ^= 0xff;
	FWD_SIPROUND(v0, v1, v2, v3);
	FWD_SIPROUND(v0, v1, v2, v3);
	FWD_SIPROUND(v0, v1, v2, v3);
	FWD_SIPROUND(v0, v1, v2, v3);
	return v0 ^ v1 ^ v2 ^ v3;
}

/*
 * The same function fed word by word, for inputs assembled in registers:
 * start from a keyed state, absorb each full 8-byte little-endian word, then
 * finish with the 0..7 remaining bytes (as a little-endian value) and the
 * total length.
 */
struct fwd_sip {
	uint64_t v0, v1, v2, v3;
};

static inline __attribute__((always_inline)) void fwd_sip_absorb(struct fwd_sip *s, uint64_t m)
{
	s->v3 ^= m;
	FWD_SIPROUND(s->v0, s->v1, s->v2, s->v3);
	FWD_SIPROUND(s->v0, s->v1, s->v2, s->v3);
	s->v0 ^= m;
}

/*
 * The first half of round one on v0 and v1 (v0 += v1 .. v0 = rotl(v0, 32))
 * does not depend on the message: a keyed state can be advanced through it
 * once (fwd_sip_advance), and the first word then absorbed with
 * fwd_sip_absorb_first (the rest of round one, then round two). Fewer ALU
 * operations per hash, same result.
 */
#define FWD_SIPROUND_REST(v0, v1, v2, v3)                                     \
	do {                                                                  \
		v2 += v3; v3 = FWD_ROTL64(v3, 16); v3 ^= v2;                  \
		v0 += v3; v3 = FWD_ROTL64(v3, 21); v3 ^= v0;                  \
		v2 += v1; v1 = FWD_ROTL64(v1, 17); v1 ^= v2; v2 = FWD_ROTL64(v2, 32); \
	} while (0)

static inline void fwd_sip_advance(uint64_t v[4])
{
	v[0] += v[1];
	v[1] = FWD_ROTL64(v[1], 13);
	v[1] ^= v[0];
	v[0] = FWD_ROTL64(v[0], 32);
}

/* fwd_sip_advance undone: the keyed state back from an advanced one. */
static inline void fwd_sip_unadvance(struct fwd_sip *s)
{
	uint64_t sum = FWD_ROTL64(s->v0, 32);   /* v0 + v1 */

	s->v1 = FWD_ROTL64(s->v1 ^ sum, 51);    /* rotr 13 */
	s->v0 = sum - s->v1;
}

/* The first word into an advanced state (fwd_sip_advance). */
static inline __attribute__((always_inline)) void fwd_sip_absorb_first(struct fwd_sip *s, uint64_t m)
{
	s->v3 ^= m;
	FWD_SIPROUND_REST(s->v0, s->v1, s->v2, s->v3);
	FWD_SIPROUND(s->v0, s->v1, s->v2, s->v3);
	s->v0 ^= m;
}

static inline __attribute__((always_inline)) uint64_t fwd_sip_rounds_out(struct fwd_sip *s)
{
	s->v2 ^= 0xff;
	FWD_SIPROUND(s->v0, s->v1, s->v2, s->v3);
	FWD_SIPROUND(s->v0, s->v1, s->v2, s->v3);
	FWD_SIPROUND(s->v0, s->v1, s->v2, s->v3);
	FWD_SIPROUND(s->v0, s->v1, s->v2, s->v3);
	return s->v0 ^ s->v1 ^ s->v2 ^ s->v3;
}

/* fwd_sip_finish for an advanced state into which nothing was absorbed yet. */
static inline __attribute__((always_inline)) uint64_t fwd_sip_finish_first(struct fwd_sip *s, uint64_t tail,
									    uint64_t inlen)
{
	fwd_sip_absorb_first(s, tail | inlen << 56);
	return fwd_sip_rounds_out(s);
}

static inline __attribute__((always_inline)) uint64_t fwd_sip_finish(struct fwd_sip *s, uint64_t tail, uint64_t inlen)
{
	fwd_sip_absorb(s, tail | inlen << 56);
	return fwd_sip_rounds_out(s);
}

#endif
