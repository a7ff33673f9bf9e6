//! Probing from a place in the cluster: TCP/UDP/SCTP via `sluice-echo probe`, HTTP via curl,
//! and held connections.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::bins;
use crate::process::{output_in, spawn_in};
use crate::topology::{At, Cluster};

/// What an echo pod answered: its name and the client address it saw.
pub use sluice_echo::wire::Greeting as EchoReply;
/// Why a probe attempt failed (refused, timeout, unreachable, other).
pub use sluice_echo::wire::ProbeFailure as ProbeError;

/// One result per attempt.
pub type ProbeResults = Vec<Result<EchoReply, ProbeError>>;

/// Options of a probe run.
#[derive(Debug, Clone)]
pub struct ProbeOpts {
    pub count: u32,
    /// Per attempt: connect plus greeting.
    pub timeout: Duration,
    pub source_port: Option<u16>,
    /// Stop after this many timed-out attempts, so a dead path costs seconds, not
    /// `count x timeout` (fewer results than `count` come back then). `None`: all attempts.
    pub max_timeouts: Option<u32>,
}

impl Default for ProbeOpts {
    fn default() -> Self {
        ProbeOpts {
            count: 1,
            timeout: Duration::from_secs(2),
            source_port: None,
            max_timeouts: Some(2),
        }
    }
}

/// L4 protocol to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// Counts answers per pod name; failures count under their `error=...` text.
/// Handy for `assert_eq!(tally(&r), [("web-1", 3)].into())`-style checks.
pub fn tally(results: &[Result<EchoReply, ProbeError>]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in results {
        let key = match r {
            Ok(reply) => reply.pod.clone(),
            Err(e) => e.to_string(),
        };
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// An HTTP response as curl saw it.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A `key=value` line of an echo pod's body (`pod`, `client`, `host`, `path`,
    /// `x-forwarded-for`, ...).
    pub fn field(&self, key: &str) -> Option<&str> {
        self.body
            .lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// Parses `curl -i` output (the last header block wins, skipping `100 Continue`).
    pub fn parse(raw: &str) -> Result<HttpReply> {
        let mut rest = raw;
        loop {
            let (head, body) = rest
                .split_once("\r\n\r\n")
                .with_context(|| format!("no header block in curl output {raw:?}"))?;
            if body.starts_with("HTTP/") {
                rest = body;
                continue;
            }
            let mut lines = head.lines();
            let status_line = lines.next().unwrap_or_default();
            let status = status_line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("bad status line {status_line:?}"))?;
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            return Ok(HttpReply {
                status,
                headers,
                body: body.to_owned(),
            });
        }
    }
}

pub(crate) fn parse_probe_output(out: &Output) -> Result<ProbeResults> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let results: ProbeResults = stdout
        .lines()
        .map(sluice_echo::wire::parse_probe_line)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            anyhow!(
                "{e}; probe stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    if out.status.code() == Some(2) || results.is_empty() {
        bail!(
            "probe failed to run ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(results)
}

impl Cluster {
    /// `count` independent attempts of `proto` to `addr` from `at`.
    pub fn probe(
        &self,
        at: At<'_>,
        proto: Proto,
        addr: impl Display,
        opts: &ProbeOpts,
    ) -> Result<ProbeResults> {
        let mut cmd = Command::new(bins::echo()?);
        cmd.args([
            "probe",
            proto.as_str(),
            &addr.to_string(),
            "--count",
            &opts.count.to_string(),
            "--timeout-ms",
            &opts.timeout.as_millis().to_string(),
        ]);
        if let Some(port) = opts.source_port {
            cmd.args(["--source-port", &port.to_string()]);
        }
        if let Some(max) = opts.max_timeouts {
            cmd.args(["--max-timeouts", &max.to_string()]);
        }
        let budget = opts.timeout * (opts.count + 1) + Duration::from_secs(10);
        let out = output_in(&self.place(at)?, &mut cmd, None, budget)?;
        parse_probe_output(&out)
            .with_context(|| format!("probe {} {addr} from {at:?}", proto.as_str()))
    }

    /// `count` TCP connections to `addr` from `at` (2 s timeout each; stops after 2 timeouts).
    pub fn tcp(&self, at: At<'_>, addr: impl Display, count: u32) -> Result<ProbeResults> {
        let opts = ProbeOpts {
            count,
            ..ProbeOpts::default()
        };
        self.probe(at, Proto::Tcp, addr, &opts)
    }

    /// `count` UDP datagrams (each from a new socket) to `addr` from `at`.
    pub fn udp(&self, at: At<'_>, addr: impl Display, count: u32) -> Result<ProbeResults> {
        let opts = ProbeOpts {
            count,
            ..ProbeOpts::default()
        };
        self.probe(at, Proto::Udp, addr, &opts)
    }

    /// `count` SCTP associations to `addr` from `at` (see [`crate::sctp_supported`]).
    pub fn sctp(&self, at: At<'_>, addr: impl Display, count: u32) -> Result<ProbeResults> {
        let opts = ProbeOpts {
            count,
            ..ProbeOpts::default()
        };
        self.probe(at, Proto::Sctp, addr, &opts)
    }

    /// One TCP connection; the reply or why it failed.
    pub fn tcp1(&self, at: At<'_>, addr: impl Display) -> Result<Result<EchoReply, ProbeError>> {
        let mut r = self.tcp(at, addr, 1)?;
        r.pop().context("probe printed nothing")
    }

    /// One UDP datagram; the reply or why it failed.
    pub fn udp1(&self, at: At<'_>, addr: impl Display) -> Result<Result<EchoReply, ProbeError>> {
        let mut r = self.udp(at, addr, 1)?;
        r.pop().context("probe printed nothing")
    }

    /// Runs `curl -sS --noproxy '*' --max-time 10 ARGS` at `at`.
    pub fn curl(&self, at: At<'_>, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--noproxy", "*", "--max-time", "10"])
            .args(args);
        output_in(&self.place(at)?, &mut cmd, None, Duration::from_secs(20))
    }

    /// An HTTP request with curl (`-i` added); fails if curl fails (no response at all).
    pub fn http(&self, at: At<'_>, url: &str, extra: &[&str]) -> Result<HttpReply> {
        let mut args = vec!["-i"];
        args.extend_from_slice(extra);
        args.push(url);
        let out = self.curl(at, &args)?;
        if !out.status.success() {
            bail!(
                "curl {url} from {at:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        HttpReply::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// Opens one TCP connection from `at` and keeps it (see [`HeldConn`]).
    pub fn hold_tcp(&self, at: At<'_>, addr: impl Display) -> Result<HeldConn> {
        let timeout = Duration::from_secs(2);
        let mut cmd = Command::new(bins::echo()?);
        cmd.args([
            "probe",
            "tcp",
            &addr.to_string(),
            "--hold",
            "--timeout-ms",
            &timeout.as_millis().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        let mut child = spawn_in(&self.place(at)?, &mut cmd)?;
        let stdin = child.stdin.take().context("probe stdin")?;
        let stdout = child.stdout.take().context("probe stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut conn = HeldConn {
            child,
            stdin: Some(stdin),
            lines: rx,
            wait: timeout + Duration::from_secs(3),
            greeting: None,
        };
        let first = conn.next_line()?;
        match sluice_echo::wire::parse_probe_line(&first)? {
            Ok(g) => conn.greeting = Some(g),
            Err(e) => bail!("holding a connection to {addr} from {at:?}: {e}"),
        }
        Ok(conn)
    }
}

/// A TCP connection kept open by a `sluice-echo probe --hold` process. Killed on drop.
pub struct HeldConn {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    wait: Duration,
    greeting: Option<EchoReply>,
}

impl HeldConn {
    /// The greeting received when the connection opened.
    pub fn greeting(&self) -> &EchoReply {
        self.greeting
            .as_ref()
            .expect("HeldConn is only returned after its greeting")
    }

    fn next_line(&mut self) -> Result<String> {
        self.lines
            .recv_timeout(self.wait)
            .map_err(|_| anyhow!("held connection: no output within {:?}", self.wait))
    }

    /// Sends one line; `Ok("POD: LINE")` if the pod answered, the failure otherwise (the
    /// connection is dead after a failure).
    pub fn send(&mut self, line: &str) -> Result<Result<String, ProbeError>> {
        let stdin = self.stdin.as_mut().context("held connection is closed")?;
        if writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .is_err()
        {
            self.stdin = None;
            return Ok(Err(ProbeError::Other("probe exited".into())));
        }
        let reply = self.next_line()?;
        if reply.starts_with("error=") {
            self.stdin = None;
            return Ok(sluice_echo::wire::parse_probe_line(&reply)?.map(|_| String::new()));
        }
        Ok(Ok(reply))
    }

    /// Closes the connection cleanly (EOF to the server).
    pub fn close(mut self) -> Result<()> {
        self.stdin = None;
        match crate::process::wait_timeout(&mut self.child, Duration::from_secs(5))? {
            Some(_) => Ok(()),
            None => bail!("held connection did not close"),
        }
    }
}

impl Drop for HeldConn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
