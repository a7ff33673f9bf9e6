//! `conntrack` arguments that delete the entries of one stale flow (compute decides which
//! flows are stale; this only spells the deletion).

use sluice_plan::{Family, FrontendAddr, StaleFlow};

fn family_arg(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

/// `conntrack -D ...` arguments for `flow`.
pub fn delete_args(flow: &StaleFlow) -> Vec<String> {
    let mut args: Vec<String> = vec!["-D".into()];
    match flow {
        StaleFlow::Backend { protocol, ip, port } => {
            // Flows NATed to the backend: their reply comes from it.
            args.extend([
                "-p".into(),
                protocol.to_string(),
                "-f".into(),
                family_arg(Family::of(ip)).into(),
                "--reply-src".into(),
                ip.to_string(),
                "--reply-port-src".into(),
                port.to_string(),
            ]);
        }
        StaleFlow::Frontend { key } => {
            args.extend([
                "-p".into(),
                key.protocol.to_string(),
                "-f".into(),
                family_arg(key.family()).into(),
            ]);
            if let FrontendAddr::Ip(ip) = key.addr {
                args.extend(["--orig-dst".into(), ip.to_string()]);
            }
            args.extend(["--orig-port-dst".into(), key.port.to_string()]);
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use sluice_plan::{FrontendKey, Protocol};

    use super::*;

    #[test]
    fn backend_and_frontend_flows_become_conntrack_filters() {
        let backend = StaleFlow::Backend {
            protocol: Protocol::Udp,
            ip: "fd00::5".parse().unwrap(),
            port: 5353,
        };
        assert_eq!(
            delete_args(&backend).join(" "),
            "-D -p udp -f ipv6 --reply-src fd00::5 --reply-port-src 5353"
        );
        let node_port = StaleFlow::Frontend {
            key: FrontendKey {
                addr: FrontendAddr::NodePorts(Family::V4),
                protocol: Protocol::Udp,
                port: 30053,
            },
        };
        assert_eq!(
            delete_args(&node_port).join(" "),
            "-D -p udp -f ipv4 --orig-port-dst 30053"
        );
    }
}
