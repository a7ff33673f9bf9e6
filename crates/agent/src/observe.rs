//! What the sync loop tells the rest of the agent after each step: the admin endpoint's live
//! state (always) and, with an API server, the cluster link (Ingress status, Events).

use std::net::IpAddr;
use std::sync::Arc;

use sluice_compute::Planner;
use sluice_dataplane::{ApplyReport, DataplaneError};
use sluice_model::{ObjectKey, Snapshot};
use sluice_plan::PlanDelta;

use crate::admin::LiveState;
use crate::cluster::{ClusterLink, node_object_addresses};

#[derive(Clone)]
pub struct Observers {
    pub live: Arc<LiveState>,
    pub cluster: Option<Arc<ClusterLink>>,
}

impl Default for Observers {
    /// No admin state of interest and no cluster (tests, `--source dir:` without an admin
    /// socket still keep a live state).
    fn default() -> Self {
        Self {
            live: Arc::new(LiveState::new("", "", None, None)),
            cluster: None,
        }
    }
}

impl Observers {
    /// After planning: the plan (when it changed) and the planner's warnings.
    pub fn planned(&self, planner: &Planner, delta: &PlanDelta, first: bool, addresses: &[IpAddr]) {
        if first {
            self.live.set_plan(planner.plan(), None, addresses);
        } else if !delta.is_empty() {
            self.live.set_plan(planner.plan(), Some(delta), addresses);
        }
        if let Some(cluster) = &self.cluster {
            cluster.planned(planner.plan(), &planner.warnings());
        }
    }

    /// After the Ingress routes were rebuilt: statuses and route warnings. Status addresses:
    /// `--ingress-status-address`, else the Node object's InternalIP/ExternalIP, else this
    /// node's interface addresses.
    pub fn ingress_updated(
        &self,
        snapshot: &Snapshot,
        proxy: &sluice_ingress::IngressProxy,
        warnings: &[sluice_ingress::Warning],
        node: Option<&k8s_openapi::api::core::v1::Node>,
        interface_addresses: &[IpAddr],
    ) {
        if let Some(cluster) = &self.cluster {
            let addresses =
                node_object_addresses(node).unwrap_or_else(|| interface_addresses.to_vec());
            let served: Vec<ObjectKey> = proxy
                .served_ingresses()
                .iter()
                .map(|n| ObjectKey::new(&*n.namespace, &*n.name))
                .collect();
            cluster.ingress_updated(snapshot, &served, warnings, addresses);
        }
    }

    /// After a dataplane call.
    pub fn programmed(&self, result: &Result<ApplyReport, DataplaneError>) {
        self.live.programmed(result);
        if let Some(cluster) = &self.cluster {
            cluster.programmed(result);
        }
    }
}
