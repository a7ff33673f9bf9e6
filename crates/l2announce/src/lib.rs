//! L2 announcement of LoadBalancer addresses: one node per address answers ARP (IPv4) and
//! neighbour solicitations (IPv6) for it, so clients on the segment send its traffic there.
//!
//! * [`choose_announcers`]: which node announces each address (pure; rendezvous hashing
//!   over eligible nodes, the same answer on every agent).
//! * [`serve`]: the responder for one interface, driven by a `watch` channel holding the
//!   addresses this node announces; it answers requests and sends gratuitous ARP /
//!   unsolicited neighbour advertisements on takeover.
//! * [`Link`]: the interface seam, with [`PacketLink`] (AF_PACKET raw socket) and
//!   [`FakeLink`] (in memory, fails on demand).
//! * [`packet`]: frame parsing and building (pure).

mod choice;
mod link;
pub mod packet;
mod responder;
mod serve;
mod sys;

pub use choice::{
    EXCLUDE_LABEL, Eligibility, NodeCandidate, announced_by, choose_announcers, score,
};
pub use link::{FakeHandle, FakeLink, Link};
pub use packet::Mac;
pub use responder::{Answer, Changes, Responder};
pub use serve::{ResponderConfig, ResponderCounts, ResponderStats, serve, serve_counted};
pub use sys::{LinkError, PacketLink};
