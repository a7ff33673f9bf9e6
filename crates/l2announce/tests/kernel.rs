//! Real kernel (root only, skipped with a printed reason otherwise): a client namespace with
//! a bridge, and two "node" namespaces plugged into it by veth pairs. Each node delivers the
//! LoadBalancer addresses locally (`ip route add local ... dev lo`, standing in for sluice's
//! datapath) and runs a TCP listener that answers with the node's name, but its kernel does
//! not answer ARP/NDP for them (`arp_ignore=1`; no IPv6 interface address). Only the
//! responder makes the addresses reachable:
//!
//! * nobody announces: connecting fails (the kernel alone does not answer);
//! * node1 announces: the client reaches node1 over IPv4 and IPv6, and its neighbour table
//!   holds node1's MAC;
//! * node1 withdraws, node2 takes over: the client's existing entries switch to node2's MAC
//!   from the gratuitous ARP / unsolicited NA alone, and connections reach node2;
//! * nobody announces: connecting fails again.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sluice_l2announce::{Link, PacketLink, ResponderConfig, serve};
use tokio::sync::watch;

const LB4: &str = "10.201.0.100";
const LB6: &str = "fd00:201::100";
const PORT: u16 = 8080;
const MAC1: &str = "02:00:00:00:01:01";
const MAC2: &str = "02:00:00:00:02:02";
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

fn skip_reason() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Some(format!("needs root (effective uid {euid})"));
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("needs iproute2's `ip`".into());
    }
    None
}

fn ip(args: &[&str]) -> Result<String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !output.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Deletes the namespaces when dropped, also when the test panics.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Moves the calling thread into network namespace `ns`.
fn enter(ns: &str) -> Result<()> {
    let file = File::open(format!("/run/netns/{ns}")).with_context(|| format!("netns {ns}"))?;
    // SAFETY: setns on a valid namespace fd; it only changes this thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

/// Runs `f` on a thread inside namespace `ns`.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread panicked"))?
}

struct Topology {
    client: String,
    nodes: [String; 2],
}

fn build(namespaces: &mut Namespaces) -> Result<Topology> {
    let prefix = format!("sl2a{}", std::process::id());
    let client = format!("{prefix}c");
    let nodes = [format!("{prefix}n1"), format!("{prefix}n2")];
    for ns in std::iter::once(&client).chain(&nodes) {
        ip(&["netns", "add", ns])?;
        namespaces.0.push(ns.clone());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    let c = client.as_str();
    ip(&[
        "-n",
        c,
        "link",
        "add",
        "br0",
        "type",
        "bridge",
        "mcast_snooping",
        "0",
    ])?;
    ip(&["-n", c, "addr", "add", "10.201.0.1/24", "dev", "br0"])?;
    ip(&[
        "-n",
        c,
        "addr",
        "add",
        "fd00:201::1/64",
        "dev",
        "br0",
        "nodad",
    ])?;
    ip(&["-n", c, "link", "set", "br0", "up"])?;
    for (i, (node, mac)) in nodes.iter().zip([MAC1, MAC2]).enumerate() {
        let (port, nic) = (format!("c{}", i + 1), format!("n{}", i + 1));
        ip(&[
            "link", "add", &port, "netns", c, "type", "veth", "peer", "name", &nic, "netns", node,
        ])?;
        ip(&["-n", c, "link", "set", &port, "master", "br0", "up"])?;
        let n = node.as_str();
        ip(&["-n", n, "link", "set", &nic, "address", mac, "up"])?;
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("10.201.0.{}/24", i + 2),
            "dev",
            &nic,
        ])?;
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("fd00:201::{}/64", i + 2),
            "dev",
            &nic,
            "nodad",
        ])?;
        ip(&[
            "-n",
            n,
            "route",
            "add",
            "local",
            &format!("{LB4}/32"),
            "dev",
            "lo",
        ])?;
        ip(&[
            "-n",
            n,
            "-6",
            "route",
            "add",
            "local",
            &format!("{LB6}/128"),
            "dev",
            "lo",
        ])?;
        let sysctl = "echo 1 > /proc/sys/net/ipv4/conf/all/arp_ignore";
        ip(&["netns", "exec", n, "sh", "-c", sysctl])?;
    }
    Ok(Topology { client, nodes })
}

/// A TCP listener in a node namespace answering each connection with the node's name.
struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn start(ns: &str, name: &'static str) -> Result<Self> {
        let listener = in_netns(ns, || {
            let l = TcpListener::bind(("::", PORT)).context("bind [::]:8080")?;
            l.set_nonblocking(true)?;
            Ok(l)
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.write_all(name.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The responder of one node, on its own thread and runtime inside the node namespace.
struct Announcer {
    announced: watch::Sender<BTreeSet<IpAddr>>,
    mac: String,
    thread: Option<JoinHandle<()>>,
}

impl Announcer {
    fn start(ns: &str, interface: &'static str) -> Result<Self> {
        let (announced, rx) = watch::channel(BTreeSet::new());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<String>>();
        let ns = ns.to_string();
        let thread = std::thread::spawn(move || {
            let result = enter(&ns).and_then(|()| {
                Ok(tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?)
            });
            let runtime = match result {
                Ok(rt) => rt,
                Err(e) => return drop(ready_tx.send(Err(e))),
            };
            runtime.block_on(async move {
                match PacketLink::open(interface) {
                    Ok(link) => {
                        let _ = ready_tx.send(Ok(link.mac().to_string()));
                        // No repeats: the takeover must work from the first announcement.
                        let config = ResponderConfig {
                            repeats: 0,
                            ..ResponderConfig::default()
                        };
                        serve(link, rx, config).await;
                    }
                    Err(e) => drop(ready_tx.send(Err(anyhow::Error::new(e)))),
                }
            });
        });
        let mac = ready_rx.recv().context("responder thread ended")??;
        Ok(Self {
            announced,
            mac,
            thread: Some(thread),
        })
    }

    fn announce(&self, ips: &[&str]) {
        self.announced
            .send_replace(ips.iter().map(|s| s.parse().unwrap()).collect());
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        // Closing the channel ends `serve`.
        let (closed, _) = watch::channel(BTreeSet::new());
        drop(std::mem::replace(&mut self.announced, closed));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from the client to `lb:8080` and returns what the node said.
fn connect(client: &str, lb: &str) -> Result<String> {
    let addr = SocketAddr::new(lb.parse()?, PORT);
    in_netns(client, move || {
        let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    })
}

/// The MAC the client's neighbour table holds for `lb` (None: no usable entry).
fn neighbour(client: &str, lb: &str) -> Result<Option<String>> {
    let out = ip(&["-n", client, "neigh", "show", "to", lb, "dev", "br0"])?;
    let mut words = out.split_whitespace();
    Ok(words
        .find(|w| *w == "lladdr")
        .and(words.next())
        .map(str::to_string))
}

fn forget_neighbours(client: &str) -> Result<()> {
    for lb in [LB4, LB6] {
        ip(&["-n", client, "neigh", "flush", "to", lb, "dev", "br0"])?;
    }
    Ok(())
}

fn wait_for_neighbour(client: &str, lb: &str, mac: &str) -> Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        if neighbour(client, lb)?.as_deref() == Some(mac) {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "{lb}: client neighbour entry is {:?}, not {mac}",
        neighbour(client, lb)?
    )
}

fn assert_unreachable(client: &str, why: &str) -> Result<()> {
    forget_neighbours(client)?;
    for lb in [LB4, LB6] {
        if let Ok(answer) = connect(client, lb) {
            bail!("{lb} answered ({answer}) although {why}");
        }
    }
    // Drop the failed resolutions, so they do not linger into the next step.
    forget_neighbours(client)
}

#[test]
fn responder_makes_addresses_reachable_and_takeover_moves_clients() -> Result<()> {
    if let Some(reason) = skip_reason() {
        eprintln!("skipping: {reason}");
        return Ok(());
    }
    let mut namespaces = Namespaces(Vec::new());
    let topo = build(&mut namespaces)?;
    let client = topo.client.as_str();
    let _listeners = [
        Listener::start(&topo.nodes[0], "node1")?,
        Listener::start(&topo.nodes[1], "node2")?,
    ];
    let node1 = Announcer::start(&topo.nodes[0], "n1")?;
    let node2 = Announcer::start(&topo.nodes[1], "n2")?;
    assert_eq!(
        (node1.mac.as_str(), node2.mac.as_str()),
        (MAC1, MAC2),
        "MACs read from the sockets"
    );

    assert_unreachable(client, "nobody announces yet")?;

    node1.announce(&[LB4, LB6]);
    // No entries: the client must ask, and only the responder can answer.
    forget_neighbours(client)?;
    for lb in [LB4, LB6] {
        assert_eq!(connect(client, lb)?, "node1", "{lb}");
        assert_eq!(neighbour(client, lb)?.as_deref(), Some(MAC1), "{lb}");
    }

    node1.announce(&[]);
    node2.announce(&[LB4, LB6]);
    for lb in [LB4, LB6] {
        let took = wait_for_neighbour(client, lb, MAC2)?;
        eprintln!("{lb}: client switched to node2's MAC {took:?} after the takeover");
    }
    for lb in [LB4, LB6] {
        assert_eq!(connect(client, lb)?, "node2", "{lb}");
    }

    node2.announce(&[]);
    assert_unreachable(client, "every node withdrew")?;
    Ok(())
}
