//! nf_tables over netlink, written directly (no libnftnl, no `nft` process): the messages of
//! one atomic batch, the expressions sluice's rules are made of, the ruleset generation, and
//! dumps. Knows nothing of sluice's ruleset layout — `sluice-dp-nft` lowers its typed rules
//! onto [`Expr`]s and its transactions onto [`Batch`]es.
//!
//! Numbers follow the kernel's UAPI header `linux/netfilter/nf_tables.h`; the encoding of each
//! expression matches what nft 1.0.6 sends for the same statement (`nft --debug=mnl`), so
//! `nft list ruleset` prints rules written here exactly like rules written by `nft -f`.

// One `unsafe` block: SO_SNDBUFFORCE (a whole batch must fit one socket buffer), which no
// safe wrapper in the dependency tree offers.
#![deny(unsafe_code)]

pub mod consts;
pub mod expr;
pub mod msg;
pub mod socket;

pub use expr::{CmpOp, Data, Expr, MetaKey, PayloadBase, Verdict};
pub use msg::{Attrs, Batch};
pub use socket::{Commit, Error, NfSocket, Refusal, attributes};
