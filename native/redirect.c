/*
 * redirect.c - loader of fwd-redirect, the tc ingress program of an L7 node
 * (native/bpf/redirect.bpf.c): load and configure it, run it over test
 * frames, attach it to an interface's clsact ingress hook and pin it, find it
 * again from a later process, detach it. API: redirect_api.h.
 *
 * The tc filter (handle/priority REDIRECT_TC_*) is the truth about what is
 * attached: a later process asks tc for the program id and then uses the pins
 * in the pin directory when they name that same program, else reaches the
 * maps through the program's own map ids. That second path matters under
 * `ip netns exec`, whose private /sys has no bpffs: a bpffs mounted there
 * lives only as long as that one command.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>

#include "bpf/redirect.h"
#include "redirect_api.h"

#define BPFFS_ROOT "/sys/fs/bpf"
#define BPFFS_MAGIC_ 0xcafe4a11
#define PIN_PROG "prog"

static const char *const pin_names[] = {PIN_PROG, "allow", "config", "counters"};
#define NPINS (sizeof(pin_names) / sizeof(pin_names[0]))

#define REDIRECT_NAME_(e, name) name,
static const char *const counter_names[RC_NCOUNTERS] = {REDIRECT_COUNTERS(REDIRECT_NAME_)};
#undef REDIRECT_NAME_

struct fwd_redirect {
	struct bpf_object *obj;   /* loaded here; NULL when found attached */
	int fd[NPINS];            /* prog, allow, config, counters (same order as pin_names) */
	uint32_t prog_id;
	uint32_t pinned;
};

static int errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return -1;
}

int fwd_redirect_counter_count(void)
{
	return RC_NCOUNTERS;
}

const char *fwd_redirect_counter_name(int i)
{
	return i >= 0 && i < RC_NCOUNTERS ? counter_names[i] : NULL;
}

static struct fwd_redirect *redirect_new(void)
{
	struct fwd_redirect *r = calloc(1, sizeof(*r));

	if (r)
		for (size_t i = 0; i < NPINS; i++)
			r->fd[i] = -1;
	return r;
}

void fwd_redirect_close(struct fwd_redirect *r)
{
	if (!r)
		return;
	if (r->obj) {
		bpf_object__close(r->obj);   /* owns the fds */
	} else {
		for (size_t i = 0; i < NPINS; i++)
			if (r->fd[i] >= 0)
				close(r->fd[i]);
	}
	free(r);
}

static int prog_info(int fd, struct bpf_prog_info *info, uint32_t *map_ids, uint32_t nmaps)
{
	uint32_t len = sizeof(*info);

	memset(info, 0, sizeof(*info));
	if (map_ids) {
		info->nr_map_ids = nmaps;
		info->map_ids = (uint64_t)(uintptr_t)map_ids;
	}
	return bpf_obj_get_info_by_fd(fd, info, &len) ? -errno : 0;
}

struct fwd_redirect *fwd_redirect_load(const char *obj_path, char *err, size_t errlen)
{
	static const char *const maps[NPINS] = {NULL, "redirect_allow", "redirect_config",
						"redirect_counters"};
	struct fwd_redirect *r = redirect_new();
	struct bpf_program *prog;
	struct bpf_prog_info info;
	int rc;

	if (!r) {
		errf(err, errlen, "out of memory");
		return NULL;
	}
	r->obj = bpf_object__open_file(obj_path, NULL);
	if (!r->obj) {
		errf(err, errlen, "cannot open %s: %s (build it with 'make -C native/bpf')", obj_path,
		     strerror(errno));
		goto fail;
	}
	rc = bpf_object__load(r->obj);
	if (rc) {
		errf(err, errlen, "the kernel refused %s: %s", obj_path, strerror(-rc));
		goto fail;
	}
	prog = bpf_object__find_program_by_name(r->obj, REDIRECT_PROG_NAME);
	if (!prog) {
		errf(err, errlen, "%s has no program %s (stale build?)", obj_path, REDIRECT_PROG_NAME);
		goto fail;
	}
	r->fd[0] = bpf_program__fd(prog);
	for (size_t i = 1; i < NPINS; i++) {
		struct bpf_map *m = bpf_object__find_map_by_name(r->obj, maps[i]);

		if (!m) {
			errf(err, errlen, "%s has no map %s (stale build?)", obj_path, maps[i]);
			goto fail;
		}
		r->fd[i] = bpf_map__fd(m);
	}
	if (prog_info(r->fd[0], &info, NULL, 0) == 0)
		r->prog_id = info.id;
	return r;
fail:
	fwd_redirect_close(r);
	return NULL;
}

/* ---- configuration ---------------------------------------------------------------------- */

static void lpm_key(const struct fwd_redirect_prefix *p, struct redirect_lpm_key *k)
{
	memset(k, 0, sizeof(*k));
	if (p->family == 4) {
		k->prefixlen = 96u + p->prefixlen;
		k->addr[10] = 0xff;
		k->addr[11] = 0xff;
		memcpy(&k->addr[12], p->addr, 4);
	} else {
		k->prefixlen = p->prefixlen;
		memcpy(k->addr, p->addr, 16);
	}
}

int fwd_redirect_configure(struct fwd_redirect *r, const struct fwd_redirect_prefix *allow,
			   uint32_t nallow, const struct fwd_redirect_source *src, uint32_t nsrc,
			   char *err, size_t errlen)
{
	struct redirect_lpm_key k, next;
	struct redirect_config cfg;
	uint32_t zero = 0;
	uint8_t one = 1;

	if (nallow > FWD_REDIRECT_MAX_ALLOW)
		return errf(err, errlen, "%u allowed prefixes, at most %d are supported", nallow,
			    FWD_REDIRECT_MAX_ALLOW);
	for (uint32_t i = 0; i < nallow; i++)
		if ((allow[i].family != 4 && allow[i].family != 6) ||
		    allow[i].prefixlen > (allow[i].family == 4 ? 32 : 128))
			return errf(err, errlen, "allowed prefix %u: bad family or length", i);
	/* empty the trie, then fill it */
	while (bpf_map_get_next_key(r->fd[1], NULL, &next) == 0) {
		k = next;
		if (bpf_map_delete_elem(r->fd[1], &k))
			return errf(err, errlen, "cannot clear the allow list: %s", strerror(errno));
	}
	for (uint32_t i = 0; i < nallow; i++) {
		lpm_key(&allow[i], &k);
		if (bpf_map_update_elem(r->fd[1], &k, &one, BPF_ANY))
			return errf(err, errlen, "cannot add allowed prefix %u: %s", i, strerror(errno));
	}
	if (bpf_map_lookup_elem(r->fd[2], &zero, &cfg))
		memset(&cfg, 0, sizeof(cfg));
	memset(cfg.src4, 0, sizeof(cfg.src4));
	memset(cfg.src6, 0, sizeof(cfg.src6));
	cfg.src_mode[0] = cfg.src_mode[1] = SRC_NONE;
	for (uint32_t i = 0; i < nsrc; i++) {
		int v6 = src[i].family == 6;

		if (src[i].family != 4 && src[i].family != 6)
			return errf(err, errlen, "source %u: bad family %u", i, src[i].family);
		if (src[i].mode > SRC_FALLBACK)
			return errf(err, errlen, "source %u: bad mode %u", i, src[i].mode);
		cfg.src_mode[v6] = src[i].mode;
		memcpy(v6 ? cfg.src6 : cfg.src4, src[i].addr, v6 ? 16 : 4);
	}
	if (bpf_map_update_elem(r->fd[2], &zero, &cfg, BPF_ANY))
		return errf(err, errlen, "cannot write the configuration: %s", strerror(errno));
	return 0;
}

/* ---- pins --------------------------------------------------------------------------------- */

static int is_bpffs(const char *path)
{
	struct statfs st;

	return statfs(path, &st) == 0 && (uint32_t)st.f_type == BPFFS_MAGIC_;
}

static int ensure_bpffs(const char *pin_dir, char *err, size_t errlen)
{
	if (strncmp(pin_dir, BPFFS_ROOT "/", strlen(BPFFS_ROOT) + 1) || is_bpffs(BPFFS_ROOT))
		return 0;
	if (mount("bpf", BPFFS_ROOT, "bpf", 0, "mode=0700"))
		return errf(err, errlen,
			    "cannot mount bpffs on %s: %s (mounting needs CAP_SYS_ADMIN; mount it "
			    "beforehand, as systemd does: mount -t bpf bpf %s)",
			    BPFFS_ROOT, strerror(errno), BPFFS_ROOT);
	return 0;
}

static int mkdirs(const char *dir, char *err, size_t errlen)
{
	char path[512];

	if (snprintf(path, sizeof(path), "%s", dir) >= (int)sizeof(path))
		return errf(err, errlen, "pin directory name too long");
	for (char *p = path + 1;; p++) {
		if (*p == '/' || *p == '\0') {
			char c = *p;

			*p = '\0';
			if (mkdir(path, 0700) && errno != EEXIST)
				return errf(err, errlen, "cannot create %s: %s", path, strerror(errno));
			*p = c;
			if (!c)
				break;
		}
	}
	return 0;
}

static void pin_path(char *out, size_t len, const char *dir, const char *name)
{
	snprintf(out, len, "%s/%s", dir, name);
}

/* Remove the pins and the directory, then its parents below BPFFS_ROOT while empty. */
static void unpin(const char *pin_dir)
{
	char path[512];

	for (size_t i = 0; i < NPINS; i++) {
		pin_path(path, sizeof(path), pin_dir, pin_names[i]);
		unlink(path);
	}
	if (snprintf(path, sizeof(path), "%s", pin_dir) >= (int)sizeof(path))
		return;
	while (strlen(path) > strlen(BPFFS_ROOT) && !strncmp(path, BPFFS_ROOT "/", strlen(BPFFS_ROOT) + 1)) {
		char *slash;

		if (rmdir(path))
			break;
		slash = strrchr(path, '/');
		if (!slash)
			break;
		*slash = '\0';
	}
}

static int pin_all(struct fwd_redirect *r, const char *pin_dir, char *err, size_t errlen)
{
	char path[512];

	if (ensure_bpffs(pin_dir, err, errlen) || mkdirs(pin_dir, err, errlen))
		return -1;
	for (size_t i = 0; i < NPINS; i++) {
		pin_path(path, sizeof(path), pin_dir, pin_names[i]);
		unlink(path);   /* a previous attach's pin */
		if (bpf_obj_pin(r->fd[i], path))
			return errf(err, errlen, "cannot pin %s: %s", path, strerror(errno));
	}
	return 0;
}

/* ---- tc ------------------------------------------------------------------------------------ */

/*
 * libbpf prints the kernel's extack text for expected failures (no qdisc yet,
 * qdisc exists, no such filter) to stderr; errors are reported through err,
 * so the tc calls run with libbpf's printing off.
 */
static libbpf_print_fn_t quiet(void)
{
	return libbpf_set_print(NULL);
}

static void loud(libbpf_print_fn_t old)
{
	libbpf_set_print(old);
}

static int tc_query(int ifindex, uint32_t *prog_id)
{
	DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
	DECLARE_LIBBPF_OPTS(bpf_tc_opts, q, .handle = REDIRECT_TC_HANDLE, .priority = REDIRECT_TC_PRIORITY);
	libbpf_print_fn_t old = quiet();
	int rc = bpf_tc_query(&hook, &q);

	loud(old);

	*prog_id = 0;
	if (rc == -ENOENT || rc == -EINVAL)   /* no filter, or no clsact qdisc at all */
		return 0;
	if (rc)
		return rc;
	*prog_id = q.prog_id;
	return 0;
}

int fwd_redirect_query(int ifindex, uint32_t *prog_id, char *err, size_t errlen)
{
	int rc = tc_query(ifindex, prog_id);

	if (rc)
		return errf(err, errlen, "cannot query tc filters of ifindex %d: %s", ifindex, strerror(-rc));
	return 0;
}

/* Map fds of program id (by map name), for a program found attached. */
static struct fwd_redirect *from_prog_id(uint32_t id, char *err, size_t errlen)
{
	static const char *const maps[NPINS] = {NULL, "redirect_allow", "redirect_config",
						"redirect_counte" /* names keep 15 chars */};
	struct fwd_redirect *r = redirect_new();
	struct bpf_prog_info info;
	uint32_t ids[16];

	if (!r) {
		errf(err, errlen, "out of memory");
		return NULL;
	}
	r->prog_id = id;
	r->fd[0] = bpf_prog_get_fd_by_id(id);
	if (r->fd[0] < 0) {
		int e = errno;

		/* BPF_PROG_GET_FD_BY_ID is for CAP_SYS_ADMIN only: without it the pins are the way in */
		errf(err, errlen, "cannot open BPF program %u: %s%s", id, strerror(e),
		     e == EPERM ? " (its pins are missing or not readable by this user, and opening a "
				  "program by id needs CAP_SYS_ADMIN)"
				: "");
		goto fail;
	}
	if (prog_info(r->fd[0], &info, ids, 16)) {
		errf(err, errlen, "cannot read BPF program %u: %s", id, strerror(errno));
		goto fail;
	}
	if (strncmp(info.name, REDIRECT_PROG_NAME, sizeof(info.name))) {
		errf(err, errlen, "the tc filter runs program %u '%.*s', not %s", id, (int)sizeof(info.name),
		     info.name, REDIRECT_PROG_NAME);
		goto fail;
	}
	for (uint32_t i = 0; i < info.nr_map_ids && i < 16; i++) {
		struct bpf_map_info mi;
		uint32_t len = sizeof(mi);
		int fd = bpf_map_get_fd_by_id(ids[i]);

		if (fd < 0)
			continue;
		memset(&mi, 0, sizeof(mi));
		if (bpf_obj_get_info_by_fd(fd, &mi, &len) == 0) {
			for (size_t k = 1; k < NPINS; k++) {
				if (r->fd[k] < 0 && !strncmp(mi.name, maps[k], sizeof(mi.name))) {
					r->fd[k] = fd;
					fd = -1;
					break;
				}
			}
		}
		if (fd >= 0)
			close(fd);
	}
	for (size_t k = 1; k < NPINS; k++) {
		if (r->fd[k] < 0) {
			errf(err, errlen, "BPF program %u has no map %s", id, maps[k]);
			goto fail;
		}
	}
	return r;
fail:
	fwd_redirect_close(r);
	return NULL;
}

/* The pinned objects, when the pinned program is program id. */
static struct fwd_redirect *from_pins(const char *pin_dir, uint32_t id)
{
	struct fwd_redirect *r;
	struct bpf_prog_info info;
	char path[512];

	if (!pin_dir || !is_bpffs(BPFFS_ROOT))
		return NULL;
	r = redirect_new();
	if (!r)
		return NULL;
	for (size_t i = 0; i < NPINS; i++) {
		pin_path(path, sizeof(path), pin_dir, pin_names[i]);
		r->fd[i] = bpf_obj_get(path);
		if (r->fd[i] < 0)
			goto fail;
	}
	if (prog_info(r->fd[0], &info, NULL, 0) || info.id != id)
		goto fail;
	r->prog_id = id;
	r->pinned = 1;
	return r;
fail:
	fwd_redirect_close(r);
	return NULL;
}

struct fwd_redirect *fwd_redirect_open(int ifindex, const char *pin_dir, char *err, size_t errlen)
{
	struct fwd_redirect *r;
	uint32_t id;

	if (fwd_redirect_query(ifindex, &id, err, errlen))
		return NULL;
	if (!id) {
		errf(err, errlen, "fwd-redirect is not attached");
		return NULL;
	}
	r = from_pins(pin_dir, id);
	return r ? r : from_prog_id(id, err, errlen);
}

static int read_config(struct fwd_redirect *r, struct redirect_config *cfg)
{
	uint32_t zero = 0;

	if (bpf_map_lookup_elem(r->fd[2], &zero, cfg)) {
		memset(cfg, 0, sizeof(*cfg));
		return -1;
	}
	return 0;
}

int fwd_redirect_get_state(struct fwd_redirect *r, struct fwd_redirect_state *state)
{
	struct redirect_config cfg;

	memset(state, 0, sizeof(*state));
	state->prog_id = r->prog_id;
	state->pinned = r->pinned;
	if (read_config(r, &cfg) == 0)
		state->created_qdisc = cfg.created_qdisc;
	return 0;
}

int fwd_redirect_attach(struct fwd_redirect *r, int ifindex, const char *pin_dir,
			struct fwd_redirect_state *state, char *err, size_t errlen)
{
	DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
	DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .handle = REDIRECT_TC_HANDLE,
			    .priority = REDIRECT_TC_PRIORITY, .flags = BPF_TC_F_REPLACE);
	struct redirect_config cfg;
	uint32_t old_id = 0, zero = 0;
	int created, rc;

	libbpf_print_fn_t old_print;

	memset(state, 0, sizeof(*state));
	old_print = quiet();
	rc = bpf_tc_hook_create(&hook);
	loud(old_print);
	if (rc && rc != -EEXIST)
		return errf(err, errlen, "cannot create the clsact qdisc: %s", strerror(-rc));
	created = rc == 0;
	rc = tc_query(ifindex, &old_id);
	if (rc) {
		errf(err, errlen, "cannot query tc filters: %s", strerror(-rc));
		goto undo_hook;
	}
	if (old_id) {
		/* A filter at our handle/priority: replace it only when it is ours. */
		struct fwd_redirect *old = from_prog_id(old_id, err, errlen);
		struct redirect_config ocfg;

		if (!old) {
			errf(err, errlen, "tc ingress filter %#x (priority %u) is taken by BPF program %u, "
			     "which is not %s; not replacing it", REDIRECT_TC_HANDLE, REDIRECT_TC_PRIORITY,
			     old_id, REDIRECT_PROG_NAME);
			goto undo_hook;
		}
		if (read_config(old, &ocfg) == 0 && ocfg.created_qdisc)
			created = 1;
		fwd_redirect_close(old);
	}
	if (read_config(r, &cfg))
		return errf(err, errlen, "cannot read the configuration map");
	cfg.created_qdisc = (uint8_t)created;
	if (bpf_map_update_elem(r->fd[2], &zero, &cfg, BPF_ANY)) {
		errf(err, errlen, "cannot write the configuration: %s", strerror(errno));
		goto undo_hook;
	}
	opts.prog_fd = r->fd[0];
	old_print = quiet();
	rc = bpf_tc_attach(&hook, &opts);
	loud(old_print);
	if (rc) {
		errf(err, errlen, "cannot attach the tc filter: %s", strerror(-rc));
		goto undo_hook;
	}
	if (pin_dir && pin_all(r, pin_dir, err, errlen)) {
		DECLARE_LIBBPF_OPTS(bpf_tc_opts, d, .handle = REDIRECT_TC_HANDLE,
				    .priority = REDIRECT_TC_PRIORITY);
		size_t n = strlen(err);

		old_print = quiet();
		bpf_tc_detach(&hook, &d);
		loud(old_print);
		unpin(pin_dir);
		if (n + 40 < errlen)
			snprintf(err + n, errlen - n, "; fwd-redirect is not attached");
		goto undo_hook;
	}
	state->prog_id = r->prog_id;
	state->pinned = pin_dir != NULL;
	state->created_qdisc = (uint32_t)created;
	state->replaced_id = old_id;
	r->pinned = pin_dir != NULL;
	return 0;
undo_hook:
	if (created && !old_id) {
		hook.attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS;
		old_print = quiet();
		bpf_tc_hook_destroy(&hook);
		loud(old_print);
	}
	return -1;
}

int fwd_redirect_detach(int ifindex, const char *pin_dir, char *err, size_t errlen)
{
	DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
	DECLARE_LIBBPF_OPTS(bpf_tc_opts, d, .handle = REDIRECT_TC_HANDLE, .priority = REDIRECT_TC_PRIORITY);
	libbpf_print_fn_t old;
	uint32_t id;
	int rc;

	if (fwd_redirect_query(ifindex, &id, err, errlen))
		return -1;
	if (id) {
		old = quiet();
		rc = bpf_tc_detach(&hook, &d);
		loud(old);
		/* the pins stay while the filter does: they are how stats and detach reach it */
		if (rc)
			return errf(err, errlen, "cannot remove the tc filter: %s", strerror(-rc));
	}
	if (pin_dir && is_bpffs(BPFFS_ROOT))
		unpin(pin_dir);
	return id ? 0 : 1;
}

/* ---- reading ------------------------------------------------------------------------------- */

int fwd_redirect_counters(struct fwd_redirect *r, uint64_t *out, uint32_t n, char *err, size_t errlen)
{
	int ncpu = libbpf_num_possible_cpus();
	uint64_t *vals;

	if (ncpu <= 0)
		return errf(err, errlen, "cannot count the CPUs: %s", strerror(-ncpu));
	if (n < RC_NCOUNTERS)
		return errf(err, errlen, "room for %u counters, %d needed", n, RC_NCOUNTERS);
	vals = calloc((size_t)ncpu, sizeof(*vals));
	if (!vals)
		return errf(err, errlen, "out of memory");
	for (uint32_t i = 0; i < RC_NCOUNTERS; i++) {
		out[i] = 0;
		if (bpf_map_lookup_elem(r->fd[3], &i, vals)) {
			free(vals);
			return errf(err, errlen, "cannot read counter %u: %s", i, strerror(errno));
		}
		for (int c = 0; c < ncpu; c++)
			out[i] += vals[c];
	}
	free(vals);
	return 0;
}

int fwd_redirect_get_sources(struct fwd_redirect *r, struct fwd_redirect_source out[2], char *err,
			     size_t errlen)
{
	struct redirect_config cfg;

	if (read_config(r, &cfg))
		return errf(err, errlen, "cannot read the configuration: %s", strerror(errno));
	memset(out, 0, 2 * sizeof(*out));
	out[0].family = 4;
	out[0].mode = cfg.src_mode[0];
	memcpy(out[0].addr, cfg.src4, 4);
	out[1].family = 6;
	out[1].mode = cfg.src_mode[1];
	memcpy(out[1].addr, cfg.src6, 16);
	return 0;
}

int fwd_redirect_get_allow(struct fwd_redirect *r, struct fwd_redirect_prefix *out, uint32_t max,
			   char *err, size_t errlen)
{
	static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	struct redirect_lpm_key k, next;
	uint32_t n = 0;
	int rc = bpf_map_get_next_key(r->fd[1], NULL, &next);

	while (rc == 0) {
		k = next;
		if (n < max) {
			memset(&out[n], 0, sizeof(out[n]));
			if (k.prefixlen >= 96 && !memcmp(k.addr, mapped, 12)) {
				out[n].family = 4;
				out[n].prefixlen = (uint8_t)(k.prefixlen - 96);
				memcpy(out[n].addr, &k.addr[12], 4);
			} else {
				out[n].family = 6;
				out[n].prefixlen = (uint8_t)k.prefixlen;
				memcpy(out[n].addr, k.addr, 16);
			}
		}
		n++;
		rc = bpf_map_get_next_key(r->fd[1], &k, &next);
	}
	if (errno != ENOENT)
		return errf(err, errlen, "cannot read the allow list: %s", strerror(errno));
	return (int)n;
}

/* ---- BPF_PROG_TEST_RUN ----------------------------------------------------------------------- */

int fwd_redirect_test_run(struct fwd_redirect *r, const uint8_t *in, uint32_t in_len,
			  uint32_t ifindex, uint8_t *out, uint32_t *out_len, uint32_t *retval,
			  char *err, size_t errlen)
{
	struct __sk_buff ctx;
	DECLARE_LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = in, .data_size_in = in_len,
			    .data_out = out, .data_size_out = *out_len, .repeat = 1);
	int rc;

	if (ifindex) {
		memset(&ctx, 0, sizeof(ctx));
		ctx.ifindex = ifindex;
		o.ctx_in = &ctx;
		o.ctx_size_in = sizeof(ctx);
	}
	rc = bpf_prog_test_run_opts(r->fd[0], &o);
	if (rc)
		return errf(err, errlen, "BPF_PROG_TEST_RUN: %s", strerror(errno));
	*retval = o.retval;
	*out_len = o.data_size_out;
	return 0;
}
