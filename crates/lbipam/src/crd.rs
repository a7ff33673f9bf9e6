//! The `LoadBalancerIPPool` custom resource (`sluice.dev/v1alpha1`, cluster-scoped), as plain
//! serde types. The schema the API server enforces is `manifests/crds/loadbalancerippool.yaml`;
//! a test keeps the two in step.
//!
//! [`LoadBalancerIPPool`] implements `k8s_openapi::Resource` and `k8s_openapi::Metadata`, so
//! kube-rs' blanket `kube::Resource` impl applies and `Api::<LoadBalancerIPPool>::all(client)`
//! works without kube's derive macro.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, ObjectMeta};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize};

/// API group of the CRD.
pub const GROUP: &str = "sluice.dev";
/// API version of the CRD.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of pool objects.
pub const API_VERSION: &str = "sluice.dev/v1alpha1";
/// `kind` of pool objects.
pub const KIND: &str = "LoadBalancerIPPool";
/// Plural resource name (URL path segment).
pub const PLURAL: &str = "loadbalancerippools";

/// A pool of addresses that sluice hands out to `type: LoadBalancer` Services.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct LoadBalancerIPPool {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: LoadBalancerIPPoolSpec,
    #[serde(default)]
    pub status: Option<LoadBalancerIPPoolStatus>,
}

/// `spec` of a [`LoadBalancerIPPool`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerIPPoolSpec {
    /// The addresses of the pool: CIDRs and start/stop ranges, IPv4 and IPv6 may be mixed.
    #[serde(default)]
    pub blocks: Vec<IpBlock>,
    /// Which Services may get addresses from this pool (by Service labels); absent = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
    /// Answer ARP/NDP for this pool's addresses from one node (default true).
    #[serde(default = "default_true")]
    pub l2_announce: bool,
    /// No new addresses from this pool; addresses already assigned stay.
    #[serde(default)]
    pub disabled: bool,
}

impl Default for LoadBalancerIPPoolSpec {
    fn default() -> Self {
        Self {
            blocks: Vec::new(),
            service_selector: None,
            l2_announce: true,
            disabled: false,
        }
    }
}

fn default_true() -> bool {
    true
}

/// One block of a pool: either `cidr`, or `start` and `stop` (inclusive).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpBlock {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
}

impl IpBlock {
    /// A `cidr` block.
    pub fn cidr(cidr: impl Into<String>) -> Self {
        Self {
            cidr: Some(cidr.into()),
            ..Self::default()
        }
    }

    /// A `start`/`stop` block.
    pub fn range(start: impl Into<String>, stop: impl Into<String>) -> Self {
        Self {
            cidr: None,
            start: Some(start.into()),
            stop: Some(stop.into()),
        }
    }
}

/// `status` of a [`LoadBalancerIPPool`]: conditions `Valid` and `Exhausted`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadBalancerIPPoolStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

// Written by hand so `apiVersion` and `kind` are always present (the API server needs them;
// deserialising ignores them).
impl Serialize for LoadBalancerIPPool {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = if self.status.is_some() { 5 } else { 4 };
        let mut state = serializer.serialize_struct(KIND, fields)?;
        state.serialize_field("apiVersion", API_VERSION)?;
        state.serialize_field("kind", KIND)?;
        state.serialize_field("metadata", &self.metadata)?;
        state.serialize_field("spec", &self.spec)?;
        if let Some(status) = &self.status {
            state.serialize_field("status", status)?;
        }
        state.end()
    }
}

impl k8s_openapi::Resource for LoadBalancerIPPool {
    const API_VERSION: &'static str = API_VERSION;
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = KIND;
    const VERSION: &'static str = VERSION;
    const URL_PATH_SEGMENT: &'static str = PLURAL;
    type Scope = k8s_openapi::ClusterResourceScope;
}

impl k8s_openapi::Metadata for LoadBalancerIPPool {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl LoadBalancerIPPool {
    /// A pool named `name` with the given spec (tests, examples).
    pub fn new(name: impl Into<String>, spec: LoadBalancerIPPoolSpec) -> Self {
        Self {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec,
            status: None,
        }
    }

    /// `metadata.name`, empty when absent.
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }
}
