//! `check_support` (for `--proxy-mode auto`) and `cleanup` without a running dataplane.
//! Needs root (skipped otherwise).

mod common;

use anyhow::Result;
use common::*;
use sluice_dataplane::Dataplane;
use sluice_dp_ebpf::{EbpfDataplane, check_support};

#[test]
fn supported_here_and_clear_reason_otherwise() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let cg = TestCgroup::new()?;
    let config = ebpf_config(&cg, vec![]);
    if let Err(err) = check_support(&config) {
        panic!("unsupported: {}", sluice_dataplane::error_chain(&err));
    }
    // The probe leaves nothing behind.
    let leftovers: Vec<_> = std::fs::read_dir("/sys/fs/bpf")?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("sluice-check-{}", std::process::id()))
        })
        .collect();
    assert!(leftovers.is_empty());

    let mut bad = config.clone();
    bad.cgroup_path = std::env::temp_dir();
    let reason = check_support(&bad).expect_err("not a cgroup");
    assert!(
        matches!(reason, sluice_dp_ebpf::Unsupported::NotCgroup2 { .. }),
        "{reason}"
    );
    assert!(reason.to_string().contains("cgroup v2"), "{reason}");
    Ok(())
}

#[test]
fn cleanup_without_a_dataplane_unpins_everything_and_is_idempotent() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let ns = Netns::new("k")?;
    let cg = TestCgroup::new()?;
    let config = ebpf_config(&cg, vec![]);
    let _guard = PinGuard {
        config: config.clone(),
        ns: ns.name.clone(),
    };
    let c2 = config.clone();
    in_ns(&ns.name, move || -> Result<()> {
        let mut dp = EbpfDataplane::new(c2)?;
        dp.restore()?;
        Ok(())
    })?;
    assert!(config.bpffs_path.join("sl_svc_v1").exists());
    assert!(config.bpffs_path.join("links/cg_sl_connect4").exists());
    let c3 = config.clone();
    in_ns(&ns.name, move || sluice_dp_ebpf::cleanup(&c3))?;
    assert!(!config.bpffs_path.exists());
    let c4 = config.clone();
    in_ns(&ns.name, move || sluice_dp_ebpf::cleanup(&c4))?;
    Ok(())
}
