//! Kappie's eBPF dataplane programs and their build.
//!
//! This crate owns the C programs in `ebpf/*.bpf.c` (tc/tcx forward and TCP-flag counters,
//! the `kfree_skb` drop-reason counter), the shared header they include, the compiled
//! objects committed beside them so that a user with only the Rust toolchain can build, and
//! the `#[repr(C)]` Rust mirrors of the map keys and values the node shipper reads. Loading
//! and attaching is done by the node shipper with aya. The programs themselves arrive with
//! the eBPF dataplane issue; until then this crate holds no programs and the shipper runs
//! its /proc, sysfs and sock_diag sources only.
