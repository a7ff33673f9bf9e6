//! The one netfilter rule the eBPF mode relies on: masquerade packets tc marked with
//! [`abi::MASQ_MARK`] (a port allocator in BPF is avoided; nf_conntrack un-NATs replies).

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::abi;

/// Name of the nftables table holding the masquerade rule.
pub const NFT_TABLE: &str = "sluice_ebpf";

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft")]
    Spawn {
        #[source]
        source: std::io::Error,
    },
    #[error("nft refused the script: {stderr}")]
    Refused { stderr: String },
}

/// Installs (or replaces, atomically) the masquerade rule.
pub fn install() -> Result<(), NftError> {
    run_nft(&format!(
        "table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n\
         table inet {NFT_TABLE} {{\n chain postrouting {{\n  type nat hook postrouting priority srcnat; policy accept;\n  meta mark & {m:#x} == {m:#x} masquerade\n }}\n}}\n",
        m = abi::MASQ_MARK
    ))
}

/// Removes the rule's table (nothing when it is absent).
pub fn remove() {
    let _ = run_nft(&format!(
        "table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n"
    ));
}

fn run_nft(script: &str) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NftError::Spawn { source })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|source| NftError::Spawn { source })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| NftError::Spawn { source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Refused {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}
