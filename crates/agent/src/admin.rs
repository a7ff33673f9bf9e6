//! The admin endpoint: the running agent's decided state, served as JSON over a Unix socket
//! (`--admin-socket`, mode 0600, never on the network) for `sluice inspect` and
//! `sluice explain`.
//!
//! | path | answer |
//! | --- | --- |
//! | `/v1/status` | node, dataplane, elected or not, last sync, refused service ports |
//! | `/v1/services` | every service port of the plan: frontends, routes, backend sets |
//! | `/v1/explain?dst=IP:PORT/PROTO[&from=SRC]` | the plan walked for that packet ([`L4Walk`]s) |
//! | `/v1/routes` | the Ingress route table |
//! | `/v1/explain-http?url=URL` | the route table walked for that request ([`HttpWalk`]) |

use std::io::{Read as _, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sluice_dataplane::{ApplyReport, DataplaneError, error_chain};
use sluice_plan::{Plan, PlanDelta};
use tokio::sync::watch;

use crate::cluster::ClusterLink;
use crate::explain::{Destination, HttpWalk, L4Walk, walk_http, walk_plan};
use crate::http::{Handler, response};
use crate::inspect::rows::{RouteTableRows, ServiceRow, route_rows, service_rows};
use crate::loadbalancer::LbStats;

/// `GET /v1/status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub dataplane: String,
    /// `None` without an API server (`--source dir:`).
    pub elected: Option<bool>,
    pub service_ports: usize,
    /// Seconds since the last sync that applied everything.
    pub last_applied_seconds_ago: Option<u64>,
    /// Service ports the dataplane refused at the last sync (`port: reason`).
    pub refused: Vec<String>,
    /// The last sync's error, when it failed as a whole.
    pub sync_error: Option<String>,
    pub node_addresses: Vec<IpAddr>,
}

/// What the sync loop last decided and programmed.
#[derive(Default)]
struct View {
    plan: Arc<Plan>,
    node_addresses: Vec<IpAddr>,
    refused: Vec<sluice_dataplane::ServiceFailure>,
    sync_error: Option<String>,
    applied_at: Option<SystemTime>,
}

/// The running agent's state as the admin endpoint shows it.
pub struct LiveState {
    node: String,
    dataplane: String,
    view: Mutex<View>,
    ingress: Option<Arc<sluice_ingress::IngressProxy>>,
    cluster: Option<Arc<ClusterLink>>,
    /// LoadBalancer IPAM and L2 announcement (`None`: turned off).
    load_balancer: Option<Arc<LbStats>>,
}

/// `GET /v1/announcements`: one address this node answers ARP/NDP for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnouncementRow {
    pub address: IpAddr,
    /// The service ports with a frontend on it (`namespace/name[:port]/protocol`).
    pub services: Vec<String>,
}

impl LiveState {
    pub fn new(
        node: &str,
        dataplane: &str,
        ingress: Option<Arc<sluice_ingress::IngressProxy>>,
        cluster: Option<Arc<ClusterLink>>,
    ) -> Self {
        Self {
            node: node.to_owned(),
            dataplane: dataplane.to_owned(),
            view: Mutex::new(View::default()),
            ingress,
            cluster,
            load_balancer: None,
        }
    }

    /// Shows the LoadBalancer addresses this node announces.
    pub fn with_load_balancer(mut self, stats: Arc<LbStats>) -> Self {
        self.load_balancer = Some(stats);
        self
    }

    /// The addresses this node announces and the service ports using them; `None` when
    /// LoadBalancer IPAM is off.
    pub fn announcements(&self) -> Option<Vec<AnnouncementRow>> {
        let announced = self.load_balancer.as_ref()?.announced();
        let plan = Arc::clone(&self.view().plan);
        let rows = announced
            .into_iter()
            .map(|address| AnnouncementRow {
                address,
                services: plan
                    .services
                    .values()
                    .filter(|s| {
                        s.frontends
                            .iter()
                            .any(|f| f.key.addr == sluice_plan::FrontendAddr::Ip(address))
                    })
                    .map(|s| s.name.to_string())
                    .collect(),
            })
            .collect();
        Some(rows)
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The planner's current plan and this node's addresses. `delta`: what changed since the
    /// plan last given here, applied in place (a copy of the whole plan costs milliseconds at
    /// 10,000 Services, on every change); `None` copies the whole plan.
    pub fn set_plan(&self, plan: &Plan, delta: Option<&PlanDelta>, node_addresses: &[IpAddr]) {
        let mut view = self.view();
        match delta {
            None => view.plan = Arc::new(plan.clone()),
            // Copies the whole plan only while a reader still holds the previous one.
            Some(delta) => apply_delta(Arc::make_mut(&mut view.plan), plan, delta),
        }
        view.node_addresses = node_addresses.to_vec();
    }

    /// The outcome of a dataplane call.
    pub fn programmed(&self, result: &Result<ApplyReport, DataplaneError>) {
        let mut view = self.view();
        match result {
            Ok(report) => {
                view.refused = report.failed.clone();
                view.sync_error = None;
                if report.failed.is_empty() {
                    view.applied_at = Some(SystemTime::now());
                }
            }
            Err(err) => view.sync_error = Some(error_chain(err)),
        }
    }

    pub fn status(&self) -> Status {
        let view = self.view();
        Status {
            node: self.node.clone(),
            dataplane: self.dataplane.clone(),
            elected: self.cluster.as_ref().map(|c| c.is_leader()),
            service_ports: view.plan.services.len(),
            last_applied_seconds_ago: view
                .applied_at
                .and_then(|at| at.elapsed().ok())
                .map(|d| d.as_secs()),
            refused: view.refused.iter().map(ToString::to_string).collect(),
            sync_error: view.sync_error.clone(),
            node_addresses: view.node_addresses.clone(),
        }
    }

    fn plan(
        &self,
    ) -> (
        Arc<Plan>,
        Vec<IpAddr>,
        Vec<sluice_dataplane::ServiceFailure>,
    ) {
        let view = self.view();
        (
            Arc::clone(&view.plan),
            view.node_addresses.clone(),
            view.refused.clone(),
        )
    }

    pub fn services(&self) -> Vec<ServiceRow> {
        service_rows(&self.plan().0)
    }

    pub fn explain(&self, dst: &Destination, from: Option<IpAddr>) -> Vec<L4Walk> {
        let (plan, addresses, refused) = self.plan();
        walk_plan(&plan, &addresses, &refused, dst, from)
    }

    pub fn routes(&self) -> Result<RouteTableRows, String> {
        let proxy = self
            .ingress
            .as_ref()
            .ok_or("the Ingress proxy is disabled")?;
        Ok(route_rows(&proxy.route_plan()))
    }

    pub fn explain_http(&self, url: &str) -> Result<HttpWalk, String> {
        let proxy = self
            .ingress
            .as_ref()
            .ok_or("the Ingress proxy is disabled")?;
        walk_http(&proxy.route_table(), proxy.config(), url)
    }
}

/// The value of `name` in a query string (percent-decoded).
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:[]".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn json<T: Serialize>(value: &T) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    match serde_json::to_string(value) {
        Ok(body) => response(200, "application/json", body),
        Err(err) => response(500, "text/plain", format!("encoding the answer: {err}\n")),
    }
}

fn bad_request(
    message: impl std::fmt::Display,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    response(400, "text/plain", format!("{message}\n"))
}

pub fn handler(state: Arc<LiveState>) -> Handler {
    Arc::new(move |req| {
        let query = req.uri().query().unwrap_or("");
        match req.uri().path() {
            "/v1/status" => json(&state.status()),
            "/v1/services" => json(&state.services()),
            "/v1/explain" => {
                let Some(dst) = query_param(query, "dst") else {
                    return bad_request("missing dst=IP:PORT[/PROTO]");
                };
                let dst = match dst.parse::<Destination>() {
                    Ok(dst) => dst,
                    Err(err) => return bad_request(err),
                };
                let from = match query_param(query, "from").map(|f| f.parse::<IpAddr>()) {
                    None => None,
                    Some(Ok(ip)) => Some(ip),
                    Some(Err(err)) => return bad_request(format!("from: {err}")),
                };
                json(&state.explain(&dst, from))
            }
            "/v1/announcements" => match state.announcements() {
                Some(rows) => json(&rows),
                None => response(
                    404,
                    "text/plain",
                    "LoadBalancer IPAM is off (--disable-load-balancer-ipam)\n",
                ),
            },
            "/v1/routes" => match state.routes() {
                Ok(rows) => json(&rows),
                Err(err) => response(404, "text/plain", format!("{err}\n")),
            },
            "/v1/explain-http" => {
                let Some(url) = query_param(query, "url") else {
                    return bad_request("missing url=");
                };
                match state.explain_http(&url) {
                    Ok(walk) => json(&walk),
                    Err(err) => bad_request(err),
                }
            }
            _ => response(404, "text/plain", "not found\n"),
        }
    })
}

/// Serves the admin endpoint on `path` until `shutdown`. An old socket file (an earlier run)
/// is replaced; the socket is made accessible to root only.
pub async fn serve(
    path: PathBuf,
    state: Arc<LiveState>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (listener, ours) = crate::handover::bind_socket(&path)?;
    tracing::info!(socket = %path.display(), "admin endpoint listening");
    let handler = handler(state);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let Ok((stream, _)) = accepted else { continue };
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = handler(&req);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
    // Unless a new agent replaced it with its own.
    crate::handover::remove_socket_if_ours(&path, ours);
    Ok(())
}

/// Why the admin endpoint could not answer.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("the agent is not running here (no admin socket at {socket})")]
    NotRunning {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the agent at {socket}")]
    Io {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent answered {status} to {path}: {body}")]
    Status {
        path: String,
        status: u16,
        body: String,
    },
    #[error("the agent's answer to {path} is not what this sluice expects")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A blocking client of the admin endpoint (one request per connection).
pub struct AdminClient {
    socket: PathBuf,
}

impl AdminClient {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_owned(),
        }
    }

    /// `GET path_and_query`, decoded from JSON.
    pub fn get<T: serde::de::DeserializeOwned>(
        &self,
        path_and_query: &str,
    ) -> Result<T, AdminError> {
        let socket = self.socket.display().to_string();
        let mut stream =
            std::os::unix::net::UnixStream::connect(&self.socket).map_err(|source| {
                AdminError::NotRunning {
                    socket: socket.clone(),
                    source,
                }
            })?;
        let io = |source| AdminError::Io {
            socket: socket.clone(),
            source,
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io)?;
        write!(
            stream,
            "GET {path_and_query} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n"
        )
        .map_err(io)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).map_err(io)?;
        let (status, body) = split_response(&raw).ok_or_else(|| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not an HTTP response",
            ))
        })?;
        let path = path_and_query.to_owned();
        if status != 200 {
            return Err(AdminError::Status {
                path,
                status,
                body: String::from_utf8_lossy(body).trim().to_owned(),
            });
        }
        serde_json::from_slice(body).map_err(|source| AdminError::Decode { path, source })
    }

    pub fn explain(
        &self,
        dst: &Destination,
        from: Option<IpAddr>,
    ) -> Result<Vec<L4Walk>, AdminError> {
        let mut path = format!("/v1/explain?dst={}", percent_encode(&dst.to_string()));
        if let Some(from) = from {
            path.push_str(&format!("&from={}", percent_encode(&from.to_string())));
        }
        self.get(&path)
    }

    pub fn explain_http(&self, url: &str) -> Result<HttpWalk, AdminError> {
        self.get(&format!("/v1/explain-http?url={}", percent_encode(url)))
    }
}

/// (status, body) of a `Connection: close` HTTP/1.1 response with a Content-Length body.
fn split_response(raw: &[u8]) -> Option<(u16, &[u8])> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let body = &raw[head_end + 4..];
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    Some((status, length.map_or(body, |n| &body[..n.min(body.len())])))
}

/// Turns the plan `shown` into `plan`, given what changed between them.
fn apply_delta(shown: &mut Plan, plan: &Plan, delta: &PlanDelta) {
    shown.node = Arc::clone(&plan.node);
    for change in &delta.services {
        match &change.after {
            Some(after) => {
                shown
                    .services
                    .insert(change.name.clone(), Arc::clone(after));
            }
            None => {
                shown.services.remove(&change.name);
            }
        }
    }
    if delta.health_checks.is_some() {
        shown.health_checks = plan.health_checks.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_round_trip_through_percent_encoding() {
        let url = "https://cafe.example.com/tea?x=1&y=2";
        let query = format!("url={}&from=10.0.0.1", percent_encode(url));
        assert_eq!(query_param(&query, "url").as_deref(), Some(url));
        assert_eq!(query_param(&query, "from").as_deref(), Some("10.0.0.1"));
        assert_eq!(query_param(&query, "missing"), None);
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
    }

    #[test]
    fn announcements_name_the_service_ports_on_each_announced_address() {
        let plan = crate::inspect::tests::plan_of(
            include_str!("inspect/testdata/ebpf-objects.yaml"),
            "node-a",
            &["10.244.0.0/16"],
        );
        let live = LiveState::new("node-a", "nftables", None, None);
        assert_eq!(live.announcements(), None, "IPAM off");
        let stats = Arc::new(LbStats::default());
        let live = live.with_load_balancer(Arc::clone(&stats));
        live.set_plan(&plan, None, &[]);
        assert_eq!(live.announcements(), Some(vec![]));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        stats.set_announced(&[ip("203.0.113.10"), ip("192.0.2.99")].into());
        let rows = live.announcements().unwrap();
        let text: Vec<String> = rows
            .iter()
            .map(|r| format!("{} {}", r.address, r.services.join(",")))
            .collect();
        assert_eq!(text, ["192.0.2.99 ", "203.0.113.10 default/lb/tcp"]);
    }

    #[test]
    fn the_shown_plan_follows_the_planner_through_deltas() {
        let before = crate::inspect::tests::plan_of(
            include_str!("inspect/testdata/ebpf-objects.yaml"),
            "node-a",
            &["10.244.0.0/16"],
        );
        assert!(before.services.len() >= 2, "{before}");
        let mut after = before.clone();
        let mut names = before.services.keys().cloned();
        let (gone, changed) = (names.next().unwrap(), names.next().unwrap());
        after.services.remove(&gone);
        let mut plan = (*after.services[&changed]).clone();
        plan.affinity_timeout = Some(42);
        after.services.insert(changed, Arc::new(plan.clone()));
        let mut added = plan;
        added.name.port_name = "added".into();
        after.services.insert(added.name.clone(), Arc::new(added));
        after.health_checks.clear();

        let live = LiveState::new("node-a", "ebpf", None, None);
        live.set_plan(&before, None, &[]);
        let held = Arc::clone(&live.view().plan);
        live.set_plan(&after, Some(&PlanDelta::between(&before, &after)), &[]);
        assert_eq!(*live.view().plan, after);
        assert_eq!(*held, before, "a reader's copy stays as it was");
    }

    #[test]
    fn responses_split_into_status_and_body() {
        let raw =
            b"HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 4\r\n\r\nnope";
        assert_eq!(split_response(raw), Some((404, &b"nope"[..])));
        assert_eq!(split_response(b"garbage"), None);
    }
}
