//! `sluice explain IP:PORT[/PROTO] [--from SRC]` and `sluice explain https://HOST/PATH`: walks
//! the live state the way the packet or request would and prints each step — frontend,
//! Service, source class and policy, candidate backends, verdict — and why it would be
//! rejected or dropped.
//!
//! With the agent running, the walk follows the plan the agent decided (from its admin
//! endpoint) and then checks that the kernel holds the matching entries; with the agent
//! stopped it follows what the kernel holds (pinned maps / nftables). Requests to the Ingress
//! proxy are walked in the agent only (its routes live in memory).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sluice_plan::{Protocol, Route};

use crate::admin::{AdminClient, AdminError};
use crate::inspect::kernel::KernelRoute;
use crate::inspect::{Output, StateFlags, parse_protocol, read_kernel};

mod http;
mod l4;

pub use http::{HttpWalk, walk_http};
pub use l4::{cross_check, walk_kernel, walk_plan};

#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    /// `IP:PORT[/tcp|udp|sctp]` (IPv6 as `[ADDR]:PORT`; TCP by default), or an `http://` or
    /// `https://` URL served by the Ingress proxy.
    pub target: String,
    /// The client's address (default: every source class: pods, this node, outside).
    #[arg(long)]
    pub from: Option<IpAddr>,
    #[command(flatten)]
    pub state: StateFlags,
}

/// A packet's destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl FromStr for Destination {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (socket, protocol) = match text.rsplit_once('/') {
            Some((socket, proto)) => (
                socket,
                parse_protocol(&proto.to_ascii_lowercase())
                    .ok_or_else(|| format!("unknown protocol {proto:?} (tcp, udp or sctp)"))?,
            ),
            None => (text, Protocol::Tcp),
        };
        let socket: SocketAddr = socket
            .parse()
            .map_err(|_| format!("{socket:?} is not IP:PORT (IPv6 as [ADDR]:PORT)"))?;
        Ok(Destination {
            ip: socket.ip(),
            port: socket.port(),
            protocol,
        })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            SocketAddr::new(self.ip, self.port),
            self.protocol
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Forward,
    Reject,
    Drop,
    NotHandled,
}

impl Outcome {
    fn of(route: Route) -> Outcome {
        match route {
            Route::Forward { .. } => Outcome::Forward,
            Route::Reject => Outcome::Reject,
            Route::Drop => Outcome::Drop,
        }
    }

    fn of_kernel(route: &KernelRoute) -> Outcome {
        match route {
            KernelRoute::Forward { .. } => Outcome::Forward,
            KernelRoute::Reject => Outcome::Reject,
            KernelRoute::Drop => Outcome::Drop,
        }
    }
}

/// The end of a walk: what happens and why. `code` is one of `forwarded`, `no-endpoints`,
/// `no-local-endpoint`, `source-range`, `not-a-nodeport-address`, `no-route`, `dropped`
/// (L4); `routed`, `no-certificate`, `no-route`, `no-endpoints`, `no-listener` (HTTP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub outcome: Outcome,
    pub code: String,
    pub reason: String,
    pub backends: Vec<String>,
}

/// One step of a walk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub what: String,
    pub detail: String,
}

/// What the kernel must hold if it executes the plan for this walk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expect {
    pub frontend: String,
    pub class: String,
    pub outcome: Outcome,
    pub backends: Vec<String>,
    pub allowed_sources: Vec<String>,
}

/// Whether the kernel holds what the walk expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelCheck {
    pub agrees: bool,
    pub detail: String,
}

/// One source class's walk to one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct L4Walk {
    pub destination: String,
    pub source: Option<IpAddr>,
    pub class: String,
    /// `plan` (the running agent's decision) or `kernel` (the agent is not running).
    pub from_state: String,
    pub steps: Vec<Step>,
    pub verdict: Verdict,
    pub expect: Option<Expect>,
    pub kernel: Option<KernelCheck>,
}

fn step(what: &str, detail: impl Into<String>) -> Step {
    Step {
        what: what.to_owned(),
        detail: detail.into(),
    }
}

fn verdict(outcome: Outcome, code: &str, reason: impl Into<String>) -> Verdict {
    Verdict {
        outcome,
        code: code.to_owned(),
        reason: reason.into(),
        backends: Vec::new(),
    }
}

fn list<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

/// This node's addresses as the kernel has them (for classifying `--from`).
fn local_addresses() -> Vec<IpAddr> {
    use sluice_hostnet::HostNetwork as _;
    sluice_hostnet::RtNetlink::new()
        .global_addresses()
        .unwrap_or_default()
}

/// `sluice explain`.
pub fn run(args: &ExplainArgs) -> anyhow::Result<()> {
    let admin = AdminClient::new(&args.state.admin_socket);
    if args.target.starts_with("http://") || args.target.starts_with("https://") {
        let walk = admin.explain_http(&args.target)?;
        print!("{}", render(args.state.output, &walk, print_http));
        return Ok(());
    }
    let dst: Destination = args.target.parse().map_err(anyhow::Error::msg)?;
    let walks = match admin.explain(&dst, args.from) {
        Ok(mut walks) => {
            match read_kernel(&args.state) {
                Ok(kernel) => cross_check(&mut walks, &kernel),
                Err(err) => {
                    for walk in &mut walks {
                        walk.kernel = Some(KernelCheck {
                            agrees: false,
                            detail: format!(
                                "cannot read the kernel: {}",
                                sluice_dataplane::error_chain(&err)
                            ),
                        });
                    }
                }
            }
            walks
        }
        Err(AdminError::NotRunning { .. }) => {
            let kernel = read_kernel(&args.state)?;
            walk_kernel(&kernel, &local_addresses(), &dst, args.from)
        }
        Err(err) => return Err(err.into()),
    };
    print!("{}", render(args.state.output, walks.as_slice(), print_l4));
    Ok(())
}

fn render<T: Serialize + ?Sized>(output: Output, value: &T, text: impl Fn(&T) -> String) -> String {
    match output {
        Output::Json => serde_json::to_string_pretty(value).unwrap_or_default() + "\n",
        Output::Table => text(value),
    }
}

fn print_steps(out: &mut String, steps: &[Step]) {
    for s in steps {
        out.push_str(&format!("  {:<13} {}\n", s.what, s.detail));
    }
}

fn print_l4(walks: &[L4Walk]) -> String {
    let mut out = String::new();
    for walk in walks {
        let from = walk
            .source
            .map(|s| format!(" from {s}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{}{from} ({} sources, from the {})\n",
            walk.destination, walk.class, walk.from_state
        ));
        print_steps(&mut out, &walk.steps);
        if let Some(check) = &walk.kernel {
            let mark = if check.agrees { "ok" } else { "MISMATCH" };
            out.push_str(&format!("  {:<13} {mark}: {}\n", "kernel", check.detail));
        }
        out.push_str(&format!(
            "  {:<13} {} ({}): {}\n\n",
            "verdict",
            outcome_word(walk.verdict.outcome),
            walk.verdict.code,
            walk.verdict.reason
        ));
    }
    out
}

fn print_http(walk: &HttpWalk) -> String {
    let mut out = format!("{}\n", walk.url);
    print_steps(&mut out, &walk.steps);
    out.push_str(&format!(
        "  {:<13} {} ({}): {}\n",
        "verdict",
        outcome_word(walk.verdict.outcome),
        walk.verdict.code,
        walk.verdict.reason
    ));
    out
}

fn outcome_word(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Forward => "FORWARD",
        Outcome::Reject => "REJECT",
        Outcome::Drop => "DROP",
        Outcome::NotHandled => "NOT HANDLED",
    }
}

#[cfg(test)]
mod tests;
