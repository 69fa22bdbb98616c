//! Driver statistics as `ethtool -S` shows them, read with the ethtool ioctl (SIOCETHTOOL).
//!
//! Why the ioctl: the driver's private statistics exist only as the `ETH_SS_STATS` string set
//! and `ETHTOOL_GSTATS`; ethtool's netlink family carries only the standard groups
//! (`ethtool -S --all-groups`: eth-phy, eth-mac, eth-ctrl, rmon), so `ethtool -S` itself
//! uses the ioctl. The `ethtool` crate of rust-netlink speaks that netlink family and has no
//! string set or statistics request at all. The ioctl needs no capability (`ethtool -S`
//! works for any user).
//!
//! Per interface and collection: `SIOCGIFINDEX` (is the name still the interface sysfs
//! listed?) and `ETHTOOL_GSSET_INFO` (the count of statistics), then `ETHTOOL_GSTATS`. The
//! names (`ETHTOOL_GSTRINGS`) are cached per interface and read again when the count or the
//! interface index changes.
//!
//! The socket is opened at the first read, in the network namespace of the thread doing it
//! (the shipper's own, as `ethtool` does): interfaces are looked up by name there.
//!
//! Byte layouts (include/uapi/linux/ethtool.h; native endian), each passed through
//! `ifreq.ifr_data`:
//!
//! ```text
//! struct ethtool_sset_info (asked with one bit, ETH_SS_STATS, so one count comes back)
//!  0       4          8                  16          20      24
//!  +-------+----------+------------------+-----------+-------+
//!  | cmd   | reserved | sset_mask u64    | data[0]   | (pad) |
//!  +-------+----------+------------------+-----------+-------+
//!  the kernel clears a mask bit the driver does not support (loopback: no ETH_SS_STATS)
//!
//! struct ethtool_gstrings
//!  0       4            8       12
//!  +-------+------------+-------+------------------------------------------+
//!  | cmd   | string_set | len   | len × ETH_GSTRING_LEN (32) bytes, each   |
//!  |       |            |       | a name NUL-padded (no NUL when 32 long)  |
//!  +-------+------------+-------+------------------------------------------+
//!
//! struct ethtool_stats
//!  0       4         8
//!  +-------+---------+-------------------------+
//!  | cmd   | n_stats | n_stats × u64 values    |
//!  +-------+---------+-------------------------+
//! ```
//!
//! The kernel fills `len` and `n_stats` with the driver's count *at that moment* and writes
//! that many entries, whatever the caller asked for; a driver whose count grew since we read
//! it (queues added with `ethtool -L`) would write past a buffer sized for the old count.
//! So these two calls write into a [`KernelBuf`], which ends at an inaccessible guard page:
//! such a write fails with EFAULT, and the count is read again.

use crate::source::SourceError;
use std::collections::{HashMap, HashSet};
use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

/// Length of one name in a string set, NUL padding included.
pub const ETH_GSTRING_LEN: usize = 32;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETH_SS_STATS: u32 = 1;

/// Driver statistics whose value is not a count, left out of `kappie_interface_stats`
/// (a counter). By name, because the name says what the value is: veth's `peer_ifindex` is
/// the peer's interface index. Add a name here when a driver shows another.
pub const NOT_COUNTERS: &[&str] = &["peer_ifindex"];

#[repr(C)]
struct SsetInfo {
    cmd: u32,
    reserved: u32,
    sset_mask: u64,
    data: [u32; 1],
}

#[repr(C)]
struct GstringsHeader {
    cmd: u32,
    string_set: u32,
    len: u32,
}

#[repr(C)]
struct StatsHeader {
    cmd: u32,
    n_stats: u32,
}

const _: () = {
    assert!(size_of::<SsetInfo>() == 24);
    assert!(offset_of!(SsetInfo, sset_mask) == 8);
    assert!(offset_of!(SsetInfo, data) == 16);
    assert!(size_of::<GstringsHeader>() == 12);
    assert!(offset_of!(GstringsHeader, len) == 8);
    assert!(size_of::<StatsHeader>() == 8);
    assert!(offset_of!(StatsHeader, n_stats) == 4);
    // struct ifreq: a 16-byte name, then the union whose `ifr_data` pointer we set.
    assert!(offset_of!(libc::ifreq, ifr_ifru) == libc::IFNAMSIZ);
};

/// Where the byte after the gstrings header starts: the names.
const GSTRINGS_DATA: usize = size_of::<GstringsHeader>();
/// Where the values start after the stats header (u64-aligned).
const STATS_DATA: usize = size_of::<StatsHeader>();

/// The names of a string set: `len` slots of [`ETH_GSTRING_LEN`] bytes, each up to its
/// first NUL (all 32 bytes when it has none), as `ethtool -S` prints them (`%.*s`).
pub fn parse_strings(data: &[u8], len: usize) -> Vec<String> {
    data.chunks_exact(ETH_GSTRING_LEN)
        .take(len)
        .map(|slot| {
            let end = slot.iter().position(|&b| b == 0).unwrap_or(slot.len());
            String::from_utf8_lossy(&slot[..end]).into_owned()
        })
        .collect()
}

/// `n` native-endian u64 values.
pub fn parse_values(data: &[u8], n: usize) -> Vec<u64> {
    data.chunks_exact(8)
        .take(n)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("chunks of 8")))
        .collect()
}

/// Where the interfaces source gets driver statistics from: [`Ethtool`] on a live system, a
/// table in tests. Called from the collection thread, once per interface per collection.
pub trait DriverStats: Send {
    /// The driver statistics of the interface named `ifname` whose index is `ifindex`, as
    /// (name, value) in the driver's order and with the driver's names. Empty when it has
    /// none (EOPNOTSUPP; loopback), when it is gone (ENODEV), or when the interface of that
    /// name here has another index (it is another namespace's); an error only when the
    /// driver fails otherwise.
    fn read(&mut self, ifname: &str, ifindex: i32) -> Result<Vec<(String, u64)>, SourceError>;
    /// Forgets what is cached for interfaces other than `present` (called after each
    /// collection with the interfaces it saw).
    fn forget_except(&mut self, _present: &HashSet<String>) {}
}

/// The ethtool ioctl reader, with each interface's string set cached.
#[derive(Default)]
pub struct Ethtool {
    sock: Option<OwnedFd>,
    buf: Option<KernelBuf>,
    sets: HashMap<String, StringSet>,
}

/// An interface's statistic names, valid while its index and count stay the same.
struct StringSet {
    ifindex: i32,
    names: Vec<String>,
}

/// How an attempt ended other than with values.
enum Retry {
    /// The count changed between our reading of it and the call: read it again.
    CountChanged,
    /// Nothing to report for this interface now.
    Nothing,
}

impl Ethtool {
    pub fn new() -> Self {
        Self::default()
    }

    fn socket(&mut self) -> io::Result<i32> {
        if self.sock.is_none() {
            // SAFETY: plain syscall; the returned descriptor is owned by the OwnedFd below.
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` is a fresh descriptor nothing else owns.
            self.sock = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        Ok(self
            .sock
            .as_ref()
            .map(AsRawFd::as_raw_fd)
            .expect("opened above"))
    }

    /// The shared reply buffer, grown to hold at least `bytes`.
    fn buf(&mut self, bytes: usize) -> io::Result<&mut KernelBuf> {
        if self.buf.as_ref().is_none_or(|b| b.len() < bytes) {
            self.buf = Some(KernelBuf::new(bytes)?);
        }
        Ok(self.buf.as_mut().expect("allocated above"))
    }

    fn read_once(
        &mut self,
        sock: i32,
        ifname: &str,
        ifindex: i32,
        count: usize,
    ) -> Result<Result<Vec<(String, u64)>, Retry>, SourceError> {
        let cached = self
            .sets
            .get(ifname)
            .is_some_and(|s| s.ifindex == ifindex && s.names.len() == count);
        if !cached {
            let buf = self
                .buf(GSTRINGS_DATA + count * ETH_GSTRING_LEN)
                .map_err(err(ifname, "buffer"))?;
            buf.write_u32s(&[ETHTOOL_GSTRINGS, ETH_SS_STATS, count as u32]);
            match ethtool_ioctl(sock, ifname, buf.as_mut_ptr()) {
                Ok(()) => {}
                Err(e) => return classify(e, ifname, "ETHTOOL_GSTRINGS"),
            }
            let len = buf.u32_at(offset_of!(GstringsHeader, len)) as usize;
            if len != count {
                return Ok(Err(Retry::CountChanged));
            }
            let names = parse_strings(&buf.bytes()[GSTRINGS_DATA..], len);
            self.sets
                .insert(ifname.to_owned(), StringSet { ifindex, names });
        }
        let buf = self
            .buf(STATS_DATA + count * 8)
            .map_err(err(ifname, "buffer"))?;
        buf.write_u32s(&[ETHTOOL_GSTATS, count as u32]);
        if let Err(e) = ethtool_ioctl(sock, ifname, buf.as_mut_ptr()) {
            return classify(e, ifname, "ETHTOOL_GSTATS");
        }
        let n = buf.u32_at(offset_of!(StatsHeader, n_stats)) as usize;
        if n != count {
            return Ok(Err(Retry::CountChanged));
        }
        let values = parse_values(&buf.bytes()[STATS_DATA..], n);
        let names = &self.sets[ifname].names;
        Ok(Ok(names.iter().cloned().zip(values).collect()))
    }
}

impl DriverStats for Ethtool {
    fn read(&mut self, ifname: &str, expected: i32) -> Result<Vec<(String, u64)>, SourceError> {
        if ifname.len() >= libc::IFNAMSIZ || ifname.as_bytes().contains(&0) {
            return Ok(Vec::new()); // not a name the kernel can have
        }
        let sock = self.socket().map_err(err(ifname, "socket"))?;
        // A few attempts: the count can change under us (queues added or removed) between
        // reading it and reading the names or values, and is then read again at once.
        for _ in 0..3 {
            let ifindex = match if_index(sock, ifname) {
                Ok(i) if i == expected => i,
                Ok(_) => break, // a namesake in this namespace, not the interface asked for
                Err(e) if gone_or_unsupported(&e) => break,
                Err(e) => return Err(err(ifname, "SIOCGIFINDEX")(e)),
            };
            let count = match stats_count(sock, ifname) {
                Ok(Some(n)) if n > 0 => n,
                Ok(_) => break,
                Err(e) if gone_or_unsupported(&e) => break,
                Err(e) => return Err(err(ifname, "ETHTOOL_GSSET_INFO")(e)),
            };
            match self.read_once(sock, ifname, ifindex, count)? {
                Ok(stats) => return Ok(stats),
                Err(Retry::CountChanged) => continue,
                Err(Retry::Nothing) => break,
            }
        }
        // No statistics now (or a set that kept changing: next collection reads it again).
        self.sets.remove(ifname);
        Ok(Vec::new())
    }

    fn forget_except(&mut self, present: &HashSet<String>) {
        self.sets.retain(|name, _| present.contains(name));
    }
}

fn err(ifname: &str, what: &str) -> impl FnOnce(io::Error) -> SourceError {
    let what = format!("ethtool {what} on {ifname}");
    move |err| SourceError::Ioctl { what, err }
}

/// ENODEV: the interface went away (or lives in another network namespace);
/// EOPNOTSUPP: its driver has no such statistics.
fn gone_or_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENODEV | libc::EOPNOTSUPP))
}

fn classify<T>(e: io::Error, ifname: &str, what: &str) -> Result<Result<T, Retry>, SourceError> {
    if e.raw_os_error() == Some(libc::EFAULT) {
        // The kernel reached the guard page: the set grew past our buffer.
        Ok(Err(Retry::CountChanged))
    } else if gone_or_unsupported(&e) {
        Ok(Err(Retry::Nothing))
    } else {
        Err(err(ifname, what)(e))
    }
}

fn ifreq(ifname: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data (a name and a union of integers and pointers); all zero
    // is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(ifname.as_bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

fn if_index(sock: i32, ifname: &str) -> io::Result<i32> {
    let mut req = ifreq(ifname);
    // SAFETY: SIOCGIFINDEX reads the NUL-terminated name and writes ifr_ifindex within `req`.
    if unsafe { libc::ioctl(sock, libc::SIOCGIFINDEX as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel set the ifindex member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_ifindex })
}

/// SIOCETHTOOL with `data` (a command structure whose first u32 is the command).
fn ethtool_ioctl(sock: i32, ifname: &str, data: *mut u8) -> io::Result<()> {
    let mut req = ifreq(ifname);
    req.ifr_ifru.ifru_data = data.cast();
    // SAFETY: `data` points at a command structure the caller sized for the command; the
    // variable-length replies go into a KernelBuf, whose guard page stops an overrun.
    if unsafe { libc::ioctl(sock, libc::SIOCETHTOOL as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The driver's count of ETH_SS_STATS statistics; `None` when it has that set not at all.
fn stats_count(sock: i32, ifname: &str) -> io::Result<Option<usize>> {
    let mut info = SsetInfo {
        cmd: ETHTOOL_GSSET_INFO,
        reserved: 0,
        sset_mask: 1 << ETH_SS_STATS,
        data: [0],
    };
    // The kernel writes at most one count: one bit was asked for.
    ethtool_ioctl(sock, ifname, (&raw mut info).cast())?;
    Ok((info.sset_mask & (1 << ETH_SS_STATS) != 0).then_some(info.data[0] as usize))
}

/// A reply buffer followed by an inaccessible guard page, so the kernel cannot write past
/// its end (it fails with EFAULT there instead). Page-aligned, so u64s in it are aligned.
struct KernelBuf {
    ptr: NonNull<u8>,
    len: usize,
    page: usize,
}

// SAFETY: the mapping is owned by this value alone and freed once, on drop.
unsafe impl Send for KernelBuf {}

impl KernelBuf {
    /// At least `bytes` usable bytes (rounded up to whole pages).
    fn new(bytes: usize) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|&p| p > 0)
            .unwrap_or(4096);
        let len = bytes.div_ceil(page).max(1) * page;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len + page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let buf = KernelBuf {
            ptr: NonNull::new(ptr.cast()).expect("mmap does not return null on success"),
            len,
            page,
        };
        // SAFETY: the last page of the mapping made above.
        if unsafe { libc::mprotect(ptr.cast::<u8>().add(len).cast(), page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error()); // `buf` unmaps on drop
        }
        Ok(buf)
    }

    /// Usable bytes (the guard page not counted).
    fn len(&self) -> usize {
        self.len
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes from `ptr` are mapped readable and owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Writes a command header: `words` as native-endian u32s from offset 0.
    fn write_u32s(&mut self, words: &[u32]) {
        for (slot, w) in self.bytes_mut().chunks_exact_mut(4).zip(words) {
            slot.copy_from_slice(&w.to_ne_bytes());
        }
    }

    fn u32_at(&self, offset: usize) -> u32 {
        u32::from_ne_bytes(
            self.bytes()[offset..offset + 4]
                .try_into()
                .expect("4 bytes"),
        )
    }
}

impl Drop for KernelBuf {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len + self.page) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_nul_padded_slots_of_32_bytes() {
        let mut data = vec![0u8; 4 * ETH_GSTRING_LEN];
        data[..12].copy_from_slice(b"peer_ifindex");
        let full = b"rx_queue_0_xdp_tx_errors_and_mor"; // 32 bytes, no NUL
        data[32..64].copy_from_slice(full);
        // slot 2 stays empty; slot 3 has garbage after its NUL, which ethtool does not print
        data[96..104].copy_from_slice(b"tx\0junk!");
        assert_eq!(
            parse_strings(&data, 4),
            vec![
                "peer_ifindex".to_owned(),
                String::from_utf8(full.to_vec()).unwrap(),
                String::new(),
                "tx".to_owned(),
            ]
        );
        assert_eq!(parse_strings(&data, 1), vec!["peer_ifindex".to_owned()]);
        assert_eq!(
            parse_strings(&data[..40], 4).len(),
            1,
            "a short reply yields only its whole slots"
        );
    }

    #[test]
    fn values_are_native_endian_u64s() {
        let data: Vec<u8> = [7u64, u64::MAX, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        assert_eq!(parse_values(&data, 3), vec![7, u64::MAX, 0]);
        assert_eq!(parse_values(&data, 2), vec![7, u64::MAX]);
    }

    #[test]
    fn command_structures_have_the_kernels_layout() {
        // Checked at compile time above; this pins the numbers where a reader finds them.
        assert_eq!(size_of::<SsetInfo>(), 24);
        assert_eq!(offset_of!(SsetInfo, data), 16);
        assert_eq!((GSTRINGS_DATA, STATS_DATA), (12, 8));
        assert_eq!(size_of::<libc::ifreq>(), 40);
        let mut buf = KernelBuf::new(1).unwrap();
        assert_eq!(buf.as_mut_ptr() as usize % 8, 0, "u64 values are aligned");
        buf.write_u32s(&[ETHTOOL_GSTRINGS, ETH_SS_STATS, 5]);
        assert_eq!(buf.u32_at(offset_of!(GstringsHeader, string_set)), 1);
        assert_eq!(buf.u32_at(offset_of!(GstringsHeader, len)), 5);
    }

    #[test]
    fn the_kernel_cannot_write_past_a_kernel_buf() {
        let mut buf = KernelBuf::new(100).unwrap();
        let len = buf.len();
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let more = vec![0xabu8; len + 64];
        let wrote = unsafe { libc::write(fds[1], more.as_ptr().cast(), more.len()) };
        assert_eq!(wrote, more.len() as isize);
        // Ask for more than fits: the kernel stops at the guard page (a short read or EFAULT),
        // and this process does not crash.
        let got = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), len + 64) };
        let errno = io::Error::last_os_error().raw_os_error();
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        assert!(
            (0..=len as isize).contains(&got) || errno == Some(libc::EFAULT),
            "read {got} bytes into {len}"
        );
    }

    #[test]
    fn loopback_and_a_missing_interface_have_no_driver_statistics() {
        let mut e = Ethtool::new();
        let lo = std::fs::read_to_string("/sys/class/net/lo/ifindex").unwrap();
        assert_eq!(e.read("lo", lo.trim().parse().unwrap()).unwrap(), vec![]);
        assert_eq!(e.read("kappie-nonesuch", 1).unwrap(), vec![]);
        assert_eq!(
            e.read("a-name-far-too-long-for-the-kernel", 1).unwrap(),
            vec![]
        );
    }
}
