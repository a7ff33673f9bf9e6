//! LoadBalancer Services on a bare LAN: agents with `--source k8s` against the fake API
//! server (served from the client namespace, "outside" the nodes), a `LoadBalancerIPPool`
//! of addresses on the underlay subnet (192.0.2.0/24, 2001:db8::/64), and the client on the
//! same bridge. The client has no route for the pool: it reaches an address only because one
//! node answers ARP/NDP for it. Needs root and the binaries.

#[path = "../../crates/k8s/tests/fake_apiserver/mod.rs"]
mod fake_apiserver;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use fake_apiserver::FakeApiServer;
use serde_json::{Value, json};
use sluice_tests::apiserver::{tcp_listener_in, write_kubeconfig};
use sluice_tests::manifests::{Port, Service, endpoint_slices};
use sluice_tests::{
    At, CLIENT_V4, Cluster, Mode, Pod, ProbeOpts, Proto, backend_tests, require_root, tally,
    wait_for, wait_until,
};

const WAIT: Duration = Duration::from_secs(15);
/// The stated failover bound: the heartbeat Lease duration (6 s) plus detection and the
/// gratuitous ARP; asserted with a generous margin, measured and printed.
const FAILOVER_BOUND: Duration = Duration::from_secs(20);

/// One cluster, its fake API server, and the agents' kubeconfig.
struct Lab {
    // Dropped in this order: agents and namespaces, then the API server, then its runtime.
    c: Cluster,
    fake: FakeApiServer,
    _runtime: tokio::runtime::Runtime,
    kubeconfig: String,
    mode: Mode,
}

impl Lab {
    fn new(nodes: &[&str], mode: Mode) -> Result<Lab> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let c = Cluster::new(nodes)?;
        let client_ns = c.netns_name(At::Client)?;
        let listener = tcp_listener_in(&client_ns, SocketAddr::from((CLIENT_V4, 0)))?;
        let fake = {
            let _guard = runtime.enter();
            FakeApiServer::start_on(tokio::net::TcpListener::from_std(listener)?)
        };
        for node in c.nodes() {
            fake.apply(node_object(node, true));
        }
        let kubeconfig = write_kubeconfig(c.workdir(), &fake.url())?
            .display()
            .to_string();
        Ok(Lab {
            c,
            fake,
            _runtime: runtime,
            kubeconfig,
            mode,
        })
    }

    /// Sets the Node's `Ready` condition.
    fn set_node_ready(&self, node: &str, ready: bool) -> Result<()> {
        self.fake.apply(node_object(self.c.node(node)?, ready));
        Ok(())
    }

    fn start_agent(&mut self, node: &str) -> Result<()> {
        let args = ["--source", "k8s", "--kubeconfig", &self.kubeconfig];
        self.c.start_agent(node, self.mode, &args)
    }

    fn pool(&self, name: &str, blocks: Value) {
        self.fake.apply(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "LoadBalancerIPPool",
            "metadata": {"name": name, "uid": format!("uid-{name}"), "generation": 1},
            "spec": {"blocks": blocks, "l2Announce": true},
        }));
    }

    /// A LoadBalancer Service `default/NAME` (port 80 → 8080) with endpoints `pods`.
    fn service(&self, service: &Service, pods: &[&Pod], tweak: impl FnOnce(&mut Value)) {
        let mut object = service.to_json();
        object["metadata"]["uid"] = json!(format!("uid-{}", service.name()));
        tweak(&mut object);
        self.fake.apply(object);
        for slice in endpoint_slices("default", service.name(), &[("", "TCP", 8080)], pods) {
            self.fake.apply(slice);
        }
    }

    fn status(&self, name: &str) -> Vec<String> {
        let object = self.fake.object("Service", "default", name);
        let ingress = object
            .as_ref()
            .and_then(|o| o.pointer("/status/loadBalancer/ingress"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        ingress
            .iter()
            .filter_map(|i| i["ip"].as_str().map(str::to_owned))
            .collect()
    }

    fn wait_status(&self, name: &str, want: &[&str]) -> Result<()> {
        wait_until(WAIT, &format!("status of {name} = {want:?}"), || {
            Ok(self.status(name) == want)
        })
        .with_context(|| format!("status is {:?}", self.status(name)))
    }

    /// `(status, reason, message)` of a pool condition.
    fn condition(&self, pool: &str, type_: &str) -> Option<(String, String, String)> {
        let object = self.fake.object("LoadBalancerIPPool", "", pool)?;
        let conditions = object.pointer("/status/conditions")?.as_array()?.clone();
        let found = conditions.iter().find(|c| c["type"] == type_)?;
        let text = |key: &str| found[key].as_str().unwrap_or_default().to_owned();
        Some((text("status"), text("reason"), text("message")))
    }

    fn wait_condition(
        &self,
        pool: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> Result<String> {
        wait_for(WAIT, &format!("{pool} {type_}={status} ({reason})"), || {
            Ok(self
                .condition(pool, type_)
                .filter(|(s, r, _)| s == status && r == reason)
                .map(|(_, _, message)| message))
        })
        .with_context(|| format!("{type_} is {:?}", self.condition(pool, type_)))
    }

    /// Notes of the Events with `reason` about `kind`/`name`.
    fn events(&self, kind: &str, name: &str, reason: &str) -> Vec<String> {
        self.fake
            .objects("Event", None)
            .into_iter()
            .filter(|e| e["reason"] == reason)
            .filter(|e| e["regarding"]["kind"] == kind && e["regarding"]["name"] == name)
            .map(|e| e["note"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn wait_event(&self, kind: &str, name: &str, reason: &str) -> Result<String> {
        wait_for(WAIT, &format!("Event {reason} about {kind} {name}"), || {
            Ok(self.events(kind, name, reason).into_iter().next())
        })
    }

    /// The nodes whose agent metrics say they announce `ip`.
    fn announcers(&mut self, ip: &str) -> Result<Vec<String>> {
        let line = format!("sluice_l2_announced{{ip=\"{ip}\"}} 1");
        let names: Vec<String> = self.c.nodes().map(|n| n.name.clone()).collect();
        let mut found = Vec::new();
        for node in names {
            if self.c.agent_running(&node)
                && self.c.agent_metrics(&node)?.lines().any(|l| l == line)
            {
                found.push(node);
            }
        }
        Ok(found)
    }

    fn wait_announcer(&mut self, ip: &str) -> Result<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self.announcers(ip)?;
            match found.as_slice() {
                [one] => return Ok(one.clone()),
                _ if Instant::now() > deadline => bail!("{ip} announced by {found:?}"),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn node_mac(&self, node: &str) -> Result<String> {
        let out = self.c.exec(
            At::Node(node),
            &["ip", "-br", "link", "show", "dev", "eth0"],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .nth(2)
            .map(str::to_owned)
            .with_context(|| format!("no MAC in {text:?}"))
    }

    /// The MAC the client's neighbour table holds for `ip` (None: no usable entry).
    fn client_neighbour(&self, ip: &str) -> Result<Option<String>> {
        let out = self.c.exec(
            At::Client,
            &["ip", "neigh", "show", "to", ip, "dev", "eth0"],
        )?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut words = text.split_whitespace();
        Ok(words
            .find(|w| *w == "lladdr")
            .and(words.next())
            .map(str::to_owned))
    }

    fn forget_neighbours(&self) -> Result<()> {
        self.c
            .exec(At::Client, &["ip", "neigh", "flush", "dev", "eth0"])?;
        Ok(())
    }

    /// Status PATCHes the fake received so far.
    fn status_writes(&self) -> usize {
        self.fake
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH" && r.path.ends_with("/status"))
            .count()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Stop the agents before the API server goes, so they do not log a storm of errors.
        let names: Vec<String> = self.c.nodes().map(|n| n.name.clone()).collect();
        for node in names {
            let _ = self.c.kill_agent(&node);
        }
    }
}

fn node_object(node: &sluice_tests::Node, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name}},
        "status": {
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            "addresses": [
                {"type": "InternalIP", "address": node.ipv4.to_string()},
                {"type": "InternalIP", "address": node.ipv6.to_string()},
            ],
        },
    })
}

fn web(name: &str, cluster_ips: &[&str]) -> Service {
    Service::new("default", name)
        .kind("LoadBalancer")
        .cluster_ips(cluster_ips)
        .port(Port::tcp(80, 8080))
}

/// Answers per pod of `n` TCP connections from the client.
fn client_tcp(lab: &Lab, addr: &str, n: u32) -> Result<Vec<String>> {
    let results = lab.c.tcp(At::Client, addr, n)?;
    let pods: BTreeSet<String> = tally(&results).into_keys().collect();
    ensure!(
        results.iter().all(Result::is_ok),
        "{addr}: {:?}",
        tally(&results)
    );
    Ok(pods.into_iter().collect())
}

backend_tests!(client_reaches_the_assigned_addresses_through_arp_and_ndp);

fn client_reaches_the_assigned_addresses_through_arp_and_ndp(mode: Mode) -> Result<()> {
    let mut lab = Lab::new(&["node-a", "node-b"], mode)?;
    let w1 = lab.c.add_pod("node-a", "web-1")?;
    let w2 = lab.c.add_pod("node-b", "web-2")?;
    lab.pool(
        "lan",
        json!([{"start": "192.0.2.200", "stop": "192.0.2.203"}, {"cidr": "2001:db8::200/127"}]),
    );
    lab.service(
        &web("web", &["10.96.0.10", "fd00:96::10"]),
        &[&w1, &w2],
        |_| {},
    );
    lab.start_agent("node-a")?;
    lab.start_agent("node-b")?;

    lab.wait_status("web", &["192.0.2.200", "2001:db8::200"])?;
    let note = lab.wait_event("Service", "web", "IPAllocated")?;
    ensure!(note.contains("from pool lan"), "{note}");
    lab.wait_condition("lan", "Valid", "True", "Valid")?;
    lab.wait_condition("lan", "Exhausted", "False", "FreeAddresses")?;

    for (ip, addr) in [
        ("192.0.2.200", "192.0.2.200:80"),
        ("2001:db8::200", "[2001:db8::200]:80"),
    ] {
        let announcer = lab.wait_announcer(ip)?;
        lab.forget_neighbours()?;
        let pods = client_tcp(&lab, addr, 16)?;
        ensure!(
            pods == ["web-1", "web-2"],
            "{addr}: eTP=Cluster spreads over both pods, got {pods:?}"
        );
        let mac = lab.client_neighbour(ip)?;
        ensure!(
            mac == Some(lab.node_mac(&announcer)?),
            "{ip}: the client resolved {mac:?}, not {announcer}'s MAC"
        );
        let metrics = lab.c.agent_metrics(&announcer)?;
        let protocol = if ip.contains(':') { "ndp" } else { "arp" };
        let replies = metric_value(
            &metrics,
            &format!("sluice_l2_replies_total{{protocol=\"{protocol}\"}}"),
        );
        ensure!(
            replies >= 1.0,
            "{announcer} counted {replies} {protocol} replies"
        );
        eprintln!("{ip}: announced by {announcer}, reached through {mac:?}");
    }
    Ok(())
}

fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Connects once from the client with a short timeout; the pod that answered.
fn try_client(lab: &Lab, addr: &str) -> Option<String> {
    let opts = ProbeOpts {
        count: 1,
        timeout: Duration::from_millis(300),
        ..ProbeOpts::default()
    };
    let results = lab.c.probe(At::Client, Proto::Tcp, addr, &opts).ok()?;
    results.into_iter().next()?.ok().map(|reply| reply.pod)
}

#[test]
fn killing_the_announcing_node_moves_the_address_within_the_heartbeat_duration() -> Result<()> {
    if !require_root("killing_the_announcing_node_moves_the_address") {
        return Ok(());
    }
    let mut lab = Lab::new(&["node-a", "node-b"], Mode::Nftables)?;
    let w1 = lab.c.add_pod("node-a", "web-1")?;
    let w2 = lab.c.add_pod("node-b", "web-2")?;
    lab.pool("lan", json!([{"cidr": "192.0.2.200/32"}]));
    lab.service(&web("web", &["10.96.0.10"]), &[&w1, &w2], |_| {});
    lab.start_agent("node-a")?;
    lab.start_agent("node-b")?;
    lab.wait_status("web", &["192.0.2.200"])?;
    let announcer = lab.wait_announcer("192.0.2.200")?;
    let survivor = if announcer == "node-a" {
        "node-b"
    } else {
        "node-a"
    };
    ensure!(
        try_client(&lab, "192.0.2.200:80").is_some(),
        "reachable before"
    );

    // The node dies: its agent is killed and its link to the LAN goes down, so traffic sent
    // to its MAC is lost until another node announces the address.
    lab.c.kill_agent(&announcer)?;
    lab.c
        .exec(At::Node(&announcer), &["ip", "link", "set", "eth0", "down"])?;
    let killed = Instant::now();
    let answered = wait_for(
        FAILOVER_BOUND,
        "the client to reach the address again",
        || Ok(try_client(&lab, "192.0.2.200:80")),
    )?;
    let reconnected = killed.elapsed();
    let survivor_mac = lab.node_mac(survivor)?;
    ensure!(
        lab.client_neighbour("192.0.2.200")? == Some(survivor_mac.clone()),
        "the client's entry points at {survivor} ({survivor_mac}) after the takeover"
    );
    ensure!(
        lab.announcers("192.0.2.200")? == [survivor],
        "only {survivor} announces"
    );
    ensure!(
        answered == "web-1" || answered == "web-2",
        "answered by {answered}"
    );
    eprintln!(
        "failover: {announcer} died, the client reached 192.0.2.200 through {survivor} after {reconnected:.1?}"
    );
    Ok(())
}

#[test]
fn an_exhausted_pool_says_so_in_an_event_and_its_condition() -> Result<()> {
    if !require_root("an_exhausted_pool_says_so") {
        return Ok(());
    }
    let mut lab = Lab::new(&["node-a"], Mode::Nftables)?;
    let w1 = lab.c.add_pod("node-a", "web-1")?;
    lab.pool("tiny", json!([{"cidr": "192.0.2.200/32"}]));
    lab.service(&web("first", &["10.96.0.10"]), &[&w1], |s| {
        s["metadata"]["creationTimestamp"] = json!("2024-01-01T00:00:00Z");
    });
    lab.service(&web("second", &["10.96.0.11"]), &[&w1], |s| {
        s["metadata"]["creationTimestamp"] = json!("2024-01-02T00:00:00Z");
    });
    lab.start_agent("node-a")?;
    lab.wait_status("first", &["192.0.2.200"])?;
    let note = lab.wait_event("Service", "second", "PoolExhausted")?;
    ensure!(
        note.contains("no free IPv4 address in pools tiny"),
        "{note}"
    );
    let note = lab.wait_event("LoadBalancerIPPool", "tiny", "PoolExhausted")?;
    ensure!(note.contains("default/second"), "{note}");
    let message = lab.wait_condition("tiny", "Exhausted", "True", "NoFreeAddresses")?;
    ensure!(
        message.contains("1 of 1 addresses in use") && message.contains("1 Service(s) wait"),
        "{message}"
    );
    ensure!(
        lab.status("second").is_empty(),
        "{:?}",
        lab.status("second")
    );
    Ok(())
}

#[test]
fn an_invalid_pool_is_marked_and_assigns_nothing() -> Result<()> {
    if !require_root("an_invalid_pool_is_marked_and_assigns_nothing") {
        return Ok(());
    }
    let mut lab = Lab::new(&["node-a"], Mode::Nftables)?;
    let w1 = lab.c.add_pod("node-a", "web-1")?;
    lab.pool("typo", json!([{"cidr": "192.0.2.201/24"}]));
    lab.service(&web("web", &["10.96.0.10"]), &[&w1], |_| {});
    lab.start_agent("node-a")?;
    let message = lab.wait_condition("typo", "Valid", "False", "InvalidSpec")?;
    ensure!(
        message.contains("host bits") && message.contains("192.0.2.0/24"),
        "{message}"
    );
    lab.wait_condition("typo", "Exhausted", "Unknown", "InvalidPool")?;
    lab.wait_event("LoadBalancerIPPool", "typo", "InvalidPool")?;
    lab.wait_event("Service", "web", "NoMatchingPool")?;
    ensure!(lab.status("web").is_empty(), "{:?}", lab.status("web"));

    // Fixed: the Service gets an address.
    lab.pool("typo", json!([{"cidr": "192.0.2.200/30"}]));
    lab.wait_condition("typo", "Valid", "True", "Valid")?;
    lab.wait_status("web", &["192.0.2.200"])
}

#[test]
fn a_service_of_another_load_balancer_class_is_left_alone() -> Result<()> {
    if !require_root("a_service_of_another_load_balancer_class_is_left_alone") {
        return Ok(());
    }
    let mut lab = Lab::new(&["node-a"], Mode::Nftables)?;
    let w1 = lab.c.add_pod("node-a", "web-1")?;
    lab.pool(
        "lan",
        json!([{"start": "192.0.2.200", "stop": "192.0.2.203"}]),
    );
    // Another controller gave this Service an address inside our pool.
    let foreign = web("foreign", &["10.96.0.10"]).load_balancer_ips(&["192.0.2.200"]);
    lab.service(&foreign, &[&w1], |s| {
        s["spec"]["loadBalancerClass"] = json!("other.example/lb");
    });
    lab.service(&web("ours", &["10.96.0.11"]), &[&w1], |_| {});
    lab.start_agent("node-a")?;
    // Its address is never handed out: ours gets the next one.
    lab.wait_status("ours", &["192.0.2.201"])?;
    // Give the agent time to do anything it would do, then check it did nothing.
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        lab.status("foreign") == ["192.0.2.200"],
        "{:?}",
        lab.status("foreign")
    );
    let touched = lab
        .fake
        .requests()
        .iter()
        .any(|r| r.method != "GET" && r.path.contains("/services/foreign"));
    ensure!(!touched, "no write to the foreign Service");
    ensure!(lab.events("Service", "foreign", "IPAllocated").is_empty());
    // It is forwarded (the datapath follows every status) but not announced by us.
    ensure!(
        lab.announcers("192.0.2.200")?.is_empty(),
        "not announced by sluice"
    );
    ensure!(lab.wait_announcer("192.0.2.201")? == "node-a");
    Ok(())
}

#[test]
fn requested_addresses_are_assigned_and_bad_requests_explained() -> Result<()> {
    if !require_root("requested_addresses_are_assigned_and_bad_requests_explained") {
        return Ok(());
    }
    let mut lab = Lab::new(&["node-a"], Mode::Nftables)?;
    let w1 = lab.c.add_pod("node-a", "web-1")?;
    lab.pool(
        "lan",
        json!([{"start": "192.0.2.200", "stop": "192.0.2.207"}]),
    );
    lab.service(&web("by-field", &["10.96.0.10"]), &[&w1], |s| {
        s["spec"]["loadBalancerIP"] = json!("192.0.2.205");
    });
    lab.service(&web("by-annotation", &["10.96.0.11"]), &[&w1], |s| {
        s["metadata"]["annotations"] = json!({"sluice.dev/load-balancer-ips": "192.0.2.203"});
    });
    lab.service(&web("outside", &["10.96.0.12"]), &[&w1], |s| {
        s["metadata"]["annotations"] = json!({"sluice.dev/load-balancer-ips": "198.51.100.7"});
    });
    lab.start_agent("node-a")?;
    lab.wait_status("by-field", &["192.0.2.205"])?;
    lab.wait_status("by-annotation", &["192.0.2.203"])?;
    let note = lab.wait_event("Service", "outside", "RequestedIPOutsidePools")?;
    ensure!(note.contains("198.51.100.7"), "{note}");
    ensure!(lab.status("outside").is_empty());
    // The requested address is reachable from the client like any other.
    lab.wait_announcer("192.0.2.205")?;
    ensure!(client_tcp(&lab, "192.0.2.205:80", 2)? == ["web-1"]);
    Ok(())
}

#[test]
fn a_deleted_service_releases_its_address_to_a_waiting_one() -> Result<()> {
    if !require_root("a_deleted_service_releases_its_address_to_a_waiting_one") {
        return Ok(());
    }
    let mut lab = Lab::new(&["node-a"], Mode::Nftables)?;
    let w1 = lab.c.add_pod("node-a", "web-1")?;
    let w2 = lab.c.add_pod("node-a", "web-2")?;
    lab.pool("tiny", json!([{"cidr": "192.0.2.200/32"}]));
    lab.service(&web("first", &["10.96.0.10"]), &[&w1], |s| {
        s["metadata"]["creationTimestamp"] = json!("2024-01-01T00:00:00Z");
    });
    lab.service(&web("second", &["10.96.0.11"]), &[&w2], |s| {
        s["metadata"]["creationTimestamp"] = json!("2024-01-02T00:00:00Z");
    });
    lab.start_agent("node-a")?;
    lab.wait_status("first", &["192.0.2.200"])?;
    lab.wait_announcer("192.0.2.200")?;
    ensure!(client_tcp(&lab, "192.0.2.200:80", 2)? == ["web-1"]);

    lab.fake.delete("Service", "default", "first");
    lab.wait_status("second", &["192.0.2.200"])?;
    wait_until(WAIT, "the address to lead to second's pod", || {
        Ok(try_client(&lab, "192.0.2.200:80").as_deref() == Some("web-2"))
    })?;
    Ok(())
}

#[test]
fn restarted_agents_keep_every_address_and_write_nothing() -> Result<()> {
    if !require_root("restarted_agents_keep_every_address_and_write_nothing") {
        return Ok(());
    }
    let mut lab = Lab::new(&["node-a", "node-b"], Mode::Nftables)?;
    let w1 = lab.c.add_pod("node-a", "web-1")?;
    lab.pool(
        "lan",
        json!([{"start": "192.0.2.200", "stop": "192.0.2.209"}]),
    );
    // Created in an order that differs from name order, one with a requested address.
    let services = [
        ("c-svc", "10.96.0.10"),
        ("a-svc", "10.96.0.11"),
        ("b-svc", "10.96.0.12"),
    ];
    for (i, (name, cluster_ip)) in services.iter().enumerate() {
        lab.service(&web(name, &[cluster_ip]), &[&w1], |s| {
            s["metadata"]["creationTimestamp"] = json!(format!("2024-01-0{}T00:00:00Z", i + 1));
            if *name == "b-svc" {
                s["spec"]["loadBalancerIP"] = json!("192.0.2.207");
            }
        });
    }
    lab.start_agent("node-a")?;
    lab.start_agent("node-b")?;
    lab.wait_status("c-svc", &["192.0.2.200"])?;
    lab.wait_status("a-svc", &["192.0.2.201"])?;
    lab.wait_status("b-svc", &["192.0.2.207"])?;
    let before: Vec<Vec<String>> = services.iter().map(|(n, _)| lab.status(n)).collect();

    for node in ["node-a", "node-b"] {
        lab.c.stop_agent(node)?;
    }
    let writes = lab.status_writes();
    lab.start_agent("node-b")?;
    lab.start_agent("node-a")?;
    // A leader is elected again and has looked at everything...
    wait_until(WAIT, "an elected agent", || {
        let mut leaders = 0;
        for node in ["node-a", "node-b"] {
            let metrics = lab.c.agent_metrics(node)?;
            leaders += usize::from(metric_value(&metrics, "sluice_lb_ipam_leader") == 1.0);
        }
        Ok(leaders == 1)
    })?;
    // ...and, after a while to act, changed nothing.
    std::thread::sleep(Duration::from_secs(2));
    let after: Vec<Vec<String>> = services.iter().map(|(n, _)| lab.status(n)).collect();
    ensure!(before == after, "before {before:?}, after {after:?}");
    ensure!(
        lab.status_writes() == writes,
        "the restarted agents wrote {} statuses",
        lab.status_writes() - writes
    );
    lab.wait_announcer("192.0.2.207")?;
    ensure!(client_tcp(&lab, "192.0.2.207:80", 2)? == ["web-1"]);
    Ok(())
}

#[test]
fn the_address_follows_node_readiness_and_local_endpoints() -> Result<()> {
    if !require_root("the_address_follows_node_readiness_and_local_endpoints") {
        return Ok(());
    }
    let mut lab = Lab::new(&["node-a", "node-b"], Mode::Nftables)?;
    let pods = [
        lab.c.add_pod("node-a", "local-a")?,
        lab.c.add_pod("node-b", "local-b")?,
    ];
    lab.pool("lan", json!([{"cidr": "192.0.2.200/32"}]));
    let local = web("local", &["10.96.0.10"]).external_traffic_policy("Local");
    lab.service(&local, &[&pods[0], &pods[1]], |_| {});
    lab.start_agent("node-a")?;
    lab.start_agent("node-b")?;
    lab.wait_status("local", &["192.0.2.200"])?;
    let first = lab.wait_announcer("192.0.2.200")?;
    let other = if first == "node-a" {
        "node-b"
    } else {
        "node-a"
    };
    let pod_on = |node: &str| {
        if node == "node-a" {
            "local-a"
        } else {
            "local-b"
        }
    };
    // eTP=Local: the announcing node's own pod answers.
    ensure!(client_tcp(&lab, "192.0.2.200:80", 3)? == [pod_on(&first)]);

    // The announcing Node goes NotReady: the other node takes over.
    lab.set_node_ready(&first, false)?;
    wait_until(WAIT, "the other node to announce", || {
        Ok(lab.announcers("192.0.2.200")? == [other])
    })?;
    wait_until(WAIT, "the client to reach the other node's pod", || {
        Ok(try_client(&lab, "192.0.2.200:80").as_deref() == Some(pod_on(other)))
    })?;

    // Ready again (it wins the address back), then its endpoint goes: the other node again.
    lab.set_node_ready(&first, true)?;
    wait_until(WAIT, "the first node to announce again", || {
        Ok(lab.announcers("192.0.2.200")? == [first.clone()])
    })?;
    let remaining = if first == "node-a" {
        &pods[1]
    } else {
        &pods[0]
    };
    lab.service(&local, &[remaining], |_| {});
    wait_until(WAIT, "the node with the endpoint to announce", || {
        Ok(lab.announcers("192.0.2.200")? == [other])
    })?;
    wait_until(WAIT, "the client to reach the remaining pod", || {
        Ok(try_client(&lab, "192.0.2.200:80").as_deref() == Some(pod_on(other)))
    })?;
    Ok(())
}
