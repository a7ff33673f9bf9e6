//! The eBPF dataplane's pinned state (under `--bpffs-path`, read by
//! [`sluice_dp_ebpf::read_pinned`]) as a [`KernelView`]: each frontend's `sock` entry
//! (socket-LB, this node's own processes) is the `node` route, its `ext` entry (tc/XDP,
//! packets from elsewhere) the `outside` route, and its `ext-pods` entry, else `ext`, the
//! `pods` route. The maps carry no Service names.

use std::path::Path;

use sluice_dp_ebpf::abi::MAP_SVC;
use sluice_dp_ebpf::readback::{EntryAction, EntryState, FrontendState};
use sluice_dp_ebpf::{PinnedState, ReadFlows, read_pinned};

use super::InspectError;
use super::conntrack::Flow;
use super::kernel::{KernelFrontend, KernelRoute, KernelView};

fn route(entry: Option<&EntryState>) -> KernelRoute {
    match entry.map(|e| &e.action) {
        Some(EntryAction::Forward {
            backends,
            masquerade,
        }) => KernelRoute::Forward {
            backends: backends.clone(),
            masquerade: *masquerade,
        },
        Some(EntryAction::Reject) => KernelRoute::Reject,
        // No entry for a class: nothing translates it (a frontend always has all of them).
        Some(EntryAction::Drop) | None => KernelRoute::Drop,
    }
}

fn flags(fe: &FrontendState) -> Vec<String> {
    let entries = [&fe.sock, &fe.ext, &fe.ext_pods];
    let mut out = Vec::new();
    let mut flag = |set: bool, name: &str| {
        if set {
            out.push(name.to_owned());
        }
    };
    let any = |test: fn(&EntryState) -> bool| entries.iter().any(|e| e.as_ref().is_some_and(test));
    flag(any(|e| e.affinity_timeout.is_some()), "affinity");
    flag(any(|e| e.maglev), "maglev");
    flag(fe.ext_pods.is_some(), "pods");
    flag(any(|e| !e.allowed_sources.is_empty()), "src-ranges");
    out
}

fn frontend(fe: &FrontendState) -> KernelFrontend {
    KernelFrontend {
        key: fe.key,
        service: None,
        location: format!("{MAP_SVC} {}", fe.key),
        pods: route(fe.pods()),
        node: route(fe.sock.as_ref()),
        outside: route(fe.ext.as_ref()),
        allowed_sources: fe
            .ext
            .as_ref()
            .map(|e| e.allowed_sources.clone())
            .unwrap_or_default(),
        flags: flags(fe),
    }
}

/// The view of the pinned state.
pub fn view(state: &PinnedState) -> KernelView {
    KernelView {
        dataplane: "ebpf".into(),
        frontends: state.frontends.iter().map(frontend).collect(),
        nodeport_addresses: state.nodeport_addresses.clone(),
        cluster_cidrs: state.pod_cidrs.clone(),
    }
}

/// Reads the pins under `dir`; `None` when nothing is pinned there.
pub fn read(dir: &Path) -> Result<Option<KernelView>, InspectError> {
    Ok(read_pinned(dir, ReadFlows::No)?.map(|state| view(&state)))
}

/// The external path's translated flows (socket-LB translates at `connect()` and keeps no
/// entry); `state` is `closed` or `masquerade`, `seconds` the time since the last packet.
pub fn flows(dir: &Path) -> Result<Vec<Flow>, InspectError> {
    let Some(state) = read_pinned(dir, ReadFlows::Yes)? else {
        return Ok(Vec::new());
    };
    Ok(state
        .flows
        .into_iter()
        .map(|f| {
            let state: Vec<&str> = [(f.closed, "closed"), (f.masquerade, "masquerade")]
                .into_iter()
                .filter_map(|(set, name)| set.then_some(name))
                .collect();
            Flow {
                protocol: f.protocol.to_string(),
                client: f.client,
                frontend: f.frontend,
                backend: f.backend,
                state: state.join(" "),
                seconds: f.idle.map(|d| d.as_secs()),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use ipnet::IpNet;
    use sluice_plan::Protocol;

    use super::*;

    /// The maps the dataplane renders for a plan, read back: the same routes.
    #[test]
    fn rendered_maps_read_back_as_the_plans_routes() {
        let yaml = include_str!("testdata/ebpf-objects.yaml");
        let plan = crate::inspect::tests::plan_of(yaml, "node-a", &["10.244.0.0/16"]);
        let view = view(&PinnedState::of_plan(&plan));
        let web = view
            .frontend("10.96.0.10".parse().unwrap(), Protocol::Tcp, 80)
            .expect("cluster IP");
        let both: [SocketAddr; 2] = [
            "10.244.1.2:8080".parse().unwrap(),
            "10.244.2.2:8080".parse().unwrap(),
        ];
        assert_eq!(web.node.backends(), both);
        // Pods keep their address, others are masqueraded.
        assert_eq!(
            web.pods,
            KernelRoute::Forward {
                backends: both.to_vec(),
                masquerade: false
            }
        );
        assert!(matches!(
            web.outside,
            KernelRoute::Forward {
                masquerade: true,
                ..
            }
        ));
        let lb = view
            .frontend("203.0.113.10".parse().unwrap(), Protocol::Tcp, 80)
            .expect("LB IP");
        assert_eq!(
            lb.allowed_sources,
            vec!["198.51.100.0/24".parse::<IpNet>().unwrap()]
        );
        assert!(lb.flags.contains(&"maglev".to_owned()), "{:?}", lb.flags);
        assert_eq!(
            lb.outside.backends(),
            ["10.244.1.2:8080".parse::<SocketAddr>().unwrap()]
        );
        // NodePorts: one address-less entry, answering on the node's NodePort addresses.
        assert_eq!(
            view.nodeport_addresses,
            vec!["192.0.2.11".parse::<std::net::IpAddr>().unwrap()]
        );
        let np = view
            .frontend("192.0.2.11".parse().unwrap(), Protocol::Tcp, 30080)
            .expect("NodePort on the node's address");
        assert_eq!(
            np.outside,
            KernelRoute::Drop,
            "eTP Local, no local endpoint"
        );
        assert_eq!(
            np.pods.backends(),
            ["10.244.2.2:8080".parse::<SocketAddr>().unwrap()],
            "pods use every endpoint"
        );
        assert!(
            view.frontend("192.0.2.12".parse().unwrap(), Protocol::Tcp, 30080)
                .is_none(),
            "another node's address"
        );
        let empty = view
            .frontend("10.96.0.11".parse().unwrap(), Protocol::Tcp, 80)
            .expect("no endpoints");
        assert_eq!(empty.node, KernelRoute::Reject);
        assert_eq!(
            view.cluster_cidrs,
            vec!["10.244.0.0/16".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn nothing_pinned_is_no_view_and_an_unreadable_pin_is_named() {
        let dir = std::env::temp_dir().join(format!("sluice-no-pins-{}", std::process::id()));
        assert_eq!(read(&dir).unwrap(), None);
        assert!(flows(&dir).unwrap().is_empty());
        // A file where the frontend map's pin should be (not a BPF object).
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("sl_svc_v1_g2"), "").unwrap();
        let err = read(&dir).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        let chain = sluice_dataplane::error_chain(&err);
        assert!(
            chain.starts_with(&format!(
                "cannot read the pinned map {}: ",
                dir.join("sl_svc_v1_g2").display()
            )),
            "{chain}"
        );
    }
}
