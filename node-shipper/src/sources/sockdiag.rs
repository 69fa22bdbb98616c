//! Socket dumps over netlink sock_diag (`NETLINK_SOCK_DIAG`, `SOCK_DIAG_BY_FAMILY`), the
//! interface `ss` uses: the kernel hands over the socket tables as binary records instead of
//! printing /proc/net/{tcp,tcp6,udp,udp6} as text for us to parse back.
//!
//! Why not rust-netlink's `netlink-packet-sock-diag`: its parser turns every record into an
//! owned message whose attributes are parsed one by one, and an attribute it does not know
//! (`INET_DIAG_CGROUP_ID` and `INET_DIAG_SOCKOPT`, which the kernel puts in every record) is
//! copied into a `Vec` after formatting an error-context `String` for it, even when parsing
//! succeeds. We need three fields of the fixed header, so the records are read in place
//! here (the commit adding this file has the measurements).
//!
//! The socket belongs to the network namespace of the thread that opened it, for good: the
//! shipper opens it in its own namespace, the node's under `hostNetwork`. (`--proc-root`
//! moves only the /proc fallback.) Inet dumps need no capability.
//!
//! One dump: a request, then datagrams of records until `NLMSG_DONE`. Byte layouts
//! (include/uapi/linux/{netlink,inet_diag}.h; native endian unless marked big-endian):
//!
//! ```text
//! struct nlmsghdr, in front of every request and record (records are 4-byte aligned)
//!  0            4       6        8       12      16
//!  +------------+-------+--------+-------+-------+
//!  | len (incl. | type  | flags  | seq   | pid   |
//!  |  header)   |       |        |       |       |
//!  +------------+-------+--------+-------+-------+
//!  request: type SOCK_DIAG_BY_FAMILY (20), flags NLM_F_REQUEST | NLM_F_DUMP
//!  records: type SOCK_DIAG_BY_FAMILY; NLMSG_DONE (3) ends the dump with an i32 status,
//!  NLMSG_ERROR (2) carries a negative errno
//!
//! struct inet_diag_sockid (48 bytes)
//!  0       2       4                   20                  36      40
//!  +-------+-------+-------------------+-------------------+-------+-------------+
//!  | sport | dport | src[16]           | dst[16]           | if    | cookie[2]   |
//!  | BE    | BE    | IPv4: first 4     | IPv4: first 4     |       |             |
//!  +-------+-------+-------------------+-------------------+-------+-------------+
//!
//! struct inet_diag_req_v2 (56 bytes), the request's payload
//!  0        1          2     3     4              8
//!  +--------+----------+-----+-----+--------------+-----------------------------+
//!  | family | protocol | ext | pad | states (bit  | id (zeros: no filter)       |
//!  |        |          | (0) |     | per state)   |                             |
//!  +--------+----------+-----+-----+--------------+-----------------------------+
//!
//! struct inet_diag_msg (72 bytes), a record's payload; attributes follow up to `len`
//!  0        1       2       3         4                  52
//!  +--------+-------+-------+---------+------------------+---------------------------+
//!  | family | state | timer | retrans | id               | expires rqueue wqueue uid |
//!  |        |       |       |         |                  | inode (5 × u32)           |
//!  +--------+-------+-------+---------+------------------+---------------------------+
//! ```

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `include/uapi/linux/sock_diag.h`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// Every TCP state from `TCP_ESTABLISHED` (1) to `TCP_NEW_SYN_RECV` (12): what
/// /proc/net/tcp and `ss -a` show. Bit 13, `TCP_BOUND_INACTIVE` (kernel 6.8+), would add
/// sockets that are bound but neither listening nor connected, which neither of them lists.
pub const ALL_STATES: u32 = 0x1ffe;

/// The kernel fills at most 32 KiB per dump datagram (`netlink_dump` caps its buffer at
/// the largest read seen, at most 32 KiB less overhead); a read buffer that size takes a
/// whole datagram, as `ss`'s does.
const RECV_BUF: usize = 32 * 1024;

#[repr(C)]
#[derive(Clone, Copy)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagSockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// The request as sent: header and payload in one buffer.
#[repr(C)]
struct Request {
    hdr: NlMsgHdr,
    req: InetDiagReqV2,
}

const _: () = {
    assert!(size_of::<NlMsgHdr>() == 16);
    assert!(size_of::<InetDiagSockId>() == 48);
    assert!(size_of::<InetDiagReqV2>() == 56);
    assert!(size_of::<InetDiagMsg>() == 72);
    assert!(size_of::<Request>() == 72);
};

/// The part of one record the sockets source uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InetSocket {
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// The kernel's state number (`include/net/tcp_states.h`; UDP uses 1 connected, 7 not).
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// How a run of records ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More datagrams follow.
    More,
    /// `NLMSG_DONE` with status 0.
    Done,
}

/// Reads the records in one datagram, calling `each` for every socket of dump `seq`
/// (records of another sequence number, left over from an earlier dump, are skipped).
pub fn parse_datagram(
    buf: &[u8],
    seq: u32,
    mut each: impl FnMut(InetSocket),
) -> io::Result<Parsed> {
    let mut rest = buf;
    while !rest.is_empty() {
        let hdr = read::<NlMsgHdr>(rest)
            .ok_or_else(|| malformed(format!("{} bytes left, no header", rest.len())))?;
        let len = hdr.len as usize;
        if len < size_of::<NlMsgHdr>() || len > rest.len() {
            return Err(malformed(format!(
                "record length {len} with {} bytes left",
                rest.len()
            )));
        }
        let payload = &rest[size_of::<NlMsgHdr>()..len];
        // Records are padded to 4 bytes (NLMSG_ALIGN); the last one may not be.
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        if hdr.seq != seq {
            continue;
        }
        match hdr.kind {
            NLMSG_DONE | NLMSG_ERROR => {
                // Both carry an i32: the dump's status, or the request's negative errno.
                let status = read::<i32>(payload).unwrap_or(0);
                if status < 0 {
                    return Err(io::Error::from_raw_os_error(-status));
                }
                if hdr.kind == NLMSG_DONE {
                    return Ok(Parsed::Done);
                }
            }
            SOCK_DIAG_BY_FAMILY => {
                let m = read::<InetDiagMsg>(payload).ok_or_else(|| {
                    malformed(format!("inet_diag_msg of {} bytes", payload.len()))
                })?;
                each(InetSocket {
                    family: m.family,
                    state: m.state,
                    local: address(m.family, &m.id.src, m.id.sport)?,
                    remote: address(m.family, &m.id.dst, m.id.dport)?,
                });
            }
            other => return Err(malformed(format!("message type {other}"))),
        }
    }
    Ok(Parsed::More)
}

/// A `T` from the front of `bytes`, if it is long enough. Only for the plain-integer
/// structs above, for which every bit pattern is a value.
fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= size_of::<T>())
        // SAFETY: in bounds (checked), unaligned read, T is plain integers.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// An address of the dump. A v4-mapped IPv6 address (an IPv4 peer of a dual-stack socket)
/// reads as IPv4, as `ss` shows it and as the /proc reader does.
fn address(family: u8, a: &[u8; 16], port: [u8; 2]) -> io::Result<SocketAddr> {
    let port = u16::from_be_bytes(port);
    let ip = match i32::from(family) {
        libc::AF_INET => IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
        libc::AF_INET6 => {
            let v6 = Ipv6Addr::from(*a);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        f => return Err(malformed(format!("address family {f}"))),
    };
    Ok(SocketAddr::new(ip, port))
}

fn malformed(msg: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed sock_diag reply: {msg}"),
    )
}

/// A `NETLINK_SOCK_DIAG` socket and its read buffer, both reused for every dump.
pub struct SockDiag {
    sock: OwnedFd,
    buf: Vec<u8>,
    seq: u32,
}

impl SockDiag {
    /// Opens the socket in the calling thread's network namespace. Fails where netlink is
    /// not allowed (EPERM, EACCES under a seccomp or sandbox policy) or not built in
    /// (EPROTONOSUPPORT, EAFNOSUPPORT).
    pub fn open() -> io::Result<SockDiag> {
        // SAFETY: plain system call; the descriptor is owned from here on.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SockDiag {
            // SAFETY: `fd` is a new descriptor nothing else owns.
            sock: unsafe { OwnedFd::from_raw_fd(fd) },
            buf: vec![0; RECV_BUF],
            seq: 0,
        })
    }

    /// Dumps the sockets of `protocol` (`IPPROTO_TCP`, `IPPROTO_UDP`) and `family`
    /// (`AF_INET`, `AF_INET6`) whose state is in `states` (a bit per state number), calling
    /// `each` for every one. An error leaves no dump half-read behind that a later call could
    /// mistake for its own (records carry the sequence number of their request).
    pub fn dump(
        &mut self,
        family: u8,
        protocol: u8,
        states: u32,
        mut each: impl FnMut(InetSocket),
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let request = Request {
            hdr: NlMsgHdr {
                len: size_of::<Request>() as u32,
                kind: SOCK_DIAG_BY_FAMILY,
                flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
                seq: self.seq,
                pid: 0,
            },
            req: InetDiagReqV2 {
                family,
                protocol,
                ext: 0,
                pad: 0,
                states,
                // SAFETY: integers only; zero is "no filter".
                id: unsafe { std::mem::zeroed() },
            },
        };
        // SAFETY: all-zero is a valid sockaddr_nl; pid 0 is the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: the pointers and lengths describe `request` and `kernel`.
        let sent = unsafe {
            libc::sendto(
                self.sock.as_raw_fd(),
                (&request as *const Request).cast(),
                size_of::<Request>(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            // MSG_TRUNC: the datagram's real length, so a truncated one is an error and not
            // a silent loss of sockets.
            // SAFETY: `buf` is writable for its length.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            let n = n as usize;
            if n > self.buf.len() {
                return Err(malformed(format!(
                    "datagram of {n} bytes, read buffer {}",
                    self.buf.len()
                )));
            }
            if parse_datagram(&self.buf[..n], self.seq, &mut each)? == Parsed::Done {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u32, family: u8, state: u8, dst: [u8; 16], dport: u16) -> Vec<u8> {
        let mut m: InetDiagMsg = unsafe { std::mem::zeroed() };
        m.family = family;
        m.state = state;
        m.id.dst = dst;
        m.id.dport = dport.to_be_bytes();
        m.id.src[..4].copy_from_slice(&[10, 0, 0, 1]);
        m.id.sport = 40000u16.to_be_bytes();
        // Attributes follow the header; 12 bytes of them here (one u64 attribute), as
        // INET_DIAG_CGROUP_ID comes.
        let attrs = [12u8, 0, 21, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        let len = size_of::<NlMsgHdr>() + size_of::<InetDiagMsg>() + attrs.len();
        let hdr = NlMsgHdr {
            len: len as u32,
            kind: SOCK_DIAG_BY_FAMILY,
            flags: 2, // NLM_F_MULTI
            seq,
            pid: 1,
        };
        let mut v = bytes(&hdr);
        v.extend(bytes(&m));
        v.extend(attrs);
        v
    }

    fn control(seq: u32, kind: u16, status: i32) -> Vec<u8> {
        let hdr = NlMsgHdr {
            len: 20,
            kind,
            flags: 2,
            seq,
            pid: 1,
        };
        let mut v = bytes(&hdr);
        v.extend(status.to_ne_bytes());
        v
    }

    fn bytes<T>(t: &T) -> Vec<u8> {
        unsafe { std::slice::from_raw_parts((t as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut b = [0; 16];
        b[..4].copy_from_slice(&a);
        b
    }

    fn parse(buf: &[u8], seq: u32) -> io::Result<(Parsed, Vec<InetSocket>)> {
        let mut v = Vec::new();
        let p = parse_datagram(buf, seq, |s| v.push(s))?;
        Ok((p, v))
    }

    #[test]
    fn reads_records_up_to_done() {
        let mapped: Ipv6Addr = "::ffff:198.18.0.2".parse().unwrap();
        let plain: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let mut buf = record(7, libc::AF_INET as u8, 1, v4([198, 18, 0, 2]), 8080);
        buf.extend(record(7, libc::AF_INET6 as u8, 6, mapped.octets(), 443));
        buf.extend(record(7, libc::AF_INET6 as u8, 10, plain.octets(), 0));
        let (p, v) = parse(&buf, 7).unwrap();
        assert_eq!(p, Parsed::More);
        assert_eq!(
            v.iter()
                .map(|s| (s.state, s.remote.to_string()))
                .collect::<Vec<_>>(),
            vec![
                (1, "198.18.0.2:8080".to_owned()),
                (6, "198.18.0.2:443".to_owned()),
                (10, "[2001:db8::2]:0".to_owned()),
            ]
        );
        assert_eq!(v[0].local, "10.0.0.1:40000".parse().unwrap());
        assert_eq!(
            parse(&control(7, NLMSG_DONE, 0), 7).unwrap(),
            (Parsed::Done, vec![])
        );
    }

    #[test]
    fn skips_records_of_an_earlier_dump() {
        let mut buf = record(6, libc::AF_INET as u8, 1, v4([10, 0, 0, 9]), 1);
        buf.extend(control(6, NLMSG_DONE, 0));
        buf.extend(record(7, libc::AF_INET as u8, 1, v4([10, 0, 0, 9]), 2));
        let (p, v) = parse(&buf, 7).unwrap();
        assert_eq!((p, v.len(), v[0].remote.port()), (Parsed::More, 1, 2));
    }

    #[test]
    fn errors_carry_the_errno() {
        let e = parse(&control(3, NLMSG_ERROR, -libc::ENOENT), 3).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let e = parse(&control(3, NLMSG_DONE, -libc::EINTR), 3).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINTR));
        // An NLMSG_ERROR with status 0 is an acknowledgement, not the end.
        assert_eq!(
            parse(&control(3, NLMSG_ERROR, 0), 3).unwrap(),
            (Parsed::More, vec![])
        );
    }

    #[test]
    fn rejects_malformed_datagrams() {
        let rec = record(1, libc::AF_INET as u8, 1, v4([10, 0, 0, 9]), 1);
        assert!(parse(&rec[..rec.len() - 1], 1).is_err(), "cut short");
        assert!(parse(&rec[..10], 1).is_err(), "no whole header");
        let mut short = rec.clone();
        short[0..4].copy_from_slice(&40u32.to_ne_bytes());
        assert!(
            parse(&short[..40], 1).is_err(),
            "record shorter than inet_diag_msg"
        );
        let mut bad = rec.clone();
        bad[16] = 99;
        assert!(parse(&bad, 1).is_err(), "unknown family");
        let mut zero = rec;
        zero[0..4].copy_from_slice(&0u32.to_ne_bytes());
        assert!(parse(&zero, 1).is_err(), "zero length would never advance");
    }
}
