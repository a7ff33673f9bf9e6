use std::net::IpAddr;

/// What the agent knows about its own node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node name as in `EndpointSlice.endpoints[].nodeName` (`--hostname-override`).
    pub name: String,
    /// `topology.kubernetes.io/zone` label of the Node object, if any.
    pub zone: Option<String>,
    /// The node's own addresses (Node `status.addresses` plus local interface addresses),
    /// before any `--nodeport-addresses` filtering.
    pub addresses: Vec<IpAddr>,
}
