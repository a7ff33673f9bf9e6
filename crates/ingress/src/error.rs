use std::net::SocketAddr;

/// Errors that stop the proxy from serving (bad input never does: it becomes a warning).
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("ingress: cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("ingress: cannot read the local address of a listener")]
    LocalAddr {
        #[source]
        source: std::io::Error,
    },
    #[error("ingress: TLS configuration failed")]
    Tls {
        #[source]
        source: rustls::Error,
    },
    #[error("ingress: cannot start proxy worker {index}")]
    Worker {
        index: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("ingress: proxy worker {index} stopped while starting")]
    WorkerGone { index: usize },
}
