/*
 * xsk_noop.c - a no-op AF_XDP forwarder: the limit of the live path that
 * fwd's AF_XDP back end is measured against (make bench-live).
 *
 *   xsk_noop IF_IN IF_OUT DST_MAC [--copy] [--queues N] [--holdoff-us N] [--busy-poll]
 *            [--drop]
 *
 * Every IPv4/IPv6 TCP/UDP frame arriving on IF_IN is redirected by fwd's own
 * steering program (fwd/bpf/steer.bpf.o with catch-all binds, so the XDP
 * cost is the one fwd pays), its Ethernet addresses are rewritten (DST_MAC,
 * IF_OUT's MAC) and it leaves on IF_OUT. Everything else (ARP, ICMP) goes to
 * the kernel. One thread per rx queue (default: all of IF_IN's), each with the
 * ring sizes and batch of native/xsk.c, transmitting through a second socket
 * on (IF_OUT, same queue) bound to the same umem with XDP_SHARED_UMEM - the
 * egress path xsk.c uses. Runs until SIGINT/SIGTERM, then detaches and prints
 * per-queue counts on stderr.
 *
 * Experiments on what the AF_XDP side could save (make bench-live, issue 3):
 * --holdoff-us N sleeps N us after a burst smaller than BATCH (and after a
 * wake-up) so that frames accumulate and each wake-up and kick serves more of
 * them; --busy-poll sets SO_PREFER_BUSY_POLL / SO_BUSY_POLL / SO_BUSY_POLL_BUDGET
 * and drives the rx side with recvfrom() instead of sleeping in poll() (the
 * veth's napi_defer_hard_irqs / gro_flush_timeout are the caller's to set);
 * --drop receives and drops every frame (the cost of the receive half alone).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <xdp/xsk.h>

#include "runtime_priv.h"

#define FRAME_SIZE 4096u
#define FRAME_MASK (~(uint64_t)(FRAME_SIZE - 1))
#define FRAMES 4096u
#define RING 2048u
#define BATCH 64u
#define KERNEL_TX_BATCH 32u
#define MAX_QUEUES 64

#ifndef SO_PREFER_BUSY_POLL
#define SO_PREFER_BUSY_POLL 69
#endif
#ifndef SO_BUSY_POLL_BUDGET
#define SO_BUSY_POLL_BUDGET 70
#endif

struct queue {
	pthread_t thread;
	uint32_t id;
	uint8_t *area;
	struct xsk_umem *umem;
	struct xsk_socket *rx_xsk, *tx_xsk;
	struct xsk_ring_prod fq, tx, fq_out;   /* fq_out: required for the egress (dev, queue), unused */
	struct xsk_ring_cons cq, rx, cq_out;
	uint64_t free_frames[FRAMES];
	uint32_t nfree;
	uint64_t rx_packets, tx_packets, tx_dropped;
	uint32_t spins;
};

static atomic_int stop;
static uint32_t holdoff_us;
static int busy_poll;
static int drop_all;
static uint8_t dst_mac[6], src_mac[6];

/* The steering loader (native/steer.c) reports errors through this. */
int fwd_errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -1;
}

static void on_signal(int sig)
{
	(void)sig;
	atomic_store(&stop, 1);
}

static void holdoff(void)
{
	struct timespec ts = {0, (long)holdoff_us * 1000};

	nanosleep(&ts, NULL);
}

static void reap(struct queue *q)
{
	uint32_t idx, n = xsk_ring_cons__peek(&q->cq_out, RING, &idx);

	for (uint32_t i = 0; i < n; i++)
		q->free_frames[q->nfree++] = *xsk_ring_cons__comp_addr(&q->cq_out, idx + i) & FRAME_MASK;
	if (n)
		xsk_ring_cons__release(&q->cq_out, n);
}

static void refill(struct queue *q)
{
	uint32_t n = xsk_prod_nb_free(&q->fq, q->nfree), idx;

	if (n > q->nfree)
		n = q->nfree;
	if (!n || xsk_ring_prod__reserve(&q->fq, n, &idx) != n)
		return;
	for (uint32_t i = 0; i < n; i++)
		*xsk_ring_prod__fill_addr(&q->fq, idx + i) = q->free_frames[--q->nfree];
	xsk_ring_prod__submit(&q->fq, n);
}

static void *queue_main(void *arg)
{
	struct queue *q = arg;
	int rx_fd = xsk_socket__fd(q->rx_xsk), tx_fd = xsk_socket__fd(q->tx_xsk);

	while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
		uint32_t idx, tidx = 0, n, room;

		reap(q);
		refill(q);
		n = xsk_ring_cons__peek(&q->rx, BATCH, &idx);
		if (!n) {
			struct pollfd pfd = {.fd = rx_fd, .events = POLLIN};

			if (busy_poll) {
				recvfrom(rx_fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
				if (++q->spins < 1000)
					continue;
				q->spins = 0;
			}
			if (poll(&pfd, 1, FWD_POLL_MS) > 0 && holdoff_us)
				holdoff();
			continue;
		}
		q->spins = 0;
		room = drop_all ? 0 : xsk_prod_nb_free(&q->tx, n);
		if (room > n)
			room = n;
		if (room)
			xsk_ring_prod__reserve(&q->tx, room, &tidx);
		for (uint32_t i = 0; i < n; i++) {
			const struct xdp_desc *d = xsk_ring_cons__rx_desc(&q->rx, idx + i);
			uint8_t *eth = q->area + d->addr;

			if (i >= room) {
				q->free_frames[q->nfree++] = d->addr & FRAME_MASK;
				continue;
			}
			memcpy(eth, dst_mac, 6);
			memcpy(eth + 6, src_mac, 6);
			xsk_ring_prod__tx_desc(&q->tx, tidx + i)->addr = d->addr;
			xsk_ring_prod__tx_desc(&q->tx, tidx + i)->len = d->len;
		}
		xsk_ring_cons__release(&q->rx, n);
		q->rx_packets += n;
		q->tx_dropped += n - room;
		if (!room)
			continue;
		xsk_ring_prod__submit(&q->tx, room);
		q->tx_packets += room;
		if (xsk_ring_prod__needs_wakeup(&q->tx))
			for (uint32_t k = 0; k <= room / KERNEL_TX_BATCH; k++)
				if (sendto(tx_fd, NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0 ||
				    (errno != EAGAIN && errno != EBUSY))
					break;
		if (holdoff_us && n < BATCH)
			holdoff();
	}
	return NULL;
}

static int queue_open(struct queue *q, const char *in, const char *out, int copy, int map_fd)
{
	struct xsk_umem_config ucfg = {.fill_size = RING, .comp_size = RING, .frame_size = FRAME_SIZE};
	struct xsk_socket_config rcfg = {
		.rx_size = RING,
		.tx_size = 0,
		.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
		.bind_flags = XDP_USE_NEED_WAKEUP | (copy ? XDP_COPY : 0),
	};
	struct xsk_socket_config tcfg = {
		.tx_size = RING,
		.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
	};
	uint32_t idx;
	int rc;

	q->area = mmap(NULL, (size_t)FRAMES * FRAME_SIZE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (q->area == MAP_FAILED)
		return -errno;
	rc = xsk_umem__create(&q->umem, q->area, (uint64_t)FRAMES * FRAME_SIZE, &q->fq, &q->cq, &ucfg);
	if (!rc)
		rc = xsk_socket__create(&q->rx_xsk, in, q->id, q->umem, &q->rx, NULL, &rcfg);
	if (rc) {
		fprintf(stderr, "xsk_noop: %s queue %u: AF_XDP socket: %s\n", in, q->id, strerror(-rc));
		return rc;
	}
	rc = xsk_socket__create_shared(&q->tx_xsk, out, q->id, q->umem, NULL, &q->tx, &q->fq_out,
				       &q->cq_out, &tcfg);
	if (rc) {
		fprintf(stderr, "xsk_noop: %s queue %u: shared-umem tx socket: %s\n", out, q->id,
			strerror(-rc));
		return rc;
	}
	for (uint32_t i = 0; i < FRAMES; i++)
		q->free_frames[q->nfree++] = (uint64_t)i * FRAME_SIZE;
	if (xsk_ring_prod__reserve(&q->fq, RING, &idx) == RING) {
		for (uint32_t i = 0; i < RING; i++)
			*xsk_ring_prod__fill_addr(&q->fq, idx + i) = q->free_frames[--q->nfree];
		xsk_ring_prod__submit(&q->fq, RING);
	}
	if (busy_poll) {
		int one = 1, usec = 20, budget = BATCH, fd = xsk_socket__fd(q->rx_xsk);

		if (setsockopt(fd, SOL_SOCKET, SO_PREFER_BUSY_POLL, &one, sizeof(one)) ||
		    setsockopt(fd, SOL_SOCKET, SO_BUSY_POLL, &usec, sizeof(usec)) ||
		    setsockopt(fd, SOL_SOCKET, SO_BUSY_POLL_BUDGET, &budget, sizeof(budget))) {
			fprintf(stderr, "xsk_noop: busy polling: %s\n", strerror(errno));
			return -errno;
		}
	}
	rc = xsk_socket__update_xskmap(q->rx_xsk, map_fd);
	if (rc)
		fprintf(stderr, "xsk_noop: XSKMAP: %s\n", strerror(-rc));
	return rc;
}

static void queue_close(struct queue *q)
{
	xsk_socket__delete(q->tx_xsk);
	xsk_socket__delete(q->rx_xsk);
	xsk_umem__delete(q->umem);
	if (q->area && q->area != MAP_FAILED)
		munmap(q->area, (size_t)FRAMES * FRAME_SIZE);
}

/* fwd/bpf/steer.bpf.o next to bench/ (FWD_STEER_OBJ overrides). */
static void obj_path(char *buf, size_t len)
{
	ssize_t n = readlink("/proc/self/exe", buf, len - 1);
	char *slash;

	if (getenv("FWD_STEER_OBJ")) {
		snprintf(buf, len, "%s", getenv("FWD_STEER_OBJ"));
		return;
	}
	buf[n > 0 ? n : 0] = 0;
	slash = strrchr(buf, '/');
	if (slash)
		*slash = 0;
	if (strlen(buf) + sizeof("/../fwd/bpf/steer.bpf.o") <= len)
		strcat(buf, "/../fwd/bpf/steer.bpf.o");
}

static uint32_t rx_queue_count(const char *ifname)
{
	char path[64];
	struct dirent *e;
	uint32_t n = 0;
	DIR *d;

	snprintf(path, sizeof(path), "/sys/class/net/%s/queues", ifname);
	d = opendir(path);
	if (!d)
		return 1;
	while ((e = readdir(d)))
		n += !strncmp(e->d_name, "rx-", 3);
	closedir(d);
	return n ? n : 1;
}

static int if_mac(const char *ifname, uint8_t *mac)
{
	struct ifreq ifr;
	int fd = socket(AF_INET, SOCK_DGRAM, 0), rc;

	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
	rc = fd < 0 ? -1 : ioctl(fd, SIOCGIFHWADDR, &ifr);
	if (fd >= 0)
		close(fd);
	if (!rc)
		memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
	return rc;
}

int main(int argc, char **argv)
{
	static struct queue queues[MAX_QUEUES];
	char obj[4096];
	sigset_t sigs;
	struct fwd_bind_spec binds[4];
	struct fwd_steer *st;
	uint32_t nq = 0, started = 0;
	int copy = 0, rc = 1;
	char err[256];

	if (argc < 4) {
		fprintf(stderr, "usage: xsk_noop IF_IN IF_OUT DST_MAC [--copy] [--queues N] [--holdoff-us N] "
			"[--busy-poll] [--drop]\n");
		return 2;
	}
	for (int i = 4; i < argc; i++) {
		if (!strcmp(argv[i], "--copy"))
			copy = 1;
		else if (!strcmp(argv[i], "--queues") && i + 1 < argc)
			nq = (uint32_t)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--holdoff-us") && i + 1 < argc)
			holdoff_us = (uint32_t)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--busy-poll"))
			busy_poll = 1;
		else if (!strcmp(argv[i], "--drop"))
			drop_all = 1;
		else {
			fprintf(stderr, "xsk_noop: unknown option %s\n", argv[i]);
			return 2;
		}
	}
	if (sscanf(argv[3], "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &dst_mac[0], &dst_mac[1], &dst_mac[2],
		   &dst_mac[3], &dst_mac[4], &dst_mac[5]) != 6 || if_mac(argv[2], src_mac)) {
		fprintf(stderr, "xsk_noop: bad DST_MAC %s or interface %s\n", argv[3], argv[2]);
		return 2;
	}
	obj_path(obj, sizeof(obj));
	if (!nq)
		nq = rx_queue_count(argv[1]);
	if (nq > MAX_QUEUES)
		nq = MAX_QUEUES;
	/* Catch-all binds: every TCP/UDP frame, IPv4 and IPv6. */
	memset(binds, 0, sizeof(binds));
	for (int i = 0; i < 4; i++) {
		binds[i].prefix.family = i < 2 ? 4 : 6;
		binds[i].proto = i % 2 ? 17 : 6;
		binds[i].port_hi = 65535;
		binds[i].hash_fields = FWD_HASH_SRC_ADDR;
	}
	/* XDP native when the driver has it (as fwd run attaches); --copy is about the socket bind only. */
	st = fwd_steer_attach(obj, argv[1], FWD_XSK_MODE_AUTO, err, sizeof(err));
	if (!st) {
		fprintf(stderr, "xsk_noop: %s\n", err);
		return 1;
	}
	if (fwd_steer_set_binds(st, binds, 4, 0, err, sizeof(err))) {
		fprintf(stderr, "xsk_noop: %s\n", err);
		goto out;
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);   /* the queue threads inherit it: main gets the signals */
	for (uint32_t i = 0; i < nq; i++) {
		queues[i].id = i;
		if (queue_open(&queues[i], argv[1], argv[2], copy, fwd_steer_xsks_map_fd(st)))
			goto out;
	}
	for (; started < nq; started++)
		if (pthread_create(&queues[started].thread, NULL, queue_main, &queues[started]))
			goto out;
	fprintf(stderr, "xsk_noop: %s -> %s, %u queue(s), XDP %s mode, %s\n", argv[1], argv[2], nq,
		fwd_steer_attach_mode(st), copy ? "copy" : "auto bind");
	pthread_sigmask(SIG_UNBLOCK, &sigs, NULL);
	while (!atomic_load(&stop))
		pause();
	rc = 0;
out:
	atomic_store(&stop, 1);
	for (uint32_t i = 0; i < started; i++)
		pthread_join(queues[i].thread, NULL);
	fwd_steer_detach(st);
	for (uint32_t i = 0; i < nq; i++) {
		struct xdp_statistics xs = {0};
		socklen_t len = sizeof(xs);

		if (queues[i].rx_xsk)
			getsockopt(xsk_socket__fd(queues[i].rx_xsk), SOL_XDP, XDP_STATISTICS, &xs, &len);
		if (queues[i].rx_packets)
			fprintf(stderr, "xsk_noop: queue %u: rx %lu tx %lu dropped %lu kernel drops %lu\n", i,
				(unsigned long)queues[i].rx_packets, (unsigned long)queues[i].tx_packets,
				(unsigned long)queues[i].tx_dropped,
				(unsigned long)(xs.rx_dropped + xs.rx_ring_full));
		queue_close(&queues[i]);
	}
	return rc;
}
