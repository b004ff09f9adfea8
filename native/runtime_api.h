/*
 * runtime_api.h - the live data plane: worker threads that move frames
 * between the wire and fwd_process(), the snapshot they read, and the XDP
 * steering program. Python drives it through cffi (the text between the cdef
 * markers is fed to cdef(), like fwd_api.h).
 *
 * Lifecycle: fwd_runtime_new -> fwd_steer_attach (xdp mode) ->
 * fwd_runtime_add_xsk / fwd_runtime_add_raw (one per worker) ->
 * fwd_runtime_publish (first snapshot) -> fwd_runtime_start -> ... publish
 * again at will ... -> fwd_runtime_stop -> fwd_steer_detach ->
 * fwd_runtime_free. All fwd_runtime_* calls come from one control thread.
 */
#ifndef FWD_RUNTIME_API_H
#define FWD_RUNTIME_API_H

#include <stddef.h>
#include <stdint.h>

#include "fwd_api.h"

/* cdef-begin */

#define FWD_MAX_WORKERS 64
#define FWD_XSK_MODE_AUTO 0
#define FWD_XSK_MODE_COPY 1
#define FWD_XSK_MODE_ZEROCOPY 2

struct fwd_runtime;

struct fwd_port_stats {
	uint64_t rx_packets;      /* frames taken off the rx ring */
	uint64_t tx_packets;      /* frames handed to the tx ring / socket */
	uint64_t tx_dropped;      /* FORWARD/REPLY frames that found no room to transmit */
	uint64_t pass_dropped;    /* frames the core said PASS but that can no longer reach the kernel */
	uint64_t kernel_drops;    /* drops the kernel reports for the socket (ring full) */
	uint64_t wakeups;         /* sendto/poll calls made for needs_wakeup */
};

struct fwd_xsk_config {
	char ifname[16];          /* receiving interface */
	uint32_t queue;           /* its rx queue */
	uint32_t mode;            /* FWD_XSK_MODE_* */
	uint32_t frame_count;     /* umem frames (0 = 4096) */
	uint32_t ring_size;       /* rx/tx/fill/comp ring entries (0 = 2048) */
	uint32_t batch;           /* frames per rx burst (0 = 64) */
	uint32_t busy_poll;       /* 1: SO_PREFER_BUSY_POLL + SO_BUSY_POLL */
	uint32_t holdoff_us;      /* after a burst smaller than batch, wait this long before the next (0 = off) */
	int xsks_map_fd;          /* the steering program's XSKMAP (from fwd_steer_attach) */
};

struct fwd_raw_config {
	char ifname[16];          /* receiving interface */
	uint32_t fanout_group;    /* PACKET_FANOUT group id shared by the workers of one interface */
	uint32_t block_size;      /* TPACKET_V3 block size (0 = 128 KiB) */
	uint32_t block_count;     /* (0 = 64) */
	uint32_t batch;           /* (0 = 64) */
};

/* NULL on ENOMEM. */
struct fwd_runtime *fwd_runtime_new(void);
void fwd_runtime_free(struct fwd_runtime *rt);   /* stops workers, frees every snapshot */

/* Add a worker (not started yet). Returns its index, or -1 with err filled (one line). */
int fwd_runtime_add_xsk(struct fwd_runtime *rt, const struct fwd_xsk_config *cfg, char *err, size_t errlen);
int fwd_runtime_add_raw(struct fwd_runtime *rt, const struct fwd_raw_config *cfg, char *err, size_t errlen);

/*
 * Publish a snapshot: one atomic store; workers pick it up at their next
 * batch boundary. The runtime owns s from now on (Python must not free it).
 * The previous snapshot is freed once every worker has passed a quiescent
 * point (checked here and in fwd_runtime_reclaim). Returns the generation.
 */
uint64_t fwd_runtime_publish(struct fwd_runtime *rt, struct fwd_snapshot *s);

/* Free retired snapshots no worker can still see; wait up to timeout_ms for them. Returns how many remain. */
uint32_t fwd_runtime_reclaim(struct fwd_runtime *rt, uint32_t timeout_ms);

/* Lowest generation any running worker has acknowledged (all of them run that one or newer). */
uint64_t fwd_runtime_acked_generation(const struct fwd_runtime *rt);

/*
 * How long an idle worker sleeps between its housekeeping rounds (socket
 * statistics, error checks); FWD_POLL_MS (10) unless set. Publications and
 * stop wake idle workers at once whatever this is, so tests set it very large
 * to show that. Call before fwd_runtime_start.
 */
void fwd_runtime_set_poll_ms(struct fwd_runtime *rt, uint32_t ms);

int fwd_runtime_start(struct fwd_runtime *rt, char *err, size_t errlen);
void fwd_runtime_stop(struct fwd_runtime *rt);    /* joins the threads, closes the sockets */

uint32_t fwd_runtime_worker_count(const struct fwd_runtime *rt);

/* Sum of all workers' counters (read without locks: values may be a batch old). */
void fwd_runtime_counters(const struct fwd_runtime *rt, struct fwd_counters *sum);
void fwd_runtime_port_stats(const struct fwd_runtime *rt, uint32_t worker, struct fwd_port_stats *out);

/* ---- XDP steering program (xdp mode) ---- */
struct fwd_steer;

/*
 * Load native/bpf/steer.bpf.o (path given), attach it to ifname
 * (mode: FWD_XSK_MODE_* meaning native/generic selection: AUTO tries native then generic),
 * replacing a stale fwd steering program left by a crashed run; refuse if
 * another XDP program is attached. NULL with err filled on failure.
 */
struct fwd_steer *fwd_steer_attach(const char *obj_path, const char *ifname, uint32_t mode,
				   char *err, size_t errlen);

/* Replace the match rules (same semantics as the snapshot's binds + echo switch). 0 or -1. */
int fwd_steer_set_binds(struct fwd_steer *st, const struct fwd_bind_spec *binds, uint32_t nbinds,
			uint8_t forward_icmp_echo, char *err, size_t errlen);

int fwd_steer_xsks_map_fd(const struct fwd_steer *st);

/* Detach and unload; nothing of fwd stays on the interface. */
void fwd_steer_detach(struct fwd_steer *st);

/* Steering program counters: [0] redirected, [1] passed, [2] redirect failed (no socket on queue). */
void fwd_steer_counters(const struct fwd_steer *st, uint64_t *out3);

/* Id of the stale fwd_steer program (crashed run) that attach replaced, 0 if none. */
uint32_t fwd_steer_replaced_stale(const struct fwd_steer *st);

/* "native" or "generic": the XDP mode attach ended up in. */
const char *fwd_steer_attach_mode(const struct fwd_steer *st);

/*
 * Run one frame through the loaded program with BPF_PROG_TEST_RUN (tests; nothing is sent):
 * 0 with the XDP return code in *retval, or -1 with err filled. The kernel refuses frames
 * shorter than 14 bytes and hands the program at most the first page of longer ones.
 */
int fwd_steer_test_run(const struct fwd_steer *st, const uint8_t *frame, uint32_t len, uint32_t *retval,
		       char *err, size_t errlen);

/* cdef-end */

#endif
