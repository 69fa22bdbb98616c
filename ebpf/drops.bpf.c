/* tp_btf/kfree_skb (or, where BTF programs are not allowed, the skb:kfree_skb
 * tracepoint): packets and bytes freed as drops, by the kernel's drop reason
 * (enum skb_drop_reason, whose names the node shipper reads from the running kernel's BTF),
 * direction and network namespace. SKB_CONSUMED and SKB_NOT_DROPPED_YET are not drops.
 *
 * Direction: an skb that arrived on an interface has skb_iif set and is counted as
 * ingress; one without (locally generated) as egress. The kernel does not record more. */
#include "kappie.h"
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

/* Only the fields read, relocated by CO-RE against the running kernel. */
struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct net {
	struct ns_common ns;
} __attribute__((preserve_access_index));

typedef struct {
	struct net *net;
} __attribute__((preserve_access_index)) possible_net_t;

struct net_device {
	int ifindex;
	possible_net_t nd_net;
} __attribute__((preserve_access_index));

struct sk_buff {
	unsigned int len;
	int skb_iif;
	struct net_device *dev;
} __attribute__((preserve_access_index));

/* Values of enum skb_drop_reason that are not drops; stable since they were added. */
#define KAPPIE_SKB_NOT_DROPPED_YET 0
#define KAPPIE_SKB_CONSUMED 1

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct kappie_drop_key);
	__type(value, struct kappie_counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kappie_drops SEC(".maps");

/* The skb:kfree_skb tracepoint record; CO-RE finds the fields on any kernel with BTF (the
 * record gained rx_sk in 6.12). The enum is declared by name only: relocation matches
 * enum fields by type name. */
enum skb_drop_reason { KAPPIE_DROP_REASON_DECLARED_ONLY };

struct trace_event_raw_kfree_skb {
	void *skbaddr;
	enum skb_drop_reason reason;
} __attribute__((preserve_access_index));

/* Adds one drop of len bytes under key: one per-CPU hash lookup, an update on a key's first drop. */
static __always_inline int add(struct kappie_drop_key *key, __u64 len)
{
	struct kappie_counter *c = bpf_map_lookup_elem(&kappie_drops, key);
	if (c) {
		c->packets += 1;
		c->bytes += len;
	} else {
		struct kappie_counter init = { .packets = 1, .bytes = len };
		bpf_map_update_elem(&kappie_drops, key, &init, BPF_NOEXIST);
	}
	return 0;
}

static __always_inline int not_a_drop(int reason)
{
	return reason == KAPPIE_SKB_NOT_DROPPED_YET || reason == KAPPIE_SKB_CONSUMED;
}

/* tp_btf: the skb is a BTF pointer, read with plain loads (the verifier makes them
 * fault-safe) instead of a bpf_probe_read_kernel call per field. */
SEC("tp_btf/kfree_skb")
int BPF_PROG(kappie_kfree_skb, struct sk_buff *skb, void *location, int reason)
{
	if (not_a_drop(reason))
		return 0;
	struct kappie_drop_key key = {};
	key.reason = reason;
	key.direction = skb->skb_iif ? KAPPIE_DIR_INGRESS : KAPPIE_DIR_EGRESS;
	struct net_device *dev = skb->dev;
	if (dev) {
		key.ifindex = dev->ifindex;
		key.netns = dev->nd_net.net->ns.inum;
	}
	return add(&key, skb->len);
}

/* The tracepoint's skbaddr is an untyped pointer: fields are read with BPF_CORE_READ. */
SEC("tracepoint/skb/kfree_skb")
int kappie_kfree_skb_tp(struct trace_event_raw_kfree_skb *ctx)
{
	int reason = (int)ctx->reason;
	if (not_a_drop(reason))
		return 0;
	struct sk_buff *skb = (struct sk_buff *)ctx->skbaddr;
	struct kappie_drop_key key = {};
	key.reason = reason;
	key.direction = BPF_CORE_READ(skb, skb_iif) ? KAPPIE_DIR_INGRESS : KAPPIE_DIR_EGRESS;
	struct net_device *dev = BPF_CORE_READ(skb, dev);
	if (dev) {
		key.ifindex = BPF_CORE_READ(dev, ifindex);
		key.netns = BPF_CORE_READ(dev, nd_net.net, ns.inum);
	}
	return add(&key, BPF_CORE_READ(skb, len));
}

char LICENSE[] SEC("license") = "GPL";
