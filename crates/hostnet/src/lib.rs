//! What the node's network looks like: links, addresses, neighbour entries, and a notification
//! whenever a link or an address changes.
//!
//! [`HostNetwork`] is the seam the agent and the eBPF backend program against.
//! [`RtNetlink`] answers from the kernel over rtnetlink; [`FakeHostNetwork`] is an in-memory
//! stand-in whose content, change events and failures the test decides.
//!
//! # Why queries are synchronous and notifications are a stream
//!
//! The callers live in two worlds: the agent's sync loop is tokio code, the eBPF backend's
//! attach logic is plain blocking code (it runs inside `Dataplane::apply` and on its own link
//! watcher thread). rtnetlink itself is async and needs a tokio reactor to drive its socket.
//!
//! * **Queries** ([`HostNetwork::links`], [`HostNetwork::addresses`], ...) are plain blocking
//!   calls, like the `getifaddrs(3)` they replace (which also does a netlink dump). [`RtNetlink`]
//!   runs each one on a short-lived helper thread with its own current-thread runtime. That
//!   makes a query safe to call from anywhere: from a plain thread, and from inside a tokio
//!   runtime, where blocking on a runtime of our own in place would panic. The helper thread
//!   inherits the caller's network namespace, so a query sees the namespace of the calling
//!   thread, exactly as `getifaddrs` did. A dump costs a thread, a runtime and a socket
//!   (well under a millisecond), paid at most a few times per sync.
//! * **Notifications** ([`HostNetwork::subscribe`]) are a [`Changes`] stream driven by whoever
//!   awaits it: no hidden thread, and dropping it closes the socket. The real one must be
//!   created inside a tokio runtime with IO enabled. A synchronous user (the eBPF link watcher)
//!   runs a tiny current-thread runtime on its own thread and `select!`s between the stream
//!   and its stop signal, which makes stopping immediate.
//! * **Lost notifications are not silent.** When the kernel drops events because the socket's
//!   queue is full (`ENOBUFS`), the stream yields [`Change::Resync`]: re-read what you need.
//!
//! Neighbour entries are listed ([`HostNetwork::neighbours`]) for the coming L2 announcer;
//! routes and neighbour notifications are not offered yet.
#![forbid(unsafe_code)]

mod fake;
mod rtnl;

use std::fmt;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{FutureExt as _, Stream, StreamExt as _};

pub use fake::{Call, FakeHostNetwork};
pub use rtnl::RtNetlink;

/// The loopback interface, never a place to attach to or announce from.
pub const LOOPBACK: &str = "lo";

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Operationally up, i.e. it has a carrier (`IFF_RUNNING`).
    pub running: bool,
    /// The Ethernet address; `None` for links without a 6-byte hardware address.
    pub mac: Option<MacAddr>,
    /// The driver kind (`IFLA_INFO_KIND`: "veth", "bridge", ...); `None` for physical NICs
    /// and `lo`.
    pub kind: Option<String>,
}

/// An address assigned to an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub ifindex: u32,
    pub ifname: String,
    pub ip: IpAddr,
    pub prefix_len: u8,
    pub scope: Scope,
}

impl Address {
    /// Global scope, not loopback, not link-local: an address other hosts can reach us at.
    pub fn is_global(&self) -> bool {
        let link_local = match self.ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        };
        self.scope == Scope::Global && !self.ip.is_loopback() && !link_local
    }
}

/// The scope of an address (`ip addr`'s "scope").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Global,
    Site,
    Link,
    Host,
    Nowhere,
    Other(u8),
}

/// An entry of the kernel's ARP (IPv4) or NDP (IPv6) table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub ip: IpAddr,
    /// `None` while unresolved.
    pub mac: Option<MacAddr>,
    pub state: NeighbourState,
}

/// The kernel's neighbour entry state (`NUD_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NeighbourState {
    Incomplete,
    Reachable,
    Stale,
    Delay,
    Probe,
    Failed,
    NoArp,
    Permanent,
    None,
    Other(u16),
}

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The address in `bytes` when it is exactly six bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<MacAddr> {
        bytes.try_into().ok().map(MacAddr)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// One notification. It says what changed; re-read the listing for the full picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A link appeared, changed (up/down, carrier, name, MAC) or, with `removed`, went away.
    Link {
        ifindex: u32,
        name: String,
        removed: bool,
    },
    /// An address was added to a link or, with `removed`, taken away.
    Address {
        ifindex: u32,
        ip: IpAddr,
        prefix_len: u8,
        removed: bool,
    },
    /// Notifications were lost (the kernel's queue overflowed): anything may have changed.
    Resync,
}

/// Why a question about the host network got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    #[error("cannot open a netlink socket")]
    Connect {
        #[source]
        source: std::io::Error,
    },
    #[error("netlink request `{request}` failed")]
    Request {
        request: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the netlink helper thread")]
    Helper {
        #[source]
        source: std::io::Error,
    },
    #[error("subscribing needs a tokio runtime with IO enabled on the calling thread")]
    NoRuntime,
    #[error("injected failure of {call:?} call #{nth}")]
    Injected { call: Call, nth: usize },
}

/// Links, addresses and neighbours of the host, and notifications when links or addresses
/// change. Queries block briefly; see the crate docs for where each implementation runs.
pub trait HostNetwork: Send + Sync {
    /// Every link, in index order.
    fn links(&self) -> Result<Vec<Link>, HostNetError>;

    /// Every address of every link (IPv4 and IPv6), loopback and link-local included.
    fn addresses(&self) -> Result<Vec<Address>, HostNetError>;

    /// The ARP and NDP tables.
    fn neighbours(&self) -> Result<Vec<Neighbour>, HostNetError>;

    /// The index of the link called `name`; `None` when there is none.
    fn link_index(&self, name: &str) -> Result<Option<u32>, HostNetError>;

    /// A stream that yields on every link and address change, and [`Change::Resync`] when
    /// notifications were lost. Changes that happen after this returns are all reported.
    fn subscribe(&self) -> Result<Changes, HostNetError>;

    /// Global-scope addresses of all interfaces, without loopback and link-local ones;
    /// sorted, without duplicates.
    fn global_addresses(&self) -> Result<Vec<IpAddr>, HostNetError> {
        let mut ips: Vec<IpAddr> = self
            .addresses()?
            .into_iter()
            .filter(Address::is_global)
            .map(|a| a.ip)
            .collect();
        ips.sort();
        ips.dedup();
        Ok(ips)
    }

    /// Names of the interfaces carrying any of `ips`, never `lo`; sorted, without duplicates.
    fn interfaces_with(&self, ips: &[IpAddr]) -> Result<Vec<String>, HostNetError> {
        let mut names: Vec<String> = self
            .addresses()?
            .into_iter()
            .filter(|a| a.ifname != LOOPBACK && ips.contains(&a.ip))
            .map(|a| a.ifname)
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// The notifications of one subscription (see [`HostNetwork::subscribe`]). Ends (`None`) only
/// when the source can no longer deliver; dropping it unsubscribes.
pub struct Changes {
    stream: Pin<Box<dyn Stream<Item = Change> + Send>>,
}

impl Changes {
    /// Wraps any stream of changes (for other implementations of [`HostNetwork`]).
    pub fn from_stream(stream: impl Stream<Item = Change> + Send + 'static) -> Changes {
        Changes {
            stream: Box::pin(stream),
        }
    }

    /// The next change; `None` once the subscription has ended.
    pub async fn recv(&mut self) -> Option<Change> {
        self.stream.next().await
    }

    /// A change that is ready now, without waiting (to coalesce a burst into one re-check).
    pub fn try_recv(&mut self) -> Option<Change> {
        self.stream.next().now_or_never().flatten()
    }
}

impl Stream for Changes {
    type Item = Change;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Change>> {
        self.stream.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Changes")
    }
}
