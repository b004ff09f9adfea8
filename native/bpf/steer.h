/*
 * steer.h - map layouts shared by the XDP steering program (steer.bpf.c) and
 * its loader (native/steer.c). Plain fixed-width types only: this file is
 * compiled both by clang -target bpf and by the host compiler.
 *
 * The binds live in two banks (steer_banks[0..1]); steer_cfg[0] names the
 * bank the program reads. The loader fills the idle bank with one map
 * update and then flips the index with a second one, so a packet always sees
 * one complete rule set (count, echo switch and binds together), never a
 * half-written one.
 */
#ifndef FWD_STEER_H
#define FWD_STEER_H

#include <linux/types.h>

#define STEER_MAX_BINDS 256   /* binds one bank holds (the loop bound) */
#define STEER_MAX_EXT 8       /* IPv6 extension headers walked (= the core's) */
#define STEER_XSKS_MAX 64     /* XSKMAP entries: rx queues served */
#define STEER_PROG_NAME "fwd_steer"

enum steer_stat {
	STEER_REDIRECTED = 0,   /* handed to the AF_XDP socket of the queue */
	STEER_PASSED = 1,       /* left to the kernel: not VIP traffic */
	STEER_REDIRECT_FAILED = 2, /* VIP traffic but no socket on the queue: passed */
	STEER_NSTATS = 3,
};

struct steer_bind {
	__u32 addr[4];      /* prefix, network order, host bits zero (IPv4: addr[0]) */
	__u32 mask[4];      /* netmask, network order (IPv4: mask[1..3] = 0) */
	__u8 family;        /* 4 or 6 */
	__u8 proto;         /* 6 or 17 */
	__u16 port_lo;      /* destination port range, host order, inclusive */
	__u16 port_hi;
	__u16 pad;
};

struct steer_bank {
	__u32 nbinds;             /* <= STEER_MAX_BINDS */
	__u32 forward_icmp_echo;  /* 1: echo requests to a VIP prefix are redirected */
	struct steer_bind binds[STEER_MAX_BINDS];
};

#endif
