//! The responder against an in-memory link: what goes on the wire when addresses are
//! announced, asked for, repeated and withdrawn, and that failures of the link do not stop it.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use sluice_l2announce::packet::{
    self, ArpRequest, NeighborSolicitation, icmpv6_checksum, solicited_node_group,
};
use sluice_l2announce::{
    FakeHandle, FakeLink, Mac, Responder, ResponderConfig, ResponderCounts, ResponderStats, serve,
    serve_counted,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const OURS: Mac = Mac([0x02, 0, 0, 0, 0, 0x01]);
const CLIENT: Mac = Mac([0x02, 0, 0, 0, 0, 0x99]);
const V4: &str = "192.0.2.10";
const V6: &str = "2001:db8::10";
const QUIET: Duration = Duration::from_millis(100);
const WAIT: Duration = Duration::from_secs(5);

fn v4() -> Ipv4Addr {
    V4.parse().unwrap()
}

fn v6() -> Ipv6Addr {
    V6.parse().unwrap()
}

fn set(ips: &[&str]) -> BTreeSet<IpAddr> {
    ips.iter().map(|s| s.parse().unwrap()).collect()
}

/// An ARP request from the client for `target`.
fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&Mac::BROADCAST.0);
    frame.extend_from_slice(&CLIENT.0);
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&CLIENT.0);
    frame.extend_from_slice(&[192, 0, 2, 1]);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target.octets());
    frame
}

fn client_arp() -> ArpRequest {
    ArpRequest {
        sender_mac: CLIENT,
        sender_ip: "192.0.2.1".parse().unwrap(),
        target_ip: v4(),
    }
}

/// A neighbour solicitation from the client (2001:db8::1) for `target`, to its
/// solicited-node group, with a source link-layer option and a correct checksum.
fn solicitation(target: Ipv6Addr) -> Vec<u8> {
    let source: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let group = solicited_node_group(target);
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&CLIENT.0);
    let sum = icmpv6_checksum(source, group, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut frame = Vec::new();
    frame.extend_from_slice(&Mac::ipv6_multicast(group).0);
    frame.extend_from_slice(&CLIENT.0);
    frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, icmp.len() as u8, 58, 255]);
    frame.extend_from_slice(&source.octets());
    frame.extend_from_slice(&group.octets());
    frame.extend_from_slice(&icmp);
    frame
}

fn client_ns() -> NeighborSolicitation {
    NeighborSolicitation {
        source: "2001:db8::1".parse().unwrap(),
        source_mac: CLIENT,
        target: v6(),
    }
}

#[test]
fn answers_only_for_announced_addresses_and_not_to_itself() {
    let mut r = Responder::new(OURS, 0);
    assert!(
        r.answer(&arp_request(v4())).is_none(),
        "nothing announced yet"
    );
    let changes = r.set_announced(&set(&[V4, V6, "0.0.0.0", "ff02::1"]));
    assert_eq!(
        changes.started,
        set(&[V4, V6]).into_iter().collect::<Vec<_>>()
    );
    assert_eq!(changes.join, [solicited_node_group(v6())]);
    assert_eq!(
        changes.frames,
        [
            packet::gratuitous_arp(OURS, v4()),
            packet::unsolicited_advertisement(OURS, v6())
        ]
    );
    let answer = r.answer(&arp_request(v4())).expect("ARP answered");
    assert_eq!(answer.frame, packet::arp_reply(OURS, &client_arp()));
    assert_eq!(answer.asker, CLIENT);
    let answer = r.answer(&solicitation(v6())).expect("NS answered");
    assert_eq!(
        answer.frame,
        packet::neighbor_advertisement(OURS, &client_ns())
    );
    assert!(
        r.answer(&arp_request("192.0.2.11".parse().unwrap()))
            .is_none()
    );
    assert!(
        r.answer(&solicitation("2001:db8::11".parse().unwrap()))
            .is_none()
    );
    // Our own gratuitous ARP looped back, or another node's, is no question.
    assert!(r.answer(&packet::gratuitous_arp(OURS, v4())).is_none());
    let other = Mac([2, 0, 0, 0, 0, 2]);
    assert!(r.answer(&packet::gratuitous_arp(other, v4())).is_none());
    assert!(
        r.answer(&packet::unsolicited_advertisement(other, v6()))
            .is_none()
    );

    let changes = r.set_announced(&set(&[V6]));
    assert_eq!(changes.stopped, [IpAddr::V4(v4())]);
    assert!(changes.frames.is_empty() && changes.join.is_empty() && changes.leave.is_empty());
    assert!(r.answer(&arp_request(v4())).is_none(), "withdrawn");
    assert_eq!(
        r.set_announced(&set(&[])).leave,
        [solicited_node_group(v6())]
    );
}

#[test]
fn takeover_announcements_repeat_the_configured_number_of_times() {
    let mut r = Responder::new(OURS, 2);
    r.set_announced(&set(&[V4]));
    assert_eq!(r.repeat_round(), [packet::gratuitous_arp(OURS, v4())]);
    r.set_announced(&set(&[V4, V6]));
    assert_eq!(r.repeat_round().len(), 2, "last repeat of V4, first of V6");
    assert_eq!(
        r.repeat_round(),
        [packet::unsolicited_advertisement(OURS, v6())]
    );
    assert!(!r.has_repeats() && r.repeat_round().is_empty());
    // A withdrawn address stops repeating at once.
    r.set_announced(&set(&[]));
    r.set_announced(&set(&[V4]));
    r.set_announced(&set(&[]));
    assert!(r.repeat_round().is_empty());
}

struct Running {
    handle: FakeHandle,
    announced: watch::Sender<BTreeSet<IpAddr>>,
    task: JoinHandle<()>,
}

fn start(initial: &[&str], repeats: u32) -> Running {
    let (link, handle) = FakeLink::new("eth-test", OURS);
    let (announced, rx) = watch::channel(set(initial));
    let config = ResponderConfig {
        repeats,
        repeat_interval: Duration::from_millis(30),
    };
    let task = tokio::spawn(serve(link, rx, config));
    Running {
        handle,
        announced,
        task,
    }
}

async fn wait_until(condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn serve_announces_answers_and_withdraws() {
    let r = start(&[V4, V6], 0);
    assert_eq!(r.handle.wait_sent(2, WAIT).await, 2);
    assert_eq!(
        r.handle.take_sent(),
        [
            packet::gratuitous_arp(OURS, v4()),
            packet::unsolicited_advertisement(OURS, v6())
        ]
    );
    assert_eq!(r.handle.groups(), [solicited_node_group(v6())].into());

    r.handle.inject(arp_request(v4()));
    r.handle.inject(solicitation(v6()));
    assert_eq!(r.handle.wait_sent(2, WAIT).await, 2);
    assert_eq!(
        r.handle.take_sent(),
        [
            packet::arp_reply(OURS, &client_arp()),
            packet::neighbor_advertisement(OURS, &client_ns())
        ]
    );

    r.announced.send(set(&[V4])).unwrap();
    // Leaving the group is the visible sign that the change was applied.
    wait_until(|| r.handle.groups().is_empty()).await;
    r.handle.inject(solicitation(v6()));
    assert_eq!(
        r.handle.wait_sent(1, QUIET).await,
        0,
        "withdrawn address answered"
    );

    drop(r.announced);
    tokio::time::timeout(WAIT, r.task).await.unwrap().unwrap();
}

#[tokio::test]
async fn serve_repeats_takeover_announcements() {
    let r = start(&[V4], 2);
    assert_eq!(r.handle.wait_sent(3, WAIT).await, 3);
    assert_eq!(
        r.handle.take_sent(),
        vec![packet::gratuitous_arp(OURS, v4()); 3]
    );
    assert_eq!(r.handle.wait_sent(1, QUIET).await, 0, "only two repeats");
}

#[tokio::test]
async fn serve_survives_send_receive_and_join_failures() {
    let (link, handle) = FakeLink::new("eth-test", OURS);
    handle.fail_sends(1);
    handle.fail_joins(1);
    handle.inject_receive_error(io::Error::other("ENETDOWN"));
    let (announced, rx) = watch::channel(set(&[V4, V6]));
    let task = tokio::spawn(serve(
        link,
        rx,
        ResponderConfig {
            repeats: 0,
            ..Default::default()
        },
    ));
    // The gratuitous ARP failed; the NA went out.
    assert_eq!(handle.wait_sent(1, WAIT).await, 1);
    assert_eq!(
        handle.take_sent(),
        [packet::unsolicited_advertisement(OURS, v6())]
    );
    assert!(handle.groups().is_empty(), "the join failed");
    // After the receive error, requests are still answered, NS unicast too.
    handle.inject(arp_request(v4()));
    handle.inject(solicitation(v6()));
    assert_eq!(handle.wait_sent(2, WAIT).await, 2);
    drop(announced);
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn serve_counted_counts_replies_announcements_and_failures() {
    let (link, handle) = FakeLink::new("eth-test", OURS);
    let stats = std::sync::Arc::new(ResponderStats::default());
    let (announced, rx) = watch::channel(set(&[V4, V6]));
    let config = ResponderConfig {
        repeats: 0,
        ..Default::default()
    };
    let counting = std::sync::Arc::clone(&stats);
    let task = tokio::spawn(async move { serve_counted(link, rx, config, &counting).await });
    assert_eq!(
        handle.wait_sent(2, WAIT).await,
        2,
        "two takeover announcements"
    );
    handle.take_sent();
    handle.inject(arp_request(v4()));
    handle.inject(arp_request(v4()));
    handle.inject(solicitation(v6()));
    assert_eq!(handle.wait_sent(3, WAIT).await, 3);
    handle.fail_sends(1);
    handle.inject(arp_request(v4()));
    // A request for an address we do not announce is not counted.
    handle.inject(arp_request(Ipv4Addr::new(192, 0, 2, 99)));
    wait_until(|| stats.counts().send_failures == 1).await;
    assert_eq!(
        stats.counts(),
        ResponderCounts {
            arp_replies: 2,
            ndp_replies: 1,
            announcements: 2,
            send_failures: 1,
        }
    );
    drop(announced);
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}
