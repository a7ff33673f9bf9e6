//! Running nft (and conntrack) behind a trait, so tests can capture scripts instead.

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::render::Family;
use crate::transaction::{Existing, TABLE};

/// A stale UDP flow to remove from conntrack.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConntrackFlush {
    /// Flows NATed to an endpoint that went away (`--reply-src IP --reply-port-src PORT`).
    ToEndpoint { ip: std::net::IpAddr, port: u16 },
    /// Flows to a frontend that had no endpoint and now has one (`--orig-dst IP --dport PORT`),
    /// or to a node port (`ip` = None).
    ToFrontend {
        ip: Option<std::net::IpAddr>,
        port: u16,
    },
}

/// What the nftables dataplane needs from the system.
pub trait NftRunner: Send {
    /// Applies one script as one atomic transaction (`nft -f -`).
    fn apply(&mut self, script: &str) -> Result<(), String>;
    /// Chains and sets of our table in `family` (empty when the table does not exist).
    fn existing(&mut self, family: Family) -> Result<Existing, String>;
    /// Deletes UDP conntrack entries matching `flush`.
    fn flush_conntrack(&mut self, flush: &ConntrackFlush) -> Result<(), String>;
}

/// The real thing: the `nft` and `conntrack` binaries in the agent's network namespace.
#[derive(Debug, Clone)]
pub struct NftCommand {
    pub nft: String,
    pub conntrack: String,
    /// Command prefix, e.g. `ip netns exec NAME` in tests; empty in the agent.
    pub wrapper: Vec<String>,
}

impl Default for NftCommand {
    fn default() -> Self {
        Self {
            nft: "nft".into(),
            conntrack: "conntrack".into(),
            wrapper: Vec::new(),
        }
    }
}

impl NftCommand {
    /// Runs everything inside the named network namespace (tests).
    pub fn in_netns(name: &str) -> Self {
        let wrapper = ["ip", "netns", "exec", name].map(String::from).to_vec();
        Self {
            wrapper,
            ..Self::default()
        }
    }

    fn command(&self, program: &str) -> Command {
        match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut cmd = Command::new(first);
                cmd.args(rest).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    /// `Err(reason)` when nft cannot be run or the kernel lacks nf_tables.
    pub fn check(&self) -> Result<(), String> {
        let out = self
            .command(&self.nft)
            .args(["list", "tables"])
            .output()
            .map_err(|e| {
                format!(
                    "cannot run `{}`: {e} (install the `nftables` package)",
                    self.nft
                )
            })?;
        if !out.status.success() {
            return Err(format!(
                "`nft list tables` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }

    fn list_json(&self, what: &str, family: Family) -> Result<serde_json::Value, String> {
        let out = self
            .command(&self.nft)
            .args(["-j", "list", what, family.table_family()])
            .output()
            .map_err(|e| format!("cannot run nft: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("unreadable `nft -j list {what}` output: {e}"))
    }
}

impl NftRunner for NftCommand {
    fn apply(&mut self, script: &str) -> Result<(), String> {
        let mut child = self
            .command(&self.nft)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run `{}`: {e}", self.nft))?;
        let mut stdin = child.stdin.take().ok_or("nft stdin unavailable")?;
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("writing to nft: {e}"))?;
        drop(stdin);
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for nft: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    fn existing(&mut self, family: Family) -> Result<Existing, String> {
        let mut existing = Existing::default();
        for (what, key, into) in [("chains", "chain", 0), ("sets", "set", 1)] {
            let json = self.list_json(what, family)?;
            let items = json
                .get("nftables")
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default();
            for item in items {
                let Some(obj) = item.get(key) else { continue };
                if obj.get("table").and_then(|t| t.as_str()) != Some(TABLE) {
                    continue;
                }
                if let Some(name) = obj.get("name").and_then(|n| n.as_str()) {
                    if into == 0 {
                        existing.chains.insert(name.to_owned());
                    } else {
                        existing.sets.insert(name.to_owned());
                    }
                }
            }
        }
        if existing.chains.iter().any(|c| udp_endpoint_chain(c)) {
            let out = self
                .command(&self.nft)
                .args(["-j", "list", "table", family.table_family(), TABLE])
                .output()
                .map_err(|e| format!("cannot run nft: {e}"))?;
            if out.status.success() {
                let json: serde_json::Value = serde_json::from_slice(&out.stdout)
                    .map_err(|e| format!("unreadable `nft -j list table` output: {e}"))?;
                existing.udp_endpoints = udp_dnat_targets(&json);
            }
        }
        Ok(existing)
    }

    fn flush_conntrack(&mut self, flush: &ConntrackFlush) -> Result<(), String> {
        let mut args: Vec<String> = vec!["-D".into(), "-p".into(), "udp".into()];
        match flush {
            ConntrackFlush::ToEndpoint { ip, port } => {
                let fam = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
                args.extend([
                    "-f".into(),
                    fam.into(),
                    "--reply-src".into(),
                    ip.to_string(),
                ]);
                args.extend(["--reply-port-src".into(), port.to_string()]);
            }
            ConntrackFlush::ToFrontend { ip: Some(ip), port } => {
                let fam = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
                args.extend(["-f".into(), fam.into(), "--orig-dst".into(), ip.to_string()]);
                args.extend(["--orig-port-dst".into(), port.to_string()]);
            }
            ConntrackFlush::ToFrontend { ip: None, port } => {
                args.extend(["--orig-port-dst".into(), port.to_string()]);
            }
        }
        let out = self
            .command(&self.conntrack)
            .args(&args)
            .output()
            .map_err(|e| {
                format!(
                    "cannot run `{}`: {e} (install the `conntrack` package)",
                    self.conntrack
                )
            })?;
        // conntrack exits 1 when nothing matched: that is success for us.
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || stderr.contains("0 flow entries") {
            Ok(())
        } else {
            Err(format!("conntrack {}: {}", args.join(" "), stderr.trim()))
        }
    }
}

/// An endpoint chain of a UDP service port (`ep-HASH-namespace/name/udp/port`).
fn udp_endpoint_chain(chain: &str) -> bool {
    chain.starts_with("ep-") && chain.contains("/udp/")
}

/// `(addr, port)` of every `dnat` in the UDP endpoint chains of `nft -j list table` output.
pub(crate) fn udp_dnat_targets(
    json: &serde_json::Value,
) -> std::collections::BTreeSet<(std::net::IpAddr, u16)> {
    let items = json
        .get("nftables")
        .and_then(|v| v.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    items
        .iter()
        .filter_map(|item| item.get("rule"))
        .filter(|rule| {
            rule.get("chain")
                .and_then(|c| c.as_str())
                .is_some_and(udp_endpoint_chain)
        })
        .filter_map(|rule| rule.get("expr").and_then(|e| e.as_array()))
        .flatten()
        .filter_map(|expr| expr.get("dnat"))
        .filter_map(|dnat| {
            let ip = dnat.get("addr")?.as_str()?.parse().ok()?;
            let port = u16::try_from(dnat.get("port")?.as_u64()?).ok()?;
            Some((ip, port))
        })
        .collect()
}
