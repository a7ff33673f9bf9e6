//! LoadBalancer IP address management for sluice.
//!
//! * [`LoadBalancerIPPool`]: the CRD types (`sluice.dev/v1alpha1`, cluster-scoped).
//! * [`allocate`]: a pure, deterministic function from the pools, the Services (as
//!   [`LbService`]) and the [`AllocatorConfig`] to an [`Allocation`]: the desired
//!   `status.loadBalancer` IPs of each Service, the pools' conditions and the Events to emit.
//!
//! The allocator keeps no state between runs. Everything it needs to stay stable (which
//! Service holds which address) is read back from the Services' statuses, so a restarted
//! agent, or a second agent, computes the same assignment. See `docs/loadbalancer.md` for
//! the rules as a user sees them.

#![forbid(unsafe_code)]

mod addr;
mod allocate;
mod crd;
mod ledger;
mod outcome;
mod pool;
mod report;
mod selector;
mod service;

pub use addr::IpFamily;
pub use allocate::{AllocatorConfig, DEFAULT_LOAD_BALANCER_CLASS, allocate};
pub use crd::{
    API_VERSION, GROUP, IpBlock, KIND, LoadBalancerIPPool, LoadBalancerIPPoolSpec,
    LoadBalancerIPPoolStatus, PLURAL, VERSION,
};
pub use outcome::{
    Allocation, AssignedAddress, ConditionStatus, DesiredCondition, Event, EventFilter, EventType,
    ObjectKind, ObjectRef, PoolReport, ServiceAddresses, condition, load_balancer_status, reason,
};
pub use pool::PoolError;
pub use selector::{SERVICE_NAME_LABEL, SERVICE_NAMESPACE_LABEL, SelectorError};
pub use service::{
    IpFamilyPolicy, LbService, REQUESTED_IPS_ANNOTATIONS, RequestError, SHARING_KEY_ANNOTATIONS,
};
