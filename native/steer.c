/*
 * steer.c - loads fwd's XDP steering program (native/bpf/steer.bpf.c, built
 * into fwd/bpf/steer.bpf.o), attaches it to one interface, keeps its bind
 * rules in step with the snapshot and takes it off again.
 *
 * Attaching looks at what the interface already runs (every XDP mode): a
 * program named fwd_steer is a stale one left by a crashed run and is
 * replaced (atomically when it sits in the mode we attach in); any other
 * program makes the attach fail with its id and name, never overwritten.
 * Detaching passes our own fd as the expected program, so a program someone
 * else attached in the meantime is left alone.
 *
 * The rule maps are double banked (native/bpf/steer.h): set_binds writes the
 * idle bank, then flips the index. An XDP run lasts microseconds, so a bank
 * is rewritten only while a run could still read it when two updates land
 * within that window; control-plane updates are far slower than that.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/if_link.h>

#include "bpf/steer.h"
#include "runtime_priv.h"

struct fwd_steer {
	struct bpf_object *obj;
	int prog_fd;
	int banks_fd, cfg_fd, xsks_fd, stats_fd;
	unsigned ifindex;
	uint32_t attach_flags;   /* XDP_FLAGS_DRV_MODE or XDP_FLAGS_SKB_MODE */
	uint32_t active;         /* bank the program reads */
	uint32_t stale_id;       /* id of the stale fwd_steer replaced at attach, 0 if none */
	char ifname[IF_NAMESIZE];
};

static const char *mode_name(uint32_t flags)
{
	return flags & XDP_FLAGS_DRV_MODE ? "native" : flags & XDP_FLAGS_HW_MODE ? "offload" : "generic";
}

/* Name of the BPF program with this id ("?" when it cannot be read). */
static void prog_name(uint32_t id, char *name, size_t len)
{
	struct bpf_prog_info info;
	uint32_t ilen = sizeof(info);
	int fd = bpf_prog_get_fd_by_id(id);

	snprintf(name, len, "?");
	if (fd < 0)
		return;
	memset(&info, 0, sizeof(info));
	if (!bpf_obj_get_info_by_fd(fd, &info, &ilen))
		snprintf(name, len, "%.*s", (int)sizeof(info.name), info.name);
	close(fd);
}

static int map_fd(struct fwd_steer *st, const char *name, char *err, size_t errlen)
{
	struct bpf_map *m = bpf_object__find_map_by_name(st->obj, name);

	if (!m)
		return fwd_errf(err, errlen, "steering object has no map %s (stale build?)", name);
	return bpf_map__fd(m);
}

/*
 * Look at the programs attached in each mode. Returns 0 (stale ones listed in
 * stale_ids by mode: [0] skb, [1] drv, [2] hw) or -1 when a foreign program is there.
 */
static int check_attached(struct fwd_steer *st, uint32_t stale_ids[3], char *err, size_t errlen)
{
	LIBBPF_OPTS(bpf_xdp_query_opts, q);
	const uint32_t flags[3] = {XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE, XDP_FLAGS_HW_MODE};
	uint32_t ids[3];
	int rc = bpf_xdp_query((int)st->ifindex, 0, &q);

	if (rc)
		return fwd_errf(err, errlen, "%s: cannot query XDP programs: %s", st->ifname,
				strerror(-rc));
	ids[0] = q.skb_prog_id;
	ids[1] = q.drv_prog_id;
	ids[2] = q.hw_prog_id;
	for (int i = 0; i < 3; i++) {
		char name[32];

		stale_ids[i] = 0;
		if (!ids[i])
			continue;
		prog_name(ids[i], name, sizeof(name));
		if (strcmp(name, STEER_PROG_NAME))
			return fwd_errf(err, errlen,
					"%s: XDP program %u '%s' is already attached (%s mode); "
					"fwd will not replace it (remove it with: ip link set dev %s xdp off)",
					st->ifname, ids[i], name, mode_name(flags[i]), st->ifname);
		stale_ids[i] = ids[i];
	}
	return 0;
}

/* Attach in mode `flags`, replacing stale_id if it sits in that mode. 0 or -errno. */
static int attach_mode(struct fwd_steer *st, uint32_t flags, uint32_t stale_id)
{
	LIBBPF_OPTS(bpf_xdp_attach_opts, opts);
	int old_fd = -1, rc;

	if (stale_id) {
		old_fd = bpf_prog_get_fd_by_id(stale_id);
		if (old_fd < 0)
			return -errno;
		opts.old_prog_fd = old_fd;   /* libbpf adds XDP_FLAGS_REPLACE */
	} else {
		flags |= XDP_FLAGS_UPDATE_IF_NOEXIST;
	}
	rc = bpf_xdp_attach((int)st->ifindex, st->prog_fd, flags, &opts);
	if (old_fd >= 0)
		close(old_fd);
	return rc;
}

static void steer_close(struct fwd_steer *st)
{
	bpf_object__close(st->obj);
	free(st);
}

struct fwd_steer *fwd_steer_attach(const char *obj_path, const char *ifname, uint32_t mode,
				   char *err, size_t errlen)
{
	const uint32_t flags[3] = {XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE, XDP_FLAGS_HW_MODE};
	uint32_t try[2], ntry = 0, stale[3] = {0};
	struct bpf_program *prog;
	struct fwd_steer *st;
	int rc = 0;

	if (mode == FWD_XSK_MODE_AUTO || mode == FWD_XSK_MODE_ZEROCOPY)
		try[ntry++] = XDP_FLAGS_DRV_MODE;
	if (mode == FWD_XSK_MODE_AUTO || mode == FWD_XSK_MODE_COPY)
		try[ntry++] = XDP_FLAGS_SKB_MODE;
	if (!ntry) {
		fwd_errf(err, errlen, "bad XDP mode %u", mode);
		return NULL;
	}
	st = calloc(1, sizeof(*st));
	if (!st) {
		fwd_errf(err, errlen, "out of memory");
		return NULL;
	}
	snprintf(st->ifname, sizeof(st->ifname), "%s", ifname);
	st->ifindex = if_nametoindex(ifname);
	if (!st->ifindex) {
		fwd_errf(err, errlen, "%s: no such interface", ifname);
		free(st);
		return NULL;
	}
	st->obj = bpf_object__open_file(obj_path, NULL);
	if (!st->obj) {
		fwd_errf(err, errlen, "%s: cannot open the steering program: %s (run make -C native/bpf)",
			 obj_path, strerror(errno));
		free(st);
		return NULL;
	}
	prog = bpf_object__find_program_by_name(st->obj, STEER_PROG_NAME);
	if (!prog) {
		fwd_errf(err, errlen, "%s: no program %s in it", obj_path, STEER_PROG_NAME);
		goto fail;
	}
	rc = bpf_object__load(st->obj);
	if (rc) {
		fwd_errf(err, errlen, "cannot load the XDP steering program: %s%s", strerror(-rc),
			 rc == -EPERM ? " (needs root or CAP_BPF+CAP_NET_ADMIN)" : "");
		goto fail;
	}
	st->prog_fd = bpf_program__fd(prog);
	if ((st->banks_fd = map_fd(st, "steer_banks", err, errlen)) < 0 ||
	    (st->cfg_fd = map_fd(st, "steer_cfg", err, errlen)) < 0 ||
	    (st->xsks_fd = map_fd(st, "xsks_map", err, errlen)) < 0 ||
	    (st->stats_fd = map_fd(st, "steer_stats", err, errlen)) < 0)
		goto fail;
	if (check_attached(st, stale, err, errlen))
		goto fail;
	for (uint32_t i = 0; i < ntry; i++) {
		int slot = try[i] == XDP_FLAGS_DRV_MODE ? 1 : 0;   /* index into stale[] */

		/* Native and generic XDP cannot coexist: a stale one in another mode goes first. */
		for (int k = 0; k < 3; k++)
			if (stale[k] && flags[k] != try[i]) {
				LIBBPF_OPTS(bpf_xdp_attach_opts, d);
				int fd = bpf_prog_get_fd_by_id(stale[k]);

				d.old_prog_fd = fd;
				if (fd >= 0 && !bpf_xdp_detach((int)st->ifindex, flags[k], &d))
					st->stale_id = stale[k];
				if (fd >= 0)
					close(fd);
				stale[k] = 0;
			}
		rc = attach_mode(st, try[i], stale[slot]);
		if (!rc) {
			if (stale[slot])
				st->stale_id = stale[slot];
			st->attach_flags = try[i];
			return st;
		}
	}
	fwd_errf(err, errlen, "%s: cannot attach the XDP steering program (%s mode): %s", ifname,
		 mode_name(try[ntry - 1]), strerror(-rc));
fail:
	steer_close(st);
	return NULL;
}

int fwd_steer_set_binds(struct fwd_steer *st, const struct fwd_bind_spec *binds, uint32_t nbinds,
			uint8_t forward_icmp_echo, char *err, size_t errlen)
{
	uint32_t idle = st->active ^ 1;
	struct steer_bank *bank;
	int rc;

	if (nbinds > STEER_MAX_BINDS)
		return fwd_errf(err, errlen,
				"%u binds: the XDP steering program holds at most %d "
				"(merge ports into ranges or addresses into prefixes)",
				nbinds, STEER_MAX_BINDS);
	bank = calloc(1, sizeof(*bank));
	if (!bank)
		return fwd_errf(err, errlen, "out of memory");
	bank->nbinds = nbinds;
	bank->forward_icmp_echo = forward_icmp_echo != 0;
	for (uint32_t i = 0; i < nbinds; i++) {
		const struct fwd_bind_spec *b = &binds[i];
		struct steer_bind *sb = &bank->binds[i];
		unsigned bits = b->prefix.family == 4 ? 32 : 128;

		if ((b->prefix.family != 4 && b->prefix.family != 6) || b->prefix_len > bits ||
		    b->port_lo > b->port_hi) {
			free(bank);
			return fwd_errf(err, errlen, "bind %u: bad family, prefix length or port range", i);
		}
		sb->family = b->prefix.family;
		sb->proto = b->proto;
		sb->port_lo = b->port_lo;
		sb->port_hi = b->port_hi;
		for (unsigned w = 0; w < bits / 32; w++) {
			unsigned left = b->prefix_len > w * 32 ? b->prefix_len - w * 32 : 0;
			uint32_t m = left >= 32 ? 0xffffffffu : left ? ~(0xffffffffu >> left) : 0;
			uint32_t a;

			memcpy(&a, b->prefix.bytes + 4 * w, 4);
			sb->mask[w] = htonl(m);
			sb->addr[w] = a & sb->mask[w];
		}
	}
	rc = bpf_map_update_elem(st->banks_fd, &idle, bank, BPF_ANY);
	free(bank);
	if (rc)
		return fwd_errf(err, errlen, "cannot update the steering rules: %s", strerror(errno));
	{
		uint32_t zero = 0;

		if (bpf_map_update_elem(st->cfg_fd, &zero, &idle, BPF_ANY))
			return fwd_errf(err, errlen, "cannot switch the steering rules: %s", strerror(errno));
	}
	st->active = idle;
	return 0;
}

int fwd_steer_test_run(const struct fwd_steer *st, const uint8_t *frame, uint32_t len, uint32_t *retval,
		       char *err, size_t errlen)
{
	LIBBPF_OPTS(bpf_test_run_opts, run, .data_in = frame, .data_size_in = len, .repeat = 1);

	if (bpf_prog_test_run_opts(st->prog_fd, &run))
		return fwd_errf(err, errlen, "BPF_PROG_TEST_RUN: %s", strerror(errno));
	*retval = run.retval;
	return 0;
}

int fwd_steer_xsks_map_fd(const struct fwd_steer *st)
{
	return st ? st->xsks_fd : -1;
}

uint32_t fwd_steer_replaced_stale(const struct fwd_steer *st)
{
	return st ? st->stale_id : 0;
}

const char *fwd_steer_attach_mode(const struct fwd_steer *st)
{
	return st ? mode_name(st->attach_flags) : "";
}

void fwd_steer_detach(struct fwd_steer *st)
{
	LIBBPF_OPTS(bpf_xdp_attach_opts, opts);

	if (!st)
		return;
	/* Only if it is still ours (the interface may be gone: nothing to do then). */
	opts.old_prog_fd = st->prog_fd;
	bpf_xdp_detach((int)st->ifindex, st->attach_flags, &opts);
	steer_close(st);
}

void fwd_steer_counters(const struct fwd_steer *st, uint64_t *out3)
{
	int ncpu = libbpf_num_possible_cpus();

	memset(out3, 0, 3 * sizeof(*out3));
	if (!st || ncpu <= 0)
		return;

	uint64_t *vals = calloc((size_t)ncpu, sizeof(*vals));

	if (!vals)
		return;
	for (uint32_t k = 0; k < STEER_NSTATS; k++) {
		if (bpf_map_lookup_elem(st->stats_fd, &k, vals))
			continue;
		for (int c = 0; c < ncpu; c++)
			out3[k] += vals[c];
	}
	free(vals);
}
