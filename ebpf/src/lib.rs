//! Kappie's eBPF dataplane programs and their build.
//!
//! This crate owns the C programs in `ebpf/*.bpf.c` (`forward.bpf.c`: tc/tcx packet, byte and
//! TCP-flag counters per interface and direction; `drops.bpf.c`: `tp_btf/kfree_skb` drop
//! counters by kernel drop reason; `floor.bpf.c`: reference tc programs for the benchmark),
//! their shared header `kappie.h`, and the compiled objects committed beside them so that
//! building Kappie needs only the Rust toolchain (`ebpf/build.sh` rebuilds them with
//! clang-19; `ebpf/build.sh --check`, run by CI, fails if they are stale). It embeds the objects and mirrors the map keys and values as
//! `#[repr(C)]` types. Loading and attaching is the node shipper's (`sources/ebpf/`).

#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

static FORWARD_OBJ: &Aligned<[u8]> = &Aligned(*include_bytes!("../forward.bpf.o"));
static DROPS_OBJ: &Aligned<[u8]> = &Aligned(*include_bytes!("../drops.bpf.o"));
static FLOOR_OBJ: &Aligned<[u8]> = &Aligned(*include_bytes!("../floor.bpf.o"));

/// The tc programs `kappie_tc_ingress` / `kappie_tc_egress` and maps `kappie_forward_slots`
/// and `kappie_forward` (ELF,
/// 8-byte aligned as the loader wants).
pub fn forward_object() -> &'static [u8] {
    &FORWARD_OBJ.0
}

/// The `tp_btf/kfree_skb` program `kappie_kfree_skb` and map `kappie_drops`.
pub fn drops_object() -> &'static [u8] {
    &DROPS_OBJ.0
}

/// The benchmark's reference tc programs `kappie_floor_{empty,count}_{ingress,egress}`
/// (the hook's floor, and the map lookup and adds alone); the shipper never attaches them.
pub fn floor_object() -> &'static [u8] {
    &FLOOR_OBJ.0
}

pub const DIR_INGRESS: u32 = 0;
pub const DIR_EGRESS: u32 = 1;
pub const DIR_UNKNOWN: u32 = 2;

/// `KAPPIE_FORWARD_SLOTS`: interfaces with a lower index are counted in the per-CPU array
/// `kappie_forward_slots` (slot `ifindex * 2 + direction`), the others in the per-CPU hash
/// `kappie_forward`.
pub const FORWARD_SLOTS: u32 = 256;

/// TCP flags by bit number in byte 13 of the TCP header, as SPEC §1 names them.
pub const TCP_FLAGS: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];

/// `struct kappie_forward_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ForwardKey {
    pub ifindex: u32,
    pub direction: u32,
}

/// `struct kappie_counter`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// `struct kappie_forward_value`: packets, bytes and per TCP flag bit the segments that
/// carried it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ForwardValue {
    pub packets: u64,
    pub bytes: u64,
    pub flags: [u64; 8],
}

/// `struct kappie_drop_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DropKey {
    pub reason: u32,
    pub direction: u32,
    pub netns: u32,
    pub ifindex: u32,
}

const _: () = assert!(std::mem::size_of::<ForwardKey>() == 8);
const _: () = assert!(std::mem::size_of::<Counter>() == 16);
const _: () = assert!(std::mem::size_of::<ForwardValue>() == 80);
const _: () = assert!(std::mem::size_of::<DropKey>() == 16);

// SAFETY: plain-old-data structs with no padding (sizes asserted above), valid for any bit
// pattern, as aya requires of map keys and values.
unsafe impl aya::Pod for ForwardKey {}
unsafe impl aya::Pod for Counter {}
unsafe impl aya::Pod for ForwardValue {}
unsafe impl aya::Pod for DropKey {}

#[cfg(test)]
mod tests {
    #[test]
    fn objects_are_elf_and_aligned() {
        for o in [
            super::forward_object(),
            super::drops_object(),
            super::floor_object(),
        ] {
            assert_eq!(&o[..4], b"\x7fELF");
            assert_eq!(o.as_ptr() as usize % 8, 0);
        }
    }
}
