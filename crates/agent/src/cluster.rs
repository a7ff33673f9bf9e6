//! The agent on a real cluster (`--source k8s`): leader election among the agents, the
//! Ingress status written by the elected agent only, and Events about what the agent could not
//! do as the objects ask.
//!
//! * Facts about objects that every agent sees alike (a Service's conflicting frontend, an
//!   Ingress naming a missing Service) are reported by the **elected** agent only, so a
//!   1000-node cluster does not create 1000 Events for one typo.
//! * Facts that depend on the node (this node's dataplane refused a service port, an
//!   externalIP that is one of *this* node's addresses, an unsupported setting in this node's
//!   proxy mode) are reported by the agent of that node, naming it.
//! * Each fact is recorded once when it appears (and again after it went away and came back,
//!   or after this agent became the elected one); the [`EventRecorder`] de-duplicates and
//!   rate-limits what reaches the API server.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_compute::Warning;
use sluice_dataplane::{ApplyReport, DataplaneError, error_chain};
use sluice_k8s::{
    DesiredIngressStatus, Event, EventRecorder, EventRecorderConfig, EventType,
    IngressStatusWriter, IngressStatusWriterConfig, K8sError, LeaseConfig, LeaseHolder, ObjectRef,
};
use sluice_model::{ObjectKey, Snapshot};
use sluice_plan::{Plan, Protocol};
use tokio::sync::watch;

use crate::cli::{ConfigError, parse_duration};

/// Name of the leader-election Lease (in `--lease-namespace`).
pub const LEADER_LEASE: &str = "sluice-leader";

/// Flags for running on a real cluster (leader election, admin socket, kube-proxy cleanup).
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterFlags {
    /// Namespace of the leader-election Lease: the agent's own (set `POD_NAMESPACE` from the
    /// downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub lease_namespace: String,
    /// How long the other agents wait after the leader's last renewal before taking over.
    #[arg(
        long,
        env = "SLUICE_LEADER_ELECT_LEASE_DURATION",
        default_value = "15s"
    )]
    pub leader_elect_lease_duration: String,
    /// The leader steps down when it could not renew for this long (< lease duration).
    #[arg(
        long,
        env = "SLUICE_LEADER_ELECT_RENEW_DEADLINE",
        default_value = "10s"
    )]
    pub leader_elect_renew_deadline: String,
    /// How often the leader renews and the others try to acquire (< renew deadline).
    #[arg(long, env = "SLUICE_LEADER_ELECT_RETRY_PERIOD", default_value = "2s")]
    pub leader_elect_retry_period: String,
    /// Unix socket of the admin endpoint that `sluice inspect` and `sluice explain` read
    /// (never on the network); empty disables it.
    #[arg(
        long,
        env = "SLUICE_ADMIN_SOCKET",
        default_value = "/run/sluice/admin.sock"
    )]
    pub admin_socket: String,
    /// At start, remove what kube-proxy programmed on this node (iptables `KUBE-*` service
    /// chains, nftables `table ip/ip6 kube-proxy`), logged. For switching a running node from
    /// kube-proxy to sluice.
    #[arg(long, env = "SLUICE_CLEANUP_KUBE_PROXY")]
    pub cleanup_kube_proxy: bool,
}

/// Validated [`ClusterFlags`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub lease_namespace: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    pub admin_socket: Option<PathBuf>,
    pub cleanup_kube_proxy: bool,
}

/// A namespace name: an RFC 1123 DNS label.
fn is_dns_label(name: &str) -> bool {
    let edge = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&name.len())
        && name.chars().all(|c| edge(c) || c == '-')
        && name.starts_with(edge)
        && name.ends_with(edge)
}

impl ClusterFlags {
    pub fn validate(&self) -> Result<ClusterConfig, ConfigError> {
        let duration = |flag: &'static str, value: &str| {
            parse_duration(value).map_err(|reason| ConfigError::Invalid {
                flag,
                value: value.to_owned(),
                reason,
            })
        };
        let lease_duration = duration(
            "leader-elect-lease-duration",
            &self.leader_elect_lease_duration,
        )?;
        let renew_deadline = duration(
            "leader-elect-renew-deadline",
            &self.leader_elect_renew_deadline,
        )?;
        let retry_period = duration("leader-elect-retry-period", &self.leader_elect_retry_period)?;
        if !(retry_period > Duration::ZERO
            && retry_period < renew_deadline
            && renew_deadline < lease_duration)
        {
            return Err(ConfigError::Invalid {
                flag: "leader-elect-renew-deadline",
                value: self.leader_elect_renew_deadline.clone(),
                reason: format!(
                    "need 0 < retry period ({retry_period:?}) < renew deadline \
                     ({renew_deadline:?}) < lease duration ({lease_duration:?})"
                ),
            });
        }
        let namespace = self.lease_namespace.trim();
        if !is_dns_label(namespace) {
            return Err(ConfigError::Invalid {
                flag: "lease-namespace",
                value: self.lease_namespace.clone(),
                reason: "not a namespace name (lower-case letters, digits and '-', at most 63)"
                    .into(),
            });
        }
        let socket = self.admin_socket.trim();
        Ok(ClusterConfig {
            lease_namespace: namespace.to_owned(),
            lease_duration,
            renew_deadline,
            retry_period,
            admin_socket: (!socket.is_empty()).then(|| PathBuf::from(socket)),
            cleanup_kube_proxy: self.cleanup_kube_proxy,
        })
    }
}

impl ClusterConfig {
    /// The leader-election Lease for `node`. The leader renews every retry period, as
    /// client-go's leader election does.
    pub fn leader_lease(&self, node: &str) -> LeaseConfig {
        LeaseConfig {
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            renew_period: self.retry_period,
            retry_period: self.retry_period,
            ..LeaseConfig::leader_election(&self.lease_namespace, LEADER_LEASE, node)
        }
    }
}

/// Where Events go (the API server's [`EventRecorder`], or a fake in tests).
pub trait EventSink: Send + Sync {
    fn record(&self, event: Event);
}

impl EventSink for EventRecorder {
    fn record(&self, event: Event) {
        EventRecorder::record(self, event);
    }
}

/// Who reports a fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scope {
    /// Every agent sees it alike: the elected agent reports it.
    Cluster,
    /// Depends on this node: this node's agent reports it.
    Node,
}

/// Where facts come from; each source's facts are replaced as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    Planner,
    DataplaneLimits,
    Ingress,
    ServicePorts,
    Sync,
}

/// Current facts and which of them were recorded.
#[derive(Default)]
struct Facts {
    by_source: HashMap<Source, Vec<(Scope, Event)>>,
    /// Current facts already recorded by this agent.
    recorded: HashSet<Event>,
    leader: bool,
}

impl Facts {
    fn set(&mut self, source: Source, facts: Vec<(Scope, Event)>) {
        self.by_source.insert(source, facts);
    }

    /// Facts to record now: current ones this agent reports (node facts always, cluster facts
    /// while elected) that it has not recorded yet.
    fn due(&mut self) -> Vec<Event> {
        let leader = self.leader;
        let reportable: Vec<&Event> = self
            .by_source
            .values()
            .flatten()
            .filter(|(scope, _)| *scope == Scope::Node || leader)
            .map(|(_, event)| event)
            .collect();
        let due: Vec<Event> = reportable
            .iter()
            .filter(|event| !self.recorded.contains(**event))
            .map(|event| (*event).clone())
            .collect();
        self.recorded = reportable.into_iter().cloned().collect();
        due
    }
}

/// The agent's link to the cluster. Cheap to share (`Arc`); see the module docs.
pub struct ClusterLink {
    node: String,
    /// `dataplane.name()`: `ebpf` or `nftables`.
    dataplane: String,
    lease: Mutex<Option<LeaseHolder>>,
    leader: watch::Receiver<bool>,
    status: Option<IngressStatusWriter>,
    /// `--ingress-status-address` (empty: this node's addresses).
    status_addresses: Vec<IpAddr>,
    events: Arc<dyn EventSink>,
    facts: Arc<Mutex<Facts>>,
    follower: tokio::task::JoinHandle<()>,
}

/// What [`ClusterLink::start`] needs from the agent's configuration.
pub struct ClusterSetup<'a> {
    pub node: &'a str,
    pub dataplane: &'a str,
    pub config: &'a ClusterConfig,
    /// Whether the Ingress proxy runs (no status writer without it).
    pub ingress: bool,
    pub status_addresses: Vec<IpAddr>,
}

impl ClusterLink {
    /// Starts competing for the leader Lease, the status writer and the Event recorder.
    pub fn start(client: kube::Client, setup: ClusterSetup<'_>) -> Result<Self, K8sError> {
        let lease = LeaseHolder::spawn(client.clone(), setup.config.leader_lease(setup.node))?;
        let leader = lease.subscribe();
        let status = setup.ingress.then(|| {
            IngressStatusWriter::spawn(
                client.clone(),
                leader.clone(),
                IngressStatusWriterConfig::default(),
            )
        });
        let events = Arc::new(EventRecorder::spawn(
            client,
            EventRecorderConfig::new(setup.node),
        ));
        Ok(Self::with_parts(setup, Some(lease), leader, status, events))
    }

    fn with_parts(
        setup: ClusterSetup<'_>,
        lease: Option<LeaseHolder>,
        leader: watch::Receiver<bool>,
        status: Option<IngressStatusWriter>,
        events: Arc<dyn EventSink>,
    ) -> Self {
        let facts = Arc::new(Mutex::new(Facts::default()));
        let follower = tokio::spawn(follow_leadership(
            leader.clone(),
            Arc::clone(&facts),
            Arc::clone(&events),
        ));
        Self {
            node: setup.node.to_owned(),
            dataplane: setup.dataplane.to_owned(),
            lease: Mutex::new(lease),
            leader,
            status,
            status_addresses: setup.status_addresses,
            events,
            facts,
            follower,
        }
    }

    /// Whether this agent is the elected one.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Leadership of `sluice-leader` as it changes (the LoadBalancer side follows it too).
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// Replaces one source's facts and records what is due.
    fn update(&self, source: Source, facts: Vec<(Scope, Event)>) {
        let due = {
            let mut state = self.facts.lock().unwrap_or_else(|e| e.into_inner());
            state.set(source, facts);
            state.due()
        };
        for event in due {
            self.events.record(event);
        }
    }

    /// After each planning: the planner's current warnings, and settings this node's
    /// dataplane does not support.
    pub fn planned(&self, plan: &Plan, warnings: &[Warning]) {
        let facts = warnings
            .iter()
            .filter_map(|w| planner_fact(w, &self.node))
            .collect();
        self.update(Source::Planner, facts);
        self.update(
            Source::DataplaneLimits,
            dataplane_limits(plan, &self.dataplane, &self.node),
        );
    }

    /// After each Ingress route update: the desired Ingress statuses (written by the elected
    /// agent, at once) and the route warnings (unsupported or invalid annotations among them).
    pub fn ingress_updated(
        &self,
        snapshot: &Snapshot,
        served: &[ObjectKey],
        warnings: &[sluice_ingress::Warning],
        node_addresses: Vec<IpAddr>,
    ) {
        if let Some(writer) = &self.status {
            let ips = if self.status_addresses.is_empty() {
                node_addresses
            } else {
                self.status_addresses.clone()
            };
            writer.set_desired(DesiredIngressStatus::from_snapshot(snapshot, served, &ips));
        }
        let facts = warnings
            .iter()
            .map(|w| ingress_fact(w, &self.node))
            .collect();
        self.update(Source::Ingress, facts);
    }

    /// After each dataplane call: service ports it refused, or the whole sync failing.
    pub fn programmed(&self, result: &Result<ApplyReport, DataplaneError>) {
        match result {
            Ok(report) => {
                let facts = report
                    .failed
                    .iter()
                    .map(|failure| {
                        let service =
                            ObjectKey::new(failure.service.namespace(), failure.service.name());
                        node_event(
                            ObjectRef::service(&service),
                            "ProgrammingFailed",
                            "Program",
                            format!(
                                "on node {}: the {} dataplane could not program port {}: {}; retrying",
                                self.node, self.dataplane, failure.service, failure.reason
                            ),
                        )
                    })
                    .collect();
                self.update(Source::ServicePorts, facts);
                self.update(Source::Sync, Vec::new());
            }
            Err(err) => {
                let fact = node_event(
                    ObjectRef::node(&self.node),
                    "SyncFailed",
                    "Program",
                    format!(
                        "the {} dataplane failed to sync: {}; retrying",
                        self.dataplane,
                        error_chain(err)
                    ),
                );
                self.update(Source::Sync, vec![fact]);
            }
        }
    }

    /// Stops competing for the Lease and releases it (another agent takes over within its
    /// retry period instead of waiting for expiry).
    pub async fn shutdown(&self) {
        let lease = self.lease.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(lease) = lease {
            lease.shutdown().await;
        }
        self.follower.abort();
    }

    /// Stops competing for the Lease without releasing it: a new agent on this node (same
    /// identity, the node's name) took over and renews it; a release would let another node
    /// take over in between.
    pub fn abandon(&self) {
        // Dropping the holder stops it without a release.
        drop(self.lease.lock().unwrap_or_else(|e| e.into_inner()).take());
        self.follower.abort();
    }
}

impl Drop for ClusterLink {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// Records the cluster-wide facts when this agent becomes the elected one.
async fn follow_leadership(
    mut leader: watch::Receiver<bool>,
    facts: Arc<Mutex<Facts>>,
    events: Arc<dyn EventSink>,
) {
    loop {
        let now = *leader.borrow_and_update();
        let due = {
            let mut state = facts.lock().unwrap_or_else(|e| e.into_inner());
            if state.leader != now {
                tracing::info!(
                    leader = now,
                    "{}",
                    if now {
                        "elected: reporting cluster-wide Events and writing Ingress statuses"
                    } else {
                        "not elected: another agent reports cluster-wide Events"
                    }
                );
            }
            state.leader = now;
            state.due()
        };
        for event in due {
            events.record(event);
        }
        if leader.changed().await.is_err() {
            return;
        }
    }
}

fn warning_event(regarding: ObjectRef, reason: &str, action: &str, note: String) -> Event {
    Event {
        regarding,
        type_: EventType::Warning,
        reason: reason.to_owned(),
        action: action.to_owned(),
        note,
    }
}

fn node_event(regarding: ObjectRef, reason: &str, action: &str, note: String) -> (Scope, Event) {
    (Scope::Node, warning_event(regarding, reason, action, note))
}

/// `namespace/name` to a key.
fn parse_key(text: &str) -> Option<ObjectKey> {
    let (namespace, name) = text.split_once('/')?;
    Some(ObjectKey::new(namespace, name))
}

fn object_ref(kind: &str, name: &str) -> Option<ObjectRef> {
    let namespaced = |api_version: &str| {
        let key = parse_key(name)?;
        Some(ObjectRef {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: Some(key.namespace),
            name: key.name,
            uid: None,
        })
    };
    match kind {
        "Service" | "Secret" => namespaced("v1"),
        "EndpointSlice" => namespaced("discovery.k8s.io/v1"),
        "Ingress" => namespaced("networking.k8s.io/v1"),
        "IngressClass" => Some(ObjectRef {
            api_version: "networking.k8s.io/v1".into(),
            kind: kind.into(),
            namespace: None,
            name: name.into(),
            uid: None,
        }),
        "Node" => Some(ObjectRef::node(name)),
        _ => None,
    }
}

/// One planner warning (`Service default/web: ...`) as a fact. The reason is read from the
/// message compute renders (the unit tests build each of those messages with compute's own
/// `Problem`, so a changed wording fails them).
fn planner_fact(warning: &Warning, node: &str) -> Option<(Scope, Event)> {
    let (kind, name) = warning.object.split_once(' ')?;
    let regarding = object_ref(kind, name)?;
    let message = warning.message.as_str();
    let (scope, reason) = if message.contains("is already used by Service") {
        (Scope::Cluster, "FrontendConflict")
    } else if message.contains("is an address of this node") {
        (Scope::Node, "ExternalIPRefused")
    } else if message.contains("is the port of this agent's Ingress listener") {
        (Scope::Cluster, "NodePortReserved")
    } else if message.starts_with("nodePort ") {
        (Scope::Cluster, "NodePortOutOfRange")
    } else if message.starts_with("healthCheckNodePort ") {
        (Scope::Cluster, "HealthCheckNodePortConflict")
    } else if kind == "Node" {
        (Scope::Node, "InvalidNodeAddress")
    } else if kind == "EndpointSlice" {
        (Scope::Cluster, "InvalidEndpoints")
    } else {
        (Scope::Cluster, "InvalidServiceSpec")
    };
    let note = match scope {
        Scope::Node => format!("on node {node}: {message}"),
        Scope::Cluster => message.to_owned(),
    };
    Some((scope, warning_event(regarding, reason, "Plan", note)))
}

/// One Ingress route warning as a fact (on the object the warning names).
fn ingress_fact(warning: &sluice_ingress::Warning, node: &str) -> (Scope, Event) {
    let message = warning.message.as_str();
    let name = if warning.kind == "IngressClass" {
        warning.object.name.to_string()
    } else {
        warning.object.to_string()
    };
    let regarding = object_ref(warning.kind, &name).unwrap_or_else(|| ObjectRef {
        api_version: "v1".into(),
        kind: warning.kind.into(),
        namespace: (!warning.object.namespace.is_empty())
            .then(|| warning.object.namespace.to_string()),
        name: warning.object.name.to_string(),
        uid: None,
    });
    let (scope, reason) = if message.starts_with("annotation ") {
        // sluice-routes: `annotation NAME is a configuration snippet ...`, `... is not
        // supported by sluice ...`, or a value it could not use.
        if message.contains("configuration snippet") || message.contains("is not supported by") {
            (Scope::Cluster, "UnsupportedAnnotation")
        } else {
            (Scope::Cluster, "InvalidAnnotation")
        }
    } else if message.contains("own listener") {
        (Scope::Node, "BackendIsThisProxy")
    } else if message.contains("not a valid kubernetes.io/tls secret") {
        (Scope::Cluster, "InvalidTLSSecret")
    } else if message.contains("secret") && message.contains("not found") {
        (Scope::Cluster, "TLSSecretNotFound")
    } else if message.starts_with("service ") && message.contains("not found") {
        (Scope::Cluster, "BackendServiceNotFound")
    } else if message.contains("has no TCP port") || message.contains("has no port number") {
        (Scope::Cluster, "BackendPortNotFound")
    } else if message.contains("ExternalName") {
        (Scope::Cluster, "BackendNotSupported")
    } else {
        (Scope::Cluster, "InvalidIngressRule")
    };
    let note = match scope {
        Scope::Node => format!("on node {node}: {message}"),
        Scope::Cluster => message.to_owned(),
    };
    (scope, warning_event(regarding, reason, "Route", note))
}

/// Plan parts this node's dataplane cannot execute: the eBPF external path (tc/XDP) handles
/// TCP and UDP only, so SCTP NodePorts, externalIPs and LoadBalancer IPs reach no backend
/// from outside the node.
fn dataplane_limits(plan: &Plan, dataplane: &str, node: &str) -> Vec<(Scope, Event)> {
    if dataplane != "ebpf" {
        return Vec::new();
    }
    plan.services
        .values()
        .filter(|svc| svc.name.protocol == Protocol::Sctp)
        .filter_map(|svc| {
            let external: Vec<String> = svc
                .frontends
                .iter()
                .filter(|fe| fe.kind.is_external())
                .map(|fe| fe.key.to_string())
                .collect();
            if external.is_empty() {
                return None;
            }
            let service = ObjectKey::new(svc.name.namespace(), svc.name.name());
            Some(node_event(
                ObjectRef::service(&service),
                "UnsupportedByDataplane",
                "Program",
                format!(
                    "on node {node}: SCTP frontends {} of port {} are not served to clients \
                     outside the node in eBPF mode (its tc/XDP path handles TCP and UDP only); \
                     use --proxy-mode nftables on nodes that must serve them",
                    external.join(", "),
                    svc.name
                ),
            ))
        })
        .collect()
}

/// The Node object's InternalIP and ExternalIP addresses (what clients can reach), if any.
pub fn node_object_addresses(
    node: Option<&k8s_openapi::api::core::v1::Node>,
) -> Option<Vec<IpAddr>> {
    let addresses = node?.status.as_ref()?.addresses.as_ref()?;
    let ips: Vec<IpAddr> = addresses
        .iter()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    (!ips.is_empty()).then_some(ips)
}

#[cfg(test)]
mod tests;
