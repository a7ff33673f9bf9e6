use std::sync::{Arc, Mutex};

use sluice_model::DesiredState;

use crate::{ApplyStats, Dataplane, DataplaneError};

/// One recorded call on a [`FakeDataplane`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    Restore,
    Apply {
        state: DesiredState,
        full_resync: bool,
    },
    Cleanup,
}

/// A dataplane that programs nothing and records every call, for agent and sync-loop tests.
/// Clones share the same record.
#[derive(Debug, Clone, Default)]
pub struct FakeDataplane {
    calls: Arc<Mutex<Vec<FakeCall>>>,
}

impl FakeDataplane {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every call so far, oldest first.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.calls.lock().expect("fake dataplane lock").clone()
    }

    /// The state passed to the most recent `apply`.
    pub fn last_applied(&self) -> Option<DesiredState> {
        self.calls().into_iter().rev().find_map(|c| match c {
            FakeCall::Apply { state, .. } => Some(state),
            _ => None,
        })
    }

    fn record(&self, call: FakeCall) {
        self.calls.lock().expect("fake dataplane lock").push(call);
    }
}

impl Dataplane for FakeDataplane {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn restore(&mut self) -> Result<(), DataplaneError> {
        self.record(FakeCall::Restore);
        Ok(())
    }

    fn apply(
        &mut self,
        desired: &DesiredState,
        full_resync: bool,
    ) -> Result<ApplyStats, DataplaneError> {
        let services_changed = crate::count_changed_services(self.last_applied().as_ref(), desired);
        self.record(FakeCall::Apply {
            state: desired.clone(),
            full_resync,
        });
        Ok(ApplyStats {
            services_changed,
            operations: services_changed,
            full_sync: full_resync,
        })
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        self.record(FakeCall::Cleanup);
        Ok(())
    }
}
