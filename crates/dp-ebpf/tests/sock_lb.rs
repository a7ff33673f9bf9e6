//! Socket-level load balancing, on the real kernel: processes in the test cgroup connecting to
//! a ClusterIP reach a backend listener inside a network namespace the test created.
//! Needs root (skipped otherwise).

mod common;

use std::collections::BTreeSet;

use anyhow::Result;
use common::*;
use sluice_dataplane::Dataplane;
use sluice_dp_ebpf::EbpfDataplane;
use sluice_plan::Protocol;

const TCP_CLIENT: &str = "
import socket
s = socket.socket()
s.settimeout(3)
try:
    s.connect(('10.96.0.10', 80))
except OSError as e:
    print('ERR', e.errno)
    raise SystemExit(0)
peer = s.getpeername()
print(peer[0], peer[1], s.recv(100).decode().strip())
";

// Field order is drop order: unpin first, then the cgroup, then the namespace.
struct Setup {
    _guard: PinGuard,
    cg: TestCgroup,
    ns: Netns,
    config: sluice_dp_ebpf::EbpfConfig,
}

fn setup() -> Result<Setup> {
    let ns = Netns::new("s")?;
    // Backend addresses on the namespace's loopback (no dummy module on these machines).
    ns.ip("addr add 10.0.0.2/32 dev lo")?;
    ns.ip("addr add 10.0.0.3/32 dev lo")?;
    ns.ip("addr add fd00::2/128 dev lo nodad")?;
    tcp_echo(&ns.name, "10.0.0.2:8080".parse()?, "be-a");
    tcp_echo(&ns.name, "10.0.0.3:8080".parse()?, "be-b");
    udp_echo(&ns.name, "10.0.0.2:5353".parse()?, "udp-a");
    tcp_echo(&ns.name, "[fd00::2]:8080".parse()?, "be-v6");
    let cg = TestCgroup::new()?;
    let config = ebpf_config(&cg, vec![]);
    let guard = PinGuard {
        config: config.clone(),
        ns: ns.name.clone(),
    };
    Ok(Setup {
        ns,
        cg,
        _guard: guard,
        config,
    })
}

fn web(endpoints: &[(&str, u16)], affinity: Option<u32>) -> DesiredState {
    let eps: Vec<_> = endpoints
        .iter()
        .map(|(ip, port)| ep(ip, *port, true))
        .collect();
    let mut d = DesiredState::default();
    d.services.insert(
        spn("web", Protocol::Tcp),
        ServicePortState {
            port: 80,
            cluster_ips: vec!["10.96.0.10".parse().expect("ip")],
            session_affinity_timeout: affinity,
            endpoints: eps,
            ..Default::default()
        },
    );
    d.services.insert(
        spn("dns", Protocol::Udp),
        ServicePortState {
            port: 53,
            cluster_ips: vec!["10.96.0.53".parse().expect("ip")],
            endpoints: vec![ep("10.0.0.2", 5353, true)],
            ..Default::default()
        },
    );
    d
}

fn two_backends() -> DesiredState {
    web(&[("10.0.0.2", 8080), ("10.0.0.3", 8080)], None)
}

#[test]
fn clusterip_tcp_reaches_every_backend_and_hides_it() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let s = setup()?;
    let mut dp = EbpfDataplane::new(s.config.clone())?;
    dp.restore()?;
    dp.resync(&two_backends().plan())?;

    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        let out = s.cg.python(&s.ns, TCP_CLIENT)?;
        let parts: Vec<&str> = out.split_whitespace().collect();
        // getpeername shows the service, the body names the backend.
        assert_eq!(
            parts.get(..2),
            Some(&["10.96.0.10", "80"][..]),
            "output: {out}"
        );
        seen.insert(parts[2].to_string());
    }
    assert_eq!(
        seen,
        BTreeSet::from(["be-a".to_string(), "be-b".to_string()])
    );

    // A process outside the cgroup is not translated (nothing listens on the ClusterIP).
    assert!(tcp_get(&s.ns.name, "10.96.0.10:80".parse()?).is_err());
    in_ns(&s.ns.name, || dp.cleanup())?;
    Ok(())
}

#[test]
fn clusterip_udp_unconnected_reply_comes_from_the_service() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let s = setup()?;
    let mut dp = EbpfDataplane::new(s.config.clone())?;
    dp.resync(&two_backends().plan())?;
    let out = s.cg.python(
        &s.ns,
        "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(b'q', ('10.96.0.53', 53))
data, peer = s.recvfrom(100)
print(peer[0], peer[1], data.decode().strip())
",
    )?;
    assert_eq!(out, "10.96.0.53 53 udp-a 10.0.0.2");
    in_ns(&s.ns.name, || dp.cleanup())?;
    Ok(())
}

#[test]
fn session_affinity_sticks_to_one_backend() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let s = setup()?;
    let mut dp = EbpfDataplane::new(s.config.clone())?;
    dp.resync(&web(&[("10.0.0.2", 8080), ("10.0.0.3", 8080)], Some(300)).plan())?;
    let mut seen = BTreeSet::new();
    for _ in 0..10 {
        let out = s.cg.python(&s.ns, TCP_CLIENT)?;
        seen.insert(
            out.split_whitespace()
                .nth(2)
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert_eq!(seen.len(), 1, "affinity broken: {seen:?}");
    in_ns(&s.ns.name, || dp.cleanup())?;
    Ok(())
}

#[test]
fn service_without_endpoints_is_refused() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let s = setup()?;
    let mut dp = EbpfDataplane::new(s.config.clone())?;
    dp.resync(&web(&[], None).plan())?;
    let start = std::time::Instant::now();
    let out = s.cg.python(&s.ns, TCP_CLIENT)?;
    assert_eq!(
        out,
        format!("ERR {}", libc::ECONNREFUSED),
        "refused like a RST"
    );
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "refusal must be immediate"
    );
    in_ns(&s.ns.name, || dp.cleanup())?;
    Ok(())
}

#[test]
fn forwarding_survives_the_agent_and_restore_is_incremental() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let s = setup()?;
    {
        let mut dp = EbpfDataplane::new(s.config.clone())?;
        dp.restore()?;
        let stats = dp.resync(&two_backends().plan())?;
        assert!(stats.operations > 0);
    } // the "agent" is gone: programs and maps stay pinned
    let out = s.cg.python(&s.ns, TCP_CLIENT)?;
    assert!(out.starts_with("10.96.0.10 80 be-"), "while down: {out}");

    let mut dp = EbpfDataplane::new(s.config.clone())?;
    dp.restore()?;
    let stats = dp.resync(&two_backends().plan())?;
    assert_eq!(
        stats.operations, 0,
        "restart with the same state rewrites nothing"
    );
    // The restarted agent took over its pinned links (BPF_LINK_UPDATE): no second copy.
    let cgroup = std::fs::File::open(&s.cg.path)?;
    assert_eq!(
        attached_count(
            std::os::fd::AsRawFd::as_raw_fd(&cgroup) as u32,
            BPF_CGROUP_INET4_CONNECT
        )?,
        1
    );

    let stats = dp.resync(&web(&[("10.0.0.3", 8080)], None).plan())?;
    // Slot 0 now holds be-b, slot 1 is deleted, the count is updated on the ClusterIP entry
    // (socket and external scope): nothing else.
    assert_eq!(stats.operations, 4, "{stats:?}");
    for _ in 0..5 {
        let out = s.cg.python(&s.ns, TCP_CLIENT)?;
        assert_eq!(out, "10.96.0.10 80 be-b 10.0.0.3");
    }

    in_ns(&s.ns.name, || dp.cleanup())?;
    assert!(!s.config.bpffs_path.exists(), "pins removed");
    let out = s.cg.python(&s.ns, TCP_CLIENT)?;
    assert!(
        out.starts_with("ERR"),
        "after cleanup nothing is translated: {out}"
    );
    Ok(())
}

#[test]
fn dual_stack_and_v4_mapped_sockets() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let s = setup()?;
    let mut dp = EbpfDataplane::new(s.config.clone())?;
    let mut d = web(&[("10.0.0.2", 8080)], None);
    if let Some(svc) = d.services.get_mut(&spn("web", Protocol::Tcp)) {
        svc.cluster_ips.push("fd00:96::10".parse()?);
        svc.endpoints.push(ep("fd00::2", 8080, true));
    }
    dp.resync(&d.plan())?;
    let client = |addr: &str| {
        format!(
            "
import socket
s = socket.socket(socket.AF_INET6)
s.settimeout(3)
s.connect(('{addr}', 80))
print(s.getpeername()[0], s.recv(100).decode().strip())
"
        )
    };
    // Native IPv6 ClusterIP: the IPv6 endpoint only.
    assert_eq!(
        s.cg.python(&s.ns, &client("fd00:96::10"))?,
        "fd00:96::10 be-v6 fd00::2"
    );
    // An IPv6 socket reaching the IPv4 ClusterIP through a v4-mapped address.
    assert_eq!(
        s.cg.python(&s.ns, &client("::ffff:10.96.0.10"))?,
        "::ffff:10.96.0.10 be-a 10.0.0.2"
    );
    in_ns(&s.ns.name, || dp.cleanup())?;
    Ok(())
}

#[test]
fn a_dropped_frontend_fails_at_once_with_eperm_instead_of_leaving_the_node() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let s = setup()?;
    let mut dp = EbpfDataplane::new(s.config.clone())?;
    // internalTrafficPolicy: Local with the only endpoint on another node: the plan drops
    // this node's connections. Untranslated, they would leave the node for the ClusterIP.
    let mut d = web(&[], None);
    d.services.insert(
        spn("web", Protocol::Tcp),
        ServicePortState {
            port: 80,
            cluster_ips: vec!["10.96.0.10".parse()?],
            internal_traffic_policy: TrafficPolicy::Local,
            endpoints: vec![ep("10.0.0.2", 8080, false)],
            ..Default::default()
        },
    );
    if let Some(dns) = d.services.get_mut(&spn("dns", Protocol::Udp)) {
        dns.internal_traffic_policy = TrafficPolicy::Local;
        dns.endpoints = vec![ep("10.0.0.2", 5353, false)];
    }
    dp.resync(&d.plan())?;
    let start = std::time::Instant::now();
    assert_eq!(
        s.cg.python(&s.ns, TCP_CLIENT)?,
        format!("ERR {}", libc::EPERM)
    );
    let udp = s.cg.python(
        &s.ns,
        "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b'q', ('10.96.0.53', 53))
    print('sent')
except OSError as e:
    print('ERR', e.errno)
",
    )?;
    assert_eq!(udp, format!("ERR {}", libc::EPERM));
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "no waiting"
    );
    in_ns(&s.ns.name, || dp.cleanup())?;
    Ok(())
}
