/* hc_lanes: the health checker's http lane in C (hc_lanes.h). Every read of bytes from the
 * network is bounds-checked against the length recv() returned; the framer is a predicate
 * (pass or not) that never decides more than "this is the usual answer": anything else goes
 * back to the Python code, which frames it itself. */
#define _GNU_SOURCE
#include "hc_lanes.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define MAX_BODY 65536u    /* healthcheck.checks._MAX_BODY */
#define MAX_CHUNK_LINE 1024u /* a chunk-size line longer than this cannot be framed */

struct slot {
    char *request;
    size_t len;
    int status;
    int next_free; /* free list; -2 while in use */
    int64_t sent_ns;
};

struct hc_http_lane {
    struct slot *slots;
    int n_slots;
    int free_head;
    char *spill;
    size_t spill_len, spill_cap;
    char scratch[HC_READ_MAX];
};

/* ---------------------------------------------------------------------------------------- */
/* The framer: healthcheck.checks._response(buf, True) == (expected, len(buf)), written for
 * the usual answers; a stricter "no" is always allowed. */

static int is_ws(unsigned char c) /* bytes.strip()'s set */
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == 0x0b || c == 0x0c;
}

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static int hex_value(unsigned char c)
{
    if (is_digit(c))
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static unsigned char lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

/* [*s, *e) without bytes.strip()'s whitespace at both ends */
static void strip(const char **s, const char **e)
{
    while (*s < *e && is_ws((unsigned char)**s))
        (*s)++;
    while (*e > *s && is_ws((unsigned char)(*e)[-1]))
        (*e)--;
}

static int equals_lower(const char *s, const char *e, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(e - s) != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)s[i]) != (unsigned char)word[i])
            return 0;
    return 1;
}

/* A status line at p in its plain form: "HTTP/" [0-9.]+ [ \t]+ three digits, then LF, CRLF
 * or [ \t] and anything up to LF. The status, or -1; *next: just past its LF; *crlf: ended
 * with CRLF. */
static int status_line(const char *p, const char *end, const char **next, int *crlf)
{
    if (end - p < 5 || memcmp(p, "HTTP/", 5) != 0)
        return -1;
    const char *q = p + 5;
    if (q >= end || !(is_digit((unsigned char)*q) || *q == '.'))
        return -1;
    while (q < end && (is_digit((unsigned char)*q) || *q == '.'))
        q++;
    if (q >= end || (*q != ' ' && *q != '\t'))
        return -1;
    while (q < end && (*q == ' ' || *q == '\t'))
        q++;
    if (end - q < 4 || !is_digit((unsigned char)q[0]) || !is_digit((unsigned char)q[1]) ||
        !is_digit((unsigned char)q[2]))
        return -1;
    int status = (q[0] - '0') * 100 + (q[1] - '0') * 10 + (q[2] - '0');
    q += 3;
    if (*q == '\n') {
        *crlf = 0;
        *next = q + 1;
    } else if (*q == '\r') {
        if (end - q < 2 || q[1] != '\n')
            return -1;
        *crlf = 1;
        *next = q + 2;
    } else if (*q == ' ' || *q == '\t') {
        const char *nl = memchr(q, '\n', (size_t)(end - q));
        if (nl == NULL)
            return -1;
        *crlf = nl[-1] == '\r'; /* nl > q: q is a blank */
        *next = nl + 1;
    } else {
        return -1;
    }
    return status;
}

/* Just past the empty line ending the head that starts at p (the earlier of LF CR LF and
 * LF LF), NULL if not there. */
static const char *head_end(const char *p, const char *end)
{
    for (const char *q = p; q < end; q++) {
        q = memchr(q, '\n', (size_t)(end - q));
        if (q == NULL)
            return NULL;
        if (end - q >= 2 && q[1] == '\n')
            return q + 2;
        if (end - q >= 3 && q[1] == '\r' && q[2] == '\n')
            return q + 3;
    }
    return NULL;
}

/* Just past a chunked body starting at p with its trailers; NULL if incomplete or unclear. */
static const char *chunked_end(const char *p, const char *end)
{
    const char *start = p;
    for (;;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL)
            return NULL;
        const char *s = p, *e = memchr(p, ';', (size_t)(nl - p));
        if (e == NULL)
            e = nl;
        strip(&s, &e);
        if (s == e || e - s > 8)
            return NULL;
        uint64_t size = 0;
        for (const char *c = s; c < e; c++) {
            int v = hex_value((unsigned char)*c);
            if (v < 0)
                return NULL;
            size = size * 16 + (uint64_t)v;
        }
        p = nl + 1;
        if (size == 0)
            break;
        if ((uint64_t)(p - start) + size > MAX_BODY)
            return NULL;
        if ((uint64_t)(end - p) < size + 1)
            return NULL;
        const char *c = p + size;
        if (*c == '\n') {
            p = c + 1;
        } else if (*c == '\r') {
            if (end - c < 2 || c[1] != '\n')
                return NULL;
            p = c + 2;
        } else {
            return NULL;
        }
    }
    for (;;) { /* trailer fields, up to an empty line */
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL)
            return NULL;
        const char *line = p;
        p = nl + 1;
        if (nl == line || (nl - line == 1 && line[0] == '\r'))
            return p;
    }
}

/* The field named name (lower case) at s, as the regex \n(name)[ \t]*:([^\n]*) (case
 * insensitive) matches it with s just past the LF; its value in [*vs, *ve). */
static int field(const char *s, const char *end, const char *name, const char **vs, const char **ve)
{
    size_t n = strlen(name);
    if ((size_t)(end - s) < n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)s[i]) != (unsigned char)name[i])
            return 0;
    const char *q = s + n;
    while (q < end && (*q == ' ' || *q == '\t'))
        q++;
    if (q >= end || *q != ':')
        return 0;
    q++;
    const char *nl = memchr(q, '\n', (size_t)(end - q));
    *vs = q;
    *ve = nl != NULL ? nl : end;
    return 1;
}

int hc_http_complete(const char *buf, size_t len, int expected)
{
    const char *end = buf + len, *p = buf, *next, *hend;
    int crlf, first_crlf = -1, status;
    for (;;) {
        status = status_line(p, end, &next, &crlf);
        if (status < 0)
            return 0;
        if (first_crlf < 0)
            first_crlf = crlf;
        hend = head_end(p, end);
        if (hend == NULL)
            return 0;
        if (!(status >= 100 && status < 200 && status != 101))
            break;
        p = hend; /* an interim response: skipped */
    }
    if (status != expected || status == 101)
        return 0;
    /* Python tries the usual CRLF form first; with CRLF and bare LF mixed it might frame the
     * head differently: not the usual answer, Python decides. */
    if (first_crlf)
        for (const char *q = buf; q < hend; q++)
            if (*q == '\n' && (q == buf || q[-1] != '\r'))
                return 0;
    int version11 = end - p >= 8 && memcmp(p, "HTTP/1.1", 8) == 0;
    int close = 0, keep_alive = 0, te = 0, lengths = 0;
    const char *cl_s = NULL, *cl_e = NULL, *coding_s = NULL, *coding_e = NULL;
    for (const char *q = p; q < hend; q++) {
        q = memchr(q, '\n', (size_t)(hend - q));
        if (q == NULL)
            break;
        const char *s = q + 1, *vs, *ve;
        if (field(s, hend, "content-length", &vs, &ve)) {
            strip(&vs, &ve);
            if (lengths == 0) {
                cl_s = vs, cl_e = ve;
                lengths = 1;
            } else if (ve - vs != cl_e - cl_s || memcmp(vs, cl_s, (size_t)(ve - vs)) != 0) {
                lengths = 2; /* several values: unclear */
            }
        } else if (field(s, hend, "connection", &vs, &ve) || field(s, hend, "transfer-encoding", &vs, &ve)) {
            int is_te = lower((unsigned char)*s) == 't';
            te |= is_te;
            while (vs <= ve) { /* the comma-separated tokens */
                const char *comma = memchr(vs, ',', (size_t)(ve - vs));
                const char *ts = vs, *tend = comma != NULL ? comma : ve;
                strip(&ts, &tend);
                if (is_te) {
                    if (ts < tend)
                        coding_s = ts, coding_e = tend;
                } else if (equals_lower(ts, tend, "close")) {
                    close = 1;
                } else if (equals_lower(ts, tend, "keep-alive")) {
                    keep_alive = 1;
                }
                if (comma == NULL)
                    break;
                vs = comma + 1;
            }
        }
    }
    if (close || (!version11 && !keep_alive))
        return 0;
    if (status == 204 || status == 304)
        return hend == end;
    if (te) {
        if (lengths || coding_s == NULL || !equals_lower(coding_s, coding_e, "chunked"))
            return 0;
        return chunked_end(hend, end) == end;
    }
    if (lengths != 1 || cl_s == cl_e)
        return 0;
    size_t body = 0;
    for (const char *c = cl_s; c < cl_e; c++) {
        if (!is_digit((unsigned char)*c))
            return 0;
        body = body * 10 + (size_t)(*c - '0');
        if (body > MAX_BODY)
            return 0;
    }
    return (size_t)(end - hend) == body;
}

/* ---------------------------------------------------------------------------------------- */
/* Slots and the system calls */

struct hc_http_lane *hc_http_new(void)
{
    struct hc_http_lane *lane = calloc(1, sizeof(*lane));
    if (lane != NULL)
        lane->free_head = -1;
    return lane;
}

void hc_http_free(struct hc_http_lane *lane)
{
    if (lane == NULL)
        return;
    for (int i = 0; i < lane->n_slots; i++)
        free(lane->slots[i].request);
    free(lane->slots);
    free(lane->spill);
    free(lane);
}

int hc_http_slot(struct hc_http_lane *lane, const char *request, size_t len, int status)
{
    char *copy = malloc(len ? len : 1);
    if (copy == NULL)
        return -1;
    memcpy(copy, request, len);
    int i = lane->free_head;
    if (i >= 0) {
        lane->free_head = lane->slots[i].next_free;
    } else {
        struct slot *grown = realloc(lane->slots, sizeof(*grown) * (size_t)(lane->n_slots + 1));
        if (grown == NULL) {
            free(copy);
            return -1;
        }
        lane->slots = grown;
        i = lane->n_slots++;
    }
    lane->slots[i] = (struct slot){.request = copy, .len = len, .status = status, .next_free = -2};
    return i;
}

static struct slot *slot_of(struct hc_http_lane *lane, int i)
{
    if (i < 0 || i >= lane->n_slots || lane->slots[i].next_free != -2)
        return NULL;
    return &lane->slots[i];
}

void hc_http_release(struct hc_http_lane *lane, int i)
{
    struct slot *s = slot_of(lane, i);
    if (s == NULL)
        return;
    free(s->request);
    s->request = NULL;
    s->next_free = lane->free_head;
    lane->free_head = i;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int hc_http_send(struct hc_http_lane *lane, const int *slots, const int *fds, int n, int *codes,
                 struct hc_detail *details)
{
    int unusual = 0;
    for (int i = 0; i < n; i++) {
        struct slot *s = slot_of(lane, slots[i]);
        if (s == NULL) {
            codes[i] = HC_ERROR;
            details[i].err = EBADF;
            unusual++;
            continue;
        }
        s->sent_ns = now_ns();
        ssize_t r;
        do
            r = send(fds[i], s->request, s->len, MSG_NOSIGNAL | MSG_DONTWAIT);
        while (r < 0 && errno == EINTR);
        if (r == (ssize_t)s->len) {
            codes[i] = HC_PASS;
            continue;
        }
        unusual++;
        if (r < 0) {
            codes[i] = HC_ERROR;
            details[i].err = errno;
        } else {
            codes[i] = HC_SHORT;
        }
    }
    return unusual;
}

/* *buf holds at least need bytes (*cap grows by doubling from first): 0, or -1 out of memory. */
static int reserve(char **buf, size_t *cap, size_t need, size_t first)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : first;
    while (c < need)
        c *= 2;
    char *grown = realloc(*buf, c);
    if (grown == NULL)
        return -1;
    *buf = grown;
    *cap = c;
    return 0;
}

static int spill(struct hc_http_lane *lane, const char *data, size_t len, struct hc_detail *d)
{
    d->off = (uint32_t)lane->spill_len;
    d->len = (uint32_t)len;
    if (len == 0) /* end of stream: nothing to keep (and spill may not exist yet) */
        return 0;
    if (reserve(&lane->spill, &lane->spill_cap, lane->spill_len + len, 65536) < 0)
        return -1;
    memcpy(lane->spill + lane->spill_len, data, len);
    lane->spill_len += len;
    return 0;
}

int hc_http_read(struct hc_http_lane *lane, const int *slots, const int *fds, int n, int *codes,
                 double *latency, struct hc_detail *details)
{
    int unusual = 0;
    lane->spill_len = 0;
    for (int i = 0; i < n; i++) {
        struct slot *s = slot_of(lane, slots[i]);
        struct hc_detail *d = &details[i];
        d->ts_ns = 0;
        d->len = 0;
        d->off = 0;
        if (s == NULL) {
            codes[i] = HC_ERROR;
            d->err = EBADF;
            unusual++;
            continue;
        }
        union {
            char buf[CMSG_SPACE(sizeof(struct timespec))];
            struct cmsghdr align;
        } control;
        struct iovec iov = {.iov_base = lane->scratch, .iov_len = sizeof(lane->scratch)};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                             .msg_controllen = sizeof(control.buf)};
        ssize_t r;
        do
            r = recvmsg(fds[i], &msg, MSG_DONTWAIT);
        while (r < 0 && errno == EINTR);
        if (r < 0) {
            unusual++;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                codes[i] = HC_AGAIN;
            } else {
                codes[i] = HC_ERROR;
                d->err = errno;
            }
            continue;
        }
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS &&
                c->cmsg_len >= CMSG_LEN(sizeof(struct timespec))) {
                struct timespec ts;
                memcpy(&ts, CMSG_DATA(c), sizeof(ts));
                d->ts_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
                break;
            }
        }
        if (r > 0 && d->ts_ns != 0 && d->ts_ns >= s->sent_ns &&
            hc_http_complete(lane->scratch, (size_t)r, s->status)) {
            codes[i] = HC_PASS;
            latency[i] = (double)(d->ts_ns - s->sent_ns) * 1e-9;
            continue;
        }
        unusual++;
        if (spill(lane, lane->scratch, (size_t)r, d) < 0) {
            codes[i] = HC_ERROR;
            d->err = ENOMEM;
            continue;
        }
        codes[i] = HC_DATA;
    }
    return unusual;
}

const char *hc_http_spill(struct hc_http_lane *lane) { return lane->spill; }

int64_t hc_http_sent(struct hc_http_lane *lane, int i)
{
    struct slot *s = slot_of(lane, i);
    return s != NULL ? s->sent_ns : 0;
}

/* ---------------------------------------------------------------------------------------- */
/* The tunnel lane */

#include <netinet/in.h>

#define RING 65536u /* counter -> slot, checked against the slot's counter */
#define TOKEN_HEAD 12u /* magic + nonce */
#define ECHO_LEN 28u   /* ICMP header + token */
#define BATCH 32u      /* messages per sendmmsg / recvmmsg call */
#define RX_MAX 2048u   /* one echo reply (a longer datagram is truncated: not ours anyway) */

struct gue_slot {
    unsigned char probe[HC_PROBE_MAX];
    size_t len;
    size_t inner; /* offset of the inner IP header (after the encapsulation head) */
    int v6;
    int fd;
    int used;
    int in_flight;
    int next_free;
    uint64_t counter;
    int64_t sent_ns;
    struct sockaddr_storage dest;
    socklen_t dest_len;
    unsigned char addr[16];
};

struct hc_gue_lane {
    struct gue_slot *slots;
    int n_slots;
    int free_head;
    unsigned char ident[2];
    unsigned char token_head[TOKEN_HEAD];
    int32_t ring[RING];
    char *spill;
    size_t spill_len, spill_cap;
    unsigned char out[BATCH][HC_PROBE_MAX]; /* one tick's probes, as sendmmsg takes them */
    unsigned char rx[BATCH][RX_MAX];
};

struct hc_gue_lane *hc_gue_new(int ident, const unsigned char *token_head)
{
    struct hc_gue_lane *lane = calloc(1, sizeof(*lane));
    if (lane == NULL)
        return NULL;
    lane->free_head = -1;
    lane->ident[0] = (unsigned char)(ident >> 8);
    lane->ident[1] = (unsigned char)ident;
    memcpy(lane->token_head, token_head, TOKEN_HEAD);
    for (unsigned i = 0; i < RING; i++)
        lane->ring[i] = -1;
    return lane;
}

void hc_gue_free(struct hc_gue_lane *lane)
{
    if (lane == NULL)
        return;
    free(lane->slots);
    free(lane->spill);
    free(lane);
}

int hc_gue_slot(struct hc_gue_lane *lane, int i, const unsigned char *probe, size_t len, int v6,
                const unsigned char *addr, int port, int fd)
{
    size_t inner = 8, ip = v6 ? 40 : 20;
    if (len != inner + ip + ECHO_LEN || len > HC_PROBE_MAX || port < 0 || port > 65535)
        return -1;
    if (i >= 0) {
        if (i >= lane->n_slots || !lane->slots[i].used)
            return -1;
    } else if (lane->free_head >= 0) {
        i = lane->free_head;
        lane->free_head = lane->slots[i].next_free;
    } else {
        struct gue_slot *grown = realloc(lane->slots, sizeof(*grown) * (size_t)(lane->n_slots + 1));
        if (grown == NULL)
            return -1;
        lane->slots = grown;
        i = lane->n_slots++;
        lane->slots[i].in_flight = 0;
    }
    struct gue_slot *s = &lane->slots[i];
    int in_flight = s->used ? s->in_flight : 0;
    uint64_t counter = s->used ? s->counter : 0;
    int64_t sent = s->used ? s->sent_ns : 0;
    memset(s, 0, sizeof(*s));
    memcpy(s->probe, probe, len);
    s->len = len;
    s->inner = inner;
    s->v6 = v6;
    s->fd = fd;
    s->used = 1;
    s->in_flight = in_flight;
    s->counter = counter;
    s->sent_ns = sent;
    memcpy(s->addr, addr, v6 ? 16 : 4);
    if (v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&s->dest;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        memcpy(&a->sin6_addr, addr, 16);
        s->dest_len = sizeof(*a);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&s->dest;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        memcpy(&a->sin_addr, addr, 4);
        s->dest_len = sizeof(*a);
    }
    return i;
}

static struct gue_slot *gue_slot_of(struct hc_gue_lane *lane, int i)
{
    if (i < 0 || i >= lane->n_slots || !lane->slots[i].used)
        return NULL;
    return &lane->slots[i];
}

void hc_gue_release(struct hc_gue_lane *lane, int i)
{
    struct gue_slot *s = gue_slot_of(lane, i);
    if (s == NULL)
        return;
    s->used = 0;
    s->in_flight = 0;
    s->next_free = lane->free_head;
    lane->free_head = i;
}

static uint32_t sum16(const unsigned char *p, size_t n, uint32_t sum)
{
    for (size_t i = 0; i + 1 < n; i += 2)
        sum += (uint32_t)p[i] << 8 | p[i + 1];
    return sum;
}

static void put_csum(unsigned char *at, uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    uint16_t c = (uint16_t)~sum;
    at[0] = (unsigned char)(c >> 8);
    at[1] = (unsigned char)c;
}

/* slot's probe with counter, into out (s->len bytes) */
static void build(const struct gue_slot *s, uint64_t counter, unsigned char *out)
{
    memcpy(out, s->probe, s->len);
    unsigned char *ip = out + s->inner, *icmp = ip + (s->v6 ? 40 : 20);
    unsigned char seq[2] = {(unsigned char)(counter >> 8), (unsigned char)counter};
    icmp[6] = seq[0], icmp[7] = seq[1];
    for (int b = 0; b < 8; b++)
        icmp[ECHO_LEN - 8 + b] = (unsigned char)(counter >> (56 - 8 * b));
    icmp[2] = icmp[3] = 0;
    if (s->v6) { /* ICMPv6: the pseudo header (addresses, length, next header 58) is summed */
        uint32_t sum = sum16(ip + 8, 32, 0) + ECHO_LEN + 58;
        put_csum(icmp + 2, sum16(icmp, ECHO_LEN, sum));
    } else {
        ip[4] = seq[0], ip[5] = seq[1]; /* the IPv4 id is the sequence number too */
        ip[10] = ip[11] = 0;
        put_csum(ip + 10, sum16(ip, 20, 0));
        put_csum(icmp + 2, sum16(icmp, ECHO_LEN, 0));
    }
}

int hc_gue_build(struct hc_gue_lane *lane, int i, uint64_t counter, unsigned char *out, size_t cap)
{
    struct gue_slot *s = gue_slot_of(lane, i);
    if (s == NULL || cap < s->len)
        return -1;
    build(s, counter, out);
    return (int)s->len;
}

/* Messages k.. of a batch went (r of them) or the first of them failed (r < 0): record it */
static int sent(struct hc_gue_lane *lane, const int *slots, const int *idx, unsigned k, int r, int err,
                uint64_t first, int *codes, int *errs)
{
    if (r <= 0) {
        int at = idx[k];
        codes[at] = HC_ERROR;
        errs[at] = r < 0 ? err : EAGAIN; /* r == 0 is not expected for a non-empty batch */
        lane->slots[slots[at]].in_flight = 0;
        return 1;
    }
    for (unsigned j = k; j < k + (unsigned)r; j++) {
        int at = idx[j];
        codes[at] = HC_PASS;
        lane->slots[slots[at]].in_flight = 1;
        lane->ring[(first + (uint64_t)at) % RING] = slots[at];
    }
    return r;
}

/* One sendmmsg per run of (at most BATCH) probes that leave by the same socket, each message
 * with its own destination. sendmmsg reports only how many went: the message after them is
 * sent again at the head of the next call, which then fails with that message's own errno
 * (what sendto reports for it) or sends it and the rest. */
int hc_gue_send(struct hc_gue_lane *lane, const int *slots, int n, uint64_t first, int *codes, int *errs)
{
    int unusual = 0;
    int i = 0;
    while (i < n) {
        struct mmsghdr mm[BATCH];
        struct iovec iov[BATCH];
        int idx[BATCH];
        unsigned m = 0;
        int fd = -1;
        int64_t now = now_ns();
        for (; i < n && m < BATCH; i++) {
            struct gue_slot *s = gue_slot_of(lane, slots[i]);
            if (s == NULL) {
                codes[i] = HC_ERROR;
                errs[i] = EBADF;
                unusual++;
                continue;
            }
            if (m > 0 && s->fd != fd)
                break; /* another socket: the next batch */
            fd = s->fd;
            errs[i] = 0;
            uint64_t counter = first + (uint64_t)i;
            build(s, counter, lane->out[m]);
            s->counter = counter;
            s->sent_ns = now;
            iov[m] = (struct iovec){.iov_base = lane->out[m], .iov_len = s->len};
            mm[m].msg_hdr = (struct msghdr){.msg_name = &s->dest, .msg_namelen = s->dest_len,
                                            .msg_iov = &iov[m], .msg_iovlen = 1};
            mm[m].msg_len = 0;
            idx[m++] = i;
        }
        for (unsigned k = 0; k < m;) {
            int r = sendmmsg(fd, mm + k, m - k, MSG_DONTWAIT);
            if (r < 0 && errno == EINTR)
                continue;
            int done = sent(lane, slots, idx, k, r, errno, first, codes, errs);
            if (r <= 0)
                unusual++;
            k += (unsigned)done;
        }
    }
    return unusual;
}

int hc_gue_take(struct hc_gue_lane *lane, int i, uint64_t *counter, int64_t *sent_ns)
{
    struct gue_slot *s = gue_slot_of(lane, i);
    if (s == NULL || !s->in_flight)
        return 0;
    s->in_flight = 0;
    *counter = s->counter;
    *sent_ns = s->sent_ns;
    return 1;
}

int hc_gue_take_all(struct hc_gue_lane *lane, const int *slots, int n, int *taken, uint64_t *counters,
                    int64_t *sent_ns)
{
    int k = 0;
    for (int i = 0; i < n; i++)
        if (hc_gue_take(lane, slots[i], &counters[i], &sent_ns[i]))
            taken[k++] = i;
    return k;
}

static uint64_t get_be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int b = 0; b < 8; b++)
        v = v << 8 | p[b];
    return v;
}

/* One datagram from the raw socket: our echo reply to an in-flight slot goes to slots[] and
 * latency[], an echo reply to another of our probes to others[] (Python's matching decides),
 * anything else is dropped. */
static void take_reply(struct hc_gue_lane *lane, const unsigned char *d, size_t len, const struct msghdr *msg,
                       int v4, int *slots, double *latency, int *matched, struct hc_gue_other *others,
                       int *n_others)
{
    if (len > RX_MAX)
        len = RX_MAX; /* truncated datagram (MSG_TRUNC): not ours anyway */
    size_t off = v4 ? (len > 0 ? (size_t)(d[0] & 0x0f) * 4 : 0) : 0;
    /* ours: 8 bytes of ICMP header (our identifier) + the token */
    if (len == 0 || len != off + ECHO_LEN || memcmp(d + off + 8, lane->token_head, TOKEN_HEAD) != 0 ||
        memcmp(d + off + 4, lane->ident, 2) != 0)
        return;
    int64_t ts = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c != NULL; c = CMSG_NXTHDR((struct msghdr *)msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS &&
            c->cmsg_len >= CMSG_LEN(sizeof(struct timespec))) {
            struct timespec t;
            memcpy(&t, CMSG_DATA(c), sizeof(t));
            ts = (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
            break;
        }
    }
    const struct sockaddr_storage *from = msg->msg_name;
    int family = 0;
    const unsigned char *src = NULL;
    if (from->ss_family == AF_INET && msg->msg_namelen >= sizeof(struct sockaddr_in)) {
        family = 4;
        src = (const unsigned char *)&((const struct sockaddr_in *)from)->sin_addr;
    } else if (from->ss_family == AF_INET6 && msg->msg_namelen >= sizeof(struct sockaddr_in6)) {
        family = 6;
        src = (const unsigned char *)&((const struct sockaddr_in6 *)from)->sin6_addr;
    }
    if (src == NULL)
        return;
    uint64_t counter = get_be64(d + off + 20);
    int i = lane->ring[counter % RING];
    struct gue_slot *s = gue_slot_of(lane, i);
    if (s != NULL && s->in_flight && s->counter == counter) {
        if (s->v6 == (family == 6) && memcmp(s->addr, src, family == 6 ? 16 : 4) == 0) {
            s->in_flight = 0;
            slots[*matched] = i;
            latency[*matched] = ts != 0 && ts >= s->sent_ns ? (double)(ts - s->sent_ns) * 1e-9 : -1.0;
            (*matched)++;
        }
        return; /* from another address: not the answer (Python ignores it too) */
    }
    /* a general run's reply, a duplicate or a late one: Python's matching decides */
    if (reserve(&lane->spill, &lane->spill_cap, lane->spill_len + len, 16384) < 0)
        return;
    struct hc_gue_other *o = &others[(*n_others)++];
    memcpy(lane->spill + lane->spill_len, d, len);
    o->off = (uint32_t)lane->spill_len;
    o->len = (uint32_t)len;
    o->ts_ns = ts;
    o->family = family;
    memset(o->addr, 0, sizeof(o->addr));
    memcpy(o->addr, src, family == 6 ? 16 : 4);
    lane->spill_len += len;
}

/* Drains the raw socket with recvmmsg, BATCH datagrams a call; never more than slots[] and
 * others[] have room for (each datagram fills at most one of them), so none is lost. */
int hc_gue_read(struct hc_gue_lane *lane, int fd, int v4, int *slots, double *latency, int max,
                struct hc_gue_other *others, int max_others, int *n_others)
{
    int matched = 0;
    *n_others = 0;
    lane->spill_len = 0;
    for (;;) {
        int room = max - matched < max_others - *n_others ? max - matched : max_others - *n_others;
        if (room <= 0)
            break;
        unsigned want = room < (int)BATCH ? (unsigned)room : BATCH;
        union {
            char buf[CMSG_SPACE(sizeof(struct timespec))];
            struct cmsghdr align;
        } control[BATCH];
        struct sockaddr_storage from[BATCH];
        struct iovec iov[BATCH];
        struct mmsghdr mm[BATCH];
        for (unsigned k = 0; k < want; k++) {
            iov[k] = (struct iovec){.iov_base = lane->rx[k], .iov_len = RX_MAX};
            mm[k].msg_hdr = (struct msghdr){.msg_name = &from[k], .msg_namelen = sizeof(from[k]),
                                            .msg_iov = &iov[k], .msg_iovlen = 1,
                                            .msg_control = control[k].buf,
                                            .msg_controllen = sizeof(control[k].buf)};
            mm[k].msg_len = 0;
        }
        int r = recvmmsg(fd, mm, want, MSG_DONTWAIT, NULL);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            break; /* EAGAIN: drained (or an error Python's loop would stop at too) */
        }
        for (int k = 0; k < r; k++)
            take_reply(lane, lane->rx[k], mm[k].msg_len, &mm[k].msg_hdr, v4, slots, latency, &matched,
                       others, n_others);
        if ((unsigned)r < want)
            break; /* the queue is empty (a later datagram waits for the next tick) */
    }
    return matched;
}

const char *hc_gue_spill(struct hc_gue_lane *lane) { return lane->spill; }
