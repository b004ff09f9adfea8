/*
 * redirect.h - map layouts and counters shared by fwd-redirect's tc program
 * (redirect.bpf.c) and its loader (native/redirect.c). Plain fixed-width
 * types only: compiled both by clang -target bpf and by the host compiler.
 *
 * Maps (all owned by the program's object, pinned by the loader):
 *   redirect_allow     LPM trie of the L4 nodes' source prefixes; IPv4 is
 *                      stored as ::ffff:a.b.c.d/(96 + len) so both families
 *                      share one trie
 *   redirect_config    one struct redirect_config: this node's outer source
 *                      addresses for forwarded packets
 *   redirect_counters  per-CPU u64 per counter below (sum over CPUs to read)
 */
#ifndef FWD_REDIRECT_H
#define FWD_REDIRECT_H

#include <linux/types.h>

#define REDIRECT_GUE_PORT 19523
#define REDIRECT_PROG_NAME "fwd_redirect"
#define REDIRECT_MAX_ALLOW 1024
/* tc filter identity on the clsact ingress hook: handle and priority. */
#define REDIRECT_TC_HANDLE 0x4657u
#define REDIRECT_TC_PRIORITY 0x4657u

/*
 * Every path a GUE packet (UDP destination port 19523, addressed to this host)
 * can take, in the order `fwd redirect stats` prints them. X(ENUM, "name").
 * Decap and forward counters add up to the accepted packets; an ICMP error
 * quoting a TCP flow is counted in the path it took and in icmp_tcp_quote.
 */
#define REDIRECT_COUNTERS(X)                                                              \
	X(RC_RX, "rx")                       /* GUE packets seen (any source) */              \
	X(RC_DECAP_NON_TCP, "decap_non_tcp") /* inner not TCP (UDP, ICMP, fragment...) */     \
	X(RC_DECAP_SYN, "decap_syn")         /* inner TCP SYN (without ACK) */                \
	X(RC_DECAP_SOCKET, "decap_socket")   /* a local socket: established/request/tw */     \
	X(RC_DECAP_SYNCOOKIE, "decap_syncookie") /* valid SYN-cookie ACK to a listener */     \
	X(RC_DECAP_LAST_HOP, "decap_last_hop")   /* no local socket, no hop left */           \
	X(RC_DECAP_SELF, "decap_self")       /* the next hop is this node itself */           \
	X(RC_FORWARDED, "forwarded")         /* sent to the next hop */                       \
	X(RC_ICMP_TCP_QUOTE, "icmp_tcp_quote") /* ICMP errors that followed a TCP flow */     \
	X(RC_DROP_NOT_ALLOWED, "drop_not_allowed") /* outer source outside --allow */         \
	X(RC_DROP_FRAGMENT, "drop_fragment") /* outer IP fragment */                          \
	X(RC_DROP_TRUNCATED, "drop_truncated") /* a header or length runs past the data */    \
	X(RC_DROP_BAD_VERSION, "drop_bad_version") /* GUE version != 0 or C bit set */        \
	X(RC_DROP_BAD_FLAGS, "drop_bad_flags")     /* GUE flags != 0 */                       \
	X(RC_DROP_BAD_HLEN, "drop_bad_hlen") /* hlen != 1 + hop words */                      \
	X(RC_DROP_BAD_HOP_TYPE, "drop_bad_hop_type") /* private data type not 0 or 1 */       \
	X(RC_DROP_BAD_NEXT_HOP, "drop_bad_next_hop") /* next hop index > hop count */         \
	X(RC_DROP_BAD_INNER_PROTO, "drop_bad_inner_proto") /* GUE proto not 4 or 41 */        \
	X(RC_DROP_BAD_INNER, "drop_bad_inner") /* inner IP header invalid / wrong version */  \
	X(RC_DROP_NO_SOURCE, "drop_no_source") /* no outer source of the hop's family */      \
	X(RC_DROP_NO_ROUTE, "drop_no_route") /* no route to the next hop */                   \
	X(RC_DROP_TOO_BIG, "drop_too_big")   /* forwarded packet above the egress MTU */      \
	X(RC_DROP_ERROR, "drop_error")       /* a kernel helper failed */

#define REDIRECT_ENUM_(e, name) e,
enum redirect_counter { REDIRECT_COUNTERS(REDIRECT_ENUM_) RC_NCOUNTERS };
#undef REDIRECT_ENUM_

/* redirect_config.src_mode[] values, per family (index 0 = IPv4, 1 = IPv6). */
enum redirect_src_mode {
	SRC_NONE = 0,     /* same family: the received outer destination; else drop_no_source */
	SRC_EXPLICIT = 1, /* --source: always this address */
	SRC_FALLBACK = 2, /* the interface's address: used only when the outer family changes */
};

struct redirect_config {
	__u8 src4[4];     /* network order */
	__u8 src6[16];
	__u8 src_mode[2]; /* enum redirect_src_mode for IPv4, IPv6 */
	__u8 created_qdisc; /* the loader created the clsact qdisc (detach removes it) */
	__u8 pad;
};

struct redirect_lpm_key {
	__u32 prefixlen;  /* 0..128; IPv4 prefixes are 96 + len */
	__u8 addr[16];    /* IPv6, or ::ffff:a.b.c.d */
};

#endif
