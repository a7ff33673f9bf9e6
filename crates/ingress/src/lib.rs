//! sluice's in-process L7 Ingress proxy.
//!
//! It executes a [`RoutePlan`] (made by `sluice-routes`, which holds every Kubernetes and
//! ingress-nginx semantic): [`IngressProxy::update`] turns the plan into a [`RouteTable`]
//! (lookup structures, endpoint pools, per-route options, TLS keys) and swaps it in
//! atomically: requests and connections in flight keep the table they started with, new
//! requests see the new one. The request path never locks.
//!
//! Module map: `routes` (table, host/path matching, normalisation), `options` (per-route
//! redirects, CORS, limits, allow lists, basic auth, affinity, canary, rewrite), `tls`
//! (certificates by SNI, expiry), `upstream` (endpoint pools, power-of-two-choices
//! least-requests, connection caps), `loops` (request-loop protection), `proxy` (the
//! per-request service), `server` (listeners bound or taken over, connections, accept
//! limits), `drain` (finishing every connection on shutdown or restart without failing a
//! request).

#![forbid(unsafe_code)]

mod access_log;
mod config;
mod drain;
mod error;
mod gather;
mod loops;
mod options;
mod proxy;
mod proxy_protocol;
mod routes;
mod server;
mod session_cache;
mod stats;
mod tls;
mod upstream;
mod workers;

pub use access_log::{AccessLogSink, StdoutAccessLog};
pub use config::{IngressConfig, available_cores};
pub use error::IngressError;
pub use proxy::IngressProxy;
pub use proxy_protocol::ProxyHeaderError;
pub use routes::{Backend, PathError, Route, RouteTable, normalize_path};
pub use server::{BindNew, IngressListeners, LISTEN_BACKLOG, ListenerSource, bind_listener};
pub use sluice_plan::{ObjectName, RoutePlan, RouteWarning as Warning};
pub use stats::IngressStats;
pub use tls::CertificateChoice;
