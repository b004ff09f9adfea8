/* siphash.c - the exported SipHash-2-4 entry point (tests, Python). */
#include "fwd_api.h"
#include "siphash.h"

void fwd_siphash24(const uint8_t *in, uint64_t inlen, const uint8_t *key, uint8_t *out)
{
	uint64_t h = fwd_siphash24_u64(in, inlen, key);

	for (int i = 0; i < 8; i++)
		out[i] = (uint8_t)(h >> (8 * i));
}
