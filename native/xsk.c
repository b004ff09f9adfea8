/*
 * xsk.c - the AF_XDP back end: one worker per (interface, rx queue) with its
 * own umem, running rx burst -> fwd_process -> tx burst on the frames in
 * place. The steering program (steer.bpf.c) redirects VIP traffic of the
 * queue to this socket through its XSKMAP; everything else never reaches us.
 *
 * Frames. 4 KiB umem chunks, no umem headroom: the kernel puts every rx frame
 * XDP_PACKET_HEADROOM (256) bytes into its chunk, which covers the core's
 * FWD_MIN_HEADROOM (128) for the GUE headers it prepends. A frame is always
 * in exactly one place: the fill ring, the rx ring, a tx ring, a completion
 * ring, or the worker's free stack. PASS/DROP frames go back to the stack at
 * once, sent ones when their completion is reaped; the fill ring is topped up
 * from the stack every loop.
 *
 * Egress. A FORWARD frame leaves on the interface of the route to its
 * backend (fwd_result.egress_ifindex, 0 = where it came in); REPLY frames
 * always leave where they came in. Each worker holds up to XSK_MAX_EGRESS tx
 * paths, path 0 being its own socket. The first frame for another interface
 * opens a path to it (once per interface, in the worker thread):
 *  1. copy mode: an AF_XDP socket on (that interface, our queue id) bound
 *     with XDP_SHARED_UMEM to our umem - tx ring only, plus the fill and
 *     completion rings the kernel wants for every (device, queue) a umem is
 *     bound to. The frame goes out from the umem as it is, through the same
 *     ring/kick machinery as path 0. Works on veth in copy mode (also what
 *     bench/xsk_noop forwards with).
 *  2. an AF_PACKET socket bound to the interface (PACKET_QDISC_BYPASS), fed
 *     with sendmmsg() straight from the umem: when the kernel refuses 1 (the
 *     egress device has no such queue, or another worker's umem owns that
 *     (device, queue) because fwd receives on it too), and always for
 *     zero-copy workers - a zero-copy bind on another NIC's queue can hand
 *     that queue's receive side to our (never filled) fill ring on some
 *     drivers, starving the host's own traffic there. In copy mode it costs
 *     what AF_XDP's copy-mode tx costs: the kernel copies into an skb either
 *     way. Zero-copy egress is therefore only on the receiving interface.
 * A path that cannot be opened drops its frames (tx_dropped) and is retried
 * every second; one whose interface disappears (ENXIO) first takes back the
 * frames still in its rings.
 *
 * No allocation and no lock per packet; counters belong to the worker.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <xdp/xsk.h>

#include "runtime_priv.h"

#define XSK_FRAME_SIZE 4096u
#define XSK_FRAME_MASK (~(uint64_t)(XSK_FRAME_SIZE - 1))
#define XSK_MAX_BATCH 256
#define XSK_MAX_EGRESS 8
#define XSK_MAX_QUEUES 64          /* the steering program's XSKMAP size */
#define XSK_KERNEL_TX_BATCH 32     /* copy-mode tx handles this many per sendto() */
#define XSK_BUSY_POLL_USEC 20
#define XSK_BUSY_SPINS 1000        /* empty busy-poll rounds before sleeping in poll() */
#define XSK_STATS_EVERY 1024       /* bursts between XDP_STATISTICS reads (and when idle) */
#define XSK_EGRESS_RETRY_NS 1000000000ull   /* a failed egress path is retried after 1 s */
#define XSK_MAX_HOLDOFF_US 10000

#ifndef SO_PREFER_BUSY_POLL
#define SO_PREFER_BUSY_POLL 69
#endif
#ifndef SO_BUSY_POLL_BUDGET
#define SO_BUSY_POLL_BUDGET 70
#endif
#ifndef PACKET_QDISC_BYPASS
#define PACKET_QDISC_BYPASS 20
#endif

#define RES_EGRESS(r) ((r)->egress_ifindex)

enum { TX_XSK, TX_PACKET, TX_FAILED };

struct tx_path {
	uint32_t ifindex;
	int kind;                        /* TX_* */
	int fd;
	struct xsk_socket *xsk;          /* TX_XSK on another interface (NULL for path 0) */
	struct xsk_ring_prod tx;
	struct xsk_ring_prod fq;         /* path 0: the rx fill ring; others: unused */
	struct xsk_ring_cons cq;
	uint32_t n;                      /* frames queued in this burst */
	uint64_t retry_ns;               /* TX_FAILED: when to try opening it again */
	int quiet;                       /* failure already logged: retries fail silently */
	uint64_t addr[XSK_MAX_BATCH];
	uint32_t len[XSK_MAX_BATCH];
	struct mmsghdr *msgs;            /* TX_PACKET only */
	struct iovec *iov;
};

struct xsk_port {
	struct fwd_worker *w;
	uint8_t *area;
	size_t area_size;
	struct xsk_umem *umem;
	struct xsk_socket *xsk;
	struct xsk_ring_cons rx;
	int fd;
	int zerocopy;
	uint32_t queue, batch, ring_size, frame_count, busy_poll, holdoff_us;
	uint32_t rx_ifindex;
	uint32_t idle_spins, polls;
	char ifname[IF_NAMESIZE];
	uint32_t npaths;
	struct tx_path paths[XSK_MAX_EGRESS];
	uint32_t nfree;
	uint64_t *free_frames;           /* stack of chunk addresses */
	int egress_full_logged;
};

static inline void frame_free(struct xsk_port *x, uint64_t addr)
{
	x->free_frames[x->nfree++] = addr & XSK_FRAME_MASK;
}

/* ---- setup ---- */

static void paths_close(struct xsk_port *x)
{
	for (uint32_t i = 1; i < x->npaths; i++) {
		struct tx_path *p = &x->paths[i];

		if (p->kind == TX_XSK)
			xsk_socket__delete(p->xsk);
		else if (p->kind == TX_PACKET)
			close(p->fd);
		free(p->msgs);
		free(p->iov);
	}
	x->npaths = x->npaths ? 1 : 0;
}

static void port_free(struct xsk_port *x)
{
	if (!x)
		return;
	paths_close(x);
	xsk_socket__delete(x->xsk);
	xsk_umem__delete(x->umem);
	if (x->area)
		munmap(x->area, x->area_size);
	free(x->free_frames);
	free(x);
}

/*
 * libxdp keeps the umem's fill/completion rings mapped after a failed socket
 * bind (for a retry on the same umem) and xsk_umem__delete() does not unmap
 * them: undo them here before deleting the umem.
 */
static void umem_rings_unmap(struct xsk_port *x)
{
	struct tx_path *p0 = &x->paths[0];
	struct xdp_mmap_offsets off;
	socklen_t len = sizeof(off);

	if (getsockopt(xsk_umem__fd(x->umem), SOL_XDP, XDP_MMAP_OFFSETS, &off, &len))
		return;
	munmap((uint8_t *)p0->fq.ring - off.fr.desc, off.fr.desc + x->ring_size * sizeof(uint64_t));
	munmap((uint8_t *)p0->cq.ring - off.cr.desc, off.cr.desc + x->ring_size * sizeof(uint64_t));
}

/* Umem, socket and full fill ring for one bind mode. 0 or -errno (nothing left behind). */
static int port_bind(struct xsk_port *x, uint16_t bind_flags)
{
	struct tx_path *p0 = &x->paths[0];
	struct xsk_umem_config ucfg = {
		.fill_size = x->ring_size,
		.comp_size = x->ring_size,
		.frame_size = XSK_FRAME_SIZE,
		.frame_headroom = 0,   /* XDP_PACKET_HEADROOM already precedes each rx frame */
		.flags = 0,
	};
	struct xsk_socket_config scfg = {
		.rx_size = x->ring_size,
		.tx_size = x->ring_size,
		.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
		.xdp_flags = 0,
		.bind_flags = bind_flags | XDP_USE_NEED_WAKEUP,
	};
	uint32_t idx, n;
	int rc;

	rc = xsk_umem__create(&x->umem, x->area, x->area_size, &p0->fq, &p0->cq, &ucfg);
	if (rc)
		return rc;
	rc = xsk_socket__create(&x->xsk, x->ifname, x->queue, x->umem, &x->rx, &p0->tx, &scfg);
	if (rc) {
		umem_rings_unmap(x);
		xsk_umem__delete(x->umem);
		x->umem = NULL;
		x->xsk = NULL;
		return rc;
	}
	x->fd = xsk_socket__fd(x->xsk);
	p0->fd = x->fd;
	p0->kind = TX_XSK;
	p0->ifindex = x->rx_ifindex;
	x->nfree = 0;
	for (uint32_t i = 0; i < x->frame_count; i++)
		x->free_frames[x->nfree++] = (uint64_t)(x->frame_count - 1 - i) * XSK_FRAME_SIZE;
	n = x->nfree < x->ring_size ? x->nfree : x->ring_size;
	if (xsk_ring_prod__reserve(&p0->fq, n, &idx) == n) {
		for (uint32_t i = 0; i < n; i++)
			*xsk_ring_prod__fill_addr(&p0->fq, idx + i) = x->free_frames[--x->nfree];
		xsk_ring_prod__submit(&p0->fq, n);
	}
	return 0;
}

static int busy_poll_setup(struct xsk_port *x, char *err, size_t errlen)
{
	int one = 1, usec = XSK_BUSY_POLL_USEC, budget = (int)x->batch;

	if (setsockopt(x->fd, SOL_SOCKET, SO_PREFER_BUSY_POLL, &one, sizeof(one)) ||
	    setsockopt(x->fd, SOL_SOCKET, SO_BUSY_POLL, &usec, sizeof(usec)) ||
	    setsockopt(x->fd, SOL_SOCKET, SO_BUSY_POLL_BUDGET, &budget, sizeof(budget)))
		return fwd_errf(err, errlen, "%s queue %u: cannot enable busy polling: %s", x->ifname,
				x->queue, strerror(errno));
	return 0;
}

static int pow2(uint32_t v)
{
	return v && !(v & (v - 1));
}

/* ---- egress paths ---- */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/*
 * (Re)open tx path p to p->ifindex (see the top comment). On failure the
 * path stays TX_FAILED - its frames are dropped - and is retried after
 * XSK_EGRESS_RETRY_NS. Returns p when usable, else NULL.
 */
static struct tx_path *egress_open(struct xsk_port *x, struct tx_path *p)
{
	struct xsk_socket_config scfg = {
		.rx_size = 0,
		.tx_size = x->ring_size,
		.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
	};
	struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_ifindex = (int)p->ifindex};
	char name[IF_NAMESIZE];
	int one = 1, rc;

	p->kind = TX_FAILED;
	p->fd = -1;
	p->xsk = NULL;
	p->n = 0;
	p->retry_ns = now_ns() + XSK_EGRESS_RETRY_NS;
	if (!if_indextoname(p->ifindex, name)) {
		if (!p->quiet++)
			fprintf(stderr, "fwd: %s: egress interface %u: %s; its frames are dropped\n",
				x->w->name, p->ifindex, strerror(errno));
		return NULL;
	}
	rc = x->zerocopy ? -EOPNOTSUPP :   /* see the top comment */
		xsk_socket__create_shared(&p->xsk, name, x->queue, x->umem, NULL, &p->tx, &p->fq,
					  &p->cq, &scfg);
	if (!rc) {
		p->kind = TX_XSK;
		p->quiet = 0;
		p->fd = xsk_socket__fd(p->xsk);
		fprintf(stderr, "fwd: %s: egress %s queue %u: AF_XDP (shared umem)\n", x->w->name,
			name, x->queue);
		return p;
	}
	p->xsk = NULL;
	if (!p->msgs)
		p->msgs = calloc(XSK_MAX_BATCH, sizeof(*p->msgs));
	if (!p->iov)
		p->iov = calloc(XSK_MAX_BATCH, sizeof(*p->iov));
	p->fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);   /* proto 0: receives nothing */
	if (!p->msgs || !p->iov || p->fd < 0 ||
	    setsockopt(p->fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one)) ||
	    bind(p->fd, (struct sockaddr *)&sll, sizeof(sll))) {
		if (!p->quiet++)
			fprintf(stderr, "fwd: %s: egress %s: no AF_XDP (%s) and no AF_PACKET socket (%s); "
				"its frames are dropped\n", x->w->name, name, strerror(-rc), strerror(errno));
		if (p->fd >= 0)
			close(p->fd);
		p->fd = -1;
		return NULL;
	}
	for (uint32_t i = 0; i < XSK_MAX_BATCH; i++) {
		p->msgs[i].msg_hdr.msg_iov = &p->iov[i];
		p->msgs[i].msg_hdr.msg_iovlen = 1;
	}
	p->kind = TX_PACKET;
	p->quiet = 0;
	fprintf(stderr, "fwd: %s: egress %s: %s%s, using AF_PACKET\n", x->w->name, name,
		x->zerocopy ? "zero-copy worker" : "AF_XDP refused: ", x->zerocopy ? "" : strerror(-rc));
	return p;
}

/*
 * The egress interface went away (ENXIO/ENODEV): take back the frames still
 * in the path's rings, close it and let egress_path retry it later.
 */
static void egress_lost(struct xsk_port *x, struct tx_path *p, int err)
{
	fprintf(stderr, "fwd: %s: egress interface %u lost (%s); retrying in %u s\n", x->w->name,
		p->ifindex, strerror(err), (unsigned)(XSK_EGRESS_RETRY_NS / 1000000000u));
	if (p->kind == TX_XSK) {
		uint32_t idx, n = xsk_ring_cons__peek(&p->cq, x->ring_size, &idx);

		for (uint32_t i = 0; i < n; i++)
			frame_free(x, *xsk_ring_cons__comp_addr(&p->cq, idx + i));
		for (uint32_t i = *p->tx.consumer; i != *p->tx.producer; i++)
			frame_free(x, xsk_ring_prod__tx_desc(&p->tx, i)->addr);
		xsk_socket__delete(p->xsk);
		p->xsk = NULL;
	} else if (p->kind == TX_PACKET) {
		close(p->fd);
	}
	p->fd = -1;
	p->kind = TX_FAILED;
	p->retry_ns = now_ns() + XSK_EGRESS_RETRY_NS;
}

static inline struct tx_path *egress_path(struct xsk_port *x, uint32_t ifindex)
{
	struct tx_path *p;

	if (!ifindex || ifindex == x->rx_ifindex)
		return &x->paths[0];
	for (uint32_t i = 1; i < x->npaths; i++) {
		p = &x->paths[i];
		if (p->ifindex != ifindex)
			continue;
		if (p->kind != TX_FAILED)
			return p;
		return now_ns() >= p->retry_ns ? egress_open(x, p) : NULL;
	}
	if (x->npaths == XSK_MAX_EGRESS) {
		if (!x->egress_full_logged++)
			fprintf(stderr, "fwd: %s: more than %d egress interfaces; frames to others are dropped\n",
				x->w->name, XSK_MAX_EGRESS - 1);
		return NULL;
	}
	p = &x->paths[x->npaths++];
	memset(p, 0, sizeof(*p));
	p->ifindex = ifindex;
	return egress_open(x, p);
}

/* ---- the ring loop ---- */

static void reap(struct xsk_port *x)
{
	for (uint32_t k = 0; k < x->npaths; k++) {
		struct tx_path *p = &x->paths[k];
		uint32_t idx, n;

		if (p->kind != TX_XSK)
			continue;
		n = xsk_ring_cons__peek(&p->cq, x->ring_size, &idx);
		for (uint32_t i = 0; i < n; i++)
			frame_free(x, *xsk_ring_cons__comp_addr(&p->cq, idx + i));
		if (n)
			xsk_ring_cons__release(&p->cq, n);
	}
}

static void refill(struct xsk_port *x)
{
	struct xsk_ring_prod *fq = &x->paths[0].fq;
	uint32_t n = xsk_prod_nb_free(fq, x->nfree), idx;

	if (n > x->nfree)
		n = x->nfree;
	if (!n || xsk_ring_prod__reserve(fq, n, &idx) != n)
		return;
	for (uint32_t i = 0; i < n; i++)
		*xsk_ring_prod__fill_addr(fq, idx + i) = x->free_frames[--x->nfree];
	xsk_ring_prod__submit(fq, n);
}

/* Returns 0 or the errno that ended the kicks. */
static int kick_tx(struct xsk_port *x, struct tx_path *p, uint32_t n)
{
	if (!xsk_ring_prod__needs_wakeup(&p->tx))
		return 0;
	/* Copy mode sends at most XSK_KERNEL_TX_BATCH per call and says EAGAIN for the rest. */
	for (uint32_t k = 0; k <= n / XSK_KERNEL_TX_BATCH; k++) {
		x->w->port.wakeups++;
		if (sendto(p->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0)
			return 0;
		if (errno != EAGAIN && errno != EBUSY)
			return errno;   /* ENOBUFS/ENETDOWN: the next burst tries again */
	}
	return 0;
}

static void flush_xsk(struct xsk_port *x, struct tx_path *p)
{
	uint32_t n = p->n, idx, room = xsk_prod_nb_free(&p->tx, n);
	int err;

	if (room < n) {
		reap(x);
		room = xsk_prod_nb_free(&p->tx, n);
	}
	if (room < n) {
		x->w->port.tx_dropped += n - room;
		for (uint32_t i = room; i < n; i++)
			frame_free(x, p->addr[i]);
		n = room;
	}
	if (n && xsk_ring_prod__reserve(&p->tx, n, &idx) == n) {
		for (uint32_t i = 0; i < n; i++) {
			struct xdp_desc *d = xsk_ring_prod__tx_desc(&p->tx, idx + i);

			d->addr = p->addr[i];
			d->len = p->len[i];
		}
		xsk_ring_prod__submit(&p->tx, n);
		x->w->port.tx_packets += n;
	}
	err = kick_tx(x, p, n);
	if ((err == ENXIO || err == ENODEV) && p != &x->paths[0])
		egress_lost(x, p, err);   /* path 0 gone: idle_wait sees POLLERR */
}

static void flush_packet(struct xsk_port *x, struct tx_path *p)
{
	int sent, err = 0;

	for (uint32_t i = 0; i < p->n; i++) {
		p->iov[i].iov_base = x->area + p->addr[i];
		p->iov[i].iov_len = p->len[i];
	}
	sent = sendmmsg(p->fd, p->msgs, p->n, MSG_DONTWAIT);
	if (sent < 0) {
		err = errno;
		sent = 0;
	}
	x->w->port.tx_packets += (uint32_t)sent;
	x->w->port.tx_dropped += p->n - (uint32_t)sent;
	for (uint32_t i = 0; i < p->n; i++)   /* the kernel copied them */
		frame_free(x, p->addr[i]);
	if (err == ENXIO || err == ENODEV)
		egress_lost(x, p, err);
}

static void read_kernel_stats(struct xsk_port *x)
{
	struct xdp_statistics st;
	socklen_t len = sizeof(st);

	if (!getsockopt(x->fd, SOL_XDP, XDP_STATISTICS, &st, &len))
		x->w->port.kernel_drops = st.rx_dropped + st.rx_ring_full;
}

/*
 * Receive holdoff (fwd_xsk_config.holdoff_us): after a burst smaller than the
 * batch, or a wake-up by the first frame, let frames pile up for a moment so
 * that the next burst is larger. On veth (copy mode) each burst costs a
 * wake-up, a tx kick and the ring bookkeeping whatever its size; fewer,
 * larger bursts cost less CPU per packet, for up to holdoff_us more latency.
 * A timer sleep on the worker's own core, unlike the cross-core wake-up of a
 * frame arriving while it sleeps in poll().
 */
static void holdoff(const struct xsk_port *x)
{
	struct timespec ts = {0, (long)x->holdoff_us * 1000};

	nanosleep(&ts, NULL);
}

/*
 * Nothing received: sleep until frames, a wake-up (publication, stop) or the
 * end of the poll period (or spin when busy polling). -1 on a dead socket.
 */
static int idle_wait(struct xsk_port *x)
{
	short rev;
	int err = 0;
	socklen_t elen = sizeof(err);

	if (x->busy_poll || xsk_ring_prod__needs_wakeup(&x->paths[0].fq)) {
		x->w->port.wakeups++;
		recvfrom(x->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
		if (x->busy_poll && ++x->idle_spins < XSK_BUSY_SPINS)
			return 0;
	}
	x->idle_spins = 0;
	if (fwd_worker_wait(x->w, x->fd, POLLIN, &rev) > 0 && !(rev & (POLLERR | POLLHUP | POLLNVAL))) {
		if ((rev & POLLIN) && x->holdoff_us)
			holdoff(x);
		return 0;
	}
	/* Quiet for a poll period: a good time for the syscalls the busy path skips. */
	read_kernel_stats(x);
	/* The kernel unbinds the socket and sets ENETDOWN when the interface goes away. */
	if (getsockopt(x->fd, SOL_SOCKET, SO_ERROR, &err, &elen) || !err)
		return 0;
	fprintf(stderr, "fwd: %s: socket failed: %s (interface gone?)\n", x->w->name, strerror(err));
	return -1;
}

static int xsk_poll(struct fwd_worker *w, const struct fwd_snapshot *s)
{
	struct xsk_port *x = w->priv;
	uint32_t idx, n;

	reap(x);
	refill(x);
	n = xsk_ring_cons__peek(&x->rx, x->batch, &idx);
	if (!n)
		return idle_wait(x);
	x->idle_spins = 0;
	for (uint32_t i = 0; i < n; i++) {
		const struct xdp_desc *d = xsk_ring_cons__rx_desc(&x->rx, idx + i);
		uint64_t base = d->addr & XSK_FRAME_MASK;
		struct fwd_result res;
		struct tx_path *p;

		if (!s) {
			frame_free(x, base);
			continue;
		}
		switch (fwd_process(s, x->area + base, XSK_FRAME_SIZE, (uint32_t)(d->addr - base),
				    d->len, &res, &w->counters)) {
		case FWD_FORWARD:
		case FWD_REPLY:
			p = res.verdict == FWD_REPLY ? &x->paths[0] : egress_path(x, RES_EGRESS(&res));
			if (!p) {
				w->port.tx_dropped++;
				frame_free(x, base);
				break;
			}
			p->addr[p->n] = base + res.out_off;
			p->len[p->n++] = res.out_len;
			break;
		case FWD_PASS:   /* the steering program should not send these */
			w->port.pass_dropped++;
			/* fall through */
		default:
			frame_free(x, base);
		}
	}
	xsk_ring_cons__release(&x->rx, n);
	w->port.rx_packets += n;
	for (uint32_t k = 0; k < x->npaths; k++) {
		struct tx_path *p = &x->paths[k];

		if (!p->n)
			continue;
		if (p->kind == TX_XSK)
			flush_xsk(x, p);
		else if (p->kind == TX_PACKET)
			flush_packet(x, p);
		p->n = 0;
	}
	if (++x->polls % XSK_STATS_EVERY == 0)
		read_kernel_stats(x);
	if (x->holdoff_us && n < x->batch)
		holdoff(x);
	return (int)n;
}

static void xsk_close(struct fwd_worker *w)
{
	port_free(w->priv);
	w->priv = NULL;
}

static const struct fwd_worker_ops xsk_ops = {
	.kind = "xsk",
	.poll = xsk_poll,
	.close = xsk_close,
};

int fwd_runtime_add_xsk(struct fwd_runtime *rt, const struct fwd_xsk_config *cfg, char *err,
			size_t errlen)
{
	struct xsk_port *x;
	struct fwd_worker *w;
	char name[32];
	int rc = 0;

	if (cfg->mode > FWD_XSK_MODE_ZEROCOPY)
		return fwd_errf(err, errlen, "bad AF_XDP mode %u", cfg->mode);
	if (cfg->xsks_map_fd < 0)
		return fwd_errf(err, errlen, "%s: no XSKMAP: attach the steering program first",
				cfg->ifname);
	if (cfg->queue >= XSK_MAX_QUEUES)
		return fwd_errf(err, errlen, "%s queue %u: fwd serves queues 0..%d", cfg->ifname,
				cfg->queue, XSK_MAX_QUEUES - 1);
	x = calloc(1, sizeof(*x));
	if (!x)
		return fwd_errf(err, errlen, "out of memory");
	snprintf(x->ifname, sizeof(x->ifname), "%.*s", (int)sizeof(cfg->ifname), cfg->ifname);
	x->queue = cfg->queue;
	x->frame_count = cfg->frame_count ? cfg->frame_count : 4096;
	x->ring_size = cfg->ring_size ? cfg->ring_size : 2048;
	x->batch = cfg->batch ? cfg->batch : 64;
	x->busy_poll = cfg->busy_poll;
	x->holdoff_us = cfg->holdoff_us;
	x->fd = -1;
	x->npaths = 1;
	x->rx_ifindex = if_nametoindex(x->ifname);
	if (!x->rx_ifindex) {
		rc = fwd_errf(err, errlen, "%s: no such interface", x->ifname);
		goto fail;
	}
	if (x->holdoff_us > XSK_MAX_HOLDOFF_US) {
		rc = fwd_errf(err, errlen, "%s: receive holdoff %u us is above %d us", x->ifname,
			      x->holdoff_us, XSK_MAX_HOLDOFF_US);
		goto fail;
	}
	if (!pow2(x->ring_size) || x->batch > XSK_MAX_BATCH || x->batch > x->ring_size ||
	    x->frame_count < 2 * x->batch) {
		rc = fwd_errf(err, errlen,
			      "%s: bad AF_XDP sizes (ring %u must be a power of two >= batch %u <= %d, "
			      "frames %u >= 2 x batch)", x->ifname, x->ring_size, x->batch,
			      XSK_MAX_BATCH, x->frame_count);
		goto fail;
	}
	x->area_size = (size_t)x->frame_count * XSK_FRAME_SIZE;
	x->area = mmap(NULL, x->area_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	x->free_frames = calloc(x->frame_count, sizeof(*x->free_frames));
	if (x->area == MAP_FAILED || !x->free_frames) {
		if (x->area == MAP_FAILED)
			x->area = NULL;
		rc = fwd_errf(err, errlen, "%s: cannot allocate %zu bytes of umem", x->ifname, x->area_size);
		goto fail;
	}
	if (cfg->mode != FWD_XSK_MODE_COPY) {
		rc = port_bind(x, XDP_ZEROCOPY);
		x->zerocopy = !rc;
		if (rc && cfg->mode == FWD_XSK_MODE_ZEROCOPY) {
			rc = fwd_errf(err, errlen, "%s queue %u: zero-copy AF_XDP refused: %s", x->ifname,
				      x->queue, strerror(-rc));
			goto fail;
		}
	}
	if (!x->zerocopy) {
		int zc_rc = rc;

		rc = port_bind(x, XDP_COPY);
		if (rc) {
			rc = fwd_errf(err, errlen, "%s queue %u: cannot bind an AF_XDP socket: %s%s",
				      x->ifname, x->queue, strerror(-rc),
				      rc == -EINVAL ? " (no such queue?)" :
				      rc == -EBUSY ? " (another AF_XDP socket has this queue)" : "");
			goto fail;
		}
		if (cfg->mode == FWD_XSK_MODE_AUTO)
			fprintf(stderr, "fwd: %s queue %u: copy mode (zero-copy: %s)\n", x->ifname,
				x->queue, strerror(-zc_rc));
	}
	if (x->busy_poll && (rc = busy_poll_setup(x, err, errlen)))
		goto fail;
	snprintf(name, sizeof(name), "xsk:%s:%u:%s", x->ifname, x->queue, x->zerocopy ? "zc" : "copy");
	w = fwd_worker_add(rt, &xsk_ops, name, err, errlen);
	if (!w) {
		rc = -1;
		goto fail;
	}
	w->priv = x;
	x->w = w;
	/* Last: from here on the steering program sends the queue's VIP frames to us. */
	rc = xsk_socket__update_xskmap(x->xsk, cfg->xsks_map_fd);
	if (rc) {
		fwd_worker_discard(rt, w);
		rc = fwd_errf(err, errlen, "%s queue %u: cannot register the socket in the XSKMAP: %s",
			      x->ifname, x->queue, strerror(-rc));
		goto fail;
	}
	return (int)(rt->nworkers - 1);
fail:
	port_free(x);
	return rc < 0 ? rc : -1;
}
