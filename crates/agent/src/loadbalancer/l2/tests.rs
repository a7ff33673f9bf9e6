//! The announcer with in-memory links and host network: which interfaces get a responder,
//! and that the decided set reaches the wire (takeover announcement, answers, withdrawal).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use sluice_hostnet::{Address, Call, FakeHostNetwork, Scope};
use sluice_l2announce::packet::{self, ArpRequest};
use sluice_l2announce::{Eligibility, FakeHandle, FakeLink, Mac, NodeCandidate};

use super::*;

const OURS: Mac = Mac([0x02, 0, 0, 0, 0, 0x0a]);
const CLIENT: Mac = Mac([0x02, 0, 0, 0, 0, 0x99]);
const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(150);

fn address(ifname: &str, ip: &str) -> Address {
    Address {
        ifindex: 2,
        ifname: ifname.into(),
        ip: ip.parse().unwrap(),
        prefix_len: 24,
        scope: Scope::Global,
    }
}

fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&Mac::BROADCAST.0);
    frame.extend_from_slice(&CLIENT.0);
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&CLIENT.0);
    frame.extend_from_slice(&[192, 0, 2, 100]);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target);
    frame
}

fn candidate(name: &str) -> NodeCandidate {
    NodeCandidate {
        name: name.into(),
        agent_alive: true,
        ready: true,
        excluded: false,
    }
}

struct Running {
    input: watch::Sender<Option<Arc<L2Input>>>,
    membership: watch::Sender<Membership>,
    shutdown: watch::Sender<bool>,
    handles: Arc<Mutex<HashMap<String, FakeHandle>>>,
    opened: Arc<Mutex<Vec<String>>>,
    stats: Arc<LbStats>,
    task: JoinHandle<()>,
}

impl Running {
    fn handle(&self, name: &str) -> Option<FakeHandle> {
        self.handles.lock().unwrap().get(name).cloned()
    }
}

/// An announcer for `node-a` on a host with `eth0` (node address) and a pod veth.
fn start(net: FakeHostNetwork, interfaces: Vec<String>) -> Running {
    let handles: Arc<Mutex<HashMap<String, FakeHandle>>> = Arc::default();
    let opened: Arc<Mutex<Vec<String>>> = Arc::default();
    let (h, o) = (Arc::clone(&handles), Arc::clone(&opened));
    let open: OpenLink<FakeLink> = Box::new(move |name: &str| {
        let (link, handle) = FakeLink::new(name, OURS);
        h.lock().unwrap().insert(name.to_owned(), handle);
        o.lock().unwrap().push(name.to_owned());
        Ok(link)
    });
    let stats = Arc::new(LbStats::default());
    let announcer = L2Announcer {
        node: "node-a".into(),
        interfaces,
        net: Arc::new(net),
        open,
        config: ResponderConfig {
            repeats: 0,
            ..ResponderConfig::default()
        },
        stats: Arc::clone(&stats),
    };
    let (input, input_rx) = watch::channel(None);
    let (membership, membership_rx) = watch::channel(Membership::Unknown);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(announcer.run(input_rx, membership_rx, shutdown_rx));
    Running {
        input,
        membership,
        shutdown,
        handles,
        opened,
        stats,
        task,
    }
}

fn host() -> FakeHostNetwork {
    let net = FakeHostNetwork::new();
    net.set_addresses(vec![
        address("lo", "127.0.0.1"),
        address("eth0", "192.0.2.11"),
        address("p1-web-1", "10.244.1.1"),
    ]);
    net
}

fn input(ips: &[&str]) -> Option<Arc<L2Input>> {
    let targets: BTreeMap<IpAddr, Eligibility> = ips
        .iter()
        .map(|ip| (ip.parse().unwrap(), Eligibility::AnyNode))
        .collect();
    Some(Arc::new(L2Input {
        targets,
        node_addresses: vec!["192.0.2.11".parse().unwrap()],
    }))
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_chosen_node_answers_on_its_node_interface_and_stops_when_another_is_chosen() {
    let r = start(host(), Vec::new());
    r.membership
        .send_replace(Membership::Known(vec![candidate("node-a")]));
    r.input.send_replace(input(&["192.0.2.200"]));
    eventually("a responder on eth0", || r.handle("eth0").is_some()).await;
    let eth0 = r.handle("eth0").unwrap();
    assert_eq!(eth0.wait_sent(1, WAIT).await, 1, "takeover announcement");
    assert_eq!(
        eth0.take_sent(),
        [packet::gratuitous_arp(OURS, "192.0.2.200".parse().unwrap())]
    );
    assert_eq!(
        *r.opened.lock().unwrap(),
        ["eth0"],
        "not on lo or pod veths"
    );
    assert_eq!(r.stats.announced(), ["192.0.2.200".parse().unwrap()].into());

    eth0.inject(arp_request([192, 0, 2, 200]));
    assert_eq!(eth0.wait_sent(1, WAIT).await, 1);
    let request = ArpRequest {
        sender_mac: CLIENT,
        sender_ip: "192.0.2.100".parse().unwrap(),
        target_ip: "192.0.2.200".parse().unwrap(),
    };
    assert_eq!(eth0.take_sent(), [packet::arp_reply(OURS, &request)]);
    assert_eq!(r.stats.responder.counts().arp_replies, 1);

    // node-b joins and (for a name that wins) takes over: node-a stops answering.
    let lb: IpAddr = "192.0.2.200".parse().unwrap();
    let rival = (0..100)
        .map(|i| format!("node-{i}"))
        .find(|n| sluice_l2announce::score(lb, n) > sluice_l2announce::score(lb, "node-a"))
        .expect("some name outscores node-a");
    r.membership.send_replace(Membership::Known(vec![
        candidate("node-a"),
        candidate(&rival),
    ]));
    eventually("withdrawn", || r.stats.announced().is_empty()).await;
    eth0.inject(arp_request([192, 0, 2, 200]));
    assert_eq!(
        eth0.wait_sent(1, QUIET).await,
        0,
        "a withdrawn address is not answered"
    );

    r.shutdown.send_replace(true);
    tokio::time::timeout(WAIT, r.task).await.unwrap().unwrap();
}

#[tokio::test]
async fn configured_interfaces_win_and_nothing_opens_without_targets() {
    let r = start(host(), vec!["bond0".into()]);
    r.membership
        .send_replace(Membership::Known(vec![candidate("node-a")]));
    r.input.send_replace(input(&[]));
    tokio::time::sleep(QUIET).await;
    assert!(
        r.opened.lock().unwrap().is_empty(),
        "no targets: no sockets"
    );
    r.input.send_replace(input(&["192.0.2.200"]));
    eventually("a responder on bond0", || r.handle("bond0").is_some()).await;
    assert_eq!(*r.opened.lock().unwrap(), ["bond0"]);
    r.shutdown.send_replace(true);
    tokio::time::timeout(WAIT, r.task).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_failing_interface_listing_keeps_the_running_responders() {
    let net = host();
    let r = start(net.clone(), Vec::new());
    r.membership
        .send_replace(Membership::Known(vec![candidate("node-a")]));
    r.input.send_replace(input(&["192.0.2.200"]));
    eventually("a responder on eth0", || r.handle("eth0").is_some()).await;
    net.fail_next(Call::Addresses);
    r.input.send_replace(input(&["192.0.2.200", "192.0.2.201"]));
    eventually("both announced", || r.stats.announced().len() == 2).await;
    let eth0 = r.handle("eth0").unwrap();
    eth0.inject(arp_request([192, 0, 2, 201]));
    assert!(
        eth0.wait_sent(2, WAIT).await >= 2,
        "the new address is answered on eth0"
    );
    assert_eq!(r.opened.lock().unwrap().len(), 1, "eth0 was not reopened");
    r.shutdown.send_replace(true);
    tokio::time::timeout(WAIT, r.task).await.unwrap().unwrap();
}
