//! `sluice`: the node agent. Wiring only — flags, sources, the sync loop, health and metrics
//! servers; all semantics live in the library crates.

mod admin;
mod cli;
mod cluster;
#[cfg(test)]
mod deploy_tests;
mod explain;
mod health;
mod http;
mod ingress_flags;
mod inspect;
mod interfaces;
mod kubeproxy;
mod limits;
mod loadbalancer;
mod metrics;
mod observe;
mod plan;
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
fn select_dataplane(config: &AgentConfig) -> anyhow::Result<Box<dyn Dataplane>> {
    let ebpf = || sluice_dp_ebpf::EbpfDataplane::new(config.ebpf.clone());
    let nft = || sluice_dp_nft::NftDataplane::new();
    let mode = match config.proxy_mode {
        ProxyMode::Auto => match sluice_dp_ebpf::check_support(&config.ebpf) {
            Ok(()) => {
                tracing::info!("proxy mode auto: using eBPF (the kernel supports it)");
                ProxyMode::Ebpf
            }
            Err(reason) => {
                tracing::info!("proxy mode auto: using nftables, eBPF unavailable: {reason}");
                ProxyMode::Nftables
            }
        },
        explicit => explicit,
    };
    let dataplane: Box<dyn Dataplane> = match mode {
        ProxyMode::Nftables => Box::new(nft().context("nftables dataplane")?),
        _ => Box::new(ebpf().context("eBPF dataplane")?),
    };
    remove_other_mode(config, mode);
    Ok(dataplane)
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
    tracing::info!(node = %config.node_name, source = %config.source, "sluice agent starting");
    if config.cluster.cleanup_kube_proxy {
        kubeproxy::cleanup_and_log();
    }
    let mut dataplane = select_dataplane(&config)?;
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
    let metrics = Arc::new(metrics::Metrics::new(ingress.clone(), vec![lb_metrics]));
    let health = Arc::new(health::HealthState::new(
        config.node_name.clone(),
        config.sync_period,
    ));
    let live = Arc::new(admin::LiveState::new(
        &config.node_name,
        dataplane_name,
        ingress.clone(),
        cluster.clone(),
    ));

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(socket) = &config.cluster.admin_socket {
        tasks.spawn(admin::serve(
            socket.clone(),
            Arc::clone(&live),
            shutdown_rx.clone(),
        ));
    }
    if let Some(proxy) = &ingress {
        let proxy = Arc::clone(proxy);
        let mut stop = shutdown_rx.clone();
        tasks.spawn(async move {
            proxy
                .serve(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
                .context("ingress proxy")
        });
    }
    tasks.spawn(http::serve(
        config.healthz_bind,
        health::healthz_handler(Arc::clone(&health)),
        shutdown_rx.clone(),
    ));
    tasks.spawn(http::serve(
        config.metrics_bind,
        metrics::handler(Arc::clone(&metrics)),
        shutdown_rx.clone(),
    ));

    let sync_loop = sync::SyncLoop {
        config: config.clone(),
        dataplane: Some(dataplane),
        restored,
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
        ingress: ingress.clone(),
        observers: observe::Observers {
            live,
            cluster: cluster.clone(),
        },
        local_addresses: interfaces::LocalAddresses::new(
            Arc::new(sluice_hostnet::RtNetlink::new()),
        ),
    };
    let sync_task = tokio::spawn(sync_loop.run(batch_rx, shutdown_rx.clone()));

    let outcome = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down; programmed forwarding stays in place");
            Ok(())
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
    // Release the leader Lease first, so another agent takes over at once.
    if let Some(cluster) = &cluster {
        cluster.shutdown().await;
    }
    if outcome.is_ok() {
        let _ = sync_task.await;
        while tasks.join_next().await.is_some() {}
    }
    if let Some(lb) = load_balancer {
        // Releasing the heartbeat lets the other agents take over this node's addresses at once.
        lb.stop().await;
    }
    outcome
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

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
