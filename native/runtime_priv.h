/*
 * runtime_priv.h - what the runtime shares with its back ends (xsk.c,
 * rawsock.c): the worker object and the per-batch snapshot protocol.
 *
 * A back end supplies fwd_worker_ops. The runtime's thread calls ops->poll()
 * in a loop; each call handles at most one burst (receive, fwd_process each
 * frame with the snapshot it was given, transmit). An idle back end sleeps in
 * fwd_worker_wait(), which also returns when the control thread publishes a
 * snapshot or asks the workers to stop (the worker's wake eventfd), so new
 * snapshots are acknowledged at once; the poll period (FWD_POLL_MS) only paces
 * the housekeeping done when idle (socket statistics, error checks). Counters are written only by the worker's
 * own thread and read by the control thread without locks.
 */
#ifndef FWD_RUNTIME_PRIV_H
#define FWD_RUNTIME_PRIV_H

#include <pthread.h>
#include <stdatomic.h>

#include "fwd_internal.h"
#include "runtime_api.h"

#define FWD_POLL_MS 10
#define FWD_MAX_RETIRED 256

struct fwd_worker;

struct fwd_worker_ops {
	const char *kind;                      /* "xsk" or "raw" */
	/* One burst with snapshot s. Returns frames handled (>= 0) or -1 on a fatal socket error. */
	int (*poll)(struct fwd_worker *w, const struct fwd_snapshot *s);
	/* Release the back end's sockets and memory (called after the thread ended). */
	void (*close)(struct fwd_worker *w);
};

struct fwd_worker {
	struct fwd_runtime *rt;
	const struct fwd_worker_ops *ops;
	void *priv;                            /* the back end's state */
	pthread_t thread;
	int running;
	_Atomic uint64_t acked_gen;            /* generation read before its last finished burst */
	_Atomic int failed;                    /* the back end returned -1: the thread ended */
	int wake_fd;                           /* eventfd: written on publish and stop */
	char name[32];                         /* e.g. "xsk:eth0:1" */
	struct fwd_port_stats port;
	struct fwd_counters counters;          /* large: workers are calloc'ed */
};

struct fwd_retired {
	struct fwd_snapshot *snap;
	uint64_t gen;                          /* freed once every worker acked >= gen */
};

struct fwd_runtime {
	_Atomic(struct fwd_snapshot *) current;
	_Atomic uint64_t gen;
	_Atomic int stop;
	int started;
	int poll_ms;                           /* idle poll period (FWD_POLL_MS unless set) */
	uint32_t nworkers;
	struct fwd_worker *workers[FWD_MAX_WORKERS];
	uint32_t nretired;
	struct fwd_retired retired[FWD_MAX_RETIRED];
};

/* Allocate a worker, attach it to rt (not started). NULL with err filled when full / ENOMEM. */
struct fwd_worker *fwd_worker_add(struct fwd_runtime *rt, const struct fwd_worker_ops *ops,
				  const char *name, char *err, size_t errlen);

/* Undo fwd_worker_add for the last worker when the back end failed to open. */
void fwd_worker_discard(struct fwd_runtime *rt, struct fwd_worker *w);

/*
 * Sleep until fd (ignored when < 0) has one of events, the worker is woken
 * (publication, stop) or the poll period ends. Returns poll()'s count (0: the
 * period ended quietly; EINTR counts as a wake) with fd's revents in *revents,
 * or -1 on a poll() error. Consumes the wake.
 */
int fwd_worker_wait(struct fwd_worker *w, int fd, short events, short *revents);

/* Format a one-line error (like snprintf) and return -1. */
int fwd_errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
