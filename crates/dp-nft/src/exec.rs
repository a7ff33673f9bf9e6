//! The kernel seam of the nftables backend: applying transactions, reading the table back,
//! noticing changes made by others and removing conntrack entries, behind [`NftExecutor`] so
//! tests can use [`FakeNft`]. [`NftCommand`] drives the `nft` binary with text scripts;
//! [`crate::NetlinkNft`] writes netlink batches itself.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};

use sluice_plan::{Family, Protocol, StaleFlow};

use crate::conntrack;
use crate::readback;
use crate::render::table_family;
use crate::slots::FoundSlots;
use crate::transaction::{Existing, TABLE, Transaction};

/// Why an nft or conntrack command failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run `{program}`{hint}")]
    Spawn {
        program: String,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("unreadable `{command}` output")]
    Unreadable {
        command: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("nf_tables refused `{command}`{more}")]
    Refused {
        command: String,
        /// ` (and N more refused commands)` when several were.
        more: String,
        #[source]
        source: sluice_nftnl::Refusal,
    },
    #[error("nf_tables over netlink: {action}")]
    Netlink {
        action: &'static str,
        #[source]
        source: sluice_nftnl::Error,
    },
}

/// Whether someone else may have changed the ruleset since our last successful transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drift {
    /// Nothing was committed since (the ruleset generation is the one our transaction left).
    None,
    /// Something was committed since, by someone: check our table.
    Possible,
    /// The executor cannot tell.
    Unknown,
}

/// What a previous run left in one family's table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readback {
    pub existing: Existing,
    /// DNAT targets of connectionless service traffic: (protocol, ip, port).
    pub backends: BTreeSet<(Protocol, IpAddr, u16)>,
    /// What the slot maps hold, per frontend and set.
    pub slots: FoundSlots,
}

/// What the nftables dataplane needs from the system.
pub trait NftExecutor: Send {
    /// Applies one transaction atomically: everything or nothing.
    fn apply(&mut self, tx: &Transaction<'_>) -> Result<(), NftError>;
    /// Our table in `family` (empty when it does not exist), with the endpoint slots and the
    /// UDP DNAT targets.
    fn read_back(&mut self, family: Family) -> Result<Readback, NftError>;
    /// Deletes the conntrack entries of one stale flow.
    fn flush_conntrack(&mut self, flow: &StaleFlow) -> Result<(), NftError>;
    /// Whether the ruleset may have changed since our last successful [`apply`] (or since the
    /// previous call that answered [`Drift::Possible`]). Cheap: asked on every resync.
    ///
    /// [`apply`]: NftExecutor::apply
    fn drift(&mut self) -> Result<Drift, NftError> {
        Ok(Drift::Unknown)
    }
    /// The chain and set names of our table in `family` (what a drift check compares).
    fn read_names(&mut self, family: Family) -> Result<Existing, NftError> {
        self.read_back(family).map(|r| r.existing)
    }
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

    fn output(
        &self,
        program: &str,
        args: &[&str],
        hint: &'static str,
    ) -> Result<Vec<u8>, NftError> {
        let shown = format!("{program} {}", args.join(" "));
        let out = self
            .command(program)
            .args(args)
            .output()
            .map_err(|source| NftError::Spawn {
                program: program.to_owned(),
                hint,
                source,
            })?;
        if !out.status.success() {
            return Err(NftError::Failed {
                command: shown,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(out.stdout)
    }

    /// Fails when nft cannot be run or the kernel lacks nf_tables.
    pub fn check(&self) -> Result<(), NftError> {
        self.output(&self.nft, &["list", "tables"], NFT_HINT)
            .map(|_| ())
    }
}

const NFT_HINT: &str = " (install the `nftables` package)";
const CONNTRACK_HINT: &str = " (install the `conntrack` package)";

impl NftExecutor for NftCommand {
    fn apply(&mut self, tx: &Transaction<'_>) -> Result<(), NftError> {
        let script = tx.to_string();
        let spawn_err = |source| NftError::Spawn {
            program: self.nft.clone(),
            hint: NFT_HINT,
            source,
        };
        let mut child = self
            .command(&self.nft)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        if let Some(mut stdin) = child.stdin.take() {
            // A write error means nft exited early; its stderr says why.
            let _ = stdin.write_all(script.as_bytes());
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if out.status.success() {
            return Ok(());
        }
        Err(NftError::Failed {
            command: "nft -f -".to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }

    fn read_back(&mut self, family: Family) -> Result<Readback, NftError> {
        let tables = self.output(
            &self.nft,
            &["-j", "list", "tables", table_family(family)],
            NFT_HINT,
        )?;
        let tables = readback::parse(&tables).map_err(|source| NftError::Unreadable {
            command: "nft -j list tables".to_owned(),
            source,
        })?;
        if !readback::has_table(&tables, TABLE) {
            return Ok(Readback::default());
        }
        let args = ["-j", "list", "table", table_family(family), TABLE];
        let json = self.output(&self.nft, &args, NFT_HINT)?;
        let unreadable = |source| NftError::Unreadable {
            command: args.join(" "),
            source,
        };
        let parsed = readback::parse(&json).map_err(unreadable)?;
        let mut back = readback::readback(&parsed);
        let (maps, elements) = readback::slot_readback(&json).map_err(unreadable)?;
        back.existing.sets.extend(maps);
        readback::add_slots(&mut back, &elements);
        Ok(back)
    }

    fn flush_conntrack(&mut self, flow: &StaleFlow) -> Result<(), NftError> {
        let args = conntrack::delete_args(flow);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match self.output(&self.conntrack, &args, CONNTRACK_HINT) {
            Ok(_) => Ok(()),
            // conntrack exits 1 when nothing matched: that is success for us.
            Err(NftError::Failed { stderr, .. }) if stderr.contains("0 flow entries") => Ok(()),
            Err(err) => Err(err),
        }
    }
}

/// What the fake has seen and will do.
#[derive(Debug)]
pub struct FakeNftState {
    /// Every script applied successfully, in order.
    pub applied: Vec<String>,
    /// Every script offered (including refused ones).
    pub offered: Vec<String>,
    /// Conntrack flushes asked for.
    pub flushed: Vec<StaleFlow>,
    /// What `read_back` returns, per family.
    pub readback: Vec<(Family, Readback)>,
    /// Refuse the next this-many scripts.
    pub fail_next: usize,
    /// Refuse every script containing one of these strings (a kernel that rejects one object).
    pub poison: Vec<String>,
    /// What `drift` answers.
    pub drift: Drift,
    /// How often `drift` and `read_names` were asked.
    pub drift_checks: usize,
    pub name_reads: usize,
}

impl Default for FakeNftState {
    fn default() -> Self {
        Self {
            applied: Vec::new(),
            offered: Vec::new(),
            flushed: Vec::new(),
            readback: Vec::new(),
            fail_next: 0,
            poison: Vec::new(),
            drift: Drift::Unknown,
            drift_checks: 0,
            name_reads: 0,
        }
    }
}

/// An in-memory [`NftExecutor`] that records scripts and fails on demand. Clones share state.
#[derive(Debug, Clone, Default)]
pub struct FakeNft {
    state: Arc<Mutex<FakeNftState>>,
}

impl FakeNft {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn state(&self) -> MutexGuard<'_, FakeNftState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl NftExecutor for FakeNft {
    fn apply(&mut self, tx: &Transaction<'_>) -> Result<(), NftError> {
        let script = tx.to_string();
        let mut state = self.state();
        state.offered.push(script.clone());
        let poisoned = state.poison.iter().any(|p| script.contains(p.as_str()));
        if state.fail_next > 0 || poisoned {
            state.fail_next = state.fail_next.saturating_sub(1);
            return Err(NftError::Failed {
                command: "nft -f -".to_owned(),
                stderr: "injected failure".to_owned(),
            });
        }
        state.applied.push(script);
        Ok(())
    }

    fn drift(&mut self) -> Result<Drift, NftError> {
        let mut state = self.state();
        state.drift_checks += 1;
        Ok(state.drift)
    }

    fn read_names(&mut self, family: Family) -> Result<Existing, NftError> {
        self.state().name_reads += 1;
        self.read_back(family).map(|r| r.existing)
    }

    fn read_back(&mut self, family: Family) -> Result<Readback, NftError> {
        let state = self.state();
        Ok(state
            .readback
            .iter()
            .find(|(f, _)| *f == family)
            .map(|(_, r)| r.clone())
            .unwrap_or_default())
    }

    fn flush_conntrack(&mut self, flow: &StaleFlow) -> Result<(), NftError> {
        self.state().flushed.push(*flow);
        Ok(())
    }
}
