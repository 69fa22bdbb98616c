/* tc (tcx or clsact) programs on the host interfaces: packets and bytes per interface and
 * direction, and TCP header flags per interface and direction (IPv4 and IPv6 without
 * extension headers). Per-CPU maps, read by the node shipper each interval; nothing is sent
 * to user space per packet. The programs never change a packet's fate. */
#include "kappie.h"
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct kappie_forward_key);
	__type(value, struct kappie_counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kappie_forward SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct kappie_flag_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kappie_tcp_flags SEC(".maps");

static __always_inline void add_forward(__u32 ifindex, __u32 dir, __u64 len)
{
	struct kappie_forward_key key = { .ifindex = ifindex, .direction = dir };
	struct kappie_counter *c = bpf_map_lookup_elem(&kappie_forward, &key);
	if (c) {
		c->packets += 1;
		c->bytes += len;
	} else {
		struct kappie_counter init = { .packets = 1, .bytes = len };
		bpf_map_update_elem(&kappie_forward, &key, &init, BPF_NOEXIST);
	}
}

static __always_inline void add_flag(__u32 ifindex, __u32 dir, __u32 flag)
{
	struct kappie_flag_key key = { .ifindex = ifindex, .direction = dir, .flag = flag };
	__u64 *c = bpf_map_lookup_elem(&kappie_tcp_flags, &key);
	if (c) {
		*c += 1;
	} else {
		__u64 one = 1;
		bpf_map_update_elem(&kappie_tcp_flags, &key, &one, BPF_NOEXIST);
	}
}

static __always_inline void count(struct __sk_buff *skb, __u32 dir)
{
	add_forward(skb->ifindex, dir, skb->len);

	__u32 l4 = 0;
	__u8 proto = 0;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 vihl;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &vihl, 1) < 0)
			return;
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 9, &proto, 1) < 0)
			return;
		l4 = ETH_HLEN + (vihl & 0x0f) * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 6, &proto, 1) < 0)
			return;
		l4 = ETH_HLEN + sizeof(struct ipv6hdr);
	} else {
		return;
	}
	if (proto != IPPROTO_TCP)
		return;
	__u8 flags;
	if (bpf_skb_load_bytes(skb, l4 + 13, &flags, 1) < 0)
		return;
#pragma unroll
	for (__u32 f = 0; f < 8; f++) {
		if (flags & (1 << f))
			add_flag(skb->ifindex, dir, f);
	}
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
