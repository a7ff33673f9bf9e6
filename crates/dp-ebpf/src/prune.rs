//! Which datapath entries belong to stale flows (shared by the kernel store and the fake).

use std::collections::HashSet;

use sluice_plan::StaleFlow;

use crate::abi::{self, AffVal, CtKey, CtVal};
use crate::render::ip_words;

/// Backends compute declared stale: (protocol number, address words, port in network order).
pub struct StaleBackends(HashSet<(u8, [u32; 4], u16)>);

impl StaleBackends {
    pub fn new(flows: &[StaleFlow]) -> Self {
        StaleBackends(
            flows
                .iter()
                .filter_map(|flow| match flow {
                    StaleFlow::Backend { protocol, ip, port } => {
                        Some((protocol.number(), ip_words(*ip).0, port.to_be()))
                    }
                    // Frontends without a backend were never translated: nothing to remove.
                    StaleFlow::Frontend { .. } => None,
                })
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Both directions of a flow translated to a stale backend.
    pub fn conntrack_hit(&self, key: &CtKey, val: &CtVal) -> bool {
        if key.dir == abi::CT_DIR_ORIG {
            self.0.contains(&(key.proto, val.nat_addr, val.nat_port))
        } else {
            self.0.contains(&(key.proto, key.saddr, key.sport))
        }
    }

    /// An affinity entry pointing at a stale backend (affinity has no protocol: any match).
    pub fn affinity_hit(&self, val: &AffVal) -> bool {
        self.0
            .iter()
            .any(|(_, addr, port)| val.backend.addr == *addr && val.backend.port == *port)
    }
}
