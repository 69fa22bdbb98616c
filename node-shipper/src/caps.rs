//! Linux capabilities, to explain the kernel's refusals: when a step fails with EPERM or
//! EACCES, the error names the capabilities the step needs and those of them this process
//! lacks. Nothing is checked in advance: the kernel's answer decides, the capability set
//! only explains it (a kernel may allow more, e.g. through a changed sysctl, or less).

use std::fmt;

/// The capabilities the shipper's eBPF steps need (linux/capability.h numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    NetAdmin = 12,
    SysAdmin = 21,
    Perfmon = 38,
    Bpf = 39,
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cap::NetAdmin => "CAP_NET_ADMIN",
            Cap::SysAdmin => "CAP_SYS_ADMIN",
            Cap::Perfmon => "CAP_PERFMON",
            Cap::Bpf => "CAP_BPF",
        })
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_VERSION_3: u32 = 0x2008_0522;

/// This thread's effective capability set as a bit mask, from `capget(2)`.
pub fn effective() -> std::io::Result<u64> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(u64::from(data[0].effective) | (u64::from(data[1].effective) << 32))
}

/// Of `needs`, those missing from the effective set `eff`.
pub fn lacking_in(eff: u64, needs: &[Cap]) -> Vec<Cap> {
    needs
        .iter()
        .copied()
        .filter(|c| eff & (1u64 << *c as u32) == 0)
        .collect()
}

/// The errno of the first `std::io::Error` in `err`'s chain when it is EPERM or EACCES:
/// the kernel refused for want of privilege (EACCES is also the verifier's answer to a
/// program it rejects, which for an unprivileged loader includes operations it allows
/// only with CAP_PERFMON).
pub fn refusal(err: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cur) = e {
        if let Some(io) = cur.downcast_ref::<std::io::Error>() {
            return match io.raw_os_error() {
                Some(libc::EPERM) => Some("EPERM"),
                Some(libc::EACCES) => Some("EACCES"),
                _ => None,
            };
        }
        e = cur.source();
    }
    None
}

/// "it needs CAP_A and CAP_B; this process lacks CAP_B" for a step that needs `needs`.
pub fn explain(needs: &[Cap]) -> String {
    let list = |caps: &[Cap]| {
        let names: Vec<String> = caps.iter().map(Cap::to_string).collect();
        match names.as_slice() {
            [] => String::new(),
            [one] => one.clone(),
            [init @ .., last] => format!("{} and {last}", init.join(", ")),
        }
    };
    let have = match effective() {
        Ok(eff) => {
            let lacking = lacking_in(eff, needs);
            if lacking.is_empty() {
                "; this process has them all, so something else refused it (a security \
                 module such as SELinux or AppArmor, or a sysctl such as \
                 kernel.unprivileged_bpf_disabled)"
                    .to_owned()
            } else {
                format!("; this process lacks {}", list(&lacking))
            }
        }
        Err(e) => format!("; cannot read this process's capabilities ({e})"),
    };
    format!("it needs {}{have}", list(needs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lacking_names_only_the_missing_bits() {
        let eff = (1u64 << 39) | (1u64 << 12);
        assert_eq!(
            lacking_in(eff, &[Cap::Bpf, Cap::NetAdmin, Cap::Perfmon]),
            vec![Cap::Perfmon]
        );
        assert!(lacking_in(u64::MAX, &[Cap::Bpf, Cap::SysAdmin]).is_empty());
    }

    #[test]
    fn the_effective_set_is_readable() {
        effective().expect("capget");
    }

    #[test]
    fn eperm_and_eacces_anywhere_in_the_chain_are_refusals() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let perm = Outer(std::io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(refusal(&perm), Some("EPERM"));
        let acces = std::io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(refusal(&acces), Some("EACCES"));
        let other = Outer(std::io::Error::from_raw_os_error(libc::EINVAL));
        assert_eq!(refusal(&other), None);
    }
}
