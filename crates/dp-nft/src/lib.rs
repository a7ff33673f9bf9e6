//! The nftables dataplane, modelled on kube-proxy's nftables mode. It translates the decided
//! plan (`sluice-plan`) and decides nothing itself.
//!
//! * [`render`] turns one service port's plan into the chains, verdict map elements and
//!   affinity sets of one address family (pure, golden-tested).
//! * [`transaction`] turns renderings into one `nft -f` script: only the difference, or a full
//!   resync (pure).
//! * [`exec`] runs scripts, reads the table back (typed, through the `nftables` crate's JSON
//!   schema) and removes stale conntrack entries, behind [`NftExecutor`] with a [`FakeNft`].
//! * [`NftDataplane`] ties these together as a [`Dataplane`](sluice_dataplane::Dataplane):
//!   per-service bookkeeping, so a delta costs what it changes; a transaction the kernel
//!   refuses is split until the service ports at fault are found.

#![forbid(unsafe_code)]

pub mod conntrack;
pub mod exec;
pub mod readback;
pub mod render;
pub mod transaction;

mod dataplane;

pub use dataplane::NftDataplane;
pub use exec::{FakeNft, NftCommand, NftError, NftExecutor, Readback};
