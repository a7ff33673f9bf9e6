//! The `dir:PATH` source: a directory of multi-document YAML manifests (Service,
//! EndpointSlice, Node, Ingress, IngressClass, Secret) stands in for the API server. Used by
//! the demo, the tests and the benchmarks, and handy for clusters-without-a-cluster.
//!
//! Files are re-read when their size, mtime or inode changes (polling: no inotify dependency,
//! and it works for files replaced by rename). Each file is parsed on its own and cached, so
//! a change costs a re-parse of that file only. A malformed document is reported with file
//! name, document index and reason; every other document still applies.

mod parse;
mod watch;

pub use parse::{LoadWarning, ParsedFile, parse_manifests};
pub use watch::{DirSource, DirSourceError};
