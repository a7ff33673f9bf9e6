//! [`HostNetwork`] over rtnetlink: dumps on a helper thread, notifications as a stream that
//! drives its own multicast connection (see the crate docs for why).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::channel::mpsc::UnboundedReceiver;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState as NudState,
};
use rtnetlink::sys::{AsyncSocket as _, SocketAddr};
use rtnetlink::{Handle, MulticastGroup};

use crate::{
    Address, Change, Changes, HostNetError, HostNetwork, Link, MacAddr, Neighbour, NeighbourState,
    Scope,
};

/// The host's network as the kernel reports it over rtnetlink, in the network namespace of
/// the calling thread.
#[derive(Debug, Clone, Default)]
pub struct RtNetlink {
    receive_buffer: Option<usize>,
}

impl RtNetlink {
    pub fn new() -> RtNetlink {
        RtNetlink::default()
    }

    /// The kernel receive buffer (`SO_RCVBUF`, in bytes; the kernel doubles it) of sockets
    /// created by [`HostNetwork::subscribe`]. Larger survives bigger bursts of changes without
    /// a [`Change::Resync`]; the default is the system's (`net.core.rmem_default`).
    pub fn with_receive_buffer(mut self, bytes: usize) -> RtNetlink {
        self.receive_buffer = Some(bytes);
        self
    }
}

impl HostNetwork for RtNetlink {
    fn links(&self) -> Result<Vec<Link>, HostNetError> {
        let messages = query("dump links", |handle| async move {
            handle.link().get().execute().try_collect::<Vec<_>>().await
        })?;
        Ok(messages.iter().map(link_of).collect())
    }

    fn addresses(&self) -> Result<Vec<Address>, HostNetError> {
        // IPv6 addresses carry no label: names come from the link dump.
        let (links, addresses) = query("dump addresses", |handle| async move {
            let links: Vec<LinkMessage> = handle.link().get().execute().try_collect().await?;
            let addresses: Vec<AddressMessage> =
                handle.address().get().execute().try_collect().await?;
            Ok((links, addresses))
        })?;
        let names: Vec<Link> = links.iter().map(link_of).collect();
        Ok(addresses
            .iter()
            .filter_map(|message| {
                let name = |index| names.iter().find(|l| l.index == index).map(|l| &l.name);
                address_of(message, name)
            })
            .collect())
    }

    fn neighbours(&self) -> Result<Vec<Neighbour>, HostNetError> {
        let messages = query("dump neighbours", |handle| async move {
            handle
                .neighbours()
                .get()
                .execute()
                .try_collect::<Vec<_>>()
                .await
        })?;
        Ok(messages.iter().filter_map(neighbour_of).collect())
    }

    fn link_index(&self, name: &str) -> Result<Option<u32>, HostNetError> {
        // What the kernel would refuse as a name cannot name a link.
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ']) {
            return Ok(None);
        }
        let name = name.to_owned();
        query("get link by name", |handle| async move {
            match handle
                .link()
                .get()
                .match_name(name)
                .execute()
                .try_next()
                .await
            {
                Ok(found) => Ok(found.map(|m| m.header.index)),
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn subscribe(&self) -> Result<Changes, HostNetError> {
        // The socket registers with the current runtime's reactor (and would panic without one).
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(HostNetError::NoRuntime);
        }
        let groups = [
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
        ];
        let (mut connection, _handle, messages) = rtnetlink::new_multicast_connection(&groups)
            .map_err(|source| HostNetError::Connect { source })?;
        if let Some(bytes) = self.receive_buffer {
            let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
            connection
                .socket_mut()
                .socket_mut()
                .set_rx_buf_sz(bytes)
                .map_err(|source| HostNetError::Connect { source })?;
        }
        Ok(Changes::from_stream(Events {
            connection: Some(Box::pin(connection)),
            messages,
        }))
    }
}

/// Runs `request` against a fresh netlink connection on a helper thread with its own
/// current-thread runtime, and waits for the answer. Works from plain threads and from
/// inside a tokio runtime alike; the helper inherits the caller's network namespace.
fn query<T, F, Fut>(request: &'static str, run: F) -> Result<T, HostNetError>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, rtnetlink::Error>>,
{
    std::thread::scope(|scope| {
        let helper = std::thread::Builder::new()
            .name("sluice-netlink".into())
            .spawn_scoped(scope, move || query_here(request, run))
            .map_err(|source| HostNetError::Helper { source })?;
        helper
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn query_here<T, F, Fut>(request: &'static str, run: F) -> Result<T, HostNetError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, rtnetlink::Error>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|source| HostNetError::Helper { source })?;
    runtime.block_on(async {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| HostNetError::Connect { source })?;
        // Ends with the runtime when this function returns.
        tokio::spawn(connection);
        run(handle).await.map_err(|e| HostNetError::Request {
            request,
            source: io_error(e),
        })
    })
}

fn io_error(e: rtnetlink::Error) -> std::io::Error {
    match e {
        rtnetlink::Error::NetlinkError(message) => message.to_io(),
        other => std::io::Error::other(other),
    }
}

type Connection = rtnetlink::proto::Connection<RouteNetlinkMessage>;

/// The stream behind [`RtNetlink::subscribe`]: polls the multicast connection (which reads
/// the socket) and turns its messages into [`Change`]s.
struct Events {
    /// `None` once the socket failed; the channel then drains and the stream ends.
    connection: Option<Pin<Box<Connection>>>,
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
}

impl Stream for Events {
    type Item = Change;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Change>> {
        if let Some(connection) = self.connection.as_mut()
            && connection.as_mut().poll(cx).is_ready()
        {
            // Dropping it closes the channel, so the loop below ends the stream.
            self.connection = None;
        }
        loop {
            match self.messages.poll_next_unpin(cx) {
                Poll::Ready(Some((message, _))) => {
                    if let Some(change) = change_of(message) {
                        return Poll::Ready(Some(change));
                    }
                }
                other => return other.map(|_| None),
            }
        }
    }
}

fn change_of(message: NetlinkMessage<RouteNetlinkMessage>) -> Option<Change> {
    use RouteNetlinkMessage::{DelAddress, DelLink, NewAddress, NewLink};
    let link = |m: &LinkMessage, removed| {
        let link = link_of(m);
        Change::Link {
            ifindex: link.index,
            name: link.name,
            removed,
        }
    };
    let address = |m: &AddressMessage, removed| {
        let (ip, _) = ip_and_label(m)?;
        Some(Change::Address {
            ifindex: m.header.index,
            ip,
            prefix_len: m.header.prefix_len,
            removed,
        })
    };
    match message.payload {
        NetlinkPayload::Overrun(_) => Some(Change::Resync),
        NetlinkPayload::InnerMessage(NewLink(m)) => Some(link(&m, false)),
        NetlinkPayload::InnerMessage(DelLink(m)) => Some(link(&m, true)),
        NetlinkPayload::InnerMessage(NewAddress(m)) => address(&m, false),
        NetlinkPayload::InnerMessage(DelAddress(m)) => address(&m, true),
        _ => None,
    }
}

fn link_of(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        up: message.header.flags.contains(LinkFlags::Up),
        running: message.header.flags.contains(LinkFlags::Running),
        mac: None,
        kind: None,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name.clone_from(name),
            LinkAttribute::Address(bytes) => link.mac = MacAddr::from_slice(bytes),
            LinkAttribute::LinkInfo(infos) => {
                link.kind = infos.iter().find_map(|info| match info {
                    LinkInfo::Kind(kind) => Some(kind.to_string()),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    link
}

/// The interface address: `IFA_LOCAL` when present (on point-to-point links `IFA_ADDRESS`
/// is the peer), else `IFA_ADDRESS`; and the IPv4 label, which is the interface name.
fn ip_and_label(message: &AddressMessage) -> Option<(IpAddr, Option<&str>)> {
    let mut local = None;
    let mut address = None;
    let mut label = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Label(name) => label = Some(name.as_str()),
            _ => {}
        }
    }
    Some((local.or(address)?, label))
}

fn address_of<'a>(
    message: &AddressMessage,
    link_name: impl Fn(u32) -> Option<&'a String>,
) -> Option<Address> {
    let (ip, label) = ip_and_label(message)?;
    // An IPv4 label may be an alias ("eth0:1"); the link's own name is what callers need.
    let ifname = link_name(message.header.index)
        .cloned()
        .or_else(|| label.map(|l| l.split(':').next().unwrap_or(l).to_owned()))?;
    Some(Address {
        ifindex: message.header.index,
        ifname,
        ip,
        prefix_len: message.header.prefix_len,
        scope: scope_of(message.header.scope),
    })
}

fn scope_of(scope: AddressScope) -> Scope {
    match scope {
        AddressScope::Universe => Scope::Global,
        AddressScope::Site => Scope::Site,
        AddressScope::Link => Scope::Link,
        AddressScope::Host => Scope::Host,
        AddressScope::Nowhere => Scope::Nowhere,
        AddressScope::Other(n) => Scope::Other(n),
        _ => Scope::Other(u8::from(scope)),
    }
}

fn neighbour_of(message: &NeighbourMessage) -> Option<Neighbour> {
    let mut ip = None;
    let mut mac = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = Some((*v4).into()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => ip = Some((*v6).into()),
            NeighbourAttribute::LinkLayerAddress(bytes) => mac = MacAddr::from_slice(bytes),
            _ => {}
        }
    }
    Some(Neighbour {
        ifindex: message.header.ifindex,
        ip: ip?,
        mac,
        state: state_of(message.header.state),
    })
}

fn state_of(state: NudState) -> NeighbourState {
    match state {
        NudState::Incomplete => NeighbourState::Incomplete,
        NudState::Reachable => NeighbourState::Reachable,
        NudState::Stale => NeighbourState::Stale,
        NudState::Delay => NeighbourState::Delay,
        NudState::Probe => NeighbourState::Probe,
        NudState::Failed => NeighbourState::Failed,
        NudState::Noarp => NeighbourState::NoArp,
        NudState::Permanent => NeighbourState::Permanent,
        NudState::None => NeighbourState::None,
        other => NeighbourState::Other(u16::from(other)),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use rtnetlink::packet_core::NetlinkHeader;
    use rtnetlink::packet_route::link::InfoKind;

    use super::*;

    fn veth_message() -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = 7;
        m.header.flags = LinkFlags::Up | LinkFlags::Running;
        m.attributes = vec![
            LinkAttribute::IfName("veth7".into()),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 7]),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
        ];
        m
    }

    fn address_message(index: u32, ip: IpAddr, label: Option<&str>) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.index = index;
        m.header.prefix_len = 24;
        m.header.scope = AddressScope::Universe;
        m.attributes.push(AddressAttribute::Address(ip));
        if let Some(label) = label {
            m.attributes.push(AddressAttribute::Label(label.into()));
        }
        m
    }

    #[test]
    fn a_link_message_becomes_a_link_with_name_mac_state_and_kind() {
        let link = link_of(&veth_message());
        assert_eq!(
            link,
            Link {
                index: 7,
                name: "veth7".into(),
                up: true,
                running: true,
                mac: Some(MacAddr([2, 0, 0, 0, 0, 7])),
                kind: Some("veth".into()),
            }
        );
        assert_eq!(link.mac.unwrap().to_string(), "02:00:00:00:00:07");
    }

    #[test]
    fn point_to_point_addresses_report_the_local_side_and_aliases_the_link_name() {
        let mut m = address_message(3, "10.0.0.2".parse().unwrap(), Some("eth0:1"));
        m.attributes
            .push(AddressAttribute::Local("10.0.0.1".parse().unwrap()));
        let address = address_of(&m, |_| None).unwrap();
        assert_eq!(address.ip, IpAddr::from(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(address.ifname, "eth0");
        assert_eq!(address.scope, Scope::Global);
    }

    #[test]
    fn ipv6_addresses_take_their_name_from_the_link_table() {
        let m = address_message(7, "fd00::1".parse().unwrap(), None);
        let name = String::from("veth7");
        let address = address_of(&m, |i| (i == 7).then_some(&name)).unwrap();
        assert_eq!(address.ifname, "veth7");
        assert!(address_of(&m, |_| None).is_none(), "unknown link: skipped");
    }

    #[test]
    fn an_overrun_becomes_a_resync_and_link_removal_is_reported() {
        let overrun =
            NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::Overrun(vec![]));
        assert_eq!(change_of(overrun), Some(Change::Resync));
        let removed = NetlinkMessage::from(RouteNetlinkMessage::DelLink(veth_message()));
        assert_eq!(
            change_of(removed),
            Some(Change::Link {
                ifindex: 7,
                name: "veth7".into(),
                removed: true
            })
        );
        let added = NetlinkMessage::from(RouteNetlinkMessage::NewAddress(address_message(
            7,
            "10.1.0.1".parse().unwrap(),
            Some("veth7"),
        )));
        assert_eq!(
            change_of(added),
            Some(Change::Address {
                ifindex: 7,
                ip: "10.1.0.1".parse().unwrap(),
                prefix_len: 24,
                removed: false
            })
        );
    }

    #[test]
    fn subscribing_outside_a_runtime_is_an_error_not_a_panic() {
        let err = RtNetlink::new().subscribe().unwrap_err();
        assert!(matches!(err, HostNetError::NoRuntime), "{err}");
    }

    #[test]
    fn names_the_kernel_would_refuse_are_not_found() {
        let net = RtNetlink::new();
        assert_eq!(net.link_index("").unwrap(), None);
        assert_eq!(net.link_index("a-name-far-too-long").unwrap(), None);
    }
}
