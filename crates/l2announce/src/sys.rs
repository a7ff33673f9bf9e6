//! [`PacketLink`]: a [`Link`] on an AF_PACKET raw socket bound to one interface.
//!
//! libc is used directly (the workspace already depends on it): `socket2` would still leave
//! the `sockaddr_ll` handling and `if_nametoindex` unsafe, so it would not remove the
//! `unsafe` blocks below, only add a dependency. Multicast membership uses a plain std UDP
//! socket (`join_multicast_v6`), which makes the kernel program the NIC filter *and* send
//! MLD reports, so MLD-snooping switches forward solicitations to us.

use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::net::{Ipv6Addr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::link::Link;
use crate::packet::{ETHERTYPE_ARP, ETHERTYPE_IPV6, Mac};

/// Why an interface cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("interface {interface:?} not found")]
    NoSuchInterface {
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("interface {interface}: {step} failed")]
    Socket {
        interface: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("interface {interface} is not an Ethernet interface (hardware type {hatype})")]
    NotEthernet { interface: String, hatype: u16 },
}

/// An AF_PACKET socket on one interface, receiving only incoming ARP and ICMPv6 neighbour
/// solicitations (a classic BPF filter drops everything else in the kernel).
#[derive(Debug)]
pub struct PacketLink {
    name: String,
    index: u32,
    mac: Mac,
    socket: AsyncFd<OwnedFd>,
    /// For multicast membership; `None` when IPv6 is disabled on the host.
    groups: Option<UdpSocket>,
}

const PACKET_OUTGOING: u32 = 4;

/// `ld pkttype; jeq OUTGOING drop; ldh [12]; jeq ARP accept; jeq IPv6 +0 drop;
/// ldb [20] (next header); jeq 58 +0 drop; ldb [54] (ICMPv6 type); jeq 135 accept drop`.
fn filter_program() -> [libc::sock_filter; 11] {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let ldb = libc::BPF_LD | libc::BPF_B | libc::BPF_ABS;
    let ldh = libc::BPF_LD | libc::BPF_H | libc::BPF_ABS;
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let ret = libc::BPF_RET | libc::BPF_K;
    let pkttype = (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE) as u32;
    [
        op(ldb, 0, 0, pkttype),
        op(jeq, 8, 0, PACKET_OUTGOING),
        op(ldh, 0, 0, 12),
        op(jeq, 5, 0, u32::from(ETHERTYPE_ARP)),
        op(jeq, 0, 5, u32::from(ETHERTYPE_IPV6)),
        op(ldb, 0, 0, 14 + 6),
        op(jeq, 0, 3, 58),
        op(ldb, 0, 0, 14 + 40),
        op(jeq, 0, 1, 135),
        op(ret, 0, 0, 0x0004_0000),
        op(ret, 0, 0, 0),
    ]
}

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn interface_index(interface: &str) -> Result<u32, LinkError> {
    let not_found = |source| LinkError::NoSuchInterface {
        interface: interface.to_string(),
        source,
    };
    let name = CString::new(interface)
        .map_err(|e| not_found(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(not_found(io::Error::last_os_error()));
    }
    Ok(index)
}

fn link_address(index: u32, protocol: u16) -> libc::sockaddr_ll {
    libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: protocol.to_be(),
        // Interface indexes are positive ints in the kernel.
        sll_ifindex: index as i32,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    }
}

/// Creates the filtered socket and binds it to the interface; returns it and the
/// interface's hardware address.
fn open_socket(index: u32) -> Result<(OwnedFd, libc::sockaddr_ll), (&'static str, io::Error)> {
    // Protocol 0: receive nothing until bound, so no frame slips past the filter.
    let flags = libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain syscall with constant arguments.
    let fd =
        check(unsafe { libc::socket(libc::AF_PACKET, flags, 0) }).map_err(|e| ("socket", e))?;
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let program = filter_program();
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points to `program`, both alive during the call; the kernel copies them.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })
    .map_err(|e| ("attaching the packet filter", e))?;
    let address = link_address(index, libc::ETH_P_ALL as u16);
    // SAFETY: `address` is a valid sockaddr_ll and the length is its size.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const address).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })
    .map_err(|e| ("bind", e))?;
    let mut bound = link_address(0, 0);
    let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `bound` is writable for `len` bytes; the kernel writes at most that much.
    check(unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut bound).cast(), &mut len) })
        .map_err(|e| ("getsockname", e))?;
    Ok((fd, bound))
}

impl PacketLink {
    /// Opens `interface` in the calling thread's network namespace. Must be called within a
    /// tokio runtime (the socket is registered with its reactor). Needs CAP_NET_RAW.
    pub fn open(interface: &str) -> Result<Self, LinkError> {
        let index = interface_index(interface)?;
        let socket_error = |(step, source)| LinkError::Socket {
            interface: interface.to_string(),
            step,
            source,
        };
        let (fd, bound) = open_socket(index).map_err(socket_error)?;
        if bound.sll_hatype != libc::ARPHRD_ETHER || bound.sll_halen != 6 {
            return Err(LinkError::NotEthernet {
                interface: interface.to_string(),
                hatype: bound.sll_hatype,
            });
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&bound.sll_addr[..6]);
        // SAFETY: the OwnedFd moves into the AsyncFd, so the descriptor stays open and the
        // same for the AsyncFd's whole life.
        let socket = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| socket_error(("registering with tokio", io::Error::from(e))))?;
        Ok(Self {
            name: interface.to_string(),
            index,
            mac: Mac(mac),
            socket,
            groups: UdpSocket::bind("[::]:0").ok(),
        })
    }

    /// The interface index.
    pub fn index(&self) -> u32 {
        self.index
    }

    fn groups(&self) -> io::Result<&UdpSocket> {
        self.groups
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "IPv6 is not available"))
    }
}

fn raw_recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for `buf.len()` bytes during the call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

impl Link for PacketLink {
    fn name(&self) -> &str {
        &self.name
    }

    fn mac(&self) -> Mac {
        self.mac
    }

    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.socket.readable().await?;
            match ready.try_io(|fd| raw_recv(fd.as_raw_fd(), buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        let fd = self.socket.as_raw_fd();
        // SAFETY: `frame` is readable for `frame.len()` bytes during the call.
        let n = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) };
        match usize::try_from(n) {
            Ok(sent) if sent == frame.len() => Ok(()),
            Ok(sent) => Err(io::Error::other(format!(
                "sent {sent} of {} bytes",
                frame.len()
            ))),
            Err(_) => Err(io::Error::last_os_error()),
        }
    }

    fn join_group(&self, group: Ipv6Addr) -> io::Result<()> {
        self.groups()?.join_multicast_v6(&group, self.index)
    }

    fn leave_group(&self, group: Ipv6Addr) -> io::Result<()> {
        self.groups()?.leave_multicast_v6(&group, self.index)
    }
}
