//! The pools' conditions (`Valid`, `Exhausted`) and the Events about pools.

use std::collections::BTreeMap;
use std::error::Error as _;

use sluice_model::ObjectKey;

use crate::ledger::Ledger;
use crate::outcome::{
    ConditionStatus, DesiredCondition, Event, EventType, ObjectKind, ObjectRef, PoolReport,
    condition, reason,
};
use crate::pool::{Pool, PoolError};

/// Reports for every pool, and the Events about pools (invalid, exhausted with waiters).
pub(crate) fn pool_reports(
    pools: &[Pool<'_>],
    ledger: &Ledger<'_>,
    waiting: &BTreeMap<String, Vec<ObjectKey>>,
) -> (BTreeMap<String, PoolReport>, Vec<Event>) {
    let mut reports = BTreeMap::new();
    let mut events = Vec::new();
    for pool in pools {
        let waiters = waiting.get(pool.name()).map(Vec::as_slice).unwrap_or(&[]);
        let conditions = match &pool.error {
            Some(error) => {
                events.push(pool_event(pool, reason::INVALID_POOL, with_causes(error)));
                invalid_conditions(error)
            }
            None => {
                for service in waiters {
                    let message = format!("Service {service} waits for an address; none is free");
                    events.push(pool_event(pool, reason::POOL_EXHAUSTED, message));
                }
                valid_conditions(pool, ledger, waiters.len())
            }
        };
        reports.insert(
            pool.name().to_string(),
            PoolReport {
                uid: pool.object.metadata.uid.clone().unwrap_or_default(),
                generation: pool.object.metadata.generation,
                conditions,
            },
        );
    }
    (reports, events)
}

fn invalid_conditions(error: &PoolError) -> Vec<DesiredCondition> {
    let reason = match error {
        PoolError::Overlap { .. } => "Overlapping",
        _ => "InvalidSpec",
    };
    vec![
        DesiredCondition {
            type_: condition::VALID,
            status: ConditionStatus::False,
            reason,
            message: with_causes(error),
        },
        DesiredCondition {
            type_: condition::EXHAUSTED,
            status: ConditionStatus::Unknown,
            reason: "InvalidPool",
            message: "no address is assigned from an invalid pool".to_string(),
        },
    ]
}

fn valid_conditions(pool: &Pool<'_>, ledger: &Ledger<'_>, waiters: usize) -> Vec<DesiredCondition> {
    let mut usage = Vec::new();
    let mut exhausted = false;
    for family in pool.families() {
        let ranges = pool.ranges_of(family);
        let total = ranges
            .iter()
            .fold(0u128, |sum, r| sum.saturating_add(r.size()));
        let used: u128 = ranges.iter().map(|r| ledger.count_in(r)).sum();
        exhausted |= used >= total;
        usage.push(format!("{family}: {used} of {total} addresses in use"));
    }
    let mut message = usage.join("; ");
    if waiters > 0 {
        message.push_str(&format!("; {waiters} Service(s) wait for an address"));
    }
    vec![
        DesiredCondition {
            type_: condition::VALID,
            status: ConditionStatus::True,
            reason: "Valid",
            message: if pool.disabled() {
                "the pool is valid (disabled: no new assignments)".to_string()
            } else {
                "the pool is valid".to_string()
            },
        },
        DesiredCondition {
            type_: condition::EXHAUSTED,
            status: if exhausted {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            reason: if exhausted {
                "NoFreeAddresses"
            } else {
                "FreeAddresses"
            },
            message,
        },
    ]
}

fn pool_event(pool: &Pool<'_>, reason: &'static str, message: String) -> Event {
    Event {
        regarding: ObjectRef {
            kind: ObjectKind::LoadBalancerIPPool,
            key: ObjectKey::cluster(pool.name()),
            uid: pool.object.metadata.uid.clone().unwrap_or_default(),
        },
        type_: EventType::Warning,
        reason,
        message,
    }
}

/// The error and its cause chain, `: `-separated.
fn with_causes(error: &PoolError) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
