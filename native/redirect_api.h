/*
 * redirect_api.h - fwd-redirect's loader: the tc ingress program of an L7
 * node (native/bpf/redirect.bpf.c, built into fwd/bpf/redirect.bpf.o) loaded,
 * configured, run over test frames, attached to an interface and pinned,
 * found again by a later process, and detached. Python drives it through cffi
 * (the text between the cdef markers is fed to cdef(), like fwd_api.h).
 *
 * Every function that can fail takes err/errlen and writes one line there.
 *
 * Lifecycle in one process: fwd_redirect_load -> fwd_redirect_configure ->
 * fwd_redirect_attach (or fwd_redirect_test_run for tests) -> fwd_redirect_close.
 * From a later process: fwd_redirect_open (the program attached to an
 * interface, through its pins or through tc) -> counters / config / allow ->
 * fwd_redirect_detach -> fwd_redirect_close.
 */
#ifndef FWD_REDIRECT_API_H
#define FWD_REDIRECT_API_H

#include <stddef.h>
#include <stdint.h>

/* cdef-begin */

#define FWD_REDIRECT_MAX_ALLOW 1024
#define FWD_REDIRECT_SRC_EXPLICIT 1   /* always the outer source for hops of its family */
#define FWD_REDIRECT_SRC_FALLBACK 2   /* used only when the outer family changes */

struct fwd_redirect;

struct fwd_redirect_prefix {
	uint8_t family;        /* 4 or 6 */
	uint8_t prefixlen;     /* 0..32 / 0..128 */
	uint8_t addr[16];      /* network order, host bits zero; IPv4 in addr[0..3] */
};

struct fwd_redirect_source {
	uint8_t family;        /* 4 or 6 */
	uint8_t mode;          /* FWD_REDIRECT_SRC_*; 0 = none */
	uint8_t addr[16];
};

struct fwd_redirect_state {
	uint32_t prog_id;      /* the program's kernel id */
	uint32_t pinned;       /* 1: found / made under the pin directory */
	uint32_t created_qdisc; /* 1: the attach created the clsact qdisc */
	uint32_t replaced_id;  /* attach only: id of the fwd_redirect program it replaced, 0 if none */
};

/* Counters: RC_NCOUNTERS names, in the order of native/bpf/redirect.h. */
int fwd_redirect_counter_count(void);
const char *fwd_redirect_counter_name(int i);

/* Open and load the object (not attached anywhere). NULL on failure. */
struct fwd_redirect *fwd_redirect_load(const char *obj_path, char *err, size_t errlen);

/* Replace the allow list and the outer sources (at most one per family). */
int fwd_redirect_configure(struct fwd_redirect *r, const struct fwd_redirect_prefix *allow,
			   uint32_t nallow, const struct fwd_redirect_source *src, uint32_t nsrc,
			   char *err, size_t errlen);

/*
 * Attach as the tc ingress filter of ifindex (clsact qdisc created when
 * missing; a fwd_redirect filter already there is replaced, any other filter
 * is left alone) and pin the program and its maps in pin_dir (bpffs mounted
 * on /sys/fs/bpf when it is not). On a pinning failure the attach is undone.
 */
int fwd_redirect_attach(struct fwd_redirect *r, int ifindex, const char *pin_dir,
			struct fwd_redirect_state *state, char *err, size_t errlen);

/* Id of the fwd_redirect program attached to ifindex's tc ingress (0: none). */
int fwd_redirect_query(int ifindex, uint32_t *prog_id, char *err, size_t errlen);

/* The program attached to ifindex: from pin_dir when its pins name that program,
 * else from tc. NULL with err set when none is attached. */
struct fwd_redirect *fwd_redirect_open(int ifindex, const char *pin_dir, char *err, size_t errlen);
int fwd_redirect_get_state(struct fwd_redirect *r, struct fwd_redirect_state *state);

/* Take our tc filter off ifindex and remove pin_dir's pins and the directory
 * (with its parents up to /sys/fs/bpf while they are empty). The clsact qdisc
 * is left: the caller removes it when the attach created it and it is empty.
 * Returns 0, or 1 when nothing was attached (stale pins are still removed). */
int fwd_redirect_detach(int ifindex, const char *pin_dir, char *err, size_t errlen);

/* Sum over CPUs of each counter (n >= fwd_redirect_counter_count()). */
int fwd_redirect_counters(struct fwd_redirect *r, uint64_t *out, uint32_t n, char *err, size_t errlen);
/* The configured sources ([0] IPv4, [1] IPv6) and allow list (up to max; returns the count). */
int fwd_redirect_get_sources(struct fwd_redirect *r, struct fwd_redirect_source out[2], char *err,
			     size_t errlen);
int fwd_redirect_get_allow(struct fwd_redirect *r, struct fwd_redirect_prefix *out, uint32_t max,
			   char *err, size_t errlen);

/* BPF_PROG_TEST_RUN: one frame through the program as if received on
 * ifindex (0: loopback). *out_len in: room in out; out: the frame after it. */
int fwd_redirect_test_run(struct fwd_redirect *r, const uint8_t *in, uint32_t in_len,
			  uint32_t ifindex, uint8_t *out, uint32_t *out_len, uint32_t *retval,
			  char *err, size_t errlen);

void fwd_redirect_close(struct fwd_redirect *r);

/* cdef-end */

#endif
