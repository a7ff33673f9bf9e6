//! `sluice`: the node agent. Wiring only — flags, sources, the sync loop, health and metrics
//! servers; all semantics live in the library crates.

mod admin;
mod cli;
mod cluster;
#[cfg(test)]
mod deploy_tests;
mod explain;
mod handover;
mod health;
mod http;
mod ingress_flags;
mod inspect;
mod interfaces;
mod kubeproxy;
mod limits;
mod loadbalancer;
mod memory;
mod metrics;
mod observe;
mod plan;
mod routing;
mod sync;
mod trigger;

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use sluice_dataplane::Dataplane;
use tokio::sync::watch;

use crate::cli::{AgentConfig, Cli, Command, LogFormat, ProxyMode, SourceConfig};

/// Batches of source events waiting for the sync loop.
pub(crate) const SOURCE_QUEUE: usize = 64;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent(args) => {
            let config = args.validate().context("invalid flags")?;
            memory::limit_arenas();
            init_tracing(config.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            runtime.block_on(run_agent(config))
        }
        Command::Plan(args) => plan::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Explain(args) => explain::run(&args),
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Picks the dataplane for `--proxy-mode`, logging the choice (and why, for `auto`), and
/// removes what the other mode may have left on this node (a mode switch).
fn select_dataplane(
    config: &AgentConfig,
) -> anyhow::Result<(Box<dyn Dataplane>, Option<sluice_dp_ebpf::OccupancyHandle>)> {
    let ebpf = || sluice_dp_ebpf::EbpfDataplane::new(config.ebpf.clone());
    let nft = || sluice_dp_nft::NftDataplane::new();
    let mode = match config.proxy_mode {
        ProxyMode::Auto => match sluice_dp_ebpf::check_support(&config.ebpf) {
            Ok(()) => {
                tracing::info!("proxy mode auto: using eBPF (the kernel supports it)");
                ProxyMode::Ebpf
            }
            Err(reason) => {
                let reason = sluice_dataplane::error_chain(&reason);
                tracing::info!("proxy mode auto: using nftables, eBPF unavailable: {reason}");
                ProxyMode::Nftables
            }
        },
        explicit => explicit,
    };
    let (dataplane, maps): (Box<dyn Dataplane>, _) = match mode {
        ProxyMode::Nftables => (Box::new(nft().context("nftables dataplane")?), None),
        _ => {
            let dp = ebpf().context("eBPF dataplane")?;
            let maps = dp.occupancy_handle();
            (Box::new(dp), Some(maps))
        }
    };
    remove_other_mode(config, mode);
    Ok((dataplane, maps))
}

/// Leftovers of the mode not in use (after a `--proxy-mode` change) would keep translating
/// traffic with stale rules: remove them, logged.
fn remove_other_mode(config: &AgentConfig, in_use: ProxyMode) {
    let result = match in_use {
        ProxyMode::Nftables if config.ebpf.bpffs_path.exists() => {
            Some(("eBPF", sluice_dp_ebpf::cleanup(&config.ebpf).map(|()| true)))
        }
        ProxyMode::Ebpf => Some((
            "nftables",
            sluice_dp_nft::NftDataplane::new().and_then(|mut dp| dp.remove_tables_if_present()),
        )),
        _ => None,
    };
    match result {
        Some((other, Err(err))) => tracing::warn!(
            "cannot remove what the {other} mode left on this node: {}",
            sluice_dataplane::error_chain(&err)
        ),
        Some((other, Ok(true))) => {
            tracing::info!("removed what the {other} mode left on this node")
        }
        _ => {}
    }
}

async fn run_agent(config: AgentConfig) -> anyhow::Result<()> {
    if config.cleanup {
        return cleanup(&config);
    }
    // Registered first: a SIGTERM during start-up or while retiring is not lost.
    let mut signals = Signals::new();
    tracing::info!(node = %config.node_name, source = %config.source, "sluice agent starting");
    // Before anything binds: an agent running on this node hands its listening sockets over
    // (a rolling update with maxSurge); it retires once this one has synced.
    let restarts =
        Arc::new(handover::Restarts::take_over(config.cluster.admin_socket.as_deref()).await?);
    if config.cluster.cleanup_kube_proxy {
        kubeproxy::cleanup_and_log();
    }
    let (mut dataplane, bpf_maps) = select_dataplane(&config)?;
    let dataplane_name = dataplane.name();
    let restored = dataplane
        .restore()
        .with_context(|| format!("restoring {} state", dataplane.name()))?;

    // The sources report changed objects; the sync loop owns the store they update. A small
    // queue: a source waits (and the API server's watch stream with it) while the loop is
    // busy, instead of piling up superseded versions.
    let (batch_tx, batch_rx) = tokio::sync::mpsc::channel(SOURCE_QUEUE);
    let mut k8s_client = None;
    let source_task = match &config.source {
        SourceConfig::Dir(dir) => {
            let source = sluice_source_file::DirSource::new(dir.clone());
            tokio::spawn(async move { source.run(batch_tx).await.map_err(anyhow::Error::from) })
        }
        SourceConfig::Kubernetes { kubeconfig } => {
            let client = sluice_k8s::client(kubeconfig.as_deref())
                .await
                .context("Kubernetes client")?;
            k8s_client = Some(client.clone());
            let source_config = sluice_k8s::K8sSourceConfig {
                // The default certificate is referenced by no Ingress: published all the same.
                pinned_secrets: config.routes.default_certificate.iter().cloned().collect(),
                ..sluice_k8s::K8sSourceConfig::new(config.node_name.clone())
            };
            let source = sluice_k8s::K8sSource::new(client, source_config);
            tokio::spawn(async move { source.run(batch_tx).await.map_err(anyhow::Error::from) })
        }
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let ingress = config.ingress.clone().map(|mut c| {
        fit_ingress_to_descriptors(&mut c);
        Arc::new(sluice_ingress::IngressProxy::new(c))
    });
    // Bound (or taken over) now, accepting only after the first sync: until then
    // connections wait in the listen backlog instead of meeting an empty route table.
    let ingress_listeners = ingress
        .as_ref()
        .map(|proxy| proxy.listen(&mut handover::IngressSource(&restarts.listeners)))
        .transpose()
        .context("ingress proxy")?;
    let cluster = k8s_client
        .clone()
        .map(|client| cluster_link(client, &config, dataplane_name, ingress.is_some()))
        .transpose()?;
    let lb_stats = Arc::new(loadbalancer::LbStats::default());
    // With LoadBalancer IPAM the batches pass its relay on their way to the sync loop (in
    // `dir:` mode it writes the assigned addresses into the Services).
    let (load_balancer, batch_rx) = match &config.load_balancer {
        Some(lb) => {
            let setup = loadbalancer::Setup {
                config: lb.clone(),
                node: config.node_name.clone(),
                source: config.source.clone(),
                interfaces: config.ebpf.interfaces.clone(),
                client: k8s_client.clone(),
                leader: cluster.as_ref().map(|c| c.leadership()),
                stats: Arc::clone(&lb_stats),
            };
            let (running, relayed) = loadbalancer::start(setup, batch_rx, shutdown_rx.clone())?;
            (Some(running), relayed)
        }
        None => (None, batch_rx),
    };

    let lb_metrics = Box::new(loadbalancer::LbCollector(Arc::clone(&lb_stats)));
    let metrics =
        Arc::new(metrics::Metrics::new(ingress.clone(), vec![lb_metrics]).with_bpf_maps(bpf_maps));
    let health = Arc::new(health::HealthState::new(
        config.node_name.clone(),
        config.sync_period,
    ));
    let mut live = admin::LiveState::new(
        &config.node_name,
        dataplane_name,
        ingress.clone(),
        cluster.clone(),
    );
    if load_balancer.is_some() {
        live = live.with_load_balancer(Arc::clone(&lb_stats));
    }
    let live = Arc::new(live);

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(socket) = &config.cluster.admin_socket {
        tasks.spawn(admin::serve(
            socket.clone(),
            Arc::clone(&live),
            shutdown_rx.clone(),
        ));
    }
    tasks.spawn(Arc::clone(&restarts).serve(shutdown_rx.clone()));
    tasks.spawn(serve_after_first_sync(
        ingress.clone().zip(ingress_listeners),
        Arc::clone(&health),
        Arc::clone(&restarts),
        shutdown_rx.clone(),
    ));
    tasks.spawn(http::serve(
        config.healthz_bind,
        Arc::clone(&restarts.listeners),
        health::healthz_handler(Arc::clone(&health)),
        shutdown_rx.clone(),
        restarts.succession(),
    ));
    tasks.spawn(http::serve(
        config.metrics_bind,
        Arc::clone(&restarts.listeners),
        metrics::handler(Arc::clone(&metrics)),
        shutdown_rx.clone(),
        restarts.succession(),
    ));

    let observers = observe::Observers {
        live,
        cluster: cluster.clone(),
    };
    // The Ingress routes follow the sources on their own path, not the L4 sync loop's pace.
    let batch_rx = match &ingress {
        Some(proxy) => {
            let (to_sync, to_routes) = routing::tee(batch_rx, SOURCE_QUEUE, shutdown_rx.clone());
            let route_loop = routing::RouteLoop {
                proxy: Arc::clone(proxy),
                routes: config.routes.clone(),
                node_name: config.node_name.clone(),
                local_addresses: interfaces::LocalAddresses::new(Arc::new(
                    sluice_hostnet::RtNetlink::new(),
                )),
                observers: observers.clone(),
                metrics: Arc::clone(&metrics),
                address_check: routing::ADDRESS_CHECK,
            };
            let shutdown = shutdown_rx.clone();
            tasks.spawn(async move {
                route_loop.run(to_routes, shutdown).await;
                Err(anyhow::anyhow!(
                    "the Ingress route loop stopped (its source is gone)"
                ))
            });
            to_sync
        }
        None => batch_rx,
    };
    let sync_loop = sync::SyncLoop {
        config: config.clone(),
        dataplane: Some(dataplane),
        restored,
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
        observers,
        local_addresses: interfaces::LocalAddresses::new(
            Arc::new(sluice_hostnet::RtNetlink::new()),
        ),
        listeners: Arc::clone(&restarts.listeners),
    };
    let sync_task = tokio::spawn(sync_loop.run(batch_rx, shutdown_rx.clone()));

    let mut succession = restarts.succession();
    let outcome = tokio::select! {
        () = signals.recv() => {
            tracing::info!("shutting down; programmed forwarding stays in place");
            Ok(Stop::Signal)
        }
        Ok(_) = succession.wait_for(|s| *s == handover::Succession::Ready) => {
            tracing::info!("a new agent serves this node: retiring (draining connections, stopping the sync loop)");
            Ok(Stop::Successor)
        }
        result = source_task => match result {
            Ok(Ok(())) => Err(anyhow::anyhow!("the source stopped")),
            Ok(Err(err)) => Err(err.context("source")),
            Err(err) => Err(anyhow::anyhow!("source task panicked: {err}")),
        },
        Some(result) = tasks.join_next() => match result {
            Ok(Ok(())) => Err(anyhow::anyhow!("a server stopped unexpectedly")),
            Ok(Err(err)) => Err(err),
            Err(err) => Err(anyhow::anyhow!("server task panicked: {err}")),
        },
    };
    let _ = shutdown_tx.send(true);
    let teardown = Teardown {
        restarts,
        cluster,
        sync_task,
        tasks,
        load_balancer,
    };
    teardown.run(outcome.is_ok()).await;
    if let Ok(Stop::Successor) = outcome {
        // A DaemonSet container that exits by itself is restarted: wait for the pod's end.
        tracing::info!("drained; waiting for SIGTERM");
        signals.recv().await;
    }
    outcome.map(|_| ())
}

/// What stops once shutdown has been announced.
struct Teardown {
    restarts: Arc<handover::Restarts>,
    cluster: Option<Arc<cluster::ClusterLink>>,
    sync_task: tokio::task::JoinHandle<()>,
    tasks: tokio::task::JoinSet<anyhow::Result<()>>,
    load_balancer: Option<loadbalancer::Running>,
}

impl Teardown {
    /// Lets go of the listeners and Leases and waits for the tasks (`wait`: after a clean
    /// stop; the Ingress returns once drained, at most --ingress-drain-timeout).
    async fn run(mut self, wait: bool) {
        // Each listener closes with its server now, unless a new agent holds it too.
        self.restarts.listeners.close();
        // A new agent on this node holds the Leases under the same name: leave them to it.
        let release = !self.restarts.has_successor();
        // Release the leader Lease first, so another agent takes over at once.
        if let Some(cluster) = &self.cluster {
            if release {
                cluster.shutdown().await;
            } else {
                cluster.abandon();
            }
        }
        if wait {
            let _ = self.sync_task.await;
            while self.tasks.join_next().await.is_some() {}
        }
        if let Some(lb) = self.load_balancer {
            // Releasing the heartbeat lets the other agents take over this node's addresses
            // at once.
            lb.stop(release).await;
        }
    }
}

/// Why the agent stops.
enum Stop {
    Signal,
    /// A new agent took the listeners over and serves.
    Successor,
}

/// Once the first sync is done: the Ingress accepts (until shutdown, then drains), and the
/// previous agent, if this one took over from it, retires.
async fn serve_after_first_sync(
    ingress: Option<(
        Arc<sluice_ingress::IngressProxy>,
        sluice_ingress::IngressListeners,
    )>,
    health: Arc<health::HealthState>,
    restarts: Arc<handover::Restarts>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let stopped = |mut shutdown: watch::Receiver<bool>| async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    tokio::select! {
        () = health.first_sync() => {}
        () = stopped(shutdown.clone()) => return Ok(()),
    }
    let Some((proxy, listeners)) = ingress else {
        restarts.serving();
        stopped(shutdown).await;
        return Ok(());
    };
    let serving = proxy.serve_listeners(listeners.http, listeners.https, stopped(shutdown));
    restarts.serving();
    serving.await.context("ingress proxy")
}

/// Leader election, the Ingress status writer and the Event recorder (API source).
fn cluster_link(
    client: kube::Client,
    config: &AgentConfig,
    dataplane: &str,
    ingress: bool,
) -> anyhow::Result<Arc<cluster::ClusterLink>> {
    let setup = cluster::ClusterSetup {
        node: &config.node_name,
        dataplane,
        config: &config.cluster,
        ingress,
        status_addresses: config.ingress_status_addresses.clone(),
    };
    let link = cluster::ClusterLink::start(client, setup).context("leader election")?;
    Ok(Arc::new(link))
}

/// `sluice agent --cleanup`: remove everything any dataplane mode created, then exit.
fn cleanup(config: &AgentConfig) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    let modes: &[ProxyMode] = match config.proxy_mode {
        ProxyMode::Auto => &[ProxyMode::Nftables, ProxyMode::Ebpf],
        ProxyMode::Nftables => &[ProxyMode::Nftables],
        ProxyMode::Ebpf => &[ProxyMode::Ebpf],
    };
    for mode in modes {
        let result = match mode {
            ProxyMode::Nftables => {
                sluice_dp_nft::NftDataplane::new().and_then(|mut dp| dp.cleanup())
            }
            _ => sluice_dp_ebpf::cleanup(&config.ebpf),
        };
        match result {
            Ok(()) => tracing::info!("{mode:?}: cleaned up"),
            Err(err) => failures.push(format!("{mode:?}: {}", sluice_dataplane::error_chain(&err))),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("cleanup failed: {}", failures.join("; ")))
    }
}

/// Shrinks the Ingress proxy's connection caps to the descriptor limit minus a reserve for
/// everything else the agent must keep doing.
fn fit_ingress_to_descriptors(config: &mut sluice_ingress::IngressConfig) {
    match limits::raise_descriptor_limit() {
        Ok(limit) => {
            if config.fit_descriptor_limit(limit, limits::RESERVED_DESCRIPTORS) {
                tracing::info!(
                    descriptor_limit = limit,
                    client_connections = config.max_client_connections,
                    upstream_connections = config.max_upstream_connections,
                    "ingress connection caps lowered to fit the descriptor limit"
                );
            }
        }
        Err(err) => tracing::warn!("cannot read the descriptor limit: {err}"),
    }
}

/// SIGTERM and SIGINT, registered once (a signal between two waits is kept).
struct Signals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl Signals {
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Self(Some((term, int))),
            _ => Self(None),
        }
    }

    async fn recv(&mut self) {
        let Some((term, int)) = &mut self.0 else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
