//! Types shared by every sluice crate.
//!
//! * [`Snapshot`]: the Kubernetes objects a source (API server or manifest directory) has seen,
//!   as plain `k8s-openapi` types.
//! * [`NodeInfo`]: what the agent knows about the node it runs on.
//! * [`DesiredState`]: what the L4 dataplanes must program, computed purely from the above.

mod desired;
mod key;
mod node;
mod snapshot;

pub use desired::{
    DesiredState, Endpoint, Protocol, ServicePortName, ServicePortState, TrafficPolicy,
};
pub use key::ObjectKey;
pub use node::NodeInfo;
pub use snapshot::{Snapshot, SnapshotKind};
