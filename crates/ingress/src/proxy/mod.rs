//! The proxy object the agent holds, and the per-request service.

mod body;
mod forward;
mod headers;
mod service;
mod upgrade;
mod upload;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use sluice_plan::{ObjectName, RoutePlan, UpstreamTls};

pub(crate) use body::{ProxyBody, ReqBody};
pub(crate) use service::{ConnInfo, error, handle};

use crate::access_log::{AccessLogSink, StdoutAccessLog};
use crate::loops::{HopId, OwnAddresses};
use crate::stats::{self, Counters};
use crate::upstream::{
    ConnectionLimits, CountingConnector, Http1Pool, PoolSettings, TlsClient, TlsConnecting,
    TlsUpstream,
};
use crate::{IngressConfig, IngressStats, RouteTable, Warning};
use headers::HeadLimits;

/// hyper's smallest HTTP/1 read buffer.
const MIN_HTTP1_BUFFER: usize = 8 * 1024;
/// Idle pooled connections kept per endpoint (never more than the per-endpoint cap).
const POOL_IDLE_PER_ENDPOINT: usize = 256;
/// Largest read buffer of an upstream connection, which bounds the response head a backend
/// may send (nginx allows 4–8 KiB) and the memory each pooled connection can hold.
const UPSTREAM_READ_BUFFER: usize = 64 * 1024;

/// The ingress proxy: listeners plus the current [`RouteTable`].
pub struct IngressProxy {
    pub(crate) config: IngressConfig,
    pub(crate) table: Arc<ArcSwap<RouteTable>>,
    /// Each worker's pooled clients to the endpoints (index = worker, see `workers`): a
    /// request uses its own worker's, so its upstream connection runs on the same thread.
    upstreams: Box<[Upstreams]>,
    /// Port of the HTTPS listener (for the HTTPS redirect); 443 until serving starts.
    pub(crate) https_port: AtomicU16,
    pub(crate) server: auto::Builder<TokioExecutor>,
    pub(crate) counters: Counters,
    pub(crate) limits: Arc<ConnectionLimits>,
    pub(crate) hop_id: HopId,
    /// Addresses that reach our own listeners: never dialled.
    pub(crate) own_addresses: ArcSwap<OwnAddresses>,
    pub(crate) head_limits: HeadLimits,
    /// True once the first [`update`](Self::update) has built a route table: connections
    /// are accepted only from then on (before, they wait in the listen backlog), so an agent
    /// that was just restarted never answers 404 for a route it has not loaded yet.
    pub(crate) routes_loaded: tokio::sync::watch::Sender<bool>,
    /// Pooled clients of HTTPS and GRPCS routes by TLS setting (and HTTP/2), kept while some
    /// route of the current table uses them. Locked only while a table is built.
    tls_clients: Mutex<TlsClientCache>,
    /// Where access log lines go (`None`: off).
    pub(crate) access_log: Option<Arc<dyn AccessLogSink>>,
}

/// One worker's pooled clients to the endpoints.
pub(crate) struct Upstreams {
    /// HTTP/1.1.
    pub(crate) http1: Arc<Http1Pool>,
    /// HTTP/2 without TLS (`backend-protocol` H2C and GRPC).
    pub(crate) h2c: Client<CountingConnector, ReqBody>,
}

type TlsClientCache = HashMap<(UpstreamTls, bool), Arc<TlsClient>>;

impl std::fmt::Debug for IngressProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressProxy")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl IngressProxy {
    /// A proxy with an empty route table. It accepts connections only after the first
    /// [`update`](Self::update); until then they wait in the kernel's listen backlog. With
    /// `config.access_log`, lines go to stdout.
    pub fn new(config: IngressConfig) -> Self {
        let sink: Option<Arc<dyn AccessLogSink>> = if config.access_log {
            match StdoutAccessLog::start() {
                Ok(sink) => Some(Arc::new(sink)),
                Err(e) => {
                    tracing::error!(error = %e, "ingress: cannot start the access log writer; no access log");
                    None
                }
            }
        } else {
            None
        };
        Self::with_access_log(config, sink)
    }

    /// Like [`new`](Self::new), with access log lines going to `sink` (whatever
    /// `config.access_log` says).
    pub fn with_access_log(config: IngressConfig, sink: Option<Arc<dyn AccessLogSink>>) -> Self {
        let table = Arc::new(ArcSwap::from_pointee(RouteTable::default()));
        let limits = Arc::new(ConnectionLimits::new(
            config.max_upstream_connections,
            config.max_upstream_connections_per_endpoint,
        ));
        let workers = config.workers.max(1);
        let upstreams = (0..workers)
            .map(|_| Upstreams {
                http1: Arc::new(Http1Pool::new(
                    counting_connector(&config, &limits, &table),
                    PoolSettings {
                        max_idle_per_endpoint: max_idle_per_endpoint(&config),
                        idle_timeout: config.upstream_idle_timeout,
                        max_buf_size: UPSTREAM_READ_BUFFER,
                    },
                )),
                h2c: h2c_client(&config, &limits, &table),
            })
            .collect();
        Self {
            server: server_builder(&config),
            head_limits: HeadLimits {
                line: config.max_header_line_bytes,
                total: config.max_header_bytes,
            },
            config,
            table,
            upstreams,
            https_port: AtomicU16::new(443),
            counters: Counters::new(workers),
            limits,
            hop_id: HopId::random(),
            own_addresses: ArcSwap::from_pointee(OwnAddresses::default()),
            routes_loaded: tokio::sync::watch::Sender::new(false),
            tls_clients: Mutex::new(HashMap::new()),
            access_log: sink,
        }
    }

    /// Builds the route table for `plan` and swaps it in atomically. Requests already routed
    /// finish on the table they started with; open connections stay open. Endpoint request
    /// counters, rate-limit state and parsed certificates carry over.
    ///
    /// Returns the problems found executing the plan (certificates whose key does not load,
    /// endpoints that are this proxy's own listeners), each naming its object; nothing is
    /// logged here: the caller logs them (the agent logs each new one once).
    pub fn update(&self, plan: &RoutePlan) -> Vec<Warning> {
        let previous = self.table.load();
        let mut cache = self.tls_clients.lock().unwrap_or_else(|e| e.into_inner());
        let mut used = TlsClientCache::new();
        let mut tls_clients = |tls: &UpstreamTls, h2: bool| {
            let key = (tls.clone(), h2);
            let client = cache
                .get(&key)
                .cloned()
                .unwrap_or_else(|| Arc::new(self.tls_client(tls, h2)));
            used.insert(key, Arc::clone(&client));
            client
        };
        let (mut table, mut warnings) =
            crate::routes::build(plan, Some(&previous), &mut tls_clients);
        *cache = used;
        drop((cache, previous));
        table.index_endpoints();
        warnings.extend(self.own_listener_warnings(&table));
        tracing::debug!(
            ingresses = table.served_ingresses().len(),
            warnings = warnings.len(),
            "ingress: route table updated"
        );
        self.table.store(Arc::new(table));
        stats::inc(&self.counters.route_table_swaps);
        self.routes_loaded.send_replace(true);
        warnings
    }

    /// This host's addresses. For a listener bound to `0.0.0.0` or `::`, an endpoint on any
    /// of them (or on loopback) at the listener's port is the proxy itself and is never
    /// dialled (508). The agent refreshes them when the node's addresses change; they apply
    /// to the next request at once, and to the warnings of the next [`update`](Self::update).
    pub fn set_local_addresses(&self, addresses: impl IntoIterator<Item = IpAddr>) {
        let addresses: Vec<IpAddr> = addresses.into_iter().collect();
        self.own_addresses
            .rcu(|own| own.with_local_ips(addresses.iter().copied()));
    }

    /// Records the HTTPS listener's port (done when serving starts).
    pub(crate) fn set_https_port(&self, port: u16) {
        self.https_port.store(port, Ordering::Relaxed);
    }

    /// Records the addresses the listeners are bound to (done when serving starts).
    pub(crate) fn set_listener_addresses(&self, listeners: &[SocketAddr]) {
        self.own_addresses
            .rcu(|own| own.with_listeners(listeners.to_vec()));
    }

    /// Ingresses this proxy currently serves (for the agent to write their status).
    pub fn served_ingresses(&self) -> Vec<ObjectName> {
        self.table.load().served_ingresses().to_vec()
    }

    /// The current route table (a cheap snapshot; later updates do not change it).
    pub fn route_table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// The route plan the current table executes.
    pub fn route_plan(&self) -> Arc<RoutePlan> {
        Arc::clone(self.table.load().plan())
    }

    /// Counters since creation (for metrics).
    pub fn stats(&self) -> IngressStats {
        let dropped = self.access_log.as_ref().map_or(0, |s| s.dropped());
        self.counters.snapshot(self.limits.open() as u64, dropped)
    }

    /// The pooled clients of the worker running this task (worker 0's outside the workers).
    pub(crate) fn upstreams(&self) -> &Upstreams {
        &self.upstreams[crate::workers::current() % self.upstreams.len()]
    }

    /// Downstream connections accepted by each worker since creation (index = worker).
    pub fn worker_connections(&self) -> Vec<u64> {
        self.counters.worker_connections()
    }

    /// The number of proxy workers (at least 1).
    pub(crate) fn workers(&self) -> usize {
        self.config.workers.max(1)
    }

    pub fn config(&self) -> &IngressConfig {
        &self.config
    }

    /// One warning per service endpoint that is one of our own listeners.
    fn own_listener_warnings(&self, table: &RouteTable) -> Vec<Warning> {
        let own = self.own_addresses.load();
        let mut seen = BTreeSet::new();
        let mut warnings = Vec::new();
        for backend in table.backends() {
            for endpoint in &backend.pool.endpoints {
                if own.contains(endpoint.addr) && seen.insert((&backend.service, endpoint.addr)) {
                    warnings.push(Warning {
                        kind: "Service",
                        object: ObjectName::new(
                            Arc::clone(&backend.service.namespace),
                            Arc::clone(&backend.service.name),
                        ),
                        message: format!(
                            "endpoint {} is this proxy's own listener; requests routed to it get 508 Loop Detected",
                            endpoint.addr
                        ),
                    });
                }
            }
        }
        warnings
    }
}

impl IngressProxy {
    /// A pooled client speaking TLS to the endpoints as `tls` says (HTTP/2 only when `h2`).
    fn tls_client(&self, tls: &UpstreamTls, h2: bool) -> TlsClient {
        let (config, name) = crate::upstream::client_config(tls, h2)?;
        let tcp = counting_connector(&self.config, &self.limits, &self.table);
        let connector = TlsConnecting::new(tcp, config, name, self.config.connect_timeout);
        let clients = (0..self.workers())
            .map(|_| client_builder(&self.config, h2).build(connector.clone()))
            .collect();
        Ok(TlsUpstream { clients, connector })
    }
}

/// Dials endpoints through the connection caps within the route's (else the default)
/// connect timeout.
fn counting_connector(
    config: &IngressConfig,
    limits: &Arc<ConnectionLimits>,
    table: &Arc<ArcSwap<RouteTable>>,
) -> CountingConnector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    // The URI of a TLS route says https; the connector under TLS dials plain TCP.
    http.enforce_http(false);
    CountingConnector::new(
        http,
        Arc::clone(limits),
        Arc::clone(table),
        config.connect_timeout,
    )
}

/// A pooled client to the endpoints speaking HTTP/2 with prior knowledge.
fn h2c_client(
    config: &IngressConfig,
    limits: &Arc<ConnectionLimits>,
    table: &Arc<ArcSwap<RouteTable>>,
) -> Client<CountingConnector, ReqBody> {
    client_builder(config, true).build(counting_connector(config, limits, table))
}

/// Idle connections kept per endpoint (never more than the per-endpoint cap).
fn max_idle_per_endpoint(config: &IngressConfig) -> usize {
    POOL_IDLE_PER_ENDPOINT.min(config.max_upstream_connections_per_endpoint)
}

/// Pool and protocol settings shared by every upstream client.
fn client_builder(config: &IngressConfig, h2: bool) -> hyper_util::client::legacy::Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(config.upstream_idle_timeout)
        .pool_max_idle_per_host(max_idle_per_endpoint(config))
        .pool_timer(TokioTimer::new())
        .http1_max_buf_size(UPSTREAM_READ_BUFFER);
    if h2 {
        builder.http2_only(true).timer(TokioTimer::new());
    }
    builder
}

/// Downstream HTTP/1.1 and HTTP/2 with the configured timeouts and header limits.
fn server_builder(config: &IngressConfig) -> auto::Builder<TokioExecutor> {
    let mut server = auto::Builder::new(TokioExecutor::new());
    server
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.client_idle_timeout)
        // The whole request head must fit the read buffer: 431 beyond (hyper answers).
        .max_buf_size(config.max_header_bytes.max(MIN_HTTP1_BUFFER))
        .keep_alive(true);
    server
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    server
}
