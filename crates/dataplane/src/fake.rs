use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use sluice_plan::{Plan, PlanDelta, ServicePortName};

use crate::{ApplyReport, Dataplane, DataplaneError, Restored, ServiceFailure};

/// One recorded call on a [`FakeDataplane`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    Restore,
    Resync { services: usize },
    Apply { delta: PlanDelta },
    Cleanup,
}

#[derive(Debug, Default)]
struct Inner {
    calls: Vec<FakeCall>,
    /// What a real backend would hold now.
    programmed: Plan,
    /// Fail the next this-many `apply`/`resync` calls as a whole.
    fail_calls: usize,
    /// Service ports that fail to program (reported as failures; their previous programming
    /// stays), until cleared.
    failing: BTreeSet<ServicePortName>,
    restored: Restored,
}

/// A dataplane that programs nothing, records every call and keeps the plan a real backend
/// would hold; it can be told to fail. Clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct FakeDataplane {
    inner: Arc<Mutex<Inner>>,
}

impl FakeDataplane {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every call so far, oldest first.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.lock().calls.clone()
    }

    /// The plan the fake holds (as a real backend would after the same calls).
    pub fn programmed(&self) -> Plan {
        self.lock().programmed.clone()
    }

    /// Makes the next `n` `apply`/`resync` calls fail as a whole.
    pub fn fail_next_calls(&self, n: usize) {
        self.lock().fail_calls = n;
    }

    /// Makes `service` fail to program until [`heal`](Self::heal) (a partial failure).
    pub fn fail_service(&self, service: ServicePortName) {
        self.lock().failing.insert(service);
    }

    /// Lets every service program again.
    pub fn heal(&self) {
        self.lock().failing.clear();
    }

    /// What the next `restore` reports.
    pub fn set_restored(&self, restored: Restored) {
        self.lock().restored = restored;
    }
}

fn injected(action: &str) -> DataplaneError {
    DataplaneError::Kernel {
        backend: "fake",
        action: action.to_owned(),
        detail: "injected failure".to_owned(),
    }
}

impl Inner {
    fn take_failure(&mut self, action: &str) -> Result<(), DataplaneError> {
        if self.fail_calls > 0 {
            self.fail_calls -= 1;
            return Err(injected(action));
        }
        Ok(())
    }

    fn failure(&self, name: &ServicePortName) -> Option<ServiceFailure> {
        self.failing.contains(name).then(|| ServiceFailure {
            service: name.clone(),
            reason: "injected failure".to_owned(),
        })
    }
}

impl Dataplane for FakeDataplane {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn restore(&mut self) -> Result<Restored, DataplaneError> {
        let mut inner = self.lock();
        inner.calls.push(FakeCall::Restore);
        Ok(inner.restored.clone())
    }

    fn resync(&mut self, plan: &Plan) -> Result<ApplyReport, DataplaneError> {
        let mut inner = self.lock();
        inner.calls.push(FakeCall::Resync {
            services: plan.services.len(),
        });
        inner.take_failure("resync")?;
        let delta = PlanDelta::between(&inner.programmed, plan);
        let mut report = apply_delta(&mut inner, &delta);
        report.full_sync = true;
        Ok(report)
    }

    fn apply(&mut self, delta: &PlanDelta) -> Result<ApplyReport, DataplaneError> {
        let mut inner = self.lock();
        inner.calls.push(FakeCall::Apply {
            delta: delta.clone(),
        });
        inner.take_failure("apply")?;
        Ok(apply_delta(&mut inner, delta))
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        let mut inner = self.lock();
        inner.calls.push(FakeCall::Cleanup);
        inner.programmed = Plan::default();
        Ok(())
    }
}

fn apply_delta(inner: &mut Inner, delta: &PlanDelta) -> ApplyReport {
    let mut report = ApplyReport::default();
    inner.programmed.node = Arc::clone(&delta.node);
    if let Some(checks) = &delta.health_checks {
        inner.programmed.health_checks = checks.clone();
    }
    for change in &delta.services {
        if let Some(failure) = inner.failure(&change.name) {
            report.failed.push(failure);
            continue;
        }
        report.services_changed += 1;
        report.operations += 1;
        match &change.after {
            Some(plan) => inner
                .programmed
                .services
                .insert(change.name.clone(), Arc::clone(plan)),
            None => inner.programmed.services.remove(&change.name),
        };
    }
    report
}

#[cfg(test)]
mod tests {
    use sluice_plan::{Protocol, ServicePlan};

    use super::*;

    fn plan(names: &[&str]) -> Plan {
        let mut plan = Plan::default();
        for name in names {
            let name = ServicePortName::new("ns", *name, "", Protocol::Tcp);
            let service = ServicePlan {
                name: name.clone(),
                frontends: Vec::new(),
                cluster: Vec::new(),
                local: Vec::new(),
                affinity_timeout: None,
            };
            plan.services.insert(name, Arc::new(service));
        }
        plan
    }

    #[test]
    fn holds_what_a_backend_would_after_resync_and_deltas() {
        let mut fake = FakeDataplane::new();
        let probe = fake.clone();
        fake.restore().unwrap();
        let first = plan(&["a", "b"]);
        let report = fake.resync(&first).unwrap();
        assert_eq!((report.services_changed, report.full_sync), (2, true));
        let second = plan(&["a", "c"]);
        let report = fake.apply(&PlanDelta::between(&first, &second)).unwrap();
        assert_eq!(report.services_changed, 2, "b removed, c added");
        assert_eq!(probe.programmed(), second);
        fake.cleanup().unwrap();
        assert_eq!(probe.calls().len(), 4);
        assert_eq!(probe.programmed(), Plan::default());
    }

    #[test]
    fn injected_failures_leave_the_previous_programming() {
        let mut fake = FakeDataplane::new();
        let first = plan(&["a"]);
        fake.fail_next_calls(1);
        assert!(fake.resync(&first).is_err());
        assert_eq!(fake.programmed(), Plan::default());
        fake.resync(&first).unwrap();
        let b = ServicePortName::new("ns", "b", "", Protocol::Tcp);
        fake.fail_service(b.clone());
        let report = fake
            .apply(&PlanDelta::between(&first, &plan(&["a", "b"])))
            .unwrap();
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.failed[0].service, b);
        assert_eq!(fake.programmed(), first, "b was not programmed");
    }
}
