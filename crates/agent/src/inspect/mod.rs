//! `sluice inspect services|frontends|backends|conntrack|routes|announcements`: what is
//! actually programmed on this node, read from the kernel (the eBPF dataplane's pinned maps or
//! the nftables tables) — so it works with the agent stopped — and joined with the running
//! agent's names and decisions from its admin endpoint when it runs. Ingress routes and
//! LoadBalancer announcements live only in the agent's memory: `routes` and `announcements`
//! need it running.
//!
//! Output is a `kubectl get`-style table, or JSON with `-o json`.

pub mod conntrack;
pub mod ebpf;
pub mod kernel;
pub mod nft;
pub mod rows;
mod table;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Serialize;
use sluice_plan::{FrontendAddr, Protocol, SourceClass};

use crate::admin::{AdminClient, AdminError};
use crate::cli::ProxyMode;
use kernel::{KernelFrontend, KernelRoute, KernelView};
use rows::{RouteTableRows, ServiceRow};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Where the programmed state is (the same flags and variables as the agent's, so
/// `kubectl exec` into the agent's pod needs none).
#[derive(Debug, Clone, clap::Args)]
pub struct StateFlags {
    /// Which dataplane to read; `auto`: whichever this node has programmed.
    #[arg(long, env = "SLUICE_PROXY_MODE", value_enum, default_value = "auto")]
    pub proxy_mode: ProxyMode,
    #[arg(long, env = "SLUICE_BPFFS_PATH", default_value = "/sys/fs/bpf/sluice")]
    pub bpffs_path: PathBuf,
    /// The running agent's admin endpoint.
    #[arg(
        long,
        env = "SLUICE_ADMIN_SOCKET",
        default_value = "/run/sluice/admin.sock"
    )]
    pub admin_socket: PathBuf,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// Service ports: frontends, backend counts, and whether the kernel matches the plan.
    Services,
    /// Every programmed frontend and its outcome per source class.
    Frontends,
    /// Every programmed backend and who reaches it.
    Backends,
    /// Connections the dataplane translated.
    Conntrack,
    /// The Ingress route table (needs the running agent).
    Routes,
    /// The LoadBalancer addresses this node answers ARP/NDP for (needs the running agent).
    Announcements,
}

#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    #[arg(value_enum)]
    pub what: What,
    #[command(flatten)]
    pub state: StateFlags,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("cannot run {command}")]
    Run {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("cannot parse the output of {what}")]
    Parse {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// Names the pinned map that could not be read.
    #[error(transparent)]
    Pinned(#[from] sluice_dp_ebpf::ReadError),
    #[error("nothing is programmed on this node: {detail}")]
    NothingProgrammed { detail: String },
    #[error(transparent)]
    Admin(#[from] AdminError),
}

pub fn parse_protocol(text: &str) -> Option<Protocol> {
    match text {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        "sctp" => Some(Protocol::Sctp),
        _ => None,
    }
}

/// The programmed state of the dataplane `--proxy-mode` names (or the one present).
pub fn read_kernel(state: &StateFlags) -> Result<KernelView, InspectError> {
    let bpffs = &state.bpffs_path;
    let ebpf_view = || ebpf::read(bpffs);
    let found = match state.proxy_mode {
        ProxyMode::Ebpf => ebpf_view()?,
        ProxyMode::Nftables => nft::read()?,
        ProxyMode::Auto => match ebpf_view()? {
            Some(view) => Some(view),
            None => nft::read()?,
        },
    };
    found.ok_or_else(|| InspectError::NothingProgrammed {
        detail: format!(
            "no eBPF maps pinned under {} and no nftables table `sluice` ({})",
            bpffs.display(),
            "check --bpffs-path and --proxy-mode"
        ),
    })
}

/// The running agent's service ports; `None` when it is not running.
pub fn live_services(state: &StateFlags) -> Result<Option<Vec<ServiceRow>>, InspectError> {
    match AdminClient::new(&state.admin_socket).get("/v1/services") {
        Ok(rows) => Ok(Some(rows)),
        Err(AdminError::NotRunning { .. }) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// `sluice inspect`: prints the table (or JSON) to stdout.
pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    let out = match args.what {
        What::Routes => routes(&args.state)?,
        What::Conntrack => conntrack(&args.state)?,
        What::Announcements => announcements(&args.state)?,
        what => {
            let kernel = read_kernel(&args.state)?;
            let live = live_services(&args.state)?;
            if live.is_none() && args.state.output == Output::Table {
                eprintln!(
                    "note: the agent is not running (no {}): showing the kernel only",
                    args.state.admin_socket.display()
                );
            }
            match what {
                What::Services => services(&kernel, live.as_deref(), args.state.output),
                What::Frontends => frontends(&kernel, live.as_deref(), args.state.output),
                _ => backends(&kernel, live.as_deref(), args.state.output),
            }
        }
    };
    print!("{out}");
    Ok(())
}

fn render<T: Serialize>(
    output: Output,
    rows: &[T],
    headers: &[&str],
    cells: impl Fn(&T) -> Vec<String>,
) -> String {
    match output {
        Output::Json => serde_json::to_string_pretty(rows).unwrap_or_default() + "\n",
        Output::Table => table::render(headers, rows.iter().map(cells).collect()),
    }
}

/// The service port each kernel frontend belongs to: its own name (nftables), else the
/// running agent's plan (eBPF NodePorts are matched per address by protocol and port).
fn service_names(kernel: &KernelView, live: Option<&[ServiceRow]>) -> BTreeMap<String, String> {
    let mut by_key: BTreeMap<String, String> = BTreeMap::new();
    let mut nodeports: BTreeMap<(String, String, u16), String> = BTreeMap::new();
    for row in live.into_iter().flatten() {
        for fe in &row.frontends {
            match fe.ip {
                Some(_) => {
                    by_key.insert(fe.frontend.clone(), row.service.clone());
                }
                None => {
                    nodeports.insert(
                        (fe.family.clone(), fe.protocol.clone(), fe.port),
                        row.service.clone(),
                    );
                }
            }
        }
    }
    kernel
        .frontends
        .iter()
        .filter_map(|fe| {
            let key = fe.key.to_string();
            let name = fe
                .service
                .clone()
                .or_else(|| by_key.get(&key).cloned())
                .or_else(|| {
                    let family = fe.key.family().to_string();
                    nodeports
                        .get(&(family, fe.key.protocol.to_string(), fe.key.port))
                        .cloned()
                })?;
            Some((key, name))
        })
        .collect()
}

fn route_cell(route: &KernelRoute) -> String {
    match route {
        KernelRoute::Forward {
            backends,
            masquerade: true,
        } => format!("forward {} masq", backends.len()),
        other => other.to_string(),
    }
}

#[derive(Serialize)]
struct FrontendOut<'a> {
    service: Option<&'a str>,
    #[serde(flatten)]
    frontend: &'a KernelFrontend,
}

fn frontends(kernel: &KernelView, live: Option<&[ServiceRow]>, output: Output) -> String {
    let names = service_names(kernel, live);
    let rows: Vec<FrontendOut<'_>> = kernel
        .frontends
        .iter()
        .map(|fe| FrontendOut {
            service: names.get(&fe.key.to_string()).map(String::as_str),
            frontend: fe,
        })
        .collect();
    let headers = [
        "FRONTEND", "SERVICE", "PODS", "NODE", "OUTSIDE", "SOURCES", "FLAGS",
    ];
    render(output, &rows, &headers, |row| {
        let fe = row.frontend;
        let sources: Vec<String> = fe.allowed_sources.iter().map(ToString::to_string).collect();
        vec![
            fe.key.to_string(),
            row.service.unwrap_or("-").to_owned(),
            route_cell(&fe.pods),
            route_cell(&fe.node),
            route_cell(&fe.outside),
            dash_if_empty(sources.join(",")),
            dash_if_empty(fe.flags.join(",")),
        ]
    })
}

fn dash_if_empty(text: String) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text
    }
}

/// The kernel frontends a plan frontend is programmed as: its own address, or for NodePorts
/// the family's `NodePorts` entry (both dataplanes keep one, answering on the NodePort
/// addresses).
pub fn kernel_frontends<'a>(
    kernel: &'a KernelView,
    fe: &rows::FrontendRow,
) -> Vec<&'a KernelFrontend> {
    let protocol = parse_protocol(&fe.protocol);
    kernel
        .frontends
        .iter()
        .filter(|k| Some(k.key.protocol) == protocol && k.key.port == fe.port)
        .filter(|k| k.key.family().to_string() == fe.family)
        .filter(|k| match (fe.ip, k.key.addr) {
            (Some(ip), FrontendAddr::Ip(kip)) => ip == kip,
            (None, FrontendAddr::NodePorts(_)) => true,
            (None, FrontendAddr::Ip(_)) | (Some(_), FrontendAddr::NodePorts(_)) => false,
        })
        .collect()
}

/// Differences between what the plan decided for one frontend and what the kernel holds
/// (empty: they agree).
pub fn compare_frontend(
    kernel: &KernelView,
    row: &ServiceRow,
    fe: &rows::FrontendRow,
) -> Vec<String> {
    let programmed = kernel_frontends(kernel, fe);
    if programmed.is_empty() {
        return vec![format!("{}: not in the kernel", fe.frontend)];
    }
    let mut problems = Vec::new();
    for k in programmed {
        for class in SourceClass::ALL {
            let planned = fe.route(class);
            let mut want = row.backends_of(planned, &fe.family);
            want.sort();
            let route = k.route(class);
            let mut have: Vec<String> = route.backends().iter().map(ToString::to_string).collect();
            have.sort();
            let outcome = planned.split(' ').next().unwrap_or("");
            if outcome != route.outcome() || want != have {
                problems.push(format!(
                    "{} {}: planned {planned} [{}], kernel {route} [{}]",
                    k.key,
                    class.as_str(),
                    want.join(" "),
                    have.join(" ")
                ));
            }
        }
    }
    problems
}

#[derive(Serialize)]
struct ServiceOut {
    service: String,
    frontends: Vec<String>,
    cluster: usize,
    local: usize,
    /// `ok`, or what differs (running agent only).
    kernel: String,
}

fn services(kernel: &KernelView, live: Option<&[ServiceRow]>, output: Output) -> String {
    let rows: Vec<ServiceOut> = match live {
        Some(live) => live
            .iter()
            .map(|row| {
                let problems: Vec<String> = row
                    .frontends
                    .iter()
                    .flat_map(|fe| compare_frontend(kernel, row, fe))
                    .collect();
                ServiceOut {
                    service: row.service.clone(),
                    frontends: row.frontends.iter().map(|f| f.frontend.clone()).collect(),
                    cluster: row.cluster.len(),
                    local: row.local.len(),
                    kernel: if problems.is_empty() {
                        "ok".into()
                    } else {
                        problems.join("; ")
                    },
                }
            })
            .collect(),
        None => kernel_services(kernel),
    };
    let headers = ["SERVICE", "FRONTENDS", "CLUSTER", "LOCAL", "KERNEL"];
    render(output, &rows, &headers, |row| {
        vec![
            row.service.clone(),
            row.frontends.join(","),
            row.cluster.to_string(),
            row.local.to_string(),
            row.kernel.clone(),
        ]
    })
}

/// Services as the kernel alone shows them (agent stopped): frontends by service name (eBPF
/// entries carry none: one row each); the cluster column counts every backend reached.
fn kernel_services(kernel: &KernelView) -> Vec<ServiceOut> {
    let mut by_name: BTreeMap<String, Vec<&KernelFrontend>> = BTreeMap::new();
    for fe in &kernel.frontends {
        let name = fe
            .service
            .clone()
            .unwrap_or_else(|| format!("- ({})", fe.key));
        by_name.entry(name).or_default().push(fe);
    }
    by_name
        .into_iter()
        .map(|(service, fes)| {
            let backends: BTreeSet<SocketAddr> =
                fes.iter().flat_map(|fe| fe.all_backends()).collect();
            ServiceOut {
                service,
                frontends: fes.iter().map(|fe| fe.key.to_string()).collect(),
                cluster: backends.len(),
                local: 0,
                kernel: "programmed (agent not running)".into(),
            }
        })
        .collect()
}

#[derive(Serialize)]
struct BackendOut {
    backend: SocketAddr,
    services: Vec<String>,
    frontends: Vec<String>,
}

fn backends(kernel: &KernelView, live: Option<&[ServiceRow]>, output: Output) -> String {
    let names = service_names(kernel, live);
    let mut by_backend: BTreeMap<SocketAddr, (BTreeSet<String>, BTreeSet<String>)> =
        BTreeMap::new();
    for fe in &kernel.frontends {
        let key = fe.key.to_string();
        for backend in fe.all_backends() {
            let entry = by_backend.entry(backend).or_default();
            entry
                .0
                .insert(names.get(&key).cloned().unwrap_or_else(|| "-".into()));
            entry.1.insert(key.clone());
        }
    }
    let rows: Vec<BackendOut> = by_backend
        .into_iter()
        .map(|(backend, (services, frontends))| BackendOut {
            backend,
            services: services.into_iter().collect(),
            frontends: frontends.into_iter().collect(),
        })
        .collect();
    render(
        output,
        &rows,
        &["BACKEND", "SERVICES", "FRONTENDS"],
        |row| {
            vec![
                row.backend.to_string(),
                row.services.join(","),
                row.frontends.join(","),
            ]
        },
    )
}

fn conntrack(state: &StateFlags) -> Result<String, InspectError> {
    let kernel = read_kernel(state)?;
    let (flows, seconds) = if kernel.dataplane == "ebpf" {
        (ebpf::flows(&state.bpffs_path)?, "IDLE")
    } else {
        (conntrack::nft_flows(&kernel)?, "EXPIRES")
    };
    Ok(render(
        state.output,
        &flows,
        &["PROTO", "CLIENT", "FRONTEND", "BACKEND", "STATE", seconds],
        |f| {
            vec![
                f.protocol.clone(),
                f.client.to_string(),
                f.frontend.to_string(),
                f.backend.to_string(),
                dash_if_empty(f.state.clone()),
                f.seconds.map_or("-".into(), |s| format!("{s}s")),
            ]
        },
    ))
}

fn announcements(state: &StateFlags) -> Result<String, InspectError> {
    let rows: Vec<crate::admin::AnnouncementRow> =
        AdminClient::new(&state.admin_socket).get("/v1/announcements")?;
    Ok(render_announcements(&rows, state.output))
}

fn render_announcements(rows: &[crate::admin::AnnouncementRow], output: Output) -> String {
    if output == Output::Json {
        return serde_json::to_string_pretty(rows).unwrap_or_default() + "\n";
    }
    table::render(
        &["ADDRESS", "SERVICES"],
        rows.iter()
            .map(|r| vec![r.address.to_string(), dash_if_empty(r.services.join(","))])
            .collect(),
    )
}

fn routes(state: &StateFlags) -> Result<String, InspectError> {
    let table: RouteTableRows = AdminClient::new(&state.admin_socket).get("/v1/routes")?;
    if state.output == Output::Json {
        return Ok(serde_json::to_string_pretty(&table).unwrap_or_default() + "\n");
    }
    let mut out = table::render(
        &[
            "HOST",
            "MATCH",
            "PATH",
            "BACKEND",
            "ENDPOINTS",
            "INGRESS",
            "OPTIONS",
        ],
        table
            .routes
            .iter()
            .map(|r| {
                vec![
                    r.host.clone(),
                    r.match_type.clone(),
                    dash_if_empty(r.path.clone()),
                    r.backend.clone(),
                    dash_if_empty(r.endpoints.join(",")),
                    dash_if_empty(r.ingress.clone()),
                    dash_if_empty(r.options.join("; ")),
                ]
            })
            .collect(),
    );
    out.push_str(&format!(
        "\nTLS certificates: {}\n",
        dash_if_empty(table.tls.join(", "))
    ));
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use sluice_plan::Plan;

    /// The objects of `yaml`, read by the agent's own manifest source (from a scratch
    /// directory).
    pub fn snapshot_of(yaml: &str) -> sluice_model::Snapshot {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sluice-agent-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("objects.yaml"), yaml).unwrap();
        let (snapshot, warnings) = sluice_source_file::load_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        snapshot
    }

    /// The plan `compute` makes of `yaml` for `node`.
    pub fn plan_of(yaml: &str, node: &str, cluster_cidrs: &[&str]) -> Plan {
        let snapshot = snapshot_of(yaml);
        let node_object = snapshot.nodes.get(&sluice_model::ObjectKey::cluster(node));
        let info = sluice_compute::node_info(node, node_object.map(|n| n.as_ref()), &[]);
        let config = sluice_compute::ComputeConfig {
            cluster_cidrs: cluster_cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            ..Default::default()
        };
        sluice_compute::compute(&snapshot, &info, &config).plan
    }
}
