/*
 * runtime.c - the live data plane's threads and its snapshot publication.
 *
 * The control thread publishes a snapshot with one atomic pointer store (and
 * a generation number). At each batch boundary a worker reads generation then
 * pointer and stores the generation as acknowledged: its previous burst is
 * done, and the burst it starts uses that snapshot (or a newer one), so from
 * then on it can no longer hold an older snapshot. A retired snapshot is freed once every running worker
 * acknowledged a generation at least as new as the one that replaced it -
 * an RCU-style grace period without any lock or atomic read-modify-write on
 * the packet path.
 *
 * Each worker has a wake eventfd in its idle poll set: publish writes it after
 * the generation store, so an idle worker returns to its batch boundary and
 * acknowledges at once instead of at the end of its poll period. The worker
 * reads its generation before sleeping, and the eventfd stays readable until
 * the worker consumes it, so no publication can slip between the two. Stop
 * uses the same wake. Busy workers never look at it: no cost per packet.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "runtime_priv.h"

int fwd_errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return -1;
}

struct fwd_runtime *fwd_runtime_new(void)
{
	struct fwd_runtime *rt = calloc(1, sizeof(*rt));

	if (!rt)
		return NULL;
	atomic_init(&rt->current, NULL);
	atomic_init(&rt->gen, 0);
	atomic_init(&rt->stop, 0);
	rt->poll_ms = FWD_POLL_MS;
	return rt;
}

struct fwd_worker *fwd_worker_add(struct fwd_runtime *rt, const struct fwd_worker_ops *ops,
				  const char *name, char *err, size_t errlen)
{
	struct fwd_worker *w;

	if (rt->started) {
		fwd_errf(err, errlen, "workers cannot be added while the runtime runs");
		return NULL;
	}
	if (rt->nworkers >= FWD_MAX_WORKERS) {
		fwd_errf(err, errlen, "too many workers (at most %d)", FWD_MAX_WORKERS);
		return NULL;
	}
	w = calloc(1, sizeof(*w));
	if (!w) {
		fwd_errf(err, errlen, "out of memory for a worker");
		return NULL;
	}
	w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (w->wake_fd < 0) {
		fwd_errf(err, errlen, "cannot create a wake eventfd: %s", strerror(errno));
		free(w);
		return NULL;
	}
	w->rt = rt;
	w->ops = ops;
	snprintf(w->name, sizeof(w->name), "%s", name);
	atomic_init(&w->acked_gen, 0);
	atomic_init(&w->failed, 0);
	rt->workers[rt->nworkers++] = w;
	return w;
}

void fwd_worker_discard(struct fwd_runtime *rt, struct fwd_worker *w)
{
	if (rt->nworkers && rt->workers[rt->nworkers - 1] == w)
		rt->workers[--rt->nworkers] = NULL;
	close(w->wake_fd);
	free(w);
}

int fwd_worker_wait(struct fwd_worker *w, int fd, short events, short *revents)
{
	struct pollfd pfd[2] = {
		{.fd = fd, .events = events},
		{.fd = w->wake_fd, .events = POLLIN},
	};
	uint64_t count;
	int n = poll(pfd, 2, w->rt->poll_ms);

	*revents = n > 0 ? pfd[0].revents : 0;
	if (n < 0)
		return errno == EINTR ? 1 : -1;
	if (n > 0 && (pfd[1].revents & POLLIN) && read(w->wake_fd, &count, sizeof(count)) < 0)
		return 1;   /* EAGAIN: another read got it first; nothing to do */
	return n;
}

/* Make every worker's next (or current) idle wait return. */
static void wake_workers(struct fwd_runtime *rt)
{
	const uint64_t one = 1;

	for (uint32_t i = 0; i < rt->nworkers; i++) {
		/* can only fail with EAGAIN (counter saturated), i.e. already readable */
		ssize_t r = write(rt->workers[i]->wake_fd, &one, sizeof(one));

		(void)r;
	}
}

void fwd_runtime_set_poll_ms(struct fwd_runtime *rt, uint32_t ms)
{
	rt->poll_ms = ms > INT32_MAX ? INT32_MAX : (int)ms;
}

static void *worker_main(void *arg)
{
	struct fwd_worker *w = arg;
	struct fwd_runtime *rt = w->rt;
	char tname[16];

	snprintf(tname, sizeof(tname), "fwd-%.11s", w->name);   /* 15 chars + NUL */
	pthread_setname_np(pthread_self(), tname);
	while (!atomic_load_explicit(&rt->stop, memory_order_acquire)) {
		uint64_t g = atomic_load_explicit(&rt->gen, memory_order_acquire);
		const struct fwd_snapshot *s = atomic_load_explicit(&rt->current, memory_order_acquire);

		/* Acknowledge at the batch boundary, before polling: the previous batch is done with
		 * every older snapshot. A snapshot published while the back end sleeps wakes it
		 * (wake_fd), and the next turn acknowledges that one. */
		atomic_store_explicit(&w->acked_gen, g, memory_order_release);
		if (w->ops->poll(w, s) < 0) {
			atomic_store_explicit(&w->failed, 1, memory_order_release);
			break;
		}
	}
	return NULL;
}

uint64_t fwd_runtime_acked_generation(const struct fwd_runtime *rt)
{
	uint64_t low = atomic_load_explicit(&rt->gen, memory_order_acquire);

	if (!rt->started)
		return low;
	for (uint32_t i = 0; i < rt->nworkers; i++) {
		const struct fwd_worker *w = rt->workers[i];
		uint64_t a;

		if (atomic_load_explicit(&w->failed, memory_order_acquire))
			continue;   /* its thread ended: it holds nothing */
		a = atomic_load_explicit(&w->acked_gen, memory_order_acquire);
		if (a < low)
			low = a;
	}
	return low;
}

static uint32_t reclaim_now(struct fwd_runtime *rt)
{
	uint64_t acked = fwd_runtime_acked_generation(rt);
	uint32_t keep = 0;

	for (uint32_t i = 0; i < rt->nretired; i++) {
		if (rt->retired[i].gen <= acked)
			fwd_snapshot_free(rt->retired[i].snap);
		else
			rt->retired[keep++] = rt->retired[i];
	}
	rt->nretired = keep;
	return keep;
}

uint32_t fwd_runtime_reclaim(struct fwd_runtime *rt, uint32_t timeout_ms)
{
	struct timespec pause = {0, 1000000};   /* 1 ms */
	uint32_t left = reclaim_now(rt);

	for (uint32_t waited = 0; left && waited < timeout_ms; waited++) {
		nanosleep(&pause, NULL);
		left = reclaim_now(rt);
	}
	return left;
}

uint64_t fwd_runtime_publish(struct fwd_runtime *rt, struct fwd_snapshot *s)
{
	struct fwd_snapshot *old = atomic_load_explicit(&rt->current, memory_order_relaxed);
	uint64_t gen = atomic_load_explicit(&rt->gen, memory_order_relaxed) + 1;

	/* Keep the retire list bounded: wait for the grace period if it is full. */
	if (old && rt->nretired == FWD_MAX_RETIRED)
		while (fwd_runtime_reclaim(rt, 1000) == FWD_MAX_RETIRED)
			;
	s->published = 1;
	atomic_store_explicit(&rt->current, s, memory_order_release);
	atomic_store_explicit(&rt->gen, gen, memory_order_release);
	wake_workers(rt);   /* after the store: a woken worker reads this generation */
	if (old) {
		rt->retired[rt->nretired].snap = old;
		rt->retired[rt->nretired].gen = gen;
		rt->nretired++;
	}
	reclaim_now(rt);
	return gen;
}

int fwd_runtime_start(struct fwd_runtime *rt, char *err, size_t errlen)
{
	if (rt->started)
		return fwd_errf(err, errlen, "the runtime is already running");
	if (!atomic_load(&rt->current))
		return fwd_errf(err, errlen, "publish a snapshot before starting the workers");
	if (!rt->nworkers)
		return fwd_errf(err, errlen, "no workers were added");
	atomic_store(&rt->stop, 0);
	for (uint32_t i = 0; i < rt->nworkers; i++) {
		struct fwd_worker *w = rt->workers[i];
		int rc;

		atomic_store(&w->acked_gen, atomic_load(&rt->gen));
		rc = pthread_create(&w->thread, NULL, worker_main, w);
		if (rc) {
			fwd_runtime_stop(rt);
			return fwd_errf(err, errlen, "cannot start worker %s: %s", w->name, strerror(rc));
		}
		w->running = 1;
		rt->started = 1;
	}
	return 0;
}

void fwd_runtime_stop(struct fwd_runtime *rt)
{
	atomic_store_explicit(&rt->stop, 1, memory_order_release);
	wake_workers(rt);
	for (uint32_t i = 0; i < rt->nworkers; i++) {
		struct fwd_worker *w = rt->workers[i];

		if (w->running) {
			pthread_join(w->thread, NULL);
			w->running = 0;
		}
	}
	rt->started = 0;
	reclaim_now(rt);
}

void fwd_runtime_free(struct fwd_runtime *rt)
{
	if (!rt)
		return;
	fwd_runtime_stop(rt);
	for (uint32_t i = 0; i < rt->nworkers; i++) {
		struct fwd_worker *w = rt->workers[i];

		if (w->ops->close)
			w->ops->close(w);
		close(w->wake_fd);
		free(w);
	}
	for (uint32_t i = 0; i < rt->nretired; i++)
		fwd_snapshot_free(rt->retired[i].snap);
	fwd_snapshot_free(atomic_load(&rt->current));
	free(rt);
}

uint32_t fwd_runtime_worker_count(const struct fwd_runtime *rt)
{
	return rt->nworkers;
}

void fwd_runtime_counters(const struct fwd_runtime *rt, struct fwd_counters *sum)
{
	const uint64_t *src;
	uint64_t *dst = (uint64_t *)sum;
	size_t words = sizeof(*sum) / sizeof(uint64_t);

	memset(sum, 0, sizeof(*sum));
	for (uint32_t i = 0; i < rt->nworkers; i++) {
		src = (const uint64_t *)&rt->workers[i]->counters;
		for (size_t k = 0; k < words; k++)
			dst[k] += src[k];
	}
}

void fwd_runtime_port_stats(const struct fwd_runtime *rt, uint32_t worker, struct fwd_port_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (worker < rt->nworkers)
		*out = rt->workers[worker]->port;
}
