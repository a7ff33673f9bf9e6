//! The `dir:PATH` source: a directory of multi-document YAML manifests (Service,
//! EndpointSlice, Node, Ingress, IngressClass, Secret) stands in for the API server. Used by
//! the demo, the tests and the benchmarks, and handy for clusters-without-a-cluster.
//!
//! See the crate README for what is read, what is skipped and what is reported.

#![forbid(unsafe_code)]

mod documents;
mod files;
mod kinds;
mod names;
mod nesting;
mod parse;
mod value;
mod warning;
mod watch;

pub use parse::{
    DEFAULT_MAX_DEPTH, DEFAULT_MAX_FILE_SIZE, DEFAULT_MAX_NODES, Limits, ParsedFile,
    parse_manifests, parse_manifests_with,
};
pub use warning::{LoadWarning, ObjectRef, Problem};
pub use watch::{DirSource, DirSourceError};
