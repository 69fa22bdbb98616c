/* tc (tcx or clsact) programs on the host interfaces: packets and bytes per interface and
 * direction, and how many TCP segments carried each header flag (IPv4, and IPv6 without
 * extension headers). One map lookup per packet, into a per-CPU array indexed by interface
 * and direction (the kernel inlines it: no hash, no helper call) for interface indexes below
 * KAPPIE_FORWARD_SLOTS, into a per-CPU hash above; direct packet access; the node shipper
 * reads both maps each interval and nothing is sent to user space per packet. The programs
 * never change a packet's fate. */
#include "kappie.h"
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>

/* Interfaces whose index is at or above KAPPIE_FORWARD_SLOTS (the array's slots are taken by
 * index, so a node's host interfaces, created at boot, land in the array). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct kappie_forward_key);
	__type(value, struct kappie_forward_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kappie_forward SEC(".maps");

/* Slot ifindex * 2 + direction, for ifindex < KAPPIE_FORWARD_SLOTS. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KAPPIE_FORWARD_SLOTS * 2);
	__type(key, __u32);
	__type(value, struct kappie_forward_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kappie_forward_slots SEC(".maps");

/* The TCP flags byte of the packet, or -1 when it is not TCP or its headers are not in the
 * linear part of the skb. */
static __always_inline int tcp_flags(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return -1;
	__u8 *tcp;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_TCP)
			return -1;
		__u32 ihl = ip->ihl * 4;
		if (ihl < sizeof(*ip))
			return -1;
		tcp = (__u8 *)ip + ihl;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end || ip6->nexthdr != IPPROTO_TCP)
			return -1;
		tcp = (__u8 *)(ip6 + 1);
	} else {
		return -1;
	}
	if ((void *)(tcp + 14) > data_end)
		return -1;
	return tcp[13];
}

/* The value of an interface index at or above KAPPIE_FORWARD_SLOTS, made on its first packet. */
static __always_inline struct kappie_forward_value *hashed(__u32 ifindex, __u32 dir)
{
	struct kappie_forward_key key = { .ifindex = ifindex, .direction = dir };
	struct kappie_forward_value *v = bpf_map_lookup_elem(&kappie_forward, &key);
	if (v)
		return v;
	struct kappie_forward_value zero = {};
	bpf_map_update_elem(&kappie_forward, &key, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&kappie_forward, &key);
}

static __always_inline void count(struct __sk_buff *skb, __u32 dir)
{
	__u32 ifindex = skb->ifindex;
	struct kappie_forward_value *v;
	if (ifindex < KAPPIE_FORWARD_SLOTS) {
		__u32 slot = ifindex * 2 + dir;
		v = bpf_map_lookup_elem(&kappie_forward_slots, &slot);
	} else {
		v = hashed(ifindex, dir);
	}
	if (!v)
		return;
	v->packets += 1;
	v->bytes += skb->len;
	int flags = tcp_flags(skb);
	if (flags < 0)
		return;
	/* ACK alone or with PSH: nearly every segment of an established connection, and a
	 * branch a predictor learns for any real mix (a SYN flood is the other way, as
	 * predictable). Two adds instead of eight (measured with BPF_PROG_TEST_RUN on a TCP ACK:
	 * 44-50 ns a run instead of 50-54). The rest without branches: the other flags come in
	 * no pattern. */
	if ((flags & ~(1 << KAPPIE_FLAG_PSH)) == (1 << KAPPIE_FLAG_ACK)) {
		v->flags[KAPPIE_FLAG_ACK] += 1;
		v->flags[KAPPIE_FLAG_PSH] += (flags >> KAPPIE_FLAG_PSH) & 1;
		return;
	}
#pragma unroll
	for (int f = 0; f < 8; f++)
		v->flags[f] += (flags >> f) & 1;
}

SEC("classifier")
int kappie_tc_ingress(struct __sk_buff *skb)
{
	count(skb, KAPPIE_DIR_INGRESS);
	return TC_ACT_UNSPEC;
}

SEC("classifier")
int kappie_tc_egress(struct __sk_buff *skb)
{
	count(skb, KAPPIE_DIR_EGRESS);
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "GPL";
