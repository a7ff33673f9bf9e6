//! Types shared by the control-plane crates.
//!
//! * [`Snapshot`]: the Kubernetes objects a source (API server or manifest directory) has seen,
//!   as plain `k8s-openapi` types but EndpointSlices ([`EndpointSlice`]: only what is read,
//!   same field names), and [`ChangeSet`]: which of them changed.
//! * [`NodeInfo`]: what the agent knows about the node it runs on.
//! * [`SourceEvent`] and [`Store`]: how sources report changes object by object, and the
//!   store their consumer keeps up to date from them (see `store`); [`Compact`]: what is
//!   dropped from objects before they are stored.
//! * [`ingress::referenced_secrets`]: which Secrets an Ingress needs (for the sources, which
//!   keep only those, and the route planner, which reads them).
//!
//! What the dataplanes program is the plan (`sluice-plan`), computed purely from these by
//! `sluice-compute`; the dataplanes never see Kubernetes types.

#![forbid(unsafe_code)]

mod changes;
pub mod compact;
pub mod ingress;
mod json;
mod key;
mod name;
mod node;
mod slice;
mod snapshot;
mod store;
pub mod time;

pub use changes::ChangeSet;
pub use compact::Compact;
pub use json::ObjectJsonError;
pub use key::ObjectKey;
pub use name::Name;
pub use node::NodeInfo;
pub use slice::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode, ForZone,
};
pub use sluice_plan::{Protocol, ServiceName, ServicePortName};
pub use snapshot::{SERVICE_NAME_LABEL, Snapshot, SnapshotKind, slice_service};
pub use store::{Object, SourceBatch, SourceEvent, Store};
