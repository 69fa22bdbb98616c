//! The eBPF source's shared types where there is no eBPF (every system but Linux): the
//! shipper's telemetry reads its eBPF families through [`EbpfPrograms`], which here never
//! holds a program, so those families are empty. Mirrors the fields of `attach.rs` that the
//! telemetry reads; a drift fails the Windows build (`scripts/test.sh` checks it).

use std::time::Duration;

/// One program attached to one hook (never made here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub program: &'static str,
    pub interface: Option<String>,
    pub hook: &'static str,
    pub reused: bool,
}

/// The kernel's statistics of one program (never made here).
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramRuns {
    pub program: &'static str,
    pub run_count: u64,
    pub run_time: Duration,
}

/// No programs.
#[derive(Debug, Clone, Default)]
pub struct EbpfPrograms(());

impl EbpfPrograms {
    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        std::iter::empty()
    }

    pub fn runs(&self) -> Vec<ProgramRuns> {
        Vec::new()
    }
}
