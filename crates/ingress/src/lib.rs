//! sluice's in-process L7 Ingress proxy.
//!
//! * [`build_route_table`] turns a [`Snapshot`] into a [`RouteTable`] (pure: routes, TLS
//!   certificates, upstream endpoint lists), with [`Warning`]s that name the bad object.
//! * [`IngressProxy`] serves HTTP and HTTPS from the current table, which
//!   [`IngressProxy::update`] swaps atomically: requests and connections in flight keep the
//!   table they started with, new requests see the new one. The request path never locks.
//!
//! Module map: `routes` (class handling, host/path matching, normalisation), `tls` (secrets,
//! SNI resolver), `upstream` (endpoint pools, power-of-two-choices least-requests, connection
//! caps), `loops` (request-loop protection), `proxy` (the per-request service), `server`
//! (listeners bound or taken over, connections, accept limits), `drain` (finishing every
//! connection on shutdown or restart without failing a request).

#![forbid(unsafe_code)]

mod config;
mod drain;
mod error;
mod loops;
mod proxy;
mod routes;
mod server;
mod stats;
mod tls;
mod upstream;

pub use config::IngressConfig;
pub use error::IngressError;
pub use proxy::IngressProxy;
pub use routes::{Backend, PathError, RouteTable, Warning, build_route_table, normalize_path};
pub use server::{BindNew, IngressListeners, LISTEN_BACKLOG, ListenerSource, bind_listener};
pub use sluice_model::{ObjectKey, Snapshot};
pub use stats::IngressStats;
