//! `/healthz` and `/livez` (kube-proxy compatible JSON), and the per-service health check node
//! ports of `externalTrafficPolicy: Local` services, which cloud load balancers probe to send
//! traffic only to nodes with local endpoints.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sluice_model::ObjectKey;
use sluice_plan::HealthCheck;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::handover::Listeners;
use crate::http::{Handler, response, serve_listener};

/// Taint the cluster autoscaler puts on a node it is about to remove.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Sync health as kube-proxy reports it (`/healthz`, `/livez`, `serviceProxyHealthy`).
///
/// * `/healthz` fails (503) before the first complete sync, when changes have been queued and
///   not applied for longer than 2 × `--sync-period` (kube-proxy's definition), and while this
///   Node is being deleted or carries the cluster autoscaler's `ToBeDeletedByClusterAutoscaler`
///   taint (so load balancers drain it first).
/// * `/livez` fails only when the agent itself is stuck: the sync loop, once running, has not
///   gone round for longer than 2 × `--sync-period` (a dataplane call hanging, the loop gone).
///   A node being deleted or a dataplane refusing updates does not fail it: a restart would not
///   help.
pub struct HealthState {
    node_name: String,
    /// 2 × `--sync-period`.
    timeout: Duration,
    inner: Mutex<SyncTimes>,
    /// Turns true when the first sync has been attempted (routes fed, health check ports
    /// opened, the dataplane called): the Ingress starts accepting then.
    first_sync: watch::Sender<bool>,
}

#[derive(Default)]
struct SyncTimes {
    /// When everything queued was last applied (monotonic, wall clock).
    last_applied: Option<(Instant, SystemTime)>,
    /// The oldest change not yet applied.
    oldest_pending: Option<Instant>,
    /// The sync loop's last round.
    last_tick: Option<Instant>,
    node: NodeEligibility,
}

/// Whether this Node should receive traffic, as kube-proxy judges it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NodeEligibility {
    #[default]
    Eligible,
    /// `metadata.deletionTimestamp` is set.
    Deleting,
    /// Tainted `ToBeDeletedByClusterAutoscaler`.
    ToBeDeleted,
}

impl NodeEligibility {
    pub fn of(node: Option<&k8s_openapi::api::core::v1::Node>) -> Self {
        let Some(node) = node else {
            return NodeEligibility::Eligible;
        };
        if node.metadata.deletion_timestamp.is_some() {
            return NodeEligibility::Deleting;
        }
        let tainted = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|taints| taints.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
        if tainted {
            NodeEligibility::ToBeDeleted
        } else {
            NodeEligibility::Eligible
        }
    }
}

/// One health answer: status and kube-proxy's JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    pub healthy: bool,
    pub body: String,
}

impl HealthState {
    pub fn new(node_name: String, sync_period: Duration) -> Self {
        Self {
            node_name,
            timeout: sync_period * 2,
            inner: Mutex::new(SyncTimes::default()),
            first_sync: watch::channel(false).0,
        }
    }

    fn times(&self) -> std::sync::MutexGuard<'_, SyncTimes> {
        // A poisoned lock only means a panic elsewhere while holding it; the times stay usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes arrived that the dataplane does not hold yet.
    pub fn queued(&self) {
        self.times().oldest_pending.get_or_insert_with(Instant::now);
    }

    /// A sync finished: `ok` when everything queued is now applied.
    pub fn record(&self, ok: bool) {
        self.first_sync
            .send_if_modified(|done| !std::mem::replace(done, true));
        let mut t = self.times();
        if ok {
            t.last_applied = Some((Instant::now(), SystemTime::now()));
            t.oldest_pending = None;
        } else {
            t.oldest_pending.get_or_insert_with(Instant::now);
        }
    }

    /// Returns once the first sync has been attempted (whatever its outcome).
    pub async fn first_sync(&self) {
        let _ = self.first_sync.subscribe().wait_for(|done| *done).await;
    }

    /// The sync loop went round once (for `/livez`).
    pub fn tick(&self) {
        self.times().last_tick = Some(Instant::now());
    }

    /// This Node's object as last seen (`None`: unknown, counted as eligible).
    pub fn set_node(&self, node: Option<&k8s_openapi::api::core::v1::Node>) {
        let eligibility = NodeEligibility::of(node);
        let mut t = self.times();
        if t.node != eligibility {
            tracing::info!(node = %self.node_name, ?eligibility, "node eligibility for traffic changed");
            t.node = eligibility;
        }
    }

    /// Whether changes are applied in time (ignores the node's eligibility).
    fn proxy_healthy(t: &SyncTimes, timeout: Duration) -> bool {
        t.last_applied.is_some()
            && t.oldest_pending
                .is_none_or(|since| since.elapsed() < timeout)
    }

    /// `/healthz`: proxy healthy and the node eligible.
    pub fn healthz(&self) -> HealthReport {
        let t = self.times();
        let eligible = t.node == NodeEligibility::Eligible;
        let healthy = Self::proxy_healthy(&t, self.timeout) && eligible;
        HealthReport {
            healthy,
            body: self.body(&t, eligible),
        }
    }

    /// `/livez`: the sync loop is not stuck.
    pub fn livez(&self) -> HealthReport {
        let t = self.times();
        let healthy = t.last_tick.is_none_or(|at| at.elapsed() < self.timeout);
        HealthReport {
            healthy,
            body: self.body(&t, t.node == NodeEligibility::Eligible),
        }
    }

    /// `serviceProxyHealthy` of the health check node ports: what `/healthz` answers.
    pub fn service_proxy_healthy(&self) -> bool {
        self.healthz().healthy
    }

    fn body(&self, t: &SyncTimes, eligible: bool) -> String {
        let last = t
            .last_applied
            .map(|(_, wall)| rfc3339(wall))
            .unwrap_or_default();
        serde_json::json!({
            "lastUpdated": last,
            "currentTime": rfc3339(SystemTime::now()),
            "nodeName": self.node_name,
            "nodeEligible": eligible,
        })
        .to_string()
    }
}

pub fn healthz_handler(state: Arc<HealthState>) -> Handler {
    Arc::new(move |req| {
        let report = match req.uri().path() {
            "/healthz" => state.healthz(),
            "/livez" => state.livez(),
            _ => return response(404, "text/plain", "not found\n"),
        };
        response(
            if report.healthy { 200 } else { 503 },
            "application/json",
            report.body,
        )
    })
}

fn rfc3339(time: SystemTime) -> String {
    sluice_model::time::rfc3339_utc_of(time)
}

struct HealthCheckServer {
    service: ObjectKey,
    local_endpoints: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    /// Its listeners' addresses (IPv4, and IPv6 where the node has it).
    addresses: Vec<SocketAddr>,
}

/// One listener per `healthCheckNodePort`, opened and closed as services come and go.
pub struct ServiceHealthServers {
    servers: BTreeMap<u16, HealthCheckServer>,
    /// `serviceProxyHealthy` of every answer (kube-proxy: 503 when the proxy is unhealthy).
    health: Arc<HealthState>,
    /// Taken over from the previous agent when it had the port open; offered to the next.
    listeners: Arc<Listeners>,
}

impl ServiceHealthServers {
    pub fn new(health: Arc<HealthState>, listeners: Arc<Listeners>) -> Self {
        Self {
            servers: BTreeMap::new(),
            health,
            listeners,
        }
    }

    /// Opens, updates and closes listeners to match `checks` (decided by compute: ready local
    /// endpoints only, a dual-stack pod counted once).
    pub async fn update(&mut self, checks: &BTreeMap<u16, HealthCheck>) {
        let wanted: BTreeMap<u16, (ObjectKey, usize)> = checks
            .iter()
            .map(|(port, check)| {
                let service = ObjectKey::new(
                    check.service.namespace.as_ref(),
                    check.service.name.as_ref(),
                );
                (*port, (service, check.local_endpoints))
            })
            .collect();
        self.servers.retain(|port, server| {
            let keep = wanted
                .get(port)
                .is_some_and(|(svc, _)| *svc == server.service);
            if !keep {
                let _ = server.stop.send(true);
                for addr in &server.addresses {
                    self.listeners.release(*addr);
                }
            }
            keep
        });
        for (port, (service, count)) in wanted {
            if let Some(server) = self.servers.get(&port) {
                server.local_endpoints.store(count, Ordering::Relaxed);
                continue;
            }
            let health = Arc::clone(&self.health);
            match start_health_check(port, service.clone(), count, health, &self.listeners) {
                Ok(server) => {
                    self.servers.insert(port, server);
                }
                Err(err) => {
                    tracing::warn!(service = %service, port, "cannot open the health check node port: {}", sluice_dataplane::error_chain(&err))
                }
            }
        }
    }
}

fn start_health_check(
    port: u16,
    service: ObjectKey,
    count: usize,
    health: Arc<HealthState>,
    listeners: &Listeners,
) -> std::io::Result<HealthCheckServer> {
    let local_endpoints = Arc::new(AtomicUsize::new(count));
    let (stop, stop_rx) = watch::channel(false);
    let v4 = SocketAddr::from(([0, 0, 0, 0], port));
    let listener = tokio_listener(listeners.tcp(v4, || sluice_ingress::bind_listener(v4))?)?;
    let handler = health_check_handler(service.clone(), Arc::clone(&local_endpoints), health);
    tokio::spawn(serve_listener(
        listener,
        Arc::clone(&handler),
        stop_rx.clone(),
    ));
    let mut addresses = vec![v4];
    // IPv6 as well where the node has it.
    let v6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    let v6_listener = listeners
        .tcp(v6, || bind_v6_only(port)?.into_std())
        .and_then(tokio_listener);
    if let Ok(listener) = v6_listener {
        tokio::spawn(serve_listener(listener, handler, stop_rx));
        addresses.push(v6);
    }
    Ok(HealthCheckServer {
        service,
        local_endpoints,
        stop,
        addresses,
    })
}

fn tokio_listener(listener: std::net::TcpListener) -> std::io::Result<TcpListener> {
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

fn bind_v6_only(port: u16) -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v6()?;
    socket.set_reuseaddr(true)?;
    // SAFETY: plain setsockopt on a socket we own; the value outlives the call.
    let one: libc::c_int = 1;
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    socket.bind((std::net::Ipv6Addr::UNSPECIFIED, port).into())?;
    socket.listen(128)
}

/// kube-proxy's answer: 200 when there are local endpoints and the proxy is healthy, else 503;
/// the count also goes into `X-Load-Balancing-Endpoint-Weight`.
fn health_check_handler(
    service: ObjectKey,
    local_endpoints: Arc<AtomicUsize>,
    health: Arc<HealthState>,
) -> Handler {
    Arc::new(move |_req| {
        let (status, body) = health_check_answer(
            &service,
            local_endpoints.load(Ordering::Relaxed),
            health.service_proxy_healthy(),
        );
        let mut resp = response(status, "application/json", body);
        if let Ok(weight) = hyper::header::HeaderValue::from_str(
            &local_endpoints.load(Ordering::Relaxed).to_string(),
        ) {
            resp.headers_mut()
                .insert("x-load-balancing-endpoint-weight", weight);
        }
        resp
    })
}

fn health_check_answer(service: &ObjectKey, count: usize, proxy_healthy: bool) -> (u16, String) {
    let body = serde_json::json!({
        "service": {"namespace": service.namespace, "name": service.name},
        "localEndpoints": count,
        "serviceProxyHealthy": proxy_healthy,
    });
    let status = if count > 0 && proxy_healthy { 200 } else { 503 };
    (status, body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_fails_before_the_first_sync_and_when_changes_wait_too_long() {
        let state = HealthState::new("n".into(), Duration::from_millis(5));
        assert!(!state.healthz().healthy, "no sync yet");
        state.record(true);
        assert!(state.healthz().healthy);
        state.queued();
        assert!(state.healthz().healthy, "a fresh change is tolerated");
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !state.healthz().healthy,
            "queued longer than 2x the sync period"
        );
        assert!(state.livez().healthy, "not applying is not being stuck");
        state.record(true);
        assert!(state.healthz().healthy, "applied again");
        state.record(false);
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !state.healthz().healthy,
            "failing longer than 2x the sync period"
        );
        assert!(state.healthz().body.contains("\"nodeName\":\"n\""));
    }

    fn node(json: serde_json::Value) -> k8s_openapi::api::core::v1::Node {
        serde_json::from_value(json).expect("node")
    }

    #[test]
    fn a_node_being_deleted_or_tainted_for_removal_fails_healthz_only() {
        let state = HealthState::new("n".into(), Duration::from_secs(30));
        state.record(true);
        state.tick();
        let deleting = node(serde_json::json!({"metadata": {"name": "n",
            "deletionTimestamp": "2026-01-01T00:00:00Z"}}));
        state.set_node(Some(&deleting));
        let report = state.healthz();
        assert!(!report.healthy);
        assert!(
            report.body.contains("\"nodeEligible\":false"),
            "{}",
            report.body
        );
        assert!(state.livez().healthy, "/livez ignores the node");
        assert!(!state.service_proxy_healthy());

        let tainted = node(
            serde_json::json!({"metadata": {"name": "n"}, "spec": {"taints": [
            {"key": TO_BE_DELETED_TAINT, "value": "1700000000", "effect": "NoSchedule"}]}}),
        );
        state.set_node(Some(&tainted));
        assert!(!state.healthz().healthy);
        let other_taint = node(
            serde_json::json!({"metadata": {"name": "n"}, "spec": {"taints": [
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}}),
        );
        state.set_node(Some(&other_taint));
        assert!(state.healthz().healthy, "a cordon is not a removal");
        state.set_node(None);
        assert!(state.healthz().healthy);
    }

    #[test]
    fn livez_fails_only_when_the_sync_loop_stops_going_round() {
        let state = HealthState::new("n".into(), Duration::from_millis(5));
        assert!(state.livez().healthy, "waiting for the source is not stuck");
        state.tick();
        assert!(state.livez().healthy);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!state.livez().healthy, "no round for 2x the sync period");
        state.tick();
        assert!(state.livez().healthy);
    }

    #[test]
    fn health_check_answers_like_kube_proxy() {
        let svc = ObjectKey::new("default", "web");
        let (status, body) = health_check_answer(&svc, 2, true);
        assert_eq!(status, 200);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"service": {"namespace": "default", "name": "web"},
                               "localEndpoints": 2, "serviceProxyHealthy": true})
        );
        assert_eq!(
            health_check_answer(&svc, 0, true).0,
            503,
            "no local endpoint"
        );
        let (status, body) = health_check_answer(&svc, 2, false);
        assert_eq!(status, 503, "proxy unhealthy: drained like kube-proxy");
        assert!(body.contains("\"serviceProxyHealthy\":false"));
    }
}
