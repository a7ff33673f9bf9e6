//! The Kubernetes API server source of sluice.
//!
//! [`K8sSource`] runs kube-runtime watchers for Services, EndpointSlices (discovery.k8s.io/v1),
//! the agent's own Node, Ingresses, IngressClasses and Secrets of type `kubernetes.io/tls` and
//! `Opaque` (only those an Ingress references keep their data and are reported), and
//! reports every change as [`SourceEvent`](sluice_model::SourceEvent)s on a channel, for the
//! consumer's [`Store`](sluice_model::Store): lists are paged, a (re)list is reported as one
//! unit the store swaps in atomically, and nothing is reported while the API server is
//! unreachable (the consumer keeps the last good state).
//!
//! Control-plane pieces built on the API server:
//! * [`LeaseHolder`]: leader election ([`LeaseConfig::leader_election`]) and this node's
//!   heartbeat Lease ([`LeaseConfig::node_heartbeat`]); [`LiveNodes`] watches the heartbeats;
//! * [`IngressStatusWriter`]: the Ingress `status.loadBalancer`, written by the leader only,
//!   with retries ([`update_ingress_status`] is its single, unretried write);
//! * [`EventRecorder`]: `events.k8s.io/v1` Events, de-duplicated and rate-limited;
//! * [`ObjectWatch`]: every object of one kind (e.g. `LoadBalancerIPPool`s, all Nodes) on a
//!   watch channel, for what the snapshot does not carry.

#![forbid(unsafe_code)]

mod events;
mod lease;
mod object_watch;
mod restarting;
mod secrets;
mod source;
mod status;
mod status_writer;
mod store;

use std::path::{Path, PathBuf};

use sluice_model::ObjectKey;

pub use events::{
    Event, EventRecorder, EventRecorderConfig, EventStats, EventType, ObjectRef,
    REPORTING_CONTROLLER,
};
pub use lease::{
    LEASE_KIND_LABEL, LeaseConfig, LeaseHolder, LiveNodes, NODE_HEARTBEAT_LABEL_VALUE,
    NODE_HEARTBEAT_PREFIX,
};
pub use object_watch::{ObjectWatch, Objects, Prepare, keep_as_is, trim_node};
pub use source::{
    DEFAULT_PAGE_SIZE, InitialList, K8sSource, K8sSourceConfig, OPAQUE_SECRET_TYPE,
    SECRET_FETCH_GRACE, TLS_SECRET_TYPE,
};
pub use status::update_ingress_status;
pub use status_writer::{
    DesiredIngressStatus, IngressStatusWriter, IngressStatusWriterConfig, StatusWriterStats,
};

#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("cannot load kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes client configuration found (no --kubeconfig given, no usable KUBECONFIG \
         or ~/.kube/config, not running in a cluster): {source}"
    )]
    InferConfig {
        #[source]
        source: kube::config::InferConfigError,
    },
    #[error("cannot build the Kubernetes client")]
    Client {
        #[source]
        source: kube::Error,
    },
    #[error("cannot read Ingress {ingress}")]
    GetIngress {
        ingress: ObjectKey,
        #[source]
        source: kube::Error,
    },
    #[error("cannot write the status of Ingress {ingress}")]
    PatchIngressStatus {
        ingress: ObjectKey,
        #[source]
        source: kube::Error,
    },
    #[error("the Kubernetes watch streams ended unexpectedly")]
    WatchEnded,
    #[error("invalid configuration of lease {lease}: {reason}")]
    InvalidLeaseConfig { lease: String, reason: String },
    #[error("cannot read or write lease {lease}")]
    Lease {
        lease: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot write Event {reason} about {object}")]
    WriteEvent {
        object: String,
        reason: String,
        #[source]
        source: kube::Error,
    },
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        operation: String,
        after: std::time::Duration,
    },
}

/// Read timeout of clients made by [`client`] (unless the configuration sets one).
pub const CLIENT_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// A client from the kubeconfig at `kubeconfig` (its current context) if given; otherwise the
/// default inference: `KUBECONFIG` / `~/.kube/config`, then the in-cluster service account.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, K8sError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kubeconfig_error = |source| K8sError::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(kubeconfig_error)?
        }
        None => kube::Config::infer()
            .await
            .map_err(|source| K8sError::InferConfig { source })?,
    };
    // Without a read timeout a list sent into a silently dead connection would wait forever;
    // watches are ended by the server every 290 s, so 5 minutes of silence means dead.
    config.read_timeout.get_or_insert(CLIENT_READ_TIMEOUT);
    kube::Client::try_from(config).map_err(|source| K8sError::Client { source })
}
