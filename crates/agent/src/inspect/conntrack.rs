//! Connections the dataplane translated: the eBPF datapath's own conntrack map (`sl_ct_v1`,
//! the external path; socket-LB translates at `connect()` and keeps no entry), or the
//! kernel's conntrack table (`conntrack -L --dst-nat`) for nftables, keeping entries whose
//! original destination is one of our frontends.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;

use serde::Serialize;

use super::InspectError;
use super::ebpf;
use super::kernel::KernelView;

/// One translated connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flow {
    pub protocol: String,
    pub client: SocketAddr,
    pub frontend: SocketAddr,
    pub backend: SocketAddr,
    /// TCP state or `[UNREPLIED]`/`[ASSURED]` marks (nftables); empty for eBPF.
    pub state: String,
    /// Seconds since the last packet (eBPF) or until expiry (nftables: `expires`).
    pub seconds: Option<u64>,
}

/// `CLOCK_MONOTONIC` now, in nanoseconds (`bpf_ktime_get_ns`'s clock).
fn monotonic_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; no other preconditions.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

pub fn ebpf_flows(dir: &Path) -> Result<Vec<Flow>, InspectError> {
    let now = monotonic_ns();
    let mut flows: Vec<Flow> = ebpf::read_conntrack(dir)?
        .into_iter()
        .filter_map(|(key, value)| {
            let v4 = key.saddr[1..] == [0, 0, 0] && key.daddr[1..] == [0, 0, 0];
            Some(Flow {
                protocol: ebpf::protocol(key.proto)?.to_string(),
                client: SocketAddr::new(ebpf::addr(key.saddr, v4), u16::from_be(key.sport)),
                frontend: SocketAddr::new(ebpf::addr(key.daddr, v4), u16::from_be(key.dport)),
                backend: SocketAddr::new(
                    ebpf::addr(value.nat_addr, v4),
                    u16::from_be(value.nat_port),
                ),
                state: String::new(),
                seconds: now.map(|n| n.saturating_sub(value.last_ns) / 1_000_000_000),
            })
        })
        .collect();
    flows.sort_by_key(|f| (f.frontend, f.client));
    Ok(flows)
}

/// `conntrack -L -f FAMILY --dst-nat` for both families, keeping flows to our frontends.
pub fn nft_flows(view: &KernelView) -> Result<Vec<Flow>, InspectError> {
    let mut flows = Vec::new();
    for family in ["ipv4", "ipv6"] {
        let output = Command::new("conntrack")
            .args(["-L", "-f", family, "--dst-nat"])
            .output()
            .map_err(|source| InspectError::Run {
                command: "conntrack".into(),
                source,
            })?;
        if !output.status.success() {
            return Err(InspectError::Failed {
                command: format!("conntrack -L -f {family} --dst-nat"),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        flows.extend(parse(&String::from_utf8_lossy(&output.stdout)));
    }
    flows.retain(|flow| {
        let Some(protocol) = super::parse_protocol(&flow.protocol) else {
            return false;
        };
        view.frontend(flow.frontend.ip(), protocol, flow.frontend.port())
            .is_some()
    });
    flows.sort_by_key(|f| (f.frontend, f.client));
    Ok(flows)
}

/// Lines of `conntrack -L` (`tcp 6 431999 ESTABLISHED src=.. dst=.. sport=.. dport=..
/// src=.. dst=.. sport=.. dport=.. [ASSURED] mark=0 use=1`): the first tuple is the original
/// direction, the second the reply (whose source is the backend).
pub fn parse(text: &str) -> Vec<Flow> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Flow> {
    let mut words = line.split_whitespace();
    let protocol = words.next()?.to_owned();
    let _number = words.next()?;
    let seconds = words.next()?.parse().ok();
    let mut tuples: Vec<[Option<&str>; 4]> = Vec::new();
    let mut state = Vec::new();
    for word in words {
        match word.split_once('=') {
            Some((key, value)) => {
                let index = match key {
                    "src" => 0,
                    "dst" => 1,
                    "sport" => 2,
                    "dport" => 3,
                    _ => continue,
                };
                if index == 0 {
                    tuples.push([None; 4]);
                }
                if let Some(tuple) = tuples.last_mut() {
                    tuple[index] = Some(value);
                }
            }
            None => state.push(word),
        }
    }
    let socket = |ip: Option<&str>, port: Option<&str>| -> Option<SocketAddr> {
        Some(SocketAddr::new(
            ip?.parse::<IpAddr>().ok()?,
            port?.parse().ok()?,
        ))
    };
    let [orig, reply] = [tuples.first()?, tuples.get(1)?];
    Some(Flow {
        protocol,
        client: socket(orig[0], orig[2])?,
        frontend: socket(orig[1], orig[3])?,
        backend: socket(reply[0], reply[2])?,
        state: state.join(" "),
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_lines_give_client_frontend_and_backend() {
        let text = "tcp      6 431999 ESTABLISHED src=192.0.2.100 dst=192.0.2.11 sport=40000 dport=30080 src=10.244.1.2 dst=192.0.2.100 sport=8080 dport=40000 [ASSURED] mark=0 use=1\n\
                    udp      17 29 src=fd00:10:244:1::5 dst=fd00:96::10 sport=5353 dport=53 [UNREPLIED] src=fd00:10:244:2::3 dst=fd00:10:244:1::5 sport=53 dport=5353 mark=0 use=1\n\
                    garbage\n";
        let flows = parse(text);
        assert_eq!(flows.len(), 2);
        assert_eq!(flows[0].client, "192.0.2.100:40000".parse().unwrap());
        assert_eq!(flows[0].frontend, "192.0.2.11:30080".parse().unwrap());
        assert_eq!(flows[0].backend, "10.244.1.2:8080".parse().unwrap());
        assert_eq!(flows[0].state, "ESTABLISHED [ASSURED]");
        assert_eq!(flows[1].protocol, "udp");
        assert_eq!(flows[1].backend, "[fd00:10:244:2::3]:53".parse().unwrap());
        assert_eq!(flows[1].seconds, Some(29));
    }
}
