//! Socket construction the std/tokio constructors cannot do: IPv6-only binds (so `0.0.0.0:P`
//! and `[::]:P` can both be bound) and SCTP one-to-one sockets, which behave like TCP
//! streams for accept/connect/read/write.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

const IPPROTO_SCTP: i32 = 132;

fn new_socket(addr: SocketAddr, ty: Type, sctp: bool) -> io::Result<Socket> {
    let proto = sctp.then(|| Protocol::from(IPPROTO_SCTP));
    let socket = Socket::new(Domain::for_address(addr), ty, proto)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// A listening TCP (or SCTP) socket on `addr`.
pub(crate) fn listener(addr: SocketAddr, sctp: bool) -> io::Result<tokio::net::TcpListener> {
    let socket = new_socket(addr, Type::STREAM, sctp)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// A bound UDP socket on `addr`.
pub(crate) fn udp(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let socket = new_socket(addr, Type::DGRAM, false)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// An unconnected TCP (or SCTP) socket of `target`'s family, bound to `source_port` if given.
pub(crate) fn client_stream(
    target: SocketAddr,
    sctp: bool,
    source_port: Option<u16>,
) -> io::Result<tokio::net::TcpSocket> {
    let socket = new_socket(target, Type::STREAM, sctp)?;
    if let Some(port) = source_port {
        socket.set_reuse_address(true)?;
        socket.bind(&unspecified(target, port).into())?;
    }
    let std_stream: std::net::TcpStream = socket.into();
    Ok(tokio::net::TcpSocket::from_std_stream(std_stream))
}

/// The wildcard address of `target`'s family with `port`.
pub(crate) fn unspecified(target: SocketAddr, port: u16) -> SocketAddr {
    match target {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], port)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], port)),
    }
}
