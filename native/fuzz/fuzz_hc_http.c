/*
 * fuzz_hc_http.c - libFuzzer target for the health checker's HTTP framer
 * (hc_http_complete in native/hc/hc_lanes.c), the C code that reads bytes a
 * backend sent on a kept connection.
 *
 * Input: byte 0 picks the expected status (200, 204, 304, 404, or 100 + the
 * byte), the rest is what one recv() returned; it is copied into a buffer of
 * exactly that size, so any read past it is an ASan report. Invariants:
 *   - a pass starts with "HTTP/" and is at least "HTTP/1.1 204\n\n" long;
 *   - a pass is exactly one response: the input without its last byte does not
 *     pass (its framing is the same up to that byte, so it is incomplete), and
 *     neither does the input with one byte more (a stray byte after it).
 * That the framer agrees with the Python one (healthcheck.checks._response) is
 * tested with hypothesis in tests/unit/test_healthcheck_lanes.py.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hc_lanes.h"

#define CHECK(c)                                                         \
	do {                                                             \
		if (!(c)) {                                              \
			fprintf(stderr, "fuzz_hc_http: %s failed\n", #c); \
			abort();                                         \
		}                                                        \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const int statuses[] = {200, 204, 304, 404};
	if (size < 1)
		return 0;
	int expected = data[0] < 4 ? statuses[data[0]] : 100 + data[0];
	size_t n = size - 1;
	char *buf = malloc(n + 1);
	CHECK(buf != NULL);
	memcpy(buf, data + 1, n);
	int pass = hc_http_complete(buf, n, expected);
	if (pass) {
		CHECK(n >= 14 && memcmp(buf, "HTTP/", 5) == 0);
		CHECK(!hc_http_complete(buf, n - 1, expected));
		buf[n] = '\n';
		CHECK(!hc_http_complete(buf, n + 1, expected));
	}
	free(buf);
	return 0;
}
