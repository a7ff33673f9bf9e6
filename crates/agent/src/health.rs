//! `/healthz` and `/livez` (kube-proxy compatible JSON), and the per-service health check node
//! ports of `externalTrafficPolicy: Local` services, which cloud load balancers probe to send
//! traffic only to nodes with local endpoints.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice_model::ObjectKey;
use sluice_plan::HealthCheck;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http::{Handler, response, serve_listener};

/// Sync health as kube-proxy reports it.
pub struct HealthState {
    node_name: String,
    /// A sync failing (or not happening) for longer than this makes /healthz fail.
    timeout: Duration,
    inner: Mutex<SyncTimes>,
}

#[derive(Default)]
struct SyncTimes {
    last_success: Option<(Instant, SystemTime)>,
    failing_since: Option<Instant>,
}

impl HealthState {
    pub fn new(node_name: String, sync_period: Duration) -> Self {
        Self {
            node_name,
            timeout: sync_period * 2,
            inner: Mutex::new(SyncTimes::default()),
        }
    }

    pub fn record(&self, ok: bool) {
        let Ok(mut t) = self.inner.lock() else { return };
        if ok {
            t.last_success = Some((Instant::now(), SystemTime::now()));
            t.failing_since = None;
        } else if t.failing_since.is_none() {
            t.failing_since = Some(Instant::now());
        }
    }

    /// (healthy, JSON body)
    fn report(&self) -> (bool, String) {
        let Ok(t) = self.inner.lock() else {
            return (false, "{}".into());
        };
        let healthy = t.last_success.is_some()
            && t.failing_since
                .is_none_or(|since| since.elapsed() < self.timeout);
        let last = t
            .last_success
            .map(|(_, wall)| rfc3339(wall))
            .unwrap_or_default();
        let body = serde_json::json!({
            "lastUpdated": last,
            "currentTime": rfc3339(SystemTime::now()),
            "nodeName": self.node_name,
            "nodeEligible": true,
        });
        (healthy, body.to_string())
    }
}

pub fn healthz_handler(state: Arc<HealthState>) -> Handler {
    Arc::new(move |req| match req.uri().path() {
        "/healthz" | "/livez" => {
            let (healthy, body) = state.report();
            response(if healthy { 200 } else { 503 }, "application/json", body)
        }
        _ => response(404, "text/plain", "not found\n"),
    })
}

/// UTC `YYYY-MM-DDTHH:MM:SSZ` without a date-time dependency.
fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

struct HealthCheckServer {
    service: ObjectKey,
    local_endpoints: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
}

/// One listener per `healthCheckNodePort`, opened and closed as services come and go.
#[derive(Default)]
pub struct ServiceHealthServers {
    servers: BTreeMap<u16, HealthCheckServer>,
}

impl ServiceHealthServers {
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
            }
            keep
        });
        for (port, (service, count)) in wanted {
            if let Some(server) = self.servers.get(&port) {
                server.local_endpoints.store(count, Ordering::Relaxed);
                continue;
            }
            match start_health_check(port, service.clone(), count).await {
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

async fn start_health_check(
    port: u16,
    service: ObjectKey,
    count: usize,
) -> std::io::Result<HealthCheckServer> {
    let local_endpoints = Arc::new(AtomicUsize::new(count));
    let (stop, stop_rx) = watch::channel(false);
    let listener = TcpListener::bind(("0.0.0.0", port)).await?;
    let handler = health_check_handler(service.clone(), Arc::clone(&local_endpoints));
    tokio::spawn(serve_listener(
        listener,
        Arc::clone(&handler),
        stop_rx.clone(),
    ));
    // IPv6 as well where the node has it.
    if let Ok(listener) = bind_v6_only(port) {
        tokio::spawn(serve_listener(listener, handler, stop_rx));
    }
    Ok(HealthCheckServer {
        service,
        local_endpoints,
        stop,
    })
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

fn health_check_handler(service: ObjectKey, local_endpoints: Arc<AtomicUsize>) -> Handler {
    Arc::new(move |_req| {
        let count = local_endpoints.load(Ordering::Relaxed);
        let body = serde_json::json!({
            "service": {"namespace": service.namespace, "name": service.name},
            "localEndpoints": count,
            "serviceProxyHealthy": true,
        });
        response(
            if count > 0 { 200 } else { 503 },
            "application/json",
            body.to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_600_800)),
            "2026-11-25T10:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn healthz_fails_before_the_first_sync_and_after_failing_too_long() {
        let state = HealthState::new("n".into(), Duration::from_millis(5));
        assert!(!state.report().0, "no sync yet");
        state.record(true);
        assert!(state.report().0);
        state.record(false);
        assert!(state.report().0, "a fresh failure is tolerated");
        std::thread::sleep(Duration::from_millis(20));
        assert!(!state.report().0, "failing longer than 2x the sync period");
        assert!(state.report().1.contains("\"nodeName\":\"n\""));
    }
}
