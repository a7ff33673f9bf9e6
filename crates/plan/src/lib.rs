//! The plan: everything the dataplanes (eBPF, nftables) and the Ingress proxy execute, fully
//! decided by `sluice-compute`.
//!
//! This crate is the contract between "decide" and "program". It holds no Kubernetes types and
//! leaves no policy open: a frontend's route for each [`SourceClass`] already accounts for
//! traffic policies, terminating-endpoint fallback, topology, source ranges and conflicts. A
//! backend only translates — so two backends cannot disagree about what a Service means.
//! (`tests/` of the workspace enforce that the dataplanes and the proxy do not depend on
//! `k8s-openapi`.)
//!
//! * [`Plan`]: per node, every service port's [`ServicePlan`] (frontends, routes, backend
//!   sets, affinity) plus node-wide facts ([`NodePlan`]) and health check ports.
//! * [`PlanDelta`]: what changed since the last plan, including the connection-tracking entries
//!   that became stale ([`StaleFlow`]) — the unit of work of an incremental apply.
//! * [`RoutePlan`]: the Ingress proxy's hosts, ordered path rules, backends, per-route options
//!   and certificates, decided by `sluice-routes`.
//! * Text form ([`std::fmt::Display`]) for `sluice plan` and golden files; JSON via serde.

#![forbid(unsafe_code)]

mod delta;
mod l4;
mod names;
mod routes;
mod text;

pub use delta::{PlanDelta, ServiceChange, StaleFlow};
pub use l4::{
    Backend, FrontendAddr, FrontendKey, FrontendKind, FrontendPlan, HealthCheck, NodePlan, Plan,
    PlanError, Route, Selection, ServicePlan, SetName, SourceClass,
};
pub use names::{Family, Protocol, ServiceName, ServicePortName};
pub use routes::{
    BackendPlan, BackendProtocol, BasicAuth, Canary, CertificatePlan, CookieAffinity, Cors,
    Credential, HostMatch, HostPlan, ObjectName, PasswordHash, PathKind, PathRule, RateLimit,
    Redirect, RouteAction, RouteOptions, RoutePlan, RouteWarning, TlsHost, TlsPlan, UpstreamTls,
    Validity,
};
pub use text::line_diff;

#[cfg(test)]
mod tests;
