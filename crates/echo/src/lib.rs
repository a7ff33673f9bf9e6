//! Echo pod for tests and demos.
//!
//! `sluice-echo serve` answers on TCP, UDP, SCTP and HTTP with its pod name and the client
//! address it saw, so a test can assert which backend served a connection and whether the
//! source IP was preserved. `sluice-echo probe` is the matching client: one line per attempt,
//! either the greeting or `error=...`. [`wire`] defines that line format for both sides and for
//! the test harness that parses it.

#![forbid(unsafe_code)]

pub mod probe;
pub mod serve;
mod sock;
pub mod wire;
mod ws;

pub use ws::base64;

use std::net::SocketAddr;

/// Errors of the echo server and probe.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    #[error("cannot listen on {proto} {addr}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{proto} server on {addr} failed")]
    Serve {
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("nothing to serve: give at least one of --tcp, --udp, --http, --sctp")]
    NothingToServe,
    #[error("reading standard input failed")]
    Stdin {
        #[source]
        source: std::io::Error,
    },
}
