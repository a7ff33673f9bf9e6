//! The `dir:PATH` source: a directory of multi-document YAML manifests (Service,
//! EndpointSlice, Node, Ingress, IngressClass, Secret) stands in for the API server. Used by
//! the demo, the tests and the benchmarks, and handy for clusters-without-a-cluster.
//!
//! # What is read
//!
//! `*.yaml`, `*.yml` and `*.json` files directly in the directory, in file-name order; not
//! dot-files and not subdirectories (like `kubectl apply -f DIR` without `-R`). Symlinks are
//! followed, so a ConfigMap volume works (`name.yaml -> ..data/name.yaml`); re-pointing
//! `..data` is noticed even when size and mtime stay the same. Files are UTF-8 (a byte-order
//! mark is fine) or UTF-16 with a byte-order mark. Documents are split on `---` lines, each
//! checked and parsed on its own; `kind: List` and typed lists (`ServiceList`, ...) are
//! unpacked; YAML merge keys (`<<:`) and Secret `stringData` are applied as kubectl and the API
//! server do. Names and namespaces must pass the API server's rules (DNS-1035 label for
//! Services, DNS-1123 subdomain for the other kinds, DNS-1123 label for namespaces).
//!
//! # Limits ([`Limits`], [`DirSource`] builder methods)
//!
//! * `with_max_file_size` (default 8 MiB): larger files are skipped unread.
//! * `with_max_depth` (default 64 levels): checked by a linear pre-scan before the YAML
//!   parser sees a document (libyaml is quadratic in flow nesting: 60,000 `[` took seconds).
//! * `with_max_nodes` (default 500,000 per document, about 100 MB to parse): checked by the same
//!   pre-scan, and again while values are built, so aliases cannot multiply a small document.
//!
//! Polling, reading and parsing run on one thread of tokio's blocking pool, never on the async
//! runtime; the first read of a large directory parses its files on up to 4 threads. A changed
//! file costs a re-read and re-parse of that file alone; each poll also stats every file
//! (about 1.5 µs per file).
//!
//! # How a document is decoded
//!
//! The common document (one object of ours, `apiVersion` and `kind` before its other fields)
//! is deserialized straight into its typed struct in one pass over the parser's events. That
//! pass accepts only what the general path would accept with the same result (see
//! `direct.rs`); everything else (Lists, merge keys, tags, mistakes) takes the general path:
//! a bounded `serde_yaml::Value`, merge keys applied, then the typed decoding, which words the
//! warnings.
//!
//! # What is reported
//!
//! Every skipped file, document or object gives a [`LoadWarning`] naming the file, the
//! document (and List item), the object's kind and namespace/name when known, and a typed
//! [`Problem`]; the rest of the directory still applies. Besides unreadable, oversized, too
//! deep and invalid input: a misspelled or wrong-case kind of ours (`Servcie`, `service`,
//! `svc`), a kind the API group it names does not have (`v1` `LoadBalancer`), a kind of ours
//! with an `apiVersion` sluice does not read (with how to convert removed APIs such as
//! `extensions/v1beta1` Ingress), a missing or invalid name, and duplicates (the last
//! definition in file-name and document order wins; every earlier copy is reported with the
//! winner's place). Kinds that are simply not ours (Deployment, ConfigMap, custom resources)
//! are skipped silently. Semantic problems (a port out of range, an address that is not an
//! address) pass through: compute reports those.

#![forbid(unsafe_code)]

mod direct;
mod documents;
mod files;
mod kinds;
mod load;
mod merge;
mod names;
mod nesting;
mod parse;
mod value;
mod wake;
mod warning;
mod watch;

pub use parse::{
    DEFAULT_MAX_DEPTH, DEFAULT_MAX_FILE_SIZE, DEFAULT_MAX_NODES, Limits, ParsedFile,
    parse_manifests, parse_manifests_with,
};
pub use warning::{LoadWarning, ObjectRef, Problem};
pub use watch::{DirSource, DirSourceError, Refreshed, load_dir};
