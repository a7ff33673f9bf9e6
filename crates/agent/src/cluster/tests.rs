//! Which facts become Events, reported by whom, and when.

use std::sync::Mutex;

use clap::Parser as _;
use sluice_compute::Problem;
use sluice_dataplane::ServiceFailure;
use sluice_plan::ServicePortName;

use super::*;

#[derive(Default)]
struct FakeSink(Mutex<Vec<Event>>);

impl EventSink for FakeSink {
    fn record(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

impl FakeSink {
    fn take(&self) -> Vec<Event> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

#[derive(clap::Parser)]
struct Flags {
    #[command(flatten)]
    cluster: ClusterFlags,
}

fn flags(args: &[&str]) -> ClusterFlags {
    let argv = std::iter::once("x").chain(args.iter().copied());
    Flags::parse_from(argv).cluster
}

fn link(dataplane: &str) -> (ClusterLink, watch::Sender<bool>, Arc<FakeSink>) {
    let (leader_tx, leader_rx) = watch::channel(false);
    let sink = Arc::new(FakeSink::default());
    let config = flags(&[]).validate().unwrap();
    let setup = ClusterSetup {
        node: "node-a",
        dataplane,
        config: &config,
        ingress: false,
        status_addresses: Vec::new(),
    };
    let events: Arc<dyn EventSink> = sink.clone();
    let link = ClusterLink::with_parts(setup, None, leader_rx, None, events);
    (link, leader_tx, sink)
}

/// Lets the leadership follower task run.
async fn settle() {
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

fn conflict() -> Warning {
    Warning::new(
        "Service default/copy",
        &Problem::FrontendTaken {
            kind: "node-port",
            frontend: "nodeports-v4:30600/tcp".into(),
            owner: "default/shop/tcp".into(),
            rule: "the older Service, then the smaller namespace/name",
        },
    )
}

fn hijack() -> Warning {
    Warning::new(
        "Service default/hijack",
        &Problem::ExternalIpIsNodeAddress {
            ip: "192.0.2.11".parse().unwrap(),
            port: 22,
        },
    )
}

#[test]
fn compute_warnings_map_to_reasons_and_scopes() {
    let cases = [
        (conflict(), Scope::Cluster, "FrontendConflict", "Service"),
        (hijack(), Scope::Node, "ExternalIPRefused", "Service"),
        (
            Warning::new(
                "Service default/np",
                &Problem::NodePortOutsideRange {
                    port_name: "http".into(),
                    port: 80,
                    low: 30000,
                    high: 32767,
                },
            ),
            Scope::Cluster,
            "NodePortOutOfRange",
            "Service",
        ),
        (
            Warning::new(
                "Service default/np",
                &Problem::NodePortReserved {
                    port_name: "http".into(),
                    port: 30443,
                },
            ),
            Scope::Cluster,
            "NodePortReserved",
            "Service",
        ),
        (
            Warning::new(
                "Service default/lb",
                &Problem::HealthCheckPortTaken {
                    port: 32000,
                    owner: "default/other".into(),
                },
            ),
            Scope::Cluster,
            "HealthCheckNodePortConflict",
            "Service",
        ),
        (
            Warning::new(
                "EndpointSlice default/web-1",
                &Problem::NoAddresses { index: 0 },
            ),
            Scope::Cluster,
            "InvalidEndpoints",
            "EndpointSlice",
        ),
        (
            Warning::new("Service default/web", &Problem::NoClusterIp),
            Scope::Cluster,
            "InvalidServiceSpec",
            "Service",
        ),
    ];
    for (warning, scope, reason, kind) in cases {
        let (got_scope, event) = planner_fact(&warning, "node-a").expect("mapped");
        assert_eq!(
            (got_scope, event.reason.as_str()),
            (scope, reason),
            "{warning}"
        );
        assert_eq!(event.regarding.kind, kind);
        assert_eq!(event.type_, EventType::Warning);
        if scope == Scope::Node {
            assert!(event.note.starts_with("on node node-a: "), "{}", event.note);
        } else {
            assert_eq!(event.note, warning.message);
        }
    }
    let (_, event) = planner_fact(&conflict(), "node-a").unwrap();
    assert_eq!(event.regarding.namespace.as_deref(), Some("default"));
    assert_eq!(event.regarding.name, "copy");
}

#[tokio::test]
async fn cluster_wide_facts_are_reported_by_the_elected_agent_only_and_once() {
    let (link, leader, sink) = link("nftables");
    link.planned(&Plan::default(), &[conflict(), hijack()]);
    let events = sink.take();
    assert_eq!(events.len(), 1, "not elected: only the node's own fact");
    assert_eq!(events[0].reason, "ExternalIPRefused");

    leader.send(true).unwrap();
    settle().await;
    let events = sink.take();
    assert_eq!(
        events.len(),
        1,
        "elected: the cluster-wide fact is recorded at once"
    );
    assert_eq!(events[0].reason, "FrontendConflict");
    assert_eq!(events[0].regarding.name, "copy");

    link.planned(&Plan::default(), &[conflict(), hijack()]);
    assert!(
        sink.take().is_empty(),
        "unchanged facts are not recorded again"
    );

    link.planned(&Plan::default(), &[hijack()]);
    link.planned(&Plan::default(), &[conflict(), hijack()]);
    let events = sink.take();
    assert_eq!(
        events.len(),
        1,
        "a fact that went away and came back is new"
    );
    assert_eq!(events[0].reason, "FrontendConflict");

    leader.send(false).unwrap();
    settle().await;
    leader.send(true).unwrap();
    settle().await;
    assert_eq!(
        sink.take().len(),
        1,
        "re-elected: the current cluster-wide fact again"
    );
}

#[tokio::test]
async fn refused_service_ports_and_failed_syncs_are_reported_by_every_node() {
    let (link, _leader, sink) = link("ebpf");
    let report = ApplyReport {
        failed: vec![ServiceFailure {
            service: ServicePortName::new("default", "web", "http", Protocol::Tcp),
            reason: "map full".into(),
        }],
        ..ApplyReport::default()
    };
    link.programmed(&Ok(report.clone()));
    let events = sink.take();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason, "ProgrammingFailed");
    assert_eq!(events[0].regarding.kind, "Service");
    assert_eq!(events[0].regarding.name, "web");
    assert_eq!(
        events[0].note,
        "on node node-a: the ebpf dataplane could not program port default/web:http/tcp: map full; retrying"
    );
    link.programmed(&Ok(report));
    assert!(sink.take().is_empty());

    let failed: Result<ApplyReport, DataplaneError> = Err(DataplaneError::Kernel {
        backend: "ebpf",
        action: "update sl_svc_v1".into(),
        detail: "E2BIG".into(),
    });
    link.programmed(&failed);
    let events = sink.take();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason, "SyncFailed");
    assert_eq!(events[0].regarding, ObjectRef::node("node-a"));
    assert!(
        events[0].note.contains("update sl_svc_v1 failed: E2BIG"),
        "{}",
        events[0].note
    );
}

fn snapshot_with_ingress(annotations: serde_json::Value) -> Snapshot {
    let ingress = serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "web", "name": "cafe", "annotations": annotations},
        "spec": {"ingressClassName": "sluice"},
    }))
    .unwrap();
    let mut snapshot = Snapshot::default();
    snapshot
        .ingresses
        .insert(ObjectKey::new("web", "cafe"), Arc::new(ingress));
    snapshot
}

#[tokio::test]
async fn ingress_route_warnings_and_annotation_warnings_become_events_on_the_ingress() {
    let (link, leader, sink) = link("nftables");
    leader.send(true).unwrap();
    settle().await;
    let snapshot = snapshot_with_ingress(serde_json::json!({
        "nginx.ingress.kubernetes.io/rewrite-target": "/",
        "nginx.ingress.kubernetes.io/ssl-redirect": "false",
        "example.com/other": "x",
    }));
    let served = [ObjectKey::new("web", "cafe")];
    let warning = |message: &str| sluice_ingress::Warning {
        kind: "Ingress",
        object: sluice_ingress::ObjectName::new("web", "cafe"),
        message: message.into(),
    };
    // As sluice-routes words them (its golden warnings hold the same sentences).
    let warnings = [
        warning("service web/tea not found"),
        warning("secret web/cafe-tls is not a valid kubernetes.io/tls secret: no key"),
        warning(
            "annotation nginx.ingress.kubernetes.io/server-snippet is a configuration snippet, \
             which sluice never executes; ignored",
        ),
        warning(
            "annotation nginx.ingress.kubernetes.io/proxy-buffering is not supported by sluice; \
             ignored (see docs/ingress.md)",
        ),
        warning(
            "annotation nginx.ingress.kubernetes.io/ssl-redirect value \"maybe\" is not true or false; ignored",
        ),
    ];
    link.ingress_updated(&snapshot, &served, &warnings, Vec::new());
    let mut reasons: Vec<(String, String)> = sink
        .take()
        .into_iter()
        .map(|e| (e.reason, e.note))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            (
                "BackendServiceNotFound".to_owned(),
                "service web/tea not found".to_owned()
            ),
            (
                "InvalidAnnotation".to_owned(),
                "annotation nginx.ingress.kubernetes.io/ssl-redirect value \"maybe\" is not true \
                 or false; ignored"
                    .to_owned()
            ),
            (
                "InvalidTLSSecret".to_owned(),
                "secret web/cafe-tls is not a valid kubernetes.io/tls secret: no key".to_owned()
            ),
            (
                "UnsupportedAnnotation".to_owned(),
                "annotation nginx.ingress.kubernetes.io/proxy-buffering is not supported by \
                 sluice; ignored (see docs/ingress.md)"
                    .to_owned()
            ),
            (
                "UnsupportedAnnotation".to_owned(),
                "annotation nginx.ingress.kubernetes.io/server-snippet is a configuration \
                 snippet, which sluice never executes; ignored"
                    .to_owned()
            ),
        ]
    );
}

#[tokio::test]
async fn sctp_external_frontends_are_reported_in_ebpf_mode_only() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {namespace: default, name: sig}\n\
                spec:\n  type: NodePort\n  clusterIP: 10.96.0.40\n  ports: [{port: 3868, protocol: SCTP, nodePort: 30868}]\n\
                ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                metadata: {namespace: default, name: sig-1, labels: {kubernetes.io/service-name: sig}}\n\
                addressType: IPv4\nports: [{port: 3868, protocol: SCTP}]\nendpoints: [{addresses: [10.244.1.9]}]\n";
    let plan = crate::inspect::tests::plan_of(yaml, "node-a", &[]);
    let (nft, _, nft_sink) = link("nftables");
    nft.planned(&plan, &[]);
    assert!(nft_sink.take().is_empty());
    let (ebpf, _, ebpf_sink) = link("ebpf");
    ebpf.planned(&plan, &[]);
    let events = ebpf_sink.take();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason, "UnsupportedByDataplane");
    assert!(
        events[0].note.contains("nodeports-v4:30868/sctp"),
        "{}",
        events[0].note
    );
}

#[test]
fn lease_flags_are_validated_and_name_the_flag() {
    let config = flags(&[]).validate().unwrap();
    assert_eq!(config.lease_namespace, "kube-system");
    let lease = config.leader_lease("node-a");
    assert_eq!(lease.name, LEADER_LEASE);
    assert_eq!(lease.identity, "node-a");
    assert_eq!(lease.lease_duration, Duration::from_secs(15));
    assert_eq!(lease.renew_period, Duration::from_secs(2));
    assert_eq!(
        config.admin_socket,
        Some(PathBuf::from("/run/sluice/admin.sock"))
    );

    let err = flags(&["--leader-elect-renew-deadline", "20s"])
        .validate()
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("--leader-elect-renew-deadline: \"20s\""),
        "{err}"
    );
    let off = flags(&["--admin-socket", ""]).validate().unwrap();
    assert_eq!(off.admin_socket, None);
}
