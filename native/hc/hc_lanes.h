/* hc_lanes: the per-check work of the health checker's steady-state lanes in C
 * (healthcheck/checks.py, "The steady state (lanes)"). Not part of the packet core: it is
 * built as its own extension, healthcheck._lanes (healthcheck/_build_lanes.py).
 *
 * The http lane keeps one slot per kept-connection plan: its request bytes and expected
 * status. hc_http_send() sends the requests of one tick, hc_http_read() reads the answers at
 * the next one and frames them: one complete response with the expected status, nothing
 * after it, arrived after the request, is HC_PASS; anything else is handed back to Python
 * (the bytes read, their kernel timestamp, or the errno), which goes on exactly as before.
 *
 * The text between the cdef markers is what Python sees (cffi cdef): plain declarations. */
#ifndef HC_LANES_H
#define HC_LANES_H

#include <stddef.h>
#include <stdint.h>

/* cdef-begin */
#define HC_PASS 0   /* read: one complete response with the expected status; send: sent whole */
#define HC_AGAIN 1  /* read: nothing there yet (EAGAIN) */
#define HC_DATA 2   /* read: bytes that are not a plain pass (or end of stream: len 0) */
#define HC_ERROR 3  /* read or send: the call failed, err = errno */
#define HC_SHORT 4  /* send: only part of the request went */

#define HC_READ_MAX 16384 /* one recv of an answer, as the Python path reads */

struct hc_http_lane;

/* Where a handed-back answer is: spill + off, len bytes; ts_ns its arrival (CLOCK_REALTIME,
 * SO_TIMESTAMPNS), 0 without one; err the errno of HC_ERROR. */
struct hc_detail {
    int err;
    uint32_t off;
    uint32_t len;
    int64_t ts_ns;
};

struct hc_http_lane *hc_http_new(void);
void hc_http_free(struct hc_http_lane *lane);
/* A slot for a plan: its request and expected status. -1 when out of memory. */
int hc_http_slot(struct hc_http_lane *lane, const char *request, size_t len, int status);
void hc_http_release(struct hc_http_lane *lane, int slot);
/* send() each slot's request on fds[i]; codes[i] = HC_PASS / HC_SHORT / HC_ERROR (details[i].err).
 * The send time of each is kept in its slot. Returns how many did not go whole. */
int hc_http_send(struct hc_http_lane *lane, const int *slots, const int *fds, int n, int *codes,
                 struct hc_detail *details);
/* One recv on each fd; codes[i] as above, latency[i] (seconds, request to first byte) for
 * HC_PASS. The bytes of HC_DATA stay in hc_http_spill() until the next call. Returns how many
 * are not HC_PASS. */
int hc_http_read(struct hc_http_lane *lane, const int *slots, const int *fds, int n, int *codes,
                 double *latency, struct hc_detail *details);
const char *hc_http_spill(struct hc_http_lane *lane);
/* CLOCK_REALTIME in ns when slot's request was sent. */
int64_t hc_http_sent(struct hc_http_lane *lane, int slot);
/* 1 when buf is exactly one complete HTTP response with status `expected` that leaves the
 * connection reusable — only when healthcheck.checks._response(buf, True) says
 * (expected, len) too (the lane's framer; stricter is allowed: Python decides then). */
int hc_http_complete(const char *buf, size_t len, int expected);

/* The tunnel (GUE/FOU) lane: a slot per plan holds its probe for counter 0 (what
 * build_tunnel_probe writes: the 8-byte encapsulation head, the inner IPv4 or IPv6 header, an
 * ICMP echo request whose payload is the 20-byte token ending in the counter), its destination
 * and the socket it leaves by. hc_gue_send() writes each probe's counter (the sequence number,
 * the IPv4 id, the token's last 8 bytes), recomputes the checksums and sends them (sendmmsg);
 * hc_gue_read() drains the raw ICMP socket (recvmmsg): an echo reply to an in-flight slot's probe from its
 * address is a match (slot, latency), any other reply of ours is handed back for Python's
 * matching (the general runs). */
#define HC_PROBE_MAX 128

struct hc_gue_lane;

/* A reply handed back: spill + off, len bytes (as recvmmsg returned them), its source address
 * (4 or 16 bytes, family 4 or 6) and arrival ts_ns (0 without one). */
struct hc_gue_other {
    uint32_t off;
    uint32_t len;
    int64_t ts_ns;
    int family;
    unsigned char addr[16];
};

/* ident: the identifier of our echo requests; token_head: the token's first 12 bytes. */
struct hc_gue_lane *hc_gue_new(int ident, const unsigned char *token_head);
void hc_gue_free(struct hc_gue_lane *lane);
/* A slot, or an update of one (slot >= 0): probe = the probe for counter 0 (v6: inner IPv6),
 * addr/port = where it goes (addr: 4 or 16 bytes), fd = the socket it leaves by. -1 on a bad
 * probe or out of memory. */
int hc_gue_slot(struct hc_gue_lane *lane, int slot, const unsigned char *probe, size_t len, int v6,
                const unsigned char *addr, int port, int fd);
void hc_gue_release(struct hc_gue_lane *lane, int slot);
/* Send the probe of slots[i] with counter first + i; codes[i] = HC_PASS or HC_ERROR (errs[i]). */
int hc_gue_send(struct hc_gue_lane *lane, const int *slots, int n, uint64_t first, int *codes, int *errs);
/* Drain fd (the raw socket of family v4 or not): up to max matches into slots[]/latency[]
 * (latency -1 without a usable timestamp), the replies for Python into others[] (up to
 * max_others); *n_others = how many. Returns the number of matches. */
int hc_gue_read(struct hc_gue_lane *lane, int fd, int v4, int *slots, double *latency, int max,
                struct hc_gue_other *others, int max_others, int *n_others);
const char *hc_gue_spill(struct hc_gue_lane *lane);
/* Take slot's probe off the lane if it is still in flight (1; its counter and send time in
 * *counter, *sent_ns): from then on its reply is handed back to Python. */
int hc_gue_take(struct hc_gue_lane *lane, int slot, uint64_t *counter, int64_t *sent_ns);
/* hc_gue_take for each of slots[]: the indices i whose probe was still in flight go to
 * taken[] (their counters and send times to counters[i], sent_ns[i]); returns how many. */
int hc_gue_take_all(struct hc_gue_lane *lane, const int *slots, int n, int *taken, uint64_t *counters,
                    int64_t *sent_ns);
/* The probe slot would send with counter (tests). */
int hc_gue_build(struct hc_gue_lane *lane, int slot, uint64_t counter, unsigned char *out, size_t cap);
/* cdef-end */

#endif
