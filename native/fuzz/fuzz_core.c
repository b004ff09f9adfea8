/*
 * fuzz_core.c - libFuzzer target for the packet core through the public API
 * (fwd_api.h): parse, bind match, hash, GUE encapsulation and ICMP replies.
 *
 * The snapshots are built once, with fwd_table_* and fwd_snapshot_new, from a
 * fixed config that mirrors tests/golden.py's "golden" tables (so the golden
 * frames are meaningful seeds): IPv4 and IPv6 VIPs, CIDR binds, port ranges,
 * IPv4, IPv6 and mixed backend sets in every state, an empty table, a GLB
 * table. The node settings vary by variant: MTU (1500 down to 68, so
 * too-big replies and drops happen), ICMP echo forwarding, MAC overrides,
 * no IPv4 or no IPv6 tunnel source, live-mode next hops.
 *
 * Input: byte 0 picks the variant and the buffer layout, byte 1 the headroom
 * and tailroom, the rest is the frame. Every call is checked (abort() on a
 * violation): one verdict, counted once; drop reasons and counters agree;
 * the output lies inside the buffer; a FORWARD frame is a well-formed
 * Ethernet + IPv4/IPv6 + UDP/19523 + GUE frame to the row's primary whose
 * payload is the input's IP packet byte for byte; a REPLY frame is a
 * well-formed ICMP error back to the sender quoting it; fwd_process_batch
 * gives what fwd_process gives.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fwd_api.h"

#define MAX_FRAME 9200
#define ETH_HLEN 14

#define CHECK(c)                                                                       \
	do {                                                                           \
		if (!(c)) {                                                            \
			fprintf(stderr, "fuzz_core: %s:%d: invariant failed: %s\n",    \
				__FILE__, __LINE__, #c);                               \
			abort();                                                       \
		}                                                                      \
	} while (0)

/* ---- the fixed config (tests/golden.py's tables) ---- */

struct backend {
	const char *addr;   /* dotted quad or full IPv6 hex, parsed by addr_parse */
	uint8_t state, healthy;
};

struct bind {
	const char *prefix;
	uint8_t plen, proto;
	uint16_t lo, hi;
	uint8_t fields;
	uint16_t table;
};

struct table_def {
	const char *key_hex, *seed_hex;
	int glb;
	struct backend backends[8];
	uint32_t n;
};

#define GOLDEN_KEY "12345678901234561234567890123456"
#define GOLDEN_SEED "34567890123456783456789012345678"
#define A FWD_STATE_ACTIVE
#define F FWD_STATE_FILLING
#define D FWD_STATE_DRAINING
#define I FWD_STATE_INACTIVE
#define STATES_MIX                                                                          \
	{{"10.1.0.1", A, 1}, {"10.1.0.2", D, 1}, {"10.1.0.3", A, 0}, {"10.1.0.4", F, 1},    \
	 {"10.1.0.5", A, 1}, {"10.1.0.6", I, 1}}, 6

static const struct table_def TABLES[] = {
	{GOLDEN_KEY, GOLDEN_SEED, 0, {{"1.2.3.4", A, 1}, {"2.3.4.5", A, 1}, {"3.4.5.6", A, 1}}, 3},
	{"00112233445566778899aabbccddeeff", "ffeeddccbbaa99887766554433221100", 0,
	 {{"20010db8000b00000000000000000001", A, 1}, {"20010db8000b00000000000000000002", A, 1},
	  {"10.0.0.3", A, 1}, {"10.0.0.4", A, 1}}, 4},
	{GOLDEN_KEY, GOLDEN_SEED, 0, {{"10.0.0.9", A, 1}}, 1},
	{GOLDEN_KEY, GOLDEN_SEED, 0, {{"10.0.0.10", I, 1}}, 1},
	{"0f0e0d0c0b0a09080706050403020100", GOLDEN_SEED, 0, STATES_MIX},
	{GOLDEN_KEY, GOLDEN_SEED, 1, STATES_MIX},
	/* IPv6 backends only, some unhealthy (not in golden.py) */
	{GOLDEN_KEY, GOLDEN_SEED, 0,
	 {{"20010db8000c00000000000000000001", A, 0}, {"20010db8000c00000000000000000002", F, 1},
	  {"20010db8000c00000000000000000003", D, 1}}, 3},
};
#define NTABLES (sizeof(TABLES) / sizeof(TABLES[0]))

#define HASH_ALL (FWD_HASH_SRC_ADDR | FWD_HASH_DST_ADDR | FWD_HASH_SRC_PORT | FWD_HASH_DST_PORT)

static const struct bind BINDS[] = {
	{"1.1.1.1", 32, 6, 80, 80, FWD_HASH_SRC_ADDR, 0},
	{"1.1.1.1", 32, 6, 443, 443, FWD_HASH_SRC_ADDR, 0},
	{"20010db8000100000000000000000001", 128, 6, 80, 80, FWD_HASH_SRC_ADDR, 0},
	{"1.1.1.1", 32, 17, 53, 53, FWD_HASH_SRC_ADDR, 0},
	{"1.1.1.2", 32, 6, 80, 80, FWD_HASH_SRC_ADDR, 1},
	{"20010db8000100000000000000000002", 128, 17, 5000, 5100, FWD_HASH_SRC_ADDR, 1},
	{"1.1.1.3", 32, 6, 80, 80, FWD_HASH_SRC_ADDR, 2},
	{"1.1.1.4", 32, 6, 80, 80, FWD_HASH_SRC_ADDR, 3},
	{"10.100.0.0", 24, 17, 1000, 2000, HASH_ALL, 4},
	{"20010db8010000000000000000000000", 64, 6, 1, 65535,
	 FWD_HASH_DST_ADDR | FWD_HASH_DST_PORT, 4},
	{"1.1.1.5", 32, 6, 80, 80, FWD_HASH_SRC_ADDR, 5},
	/* not in golden.py: wide prefixes, so mutated addresses still reach the deep paths */
	{"20010db8000000000000000000000000", 32, 17, 0, 65535, FWD_HASH_SRC_ADDR | FWD_HASH_SRC_PORT, 6},
	{"172.16.0.0", 12, 6, 1024, 65535, FWD_HASH_DST_ADDR, 1},
	{"0.0.0.0", 1, 17, 7, 7, FWD_HASH_SRC_PORT, 6},   /* half of IPv4: the rest is not a VIP */
};
#define NBINDS (sizeof(BINDS) / sizeof(BINDS[0]))

struct variant {
	uint32_t mtu;
	uint8_t echo, v4_src, v6_src, macs, nexthops;
};

static const struct variant VARIANTS[] = {
	{1500, 0, 1, 1, 0, 0},   /* golden */
	{1500, 1, 1, 1, 1, 0},   /* golden_echo + golden_mac */
	{1500, 1, 1, 0, 0, 0},   /* golden_v4only */
	{576, 1, 1, 1, 0, 0},    /* small MTU: too-big replies */
	{120, 1, 1, 1, 1, 0},    /* smaller than most headers: replies with a tiny MTU */
	{9000, 1, 1, 1, 0, 1},   /* jumbo, live next hops on some backends */
	{68, 0, 1, 1, 0, 1},     /* the minimum MTU the config accepts */
	{1280, 0, 0, 1, 0, 0},   /* IPv6 tunnel source only */
};
#define NVARIANTS (sizeof(VARIANTS) / sizeof(VARIANTS[0]))

static const uint8_t TUN4[4] = {192, 0, 2, 10};
static const uint8_t TUN6[16] = {0x20, 0x01, 0x0d, 0xb8, [15] = 0x10};
static const uint8_t SRC_MAC[6] = {0x0a, 0, 0, 0, 0, 1};
static const uint8_t DST_MAC[6] = {0x0a, 0, 0, 0, 0, 2};
static const uint8_t NH_SRC[6] = {0x0e, 0, 0, 0, 0, 1};
static const uint8_t NH_DST[6] = {0x0e, 0, 0, 0, 0, 2};

static struct fwd_snapshot *snaps[NVARIANTS];
static struct fwd_addr backend_addr[NTABLES][8];
static uint8_t backend_ranked[NTABLES][8];
static struct fwd_counters *counters;

static void hex_bytes(const char *hex, uint8_t *out, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned v;

		CHECK(sscanf(hex + 2 * i, "%2x", &v) == 1);
		out[i] = (uint8_t)v;
	}
}

static void addr_parse(const char *s, struct fwd_addr *a)
{
	unsigned b[4];

	memset(a, 0, sizeof(*a));
	if (strlen(s) == 32) {
		a->family = 6;
		hex_bytes(s, a->bytes, 16);
		return;
	}
	CHECK(sscanf(s, "%u.%u.%u.%u", &b[0], &b[1], &b[2], &b[3]) == 4);
	a->family = 4;
	for (int i = 0; i < 4; i++)
		a->bytes[i] = (uint8_t)b[i];
}

/* Live next hops for every other backend of every table (variant.nexthops). */
static void set_nexthops(struct fwd_snapshot *s)
{
	for (uint32_t t = 0; t < NTABLES; t++) {
		for (uint32_t b = 0; b < TABLES[t].n; b += 2) {
			struct fwd_nexthop nh = {.ifindex = 7 + t};

			memcpy(nh.src_mac, NH_SRC, 6);
			memcpy(nh.dst_mac, NH_DST, 6);
			CHECK(fwd_snapshot_set_nexthop(s, t, b, &nh) == 0);
		}
	}
}

static void config_build(void)
{
	struct fwd_table *tables[NTABLES];
	struct fwd_bind_spec binds[NBINDS];

	for (uint32_t t = 0; t < NTABLES; t++) {
		struct fwd_backend_spec specs[8];
		uint8_t key[16], seed[16];

		hex_bytes(TABLES[t].key_hex, key, 16);
		hex_bytes(TABLES[t].seed_hex, seed, 16);
		tables[t] = fwd_table_new(seed, key, TABLES[t].glb);
		CHECK(tables[t]);
		for (uint32_t b = 0; b < TABLES[t].n; b++) {
			addr_parse(TABLES[t].backends[b].addr, &specs[b].addr);
			specs[b].state = TABLES[t].backends[b].state;
			specs[b].healthy = TABLES[t].backends[b].healthy;
			backend_addr[t][b] = specs[b].addr;
			backend_ranked[t][b] = specs[b].state != FWD_STATE_INACTIVE;
		}
		CHECK(fwd_table_set_backends(tables[t], specs, TABLES[t].n, NULL) == 0);
	}
	for (uint32_t i = 0; i < NBINDS; i++) {
		memset(&binds[i], 0, sizeof(binds[i]));
		addr_parse(BINDS[i].prefix, &binds[i].prefix);
		binds[i].prefix_len = BINDS[i].plen;
		binds[i].proto = BINDS[i].proto;
		binds[i].port_lo = BINDS[i].lo;
		binds[i].port_hi = BINDS[i].hi;
		binds[i].hash_fields = BINDS[i].fields;
		binds[i].table = BINDS[i].table;
	}
	for (uint32_t v = 0; v < NVARIANTS; v++) {
		struct fwd_node_spec node = {.mtu = VARIANTS[v].mtu,
					     .forward_icmp_echo = VARIANTS[v].echo,
					     .has_tunnel_src4 = VARIANTS[v].v4_src,
					     .has_tunnel_src6 = VARIANTS[v].v6_src,
					     .has_src_mac = VARIANTS[v].macs,
					     .has_dst_mac = VARIANTS[v].macs};

		memcpy(node.tunnel_src4, TUN4, 4);
		memcpy(node.tunnel_src6, TUN6, 16);
		memcpy(node.src_mac, SRC_MAC, 6);
		memcpy(node.dst_mac, DST_MAC, 6);
		snaps[v] = fwd_snapshot_new(&node, binds, NBINDS, tables, NTABLES);
		CHECK(snaps[v]);
		if (VARIANTS[v].nexthops)
			set_nexthops(snaps[v]);
	}
	for (uint32_t t = 0; t < NTABLES; t++)
		fwd_table_free(tables[t]);   /* snapshots hold copies */
	counters = calloc(1, sizeof(*counters));
	CHECK(counters);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	config_build();
	return 0;
}

/* ---- independent checks of the output ---- */

static uint16_t be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

/* RFC 1071 sum of p[0..n), not folded, not complemented. */
static uint32_t sum16(const uint8_t *p, size_t n, uint32_t acc)
{
	for (size_t i = 0; i + 1 < n; i += 2)
		acc += be16(p + i);
	if (n & 1)
		acc += (uint32_t)p[n - 1] << 8;
	return acc;
}

/* Does a checksummed region (checksum field included) fold to 0xffff? */
static int csum_ok(uint32_t acc)
{
	while (acc >> 16)
		acc = (acc & 0xffff) + (acc >> 16);
	return acc == 0xffff;
}

static uint32_t pseudo6(const uint8_t *ip6, uint32_t len, uint8_t nh)
{
	return sum16(ip6 + 8, 32, 0) + (len >> 16) + (len & 0xffff) + nh;
}

/* The input frame's IP packet: where it starts and how long it says it is. */
static void input_ip(const uint8_t *f, uint32_t len, uint32_t *l2, uint32_t *ip_len)
{
	uint16_t type;

	CHECK(len >= ETH_HLEN);
	type = be16(f + 12);
	*l2 = ETH_HLEN;
	if (type == 0x8100) {
		*l2 += 4;
		type = be16(f + 16);
	}
	CHECK(len >= *l2 + 20);
	if (type == 0x0800) {
		*ip_len = be16(f + *l2 + 2);
	} else {
		CHECK(type == 0x86dd && len >= *l2 + 40);
		*ip_len = 40u + be16(f + *l2 + 4);
	}
	CHECK(*l2 + *ip_len <= len);
}

static void check_forward(const struct variant *var, const uint8_t *in, uint32_t in_len,
			  const uint8_t *out, const struct fwd_result *r)
{
	const struct fwd_addr *pa = &backend_addr[r->table][r->primary];
	uint32_t l2, ip_len, iph, hops, hop_fam = 0;
	const uint8_t *ip = out + ETH_HLEN, *udp, *gue;

	CHECK(r->table < NTABLES && r->primary < TABLES[r->table].n);
	CHECK(backend_ranked[r->table][r->primary]);
	CHECK(r->gue_sport & 0x8000);
	input_ip(in, in_len, &l2, &ip_len);
	CHECK(r->out_len > ETH_HLEN + 20 + 8 + 8);
	/* Ethernet: untagged, MACs from the next hop, the node or the input */
	if (var->nexthops && r->primary % 2 == 0) {
		CHECK(memcmp(out, NH_DST, 6) == 0 && memcmp(out + 6, NH_SRC, 6) == 0);
		CHECK(r->egress_ifindex == 7u + r->table);
	} else {
		CHECK(!var->nexthops);   /* no next hop: must have been dropped */
		CHECK(memcmp(out, var->macs ? DST_MAC : in + 6, 6) == 0);
		CHECK(memcmp(out + 6, var->macs ? SRC_MAC : in, 6) == 0);
		CHECK(r->egress_ifindex == 0);
	}
	if (pa->family == 4) {
		iph = 20;
		CHECK(var->v4_src);
		CHECK(be16(out + 12) == 0x0800);
		CHECK(ip[0] == 0x45 && be16(ip + 2) == r->out_len - ETH_HLEN);
		CHECK(be16(ip + 4) == 0 && be16(ip + 6) == 0x4000 && ip[8] == 64 && ip[9] == 17);
		CHECK(csum_ok(sum16(ip, 20, 0)));
		CHECK(memcmp(ip + 12, TUN4, 4) == 0 && memcmp(ip + 16, pa->bytes, 4) == 0);
	} else {
		iph = 40;
		CHECK(var->v6_src);
		CHECK(be16(out + 12) == 0x86dd);
		CHECK(ip[0] == 0x60 && be16(ip + 4) == r->out_len - ETH_HLEN - 40 && ip[6] == 17);
		CHECK(memcmp(ip + 8, TUN6, 16) == 0 && memcmp(ip + 24, pa->bytes, 16) == 0);
	}
	CHECK(r->out_len - ETH_HLEN <= var->mtu);
	udp = ip + iph;
	gue = udp + 8;
	CHECK(be16(udp) == r->gue_sport && be16(udp + 2) == FWD_GUE_PORT);
	CHECK(be16(udp + 4) == r->out_len - ETH_HLEN - iph);
	if (iph == 40) {
		uint32_t ulen = r->out_len - ETH_HLEN - iph;

		CHECK(be16(udp + 6) != 0);
		CHECK(csum_ok(sum16(udp, ulen, pseudo6(ip, ulen, 17))));
	} else {
		CHECK(be16(udp + 6) == 0);
	}
	/* GUE: hops = the secondary when it differs from the primary */
	hops = gue[7];
	CHECK(hops <= 1 && gue[6] == 0 && be16(gue + 2) == 0);
	if (hops) {
		const struct fwd_addr *sa = &backend_addr[r->table][r->secondary];

		CHECK(r->secondary < TABLES[r->table].n && r->secondary != r->primary);
		CHECK(backend_ranked[r->table][r->secondary]);
		hop_fam = sa->family;
		CHECK(be16(gue + 4) == (hop_fam == 6));
		CHECK(memcmp(gue + 8, sa->bytes, hop_fam == 4 ? 4 : 16) == 0);
	}
	CHECK(gue[0] == 1 + (hops ? (hop_fam == 4 ? 1 : 4) : 0));
	CHECK(gue[1] == ((in[l2] >> 4) == 4 ? 4 : 41));
	/* the payload is the input's IP packet, unchanged */
	uint32_t hdr = ETH_HLEN + iph + 8 + 4 + 4 * gue[0];

	CHECK(r->out_len == hdr + ip_len);
	CHECK(memcmp(out + hdr, in + l2, ip_len) == 0);
}

static void check_reply(const struct variant *var, const uint8_t *in, uint32_t in_len,
			const uint8_t *out, const struct fwd_result *r)
{
	uint32_t l2, ip_len, q;
	const uint8_t *ip, *ic, *in_ip;

	input_ip(in, in_len, &l2, &ip_len);
	in_ip = in + l2;
	ip = out + l2;
	CHECK(r->out_len > l2 + 28);
	/* L2 reversed, VLAN tag and EtherType kept */
	CHECK(memcmp(out, in + 6, 6) == 0 && memcmp(out + 6, in, 6) == 0);
	CHECK(memcmp(out + 12, in + 12, l2 - 12) == 0);
	if ((in_ip[0] >> 4) == 4) {
		uint32_t tot = be16(ip + 2);

		CHECK(ip[0] == 0x45 && ip[9] == 1 && tot == r->out_len - l2 && tot <= 576);
		CHECK(csum_ok(sum16(ip, 20, 0)));
		CHECK(memcmp(ip + 12, in_ip + 16, 4) == 0 && memcmp(ip + 16, in_ip + 12, 4) == 0);
		ic = ip + 20;
		CHECK(ic[0] == 3 && ic[1] == 4);
		CHECK(csum_ok(sum16(ic, tot - 20, 0)));
		CHECK(in_ip[6] & 0x40);   /* only DF packets get a reply */
		q = tot - 28;
	} else {
		uint32_t plen = be16(ip + 4);

		CHECK(ip[0] == 0x60 && ip[6] == 58 && plen + 40 == r->out_len - l2);
		CHECK(plen + 40 <= 1280);
		CHECK(memcmp(ip + 8, in_ip + 24, 16) == 0 && memcmp(ip + 24, in_ip + 8, 16) == 0);
		ic = ip + 40;
		CHECK(ic[0] == 2 && ic[1] == 0);
		CHECK(csum_ok(sum16(ic, plen, pseudo6(ip, plen, 58))));
		q = plen - 8;
	}
	/* the advertised MTU is smaller than the node's: the encapsulation fits under it */
	uint32_t mtu_rep = (in_ip[0] >> 4) == 4 ? be16(ic + 6) : (uint32_t)be16(ic + 4) << 16 | be16(ic + 6);

	CHECK(mtu_rep < var->mtu);
	CHECK(q <= ip_len && memcmp(ic + 8, in_ip, q) == 0);
	CHECK(q == ip_len || q == ((in_ip[0] >> 4) == 4 ? 576u - 28 : 1280u - 48));
}

/* Counter entries one call may touch, copied before it. */
struct count_view {
	uint64_t verdicts[4], drops[FWD_DROP_REASONS], replies;
};

static void count_view(struct count_view *v)
{
	memcpy(v->verdicts, counters->verdicts, sizeof(v->verdicts));
	memcpy(v->drops, counters->drops, sizeof(v->drops));
	v->replies = counters->icmp_replies;
}

static void check_counters(const struct count_view *before, const struct fwd_result *r,
			   uint32_t len, const struct fwd_pktbytes *bind_before,
			   const struct fwd_pktbytes *be_before)
{
	struct count_view now;

	count_view(&now);
	for (int v = 0; v < 4; v++)
		CHECK(now.verdicts[v] == before->verdicts[v] + (v == r->verdict));
	for (int d = 0; d < FWD_DROP_REASONS; d++)
		CHECK(now.drops[d] == before->drops[d] + (r->verdict == FWD_DROP && d == r->reason));
	CHECK(now.replies == before->replies + (r->verdict == FWD_REPLY));
	if (r->bind != FWD_NONE) {
		CHECK(counters->binds[r->bind].packets == bind_before->packets + 1);
		CHECK(counters->binds[r->bind].bytes == bind_before->bytes + len);
	}
	if (r->verdict == FWD_FORWARD) {
		const struct fwd_pktbytes *pb = &counters->backends[r->table][r->primary];

		CHECK(pb->packets == be_before->packets + 1);
		CHECK(pb->bytes == be_before->bytes + r->out_len);
	}
}

static void check_result(const struct variant *var, int ret, const struct fwd_result *r,
			 uint32_t buf_size)
{
	CHECK(ret == r->verdict && ret >= FWD_PASS && ret <= FWD_REPLY);
	CHECK((r->verdict == FWD_DROP) == (r->reason != FWD_DROP_NONE));
	CHECK(r->reason < FWD_DROP_REASONS);
	CHECK(var->nexthops || r->reason != FWD_DROP_NO_NEXTHOP);
	if (r->verdict == FWD_PASS)
		CHECK(r->bind == FWD_NONE);
	if (r->bind != FWD_NONE) {
		CHECK(r->bind < NBINDS && r->table == BINDS[r->bind].table);
	} else {
		CHECK(r->table == FWD_NONE && r->primary == FWD_NONE);
	}
	if (r->verdict == FWD_FORWARD || r->verdict == FWD_REPLY) {
		CHECK(r->bind != FWD_NONE);
		CHECK(r->out_off <= buf_size && r->out_len <= buf_size - r->out_off);
	} else {
		CHECK(r->out_len == 0);
	}
	if (r->primary != FWD_NONE) {
		CHECK(r->row == (r->flow_hash & 0xffff));
		CHECK(r->primary < TABLES[r->table].n && backend_ranked[r->table][r->primary]);
	}
}

static int same_result(const struct fwd_result *a, const struct fwd_result *b)
{
	return a->verdict == b->verdict && a->reason == b->reason && a->bind == b->bind &&
	       a->table == b->table && a->primary == b->primary && a->secondary == b->secondary &&
	       a->gue_sport == b->gue_sport && a->row == b->row && a->flow_hash == b->flow_hash &&
	       a->out_off == b->out_off && a->out_len == b->out_len &&
	       a->egress_ifindex == b->egress_ifindex;
}

/* fwd_process_batch on two copies of the frame must agree with fwd_process. */
static void check_batch(const struct fwd_snapshot *s, const uint8_t *frame, uint32_t len,
			const struct fwd_result *single, const uint8_t *single_buf,
			uint32_t headroom, uint32_t buf_size)
{
	static struct fwd_counters scratch;   /* counters are required; these are not checked */
	uint32_t lens[2] = {len, len};
	struct fwd_result res[2];
	uint8_t *bufs = malloc((size_t)buf_size * 2);

	CHECK(bufs);
	for (int i = 0; i < 2; i++) {
		memset(bufs + (size_t)i * buf_size, 0, buf_size);
		memcpy(bufs + (size_t)i * buf_size + headroom, frame, len);
	}
	fwd_process_batch(s, bufs, buf_size, headroom, lens, 2, res, &scratch);
	for (int i = 0; i < 2; i++) {
		CHECK(same_result(&res[i], single));
		if (single->out_len)
			CHECK(memcmp(bufs + (size_t)i * buf_size + single->out_off,
				     single_buf + single->out_off, single->out_len) == 0);
	}
	free(bufs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2 || size - 2 > MAX_FRAME)
		return -1;   /* not kept in the corpus */

	const struct variant *var = &VARIANTS[data[0] % NVARIANTS];
	const struct fwd_snapshot *s = snaps[data[0] % NVARIANTS];
	int batch = (data[0] / NVARIANTS) & 1;
	/* headroom: FWD_MIN_HEADROOM, or less (the core must refuse, not overrun) */
	uint32_t headroom = data[1] & 0x80 ? data[1] & 0x7f : FWD_MIN_HEADROOM + (data[1] & 0x3f);
	uint32_t tail = data[1] & 0x40 ? 0 : 16;
	const uint8_t *frame = data + 2;
	uint32_t len = (uint32_t)(size - 2), buf_size = headroom + len + tail;
	uint8_t *buf = malloc(buf_size);   /* exact size: ASan sees any write past it */
	struct fwd_pktbytes bind_before[NBINDS], be_before[NTABLES][8];
	struct count_view before;
	struct fwd_result r;
	int ret;

	CHECK(buf);
	memset(buf, 0xa5, buf_size);
	memcpy(buf + headroom, frame, len);
	count_view(&before);
	memcpy(bind_before, counters->binds, sizeof(bind_before));
	for (uint32_t t = 0; t < NTABLES; t++)
		memcpy(be_before[t], counters->backends[t], sizeof(be_before[t]));

	ret = fwd_process(s, buf, buf_size, headroom, len, &r, counters);

	check_result(var, ret, &r, buf_size);
	check_counters(&before, &r, len, r.bind != FWD_NONE ? &bind_before[r.bind] : NULL,
		       r.verdict == FWD_FORWARD ? &be_before[r.table][r.primary] : NULL);
	if (r.verdict == FWD_FORWARD)
		check_forward(var, frame, len, buf + r.out_off, &r);
	else if (r.verdict == FWD_REPLY)
		check_reply(var, frame, len, buf + r.out_off, &r);
	else if (r.verdict == FWD_PASS)
		CHECK(memcmp(buf + headroom, frame, len) == 0);   /* PASS leaves the frame alone */
	if (batch)
		check_batch(s, frame, len, &r, buf, headroom, buf_size);
	free(buf);
	return 0;
}
