//! The Ingress proxy's own settings as `sluice agent` flags (ingress-nginx's ConfigMap keys
//! they correspond to are named in docs/ingress.md), validated into an [`IngressConfig`].

use std::net::SocketAddr;

use ipnet::IpNet;
use sluice_ingress::IngressConfig;

use crate::cli::{ConfigError, parse_duration};

#[derive(Debug, Clone, clap::Args)]
pub struct IngressProxyFlags {
    /// Time to connect to an endpoint (502 after); an Ingress's `proxy-connect-timeout` wins.
    #[arg(long, env = "SLUICE_INGRESS_CONNECT_TIMEOUT", default_value = "5s")]
    pub ingress_connect_timeout: String,
    /// Time from the request sent to the response headers, and longest pause between two
    /// reads of the response body (504 / cut after); `proxy-read-timeout` wins.
    #[arg(long, env = "SLUICE_INGRESS_READ_TIMEOUT", default_value = "60s")]
    pub ingress_read_timeout: String,
    /// Longest pause between two reads of a request body (408 after).
    #[arg(
        long,
        env = "SLUICE_INGRESS_CLIENT_BODY_TIMEOUT",
        default_value = "60s"
    )]
    pub ingress_client_body_timeout: String,
    /// Idle time of a client's keep-alive connection, and time allowed for the request head.
    #[arg(long, env = "SLUICE_INGRESS_KEEPALIVE_TIMEOUT", default_value = "60s")]
    pub ingress_keepalive_timeout: String,
    /// Idle time of a pooled connection to an endpoint.
    #[arg(
        long,
        env = "SLUICE_INGRESS_UPSTREAM_KEEPALIVE_TIMEOUT",
        default_value = "60s"
    )]
    pub ingress_upstream_keepalive_timeout: String,
    /// Largest request body (413 beyond; `0`: unlimited), nginx's size syntax (`1m`, `512k`);
    /// an Ingress's `proxy-body-size` wins.
    #[arg(long, env = "SLUICE_INGRESS_MAX_BODY_SIZE", default_value = "1m")]
    pub ingress_max_body_size: String,
    /// Longest request line and header line (414 / 431 beyond).
    #[arg(long, env = "SLUICE_INGRESS_MAX_HEADER_LINE", default_value = "8k")]
    pub ingress_max_header_line: String,
    /// Largest request head (431 beyond; HTTP/2's SETTINGS_MAX_HEADER_LIST_SIZE).
    #[arg(long, env = "SLUICE_INGRESS_MAX_HEADER_SIZE", default_value = "32k")]
    pub ingress_max_header_size: String,
    /// Every connection to the listeners starts with a PROXY protocol (v1 or v2) header
    /// naming the client (behind a load balancer that sends it).
    #[arg(long, env = "SLUICE_INGRESS_PROXY_PROTOCOL")]
    pub ingress_proxy_protocol: bool,
    /// Proxies in front of the listeners (CIDRs or addresses, comma-separated): their
    /// `X-Forwarded-*` headers are kept and name the client; with the PROXY protocol only they
    /// may connect.
    #[arg(long, env = "SLUICE_INGRESS_TRUSTED_PROXIES", value_delimiter = ',')]
    pub ingress_trusted_proxies: Vec<String>,
    /// One JSON line per request on stdout (`--ingress-access-log=false` turns it off).
    #[arg(
        long,
        env = "SLUICE_INGRESS_ACCESS_LOG",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub ingress_access_log: bool,
    /// TLS sessions kept for resumption (`0`: none); ingress-nginx's 10 MiB
    /// `ssl-session-cache-size` holds about as many.
    #[arg(
        long,
        env = "SLUICE_INGRESS_TLS_SESSION_CACHE",
        default_value_t = 40_000
    )]
    pub ingress_tls_session_cache: usize,
    /// Proxy worker threads, each with its own accept loop and upstream pools (nginx's
    /// `worker_processes`); default: the cores the agent may run on.
    #[arg(long, env = "SLUICE_INGRESS_WORKERS")]
    pub ingress_workers: Option<usize>,
}

impl IngressProxyFlags {
    /// The proxy's settings with these listeners.
    pub fn to_config(
        &self,
        http_bind: Option<SocketAddr>,
        https_bind: Option<SocketAddr>,
    ) -> Result<IngressConfig, ConfigError> {
        let duration = |flag: &'static str, value: &str| {
            parse_duration(value)
                .map_err(|e| ConfigError::invalid(flag, value, e))
                .and_then(|d| {
                    if d.is_zero() {
                        Err(ConfigError::invalid(
                            flag,
                            value,
                            "must be greater than zero",
                        ))
                    } else {
                        Ok(d)
                    }
                })
        };
        let size = |flag: &'static str, value: &str| {
            parse_size(value).ok_or_else(|| {
                ConfigError::invalid(flag, value, "not a size such as 8k, 1m or 1024")
            })
        };
        let header_size = |flag: &'static str, value: &str| {
            let n = size(flag, value)?;
            usize::try_from(n)
                .ok()
                .filter(|n| (1024..=1 << 20).contains(n))
                .ok_or_else(|| ConfigError::invalid(flag, value, "must be between 1k and 1m"))
        };
        let max_body = size("ingress-max-body-size", &self.ingress_max_body_size)?;
        Ok(IngressConfig {
            http_bind,
            https_bind,
            connect_timeout: duration("ingress-connect-timeout", &self.ingress_connect_timeout)?,
            response_timeout: duration("ingress-read-timeout", &self.ingress_read_timeout)?,
            client_body_timeout: duration(
                "ingress-client-body-timeout",
                &self.ingress_client_body_timeout,
            )?,
            client_idle_timeout: duration(
                "ingress-keepalive-timeout",
                &self.ingress_keepalive_timeout,
            )?,
            upstream_idle_timeout: duration(
                "ingress-upstream-keepalive-timeout",
                &self.ingress_upstream_keepalive_timeout,
            )?,
            max_request_body_bytes: if max_body == 0 { u64::MAX } else { max_body },
            max_header_line_bytes: header_size(
                "ingress-max-header-line",
                &self.ingress_max_header_line,
            )?,
            max_header_bytes: header_size(
                "ingress-max-header-size",
                &self.ingress_max_header_size,
            )?,
            proxy_protocol: self.ingress_proxy_protocol,
            trusted_proxies: self.trusted_proxies()?,
            access_log: self.ingress_access_log,
            workers: self.workers()?,
            tls_session_cache: self.tls_session_cache()?,
            ..IngressConfig::default()
        })
    }

    fn workers(&self) -> Result<usize, ConfigError> {
        match self.ingress_workers {
            None => Ok(sluice_ingress::available_cores()),
            Some(n @ 1..=1024) => Ok(n),
            Some(n) => Err(ConfigError::invalid(
                "ingress-workers",
                &n.to_string(),
                "must be between 1 and 1024",
            )),
        }
    }

    fn tls_session_cache(&self) -> Result<usize, ConfigError> {
        match self.ingress_tls_session_cache {
            n @ 0..=MAX_TLS_SESSIONS => Ok(n),
            n => Err(ConfigError::invalid(
                "ingress-tls-session-cache",
                &n.to_string(),
                "must be at most 1000000",
            )),
        }
    }

    fn trusted_proxies(&self) -> Result<Vec<IpNet>, ConfigError> {
        self.ingress_trusted_proxies
            .iter()
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<IpNet>()
                    .map(|n| n.trunc())
                    .or_else(|_| v.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        ConfigError::invalid("ingress-trusted-proxies", v, "not a CIDR or address")
                    })
            })
            .collect()
    }
}

/// Sessions are kept in memory (a few hundred bytes each): a million is a few hundred MB.
const MAX_TLS_SESSIONS: usize = 1_000_000;

/// nginx's size syntax: bytes, or `k` / `m` / `g` (either case).
fn parse_size(value: &str) -> Option<u64> {
    let value = value.trim();
    let (digits, scale) = match value.chars().last()? {
        'k' | 'K' => (&value[..value.len() - 1], 1 << 10),
        'm' | 'M' => (&value[..value.len() - 1], 1 << 20),
        'g' | 'G' => (&value[..value.len() - 1], 1 << 30),
        _ => (value, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        flags: IngressProxyFlags,
    }

    fn config(args: &[&str]) -> Result<IngressConfig, ConfigError> {
        let mut argv = vec!["test"];
        argv.extend_from_slice(args);
        Flags::try_parse_from(argv)
            .expect("flags parse")
            .flags
            .to_config(None, None)
    }

    #[test]
    fn defaults_are_the_proxys_own_with_the_access_log_on() {
        let c = config(&[]).unwrap();
        assert_eq!(
            c,
            IngressConfig {
                http_bind: None,
                https_bind: None,
                access_log: true,
                ..IngressConfig::default()
            }
        );
        assert!(!config(&["--ingress-access-log=false"]).unwrap().access_log);
        assert!(config(&["--ingress-access-log"]).unwrap().access_log);
    }

    #[test]
    fn every_setting_is_read_and_bad_values_are_named() {
        let c = config(&[
            "--ingress-connect-timeout=2s",
            "--ingress-read-timeout=5m",
            "--ingress-client-body-timeout=10s",
            "--ingress-keepalive-timeout=75s",
            "--ingress-upstream-keepalive-timeout=30s",
            "--ingress-max-body-size=8m",
            "--ingress-max-header-line=16k",
            "--ingress-max-header-size=64k",
            "--ingress-proxy-protocol",
            "--ingress-trusted-proxies=10.0.0.0/8,192.0.2.7",
            "--ingress-workers=3",
            "--ingress-tls-session-cache=0",
        ])
        .unwrap();
        assert_eq!(c.workers, 3);
        assert_eq!(c.tls_session_cache, 0);
        assert_eq!(c.connect_timeout.as_secs(), 2);
        assert_eq!(c.response_timeout.as_secs(), 300);
        assert_eq!(c.client_body_timeout.as_secs(), 10);
        assert_eq!(c.client_idle_timeout.as_secs(), 75);
        assert_eq!(c.upstream_idle_timeout.as_secs(), 30);
        assert_eq!(c.max_request_body_bytes, 8 << 20);
        assert_eq!(
            (c.max_header_line_bytes, c.max_header_bytes),
            (16 << 10, 64 << 10)
        );
        assert!(c.proxy_protocol);
        assert_eq!(
            c.trusted_proxies,
            [
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "192.0.2.7/32".parse().unwrap()
            ]
        );
        assert_eq!(
            config(&["--ingress-max-body-size=0"])
                .unwrap()
                .max_request_body_bytes,
            u64::MAX
        );
        for (flag, message) in [
            (
                "--ingress-read-timeout=soon",
                "--ingress-read-timeout: \"soon\" is not valid: \"\" is not a number",
            ),
            (
                "--ingress-connect-timeout=0s",
                "--ingress-connect-timeout: \"0s\" is not valid: must be greater than zero",
            ),
            (
                "--ingress-max-body-size=lots",
                "--ingress-max-body-size: \"lots\" is not valid: not a size such as 8k, 1m or 1024",
            ),
            (
                "--ingress-max-header-size=10",
                "--ingress-max-header-size: \"10\" is not valid: must be between 1k and 1m",
            ),
            (
                "--ingress-workers=0",
                "--ingress-workers: \"0\" is not valid: must be between 1 and 1024",
            ),
            (
                "--ingress-tls-session-cache=2000000",
                "--ingress-tls-session-cache: \"2000000\" is not valid: must be at most 1000000",
            ),
            (
                "--ingress-trusted-proxies=lb.example.com",
                "--ingress-trusted-proxies: \"lb.example.com\" is not valid: not a CIDR or address",
            ),
        ] {
            assert_eq!(config(&[flag]).unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("8K"), Some(8192));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("m"), None);
        assert_eq!(parse_size(""), None);
    }
}
