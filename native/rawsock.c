/*
 * rawsock.c - the raw-socket back end (fallback where AF_XDP cannot be used).
 *
 * One worker = one AF_PACKET socket bound to the receiving interface with a
 * TPACKET_V3 memory-mapped rx ring, joined to a PACKET_FANOUT_HASH group
 * with the interface's other workers (one flow stays on one worker), plus a
 * second AF_PACKET socket (protocol 0: it receives nothing) that transmits
 * with sendmmsg and PACKET_QDISC_BYPASS.
 *
 * The socket is a tap: the kernel keeps its own copy of every frame. What the
 * core PASSes is therefore simply left alone (the verdict counter counts it);
 * the VIP frames fwd forwards, drops or answers are kept from the kernel by
 * the nftables netdev-ingress table fwd/live.py installs (taps run before the
 * ingress hook, so the ring still sees them).
 *
 * Frames are processed in place in the ring: PACKET_RESERVE puts
 * FWD_MIN_HEADROOM (+ room to put back a VLAN tag the kernel stripped) before
 * every frame, the core writes its headers there (never after the frame:
 * buf_size ends at the frame), and sendmmsg reads the output straight from
 * the block, which goes back to the kernel after the burst is sent. No copy
 * and no allocation per packet.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "runtime_priv.h"

/*
 * A V3 block reaches userspace when full or RAW_RETIRE_MS after its first
 * frame, so at low rates every block carries a few frames: the block count,
 * not the bytes, bounds how long a worker may be descheduled before the
 * kernel drops. 64 blocks of 128 KiB (room for a 64 KiB GRO frame) ride out
 * a 64 ms stall at any rate, and hold about 350 full-size frames each.
 */
#define RAW_BLOCK_SIZE_DEFAULT (128u << 10)
#define RAW_BLOCK_COUNT_DEFAULT 64
#define RAW_BATCH_DEFAULT 64
#define RAW_BATCH_MAX 1024
#define RAW_FRAME_SIZE 2048        /* V3 ignores it for placement; must divide the block */
#define RAW_RETIRE_MS 1            /* a partly filled block reaches us after at most this */
#define RAW_VLAN_HLEN 4
#define RAW_RESERVE (FWD_MIN_HEADROOM + RAW_VLAN_HLEN)
#define RAW_STATS_EVERY 256        /* bursts between PACKET_STATISTICS reads when busy */
#define RAW_SNDBUF (8 << 20)

struct raw_port {
	int rx_fd, tx_fd;
	int ifindex;
	char ifname[IF_NAMESIZE];
	uint32_t fanout_id;
	uint8_t *ring;
	size_t ring_len;
	uint32_t block_size, block_count, batch;
	uint32_t blk;                       /* block being read */
	uint32_t left;                      /* frames of it not yet processed; 0: none open */
	uint8_t *next;                      /* its next frame (struct tpacket3_hdr) */
	uint32_t bursts;
	int filtering;                      /* the drop-all filter is still attached */
	uint32_t ntx;
	struct mmsghdr *msgs;               /* batch entries each */
	struct iovec *iov;
	struct sockaddr_ll *dst;
	struct fwd_result *res;
};

static int raw_poll(struct fwd_worker *w, const struct fwd_snapshot *s);
static void raw_close(struct fwd_worker *w);

static const struct fwd_worker_ops raw_ops = {
	.kind = "raw",
	.poll = raw_poll,
	.close = raw_close,
};

static inline struct tpacket_block_desc *raw_block(const struct raw_port *rp, uint32_t i)
{
	return (struct tpacket_block_desc *)(rp->ring + (size_t)i * rp->block_size);
}

static void raw_read_stats(struct raw_port *rp, struct fwd_port_stats *ps)
{
	struct tpacket_stats_v3 st;
	socklen_t len = sizeof(st);

	/* reading resets the kernel's counters: accumulate */
	if (getsockopt(rp->rx_fd, SOL_PACKET, PACKET_STATISTICS, &st, &len) == 0)
		ps->kernel_drops += st.tp_drops;
}

/*
 * The socket reported an error (ENETDOWN when its interface went down or
 * away). Reading SO_ERROR clears it, or poll() would return at once forever.
 * A link that is only down is waited for (the kernel re-hooks the socket,
 * fanout included, when it comes up); an interface that is gone ends the
 * worker.
 */
static int raw_sock_error(struct fwd_worker *w, struct raw_port *rp)
{
	short rev;
	int soerr = 0;
	socklen_t len = sizeof(soerr);

	getsockopt(rp->rx_fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
	if ((int)if_nametoindex(rp->ifname) != rp->ifindex)
		return -1;
	if (soerr)   /* link down: no frames will come for a while (a publication still wakes us) */
		fwd_worker_wait(w, -1, 0, &rev);
	return 0;
}

/* Send the burst; a frame the kernel refuses (full, MTU, link down) is counted and skipped. */
static void raw_tx_flush(struct raw_port *rp, struct fwd_port_stats *ps)
{
	uint32_t done = 0;
	int waited = 0;

	while (done < rp->ntx) {
		int r = sendmmsg(rp->tx_fd, rp->msgs + done, rp->ntx - done, MSG_DONTWAIT);

		if (r > 0) {
			done += (uint32_t)r;
			ps->tx_packets += (uint64_t)r;
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == ENOBUFS) && !waited) {
			struct pollfd pfd = {.fd = rp->tx_fd, .events = POLLOUT};

			waited = 1;
			poll(&pfd, 1, 1);
			continue;
		}
		ps->tx_dropped++;
		done++;
	}
	rp->ntx = 0;
}

static inline void raw_tx_add(struct raw_port *rp, uint8_t *frame, uint32_t len, int ifindex)
{
	uint32_t i = rp->ntx++;

	rp->iov[i].iov_base = frame;
	rp->iov[i].iov_len = len;
	rp->dst[i].sll_ifindex = ifindex;
	memcpy(&rp->dst[i].sll_protocol, frame + 12, 2);   /* the frame's EtherType, network order */
	rp->msgs[i].msg_hdr.msg_name = &rp->dst[i];
	rp->msgs[i].msg_hdr.msg_namelen = sizeof(rp->dst[i]);
	rp->msgs[i].msg_hdr.msg_iov = &rp->iov[i];
	rp->msgs[i].msg_hdr.msg_iovlen = 1;
}

/* Where a FORWARD frame leaves: the next hop's interface once the core names one. */
static inline int raw_egress(const struct fwd_result *res, int rx_ifindex)
{
	return res->egress_ifindex ? (int)res->egress_ifindex : rx_ifindex;
}

static int raw_poll(struct fwd_worker *w, const struct fwd_snapshot *s)
{
	struct raw_port *rp = w->priv;
	struct fwd_port_stats *ps = &w->port;
	uint32_t n = 0;

	if (rp->filtering) {
		/* running now: frames fanned out to this socket count from here on */
		int dummy = 0;

		if (setsockopt(rp->rx_fd, SOL_SOCKET, SO_DETACH_FILTER, &dummy, sizeof(dummy)) < 0)
			return -1;
		rp->filtering = 0;
	}
	if (!rp->left) {
		struct tpacket_block_desc *bd = raw_block(rp, rp->blk);

		if (!(__atomic_load_n(&bd->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER)) {
			short rev;

			ps->wakeups++;
			if (fwd_worker_wait(w, rp->rx_fd, POLLIN | POLLERR, &rev) < 0)
				return -1;
			if ((rev & POLLERR) && raw_sock_error(w, rp) < 0)
				return -1;
			if (!(__atomic_load_n(&bd->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER)) {
				raw_read_stats(rp, ps);
				return 0;
			}
		}
		rp->left = bd->hdr.bh1.num_pkts;
		rp->next = (uint8_t *)bd + bd->hdr.bh1.offset_to_first_pkt;
	}

	while (rp->left && n < rp->batch) {
		struct tpacket3_hdr *h = (struct tpacket3_hdr *)rp->next;
		/* buf starts after the header + sockaddr_ll: the reserve is ours to write */
		uint8_t *buf = rp->next + TPACKET3_HDRLEN;
		uint32_t off = h->tp_mac - TPACKET3_HDRLEN;
		uint32_t len = h->tp_snaplen;
		struct fwd_result *res = &rp->res[n];
		int v;

		rp->next += h->tp_next_offset;
		rp->left--;
		n++;
		ps->rx_packets++;
		if ((h->tp_status & TP_STATUS_VLAN_VALID) && len >= 12 && off >= RAW_VLAN_HLEN) {
			/* the kernel took the 802.1Q tag off: put it back for the core */
			uint16_t tpid = (h->tp_status & TP_STATUS_VLAN_TPID_VALID) ? h->hv1.tp_vlan_tpid
										   : ETH_P_8021Q;
			uint8_t *f = buf + off - RAW_VLAN_HLEN;

			memmove(f, f + RAW_VLAN_HLEN, 12);
			f[12] = (uint8_t)(tpid >> 8);
			f[13] = (uint8_t)tpid;
			f[14] = (uint8_t)(h->hv1.tp_vlan_tci >> 8);
			f[15] = (uint8_t)h->hv1.tp_vlan_tci;
			off -= RAW_VLAN_HLEN;
			len += RAW_VLAN_HLEN;
		}
		if (!s) {
			continue;   /* nothing published: everything is the kernel's */
		}
		v = fwd_process(s, buf, off + len, off, len, res, &w->counters);
		if (v == FWD_FORWARD)
			raw_tx_add(rp, buf + res->out_off, res->out_len, raw_egress(res, rp->ifindex));
		else if (v == FWD_REPLY)
			raw_tx_add(rp, buf + res->out_off, res->out_len, rp->ifindex);
		/* PASS: the kernel has its own copy; DROP: nothing to do */
	}
	if (rp->ntx)
		raw_tx_flush(rp, ps);
	if (!rp->left) {
		/* the outputs were sent from this block: only now may the kernel reuse it */
		__atomic_store_n(&raw_block(rp, rp->blk)->hdr.bh1.block_status, TP_STATUS_KERNEL,
				 __ATOMIC_RELEASE);
		rp->blk = (rp->blk + 1) % rp->block_count;
	}
	if (++rp->bursts % RAW_STATS_EVERY == 0)
		raw_read_stats(rp, ps);
	return (int)n;
}

static void raw_port_free(struct raw_port *rp)
{
	if (!rp)
		return;
	if (rp->ring && rp->ring != MAP_FAILED)
		munmap(rp->ring, rp->ring_len);
	if (rp->rx_fd >= 0)
		close(rp->rx_fd);
	if (rp->tx_fd >= 0)
		close(rp->tx_fd);
	free(rp->msgs);
	free(rp->iov);
	free(rp->dst);
	free(rp->res);
	free(rp);
}

static void raw_close(struct fwd_worker *w)
{
	raw_port_free(w->priv);
	w->priv = NULL;
}

/* The fanout group of the interface's earlier raw workers in this runtime, or 0. */
static uint32_t raw_group_of(const struct fwd_runtime *rt, int ifindex)
{
	for (uint32_t i = 0; i < rt->nworkers; i++) {
		const struct fwd_worker *w = rt->workers[i];
		const struct raw_port *rp = w->priv;

		if (w->ops == &raw_ops && rp && rp->ifindex == ifindex)
			return rp->fanout_id;
	}
	return 0;
}

static uint32_t raw_count_on(const struct fwd_runtime *rt, int ifindex)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < rt->nworkers; i++) {
		const struct fwd_worker *w = rt->workers[i];
		const struct raw_port *rp = w->priv;

		if (w->ops == &raw_ops && rp && rp->ifindex == ifindex)
			n++;
	}
	return n;
}

#define RAW_FAIL(...) (fwd_errf(err, errlen, __VA_ARGS__), raw_port_free(rp), -1)

static int raw_port_open(struct fwd_runtime *rt, const struct fwd_raw_config *cfg, struct raw_port **out,
			 char *err, size_t errlen)
{
	struct sock_filter drop_all = BPF_STMT(BPF_RET | BPF_K, 0);
	struct sock_fprog prog = {.len = 1, .filter = &drop_all};
	const char *ifn = cfg->ifname;
	struct tpacket_req3 req;
	struct sockaddr_ll sll;
	struct raw_port *rp;
	int one = 1, version = TPACKET_V3, reserve = RAW_RESERVE, sndbuf = RAW_SNDBUF;
	uint32_t group;
	int fanout;

	rp = calloc(1, sizeof(*rp));
	if (!rp)
		return fwd_errf(err, errlen, "raw socket on %s: out of memory", ifn);
	rp->rx_fd = rp->tx_fd = -1;
	rp->block_size = cfg->block_size ? cfg->block_size : RAW_BLOCK_SIZE_DEFAULT;
	rp->block_count = cfg->block_count ? cfg->block_count : RAW_BLOCK_COUNT_DEFAULT;
	rp->batch = cfg->batch ? cfg->batch : RAW_BATCH_DEFAULT;
	if (rp->batch > RAW_BATCH_MAX)
		return RAW_FAIL("raw socket on %s: batch %u too large (at most %d)", ifn, rp->batch,
				RAW_BATCH_MAX);
	if (rp->block_size < 4096 || rp->block_size % (uint32_t)getpagesize() ||
	    (rp->block_size & (rp->block_size - 1)))
		return RAW_FAIL("raw socket on %s: block size %u must be a power of two >= the page size",
				ifn, rp->block_size);
	if (rp->block_count < 2 || rp->block_count > 4096)
		return RAW_FAIL("raw socket on %s: block count %u out of range 2..4096", ifn,
				rp->block_count);

	rp->ifindex = (int)if_nametoindex(ifn);
	if (!rp->ifindex)
		return RAW_FAIL("interface %s does not exist", ifn);
	snprintf(rp->ifname, sizeof(rp->ifname), "%s", ifn);

	rp->msgs = calloc(rp->batch, sizeof(*rp->msgs));
	rp->iov = calloc(rp->batch, sizeof(*rp->iov));
	rp->dst = calloc(rp->batch, sizeof(*rp->dst));
	rp->res = calloc(rp->batch, sizeof(*rp->res));
	if (!rp->msgs || !rp->iov || !rp->dst || !rp->res)
		return RAW_FAIL("raw socket on %s: out of memory", ifn);
	for (uint32_t i = 0; i < rp->batch; i++)
		rp->dst[i].sll_family = AF_PACKET;

	/* protocol 0: receives nothing until bound below */
	rp->rx_fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
	if (rp->rx_fd < 0)
		return RAW_FAIL("raw socket on %s: socket(AF_PACKET): %s%s", ifn, strerror(errno),
				errno == EPERM ? " (needs CAP_NET_RAW)" : "");
	/* drop everything until the worker runs (see raw_poll): no stale frames at start */
	if (setsockopt(rp->rx_fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) < 0)
		return RAW_FAIL("raw socket on %s: SO_ATTACH_FILTER: %s", ifn, strerror(errno));
	rp->filtering = 1;
	if (setsockopt(rp->rx_fd, SOL_PACKET, PACKET_VERSION, &version, sizeof(version)) < 0)
		return RAW_FAIL("raw socket on %s: TPACKET_V3 not supported: %s", ifn, strerror(errno));
	if (setsockopt(rp->rx_fd, SOL_PACKET, PACKET_RESERVE, &reserve, sizeof(reserve)) < 0)
		return RAW_FAIL("raw socket on %s: PACKET_RESERVE: %s", ifn, strerror(errno));
	if (setsockopt(rp->rx_fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one)) < 0)
		return RAW_FAIL("raw socket on %s: PACKET_IGNORE_OUTGOING: %s", ifn, strerror(errno));
	memset(&req, 0, sizeof(req));
	req.tp_block_size = rp->block_size;
	req.tp_block_nr = rp->block_count;
	req.tp_frame_size = RAW_FRAME_SIZE;
	req.tp_frame_nr = rp->block_size / RAW_FRAME_SIZE * rp->block_count;
	req.tp_retire_blk_tov = RAW_RETIRE_MS;
	if (setsockopt(rp->rx_fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)) < 0)
		return RAW_FAIL("raw socket on %s: PACKET_RX_RING (%u blocks of %u bytes): %s", ifn,
				rp->block_count, rp->block_size, strerror(errno));
	rp->ring_len = (size_t)rp->block_size * rp->block_count;
	rp->ring = mmap(NULL, rp->ring_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, rp->rx_fd, 0);
	if (rp->ring == MAP_FAILED)
		return RAW_FAIL("raw socket on %s: mmap of the rx ring: %s", ifn, strerror(errno));
	memset(&sll, 0, sizeof(sll));
	sll.sll_family = AF_PACKET;
	sll.sll_protocol = htons(ETH_P_ALL);
	sll.sll_ifindex = rp->ifindex;
	if (bind(rp->rx_fd, (struct sockaddr *)&sll, sizeof(sll)) < 0)
		return RAW_FAIL("raw socket on %s: bind: %s", ifn, strerror(errno));

	/*
	 * Fanout: a group id given by the caller, else the one of this
	 * interface's earlier workers, else a new unique id from the kernel (so
	 * no other process's group can be joined by accident). No DEFRAG flag:
	 * fragments are forwarded as they come.
	 */
	group = cfg->fanout_group ? cfg->fanout_group : raw_group_of(rt, rp->ifindex);
	if (group > 0xffff)
		return RAW_FAIL("raw socket on %s: fanout group %u out of range 1..65535", ifn, group);
	fanout = (int)(group | ((uint32_t)PACKET_FANOUT_HASH << 16));
	if (!group)
		fanout |= PACKET_FANOUT_FLAG_UNIQUEID << 16;
	if (setsockopt(rp->rx_fd, SOL_PACKET, PACKET_FANOUT, &fanout, sizeof(fanout)) < 0)
		return RAW_FAIL("raw socket on %s: PACKET_FANOUT group %u: %s", ifn, group, strerror(errno));
	if (!group) {
		socklen_t len = sizeof(fanout);

		if (getsockopt(rp->rx_fd, SOL_PACKET, PACKET_FANOUT, &fanout, &len) < 0)
			return RAW_FAIL("raw socket on %s: reading the fanout group: %s", ifn, strerror(errno));
		group = (uint32_t)fanout & 0xffff;
	}
	rp->fanout_id = group;

	rp->tx_fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
	if (rp->tx_fd < 0)
		return RAW_FAIL("raw socket on %s: tx socket: %s", ifn, strerror(errno));
	if (setsockopt(rp->tx_fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one)) < 0)
		return RAW_FAIL("raw socket on %s: PACKET_QDISC_BYPASS: %s", ifn, strerror(errno));
	if (setsockopt(rp->tx_fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf)) < 0)
		setsockopt(rp->tx_fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	*out = rp;
	return 0;
}

int fwd_runtime_add_raw(struct fwd_runtime *rt, const struct fwd_raw_config *cfg, char *err, size_t errlen)
{
	struct fwd_worker *w;
	struct raw_port *rp = NULL;
	char name[32];
	int ifindex;

	if (!memchr(cfg->ifname, 0, sizeof(cfg->ifname)) || !cfg->ifname[0])
		return fwd_errf(err, errlen, "bad interface name");
	ifindex = (int)if_nametoindex(cfg->ifname);
	if (!ifindex)
		return fwd_errf(err, errlen, "interface %s does not exist", cfg->ifname);
	snprintf(name, sizeof(name), "raw:%s:%u", cfg->ifname, raw_count_on(rt, ifindex));
	w = fwd_worker_add(rt, &raw_ops, name, err, errlen);
	if (!w)
		return -1;
	if (raw_port_open(rt, cfg, &rp, err, errlen) < 0) {
		fwd_worker_discard(rt, w);
		return -1;
	}
	w->priv = rp;
	return (int)(rt->nworkers - 1);
}
