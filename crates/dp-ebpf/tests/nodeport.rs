//! tc NodePort / LoadBalancer path on the real kernel:
//!
//! ```text
//!  client ns (10.77.0.2) ──veth── node ns: ext0 10.77.0.1 | pod0 10.78.0.1 ──veth── pod ns (10.78.0.2:8080)
//! ```
//! The dataplane runs in the node namespace, finds `ext0` from the NodePort address, and the
//! pod answers with its name and the client address it saw. Needs root (skipped otherwise).

mod common;

use std::io::ErrorKind;
use std::net::SocketAddr;

use anyhow::Result;
use common::*;
use sluice_dataplane::Dataplane;
use sluice_dp_ebpf::EbpfDataplane;
use sluice_plan::Protocol;

// Drop order: dataplane pins first, then cgroup, then namespaces.
struct Topo {
    _guard: PinGuard,
    cg: TestCgroup,
    node: Netns,
    client: Netns,
    _pod: Netns,
    config: sluice_dp_ebpf::EbpfConfig,
}

fn topo() -> Result<Topo> {
    let node = Netns::new("n")?;
    let client = Netns::new("c")?;
    let pod = Netns::new("p")?;
    node.ip(&format!(
        "link add ext0 type veth peer name eth0 netns {}",
        client.name
    ))?;
    node.ip(&format!(
        "link add pod0 type veth peer name eth0 netns {}",
        pod.name
    ))?;
    node.ip("addr add 10.77.0.1/24 dev ext0")?;
    node.ip("addr add 10.78.0.1/24 dev pod0")?;
    node.ip("link set ext0 up")?;
    node.ip("link set pod0 up")?;
    client.ip("addr add 10.77.0.2/24 dev eth0")?;
    client.ip("link set eth0 up")?;
    // The LB IP is routed to the node, as a cloud LB would.
    client.ip("route add 10.77.0.100/32 via 10.77.0.1")?;
    pod.ip("addr add 10.78.0.2/24 dev eth0")?;
    pod.ip("link set eth0 up")?;
    pod.ip("route add default via 10.78.0.1")?;
    node.ip("addr add fd77::1/64 dev ext0 nodad")?;
    node.ip("addr add fd78::1/64 dev pod0 nodad")?;
    client.ip("addr add fd77::2/64 dev eth0 nodad")?;
    pod.ip("addr add fd78::2/64 dev eth0 nodad")?;
    pod.ip("route add default via fd78::1")?;
    sh(&format!(
        "ip netns exec {n} sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1",
        n = node.name
    ))?;
    tcp_echo(&pod.name, "0.0.0.0:8080".parse()?, "pod1");
    tcp_echo(&pod.name, "[fd78::2]:8080".parse()?, "pod1");
    tcp_line_echo(&pod.name, "0.0.0.0:9090".parse()?, "pod1-lines");
    let cg = TestCgroup::new()?;
    let config = ebpf_config(&cg, vec![]);
    Ok(Topo {
        _guard: PinGuard {
            config: config.clone(),
            ns: node.name.clone(),
        },
        cg,
        node,
        client,
        _pod: pod,
        config,
    })
}

fn desired(etp: TrafficPolicy, with_endpoint: bool, ranges: &[&str]) -> DesiredState {
    let eps = if with_endpoint {
        vec![ep("10.78.0.2", 8080, true)]
    } else {
        vec![]
    };
    let mut eps = eps;
    if with_endpoint {
        eps.push(ep("fd78::2", 8080, true));
    }
    let mut d = DesiredState {
        node_port_addresses: vec![
            "10.77.0.1".parse().expect("ip"),
            "fd77::1".parse().expect("ip"),
        ],
        ..Default::default()
    };
    d.services.insert(
        spn("web", Protocol::Tcp),
        ServicePortState {
            port: 80,
            // Dual-stack: NodePorts are served in the families the Service has.
            cluster_ips: vec![
                "10.96.0.10".parse().expect("ip"),
                "fd96::10".parse().expect("ip"),
            ],
            node_port: Some(30080),
            load_balancer_ips: vec!["10.77.0.100".parse().expect("ip")],
            load_balancer_source_ranges: ranges.iter().map(|r| r.parse().expect("cidr")).collect(),
            external_traffic_policy: etp,
            endpoints: eps,
            ..Default::default()
        },
    );
    d
}

fn apply(t: &Topo, dp: &mut EbpfDataplane, d: &DesiredState) -> Result<()> {
    let plan = d.plan();
    in_ns(&t.node.name, || dp.resync(&plan))?;
    Ok(())
}

fn new_dp(t: &Topo) -> Result<EbpfDataplane> {
    let config = t.config.clone();
    Ok(in_ns(&t.node.name, || EbpfDataplane::new(config))?)
}

fn get(t: &Topo, addr: &str) -> Result<String> {
    let addr: SocketAddr = addr.parse()?;
    tcp_get(&t.client.name, addr)
}

macro_rules! root_only {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root");
            return Ok(());
        }
    };
}

#[test]
fn nodeport_local_policy_preserves_client_ip() -> Result<()> {
    root_only!();
    let t = topo()?;
    let mut dp = new_dp(&t)?;
    apply(&t, &mut dp, &desired(TrafficPolicy::Local, true, &[]))?;
    assert_eq!(
        dp.attached_interfaces().len(),
        1,
        "ext0 found from the NodePort address"
    );
    assert_eq!(dp.attached_interfaces()[0].0, "ext0");
    for _ in 0..3 {
        assert_eq!(get(&t, "10.77.0.1:30080")?, "pod1 10.77.0.2");
    }
    in_ns(&t.node.name, || dp.cleanup())?;
    Ok(())
}

#[test]
fn nodeport_cluster_policy_masquerades() -> Result<()> {
    root_only!();
    let t = topo()?;
    let mut dp = new_dp(&t)?;
    apply(&t, &mut dp, &desired(TrafficPolicy::Cluster, true, &[]))?;
    // The pod sees the node (masquerade to the address facing the pod).
    assert_eq!(get(&t, "10.77.0.1:30080")?, "pod1 10.78.0.1");
    in_ns(&t.node.name, || dp.cleanup())?;
    Ok(())
}

#[test]
fn nodeport_from_the_node_itself_uses_socket_lb() -> Result<()> {
    root_only!();
    let t = topo()?;
    let mut dp = new_dp(&t)?;
    apply(&t, &mut dp, &desired(TrafficPolicy::Local, true, &[]))?;
    let out = t.cg.python(
        &t.node,
        "
import socket
s = socket.create_connection(('10.77.0.1', 30080), timeout=3)
print(s.recv(100).decode().strip())
",
    )?;
    assert_eq!(out, "pod1 10.78.0.1");
    in_ns(&t.node.name, || dp.cleanup())?;
    Ok(())
}

#[test]
fn nodeport_without_endpoints_is_refused() -> Result<()> {
    root_only!();
    let t = topo()?;
    let mut dp = new_dp(&t)?;
    apply(&t, &mut dp, &desired(TrafficPolicy::Cluster, false, &[]))?;
    let err = get(&t, "10.77.0.1:30080").expect_err("must not connect");
    let kind = err.downcast_ref::<std::io::Error>().map(|e| e.kind());
    assert_eq!(kind, Some(ErrorKind::ConnectionRefused), "{err}");
    in_ns(&t.node.name, || dp.cleanup())?;
    Ok(())
}

#[test]
fn load_balancer_ip_and_source_ranges() -> Result<()> {
    root_only!();
    let t = topo()?;
    let mut dp = new_dp(&t)?;
    apply(
        &t,
        &mut dp,
        &desired(TrafficPolicy::Local, true, &["10.77.0.0/24"]),
    )?;
    assert_eq!(get(&t, "10.77.0.100:80")?, "pod1 10.77.0.2");

    apply(
        &t,
        &mut dp,
        &desired(TrafficPolicy::Local, true, &["10.99.0.0/16"]),
    )?;
    let err = get(&t, "10.77.0.100:80").expect_err("outside the source ranges");
    let kind = err.downcast_ref::<std::io::Error>().map(|e| e.kind());
    assert!(
        matches!(kind, Some(ErrorKind::TimedOut | ErrorKind::WouldBlock)),
        "dropped, not refused: {err}"
    );
    in_ns(&t.node.name, || dp.cleanup())?;
    Ok(())
}

fn with_lines_port(mut d: DesiredState) -> DesiredState {
    let mut svc = d
        .services
        .get(&spn("web", Protocol::Tcp))
        .cloned()
        .expect("web");
    svc.port = 90;
    svc.cluster_ips = vec!["10.96.0.11".parse().expect("ip")];
    svc.node_port = Some(30090);
    svc.load_balancer_ips.clear();
    for ep in &mut svc.endpoints {
        ep.port = 9090;
    }
    d.services.insert(spn("lines", Protocol::Tcp), svc);
    d
}

#[test]
fn forwarding_continues_while_the_agent_is_down() -> Result<()> {
    root_only!();
    let t = topo()?;
    let d = with_lines_port(desired(TrafficPolicy::Local, true, &[]));
    let mut dp = new_dp(&t)?;
    apply(&t, &mut dp, &d)?;
    let (mut held, greeting) = Held::open(&t.client.name, "10.77.0.1:30090".parse()?)?;
    assert_eq!(greeting, "pod1-lines 10.77.0.2");
    assert_eq!(held.send("before")?, "pod1-lines: before");
    drop(dp); // the agent dies: links and maps stay pinned
    assert_eq!(
        held.send("down")?,
        "pod1-lines: down",
        "established flow while down"
    );
    assert_eq!(
        get(&t, "10.77.0.1:30080")?,
        "pod1 10.77.0.2",
        "new flow while down"
    );
    let mut dp = new_dp(&t)?;
    in_ns(&t.node.name, || dp.restore())?;
    let stats = in_ns(&t.node.name, || dp.resync(&d.plan()))?;
    assert_eq!(
        stats.operations, 0,
        "restart with the same state rewrites nothing"
    );
    // The restarted agent took over the pinned links (BPF_LINK_UPDATE): no second copy.
    let count = in_ns(&t.node.name, || {
        attached_count(ifindex("ext0"), BPF_TCX_INGRESS)
    })?;
    assert_eq!(count, 1, "one tc ingress program on ext0");
    assert_eq!(
        held.send("after")?,
        "pod1-lines: after",
        "established flow after restart"
    );
    assert_eq!(
        get(&t, "10.77.0.1:30080")?,
        "pod1 10.77.0.2",
        "after restart"
    );
    in_ns(&t.node.name, || dp.cleanup())?;
    assert!(
        get(&t, "10.77.0.1:30080").is_err(),
        "cleanup detached everything"
    );
    Ok(())
}

#[test]
fn ipv6_nodeport_both_policies() -> Result<()> {
    root_only!();
    let t = topo()?;
    let mut dp = new_dp(&t)?;
    apply(&t, &mut dp, &desired(TrafficPolicy::Local, true, &[]))?;
    assert_eq!(get(&t, "[fd77::1]:30080")?, "pod1 fd77::2");
    apply(&t, &mut dp, &desired(TrafficPolicy::Cluster, true, &[]))?;
    assert_eq!(get(&t, "[fd77::1]:30080")?, "pod1 fd78::1");
    in_ns(&t.node.name, || dp.cleanup())?;
    Ok(())
}

#[test]
fn xdp_generic_accelerates_the_same_paths() -> Result<()> {
    root_only!();
    let mut t = topo()?;
    t.config.xdp = sluice_dp_ebpf::XdpMode::Generic;
    // XDP's incremental checksum update needs full checksums from the sender.
    sh(&format!(
        "ip netns exec {} ethtool -K eth0 tx off >/dev/null",
        t.client.name
    ))?;
    let mut dp = new_dp(&t)?;
    apply(&t, &mut dp, &desired(TrafficPolicy::Local, true, &[]))?;
    let link = t.node.ip("link show ext0")?;
    assert!(link.contains("xdpgeneric"), "XDP attached: {link}");
    assert_eq!(get(&t, "10.77.0.1:30080")?, "pod1 10.77.0.2");
    assert_eq!(get(&t, "[fd77::1]:30080")?, "pod1 fd77::2");
    // eTP=Cluster: XDP translates, tc turns the metadata into the masquerade mark.
    apply(&t, &mut dp, &desired(TrafficPolicy::Cluster, true, &[]))?;
    assert_eq!(get(&t, "10.77.0.1:30080")?, "pod1 10.78.0.1");
    assert_eq!(get(&t, "[fd77::1]:30080")?, "pod1 fd78::1");
    in_ns(&t.node.name, || dp.cleanup())?;
    let link = t.node.ip("link show ext0")?;
    assert!(!link.contains("xdp"), "cleanup detached XDP: {link}");
    Ok(())
}

#[test]
fn links_that_appear_later_are_attached_without_an_apply() -> Result<()> {
    root_only!();
    let t = topo()?;
    // The node address moves to a link created after the last apply.
    t.node.ip("addr del 10.77.0.1/24 dev ext0")?;
    t.node.ip("addr del fd77::1/64 dev ext0")?;
    t.node.ip("link set ext0 down")?;
    t.node.ip("link set ext0 name old0")?;
    let mut dp = new_dp(&t)?;
    apply(&t, &mut dp, &desired(TrafficPolicy::Local, true, &[]))?;
    assert!(
        dp.attached_interfaces().is_empty(),
        "no link has the address yet"
    );

    t.node.ip("link set old0 name ext0")?;
    t.node.ip("addr add 10.77.0.1/24 dev ext0")?;
    t.node.ip("link set ext0 up")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while dp.attached_interfaces().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(dp.attached_interfaces().len(), 1, "watcher attached ext0");
    assert_eq!(get(&t, "10.77.0.1:30080")?, "pod1 10.77.0.2");
    in_ns(&t.node.name, || dp.cleanup())?;
    Ok(())
}

/// `svc` pointing its endpoints at `port` of the pod.
fn retarget(d: &mut DesiredState, svc: &str, port: u16) {
    if let Some(s) = d.services.get_mut(&spn(svc, Protocol::Tcp)) {
        for ep in &mut s.endpoints {
            ep.port = port;
        }
    }
}

/// Another IPv4 NodePort service on the pod's port 8080.
fn add_node_port(d: &mut DesiredState, name: &str, cluster_ip: &str, node_port: u16) {
    d.services.insert(
        spn(name, Protocol::Tcp),
        ServicePortState {
            port: 80,
            cluster_ips: vec![cluster_ip.parse().expect("ip")],
            node_port: Some(node_port),
            external_traffic_policy: TrafficPolicy::Local,
            endpoints: vec![ep("10.78.0.2", 8080, true)],
            ..Default::default()
        },
    );
}

/// Requests to `addr` from the client in a loop until stopped; returns the failures.
fn background_traffic(
    t: &Topo,
    addr: &'static str,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<(usize, Vec<String>)>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&stop);
    let client = t.client.name.clone();
    let handle = std::thread::spawn(move || {
        let (mut ok, mut failures) = (0, Vec::new());
        while !flag.load(Ordering::SeqCst) {
            match tcp_get(&client, addr.parse().expect("addr")) {
                Ok(body) if body == "pod1 10.77.0.2" => ok += 1,
                other => failures.push(format!("{other:?}")),
            }
        }
        (ok, failures)
    });
    (stop, handle)
}

#[test]
fn maps_grow_into_new_pins_without_dropping_established_flows() -> Result<()> {
    root_only!();
    let mut t = topo()?;
    // Three Maglev tables (web v4 + v6, lines v4) in room for four; a tiny conntrack.
    t.config.map_sizes = format!("maglev={},ct=64", 4 * sluice_dp_ebpf::abi::MAGLEV_M).parse()?;
    let mut d = with_lines_port(desired(TrafficPolicy::Local, true, &[]));
    let mut dp = new_dp(&t)?;
    apply(&t, &mut dp, &d)?;
    let (mut held, greeting) = Held::open(&t.client.name, "10.77.0.1:30090".parse()?)?;
    assert_eq!(greeting, "pod1-lines 10.77.0.2");
    // `lines` moves to port 8080: new flows go there, the held one stays (conntrack).
    retarget(&mut d, "lines", 8080);
    apply(&t, &mut dp, &d)?;
    assert_eq!(get(&t, "10.77.0.1:30090")?, "pod1 10.77.0.2");
    assert_eq!(held.send("before")?, "pod1-lines: before");
    drop(dp);

    // A restart with a bigger conntrack: it grows into a new pin while loading, copying the
    // held flow's entries (without them its next packet would go to port 8080).
    t.config.map_sizes = "ct=16384".parse()?;
    let mut dp = new_dp(&t)?;
    let pins = &t.config.bpffs_path;
    assert!(pins.join("sl_ct_v1_g2").exists() && !pins.join("sl_ct_v1").exists());
    assert_eq!(held.send("after ct")?, "pod1-lines: after ct");
    in_ns(&t.node.name, || dp.restore())?;

    // Two more NodePorts need a fifth Maglev table: the automatically sized map grows while
    // clients keep connecting.
    let (stop, traffic) = background_traffic(&t, "10.77.0.1:30080");
    std::thread::sleep(std::time::Duration::from_millis(300));
    add_node_port(&mut d, "extra1", "10.96.0.12", 30091);
    add_node_port(&mut d, "extra2", "10.96.0.13", 30092);
    let report = in_ns(&t.node.name, || dp.resync(&d.plan()))?;
    assert!(report.failed.is_empty(), "{report:?}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failures) = traffic.join().expect("traffic thread");
    assert!(
        failures.is_empty() && ok > 0,
        "{ok} ok, failed: {failures:?}"
    );
    assert!(pins.join("sl_maglev_v1_g2").exists() && !pins.join("sl_maglev_v1").exists());
    for port in [30091, 30092] {
        assert_eq!(get(&t, &format!("10.77.0.1:{port}"))?, "pod1 10.77.0.2");
    }
    pinned_state_reads_the_grown_maps(&t)?;
    assert_eq!(held.send("after maglev")?, "pod1-lines: after maglev");
    // One set of programs on the interface, and new flows land in the grown conntrack.
    let count = in_ns(&t.node.name, || {
        attached_count(ifindex("ext0"), BPF_TCX_INGRESS)
    })?;
    assert_eq!(count, 1);
    let occupancy = dp.occupancy();
    let of = |map| occupancy.iter().find(|o| o.map == map).expect("map");
    let ct = of(sluice_dp_ebpf::abi::MapKind::Ct);
    assert_eq!(ct.capacity, 16384);
    assert!(ct.entries >= 2, "{ct:?}");
    let maglev = of(sluice_dp_ebpf::abi::MapKind::Maglev);
    assert_eq!(maglev.entries, 5 * sluice_dp_ebpf::abi::MAGLEV_M as usize);
    assert!(maglev.capacity as usize > maglev.entries, "{maglev:?}");
    in_ns(&t.node.name, || dp.cleanup())?;
    Ok(())
}

/// `read_pinned` (what `sluice inspect` shows) on the grown generations: the NodePort added
/// by the growth forwards to the pod, the client's flows are there in their original
/// direction.
fn pinned_state_reads_the_grown_maps(t: &Topo) -> Result<()> {
    use sluice_dp_ebpf::readback::EntryAction;
    use sluice_plan::{Family, FrontendAddr};
    let state = sluice_dp_ebpf::read_pinned(&t.config.bpffs_path, sluice_dp_ebpf::ReadFlows::Yes)?
        .expect("pinned");
    assert_eq!(
        state.nodeport_addresses,
        ["10.77.0.1".parse::<std::net::IpAddr>()?, "fd77::1".parse()?]
    );
    let extra = state
        .frontends
        .iter()
        .find(|f| f.key.addr == FrontendAddr::NodePorts(Family::V4) && f.key.port == 30092)
        .expect("NodePort 30092");
    let ext = extra.ext.as_ref().expect("ext entry");
    assert_eq!(
        ext.action,
        EntryAction::Forward {
            backends: vec!["10.78.0.2:8080".parse()?],
            masquerade: false
        }
    );
    assert!(ext.maglev);
    let client: std::net::IpAddr = "10.77.0.2".parse()?;
    let frontend: std::net::SocketAddr = "10.77.0.1:30092".parse()?;
    let backend: std::net::SocketAddr = "10.78.0.2:8080".parse()?;
    let to_extra: Vec<_> = state
        .flows
        .iter()
        .filter(|f| f.frontend == frontend && f.client.ip() == client)
        .collect();
    assert!(!to_extra.is_empty(), "{:?}", state.flows);
    assert!(
        to_extra.iter().all(|f| f.backend == backend),
        "{to_extra:?}"
    );
    Ok(())
}
