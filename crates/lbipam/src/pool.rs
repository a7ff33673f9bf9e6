//! Pool validation: every block parsed into an address range, the selector checked, and
//! overlaps found. A pool that fails is not used at all (its condition `Valid` says why).

use std::net::IpAddr;

use crate::addr::{Addr, IpFamily, IpRange};
use crate::crd::{IpBlock, LoadBalancerIPPool};
use crate::selector::{Selector, SelectorError};

/// Why a pool is not valid (rendered, with its cause, into the `Valid` condition's message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("spec.blocks is empty")]
    NoBlocks,
    #[error("blocks[{index}]: set either cidr, or start and stop")]
    BlockShape { index: usize },
    #[error("blocks[{index}]: invalid cidr {value:?}")]
    InvalidCidr {
        index: usize,
        value: String,
        #[source]
        source: ipnet::AddrParseError,
    },
    #[error("blocks[{index}]: cidr {value} has host bits set (the network is {network})")]
    HostBitsSet {
        index: usize,
        value: String,
        network: ipnet::IpNet,
    },
    #[error("blocks[{index}]: invalid {field} {value:?}")]
    InvalidAddress {
        index: usize,
        field: &'static str,
        value: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("blocks[{index}]: start {start} and stop {stop} are of different IP families")]
    MixedFamilies {
        index: usize,
        start: IpAddr,
        stop: IpAddr,
    },
    #[error("blocks[{index}]: start {start} is after stop {stop}")]
    StartAfterStop {
        index: usize,
        start: IpAddr,
        stop: IpAddr,
    },
    #[error("blocks[{index}] ({range}) overlaps blocks[{other_index}] of the same pool")]
    SelfOverlap {
        index: usize,
        range: String,
        other_index: usize,
    },
    #[error(
        "blocks[{index}] ({range}) overlaps pool {other_pool} ({other_range}), which comes first in name order"
    )]
    Overlap {
        index: usize,
        range: String,
        other_pool: String,
        other_range: String,
    },
    #[error("invalid serviceSelector")]
    Selector {
        #[source]
        source: SelectorError,
    },
}

/// A pool after validation. `error` set means the pool is ignored for allocation.
#[derive(Debug, Clone)]
pub(crate) struct Pool<'a> {
    pub object: &'a LoadBalancerIPPool,
    /// Ranges in block order (block index = position).
    pub ranges: Vec<IpRange>,
    pub selector: Selector,
    pub error: Option<PoolError>,
}

impl<'a> Pool<'a> {
    pub fn name(&self) -> &'a str {
        self.object.name()
    }

    pub fn is_valid(&self) -> bool {
        self.error.is_none()
    }

    pub fn l2_announce(&self) -> bool {
        self.object.spec.l2_announce
    }

    pub fn disabled(&self) -> bool {
        self.object.spec.disabled
    }

    pub fn contains(&self, addr: Addr) -> bool {
        self.ranges.iter().any(|r| r.contains(addr))
    }

    /// The pool's ranges of one family, lowest first.
    pub fn ranges_of(&self, family: IpFamily) -> Vec<IpRange> {
        let mut ranges: Vec<IpRange> = self
            .ranges
            .iter()
            .copied()
            .filter(|r| r.family() == family)
            .collect();
        ranges.sort();
        ranges
    }

    pub fn families(&self) -> Vec<IpFamily> {
        [IpFamily::V4, IpFamily::V6]
            .into_iter()
            .filter(|f| self.ranges.iter().any(|r| r.family() == *f))
            .collect()
    }
}

/// Validates every pool and returns them in name order. Overlaps are charged to the pool that
/// comes later in name order, so the earlier pool keeps working.
pub(crate) fn validate(pools: &[LoadBalancerIPPool]) -> Vec<Pool<'_>> {
    let mut sorted: Vec<&LoadBalancerIPPool> = pools.iter().collect();
    sorted.sort_by(|a, b| a.name().cmp(b.name()));
    let mut validated: Vec<Pool<'_>> = Vec::with_capacity(sorted.len());
    for object in sorted {
        let mut pool = validate_one(object);
        if pool.error.is_none() {
            pool.error = overlap_with_earlier(&pool, &validated);
        }
        validated.push(pool);
    }
    validated
}

fn validate_one(object: &LoadBalancerIPPool) -> Pool<'_> {
    let selector = Selector::parse(object.spec.service_selector.as_ref());
    let ranges: Result<Vec<IpRange>, PoolError> = object
        .spec
        .blocks
        .iter()
        .enumerate()
        .map(|(index, block)| parse_block(index, block))
        .collect();
    let (ranges, error) = match (ranges, &selector) {
        (Err(e), _) => (Vec::new(), Some(e)),
        (Ok(r), _) if r.is_empty() => (r, Some(PoolError::NoBlocks)),
        (Ok(r), Err(e)) => (r, Some(PoolError::Selector { source: e.clone() })),
        (Ok(r), Ok(_)) => {
            let overlap = self_overlap(&r);
            (r, overlap)
        }
    };
    Pool {
        object,
        ranges,
        selector: selector.unwrap_or_default(),
        error,
    }
}

fn parse_block(index: usize, block: &IpBlock) -> Result<IpRange, PoolError> {
    match (&block.cidr, &block.start, &block.stop) {
        (Some(cidr), None, None) => parse_cidr(index, cidr),
        (None, Some(start), Some(stop)) => {
            let start = parse_ip(index, "start", start)?;
            let stop = parse_ip(index, "stop", stop)?;
            if IpFamily::of(start) != IpFamily::of(stop) {
                return Err(PoolError::MixedFamilies { index, start, stop });
            }
            if Addr::from(start) > Addr::from(stop) {
                return Err(PoolError::StartAfterStop { index, start, stop });
            }
            Ok(IpRange {
                first: start.into(),
                last: stop.into(),
            })
        }
        _ => Err(PoolError::BlockShape { index }),
    }
}

fn parse_cidr(index: usize, value: &str) -> Result<IpRange, PoolError> {
    let net: ipnet::IpNet = value
        .trim()
        .parse()
        .map_err(|source| PoolError::InvalidCidr {
            index,
            value: value.to_string(),
            source,
        })?;
    if net.trunc() != net {
        return Err(PoolError::HostBitsSet {
            index,
            value: value.to_string(),
            network: net.trunc(),
        });
    }
    Ok(IpRange::of_net(net))
}

fn parse_ip(index: usize, field: &'static str, value: &str) -> Result<IpAddr, PoolError> {
    value
        .trim()
        .parse()
        .map_err(|source| PoolError::InvalidAddress {
            index,
            field,
            value: value.to_string(),
            source,
        })
}

fn self_overlap(ranges: &[IpRange]) -> Option<PoolError> {
    for (index, range) in ranges.iter().enumerate() {
        if let Some(other_index) = ranges[..index].iter().position(|o| o.overlaps(range)) {
            return Some(PoolError::SelfOverlap {
                index,
                range: range.to_string(),
                other_index,
            });
        }
    }
    None
}

fn overlap_with_earlier(pool: &Pool<'_>, earlier: &[Pool<'_>]) -> Option<PoolError> {
    for (index, range) in pool.ranges.iter().enumerate() {
        for other in earlier.iter().filter(|p| p.is_valid()) {
            if let Some(other_range) = other.ranges.iter().find(|o| o.overlaps(range)) {
                return Some(PoolError::Overlap {
                    index,
                    range: range.to_string(),
                    other_pool: other.name().to_string(),
                    other_range: other_range.to_string(),
                });
            }
        }
    }
    None
}
