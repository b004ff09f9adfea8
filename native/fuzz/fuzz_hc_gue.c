/*
 * fuzz_hc_gue.c - libFuzzer target for the health checker's GUE lane reader
 * (hc_gue_read and its reply matching in native/hc/hc_lanes.c): the C code that
 * reads whatever ICMP echo replies reach the checker's raw sockets, which anyone
 * on the network can send.
 *
 * The datagrams go through real sockets, so recvmmsg, the source addresses and
 * the kernel timestamps are the real ones: UDP sockets on loopback stand in for
 * the raw ICMP sockets (a raw IPv4 socket's datagram starts with the IP header,
 * and the reader takes the first bytes as one whatever they are). Six slots, four
 * IPv4 (127.0.0.1, 127.0.0.2, 127.0.0.1, 127.0.0.3) and two IPv6 (::1).
 *
 * Input: byte 0 says which slots send a probe (bit i: slot i; counters FIRST,
 * FIRST + 1, ... in slot order). Then up to MAX_DGRAMS records: a byte whose low
 * two bits pick the source (127.0.0.1, 127.0.0.2, ::1, 127.0.0.1), a length byte,
 * and that many bytes (cut at the end of the input). The IPv4 datagrams are read
 * first, then the IPv6 ones.
 *
 * Invariant: the reader's outcome equals this harness's own model of it, datagram
 * by datagram: ours (the token head and identifier at their offsets, exactly one
 * reply long) and naming an in-flight slot's counter from that slot's address and
 * family is a match (once); ours and naming no in-flight counter is handed back
 * with its bytes, source and family; everything else is dropped. Latencies are -1
 * or in [0, 60 s).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hc_lanes.h"

#define CHECK(c)                                                         \
	do {                                                             \
		if (!(c)) {                                              \
			fprintf(stderr, "fuzz_hc_gue: %s failed\n", #c); \
			abort();                                         \
		}                                                        \
	} while (0)

#define NSLOTS 6
#define MAX_DGRAMS 16
#define FIRST 0x1000u
#define IDENT 0x4242
#define TOKEN_HEAD 12
#define ECHO_LEN 28

static const unsigned char token_head[TOKEN_HEAD] = "fwd-hc-fuzz";   /* 11 characters + NUL */
static const unsigned char lo4[3][4] = {{127, 0, 0, 1}, {127, 0, 0, 2}, {127, 0, 0, 3}};
static const unsigned char lo6[16] = {[15] = 1};
/* each slot's address: an index into lo4 (IPv4) or -1 (::1) */
static const int slot_addr[NSLOTS] = {0, 1, 0, 2, -1, -1};

static struct hc_gue_lane *lane;
static int slots[NSLOTS];
static int rx4, rx6, tx4[2], tx6, sink4, sink6;
static struct sockaddr_in rx4_addr;
static struct sockaddr_in6 rx6_addr;

static int udp(int family, const void *addr, socklen_t len)
{
	int fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	int on = 1;

	CHECK(fd >= 0);
	if (family == AF_INET6)
		CHECK(setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on)) == 0);
	CHECK(bind(fd, addr, len) == 0);
	return fd;
}

static int udp4(int lo, struct sockaddr_in *bound)
{
	struct sockaddr_in a = {.sin_family = AF_INET};
	socklen_t len = sizeof(a);

	if (lo >= 0)
		memcpy(&a.sin_addr, lo4[lo], 4);   /* else INADDR_ANY: the sink takes every address */
	int fd = udp(AF_INET, &a, sizeof(a));
	if (bound)
		CHECK(getsockname(fd, (struct sockaddr *)bound, &len) == 0);
	return fd;
}

static int udp6(struct sockaddr_in6 *bound)
{
	struct sockaddr_in6 a = {.sin6_family = AF_INET6};
	socklen_t len = sizeof(a);

	memcpy(&a.sin6_addr, lo6, 16);
	int fd = udp(AF_INET6, &a, sizeof(a));
	if (bound)
		CHECK(getsockname(fd, (struct sockaddr *)bound, &len) == 0);
	return fd;
}

static void setup(void)
{
	struct sockaddr_in s4;
	struct sockaddr_in6 s6;
	int on = 1;

	rx4 = udp4(0, &rx4_addr);
	rx6 = udp6(&rx6_addr);
	CHECK(setsockopt(rx4, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof(on)) == 0);
	CHECK(setsockopt(rx6, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof(on)) == 0);
	tx4[0] = udp4(0, NULL);
	tx4[1] = udp4(1, NULL);
	tx6 = udp6(NULL);
	sink4 = udp4(-1, &s4);   /* where the probes go (and are dropped) */
	sink6 = udp6(&s6);
	lane = hc_gue_new(IDENT, token_head);
	CHECK(lane != NULL);
	for (int i = 0; i < NSLOTS; i++) {
		int v6 = slot_addr[i] < 0;
		unsigned char probe[8 + 40 + ECHO_LEN] = {0};
		size_t len = 8 + (v6 ? 40 : 20) + ECHO_LEN;

		slots[i] = hc_gue_slot(lane, -1, probe, len, v6, v6 ? lo6 : lo4[slot_addr[i]],
				       ntohs(v6 ? s6.sin6_port : s4.sin_port), v6 ? sink6 : sink4);
		CHECK(slots[i] >= 0);
	}
}

struct dgram {
	const uint8_t *d;
	size_t len;
	int src;   /* 0, 1: tx4[src]; 2: tx6 */
};

/* The model's verdict on one datagram: -2 dropped, -1 handed back, else the slot index matched. */
static int model(const struct dgram *g, uint64_t counters[NSLOTS], int in_flight[NSLOTS])
{
	int v4 = g->src != 2;
	size_t off = v4 && g->len > 0 ? (size_t)(g->d[0] & 15) * 4 : 0;

	if (g->len == 0 || g->len != off + ECHO_LEN || memcmp(g->d + off + 8, token_head, TOKEN_HEAD) ||
	    g->d[off + 4] != (IDENT >> 8) || g->d[off + 5] != (IDENT & 0xff))
		return -2;
	uint64_t c = 0;
	for (int b = 0; b < 8; b++)
		c = c << 8 | g->d[off + 20 + b];
	for (int i = 0; i < NSLOTS; i++) {
		if (!in_flight[i] || counters[i] != c)
			continue;
		/* from the slot's own address and family, or not the answer */
		int from_slot = v4 ? slot_addr[i] == g->src : slot_addr[i] < 0;
		if (!from_slot)
			return -2;
		in_flight[i] = 0;
		return i;
	}
	return -1;
}

/* Reads one socket's datagrams through the lane and checks them against the model. */
static void read_and_check(int fd, int v4, const struct dgram *g, int n, uint64_t counters[NSLOTS],
			   int in_flight[NSLOTS])
{
	int got[MAX_DGRAMS + 1], n_others = 0;
	double latency[MAX_DGRAMS + 1];
	struct hc_gue_other others[MAX_DGRAMS + 1];
	int matched = hc_gue_read(lane, fd, v4, got, latency, MAX_DGRAMS + 1, others, MAX_DGRAMS + 1,
				  &n_others);
	const char *spill = hc_gue_spill(lane);
	int m = 0, o = 0;

	CHECK(matched >= 0 && matched <= n && n_others >= 0 && n_others <= n);
	for (int k = 0; k < n; k++) {
		int want = model(&g[k], counters, in_flight);

		if (want >= 0) {
			CHECK(m < matched && got[m] == slots[want]);
			CHECK(latency[m] == -1.0 || (latency[m] >= 0.0 && latency[m] < 60.0));
			m++;
		} else if (want == -1) {
			CHECK(o < n_others && others[o].len == g[k].len);
			CHECK(memcmp(spill + others[o].off, g[k].d, g[k].len) == 0);
			CHECK(others[o].family == (v4 ? 4 : 6));
			CHECK(memcmp(others[o].addr, v4 ? lo4[g[k].src] : lo6, v4 ? 4 : 16) == 0);
			o++;
		}
	}
	CHECK(m == matched && o == n_others);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dgram v4[MAX_DGRAMS], v6[MAX_DGRAMS];
	int n4 = 0, n6 = 0, sel[NSLOTS], nsel = 0, codes[NSLOTS], errs[NSLOTS];
	uint64_t counters[NSLOTS] = {0};
	int in_flight[NSLOTS] = {0};

	if (!lane)
		setup();
	if (size < 1)
		return 0;
	for (int i = 0; i < NSLOTS; i++)
		if (data[0] >> i & 1) {
			counters[i] = FIRST + (uint64_t)nsel;
			sel[nsel++] = slots[i];
		}
	if (nsel > 0) {
		CHECK(hc_gue_send(lane, sel, nsel, FIRST, codes, errs) == 0);
		for (int i = 0, k = 0; i < NSLOTS; i++)
			if (data[0] >> i & 1)
				in_flight[i] = codes[k++] == HC_PASS;
	}
	for (size_t at = 1; at + 2 <= size && n4 + n6 < MAX_DGRAMS;) {
		int src = data[at] & 3;
		size_t len = data[at + 1];

		at += 2;
		if (len > size - at)
			len = size - at;
		struct dgram g = {data + at, len, src == 3 ? 0 : src};
		at += len;
		if (g.src == 2) {
			CHECK(sendto(tx6, g.d, g.len, 0, (struct sockaddr *)&rx6_addr, sizeof(rx6_addr)) ==
			      (ssize_t)g.len);
			v6[n6++] = g;
		} else {
			CHECK(sendto(tx4[g.src], g.d, g.len, 0, (struct sockaddr *)&rx4_addr, sizeof(rx4_addr)) ==
			      (ssize_t)g.len);
			v4[n4++] = g;
		}
	}
	/* loopback delivers within sendto: every datagram is queued by now */
	read_and_check(rx4, 1, v4, n4, counters, in_flight);
	read_and_check(rx6, 0, v6, n6, counters, in_flight);
	/* the next input starts with nothing in flight and empty sockets */
	for (int i = 0; i < NSLOTS; i++) {
		uint64_t c;
		int64_t t;

		CHECK(hc_gue_take(lane, slots[i], &c, &t) == in_flight[i]);
	}
	char junk[256];
	while (recv(sink4, junk, sizeof(junk), 0) >= 0 || recv(sink6, junk, sizeof(junk), 0) >= 0)
		;
	return 0;
}
