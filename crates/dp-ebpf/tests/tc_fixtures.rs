//! Packet fixture tests for the tc programs through `BPF_PROG_TEST_RUN`: an input frame and
//! the programmed maps give an expected output frame (checksums included), verdict and mark.
//! Needs root (skipped otherwise).

mod common;

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Result;
use common::*;
use sluice_dp_ebpf::{EbpfDataplane, TestRun, abi};
use sluice_plan::Protocol;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const NODE: &str = "172.18.0.2";
const CLIENT: &str = "198.51.100.7";
const OUTSIDER: &str = "203.0.113.9";
const LB_IP: &str = "192.0.2.10";

fn csum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv4/IPv6 + TCP (SYN) or UDP frame with valid checksums.
fn frame(proto: Protocol, src: (&str, u16), dst: (&str, u16), payload: &[u8]) -> Vec<u8> {
    frame_flags(proto, src, dst, payload, TCP_SYN)
}

const TCP_SYN: u8 = 0x02;
const TCP_FIN_ACK: u8 = 0x11;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// [`frame`] with these TCP flags.
fn frame_flags(
    proto: Protocol,
    src: (&str, u16),
    dst: (&str, u16),
    payload: &[u8],
    tcp_flags: u8,
) -> Vec<u8> {
    let s: IpAddr = src.0.parse().expect("ip");
    let d: IpAddr = dst.0.parse().expect("ip");
    let octets = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let mut l4 = Vec::new();
    l4.extend_from_slice(&src.1.to_be_bytes());
    l4.extend_from_slice(&dst.1.to_be_bytes());
    let proto_num = match proto {
        Protocol::Tcp => {
            l4.extend_from_slice(&1u32.to_be_bytes()); // seq
            l4.extend_from_slice(&0u32.to_be_bytes()); // ack
            l4.extend_from_slice(&[0x50, tcp_flags, 0xff, 0xff, 0, 0, 0, 0]); // csum at 16
            6u8
        }
        _ => {
            l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]); // csum at 6
            17u8
        }
    };
    l4.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&octets(s));
    pseudo.extend_from_slice(&octets(d));
    if s.is_ipv4() {
        pseudo.extend_from_slice(&[0, proto_num]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    } else {
        pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto_num]);
    }
    pseudo.extend_from_slice(&l4);
    let c = csum(&pseudo, 0).to_be_bytes();
    let at = if proto_num == 6 { 16 } else { 6 };
    l4[at..at + 2].copy_from_slice(&c);

    let (ethertype, ip) = if s.is_ipv4() {
        let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto_num, 0, 0];
        ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&octets(s));
        ip.extend_from_slice(&octets(d));
        let ic = csum(&ip, 0).to_be_bytes();
        ip[10..12].copy_from_slice(&ic);
        ([0x08, 0x00], ip)
    } else {
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        ip.extend_from_slice(&[proto_num, 64]);
        ip.extend_from_slice(&octets(s));
        ip.extend_from_slice(&octets(d));
        ([0x86, 0xdd], ip)
    };
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&l4);
    f
}

fn service(eps: Vec<Endpoint>, etp: TrafficPolicy) -> ServicePortState {
    ServicePortState {
        port: 80,
        cluster_ips: vec!["10.96.0.10".parse().expect("ip")],
        node_port: Some(30080),
        load_balancer_ips: vec![LB_IP.parse().expect("ip")],
        load_balancer_source_ranges: vec!["198.51.100.0/24".parse().expect("cidr")],
        external_traffic_policy: etp,
        endpoints: eps,
        ..Default::default()
    }
}

fn desired(proto: Protocol, svc: ServicePortState) -> DesiredState {
    let mut d = DesiredState {
        node_port_addresses: vec![NODE.parse().expect("ip")],
        ..Default::default()
    };
    d.services.insert(spn("web", proto), svc);
    d
}

/// NodePorts are served in the families a Service has cluster IPs of.
fn add_v6_cluster_ip(d: &mut DesiredState) {
    for svc in d.services.values_mut() {
        svc.cluster_ips.push("fd00:96::10".parse().expect("ip"));
    }
}

/// A dataplane in its own namespace (its masquerade table must not touch the host).
struct Fixture {
    dp: Option<EbpfDataplane>,
    programmer: Programmer,
    _guard: PinGuard,
    _cg: TestCgroup,
    ns: Netns,
}

impl Fixture {
    fn new() -> Result<Self> {
        Fixture::configured(|_| {})
    }

    /// A fixture whose maps have these explicit capacities (`--bpf-map-sizes` syntax).
    fn with_sizes(sizes: &str) -> Result<Self> {
        let sizes = sizes.parse()?;
        Fixture::configured(|c| c.map_sizes = sizes)
    }

    fn configured(change: impl FnOnce(&mut sluice_dp_ebpf::EbpfConfig)) -> Result<Self> {
        let ns = Netns::new("f")?;
        let cg = TestCgroup::new()?;
        let mut config = ebpf_config(&cg, vec![]);
        change(&mut config);
        let guard = PinGuard {
            config: config.clone(),
            ns: ns.name.clone(),
        };
        let dp = in_ns(&ns.name, || EbpfDataplane::new(config))?;
        Ok(Fixture {
            dp: Some(dp),
            programmer: Programmer::default(),
            _guard: guard,
            _cg: cg,
            ns,
        })
    }

    fn apply(&mut self, d: &DesiredState) -> Result<()> {
        self.apply_report(d).map(drop)
    }

    fn apply_report(&mut self, d: &DesiredState) -> Result<sluice_dataplane::ApplyReport> {
        let dp = self.dp.as_mut().expect("dp");
        let programmer = &mut self.programmer;
        in_ns(&self.ns.name, || programmer.program(dp, d))
    }

    fn run(&self, egress: bool, pkt: &[u8]) -> Result<TestRun> {
        Ok(self.dp.as_ref().expect("dp").test_run_tc(egress, pkt)?)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Drop the programs (and their map fds) before the pins go.
        self.dp.take();
    }
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
fn nodeport_tcp_dnat_masquerade_and_reverse_nat() -> Result<()> {
    root_only!();
    let mut fx = Fixture::new()?;
    fx.apply(&desired(
        Protocol::Tcp,
        service(vec![ep("10.244.2.2", 8080, false)], TrafficPolicy::Cluster),
    ))?;

    let syn = frame(Protocol::Tcp, (CLIENT, 40000), (NODE, 30080), b"");
    let out = fx.run(false, &syn)?;
    assert_eq!(out.verdict, TC_ACT_OK);
    assert_eq!(
        out.packet,
        frame(Protocol::Tcp, (CLIENT, 40000), ("10.244.2.2", 8080), b""),
        "DNAT to the backend with correct checksums"
    );
    assert_eq!(
        out.mark,
        abi::MASQ_MARK,
        "eTP=Cluster asks netfilter to masquerade"
    );

    // The reply leaving the node gets the frontend back as its source.
    let reply = frame(Protocol::Tcp, ("10.244.2.2", 8080), (CLIENT, 40000), b"");
    let out = fx.run(true, &reply)?;
    assert_eq!(out.verdict, TC_ACT_OK);
    assert_eq!(
        out.packet,
        frame(Protocol::Tcp, (NODE, 30080), (CLIENT, 40000), b"")
    );

    // Unrelated traffic is untouched in both directions.
    let other = frame(Protocol::Tcp, (CLIENT, 40000), (NODE, 22), b"");
    let out = fx.run(false, &other)?;
    assert_eq!((out.verdict, &out.packet, out.mark), (TC_ACT_OK, &other, 0));
    let other = frame(Protocol::Tcp, (NODE, 22), (CLIENT, 40000), b"");
    assert_eq!(fx.run(true, &other)?.packet, other);
    Ok(())
}

#[test]
fn udp_dnat_keeps_checksums_valid() -> Result<()> {
    root_only!();
    let mut fx = Fixture::new()?;
    fx.apply(&desired(
        Protocol::Udp,
        service(vec![ep("10.244.1.5", 5353, true)], TrafficPolicy::Cluster),
    ))?;
    let q = frame(Protocol::Udp, (CLIENT, 5000), (NODE, 30080), b"query");
    let out = fx.run(false, &q)?;
    assert_eq!(out.verdict, TC_ACT_OK);
    assert_eq!(
        out.packet,
        frame(
            Protocol::Udp,
            (CLIENT, 5000),
            ("10.244.1.5", 5353),
            b"query"
        )
    );
    Ok(())
}

#[test]
fn local_policy_keeps_client_ip_and_drops_without_local_endpoint() -> Result<()> {
    root_only!();
    let mut fx = Fixture::new()?;
    fx.apply(&desired(
        Protocol::Tcp,
        service(
            vec![ep("10.244.1.2", 8080, true), ep("10.244.2.2", 8080, false)],
            TrafficPolicy::Local,
        ),
    ))?;
    for sport in 40000..40020 {
        let syn = frame(Protocol::Tcp, (CLIENT, sport), (NODE, 30080), b"");
        let out = fx.run(false, &syn)?;
        assert_eq!(out.verdict, TC_ACT_OK);
        assert_eq!(
            out.packet,
            frame(Protocol::Tcp, (CLIENT, sport), ("10.244.1.2", 8080), b""),
            "only the local endpoint, source kept"
        );
        assert_eq!(out.mark, 0, "no masquerade for eTP=Local");
    }

    // Endpoints exist, but none on this node: drop (as kube-proxy).
    fx.apply(&desired(
        Protocol::Tcp,
        service(vec![ep("10.244.2.2", 8080, false)], TrafficPolicy::Local),
    ))?;
    let syn = frame(Protocol::Tcp, (CLIENT, 41000), (NODE, 30080), b"");
    assert_eq!(fx.run(false, &syn)?.verdict, TC_ACT_SHOT);
    Ok(())
}

/// The ICMP (v4: type 3 code 3) or ICMPv6 (type 1 code 4) port unreachable a client must
/// get back for `pkt`: MACs swapped, addresses swapped, the original header and the first 8
/// bytes after it quoted, checksums right.
fn port_unreachable(pkt: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&pkt[6..12]);
    f.extend_from_slice(&pkt[0..6]);
    f.extend_from_slice(&pkt[12..14]);
    if pkt[12..14] == [0x08, 0x00] {
        let quote = &pkt[14..14 + 28];
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(quote);
        let c = csum(&icmp, 0).to_be_bytes();
        icmp[2..4].copy_from_slice(&c);
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
        ip[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&pkt[14 + 16..14 + 20]);
        ip.extend_from_slice(&pkt[14 + 12..14 + 16]);
        let c = csum(&ip, 0).to_be_bytes();
        ip[10..12].copy_from_slice(&c);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&icmp);
    } else {
        let quote = &pkt[14..14 + 48];
        let (src, dst) = (&pkt[14 + 24..14 + 40], &pkt[14 + 8..14 + 24]);
        let mut icmp = vec![1, 4, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(quote);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(src);
        pseudo.extend_from_slice(dst);
        pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        pseudo.extend_from_slice(&icmp);
        let c = csum(&pseudo, 0).to_be_bytes();
        icmp[2..4].copy_from_slice(&c);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        f.extend_from_slice(&[58, 64]);
        f.extend_from_slice(src);
        f.extend_from_slice(dst);
        f.extend_from_slice(&icmp);
    }
    f
}

#[test]
fn no_endpoints_at_all_is_answered_with_icmp_port_unreachable() -> Result<()> {
    root_only!();
    let mut fx = Fixture::new()?;
    let mut d = desired(Protocol::Tcp, service(vec![], TrafficPolicy::Cluster));
    d.node_port_addresses.push("2001:db8::11".parse()?);
    add_v6_cluster_ip(&mut d);
    d.services.insert(
        spn("dns", Protocol::Udp),
        service(vec![], TrafficPolicy::Cluster),
    );
    fx.apply(&d)?;
    let probes = [
        // The node's own NodePort, a cluster IP and an LB IP the node does not own (the
        // stack would forward those into nothing): refused from tc alike.
        frame(Protocol::Tcp, (CLIENT, 40000), (NODE, 30080), b""),
        frame(Protocol::Tcp, (CLIENT, 40000), ("10.96.0.10", 80), b""),
        frame(Protocol::Tcp, (CLIENT, 40000), (LB_IP, 80), b""),
        frame(Protocol::Udp, (CLIENT, 5353), (NODE, 30080), b"query"),
        frame(
            Protocol::Tcp,
            ("2001:db8::100", 40000),
            ("2001:db8::11", 30080),
            b"",
        ),
        frame(
            Protocol::Tcp,
            ("2001:db8::100", 40000),
            ("fd00:96::10", 80),
            b"",
        ),
    ];
    for syn in &probes {
        let out = fx.run(false, syn)?;
        assert_eq!(out.verdict, TC_ACT_REDIRECT, "sent back out: {syn:?}");
        assert_eq!(out.packet, port_unreachable(syn));
        // XDP leaves refusals to tc.
        let out = fx.xdp(syn)?;
        assert_eq!((out.verdict, &out.packet), (XDP_PASS, syn));
    }
    // Source ranges come first: a client outside them is dropped, not told.
    let outsider = frame(Protocol::Tcp, (OUTSIDER, 40000), (LB_IP, 80), b"");
    assert_eq!(fx.run(false, &outsider)?.verdict, TC_ACT_SHOT);
    Ok(())
}

#[test]
fn load_balancer_source_ranges_are_enforced() -> Result<()> {
    root_only!();
    let mut fx = Fixture::new()?;
    fx.apply(&desired(
        Protocol::Tcp,
        service(vec![ep("10.244.2.2", 8080, false)], TrafficPolicy::Cluster),
    ))?;
    let allowed = frame(Protocol::Tcp, (CLIENT, 40000), (LB_IP, 80), b"");
    let out = fx.run(false, &allowed)?;
    assert_eq!(out.verdict, TC_ACT_OK);
    assert_eq!(
        out.packet,
        frame(Protocol::Tcp, (CLIENT, 40000), ("10.244.2.2", 8080), b"")
    );

    let denied = frame(Protocol::Tcp, (OUTSIDER, 40000), (LB_IP, 80), b"");
    assert_eq!(fx.run(false, &denied)?.verdict, TC_ACT_SHOT);
    // The ranges guard the LB IP only; the NodePort stays open (as kube-proxy).
    let np = frame(Protocol::Tcp, (OUTSIDER, 40000), (NODE, 30080), b"");
    assert_eq!(fx.run(false, &np)?.verdict, TC_ACT_OK);
    Ok(())
}

fn backend_of(pkt: &[u8]) -> (Ipv4Addr, u16) {
    let ip = Ipv4Addr::new(pkt[30], pkt[31], pkt[32], pkt[33]);
    (ip, u16::from_be_bytes([pkt[36], pkt[37]]))
}

#[test]
fn conntrack_keeps_flows_on_their_backend_and_maglev_is_stable() -> Result<()> {
    root_only!();
    let mut fx = Fixture::new()?;
    let eps = |n: u8| -> Vec<Endpoint> {
        (1..=n)
            .map(|i| ep(&format!("10.244.2.{i}"), 8080, false))
            .collect()
    };
    fx.apply(&desired(
        Protocol::Tcp,
        service(eps(3), TrafficPolicy::Cluster),
    ))?;
    let flows: Vec<Vec<u8>> = (0..40)
        .map(|i| frame(Protocol::Tcp, (CLIENT, 42000 + i), (NODE, 30080), b""))
        .collect();
    let first: Vec<_> = flows
        .iter()
        .map(|f| fx.run(false, f).map(|o| backend_of(&o.packet)))
        .collect::<Result<_>>()?;
    let distinct: std::collections::BTreeSet<_> = first.iter().collect();
    assert_eq!(distinct.len(), 3, "flows spread over all backends");

    // More backends: established flows (conntrack) keep theirs.
    fx.apply(&desired(
        Protocol::Tcp,
        service(eps(8), TrafficPolicy::Cluster),
    ))?;
    for (f, b) in flows.iter().zip(&first) {
        assert_eq!(backend_of(&fx.run(false, f)?.packet), *b);
    }

    // A fresh dataplane on the same node computes the same Maglev choice for new flows.
    let new_flow = frame(Protocol::Tcp, (CLIENT, 50000), (NODE, 30080), b"");
    let chosen = backend_of(&fx.run(false, &new_flow)?.packet);
    let mut fx2 = Fixture::new()?;
    fx2.apply(&desired(
        Protocol::Tcp,
        service(eps(8), TrafficPolicy::Cluster),
    ))?;
    assert_eq!(backend_of(&fx2.run(false, &new_flow)?.packet), chosen);
    Ok(())
}

#[test]
fn udp_flows_to_a_removed_backend_move_at_once() -> Result<()> {
    root_only!();
    let mut fx = Fixture::new()?;
    let all = vec![ep("10.244.2.1", 53, false), ep("10.244.2.2", 53, false)];
    fx.apply(&desired(
        Protocol::Udp,
        service(all.clone(), TrafficPolicy::Cluster),
    ))?;
    // Find a flow on 10.244.2.1, then remove that backend.
    let mut flow = None;
    for sport in 5000..5100 {
        let f = frame(Protocol::Udp, (CLIENT, sport), (NODE, 30080), b"q");
        if backend_of(&fx.run(false, &f)?.packet).0 == Ipv4Addr::new(10, 244, 2, 1) {
            flow = Some(f);
            break;
        }
    }
    let flow = flow.expect("some flow hashes to the first backend");
    fx.apply(&desired(
        Protocol::Udp,
        service(vec![all[1].clone()], TrafficPolicy::Cluster),
    ))?;
    assert_eq!(
        backend_of(&fx.run(false, &flow)?.packet).0,
        Ipv4Addr::new(10, 244, 2, 2)
    );
    Ok(())
}

#[test]
fn ipv6_nodeport_dnat_and_reverse_nat() -> Result<()> {
    root_only!();
    let mut fx = Fixture::new()?;
    let mut d = desired(
        Protocol::Tcp,
        service(
            vec![ep("fd00:10:244:2::5", 8080, false)],
            TrafficPolicy::Cluster,
        ),
    );
    d.node_port_addresses.push("2001:db8::11".parse()?);
    add_v6_cluster_ip(&mut d);
    fx.apply(&d)?;
    let client = "2001:db8::100";
    let syn = frame(Protocol::Tcp, (client, 40000), ("2001:db8::11", 30080), b"");
    let out = fx.run(false, &syn)?;
    assert_eq!(out.verdict, TC_ACT_OK);
    assert_eq!(
        out.packet,
        frame(
            Protocol::Tcp,
            (client, 40000),
            ("fd00:10:244:2::5", 8080),
            b""
        )
    );
    assert_eq!(out.mark, abi::MASQ_MARK);
    let reply = frame(
        Protocol::Udp,
        ("fd00:10:244:2::5", 8080),
        (client, 40000),
        b"x",
    );
    // Another protocol on the same ports has no conntrack entry: untouched.
    assert_eq!(fx.run(true, &reply)?.packet, reply);
    let reply = frame(
        Protocol::Tcp,
        ("fd00:10:244:2::5", 8080),
        (client, 40000),
        b"",
    );
    assert_eq!(
        fx.run(true, &reply)?.packet,
        frame(Protocol::Tcp, ("2001:db8::11", 30080), (client, 40000), b"")
    );
    // An IPv4 frontend never sends to an IPv6 backend: IPv4 has no endpoint at all, so, as in
    // kube-proxy's IPv4 proxier, it is rejected.
    let v4 = frame(Protocol::Tcp, (CLIENT, 40000), (NODE, 30080), b"");
    let out = fx.run(false, &v4)?;
    assert_eq!(
        (out.verdict, out.packet),
        (TC_ACT_REDIRECT, port_unreachable(&v4))
    );
    Ok(())
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

impl Fixture {
    fn xdp(&self, pkt: &[u8]) -> Result<TestRun> {
        Ok(self.dp.as_ref().expect("dp").test_run_xdp(pkt)?)
    }
}

#[test]
fn xdp_makes_the_same_decisions_with_valid_checksums() -> Result<()> {
    root_only!();
    let mut fx = Fixture::new()?;
    let mut d = desired(
        Protocol::Tcp,
        service(vec![ep("10.244.2.2", 8080, false)], TrafficPolicy::Cluster),
    );
    d.services.insert(
        spn("dns", Protocol::Udp),
        service(vec![ep("10.244.1.5", 5353, true)], TrafficPolicy::Local),
    );
    fx.apply(&d)?;

    // eTP=Cluster needs skb->mark: XDP leaves the packet to tc, which finds the conntrack
    // entry XDP created and translates and marks it.
    let syn = frame(Protocol::Tcp, (CLIENT, 40000), (NODE, 30080), b"");
    let out = fx.xdp(&syn)?;
    assert_eq!((out.verdict, &out.packet), (XDP_PASS, &syn));
    let out = fx.run(false, &syn)?;
    assert_eq!(
        out.packet,
        frame(Protocol::Tcp, (CLIENT, 40000), ("10.244.2.2", 8080), b"")
    );
    assert_eq!(out.mark, abi::MASQ_MARK);

    let q = frame(Protocol::Udp, (CLIENT, 5000), (NODE, 30080), b"query");
    let out = fx.xdp(&q)?;
    assert_eq!(out.verdict, XDP_PASS);
    assert_eq!(
        out.packet,
        frame(
            Protocol::Udp,
            (CLIENT, 5000),
            ("10.244.1.5", 5353),
            b"query"
        )
    );
    assert!(out.meta.is_empty(), "eTP=Local: no masquerade");

    // Source ranges and unrelated traffic.
    let denied = frame(Protocol::Tcp, (OUTSIDER, 40000), (LB_IP, 80), b"");
    assert_eq!(fx.xdp(&denied)?.verdict, XDP_DROP);
    let other = frame(Protocol::Tcp, (CLIENT, 40000), (NODE, 22), b"");
    let out = fx.xdp(&other)?;
    assert_eq!((out.verdict, &out.packet), (XDP_PASS, &other));

    // Conntrack is shared: the reply to the XDP-translated flow is reverse-NATed by tc.
    let reply = frame(Protocol::Tcp, ("10.244.2.2", 8080), (CLIENT, 40000), b"");
    assert_eq!(
        fx.run(true, &reply)?.packet,
        frame(Protocol::Tcp, (NODE, 30080), (CLIENT, 40000), b"")
    );
    Ok(())
}

#[test]
fn xdp_ipv6_dnat() -> Result<()> {
    root_only!();
    let mut fx = Fixture::new()?;
    let mut d = desired(
        Protocol::Tcp,
        service(
            vec![ep("fd00:10:244:1::5", 8080, true)],
            TrafficPolicy::Local,
        ),
    );
    d.node_port_addresses.push("2001:db8::11".parse()?);
    add_v6_cluster_ip(&mut d);
    fx.apply(&d)?;
    let syn = frame(
        Protocol::Tcp,
        ("2001:db8::100", 40000),
        ("2001:db8::11", 30080),
        b"",
    );
    let out = fx.xdp(&syn)?;
    assert_eq!(out.verdict, XDP_PASS);
    assert_eq!(
        out.packet,
        frame(
            Protocol::Tcp,
            ("2001:db8::100", 40000),
            ("fd00:10:244:1::5", 8080),
            b""
        )
    );
    Ok(())
}

#[test]
fn cluster_ip_from_outside_masquerades_only_off_cluster_sources() -> Result<()> {
    root_only!();
    let mut fx = Fixture::new()?;
    let mut d = desired(
        Protocol::Tcp,
        service(vec![ep("10.244.2.2", 8080, false)], TrafficPolicy::Local),
    );
    d.cluster_cidrs = vec!["10.244.0.0/16".parse()?];
    fx.apply(&d)?;
    let outside = frame(Protocol::Tcp, (CLIENT, 40000), ("10.96.0.10", 80), b"");
    let out = fx.run(false, &outside)?;
    assert_eq!(
        out.packet,
        frame(Protocol::Tcp, (CLIENT, 40000), ("10.244.2.2", 8080), b"")
    );
    assert_eq!(
        out.mark,
        abi::MASQ_MARK,
        "off-cluster source is masqueraded"
    );
    let pod = frame(
        Protocol::Tcp,
        ("10.244.3.5", 40000),
        ("10.96.0.10", 80),
        b"",
    );
    let out = fx.run(false, &pod)?;
    assert_eq!(
        out.packet,
        frame(
            Protocol::Tcp,
            ("10.244.3.5", 40000),
            ("10.244.2.2", 8080),
            b""
        )
    );
    assert_eq!(out.mark, 0, "pod source kept");
    Ok(())
}

#[test]
fn pods_from_other_nodes_get_the_pods_route_of_a_local_policy_node_port() -> Result<()> {
    root_only!();
    let mut fx = Fixture::new()?;
    // eTP=Local, the only endpoint on another node: outside clients are dropped here, pods
    // (of any node) are sent to the endpoint with their address kept.
    let mut d = desired(
        Protocol::Tcp,
        service(vec![ep("10.244.2.2", 8080, false)], TrafficPolicy::Local),
    );
    d.cluster_cidrs = vec!["10.244.0.0/16".parse()?];
    fx.apply(&d)?;
    let outside = frame(Protocol::Tcp, (CLIENT, 40000), (NODE, 30080), b"");
    assert_eq!(fx.run(false, &outside)?.verdict, TC_ACT_SHOT);
    let pod = frame(Protocol::Tcp, ("10.244.3.5", 40000), (NODE, 30080), b"");
    let out = fx.run(false, &pod)?;
    assert_eq!(out.verdict, TC_ACT_OK);
    assert_eq!(
        out.packet,
        frame(
            Protocol::Tcp,
            ("10.244.3.5", 40000),
            ("10.244.2.2", 8080),
            b""
        )
    );
    assert_eq!(out.mark, 0);
    // XDP makes the same two decisions.
    assert_eq!(fx.xdp(&outside)?.verdict, XDP_DROP);
    let pod = frame(Protocol::Tcp, ("10.244.3.6", 40000), (NODE, 30080), b"");
    let out = fx.xdp(&pod)?;
    assert_eq!(
        (out.verdict, out.packet),
        (
            XDP_PASS,
            frame(
                Protocol::Tcp,
                ("10.244.3.6", 40000),
                ("10.244.2.2", 8080),
                b""
            )
        )
    );
    Ok(())
}

#[test]
fn node_ports_follow_the_node_addresses_without_rewriting_frontends() -> Result<()> {
    root_only!();
    let mut fx = Fixture::new()?;
    let mut d = desired(
        Protocol::Tcp,
        service(vec![ep("10.244.2.2", 8080, false)], TrafficPolicy::Cluster),
    );
    fx.apply(&d)?;
    let at = |addr: &str| frame(Protocol::Tcp, (CLIENT, 40000), (addr, 30080), b"");
    let dnat = frame(Protocol::Tcp, (CLIENT, 40000), ("10.244.2.2", 8080), b"");
    assert_eq!(fx.run(false, &at(NODE))?.packet, dnat);
    // The node gets another address and loses the first: two writes, no frontend touched.
    d.node_port_addresses = vec!["172.18.0.3".parse()?];
    let report = fx.apply_report(&d)?;
    assert_eq!(report.operations, 2, "{report:?}");
    let out = fx.run(false, &at("172.18.0.3"))?;
    assert_eq!(
        out.packet,
        frame(Protocol::Tcp, (CLIENT, 40000), ("10.244.2.2", 8080), b"")
    );
    // (A new flow: the first one is in conntrack and keeps its translation.)
    let gone = frame(Protocol::Tcp, (CLIENT, 40001), (NODE, 30080), b"");
    let out = fx.run(false, &gone)?;
    assert_eq!(
        (out.verdict, &out.packet),
        (TC_ACT_OK, &gone),
        "no longer a NodePort address"
    );
    Ok(())
}

#[test]
fn a_full_conntrack_keeps_serving_new_flows() -> Result<()> {
    root_only!();
    // 64 entries: 32 flows' worth. The LRU evicts the oldest; new flows are never refused.
    let mut fx = Fixture::with_sizes("ct=64")?;
    fx.apply(&desired(
        Protocol::Tcp,
        service(
            vec![ep("10.244.2.1", 8080, false), ep("10.244.2.2", 8080, false)],
            TrafficPolicy::Cluster,
        ),
    ))?;
    let mut last = None;
    for sport in 20000..20300 {
        let syn = frame(Protocol::Tcp, (CLIENT, sport), (NODE, 30080), b"");
        let out = fx.run(false, &syn)?;
        assert_eq!(out.verdict, TC_ACT_OK, "flow {sport}");
        let backend = backend_of(&out.packet);
        assert_eq!(backend.1, 8080, "flow {sport} translated: {backend:?}");
        last = Some((sport, backend));
    }
    // The newest flow is tracked: its reply gets the frontend back.
    let (sport, (ip, port)) = last.expect("flows ran");
    let reply = frame(Protocol::Tcp, (&ip.to_string(), port), (CLIENT, sport), b"");
    assert_eq!(
        fx.run(true, &reply)?.packet,
        frame(Protocol::Tcp, (NODE, 30080), (CLIENT, sport), b"")
    );
    let ct = fx
        .dp
        .as_mut()
        .expect("dp")
        .occupancy()
        .into_iter()
        .find(|o| o.map == abi::MapKind::Ct)
        .expect("ct");
    assert_eq!(ct.capacity, 64);
    assert!(ct.entries <= 64, "{ct:?}");
    Ok(())
}

/// Three flows of `proto` from the client to the NodePort that Maglev sends to 10.244.2.2 once
/// that backend joins 10.244.2.1 (so a fresh decision is visible).
fn flows_moving_to_second_backend(fx: &Fixture, proto: Protocol) -> Result<[u16; 3]> {
    let mut found = Vec::new();
    for sport in 30000..30400 {
        let f = frame(proto, (CLIENT, sport), (NODE, 30080), b"q");
        if backend_of(&fx.run(false, &f)?.packet).0 == Ipv4Addr::new(10, 244, 2, 2) {
            found.push(sport);
        }
        if let [a, b, c] = found[..] {
            return Ok([a, b, c]);
        }
    }
    anyhow::bail!("not three flows hash to the second backend")
}

#[test]
fn closed_tcp_and_idle_udp_flows_expire_and_are_decided_afresh() -> Result<()> {
    root_only!();
    let probe = Fixture::new()?;
    let two = |proto| {
        desired(
            proto,
            service(
                vec![ep("10.244.2.1", 8080, false), ep("10.244.2.2", 8080, false)],
                TrafficPolicy::Cluster,
            ),
        )
    };
    let one = |proto| {
        desired(
            proto,
            service(vec![ep("10.244.2.1", 8080, false)], TrafficPolicy::Cluster),
        )
    };
    let mut probe = probe;
    probe.apply(&two(Protocol::Tcp))?;
    let [fin_port, rst_port, open_port] = flows_moving_to_second_backend(&probe, Protocol::Tcp)?;
    probe.apply(&two(Protocol::Udp))?;
    let [udp_port, ..] = flows_moving_to_second_backend(&probe, Protocol::Udp)?;
    drop(probe);

    let timeout = std::time::Duration::from_millis(50);
    let mut fx = Fixture::configured(|c| {
        c.conntrack.tcp_closed = timeout;
        c.conntrack.udp_idle = timeout;
    })?;
    let (first, second) = (Ipv4Addr::new(10, 244, 2, 1), Ipv4Addr::new(10, 244, 2, 2));
    let to = |proto, sport, flags| frame_flags(proto, (CLIENT, sport), (NODE, 30080), b"q", flags);
    let from = |proto, sport, flags| {
        frame_flags(proto, ("10.244.2.1", 8080), (CLIENT, sport), b"q", flags)
    };
    let backend = |fx: &Fixture, sport, flags| -> Result<Ipv4Addr> {
        Ok(backend_of(&fx.run(false, &to(Protocol::Tcp, sport, flags))?.packet).0)
    };
    // TCP: three connections on the first backend, then the second one joins.
    fx.apply(&one(Protocol::Tcp))?;
    for sport in [fin_port, rst_port, open_port] {
        assert_eq!(backend(&fx, sport, TCP_SYN)?, first);
    }
    fx.apply(&two(Protocol::Tcp))?;
    // FIN from the client and FIN from the backend close one; until the timeout it stays.
    fx.run(false, &to(Protocol::Tcp, fin_port, TCP_FIN_ACK))?;
    fx.run(true, &from(Protocol::Tcp, fin_port, TCP_FIN_ACK))?;
    assert_eq!(backend(&fx, fin_port, TCP_ACK)?, first, "the last ACK");
    // An RST from the backend closes another.
    fx.run(true, &from(Protocol::Tcp, rst_port, TCP_RST))?;
    std::thread::sleep(timeout * 3);
    assert_eq!(
        backend(&fx, fin_port, TCP_SYN)?,
        second,
        "after FIN: a new flow"
    );
    assert_eq!(
        backend(&fx, rst_port, TCP_SYN)?,
        second,
        "after RST: a new flow"
    );
    // A connection without FIN or RST is not expired, however long it idles.
    assert_eq!(backend(&fx, open_port, TCP_ACK)?, first);

    // UDP: the flow stays while it is used, and is decided afresh after idling.
    fx.apply(&one(Protocol::Udp))?;
    let q = to(Protocol::Udp, udp_port, 0);
    assert_eq!(backend_of(&fx.run(false, &q)?.packet).0, first);
    fx.apply(&two(Protocol::Udp))?;
    for _ in 0..3 {
        std::thread::sleep(timeout / 2);
        assert_eq!(backend_of(&fx.run(false, &q)?.packet).0, first, "in use");
    }
    std::thread::sleep(timeout * 3);
    assert_eq!(
        backend_of(&fx.run(false, &q)?.packet).0,
        Ipv4Addr::new(10, 244, 2, 2)
    );
    Ok(())
}

/// The IP header and the 8 bytes after it of a frame: what an ICMP error quotes.
fn quote_of(frame: &[u8]) -> Vec<u8> {
    let len = if frame[12..14] == [0x08, 0x00] {
        20
    } else {
        40
    };
    frame[14..14 + len + 8].to_vec()
}

/// An ICMP (IPv4) or ICMPv6 error from `src` to `dst` with valid checksums.
fn icmp_error(src: &str, dst: &str, kind: (u8, u8), rest: [u8; 4], quote: &[u8]) -> Vec<u8> {
    let (s, d): (IpAddr, IpAddr) = (src.parse().expect("ip"), dst.parse().expect("ip"));
    let mut icmp = vec![kind.0, kind.1, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(quote);
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    match (s, d) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let c = csum(&icmp, 0).to_be_bytes();
            icmp[2..4].copy_from_slice(&c);
            let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
            ip[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = csum(&ip, 0).to_be_bytes();
            ip[10..12].copy_from_slice(&c);
            f.extend_from_slice(&[0x08, 0x00]);
            f.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 58]);
            pseudo.extend_from_slice(&icmp);
            let c = csum(&pseudo, 0).to_be_bytes();
            icmp[2..4].copy_from_slice(&c);
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
            f.extend_from_slice(&[58, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed families"),
    }
    f.extend_from_slice(&icmp);
    f
}

#[test]
fn icmp_errors_about_translated_flows_are_translated_too() -> Result<()> {
    root_only!();
    let mut fx = Fixture::new()?;
    let mut d = desired(
        Protocol::Tcp,
        service(
            vec![
                ep("10.244.1.5", 8080, true),
                ep("fd00:10:244:1::5", 8080, true),
            ],
            TrafficPolicy::Local,
        ),
    );
    d.node_port_addresses.push("2001:db8::11".parse()?);
    add_v6_cluster_ip(&mut d);
    fx.apply(&d)?;
    let client6 = "2001:db8::100";
    fx.run(
        false,
        &frame(Protocol::Tcp, (CLIENT, 40000), (NODE, 30080), b""),
    )?;
    fx.run(
        false,
        &frame(
            Protocol::Tcp,
            (client6, 40000),
            ("2001:db8::11", 30080),
            b"",
        ),
    )?;
    let to_pod = quote_of(&frame(
        Protocol::Tcp,
        (CLIENT, 40000),
        ("10.244.1.5", 8080),
        b"",
    ));
    let to_frontend = quote_of(&frame(Protocol::Tcp, (CLIENT, 40000), (NODE, 30080), b""));
    let mtu = [0, 0, 0x05, 0x78];

    // This node, forwarding toward the pod, says "fragmentation needed" to the client: the
    // client must learn it about the frontend it sent to.
    let frag = icmp_error("10.78.0.1", CLIENT, (3, 4), mtu, &to_pod);
    let out = fx.run(true, &frag)?;
    assert_eq!(out.verdict, TC_ACT_OK);
    assert_eq!(
        out.packet,
        icmp_error("10.78.0.1", CLIENT, (3, 4), mtu, &to_frontend)
    );
    // The pod itself refuses: the error comes from the frontend.
    let unreach = icmp_error("10.244.1.5", CLIENT, (3, 3), [0; 4], &to_pod);
    assert_eq!(
        fx.run(true, &unreach)?.packet,
        icmp_error(NODE, CLIENT, (3, 3), [0; 4], &to_frontend)
    );
    // A router beyond the node finds a reply too big: the pod gets it, about itself.
    let reply = quote_of(&frame(Protocol::Tcp, (NODE, 30080), (CLIENT, 40000), b""));
    let pod_reply = quote_of(&frame(
        Protocol::Tcp,
        ("10.244.1.5", 8080),
        (CLIENT, 40000),
        b"",
    ));
    let too_big = icmp_error("203.0.113.1", NODE, (3, 4), mtu, &reply);
    assert_eq!(
        fx.run(false, &too_big)?.packet,
        icmp_error("203.0.113.1", "10.244.1.5", (3, 4), mtu, &pod_reply)
    );
    // IPv6 "packet too big" from this node, leaving.
    let to_pod6 = quote_of(&frame(
        Protocol::Tcp,
        (client6, 40000),
        ("fd00:10:244:1::5", 8080),
        b"",
    ));
    let to_frontend6 = quote_of(&frame(
        Protocol::Tcp,
        (client6, 40000),
        ("2001:db8::11", 30080),
        b"",
    ));
    let ptb = icmp_error("fd78::1", client6, (2, 0), mtu, &to_pod6);
    assert_eq!(
        fx.run(true, &ptb)?.packet,
        icmp_error("fd78::1", client6, (2, 0), mtu, &to_frontend6)
    );
    // Errors about flows nobody translated pass untouched.
    let other = quote_of(&frame(
        Protocol::Tcp,
        (CLIENT, 40001),
        ("10.244.1.5", 8080),
        b"",
    ));
    let unrelated = icmp_error("10.78.0.1", CLIENT, (3, 4), mtu, &other);
    assert_eq!(fx.run(true, &unrelated)?.packet, unrelated);
    Ok(())
}
