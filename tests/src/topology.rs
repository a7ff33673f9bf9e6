//! The cluster: namespaces, links, addresses, routes, cgroups, echo pods and agents.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::bins;
use crate::host::{self, BPFFS};
use crate::netns;
use crate::process::{Daemon, Place, output_in, signal, wait_timeout};

/// Client address on the underlay.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
/// Client address on the underlay (IPv6).
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
/// `--cluster-cidr` given to agents: every node's pod CIDR, both families.
pub const CLUSTER_CIDRS: &str = "10.244.0.0/16,fd00:10:244::/48";
/// Ports every echo pod serves by default.
pub const ECHO_TCP_PORT: u16 = 8080;
pub const ECHO_UDP_PORT: u16 = 8080;
pub const ECHO_SCTP_PORT: u16 = 8080;
pub const ECHO_HTTP_PORT: u16 = 8081;
/// Where agents serve healthz and metrics, on the node namespace's loopback.
pub const AGENT_HEALTHZ: &str = "127.0.0.1:10256";
pub const AGENT_METRICS: &str = "127.0.0.1:10249";

/// Where a command or probe runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At<'a> {
    /// In the pod's network namespace, in its node's cgroup.
    Pod(&'a str),
    /// In the node's network namespace and cgroup (host-network processes).
    Node(&'a str),
    /// The machine outside the cluster, on the underlay.
    Client,
}

/// A node: namespace `{prefix}-{name}`, underlay `eth0`, pod CIDR `10.244.{index}.0/24`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// 1-based position in the list given to [`Cluster::new`].
    pub index: u8,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub pod_cidr_v4: String,
    pub pod_cidr_v6: String,
    pub netns: String,
    /// The node's cgroup v2 directory (pods and node-side probes run here).
    pub cgroup: PathBuf,
    /// The node's bpffs directory (`--bpffs-path`).
    pub bpffs: PathBuf,
}

impl Node {
    pub fn v4(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ipv4, port))
    }
    pub fn v6(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ipv6, port))
    }
}

/// An echo pod: its own namespace with `eth0` veth'd to its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub node: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub netns: String,
}

impl Pod {
    pub fn v4(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ipv4, port))
    }
    pub fn v6(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ipv6, port))
    }
}

/// Ports an echo pod listens on (each on `0.0.0.0` and `[::]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoPorts {
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
    pub http: Vec<u16>,
    /// Ignored when the kernel has no SCTP ([`sctp_supported`]).
    pub sctp: Vec<u16>,
}

impl Default for EchoPorts {
    fn default() -> Self {
        EchoPorts {
            tcp: vec![ECHO_TCP_PORT],
            udp: vec![ECHO_UDP_PORT],
            http: vec![ECHO_HTTP_PORT],
            sctp: vec![ECHO_SCTP_PORT],
        }
    }
}

/// Dataplane chosen with `--proxy-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Nftables,
    Ebpf,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Nftables => "nftables",
            Mode::Ebpf => "ebpf",
        }
    }
}

/// Whether this kernel can create SCTP sockets (module present).
pub fn sctp_supported() -> bool {
    // SAFETY: plain socket(2)/close(2) on an fd we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP);
        if fd < 0 {
            return false;
        }
        libc::close(fd);
    }
    true
}

pub(crate) struct NodeState {
    pub node: Node,
    next_host: u8,
    agent: Option<Daemon>,
}

pub(crate) struct PodState {
    pub pod: Pod,
    ports: EchoPorts,
    echo: Option<Daemon>,
}

/// A test cluster of network namespaces. Everything it made is removed on drop, also when
/// the test panics (then the logs of agents and pods are printed and the work directory kept).
pub struct Cluster {
    pub(crate) prefix: String,
    workdir: PathBuf,
    pub(crate) nodes: Vec<NodeState>,
    pub(crate) pods: BTreeMap<String, PodState>,
    /// Namespaces in creation order.
    namespaces: Vec<String>,
    next_link: u32,
    agent_bin: Option<PathBuf>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl Cluster {
    /// Builds the underlay, the nodes (named as given; node `i` is `10.244.i.0/24`) and the
    /// client, and writes Node manifests (`nodes.yaml`) into the manifest directory.
    pub fn new(node_names: &[&str]) -> Result<Cluster> {
        anyhow::ensure!(
            !node_names.is_empty() && node_names.len() <= 80,
            "a cluster needs 1..=80 nodes"
        );
        for n in node_names {
            anyhow::ensure!(
                valid_name(n) && !["lan", "client"].contains(n) && !n.starts_with("pod-"),
                "bad node name {n:?}: lower-case letters, digits and '-', not lan/client/pod-*"
            );
        }
        host::prepare()?;
        let prefix = host::new_prefix();
        let workdir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(workdir.join("manifests"))
            .and_then(|()| std::fs::create_dir_all(workdir.join("logs")))
            .with_context(|| format!("creating {}", workdir.display()))?;
        let mut cluster = Cluster {
            prefix,
            workdir,
            nodes: Vec::new(),
            pods: BTreeMap::new(),
            namespaces: Vec::new(),
            next_link: 0,
            agent_bin: None,
        };
        // From here on, Drop cleans up whatever was built if a step fails.
        cluster.build(node_names)?;
        Ok(cluster)
    }

    fn add_netns(&mut self, name: &str) -> Result<()> {
        netns::add(name)?;
        self.namespaces.push(name.to_owned());
        netns::sysctls(
            name,
            &[
                // Addresses are usable at once instead of after duplicate detection.
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
            ],
        )
    }

    fn build(&mut self, node_names: &[&str]) -> Result<()> {
        let lan = self.lan_ns();
        self.add_netns(&lan)?;
        netns::ip_batch(
            &lan,
            &[
                "link set lo up".into(),
                "link add br0 type bridge mcast_snooping 0".into(),
                "link set br0 up".into(),
            ],
        )?;
        let cg_root = host::cgroup2_root()?;
        for (i, name) in node_names.iter().enumerate() {
            let index = u8::try_from(i + 1).context("too many nodes")?;
            let ns = format!("{}-{name}", self.prefix);
            self.add_netns(&ns)?;
            netns::sysctls(
                &ns,
                &[
                    ("net.ipv4.ip_forward", "1"),
                    ("net.ipv6.conf.all.forwarding", "1"),
                ],
            )?;
            let ipv4 = Ipv4Addr::new(192, 0, 2, 10 + index);
            let ipv6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10 + u16::from(index));
            self.underlay_link(&format!("n{index}"), &ns, ipv4, ipv6)?;
            let cgroup = cg_root.join(&ns);
            std::fs::create_dir(&cgroup)
                .with_context(|| format!("creating cgroup {}", cgroup.display()))?;
            let bpffs = Path::new(BPFFS).join(&ns);
            std::fs::create_dir(&bpffs)
                .with_context(|| format!("creating bpffs dir {}", bpffs.display()))?;
            self.nodes.push(NodeState {
                node: Node {
                    name: name.to_string(),
                    index,
                    ipv4,
                    ipv6,
                    pod_cidr_v4: format!("10.244.{index}.0/24"),
                    pod_cidr_v6: format!("fd00:10:244:{index}::/64"),
                    netns: ns,
                    cgroup,
                    bpffs,
                },
                next_host: 2,
                agent: None,
            });
        }
        // Every node routes the other nodes' pod CIDRs over the underlay.
        for me in &self.nodes {
            let routes: Vec<String> = self
                .nodes
                .iter()
                .filter(|other| other.node.index != me.node.index)
                .flat_map(|o| {
                    [
                        format!("route add {} via {}", o.node.pod_cidr_v4, o.node.ipv4),
                        format!("route add {} via {}", o.node.pod_cidr_v6, o.node.ipv6),
                    ]
                })
                .collect();
            if !routes.is_empty() {
                netns::ip_batch(&me.node.netns, &routes)?;
            }
        }
        let client = self.client_ns();
        self.add_netns(&client)?;
        // The client is "the outside": it never forwards (the host's setting may leak in).
        netns::sysctls(
            &client,
            &[
                ("net.ipv4.ip_forward", "0"),
                ("net.ipv6.conf.all.forwarding", "0"),
            ],
        )?;
        self.underlay_link("client", &client, CLIENT_V4, CLIENT_V6)?;
        // Real nodes have a default route; node-originated traffic to a ClusterIP is routed
        // before it is NATed, so it needs one. It points at the client, which drops what is
        // not for itself: nothing leaves the namespaces.
        for n in &self.nodes {
            netns::ip_batch(
                &n.node.netns,
                &[
                    format!("route add default via {CLIENT_V4}"),
                    format!("route add ::/0 via {CLIENT_V6}"),
                ],
            )?;
        }
        let nodes_yaml = crate::manifests::nodes_yaml(self.nodes());
        self.write_manifest("nodes.yaml", &nodes_yaml)?;
        Ok(())
    }

    /// Veth from the bridge (`lan_end` in the lan namespace) to `eth0` in `ns`.
    fn underlay_link(&self, lan_end: &str, ns: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<()> {
        let lan = self.lan_ns();
        netns::ip_batch(
            &lan,
            &[
                format!("link add {lan_end} type veth peer name eth0 netns {ns}"),
                format!("link set {lan_end} master br0 up"),
            ],
        )?;
        netns::ip_batch(
            ns,
            &[
                "link set lo up".into(),
                "link set eth0 up".into(),
                format!("addr add {v4}/24 dev eth0"),
                format!("addr add {v6}/64 dev eth0 nodad"),
            ],
        )?;
        netns::tx_offload_off(&lan, lan_end)?;
        netns::tx_offload_off(ns, "eth0")
    }

    fn lan_ns(&self) -> String {
        format!("{}-lan", self.prefix)
    }

    fn client_ns(&self) -> String {
        format!("{}-client", self.prefix)
    }

    /// The unique prefix of every name this cluster made (`sl{pid}x{n}`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Directory the agents read manifests from (`--source dir:...`).
    pub fn manifest_dir(&self) -> PathBuf {
        self.workdir.join("manifests")
    }

    /// Per-cluster scratch directory (logs, manifests), removed on success.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().map(|n| &n.node)
    }

    /// Namespace names this cluster created (all carry [`Self::prefix`]).
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    pub fn node(&self, name: &str) -> Result<&Node> {
        self.node_state(name).map(|n| &n.node)
    }

    fn node_state(&self, name: &str) -> Result<&NodeState> {
        self.nodes
            .iter()
            .find(|n| n.node.name == name)
            .with_context(|| format!("no node {name:?} in this cluster"))
    }

    fn node_state_mut(&mut self, name: &str) -> Result<&mut NodeState> {
        self.nodes
            .iter_mut()
            .find(|n| n.node.name == name)
            .with_context(|| format!("no node {name:?} in this cluster"))
    }

    pub fn pod(&self, name: &str) -> Result<&Pod> {
        self.pods
            .get(name)
            .map(|p| &p.pod)
            .with_context(|| format!("no pod {name:?} in this cluster"))
    }

    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values().map(|p| &p.pod)
    }

    /// Adds an echo pod on `node` with the default ports and waits until it listens.
    pub fn add_pod(&mut self, node: &str, name: &str) -> Result<Pod> {
        self.add_pod_with(node, name, EchoPorts::default())
    }

    /// Adds an echo pod serving `ports` and waits until it listens.
    pub fn add_pod_with(&mut self, node: &str, name: &str, ports: EchoPorts) -> Result<Pod> {
        anyhow::ensure!(valid_name(name), "bad pod name {name:?}");
        anyhow::ensure!(!self.pods.contains_key(name), "pod {name} exists already");
        let ns = format!("{}-pod-{name}", self.prefix);
        let link = {
            self.next_link += 1;
            let mut l = format!("p{}-{name}", self.next_link);
            l.truncate(15);
            l
        };
        let state = self.node_state_mut(node)?;
        let host = state.next_host;
        anyhow::ensure!(host < 255, "node {node} has no pod addresses left");
        state.next_host += 1;
        let i = state.node.index;
        let node_ns = state.node.netns.clone();
        let pod = Pod {
            name: name.to_owned(),
            node: node.to_owned(),
            ipv4: Ipv4Addr::new(10, 244, i, host),
            ipv6: Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(i), 0, 0, 0, u16::from(host)),
            netns: ns.clone(),
        };
        self.add_netns(&ns)?;
        // Calico style: no bridge; the node end holds the gateway address and a host route.
        netns::ip_batch(
            &node_ns,
            &[
                format!("link add {link} type veth peer name eth0 netns {ns}"),
                format!("link set {link} up"),
                format!("addr add 10.244.{i}.1/32 dev {link}"),
                format!("addr add fd00:10:244:{i}::1/128 dev {link} nodad"),
                format!("route add {}/32 dev {link}", pod.ipv4),
                format!("route add {}/128 dev {link}", pod.ipv6),
            ],
        )?;
        netns::ip_batch(
            &ns,
            &[
                "link set lo up".into(),
                "link set eth0 up".into(),
                format!("addr add {}/32 dev eth0", pod.ipv4),
                format!("addr add {}/128 dev eth0 nodad", pod.ipv6),
                format!("route add default via 10.244.{i}.1 dev eth0 onlink"),
                format!("route add ::/0 via fd00:10:244:{i}::1 dev eth0 onlink"),
            ],
        )?;
        netns::tx_offload_off(&node_ns, &link)?;
        netns::tx_offload_off(&ns, "eth0")?;
        self.pods.insert(
            name.to_owned(),
            PodState {
                pod: pod.clone(),
                ports,
                echo: None,
            },
        );
        self.start_pod(name)?;
        Ok(pod)
    }

    /// (Re)starts a pod's echo server and waits until it listens.
    pub fn start_pod(&mut self, name: &str) -> Result<()> {
        let echo_bin = bins::echo()?;
        let log = self.workdir.join("logs").join(format!("pod-{name}.log"));
        let state = self
            .pods
            .get(name)
            .with_context(|| format!("no pod {name:?}"))?;
        let place = self.place(At::Pod(name))?;
        let mut cmd = Command::new(echo_bin);
        cmd.args(["serve", "--name", name]);
        let sctp = sctp_supported();
        let flags = [
            ("--tcp", &state.ports.tcp, true),
            ("--udp", &state.ports.udp, true),
            ("--http", &state.ports.http, true),
            ("--sctp", &state.ports.sctp, sctp),
        ];
        for (flag, ports, enabled) in flags {
            for port in ports.iter().filter(|_| enabled) {
                cmd.args([
                    flag,
                    &format!("0.0.0.0:{port}"),
                    flag,
                    &format!("[::]:{port}"),
                ]);
            }
        }
        let daemon =
            Daemon::spawn_until_line(&place, &mut cmd, &log, "ready", Duration::from_secs(10))
                .with_context(|| format!("starting echo pod {name}"))?;
        if let Some(state) = self.pods.get_mut(name) {
            state.echo = Some(daemon);
        }
        Ok(())
    }

    /// Rewrites `nodes.yaml` with label `topology.kubernetes.io/zone` on the nodes named in
    /// `zones` (`(node, zone)`); write it before starting agents (an agent reads its own
    /// node's zone).
    pub fn set_node_zones(&self, zones: &[(&str, &str)]) -> Result<()> {
        let yaml = crate::manifests::nodes_yaml_with_zones(self.nodes(), zones);
        self.write_manifest("nodes.yaml", &yaml)
    }

    /// Kills a pod's echo server but keeps its network (connections to it are refused).
    pub fn stop_pod(&mut self, name: &str) -> Result<()> {
        let state = self
            .pods
            .get_mut(name)
            .with_context(|| format!("no pod {name:?}"))?;
        if let Some(mut d) = state.echo.take() {
            d.kill();
        }
        Ok(())
    }

    /// Removes a pod entirely: process, namespace, veth and the node's route to it.
    pub fn remove_pod(&mut self, name: &str) -> Result<()> {
        let mut state = self
            .pods
            .remove(name)
            .with_context(|| format!("no pod {name:?}"))?;
        if let Some(mut d) = state.echo.take() {
            d.kill();
        }
        netns::delete(&state.pod.netns)?;
        self.namespaces.retain(|n| *n != state.pod.netns);
        Ok(())
    }

    /// Routes `cidr` (v4 or v6) from the client via `node`'s underlay address, e.g. for
    /// LoadBalancer or external IPs.
    pub fn client_route(&self, cidr: &str, node: &str) -> Result<()> {
        let n = self.node(node)?;
        let cmd = if cidr.contains(':') {
            format!("route replace {cidr} via {}", n.ipv6)
        } else {
            format!("route replace {cidr} via {}", n.ipv4)
        };
        netns::ip_batch(&self.client_ns(), &[cmd])
    }

    /// The network namespace name of a place (e.g. to bind a listener inside it).
    pub fn netns_name(&self, at: At<'_>) -> Result<String> {
        Ok(match at {
            At::Pod(name) => self.pod(name)?.netns.clone(),
            At::Node(name) => self.node(name)?.netns.clone(),
            At::Client => self.client_ns(),
        })
    }

    pub(crate) fn place(&self, at: At<'_>) -> Result<Place> {
        Ok(match at {
            At::Pod(name) => {
                let pod = self.pod(name)?;
                Place {
                    netns: netns::path(&pod.netns),
                    cgroup: Some(self.node(&pod.node)?.cgroup.clone()),
                }
            }
            At::Node(name) => {
                let node = self.node(name)?;
                Place {
                    netns: netns::path(&node.netns),
                    cgroup: Some(node.cgroup.clone()),
                }
            }
            At::Client => Place {
                netns: netns::path(&self.client_ns()),
                cgroup: None,
            },
        })
    }

    /// Runs `argv` at `at` and returns its output (killed after 30 s).
    pub fn exec(&self, at: At<'_>, argv: &[&str]) -> Result<Output> {
        self.exec_timeout(at, argv, Duration::from_secs(30))
    }

    pub fn exec_timeout(&self, at: At<'_>, argv: &[&str], timeout: Duration) -> Result<Output> {
        let (program, args) = argv.split_first().context("exec: empty argv")?;
        let mut cmd = Command::new(program);
        cmd.args(args);
        output_in(&self.place(at)?, &mut cmd, None, timeout)
    }

    /// Like [`Self::exec`], with `input` on stdin.
    pub fn exec_input(&self, at: At<'_>, argv: &[&str], input: &[u8]) -> Result<Output> {
        let (program, args) = argv.split_first().context("exec: empty argv")?;
        let mut cmd = Command::new(program);
        cmd.args(args);
        output_in(
            &self.place(at)?,
            &mut cmd,
            Some(input),
            Duration::from_secs(30),
        )
    }

    /// Writes a manifest atomically (temp file + rename) into [`Self::manifest_dir`].
    pub fn write_manifest(&self, file: &str, yaml: &str) -> Result<()> {
        anyhow::ensure!(
            !file.contains('/') && !file.starts_with('.'),
            "manifest name {file:?} must be a plain file name"
        );
        let dir = self.manifest_dir();
        // Hidden and not *.yaml, so an agent never reads it half-written.
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, dir.join(file)).with_context(|| format!("renaming to {file}"))
    }

    /// Writes `{namespace}-{name}.yaml`: the Service plus `{name}-v4`/`{name}-v6`
    /// EndpointSlices with `ports` (`(name, protocol, port)`) and a ready endpoint per pod.
    /// Rewriting it with other pods is how a test changes endpoints.
    pub fn write_service(
        &self,
        svc: &crate::manifests::Service,
        ports: &[(&str, &str, u16)],
        pods: &[&Pod],
    ) -> Result<()> {
        let mut docs = vec![svc.to_json()];
        docs.extend(crate::manifests::endpoint_slices(
            svc.namespace(),
            svc.name(),
            ports,
            pods,
        ));
        self.write_manifest(
            &format!("{}-{}.yaml", svc.namespace(), svc.name()),
            &crate::manifests::yaml_docs(&docs),
        )
    }

    pub fn remove_manifest(&self, file: &str) -> Result<()> {
        let path = self.manifest_dir().join(file);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
    }

    /// The arguments [`Self::start_agent`] passes, with any flag also present in `extra`
    /// left to `extra`.
    pub fn agent_args(&self, node: &str, mode: Mode, extra: &[&str]) -> Result<Vec<String>> {
        let n = self.node(node)?;
        let defaults: [(&str, String); 12] = [
            ("--source", format!("dir:{}", self.manifest_dir().display())),
            ("--proxy-mode", mode.as_str().into()),
            ("--hostname-override", n.name.clone()),
            ("--cluster-cidr", CLUSTER_CIDRS.into()),
            ("--healthz-bind-address", AGENT_HEALTHZ.into()),
            ("--metrics-bind-address", AGENT_METRICS.into()),
            ("--min-sync-period", "0s".into()),
            ("--bpffs-path", n.bpffs.display().to_string()),
            ("--cgroup-path", n.cgroup.display().to_string()),
            ("--ingress-http-bind", "0.0.0.0:80".into()),
            ("--ingress-https-bind", "0.0.0.0:443".into()),
            (
                "--admin-socket",
                self.admin_socket(node).display().to_string(),
            ),
        ];
        let overridden = |flag: &str| {
            extra
                .iter()
                .any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
        };
        let mut args = vec!["agent".to_owned()];
        for (flag, value) in defaults {
            if !overridden(flag) {
                args.push(flag.to_owned());
                args.push(value);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Ok(args)
    }

    /// Starts `sluice agent` in `node`'s namespace and cgroup, and waits until its healthz
    /// answers 200 (fails with the agent's log otherwise).
    pub fn start_agent(&mut self, node: &str, mode: Mode, extra: &[&str]) -> Result<()> {
        self.spawn_agent(node, mode, extra)?;
        let healthz = extra
            .iter()
            .position(|a| *a == "--healthz-bind-address")
            .and_then(|i| extra.get(i + 1))
            .copied()
            .unwrap_or(AGENT_HEALTHZ);
        let url = format!("http://{healthz}/healthz");
        let res = crate::wait_until(Duration::from_secs(30), "agent healthz 200", || {
            if self
                .node_state_mut(node)
                .ok()
                .and_then(|s| s.agent.as_mut())
                .is_some_and(|a| a.exited())
            {
                return Err(anyhow::anyhow!("agent exited"));
            }
            let out = self.curl(
                At::Node(node),
                &["-o", "/dev/null", "-w", "%{http_code}", &url],
            )?;
            Ok(String::from_utf8_lossy(&out.stdout) == "200")
        });
        res.with_context(|| {
            format!(
                "agent on {node} did not become healthy; log:\n{}",
                self.agent_log(node)
            )
        })
    }

    /// Uses this agent binary instead of [`bins::agent`] (e.g. a release build).
    pub fn set_agent_binary(&mut self, path: impl Into<PathBuf>) {
        self.agent_bin = Some(path.into());
    }

    fn agent_binary(&self) -> Result<PathBuf> {
        match &self.agent_bin {
            Some(p) => Ok(p.clone()),
            None => bins::agent(),
        }
    }

    /// HTTP status of the agent's `/healthz` on `node` (from the node itself), 0 if none.
    pub fn agent_healthz(&self, node: &str) -> Result<u16> {
        let url = format!("http://{AGENT_HEALTHZ}/healthz");
        let out = self.curl(
            At::Node(node),
            &["-o", "/dev/null", "-w", "%{http_code}", &url],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0))
    }

    /// The agent's Prometheus metrics text on `node`.
    pub fn agent_metrics(&self, node: &str) -> Result<String> {
        let url = format!("http://{AGENT_METRICS}/metrics");
        let out = self.curl(At::Node(node), &["-f", &url])?;
        anyhow::ensure!(
            out.status.success(),
            "metrics on {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `sluice agent` without waiting for anything.
    pub fn spawn_agent(&mut self, node: &str, mode: Mode, extra: &[&str]) -> Result<()> {
        let bin = self.agent_binary()?;
        let args = self.agent_args(node, mode, extra)?;
        let place = self.place(At::Node(node))?;
        let log = self.agent_log_path(node);
        let state = self.node_state_mut(node)?;
        if let Some(mut old) = state.agent.take() {
            old.kill();
        }
        let mut cmd = Command::new(bin);
        cmd.args(&args);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        state.agent = Some(Daemon::spawn(&place, &mut cmd, &log)?);
        Ok(())
    }

    fn agent_log_path(&self, node: &str) -> PathBuf {
        self.workdir.join("logs").join(format!("agent-{node}.log"))
    }

    /// Everything the node's agents logged so far (all runs, appended).
    pub fn agent_log(&self, node: &str) -> String {
        std::fs::read_to_string(self.agent_log_path(node)).unwrap_or_default()
    }

    /// The process id of the node's agent while one was started (benchmarks read its
    /// `/proc` entries).
    pub fn agent_pid(&mut self, node: &str) -> Option<u32> {
        let state = self.node_state_mut(node).ok()?;
        state.agent.as_ref().map(|agent| agent.child.id())
    }

    /// Whether the node's agent process is running.
    pub fn agent_running(&mut self, node: &str) -> bool {
        self.node_state_mut(node)
            .ok()
            .and_then(|s| s.agent.as_mut())
            .is_some_and(|a| !a.exited())
    }

    /// SIGTERM, then waits up to 10 s; returns the exit status (error if it did not exit).
    pub fn stop_agent(&mut self, node: &str) -> Result<std::process::ExitStatus> {
        let state = self.node_state_mut(node)?;
        let mut agent = state
            .agent
            .take()
            .with_context(|| format!("no agent running on {node}"))?;
        signal(agent.child.id(), libc::SIGTERM);
        match wait_timeout(&mut agent.child, Duration::from_secs(10))? {
            Some(status) => Ok(status),
            None => bail!("agent on {node} ignored SIGTERM for 10 s (killed)"),
        }
    }

    /// SIGKILL: the agent gets no chance to clean up (forwarding must go on).
    pub fn kill_agent(&mut self, node: &str) -> Result<()> {
        let state = self.node_state_mut(node)?;
        let mut agent = state
            .agent
            .take()
            .with_context(|| format!("no agent running on {node}"))?;
        agent.kill();
        Ok(())
    }

    /// The agent's admin socket on `node` (in the work directory).
    pub fn admin_socket(&self, node: &str) -> PathBuf {
        self.workdir.join(format!("{node}-admin.sock"))
    }

    /// Runs `sluice ARGS --proxy-mode MODE --bpffs-path .. --admin-socket ..` (the
    /// `inspect` and `explain` commands) in the node's namespace, whether or not its agent
    /// runs.
    pub fn sluice_cli(&self, node: &str, mode: Mode, args: &[&str]) -> Result<Output> {
        let bin = self.agent_binary()?;
        let n = self.node(node)?;
        let mut cmd = Command::new(bin);
        cmd.args(args).args([
            "--proxy-mode",
            mode.as_str(),
            "--bpffs-path",
            &n.bpffs.display().to_string(),
            "--admin-socket",
            &self.admin_socket(node).display().to_string(),
        ]);
        output_in(
            &self.place(At::Node(node))?,
            &mut cmd,
            None,
            Duration::from_secs(30),
        )
    }

    /// Runs `sluice agent --cleanup --proxy-mode MODE` (with the node's bpffs and cgroup
    /// paths) in the node's namespace.
    pub fn agent_cleanup(&self, node: &str, mode: Mode) -> Result<Output> {
        let bin = self.agent_binary()?;
        let n = self.node(node)?;
        let (bpffs, cgroup) = (
            n.bpffs.display().to_string(),
            n.cgroup.display().to_string(),
        );
        let mut cmd = Command::new(bin);
        cmd.args([
            "agent",
            "--cleanup",
            "--proxy-mode",
            mode.as_str(),
            "--bpffs-path",
            &bpffs,
            "--cgroup-path",
            &cgroup,
        ]);
        output_in(
            &self.place(At::Node(node))?,
            &mut cmd,
            None,
            Duration::from_secs(60),
        )
    }

    fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        for n in &mut self.nodes {
            if let Some(mut a) = n.agent.take() {
                a.kill();
            }
        }
        for p in self.pods.values_mut() {
            if let Some(mut d) = p.echo.take() {
                d.kill();
            }
        }
        for n in &self.nodes {
            if let Err(e) = host::remove_cgroup(&n.node.cgroup) {
                errors.push(format!("{e:#}"));
            }
        }
        // Pods first, then nodes and the client, the bridge last.
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = netns::delete(ns) {
                errors.push(format!("{e:#}"));
            }
        }
        self.namespaces.clear();
        for n in &self.nodes {
            if n.node.bpffs.exists()
                && let Err(e) = std::fs::remove_dir_all(&n.node.bpffs)
            {
                errors.push(format!("removing {}: {e}", n.node.bpffs.display()));
            }
        }
        errors
    }

    /// What a failing test's reader wants to see per node: addresses, routes, nftables.
    fn dump_node_state(&self) {
        for n in self.nodes() {
            for argv in [
                &["ip", "-br", "addr"][..],
                &["ip", "route"],
                &["ip", "-6", "route"],
                &["nft", "list", "ruleset"],
            ] {
                let text = match self.exec_timeout(At::Node(&n.name), argv, Duration::from_secs(5))
                {
                    Ok(out) => format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ),
                    Err(e) => format!("{e:#}"),
                };
                eprintln!("===== {} $ {} =====\n{text}", n.name, argv.join(" "));
            }
        }
    }

    fn dump_logs(&self) {
        self.dump_node_state();
        let Ok(dir) = std::fs::read_dir(self.workdir.join("logs")) else {
            return;
        };
        let mut logs: Vec<_> = dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            eprintln!("===== {} =====\n{text}", log.display());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            self.dump_logs();
        }
        let errors = self.teardown();
        for e in &errors {
            eprintln!("cluster {} teardown: {e}", self.prefix);
        }
        if panicking || std::env::var_os("SLUICE_KEEP_LOGS").is_some() {
            eprintln!(
                "cluster {}: logs kept in {}",
                self.prefix,
                self.workdir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.workdir);
        }
    }
}
