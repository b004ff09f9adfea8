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
/* cdef-end */

#endif
