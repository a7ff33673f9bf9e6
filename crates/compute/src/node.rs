//! What the agent knows about its own node, and where NodePorts are served.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use sluice_model::NodeInfo;

use crate::{Problem, Warning, sorted_unique};

/// Label carrying the node's zone (used by topology hints).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// [`NodeInfo`] from the own Node object (`status.addresses` of type InternalIP/ExternalIP,
/// zone label) plus the local interface addresses the agent found. Unparsable Node
/// addresses are skipped; use [`node_info_checked`] to get them reported.
pub fn node_info(name: &str, node: Option<&Node>, local_addresses: &[IpAddr]) -> NodeInfo {
    node_info_checked(name, node, local_addresses).0
}

/// Like [`node_info`], also returning a warning per unparsable Node address.
pub fn node_info_checked(
    name: &str,
    node: Option<&Node>,
    local_addresses: &[IpAddr],
) -> (NodeInfo, Vec<Warning>) {
    let mut warnings = Vec::new();
    let mut addresses = local_addresses.to_vec();
    let zone = node
        .and_then(|n| n.metadata.labels.as_ref())
        .and_then(|labels| labels.get(ZONE_LABEL))
        .filter(|zone| !zone.is_empty())
        .cloned();
    let node_addresses = node
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    for address in node_addresses {
        // Hostname / InternalDNS / ExternalDNS entries are names, not addresses.
        if address.type_ != "InternalIP" && address.type_ != "ExternalIP" {
            continue;
        }
        match address.address.parse::<IpAddr>() {
            Ok(ip) => addresses.push(ip),
            Err(source) => warnings.push(Warning::new(
                format!("Node {name}"),
                &Problem::InvalidIp {
                    field: "status.addresses[].address",
                    value: address.address.clone(),
                    source,
                },
            )),
        }
    }
    let info = NodeInfo {
        name: name.to_owned(),
        zone,
        addresses: sorted_unique(addresses),
    };
    (info, warnings)
}

/// Node addresses inside the `--nodeport-addresses` CIDRs, sorted and de-duplicated. As
/// kube-proxy's per-family proxiers: the CIDRs of each family filter the addresses of that
/// family, and a family without any CIDR serves NodePorts on all its addresses.
pub fn node_port_addresses(addresses: &[IpAddr], cidrs: &[IpNet]) -> Vec<IpAddr> {
    let selected = addresses
        .iter()
        .filter(|ip| {
            let mut of_family = cidrs
                .iter()
                .filter(|cidr| cidr.addr().is_ipv4() == ip.is_ipv4())
                .peekable();
            of_family.peek().is_none() || of_family.any(|cidr| cidr.contains(*ip))
        })
        .copied()
        .collect();
    sorted_unique(selected)
}
