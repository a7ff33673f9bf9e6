//! `--cleanup-kube-proxy`: removes what kube-proxy programmed on this node, so a node moved
//! from kube-proxy to sluice does not keep translating Services with stale rules.
//!
//! * nftables mode: `table ip kube-proxy` and `table ip6 kube-proxy` are deleted.
//! * iptables mode (legacy and nft backends, IPv4 and IPv6): kube-proxy's chains — the
//!   `KUBE-SVC-`/`KUBE-SVL-`/`KUBE-SEP-`/`KUBE-FW-`/`KUBE-XLB-`/`KUBE-EXT-` per-service chains
//!   and `KUBE-SERVICES`, `KUBE-EXTERNAL-SERVICES`, `KUBE-NODEPORTS`, `KUBE-POSTROUTING`,
//!   `KUBE-FORWARD`, `KUBE-PROXY-FIREWALL`, `KUBE-PROXY-CANARY`, `KUBE-MARK-MASQ` — are
//!   flushed and deleted, with the jumps to them from the built-in chains, in one
//!   `iptables-restore --noflush` transaction per table. The kubelet's chains
//!   (`KUBE-FIREWALL`, `KUBE-KUBELET-CANARY`, `KUBE-MARK-DROP`) stay, and so does any of ours
//!   that another program's chain still jumps to (logged).
//!
//! IPVS mode (virtual servers, `kube-ipvs0`) is not handled: run `kube-proxy --cleanup`.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::{Command, Output, Stdio};

/// kube-proxy's fixed chain names.
const NAMED_CHAINS: &[&str] = &[
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-FORWARD",
    "KUBE-PROXY-FIREWALL",
    "KUBE-PROXY-CANARY",
    "KUBE-MARK-MASQ",
];
/// Prefixes of kube-proxy's per-service and per-endpoint chains.
const CHAIN_PREFIXES: &[&str] = &[
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-SEP-",
    "KUBE-FW-",
    "KUBE-XLB-",
    "KUBE-EXT-",
];
const BUILTIN_CHAINS: &[&str] = &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// (save, restore) commands tried, each where installed.
const IPTABLES: &[(&str, &str)] = &[
    ("iptables-legacy-save", "iptables-legacy-restore"),
    ("iptables-nft-save", "iptables-nft-restore"),
    ("ip6tables-legacy-save", "ip6tables-legacy-restore"),
    ("ip6tables-nft-save", "ip6tables-nft-restore"),
];

/// Runs host commands (a fake in tests).
pub trait Runner {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> std::io::Result<Output>;
}

pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> std::io::Result<Output> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())?;
        }
        child.wait_with_output()
    }
}

/// What a cleanup did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub removed: Vec<String>,
    /// kube-proxy chains left because another program's chain still uses them.
    pub kept: Vec<String>,
    pub errors: Vec<String>,
}

fn is_kube_proxy_chain(chain: &str) -> bool {
    NAMED_CHAINS.contains(&chain) || CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p))
}

/// One table of `iptables-save` output.
#[derive(Debug, Default)]
struct Table {
    name: String,
    chains: Vec<String>,
    /// (chain, the rest of the `-A CHAIN ...` line).
    rules: Vec<(String, String)>,
}

fn parse_save(text: &str) -> Vec<Table> {
    let mut tables = Vec::new();
    let mut current: Option<Table> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            current = Some(Table {
                name: name.trim().to_owned(),
                ..Table::default()
            });
        } else if line.starts_with("COMMIT") {
            tables.extend(current.take());
        } else if let (Some(table), Some(chain)) = (current.as_mut(), line.strip_prefix(':')) {
            table
                .chains
                .extend(chain.split_whitespace().next().map(str::to_owned));
        } else if let (Some(table), Some(rule)) = (current.as_mut(), line.strip_prefix("-A ")) {
            let (chain, rest) = rule.split_once(' ').unwrap_or((rule, ""));
            table.rules.push((chain.to_owned(), rest.to_owned()));
        }
    }
    tables
}

/// The chain a rule jumps or goes to.
fn target(rule: &str) -> Option<&str> {
    let mut words = rule.split_whitespace();
    while let Some(word) = words.next() {
        if word == "-j" || word == "-g" || word == "--jump" || word == "--goto" {
            return words.next();
        }
    }
    None
}

/// The `iptables-restore --noflush` script removing kube-proxy's chains of one table (`None`
/// when it has none), and the chains kept because other chains use them.
fn removal_script(table: &Table) -> (Option<String>, Vec<String>) {
    let ours: BTreeSet<&str> = table
        .chains
        .iter()
        .map(String::as_str)
        .filter(|c| is_kube_proxy_chain(c))
        .collect();
    // Chains another (non-built-in) chain jumps to must stay, and whatever they jump to.
    let mut kept: BTreeSet<&str> = BTreeSet::new();
    loop {
        let before = kept.len();
        for (chain, rule) in &table.rules {
            let from_foreign =
                !ours.contains(chain.as_str()) && !BUILTIN_CHAINS.contains(&chain.as_str());
            let from_kept = kept.contains(chain.as_str());
            if let Some(t) = target(rule).filter(|t| ours.contains(t))
                && (from_foreign || from_kept)
            {
                kept.insert(t);
            }
        }
        if kept.len() == before {
            break;
        }
    }
    let delete: Vec<&str> = ours.difference(&kept).copied().collect();
    if delete.is_empty() {
        return (None, kept.into_iter().map(str::to_owned).collect());
    }
    let mut script = format!("*{}\n", table.name);
    for chain in &delete {
        script.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for (chain, rule) in &table.rules {
        let jumps_to_deleted = target(rule).is_some_and(|t| delete.contains(&t));
        if BUILTIN_CHAINS.contains(&chain.as_str()) && jumps_to_deleted {
            script.push_str(&format!("-D {chain} {rule}\n"));
        }
    }
    for chain in &delete {
        script.push_str(&format!("-X {chain}\n"));
    }
    script.push_str("COMMIT\n");
    (Some(script), kept.into_iter().map(str::to_owned).collect())
}

/// Removes kube-proxy's rules; never fails (problems are in the report).
pub fn cleanup(runner: &dyn Runner) -> CleanupReport {
    let mut report = CleanupReport::default();
    for family in ["ip", "ip6"] {
        cleanup_nft_table(runner, family, &mut report);
    }
    for (save, restore) in IPTABLES {
        cleanup_iptables(runner, save, restore, &mut report);
    }
    report
}

fn cleanup_nft_table(runner: &dyn Runner, family: &str, report: &mut CleanupReport) {
    let listed = runner.run("nft", &["list", "table", family, "kube-proxy"], None);
    if !listed.is_ok_and(|o| o.status.success()) {
        return;
    }
    match runner.run("nft", &["delete", "table", family, "kube-proxy"], None) {
        Ok(o) if o.status.success() => report
            .removed
            .push(format!("nftables table {family} kube-proxy")),
        Ok(o) => report.errors.push(format!(
            "nft delete table {family} kube-proxy: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(err) => report.errors.push(format!("running nft: {err}")),
    }
}

fn cleanup_iptables(runner: &dyn Runner, save: &str, restore: &str, report: &mut CleanupReport) {
    let saved = match runner.run(save, &[], None) {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        // Installed but refused (e.g. without CAP_NET_RAW, which the legacy backend needs).
        Ok(o) => {
            report.errors.push(format!(
                "{save} failed, its rules were not checked: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
            return;
        }
        // Not installed: nothing of kube-proxy's can be there through it.
        Err(_) => return,
    };
    for table in parse_save(&saved) {
        let (script, kept) = removal_script(&table);
        for chain in kept {
            report.kept.push(format!(
                "{save}: {} {chain} (another chain still jumps to it)",
                table.name
            ));
        }
        let Some(script) = script else { continue };
        let deleted: Vec<&str> = script
            .lines()
            .filter_map(|l| l.strip_prefix("-X "))
            .collect();
        match runner.run(restore, &["--noflush"], Some(&script)) {
            Ok(o) if o.status.success() => report.removed.push(format!(
                "{save}: table {}: {} chains ({})",
                table.name,
                deleted.len(),
                deleted.join(", ")
            )),
            Ok(o) => report.errors.push(format!(
                "{restore} (table {}): {}",
                table.name,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(err) => report.errors.push(format!("running {restore}: {err}")),
        }
    }
}

/// Runs the cleanup on this node and logs what it did.
pub fn cleanup_and_log() {
    let report = cleanup(&SystemRunner);
    if report.removed.is_empty() && report.errors.is_empty() {
        tracing::info!("--cleanup-kube-proxy: no kube-proxy rules found on this node");
    }
    for removed in &report.removed {
        tracing::info!("--cleanup-kube-proxy: removed {removed}");
    }
    for kept in &report.kept {
        tracing::warn!("--cleanup-kube-proxy: kept {kept}");
    }
    for error in &report.errors {
        tracing::warn!("--cleanup-kube-proxy: {error}");
    }
}

/// Scripted command outputs for tests.
#[cfg(test)]
#[derive(Default)]
pub struct FakeRunner {
    /// "program args" → (exit code, stdout).
    pub answers: std::collections::BTreeMap<String, (i32, String)>,
    pub calls: std::sync::Mutex<Vec<(String, Option<String>)>>,
}

#[cfg(test)]
impl Runner for FakeRunner {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> std::io::Result<Output> {
        use std::os::unix::process::ExitStatusExt as _;
        let line = std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        self.calls
            .lock()
            .unwrap()
            .push((line.clone(), stdin.map(str::to_owned)));
        let Some((code, stdout)) = self.answers.get(&line) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                program.to_owned(),
            ));
        };
        Ok(Output {
            status: std::process::ExitStatus::from_raw(code << 8),
            stdout: stdout.clone().into_bytes(),
            stderr: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "# Generated by iptables-save\n\
*nat\n\
:PREROUTING ACCEPT [0:0]\n\
:OUTPUT ACCEPT [0:0]\n\
:POSTROUTING ACCEPT [0:0]\n\
:CNI-HOSTPORT-MASQ - [0:0]\n\
:KUBE-MARK-MASQ - [0:0]\n\
:KUBE-NODEPORTS - [0:0]\n\
:KUBE-POSTROUTING - [0:0]\n\
:KUBE-SEP-AAAA - [0:0]\n\
:KUBE-SERVICES - [0:0]\n\
:KUBE-SVC-BBBB - [0:0]\n\
:KUBE-KUBELET-CANARY - [0:0]\n\
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
-A POSTROUTING -j CNI-HOSTPORT-MASQ\n\
-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j KUBE-MARK-MASQ\n\
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
-A KUBE-POSTROUTING -j MASQUERADE --random-fully\n\
-A KUBE-SEP-AAAA -p tcp -j DNAT --to-destination 10.244.1.2:8080\n\
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-BBBB\n\
-A KUBE-SVC-BBBB -j KUBE-SEP-AAAA\n\
COMMIT\n\
*filter\n\
:INPUT ACCEPT [0:0]\n\
:KUBE-FIREWALL - [0:0]\n\
-A INPUT -j KUBE-FIREWALL\n\
COMMIT\n";

    #[test]
    fn removes_kube_proxy_chains_and_their_jumps_keeping_what_others_use() {
        let tables = parse_save(SAVED);
        assert_eq!(tables.len(), 2);
        let (script, kept) = removal_script(&tables[0]);
        let script = script.expect("nat has kube-proxy chains");
        assert_eq!(kept, ["KUBE-MARK-MASQ"], "the CNI chain still jumps to it");
        assert!(script.starts_with("*nat\n"));
        for chain in [
            "KUBE-NODEPORTS",
            "KUBE-POSTROUTING",
            "KUBE-SEP-AAAA",
            "KUBE-SERVICES",
            "KUBE-SVC-BBBB",
        ] {
            assert!(
                script.contains(&format!(":{chain} - [0:0]\n")),
                "{chain} flushed"
            );
            assert!(script.contains(&format!("-X {chain}\n")), "{chain} deleted");
        }
        assert!(script.contains(
            "-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
        ));
        assert!(script.contains("-D POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n"));
        assert!(
            !script.contains("KUBE-KUBELET-CANARY"),
            "the kubelet's chain stays"
        );
        assert!(
            !script.contains("CNI-HOSTPORT-MASQ"),
            "other programs' rules stay"
        );
        assert!(!script.contains("KUBE-MARK-MASQ"));
        assert!(script.ends_with("COMMIT\n"));
        let (filter, _) = removal_script(&tables[1]);
        assert_eq!(filter, None, "KUBE-FIREWALL is the kubelet's");
    }

    #[test]
    fn a_save_command_that_fails_is_reported() {
        let mut fake = FakeRunner::default();
        fake.answers
            .insert("iptables-legacy-save".into(), (4, String::new()));
        let report = cleanup(&fake);
        assert_eq!(report.errors.len(), 1);
        assert!(
            report.errors[0].starts_with("iptables-legacy-save failed"),
            "{:?}",
            report.errors
        );
    }

    #[test]
    fn cleanup_runs_restore_per_table_and_deletes_the_nft_tables() {
        let mut fake = FakeRunner::default();
        fake.answers.insert(
            "nft list table ip kube-proxy".into(),
            (0, "table ip kube-proxy {}".into()),
        );
        fake.answers
            .insert("nft delete table ip kube-proxy".into(), (0, String::new()));
        fake.answers
            .insert("nft list table ip6 kube-proxy".into(), (1, String::new()));
        fake.answers
            .insert("iptables-nft-save".into(), (0, SAVED.into()));
        fake.answers
            .insert("iptables-nft-restore --noflush".into(), (0, String::new()));
        let report = cleanup(&fake);
        assert_eq!(report.errors, Vec::<String>::new());
        assert_eq!(report.removed.len(), 2, "{:?}", report.removed);
        assert_eq!(report.removed[0], "nftables table ip kube-proxy");
        assert!(
            report.removed[1].starts_with("iptables-nft-save: table nat: 5 chains"),
            "{}",
            report.removed[1]
        );
        assert_eq!(report.kept.len(), 1);
        let calls = fake.calls.lock().unwrap();
        assert!(
            !calls
                .iter()
                .any(|(c, _)| c == "nft delete table ip6 kube-proxy")
        );
        let restores: Vec<_> = calls
            .iter()
            .filter(|(c, _)| c.ends_with("--noflush"))
            .collect();
        assert_eq!(restores.len(), 1, "only nat had kube-proxy chains");
    }
}
