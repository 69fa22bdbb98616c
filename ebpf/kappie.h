/* Shared definitions of Kappie's eBPF programs. Every struct here has a #[repr(C)] mirror
 * in ebpf/src/lib.rs with a size assertion; change both together. */
#ifndef KAPPIE_H
#define KAPPIE_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define KAPPIE_DIR_INGRESS 0
#define KAPPIE_DIR_EGRESS 1
#define KAPPIE_DIR_UNKNOWN 2

/* TCP flag bit numbers in byte 13 of the TCP header. */
#define KAPPIE_FLAG_FIN 0
#define KAPPIE_FLAG_SYN 1
#define KAPPIE_FLAG_RST 2
#define KAPPIE_FLAG_PSH 3
#define KAPPIE_FLAG_ACK 4
#define KAPPIE_FLAG_URG 5
#define KAPPIE_FLAG_ECE 6
#define KAPPIE_FLAG_CWR 7

/* Interface indexes below this are counted in the per-CPU array kappie_forward_slots (slot
 * ifindex * 2 + direction), those above in the per-CPU hash kappie_forward. */
#define KAPPIE_FORWARD_SLOTS 256

struct kappie_forward_key {
	__u32 ifindex;
	__u32 direction;
};

struct kappie_counter {
	__u64 packets;
	__u64 bytes;
};

/* Per interface and direction: packets, bytes and, per TCP flag bit, how many TCP
 * segments carried it. One map value so that a packet costs one lookup. */
struct kappie_forward_value {
	__u64 packets;
	__u64 bytes;
	__u64 flags[8];
};

struct kappie_drop_key {
	__u32 reason;
	__u32 direction;
	/* inode number of the network namespace of the device (0 without one), so that a
	 * test (or a per-namespace view) can tell its own drops apart. */
	__u32 netns;
	__u32 ifindex;
};

#endif
