//! Frontends claimed by more than one service port (two Services with the same externalIP or
//! LoadBalancer IP and port, a NodePort used twice, an externalIP equal to another Service's
//! cluster IP). One documented rule decides, the same for every dataplane:
//!
//! **the oldest Service wins** (`metadata.creationTimestamp`; Services without one come after
//! all that have one), then the smaller `namespace/name`, then the smaller port name. The
//! losers are reported by name; nothing else of them is affected.

use std::collections::BTreeMap;

use sluice_plan::{FrontendKey, FrontendKind, ServicePortName};

use crate::service::Rank;

/// The rule in one line, for warnings and docs.
pub(crate) const RULE: &str = "the older Service, then the smaller namespace/name";

/// One service port's claim on a frontend, ordered so the winner sorts first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Claim {
    pub rank: Rank,
    pub port: ServicePortName,
    pub kind: FrontendKind,
}

/// Every claim on every frontend.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    /// Claims of each frontend, sorted, without duplicates, exactly as long as needed: a
    /// `BTreeSet`'s first node holds room for 11 claims (2 KiB), a grown `Vec` for 4, where
    /// there is nearly always one (20 MiB at 10,000 Services).
    by_frontend: BTreeMap<FrontendKey, Vec<Claim>>,
}

impl Claims {
    pub fn add(&mut self, key: FrontendKey, claim: Claim) {
        let claims = self.by_frontend.entry(key).or_default();
        if let Err(at) = claims.binary_search(&claim) {
            claims.reserve_exact(1);
            claims.insert(at, claim);
        }
    }

    pub fn remove(&mut self, key: &FrontendKey, claim: &Claim) {
        if let Some(claims) = self.by_frontend.get_mut(key) {
            if let Ok(at) = claims.binary_search(claim) {
                claims.remove(at);
            }
            if claims.is_empty() {
                self.by_frontend.remove(key);
            }
        }
    }

    /// The winning claim on `key`.
    pub fn winner(&self, key: &FrontendKey) -> Option<&Claim> {
        self.by_frontend.get(key).and_then(|set| set.first())
    }

    /// Every service port claiming `key`.
    pub fn claimants(&self, key: &FrontendKey) -> impl Iterator<Item = &ServicePortName> {
        self.by_frontend
            .get(key)
            .into_iter()
            .flatten()
            .map(|claim| &claim.port)
    }
}
