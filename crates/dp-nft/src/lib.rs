//! The nftables dataplane, modelled on kube-proxy's nftables mode. It translates the decided
//! plan (`sluice-plan`) and decides nothing itself.
//!
//! * [`render`] turns one service port's plan into the chains, map elements and affinity sets
//!   of one address family, as typed rules ([`ir`]; pure, golden-tested); [`slots`] lays a
//!   backend set's endpoints out in the slot maps its routes draw from through shared pick
//!   chains, so an endpoint change is map elements only.
//! * [`transaction`] turns renderings into one [`Transaction`]: only the difference, or a full
//!   resync (pure). A transaction prints as an `nft -f` script and lowers to netlink
//!   ([`lower`]).
//! * [`exec`] is the kernel seam, [`NftExecutor`]: [`NetlinkNft`] (the default) sends each
//!   transaction as one nf_tables netlink batch and notices changes made by others from the
//!   ruleset generation; [`NftCommand`] pipes the script into `nft -f` and reads the table back
//!   (typed, through the `nftables` crate's JSON schema); [`FakeNft`] records and fails on
//!   demand.
//! * [`NftDataplane`] ties these together as a [`Dataplane`](sluice_dataplane::Dataplane):
//!   per-service bookkeeping, so a delta costs what it changes; a transaction the kernel
//!   refuses is split until the service ports at fault are found.

#![forbid(unsafe_code)]

pub mod conntrack;
pub mod exec;
pub mod ir;
pub mod lower;
pub mod readback;
pub mod render;
pub mod slots;
pub mod transaction;

mod dataplane;
mod netlink;

pub use dataplane::NftDataplane;
pub use exec::{Drift, FakeNft, NftCommand, NftError, NftExecutor, Readback};
pub use netlink::NetlinkNft;
pub use transaction::Transaction;
