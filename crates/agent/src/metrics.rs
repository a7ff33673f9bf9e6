//! Prometheus metrics, reusing kube-proxy's names where they mean the same thing so existing
//! dashboards and alerts keep working.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sluice_dataplane::ApplyReport;

use crate::http::{Handler, response};

pub struct Metrics {
    registry: Registry,
    sync_duration: Histogram,
    network_programming: Histogram,
    full_sync_duration: Histogram,
    partial_sync_duration: Histogram,
    last_sync_timestamp: Gauge<f64, AtomicU64>,
    service_changes: Counter,
    sync_errors: Counter,
    service_failures: Counter,
    dataplane_operations: Counter,
    service_ports: Gauge,
    ingress_route_updates: Histogram,
}

fn sync_buckets() -> Histogram {
    // 1 ms .. ~16 s, as kube-proxy's (exponential, factor 2).
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Metrics {
    /// `ingress`: the proxy whose counters are exported too (read at scrape time);
    /// `collectors`: more metrics encoded at scrape time (e.g. the LoadBalancer side's).
    pub fn new(
        ingress: Option<Arc<sluice_ingress::IngressProxy>>,
        collectors: Vec<Box<dyn Collector>>,
    ) -> Self {
        let mut registry = Registry::default();
        if let Some(proxy) = ingress {
            registry.register_collector(Box::new(IngressCollector(proxy)));
        }
        for collector in collectors {
            registry.register_collector(collector);
        }
        let m = Metrics {
            sync_duration: sync_buckets(),
            // 0.25 s .. ~68 min, as kube-proxy's.
            network_programming: Histogram::new(exponential_buckets(0.25, 2.0, 15)),
            full_sync_duration: sync_buckets(),
            partial_sync_duration: sync_buckets(),
            last_sync_timestamp: Gauge::default(),
            service_changes: Counter::default(),
            sync_errors: Counter::default(),
            service_failures: Counter::default(),
            dataplane_operations: Counter::default(),
            service_ports: Gauge::default(),
            // 0.1 ms .. ~1.6 s.
            ingress_route_updates: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
            registry: Registry::default(),
        };
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            m.sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_network_programming_duration_seconds",
            "From an endpoint change (EndpointSlice last-change-trigger-time) to its rules being applied",
            m.network_programming.clone(),
        );
        registry.register(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "Latency of full syncs in seconds",
            m.full_sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "Latency of partial syncs in seconds",
            m.partial_sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.last_sync_timestamp.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative service port changes applied",
            m.service_changes.clone(),
        );
        registry.register(
            "sluice_sync_errors",
            "Syncs whose dataplane update failed",
            m.sync_errors.clone(),
        );
        registry.register(
            "sluice_service_program_failures",
            "Service ports a dataplane refused to program (logged with their name; retried)",
            m.service_failures.clone(),
        );
        registry.register(
            "sluice_dataplane_operations",
            "Dataplane operations sent (nft lines, map writes)",
            m.dataplane_operations.clone(),
        );
        registry.register(
            "sluice_service_ports",
            "Service ports programmed on this node",
            m.service_ports.clone(),
        );
        registry.register(
            "sluice_ingress_route_update_duration_seconds",
            "From a source seeing a change the Ingress routes use to the proxy's new route table",
            m.ingress_route_updates.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn record_sync(
        &self,
        elapsed: Duration,
        result: Result<&ApplyReport, ()>,
        service_ports: usize,
    ) {
        let secs = elapsed.as_secs_f64();
        self.sync_duration.observe(secs);
        match result {
            Ok(stats) => {
                if stats.full_sync {
                    &self.full_sync_duration
                } else {
                    &self.partial_sync_duration
                }
                .observe(secs);
                self.service_changes.inc_by(stats.services_changed as u64);
                self.service_failures.inc_by(stats.failed.len() as u64);
                self.dataplane_operations.inc_by(stats.operations as u64);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                self.last_sync_timestamp.set(now);
                self.service_ports
                    .set(i64::try_from(service_ports).unwrap_or(i64::MAX));
            }
            Err(()) => {
                self.sync_errors.inc();
            }
        }
    }

    /// Also exports the eBPF maps' occupancy (`sluice_bpf_map_entries` / `_capacity`, by map),
    /// as of the dataplane's last sync.
    pub fn with_bpf_maps(mut self, maps: Option<sluice_dp_ebpf::OccupancyHandle>) -> Self {
        if let Some(maps) = maps {
            self.registry
                .register_collector(Box::new(BpfMapCollector(maps)));
        }
        self
    }

    /// Records how long ago each applied endpoint change was triggered.
    pub fn record_network_programming(&self, latencies: impl IntoIterator<Item = Duration>) {
        for latency in latencies {
            self.network_programming.observe(latency.as_secs_f64());
        }
    }

    /// One swap of the Ingress route table, `latency` after its source saw the change.
    pub fn record_ingress_route_update(&self, latency: Duration) {
        self.ingress_route_updates.observe(latency.as_secs_f64());
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// eBPF map entries and capacities, read from the dataplane's handle on each scrape.
#[derive(Debug)]
struct BpfMapCollector(sluice_dp_ebpf::OccupancyHandle);

/// One exported gauge family: name, help, and the value of one map.
type MapGauge = (
    &'static str,
    &'static str,
    fn(&sluice_dp_ebpf::MapOccupancy) -> i64,
);

impl Collector for BpfMapCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let maps = self.0.get();
        let gauges: [MapGauge; 2] = [
            ("sluice_bpf_map_entries", "Entries in each eBPF map", |o| {
                i64::try_from(o.entries).unwrap_or(i64::MAX)
            }),
            (
                "sluice_bpf_map_capacity",
                "Capacity (max_entries) of each eBPF map",
                |o| i64::from(o.capacity),
            ),
        ];
        for (name, help, value) in gauges {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for o in &maps {
                let labels = [("map", o.map.short())];
                ConstGauge::new(value(o)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The ingress proxy's own atomic counters, encoded on each scrape (no second copy to keep in
/// step on the request path).
struct IngressCollector(Arc<sluice_ingress::IngressProxy>);

impl std::fmt::Debug for IngressCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IngressCollector")
    }
}

fn const_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

impl Collector for IngressCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.stats();
        for (name, help, value) in [
            (
                "sluice_ingress_connections",
                "Downstream connections accepted",
                s.connections_total,
            ),
            (
                "sluice_ingress_requests",
                "Requests received",
                s.requests_total,
            ),
            (
                "sluice_ingress_not_found",
                "Requests answered by the built-in 404",
                s.not_found,
            ),
            (
                "sluice_ingress_upstream_connect_failures",
                "Failed connection attempts to endpoints",
                s.upstream_connect_failures,
            ),
            (
                "sluice_ingress_upstream_timeouts",
                "Requests without upstream response headers in time (504)",
                s.upstream_timeouts,
            ),
            (
                "sluice_ingress_retries",
                "Requests retried on another endpoint",
                s.retries,
            ),
            (
                "sluice_ingress_endpoint_ejections",
                "Endpoints left out of balancing after consecutive connect failures",
                s.endpoint_ejections,
            ),
            (
                "sluice_ingress_proxy_protocol_errors",
                "Connections closed for a missing or invalid PROXY protocol header or an untrusted peer",
                s.proxy_protocol_errors,
            ),
            (
                "sluice_ingress_route_table_swaps",
                "Route tables built and swapped in (a burst of changes makes one)",
                s.route_table_swaps,
            ),
            (
                "sluice_ingress_access_log_dropped",
                "Access log lines dropped because the writer could not keep up",
                s.access_log_dropped,
            ),
        ] {
            const_counter(&mut encoder, name, help, value)?;
        }
        let active = ConstGauge::new(i64::try_from(s.connections_active).unwrap_or(i64::MAX));
        active.encode(encoder.encode_descriptor(
            "sluice_ingress_connections_active",
            "Open downstream connections",
            None,
            active.metric_type(),
        )?)?;
        let example = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "sluice_ingress_responses",
            "Responses by status class",
            None,
            example.metric_type(),
        )?;
        for (class, count) in ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .iter()
            .zip(s.responses_by_class)
        {
            ConstCounter::new(count).encode(family.encode_family(&[("code_class", *class)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "sluice_ingress_worker_connections",
            "Downstream connections accepted by each proxy worker",
            None,
            example.metric_type(),
        )?;
        for (worker, count) in self.0.worker_connections().into_iter().enumerate() {
            let worker = worker.to_string();
            ConstCounter::new(count)
                .encode(family.encode_family(&[("worker", worker.as_str())])?)?;
        }
        Ok(())
    }
}

pub fn handler(metrics: Arc<Metrics>) -> Handler {
    Arc::new(move |req| match req.uri().path() {
        "/metrics" => response(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => response(404, "text/plain", "not found\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_kube_proxy_metric_names() {
        let m = Metrics::new(None, Vec::new());
        m.record_sync(
            Duration::from_millis(3),
            Ok(&ApplyReport {
                services_changed: 2,
                operations: 7,
                full_sync: true,
                failed: vec![sluice_dataplane::ServiceFailure {
                    service: sluice_model::ServicePortName::new(
                        "default",
                        "web",
                        "",
                        sluice_model::Protocol::Tcp,
                    ),
                    reason: "refused".into(),
                }],
            }),
            5,
        );
        m.record_sync(Duration::from_millis(1), Err(()), 5);
        let text = m.encode();
        assert!(
            text.contains("kubeproxy_sync_proxy_rules_duration_seconds_count 2"),
            "{text}"
        );
        assert!(
            text.contains("kubeproxy_sync_full_proxy_rules_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("kubeproxy_sync_proxy_rules_service_changes_total 2"),
            "{text}"
        );
        assert!(text.contains("sluice_sync_errors_total 1"), "{text}");
        assert!(
            text.contains("sluice_service_program_failures_total 1"),
            "{text}"
        );
        assert!(text.contains("sluice_service_ports 5"), "{text}");
    }

    #[test]
    fn exports_the_bpf_map_occupancy() {
        let maps = sluice_dp_ebpf::OccupancyHandle::default();
        maps.set(vec![sluice_dp_ebpf::MapOccupancy {
            map: sluice_dp_ebpf::abi::MapKind::Maglev,
            entries: 2042,
            capacity: 262_144,
        }]);
        let text = Metrics::new(None, Vec::new())
            .with_bpf_maps(Some(maps))
            .encode();
        assert!(
            text.contains("sluice_bpf_map_entries{map=\"maglev\"} 2042"),
            "{text}"
        );
        assert!(
            text.contains("sluice_bpf_map_capacity{map=\"maglev\"} 262144"),
            "{text}"
        );
    }

    #[test]
    fn exports_the_ingress_counters() {
        let proxy = Arc::new(sluice_ingress::IngressProxy::new(
            sluice_ingress::IngressConfig::default(),
        ));
        let text = Metrics::new(Some(proxy), Vec::new()).encode();
        assert!(text.contains("sluice_ingress_requests_total 0"), "{text}");
        assert!(
            text.contains("sluice_ingress_endpoint_ejections_total 0"),
            "{text}"
        );
        assert!(
            text.contains("sluice_ingress_responses_total{code_class=\"5xx\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("sluice_ingress_connections_active 0"),
            "{text}"
        );
        assert!(
            text.contains("sluice_ingress_worker_connections_total{worker=\"0\"} 0"),
            "{text}"
        );
    }
}
