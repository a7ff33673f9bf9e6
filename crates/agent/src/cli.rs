//! Flags (clap, each also from an env var) and their validation into an [`AgentConfig`].
//! Flag names follow kube-proxy's where the meaning is the same.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use sluice_compute::ComputeConfig;
use sluice_dp_ebpf::{EbpfConfig, XdpMode};
use sluice_ingress::IngressConfig;
use sluice_model::ObjectKey;

#[derive(Debug, clap::Parser)]
#[command(
    name = "sluice",
    version,
    about = "Kubernetes Service proxy (eBPF / nftables) with a built-in Ingress proxy"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the node agent.
    Agent(Box<AgentArgs>),
    /// Print the plan for a directory of manifests and what each dataplane would program
    /// (no root, no kernel). Exits 1 when objects had to be skipped.
    Plan(Box<PlanArgs>),
    /// Show what is programmed on this node (kernel state, joined with the running agent's
    /// names): services, frontends, backends, conntrack, Ingress routes.
    Inspect(Box<crate::inspect::InspectArgs>),
    /// Walk a packet (`IP:PORT[/PROTO] [--from SRC]`) or an Ingress request (`https://HOST/PATH`)
    /// through the live state and say what happens to it, and why.
    Explain(Box<crate::explain::ExplainArgs>),
}

/// Which translations `sluice plan` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanMode {
    Nftables,
    Ebpf,
    /// Both dataplanes.
    Both,
    /// The plan only.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    /// `dir:PATH`: a directory of manifests.
    #[arg(long)]
    pub source: String,
    /// The node to plan for, as in EndpointSlice `nodeName`; its Node object (if in the
    /// directory) gives its addresses and zone.
    #[arg(long)]
    pub hostname_override: String,
    /// More addresses of the node (comma-separated), as its interfaces would have them.
    #[arg(long, value_delimiter = ',')]
    pub node_address: Vec<std::net::IpAddr>,
    #[arg(long, value_enum, default_value = "both")]
    pub proxy_mode: PlanMode,
    /// Also print the Ingress route plan (the classes served as with `sluice agent`).
    #[arg(long)]
    pub ingress: bool,
    #[command(flatten)]
    pub ingress_classes: IngressClassFlags,
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
    #[command(flatten)]
    pub compute: ComputeFlags,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyMode {
    /// eBPF when the kernel supports it, else nftables.
    Auto,
    Ebpf,
    Nftables,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpFlag {
    Native,
    Generic,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The flags that shape the plan, shared by `sluice agent` and `sluice plan`.
#[derive(Debug, Clone, clap::Args)]
pub struct ComputeFlags {
    /// Pod CIDRs (comma-separated): traffic to ClusterIPs from elsewhere is masqueraded.
    #[arg(long, env = "SLUICE_CLUSTER_CIDR", value_delimiter = ',')]
    pub cluster_cidr: Vec<String>,
    /// CIDRs (comma-separated) of node addresses that serve NodePorts (default: all).
    #[arg(long, env = "SLUICE_NODEPORT_ADDRESSES", value_delimiter = ',')]
    pub nodeport_addresses: Vec<String>,
    /// Serve Services labelled `service.kubernetes.io/service-proxy-name` with this value
    /// (Services labelled with another value are left to that proxy; unlabelled ones are ours).
    #[arg(long, env = "SLUICE_SERVICE_PROXY_NAME")]
    pub service_proxy_name: Option<String>,
    /// Accept Service externalIPs that are addresses of this node (refused by default: such an
    /// externalIP would capture the node's own port, the CVE-2020-8554 class).
    #[arg(long, env = "SLUICE_ALLOW_EXTERNAL_IPS_ON_NODE_ADDRESSES")]
    pub allow_external_ips_on_node_addresses: bool,
    /// The cluster's NodePort range (the API server's `--service-node-port-range`); NodePorts
    /// outside it are reported.
    #[arg(
        long,
        env = "SLUICE_SERVICE_NODE_PORT_RANGE",
        default_value = "30000-32767"
    )]
    pub service_node_port_range: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Where objects come from: `k8s` (the API server) or `dir:PATH` (a directory of manifests).
    #[arg(long, env = "SLUICE_SOURCE", default_value = "k8s")]
    pub source: String,
    /// kubeconfig file for `--source k8s` (default: in-cluster config, then ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    #[arg(long, env = "SLUICE_PROXY_MODE", value_enum, default_value = "auto")]
    pub proxy_mode: ProxyMode,
    /// This node's name, as in EndpointSlice `nodeName` (default: the hostname).
    #[arg(long, env = "SLUICE_HOSTNAME_OVERRIDE")]
    pub hostname_override: Option<String>,
    #[command(flatten)]
    pub compute: ComputeFlags,
    #[arg(
        long,
        env = "SLUICE_HEALTHZ_BIND_ADDRESS",
        default_value = "0.0.0.0:10256"
    )]
    pub healthz_bind_address: String,
    #[arg(
        long,
        env = "SLUICE_METRICS_BIND_ADDRESS",
        default_value = "127.0.0.1:10249"
    )]
    pub metrics_bind_address: String,
    /// Minimum time between two syncs (changes in between are batched), e.g. `1s`, `100ms`.
    #[arg(long, env = "SLUICE_MIN_SYNC_PERIOD", default_value = "1s")]
    pub min_sync_period: String,
    /// Period of the full resync that repairs any drift.
    #[arg(long, env = "SLUICE_SYNC_PERIOD", default_value = "30s")]
    pub sync_period: String,
    /// bpffs directory for pinned maps and links (eBPF mode).
    #[arg(long, env = "SLUICE_BPFFS_PATH", default_value = "/sys/fs/bpf/sluice")]
    pub bpffs_path: PathBuf,
    /// cgroup v2 directory where socket-level load balancing attaches (default: cgroup2 root).
    #[arg(long, env = "SLUICE_CGROUP_PATH")]
    pub cgroup_path: Option<PathBuf>,
    /// External interfaces for tc/XDP (comma-separated; default: those with node addresses).
    #[arg(long, env = "SLUICE_INTERFACES", value_delimiter = ',')]
    pub interfaces: Vec<String>,
    #[arg(long, env = "SLUICE_XDP", value_enum, default_value = "off")]
    pub xdp: XdpFlag,
    /// eBPF map capacities, e.g. `ct=1048576,maglev=4194304` (maps: svc, slot, maglev, src,
    /// cidr, nodeip, aff, rev, ct). Unlisted maps are sized automatically and grow as needed;
    /// listed ones never grow (service ports that do not fit are reported).
    #[arg(long, env = "SLUICE_BPF_MAP_SIZES", default_value = "")]
    pub bpf_map_sizes: String,
    /// Ingress HTTP listener; empty disables it.
    #[arg(long, env = "SLUICE_INGRESS_HTTP_BIND", default_value = "0.0.0.0:80")]
    pub ingress_http_bind: String,
    /// Ingress HTTPS listener; empty disables it.
    #[arg(long, env = "SLUICE_INGRESS_HTTPS_BIND", default_value = "0.0.0.0:443")]
    pub ingress_https_bind: String,
    #[command(flatten)]
    pub ingress_classes: IngressClassFlags,
    #[command(flatten)]
    pub ingress_proxy: crate::ingress_flags::IngressProxyFlags,
    /// Addresses written to Ingress `status.loadBalancer` (comma-separated; default: this
    /// node's addresses). Set the same value on every node (e.g. the VIP in front of them).
    #[arg(long, env = "SLUICE_INGRESS_STATUS_ADDRESS", value_delimiter = ',')]
    pub ingress_status_address: Vec<String>,
    /// Do not run the Ingress proxy.
    #[arg(long, env = "SLUICE_DISABLE_INGRESS")]
    pub disable_ingress: bool,
    /// On SIGTERM or when a new agent has taken the listeners over: how long connections get
    /// to finish (requests in flight, keep-alive connections until their next response,
    /// HTTP/2 streams after GOAWAY, WebSockets) before the agent exits. Keep it below the
    /// pod's `terminationGracePeriodSeconds`.
    #[arg(long, env = "SLUICE_INGRESS_DRAIN_TIMEOUT", default_value = "30s")]
    pub ingress_drain_timeout: String,
    #[command(flatten)]
    pub load_balancer: LoadBalancerFlags,
    /// Remove everything sluice programmed on this node and exit.
    #[arg(long)]
    pub cleanup: bool,
    #[command(flatten)]
    pub cluster: crate::cluster::ClusterFlags,
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Which Ingresses are served (ingress-nginx's flag names where they exist).
#[derive(Debug, Clone, clap::Args)]
pub struct IngressClassFlags {
    /// IngressClass `spec.controller` value this agent serves.
    #[arg(
        long,
        env = "SLUICE_INGRESS_CONTROLLER",
        default_value = "sluice.dev/ingress"
    )]
    pub ingress_controller: String,
    /// Ingress class names served in addition, by `spec.ingressClassName` or the
    /// `kubernetes.io/ingress.class` annotation, whatever controller their IngressClass names
    /// (repeatable or comma-separated; e.g. `nginx` to take over from ingress-nginx).
    #[arg(long, env = "SLUICE_INGRESS_CLASS", value_delimiter = ',')]
    pub ingress_class: Vec<String>,
    /// Also serve Ingresses that name no class at all.
    #[arg(long, env = "SLUICE_WATCH_INGRESS_WITHOUT_CLASS")]
    pub watch_ingress_without_class: bool,
    /// `NAMESPACE/NAME` of a kubernetes.io/tls Secret presented to TLS clients whose name no
    /// Ingress lists (default: a generated self-signed certificate, as ingress-nginx).
    #[arg(long, env = "SLUICE_DEFAULT_SSL_CERTIFICATE")]
    pub default_ssl_certificate: Option<String>,
}

impl IngressClassFlags {
    /// Pure validation into the route planner's configuration.
    pub fn to_config(&self) -> Result<sluice_routes::RouteConfig, ConfigError> {
        let controller = self.ingress_controller.trim();
        if controller.is_empty() {
            return Err(invalid(
                "ingress-controller",
                &self.ingress_controller,
                "must not be empty",
            ));
        }
        Ok(sluice_routes::RouteConfig {
            controller: controller.to_owned(),
            classes: self
                .ingress_class
                .iter()
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty())
                .collect(),
            watch_without_class: self.watch_ingress_without_class,
            default_certificate: self.default_certificate()?,
        })
    }

    fn default_certificate(&self) -> Result<Option<ObjectKey>, ConfigError> {
        let Some(value) = self.default_ssl_certificate.as_deref().map(str::trim) else {
            return Ok(None);
        };
        if value.is_empty() {
            return Ok(None);
        }
        match value.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(Some(ObjectKey::new(namespace, name)))
            }
            _ => Err(invalid(
                "default-ssl-certificate",
                value,
                "expected NAMESPACE/NAME",
            )),
        }
    }
}

/// LoadBalancer address assignment (pools) and L2 announcement; see docs/loadbalancer.md.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadBalancerFlags {
    /// `spec.loadBalancerClass` handled (Services without a class are handled too).
    #[arg(
        long,
        env = "SLUICE_LOAD_BALANCER_CLASS",
        default_value = sluice_lbipam::DEFAULT_LOAD_BALANCER_CLASS
    )]
    pub load_balancer_class: String,
    /// Neither assign LoadBalancer addresses from LoadBalancerIPPools nor announce them
    /// (another controller, e.g. a cloud or MetalLB, does).
    #[arg(long, env = "SLUICE_DISABLE_LOAD_BALANCER_IPAM")]
    pub disable_load_balancer_ipam: bool,
}

/// Validated [`LoadBalancerFlags`]; `None` in [`AgentConfig`] when disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalancerConfig {
    pub class: String,
    /// `--lease-namespace` (shared with leader election): where the node heartbeats live.
    pub lease_namespace: String,
}

impl LoadBalancerFlags {
    fn to_config(&self, lease_namespace: &str) -> Result<Option<LoadBalancerConfig>, ConfigError> {
        if self.disable_load_balancer_ipam {
            return Ok(None);
        }
        let class = self.load_balancer_class.trim();
        if class.is_empty() {
            return Err(invalid(
                "load-balancer-class",
                &self.load_balancer_class,
                "must not be empty (use --disable-load-balancer-ipam to turn assignment off)",
            ));
        }
        Ok(Some(LoadBalancerConfig {
            class: class.to_owned(),
            lease_namespace: lease_namespace.to_owned(),
        }))
    }
}

/// Where snapshots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceConfig {
    Kubernetes { kubeconfig: Option<PathBuf> },
    Dir(PathBuf),
}

impl fmt::Display for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceConfig::Kubernetes { .. } => f.write_str("k8s"),
            SourceConfig::Dir(dir) => write!(f, "dir:{}", dir.display()),
        }
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub source: SourceConfig,
    pub proxy_mode: ProxyMode,
    pub node_name: String,
    pub compute: ComputeConfig,
    pub healthz_bind: SocketAddr,
    pub metrics_bind: SocketAddr,
    pub min_sync_period: Duration,
    pub sync_period: Duration,
    pub ebpf: EbpfConfig,
    pub ingress: Option<IngressConfig>,
    /// Which Ingresses the proxy serves.
    pub routes: sluice_routes::RouteConfig,
    pub ingress_status_addresses: Vec<std::net::IpAddr>,
    /// `None`: `--disable-load-balancer-ipam`.
    pub load_balancer: Option<LoadBalancerConfig>,
    pub cleanup: bool,
    pub log_format: LogFormat,
    pub cluster: crate::cluster::ClusterConfig,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--{flag}: {value:?} is not valid: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
}

impl ConfigError {
    pub fn invalid(flag: &'static str, value: &str, reason: impl fmt::Display) -> Self {
        ConfigError::Invalid {
            flag,
            value: value.to_owned(),
            reason: reason.to_string(),
        }
    }
}

fn invalid(flag: &'static str, value: &str, reason: impl fmt::Display) -> ConfigError {
    ConfigError::invalid(flag, value, reason)
}

impl AgentArgs {
    /// Pure validation of the flags (the hostname is the only outside fact it reads).
    pub fn validate(&self) -> Result<AgentConfig, ConfigError> {
        self.validate_with_hostname(hostname)
    }

    pub(crate) fn validate_with_hostname(
        &self,
        hostname: impl FnOnce() -> Option<String>,
    ) -> Result<AgentConfig, ConfigError> {
        let source = match self.source.as_str() {
            "k8s" => SourceConfig::Kubernetes {
                kubeconfig: self.kubeconfig.clone(),
            },
            other => match other.strip_prefix("dir:") {
                Some(path) if !path.is_empty() => SourceConfig::Dir(PathBuf::from(path)),
                _ => return Err(invalid("source", other, "expected `k8s` or `dir:PATH`")),
            },
        };
        let node_name = match &self.hostname_override {
            Some(name) if !name.trim().is_empty() => name.trim().to_lowercase(),
            Some(name) => return Err(invalid("hostname-override", name, "must not be empty")),
            None => hostname().ok_or_else(|| {
                invalid(
                    "hostname-override",
                    "",
                    "not given and the hostname is unknown",
                )
            })?,
        };
        let compute = self.compute.to_config()?;
        let addr =
            |flag: &'static str, v: &str| v.parse::<SocketAddr>().map_err(|e| invalid(flag, v, e));
        let optional_addr =
            |flag: &'static str, v: &str| -> Result<Option<SocketAddr>, ConfigError> {
                if v.trim().is_empty() {
                    Ok(None)
                } else {
                    addr(flag, v.trim()).map(Some)
                }
            };
        let min_sync_period = parse_duration(&self.min_sync_period)
            .map_err(|e| invalid("min-sync-period", &self.min_sync_period, e))?;
        let sync_period = parse_duration(&self.sync_period)
            .map_err(|e| invalid("sync-period", &self.sync_period, e))?;
        if sync_period.is_zero() {
            return Err(invalid(
                "sync-period",
                &self.sync_period,
                "must be greater than zero",
            ));
        }
        let ebpf_defaults = EbpfConfig::default();
        let ebpf = EbpfConfig {
            bpffs_path: self.bpffs_path.clone(),
            cgroup_path: self
                .cgroup_path
                .clone()
                .unwrap_or(ebpf_defaults.cgroup_path),
            interfaces: self
                .interfaces
                .iter()
                .filter(|i| !i.is_empty())
                .cloned()
                .collect(),
            xdp: match self.xdp {
                XdpFlag::Native => XdpMode::Native,
                XdpFlag::Generic => XdpMode::Generic,
                XdpFlag::Off => XdpMode::Off,
            },
            map_sizes: self
                .bpf_map_sizes
                .parse()
                .map_err(|e| invalid("bpf-map-sizes", &self.bpf_map_sizes, e))?,
            conntrack: ebpf_defaults.conntrack,
        };
        let ingress = if self.disable_ingress {
            None
        } else {
            let http_bind = optional_addr("ingress-http-bind", &self.ingress_http_bind)?;
            let https_bind = optional_addr("ingress-https-bind", &self.ingress_https_bind)?;
            let listening = http_bind.is_some() || https_bind.is_some();
            let mut config = self.ingress_proxy.to_config(http_bind, https_bind)?;
            config.shutdown_grace = parse_duration(&self.ingress_drain_timeout)
                .map_err(|e| invalid("ingress-drain-timeout", &self.ingress_drain_timeout, e))?;
            listening.then_some(config)
        };
        let routes = self.ingress_classes.to_config()?;
        let ingress_status_addresses = self
            .ingress_status_address
            .iter()
            .filter(|v| !v.trim().is_empty())
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|e| invalid("ingress-status-address", v, e))
            })
            .collect::<Result<_, _>>()?;
        let cluster = self.cluster.validate()?;
        let mut compute = compute;
        // NodePorts on our own Ingress listeners' ports would capture their traffic.
        compute.reserved_node_ports = ingress
            .iter()
            .flat_map(|i: &IngressConfig| [i.http_bind, i.https_bind])
            .flatten()
            .map(|a| a.port())
            .collect();
        Ok(AgentConfig {
            source,
            proxy_mode: self.proxy_mode,
            node_name,
            compute,
            healthz_bind: addr("healthz-bind-address", &self.healthz_bind_address)?,
            metrics_bind: addr("metrics-bind-address", &self.metrics_bind_address)?,
            min_sync_period,
            sync_period,
            ebpf,
            ingress,
            routes,
            ingress_status_addresses,
            load_balancer: self.load_balancer.to_config(&cluster.lease_namespace)?,
            cleanup: self.cleanup,
            log_format: self.log_format,
            cluster,
        })
    }
}

impl ComputeFlags {
    /// Pure validation into the compute configuration.
    pub fn to_config(&self) -> Result<ComputeConfig, ConfigError> {
        let cidrs = |flag: &'static str, values: &[String]| -> Result<Vec<IpNet>, ConfigError> {
            values
                .iter()
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    v.trim()
                        .parse::<IpNet>()
                        .map(|n| n.trunc())
                        .map_err(|e| invalid(flag, v, e))
                })
                .collect()
        };
        Ok(ComputeConfig {
            cluster_cidrs: cidrs("cluster-cidr", &self.cluster_cidr)?,
            nodeport_addresses: cidrs("nodeport-addresses", &self.nodeport_addresses)?,
            service_proxy_name: self
                .service_proxy_name
                .as_deref()
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
            allow_external_ips_on_node_addresses: self.allow_external_ips_on_node_addresses,
            reserved_node_ports: Vec::new(),
            node_port_range: Some(parse_port_range(&self.service_node_port_range).map_err(
                |e| invalid("service-node-port-range", &self.service_node_port_range, e),
            )?),
        })
    }
}

/// `LOW-HIGH` (inclusive), as kube-apiserver's `--service-node-port-range`.
fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let (low, high) = text
        .trim()
        .split_once('-')
        .ok_or("expected LOW-HIGH, e.g. 30000-32767")?;
    let parse = |v: &str| v.trim().parse::<u16>().map_err(|e| format!("{v:?}: {e}"));
    let (low, high) = (parse(low)?, parse(high)?);
    if low == 0 || low > high {
        return Err("LOW must be at least 1 and at most HIGH".to_owned());
    }
    Ok((low, high))
}

fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_lowercase();
    (!name.is_empty()).then_some(name)
}

/// `0s`, `250ms`, `1s`, `1.5s`, `2m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or("missing unit (ms, s, m, h)")?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{number:?} is not a number"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> AgentArgs {
        let mut argv = vec!["sluice", "agent"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).expect("flags parse").command {
            Command::Agent(args) => *args,
            _ => panic!("agent flags expected"),
        }
    }

    fn validate(args: &[&str]) -> Result<AgentConfig, ConfigError> {
        parse(args).validate_with_hostname(|| Some("host-1".into()))
    }

    #[test]
    fn defaults_are_kube_proxy_like() {
        let c = validate(&[]).unwrap();
        assert_eq!(
            c.source,
            SourceConfig::Kubernetes {
                kubeconfig: std::env::var_os("KUBECONFIG").map(PathBuf::from)
            }
        );
        assert_eq!(c.node_name, "host-1");
        assert_eq!(c.healthz_bind, "0.0.0.0:10256".parse().unwrap());
        assert_eq!(c.metrics_bind, "127.0.0.1:10249".parse().unwrap());
        assert_eq!(c.min_sync_period, Duration::from_secs(1));
        assert_eq!(c.proxy_mode, ProxyMode::Auto);
        assert_eq!(
            c.ingress.unwrap().https_bind,
            Some("0.0.0.0:443".parse().unwrap())
        );
    }

    #[test]
    fn dir_source_and_lists_parse() {
        let c = validate(&[
            "--source",
            "dir:/m",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/48",
            "--nodeport-addresses",
            "192.0.2.0/24",
            "--hostname-override",
            "Node-A",
            "--min-sync-period",
            "0s",
        ])
        .unwrap();
        assert_eq!(c.source, SourceConfig::Dir("/m".into()));
        assert_eq!(c.compute.cluster_cidrs.len(), 2);
        assert_eq!(
            c.compute.nodeport_addresses,
            vec!["192.0.2.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            c.node_name, "node-a",
            "node names are lower-case like kube-proxy's"
        );
        assert_eq!(c.min_sync_period, Duration::ZERO);
    }

    #[test]
    fn bad_values_name_the_flag_and_value() {
        let err = validate(&["--cluster-cidr", "10.244.0.0/33"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--cluster-cidr: \"10.244.0.0/33\" is not valid"),
            "{err}"
        );
        let err = validate(&["--source", "etcd"]).unwrap_err();
        assert!(
            err.to_string().contains("expected `k8s` or `dir:PATH`"),
            "{err}"
        );
        let err = validate(&["--min-sync-period", "5"]).unwrap_err();
        assert!(err.to_string().contains("--min-sync-period"), "{err}");
        let err = validate(&["--healthz-bind-address", "nowhere"]).unwrap_err();
        assert!(err.to_string().contains("--healthz-bind-address"), "{err}");
        assert!(validate(&["--sync-period", "0s"]).is_err());
        let err = validate(&["--bpf-map-sizes", "ct=many"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--bpf-map-sizes: \"ct=many\" is not valid: \"ct=many\": entries"),
            "{err}"
        );
    }

    #[test]
    fn bpf_map_sizes_are_explicit_only_where_given() {
        let c = validate(&["--bpf-map-sizes", "ct=1048576,maglev=4194304"]).unwrap();
        let sizes = &c.ebpf.map_sizes;
        assert_eq!(sizes.get(sluice_dp_ebpf::abi::MapKind::Ct), Some(1_048_576));
        assert!(!sizes.is_explicit(sluice_dp_ebpf::abi::MapKind::Svc));
        assert_eq!(validate(&[]).unwrap().ebpf.map_sizes, Default::default());
    }

    #[test]
    fn ingress_status_addresses_parse_and_bad_ones_are_named() {
        assert!(
            validate(&[]).unwrap().ingress_status_addresses.is_empty(),
            "default: node addresses"
        );
        let c = validate(&["--ingress-status-address", "203.0.113.7,2001:db8::7"]).unwrap();
        assert_eq!(
            c.ingress_status_addresses,
            vec![
                "203.0.113.7".parse::<std::net::IpAddr>().unwrap(),
                "2001:db8::7".parse().unwrap()
            ]
        );
        let err = validate(&["--ingress-status-address", "lb.example.com"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--ingress-status-address: \"lb.example.com\""),
            "{err}"
        );
    }

    #[test]
    fn ingress_drain_timeout_sets_how_long_connections_get() {
        let c = validate(&[]).unwrap().ingress.unwrap();
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        let c = validate(&["--ingress-drain-timeout", "5s"]).unwrap();
        assert_eq!(c.ingress.unwrap().shutdown_grace, Duration::from_secs(5));
        let err = validate(&["--ingress-drain-timeout", "soon"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--ingress-drain-timeout: \"soon\""),
            "{err}"
        );
    }

    #[test]
    fn empty_ingress_binds_disable_the_proxy() {
        let c = validate(&["--ingress-http-bind", "", "--ingress-https-bind", ""]).unwrap();
        assert!(c.ingress.is_none());
        assert!(validate(&["--disable-ingress"]).unwrap().ingress.is_none());
    }

    #[test]
    fn ingress_nginx_flags_choose_classes_and_the_default_certificate() {
        let c = validate(&[
            "--ingress-class",
            "nginx",
            "--ingress-class=internal,other",
            "--watch-ingress-without-class",
            "--default-ssl-certificate",
            "ingress/wildcard-cert",
        ])
        .unwrap();
        assert_eq!(c.routes.classes, ["nginx", "internal", "other"]);
        assert!(c.routes.watch_without_class);
        assert_eq!(
            c.routes.default_certificate,
            Some(ObjectKey::new("ingress", "wildcard-cert"))
        );
        assert_eq!(
            validate(&[]).unwrap().routes,
            sluice_routes::RouteConfig::default()
        );
        let err = validate(&["--default-ssl-certificate", "wildcard-cert"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--default-ssl-certificate: \"wildcard-cert\" is not valid: expected NAMESPACE/NAME"
        );
        // The proxy's own flags reach its configuration.
        let c = validate(&["--ingress-max-body-size=8m", "--ingress-access-log=false"]).unwrap();
        let ingress = c.ingress.unwrap();
        assert_eq!(ingress.max_request_body_bytes, 8 << 20);
        assert!(!ingress.access_log);
    }

    #[test]
    fn load_balancer_flags() {
        let c = validate(&[]).unwrap().load_balancer.unwrap();
        assert_eq!(c.class, "sluice.dev/lb");
        assert_eq!(c.lease_namespace, "kube-system");
        let c = validate(&[
            "--load-balancer-class",
            "example.com/lb",
            "--lease-namespace",
            "sluice",
        ])
        .unwrap()
        .load_balancer
        .unwrap();
        assert_eq!(
            (c.class.as_str(), c.lease_namespace.as_str()),
            ("example.com/lb", "sluice")
        );
        assert!(
            validate(&["--disable-load-balancer-ipam"])
                .unwrap()
                .load_balancer
                .is_none()
        );
        let err = validate(&["--load-balancer-class", " "]).unwrap_err();
        assert!(
            err.to_string().starts_with("--load-balancer-class"),
            "{err}"
        );
        let err = validate(&["--lease-namespace", "Kube_System"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--lease-namespace: \"Kube_System\""),
            "{err}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1d").is_err());
    }
}

#[cfg(test)]
mod manifest_tests {
    use clap::Parser as _;

    /// The shipped DaemonSet must pass flags this binary accepts.
    #[test]
    fn daemonset_args_are_valid_flags() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../manifests/daemonset.yaml"
        );
        let text = std::fs::read_to_string(path).expect("manifests/daemonset.yaml");
        let ds: serde_yaml::Value = serde_yaml::from_str(&text).expect("daemonset.yaml is YAML");
        let container = &ds["spec"]["template"]["spec"]["containers"][0];
        // The image's entrypoint is `sluice`; the args start with the command.
        let mut argv = vec!["sluice".to_owned()];
        for arg in container["args"].as_sequence().expect("args") {
            argv.push(arg.as_str().expect("string arg").to_owned());
        }
        let cli = super::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        let super::Command::Agent(args) = cli.command else {
            panic!("agent command expected");
        };
        let config = args
            .validate_with_hostname(|| Some("node-1".into()))
            .expect("valid");
        assert_eq!(
            config.source,
            super::SourceConfig::Kubernetes {
                kubeconfig: std::env::var_os("KUBECONFIG").map(Into::into)
            }
        );
        assert!(
            container["image"]
                .as_str()
                .is_some_and(|i| i.contains("sluice"))
        );
    }
}
