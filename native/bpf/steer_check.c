/*
 * steer_check.c - runs frames through the XDP steering program with
 * BPF_PROG_TEST_RUN and prints one letter per frame: R (redirected to the
 * AF_XDP socket) or P (passed to the kernel). Tests compare that with the
 * packet core's verdicts: the program must redirect exactly the frames the
 * core does not PASS.
 *
 *   steer_check OBJ BINDS ECHO < FRAMES
 *     BINDS   file holding a raw struct fwd_bind_spec array (as cffi lays it out)
 *     ECHO    0 or 1: forward_icmp_echo
 *     FRAMES  (uint32 length in host order, then the frame bytes)...
 *
 * It loads and attaches the program through native/steer.c (so the rule
 * conversion is the production one) to lo: run it in a scratch network
 * namespace (unshare -n). Nothing is sent anywhere.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <bpf/bpf.h>
#include <linux/bpf.h>

#include "runtime_priv.h"
#include "steer.h"

int fwd_errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -1;
}

static uint64_t redirect_attempts(const struct fwd_steer *st)
{
	uint64_t c[3];

	fwd_steer_counters(st, c);
	return c[STEER_REDIRECTED] + c[STEER_REDIRECT_FAILED];
}

int main(int argc, char **argv)
{
	static uint8_t frame[65536], out[65536 + 256];
	struct fwd_bind_spec *binds;
	struct fwd_steer *st;
	char err[256];
	uint32_t len, nbinds;
	long size;
	FILE *f;

	if (argc != 4) {
		fprintf(stderr, "usage: steer_check OBJ BINDS ECHO < FRAMES\n");
		return 2;
	}
	f = fopen(argv[2], "rb");
	if (!f || fseek(f, 0, SEEK_END) || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) {
		perror(argv[2]);
		return 2;
	}
	nbinds = (uint32_t)(size / (long)sizeof(*binds));
	binds = calloc(nbinds + 1, sizeof(*binds));
	if (!binds || fread(binds, sizeof(*binds), nbinds, f) != nbinds) {
		perror(argv[2]);
		return 2;
	}
	fclose(f);
	st = fwd_steer_attach(argv[1], "lo", FWD_XSK_MODE_COPY, err, sizeof(err));
	if (!st) {
		fprintf(stderr, "steer_check: %s\n", err);
		return 1;
	}
	if (fwd_steer_set_binds(st, binds, nbinds, (uint8_t)atoi(argv[3]), err, sizeof(err))) {
		fprintf(stderr, "steer_check: %s\n", err);
		fwd_steer_detach(st);
		return 1;
	}
	while (fread(&len, sizeof(len), 1, stdin) == 1) {
		LIBBPF_OPTS(bpf_test_run_opts, run);
		uint64_t before;

		if (len > sizeof(frame) || fread(frame, 1, len, stdin) != len) {
			fprintf(stderr, "steer_check: short input\n");
			break;
		}
		if (len < 14) {   /* BPF_PROG_TEST_RUN refuses these; the program passes them */
			putchar('P');
			continue;
		}
		run.data_in = frame;
		run.data_size_in = len;
		run.data_out = out;
		run.data_size_out = sizeof(out);
		run.repeat = 1;
		before = redirect_attempts(st);
		if (bpf_prog_test_run_opts(fwd_steer_prog_fd(st), &run)) {
			perror("steer_check: BPF_PROG_TEST_RUN");
			putchar('E');
			continue;
		}
		putchar(redirect_attempts(st) != before ? 'R' : 'P');
	}
	putchar('\n');
	fwd_steer_detach(st);
	free(binds);
	return 0;
}
