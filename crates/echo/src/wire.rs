//! The text format shared by the echo server, the probe and the test harness.
//!
//! Greeting (TCP/SCTP on accept, UDP per datagram): `pod=NAME client=IP:PORT`.
//! Probe result line: the greeting, or `error=refused|timeout|unreachable|<other>`.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// What an echo pod says on a new connection: who it is and whom it saw.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Greeting {
    pub pod: String,
    /// The peer address as the pod saw it (after any NAT on the way).
    pub client: SocketAddr,
}

impl fmt::Display for Greeting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pod={} client={}", self.pod, self.client)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an echo greeting or probe result: {line:?}")]
pub struct WireError {
    pub line: String,
}

impl FromStr for Greeting {
    type Err = WireError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || WireError { line: s.to_owned() };
        let mut pod = None;
        let mut client = None;
        for field in s.split_whitespace() {
            if let Some(v) = field.strip_prefix("pod=") {
                pod = Some(v.to_owned());
            } else if let Some(v) = field.strip_prefix("client=") {
                client = Some(v.parse().map_err(|_| bad())?);
            }
        }
        Ok(Greeting {
            pod: pod.ok_or_else(bad)?,
            client: client.ok_or_else(bad)?,
        })
    }
}

/// Why one probe attempt failed, as a user of the socket API would see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProbeFailure {
    /// Connection refused (TCP RST or ICMP port unreachable).
    Refused,
    /// No answer within the timeout (dropped).
    Timeout,
    /// ICMP host/network unreachable, or no route.
    Unreachable,
    /// Anything else, e.g. `reset`, `eof`, `unsupported`, or an OS error text.
    Other(String),
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeFailure::Refused => f.write_str("error=refused"),
            ProbeFailure::Timeout => f.write_str("error=timeout"),
            ProbeFailure::Unreachable => f.write_str("error=unreachable"),
            ProbeFailure::Other(s) => write!(f, "error={s}"),
        }
    }
}

impl ProbeFailure {
    /// Classifies an I/O error from connect/send/recv.
    pub fn from_io(e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => ProbeFailure::Refused,
            K::TimedOut | K::WouldBlock => ProbeFailure::Timeout,
            K::HostUnreachable | K::NetworkUnreachable => ProbeFailure::Unreachable,
            K::ConnectionReset => ProbeFailure::Other("reset".into()),
            K::UnexpectedEof => ProbeFailure::Other("eof".into()),
            _ => match e.raw_os_error() {
                Some(code) if code == PROTO_NOT_SUPPORTED => {
                    ProbeFailure::Other("unsupported".into())
                }
                _ => ProbeFailure::Other(e.to_string()),
            },
        }
    }
}

/// EPROTONOSUPPORT on Linux: the kernel lacks the protocol (SCTP module not loaded).
const PROTO_NOT_SUPPORTED: i32 = 93;

/// Parses one probe output line into the attempt's outcome.
pub fn parse_probe_line(line: &str) -> Result<Result<Greeting, ProbeFailure>, WireError> {
    let line = line.trim();
    if let Some(err) = line.strip_prefix("error=") {
        return Ok(Err(match err {
            "refused" => ProbeFailure::Refused,
            "timeout" => ProbeFailure::Timeout,
            "unreachable" => ProbeFailure::Unreachable,
            other => ProbeFailure::Other(other.to_owned()),
        }));
    }
    line.parse().map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_round_trips_v4_and_v6() {
        for g in [
            Greeting {
                pod: "web-1".into(),
                client: "192.0.2.100:40000".parse().unwrap(),
            },
            Greeting {
                pod: "web-2".into(),
                client: "[2001:db8::100]:5".parse().unwrap(),
            },
        ] {
            let line = g.to_string();
            assert_eq!(parse_probe_line(&format!("{line}\n")), Ok(Ok(g)));
        }
    }

    #[test]
    fn failures_round_trip() {
        for f in [
            ProbeFailure::Refused,
            ProbeFailure::Timeout,
            ProbeFailure::Unreachable,
            ProbeFailure::Other("reset".into()),
        ] {
            assert_eq!(parse_probe_line(&f.to_string()), Ok(Err(f)));
        }
    }

    #[test]
    fn garbage_is_an_error_naming_the_line() {
        let err = parse_probe_line("hello").unwrap_err();
        assert!(err.to_string().contains("hello"));
        assert!(parse_probe_line("pod=x client=notanaddr").is_err());
    }

    #[test]
    fn io_errors_are_classified() {
        use std::io::{Error, ErrorKind};
        assert_eq!(
            ProbeFailure::from_io(&Error::from(ErrorKind::ConnectionRefused)),
            ProbeFailure::Refused
        );
        assert_eq!(
            ProbeFailure::from_io(&Error::from_raw_os_error(113)),
            ProbeFailure::Unreachable
        );
        assert_eq!(
            ProbeFailure::from_io(&Error::from_raw_os_error(93)),
            ProbeFailure::Other("unsupported".into())
        );
    }
}
