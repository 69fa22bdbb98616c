//! Reads the kernel's own drop reason names from its BTF (`enum skb_drop_reason` in
//! /sys/kernel/btf/vmlinux), so a newer kernel's new reasons appear without a Kappie release.
//!
//! The BTF layout (kernel `Documentation/bpf/btf.rst`): a header (magic 0xEB9F, lengths and
//! offsets of the type and string sections after the header), then `struct btf_type`
//! records of 12 bytes (name offset, info = vlen | kind << 24, size/type), each followed by
//! kind-specific data. aya does not expose enum members, hence this small reader.

use std::collections::HashMap;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

fn u32_at(b: &[u8], off: usize) -> Result<u32, String> {
    b.get(off..off + 4)
        .map(|s| u32::from_ne_bytes(s.try_into().expect("4 bytes")))
        .ok_or_else(|| format!("BTF truncated at byte {off}"))
}

fn str_at(strings: &[u8], off: u32) -> Result<&str, String> {
    let s = strings
        .get(off as usize..)
        .ok_or("BTF string offset out of range")?;
    let end = s
        .iter()
        .position(|&c| c == 0)
        .ok_or("BTF string not terminated")?;
    std::str::from_utf8(&s[..end]).map_err(|_| "BTF string not UTF-8".to_string())
}

/// Members (value -> name) of the enum called `name` in a BTF blob.
pub fn enum_members(btf: &[u8], name: &str) -> Result<HashMap<u64, String>, String> {
    let magic = u16::from_ne_bytes(
        btf.get(..2)
            .ok_or("BTF too short")?
            .try_into()
            .expect("2 bytes"),
    );
    if magic != 0xeb9f {
        return Err(format!("not BTF (magic {magic:#x})"));
    }
    let hdr_len = u32_at(btf, 4)? as usize;
    let (type_off, type_len) = (u32_at(btf, 8)? as usize, u32_at(btf, 12)? as usize);
    let (str_off, str_len) = (u32_at(btf, 16)? as usize, u32_at(btf, 20)? as usize);
    let types = btf
        .get(hdr_len + type_off..hdr_len + type_off + type_len)
        .ok_or("BTF type section out of range")?;
    let strings = btf
        .get(hdr_len + str_off..hdr_len + str_off + str_len)
        .ok_or("BTF string section out of range")?;
    let mut pos = 0;
    while pos + 12 <= types.len() {
        let name_off = u32_at(types, pos)?;
        let info = u32_at(types, pos + 4)?;
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let data = pos + 12;
        let extra = match kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION | KIND_DATASEC => vlen * 12,
            KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
            KIND_ENUM64 => vlen * 12,
            _ => 0,
        };
        if (kind == KIND_ENUM || kind == KIND_ENUM64) && str_at(strings, name_off)? == name {
            let mut out = HashMap::new();
            let step = if kind == KIND_ENUM { 8 } else { 12 };
            for i in 0..vlen {
                let m = data + i * step;
                let member = str_at(strings, u32_at(types, m)?)?.to_owned();
                let lo = u32_at(types, m + 4)? as u64;
                let value = if kind == KIND_ENUM {
                    lo
                } else {
                    lo | (u32_at(types, m + 8)? as u64) << 32
                };
                out.insert(value, member);
            }
            return Ok(out);
        }
        pos = data + extra;
    }
    Err(format!("no enum {name} in BTF"))
}

/// Drop reason names by value, without the `SKB_DROP_REASON_` prefix, from the running
/// kernel's BTF.
pub fn drop_reasons(vmlinux: &std::path::Path) -> Result<HashMap<u32, String>, String> {
    let btf =
        std::fs::read(vmlinux).map_err(|e| format!("cannot read {}: {e}", vmlinux.display()))?;
    drop_reasons_in(&btf)
}

/// [`drop_reasons`] from BTF already read (the eBPF loader reads vmlinux once for this and
/// for aya).
pub fn drop_reasons_in(btf: &[u8]) -> Result<HashMap<u32, String>, String> {
    Ok(enum_members(btf, "skb_drop_reason")?
        .into_iter()
        .map(|(v, n)| {
            (
                v as u32,
                n.strip_prefix("SKB_DROP_REASON_").unwrap_or(&n).to_owned(),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_drop_reasons_from_the_running_kernel() {
        use kappie_testkit::{require, Need};
        if !require(&[Need::KernelBtf]) {
            return;
        }
        let path = std::path::Path::new("/sys/kernel/btf/vmlinux");
        let r = super::drop_reasons(path).unwrap();
        let names: Vec<&str> = r.values().map(String::as_str).collect();
        for want in ["NO_SOCKET", "NETFILTER_DROP", "TCP_CSUM", "NOT_SPECIFIED"] {
            assert!(
                names.contains(&want),
                "{want} missing from {} reasons",
                r.len()
            );
        }
        assert_eq!(r.get(&0).map(String::as_str), Some("SKB_NOT_DROPPED_YET"));
        assert_eq!(r.get(&1).map(String::as_str), Some("SKB_CONSUMED"));
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(super::enum_members(b"not btf at all, not at all", "x").is_err());
        assert!(super::enum_members(&[], "x").is_err());
    }
}
