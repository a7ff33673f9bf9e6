//! Counters and state of the LoadBalancer side, exported on the agent's metrics endpoint:
//!
//! | metric | type | meaning |
//! | --- | --- | --- |
//! | `sluice_l2_announced{ip}` | gauge (1) | an address this node answers ARP/NDP for |
//! | `sluice_l2_replies_total{protocol="arp"\|"ndp"}` | counter | answers sent to requests |
//! | `sluice_l2_announcements_total` | counter | gratuitous ARPs / unsolicited NAs (takeovers) |
//! | `sluice_l2_send_failures_total` | counter | frames an interface refused |
//! | `sluice_lb_ipam_leader` | gauge | 1 while this agent writes statuses (elected) |
//! | `sluice_lb_assigned_addresses` | gauge | addresses assigned by the last allocation |
//! | `sluice_lb_status_writes_total` / `_failures_total` | counter | status PATCHes |

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use sluice_l2announce::ResponderStats;

#[derive(Debug, Default)]
pub struct LbStats {
    /// Shared by the responders of every interface.
    pub responder: ResponderStats,
    announced: Mutex<BTreeSet<IpAddr>>,
    leader: AtomicBool,
    assigned: AtomicU64,
    status_writes: AtomicU64,
    status_write_failures: AtomicU64,
}

impl LbStats {
    pub fn set_announced(&self, ips: &BTreeSet<IpAddr>) {
        let mut announced = self
            .announced
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        announced.clone_from(ips);
    }

    pub fn announced(&self) -> BTreeSet<IpAddr> {
        self.announced
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    pub fn set_assigned(&self, count: usize) {
        self.assigned.store(count as u64, Ordering::Relaxed);
    }

    pub fn count_status_write(&self, ok: bool) {
        let counter = if ok {
            &self.status_writes
        } else {
            &self.status_write_failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Encodes [`LbStats`] at scrape time.
#[derive(Debug)]
pub struct LbCollector(pub std::sync::Arc<LbStats>);

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for LbCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = &self.0;
        let mut announced = encoder.encode_descriptor(
            "sluice_l2_announced",
            "LoadBalancer addresses this node answers ARP/NDP for (value 1)",
            None,
            MetricType::Gauge,
        )?;
        for ip in stats.announced() {
            let labels = [("ip", ip.to_string())];
            announced.encode_family(&labels)?.encode_gauge(&1i64)?;
        }
        let counts = stats.responder.counts();
        let mut replies = encoder.encode_descriptor(
            "sluice_l2_replies",
            "ARP replies and neighbour advertisements sent in answer to requests",
            None,
            MetricType::Counter,
        )?;
        for (protocol, value) in [("arp", counts.arp_replies), ("ndp", counts.ndp_replies)] {
            replies
                .encode_family(&[("protocol", protocol)])?
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&value, None)?;
        }
        counter(
            &mut encoder,
            "sluice_l2_announcements",
            "Gratuitous ARPs and unsolicited neighbour advertisements sent (takeovers)",
            counts.announcements,
        )?;
        counter(
            &mut encoder,
            "sluice_l2_send_failures",
            "ARP/NDP frames an interface refused to send",
            counts.send_failures,
        )?;
        gauge(
            &mut encoder,
            "sluice_lb_ipam_leader",
            "1 while this agent is the elected writer of LoadBalancer statuses",
            i64::from(stats.leader.load(Ordering::Relaxed)),
        )?;
        gauge(
            &mut encoder,
            "sluice_lb_assigned_addresses",
            "LoadBalancer addresses assigned by the last allocation run",
            i64::try_from(stats.assigned.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        )?;
        counter(
            &mut encoder,
            "sluice_lb_status_writes",
            "Service and pool status writes accepted",
            stats.status_writes.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "sluice_lb_status_write_failures",
            "Service and pool status writes that failed (retried)",
            stats.status_write_failures.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prometheus_client::registry::Registry;

    use super::*;

    #[test]
    fn announced_addresses_and_replies_are_exported() {
        let stats = Arc::new(LbStats::default());
        stats.set_announced(
            &[
                "192.0.2.200".parse().unwrap(),
                "2001:db8::200".parse().unwrap(),
            ]
            .into(),
        );
        stats.set_leader(true);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(LbCollector(Arc::clone(&stats))));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "sluice_l2_announced{ip=\"192.0.2.200\"} 1",
            "sluice_l2_announced{ip=\"2001:db8::200\"} 1",
            "sluice_l2_replies_total{protocol=\"arp\"} 0",
            "sluice_l2_replies_total{protocol=\"ndp\"} 0",
            "sluice_l2_announcements_total 0",
            "sluice_lb_ipam_leader 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
    }
}
