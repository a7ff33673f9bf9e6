//! The proxy object the agent holds, and the per-request service.

mod body;
mod headers;
mod service;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use sluice_model::{ObjectKey, Snapshot};

pub(crate) use body::{ProxyBody, ReqBody};
pub(crate) use service::{ConnInfo, handle};

use crate::routes::build;
use crate::stats::Counters;
use crate::{IngressConfig, IngressStats, RouteTable, Warning};

/// The ingress proxy: listeners plus the current [`RouteTable`].
pub struct IngressProxy {
    pub(crate) config: IngressConfig,
    pub(crate) table: Arc<ArcSwap<RouteTable>>,
    pub(crate) client: Client<HttpConnector, ReqBody>,
    pub(crate) server: auto::Builder<TokioExecutor>,
    pub(crate) counters: Counters,
}

impl std::fmt::Debug for IngressProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressProxy")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl IngressProxy {
    /// A proxy with an empty route table (every request gets the built-in 404 until the first
    /// [`update`](Self::update)).
    pub fn new(config: IngressConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.upstream_idle_timeout)
            .pool_max_idle_per_host(256)
            .pool_timer(TokioTimer::new())
            .build(connector);
        let mut server = auto::Builder::new(TokioExecutor::new());
        server
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.client_idle_timeout)
            .keep_alive(true);
        server
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        Self {
            config,
            table: Arc::new(ArcSwap::from_pointee(RouteTable::default())),
            client,
            server,
            counters: Counters::default(),
        }
    }

    /// Rebuilds the route table from `snapshot` and swaps it in atomically. Requests already
    /// routed finish on the table they started with; open connections stay open. Endpoint
    /// request counters carry over so balancing is not reset.
    pub fn update(&self, snapshot: &Snapshot) -> Vec<Warning> {
        let previous = self.table.load();
        let (table, warnings) = build::build(snapshot, &self.config, Some(&previous));
        drop(previous);
        tracing::debug!(
            ingresses = table.served_ingresses().len(),
            warnings = warnings.len(),
            "ingress: route table updated"
        );
        self.table.store(Arc::new(table));
        warnings
    }

    /// Ingresses this proxy currently serves (for the agent to write their status).
    pub fn served_ingresses(&self) -> Vec<ObjectKey> {
        self.table.load().served_ingresses().to_vec()
    }

    /// The current route table (a cheap snapshot; later updates do not change it).
    pub fn route_table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Counters since creation (for metrics).
    pub fn stats(&self) -> IngressStats {
        self.counters.snapshot()
    }

    pub fn config(&self) -> &IngressConfig {
        &self.config
    }
}
