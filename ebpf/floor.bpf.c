/* Reference tc programs for the benchmark (loadtest's ebpf-bench), never attached by the
 * node shipper: what any program costs on the tc hook, measured live beside Kappie's.
 *
 * kappie_floor_empty_*: nothing but the verdict; its run time is the floor of the hook with
 * kernel.bpf_stats_enabled (the statistics' clock reads and the call).
 * kappie_floor_count_*: the first half of kappie_tc_*: the per-CPU array lookup by
 * interface and direction and the packet and byte adds, no packet parsing.
 * One program per direction so that bpf_stats tells the directions apart. */
#include "kappie.h"
#include <linux/pkt_cls.h>

/* Its own map (not pinned), shaped as kappie_forward_slots. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KAPPIE_FORWARD_SLOTS * 2);
	__type(key, __u32);
	__type(value, struct kappie_forward_value);
} kappie_floor_slots SEC(".maps");

static __always_inline void count(struct __sk_buff *skb, __u32 dir)
{
	__u32 ifindex = skb->ifindex;
	if (ifindex >= KAPPIE_FORWARD_SLOTS)
		return;
	__u32 slot = ifindex * 2 + dir;
	struct kappie_forward_value *v = bpf_map_lookup_elem(&kappie_floor_slots, &slot);
	if (!v)
		return;
	v->packets += 1;
	v->bytes += skb->len;
}

SEC("classifier")
int kappie_floor_empty_ingress(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC;
}

SEC("classifier")
int kappie_floor_empty_egress(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC;
}

SEC("classifier")
int kappie_floor_count_ingress(struct __sk_buff *skb)
{
	count(skb, KAPPIE_DIR_INGRESS);
	return TC_ACT_UNSPEC;
}

SEC("classifier")
int kappie_floor_count_egress(struct __sk_buff *skb)
{
	count(skb, KAPPIE_DIR_EGRESS);
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "GPL";
