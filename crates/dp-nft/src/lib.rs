//! The nftables dataplane, modelled on kube-proxy's nftables mode.
//!
//! * [`render`] turns a [`DesiredState`](sluice_model::DesiredState) into the chains, verdict
//!   map elements and affinity sets of one address family (pure, golden-tested).
//! * [`transaction`] turns two renderings (what is programmed, what should be) into one
//!   `nft -f` script containing only the difference, or a full resync script (pure).
//! * [`exec`] runs scripts through the `nft` binary behind a trait, so tests can capture them.
//! * [`NftDataplane`] ties these together as a [`Dataplane`](sluice_dataplane::Dataplane).

pub mod exec;
pub mod render;
pub mod transaction;

mod conntrack;
mod dataplane;

pub use dataplane::NftDataplane;
pub use exec::{NftCommand, NftRunner};
pub use render::{Family, Rendered, render};
