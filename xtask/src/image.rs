//! `cargo xtask image [--debug] [--refresh-base]`: the agent's container image, built with
//! no registry at hand (only Debian's package archive), then checked by running it.
//!
//! 1. the agent binary (`cargo build --release -p sluice-agent`; `--debug`: the dev build),
//!    without debug information (`strip --strip-debug`);
//! 2. the base filesystem: Debian bookworm's essential packages plus the runtime packages the
//!    `Dockerfile` installs, by `mmdebstrap` from deb.debian.org (cached in `target/image/`
//!    until the package list changes, or `--refresh-base`);
//! 3. the image, `buildah from scratch` + that filesystem + `/usr/local/bin/sluice`, entrypoint
//!    `sluice`, command `agent` (as the Dockerfile's), tagged `docker.io/library/sluice:dev`
//!    and written to `target/image/sluice-image.tar` (docker-archive: `kind load
//!    image-archive`, `docker load`, `ctr images import`);
//! 4. a check inside it: `sluice --version`, the runtime tools, and `sluice plan` on a
//!    directory of manifests giving the same output as the host's binary — with `podman run`,
//!    or, where no container can be started here, in a chroot of the same filesystem
//!    (`unshare --root`), saying so.
//!
//! buildah, podman and mmdebstrap come from Debian packages (installed as root when missing).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{cargo, run, system, workspace_root};

/// What the image installs besides Debian's essential packages (the Dockerfile's list).
pub const RUNTIME_PACKAGES: &[&str] = &[
    "nftables",
    "conntrack",
    "iptables",
    "iproute2",
    "ca-certificates",
];
const SUITE: &str = "bookworm";
const MIRRORS: &[&str] = &[
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
];
pub const TAG: &str = "docker.io/library/sluice:dev";
const TOOLS: &[(&str, &str)] = &[
    ("bin:strip", "binutils"),
    ("bin:buildah", "buildah"),
    ("bin:podman", "podman"),
    ("bin:mmdebstrap", "mmdebstrap"),
    ("bin:unshare", "util-linux"),
];

pub fn run_image(args: &[String]) -> Result<()> {
    let debug = args.iter().any(|a| a == "--debug");
    let refresh = args.iter().any(|a| a == "--refresh-base");
    if !system::is_root() {
        bail!("cargo xtask image needs root (mmdebstrap and buildah write root-owned files)");
    }
    system::ensure(TOOLS)?;
    let dir = workspace_root().join("target/image");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let binary = stripped(&build_binary(debug)?, &dir)?;
    let rootfs = base_filesystem(&dir, refresh)?;
    let previous = output(Command::new("buildah").args(["images", "--quiet", TAG])).ok();
    build(&rootfs, &binary)?;
    // The image this one replaces would stay behind untagged.
    if let Some(old) = previous.filter(|id| !id.is_empty()) {
        let _ = Command::new("buildah").args(["rmi", &old]).output();
    }
    let archive = dir.join("sluice-image.tar");
    let _ = std::fs::remove_file(&archive);
    run(Command::new("buildah").args([
        "push",
        "--quiet",
        TAG,
        &format!("docker-archive:{}:{TAG}", archive.display()),
    ]))?;
    let size = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
    println!(
        "image {TAG}: {} ({} MB)",
        archive.display(),
        size / 1_000_000
    );
    check(&dir, &rootfs, &binary)
}

fn build_binary(debug: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--locked", "-p", "sluice-agent"]);
    if !debug {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let profile = if debug { "debug" } else { "release" };
    Ok(workspace_root().join("target").join(profile).join("sluice"))
}

/// A copy of the binary without its DWARF line tables (the release profile keeps them for
/// backtraces; the symbols stay, so panics still name functions): half the size.
fn stripped(binary: &Path, dir: &Path) -> Result<PathBuf> {
    let copy = dir.join("sluice");
    std::fs::copy(binary, &copy).with_context(|| format!("copying {}", binary.display()))?;
    run(Command::new("strip").arg("--strip-debug").arg(&copy))?;
    Ok(copy)
}

/// The package list the cached filesystem was made from.
fn base_stamp() -> String {
    format!("{SUITE} essential + {}\n", RUNTIME_PACKAGES.join(","))
}

/// Debian's essential packages and [`RUNTIME_PACKAGES`], as a tarball (cached).
fn base_filesystem(dir: &Path, refresh: bool) -> Result<PathBuf> {
    let tarball = dir.join("base-rootfs.tar");
    let stamp = dir.join("base-rootfs.packages");
    let fresh = std::fs::read_to_string(&stamp).is_ok_and(|s| s == base_stamp());
    if tarball.exists() && fresh && !refresh {
        println!("base filesystem: {} (cached)", tarball.display());
        return Ok(tarball);
    }
    let mut cmd = Command::new("mmdebstrap");
    cmd.args([
        "--variant=essential",
        &format!("--include={}", RUNTIME_PACKAGES.join(",")),
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        SUITE,
    ])
    .arg(&tarball)
    .args(MIRRORS);
    run(&mut cmd).context("building the base filesystem from Debian packages")?;
    std::fs::write(&stamp, base_stamp())?;
    Ok(tarball)
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    ensure!(
        out.status.success(),
        "{shown} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `buildah from scratch` + the filesystem + the binary, committed as [`TAG`].
fn build(rootfs: &Path, binary: &Path) -> Result<()> {
    let ctr = output(Command::new("buildah").args(["from", "scratch"]))?;
    let steps = || -> Result<()> {
        run(Command::new("buildah")
            .args(["add", "--quiet", &ctr])
            .arg(rootfs)
            .arg("/"))?;
        run(Command::new("buildah")
            .args(["copy", "--quiet", "--chmod", "0755", &ctr])
            .arg(binary)
            .arg("/usr/local/bin/sluice"))?;
        run(Command::new("buildah").args([
            "config",
            "--entrypoint",
            r#"["/usr/local/bin/sluice"]"#,
            "--cmd",
            "agent",
            "--label",
            "org.opencontainers.image.title=sluice",
            "--label",
            "org.opencontainers.image.source=https://github.com/sluice-dev/sluice",
            &ctr,
        ]))?;
        run(Command::new("buildah").args(["commit", "--quiet", "--rm", &ctr, TAG]))
    };
    let result = steps();
    if result.is_err() {
        let _ = Command::new("buildah").args(["rm", &ctr]).output();
    }
    result
}

/// Runs commands inside the image: `podman run`, else a chroot of its filesystem.
enum Runner {
    Podman,
    Chroot(PathBuf),
}

impl Runner {
    fn exec(&self, args: &[&str], volume: Option<(&Path, &str)>) -> std::io::Result<Output> {
        match self {
            Runner::Podman => {
                let mut cmd = Command::new("podman");
                cmd.args(["run", "--rm", "--network=none"]);
                if let Some((host, inside)) = volume {
                    cmd.arg("-v").arg(format!("{}:{inside}:ro", host.display()));
                }
                cmd.args(["--entrypoint", args[0], TAG]).args(&args[1..]);
                cmd.output()
            }
            Runner::Chroot(root) => {
                if let Some((host, inside)) = volume {
                    let target = root.join(inside.trim_start_matches('/'));
                    let _ = std::fs::remove_dir_all(&target);
                    copy_dir(host, &target)?;
                }
                Command::new("unshare")
                    .args(["--mount", "--pid", "--fork", "--root"])
                    .arg(root)
                    .args(args)
                    .output()
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Runner::Podman => format!("podman run {TAG}"),
            Runner::Chroot(root) => format!("chroot {} (unshare --root)", root.display()),
        }
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

/// `podman run` when a container can be started here, else the chroot.
fn runner(dir: &Path, rootfs: &Path, binary: &Path) -> Result<Runner> {
    let probe = Runner::Podman.exec(&["/usr/local/bin/sluice", "--version"], None);
    match probe {
        Ok(out) if out.status.success() => return Ok(Runner::Podman),
        Ok(out) => eprintln!(
            "podman run does not work here ({}): {}\nchecking in a chroot of the image's filesystem instead",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => eprintln!("podman run: {err}; checking in a chroot instead"),
    }
    let root = dir.join("rootfs-check");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    run(Command::new("tar")
        .arg("-xf")
        .arg(rootfs)
        .arg("-C")
        .arg(&root))?;
    std::fs::copy(binary, root.join("usr/local/bin/sluice"))?;
    Ok(Runner::Chroot(root))
}

fn checked(runner: &Runner, args: &[&str], volume: Option<(&Path, &str)>) -> Result<String> {
    let out = runner
        .exec(args, volume)
        .with_context(|| format!("{}: {args:?}", runner.describe()))?;
    ensure!(
        out.status.success(),
        "{}: {args:?} failed ({}): {}",
        runner.describe(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `sluice --version`, the runtime tools, and `sluice plan` equal to the host binary's.
fn check(dir: &Path, rootfs: &Path, binary: &Path) -> Result<()> {
    let runner = runner(dir, rootfs, binary)?;
    println!("checking inside the image: {}", runner.describe());
    let version = checked(&runner, &["/usr/local/bin/sluice", "--version"], None)?;
    println!("  sluice --version: {}", version.trim());
    for tool in ["nft", "conntrack", "iptables-nft", "iptables-legacy"] {
        let out = checked(&runner, &[tool, "--version"], None)?;
        println!(
            "  {tool} --version: {}",
            out.lines().next().unwrap_or("").trim()
        );
    }
    let objects = dir.join("plan-input");
    std::fs::create_dir_all(&objects)?;
    std::fs::copy(
        workspace_root().join("crates/agent/src/inspect/testdata/ebpf-objects.yaml"),
        objects.join("objects.yaml"),
    )?;
    let plan_args = [
        "plan",
        "--source",
        "dir:/objects",
        "--hostname-override",
        "node-a",
        "--cluster-cidr",
        "10.244.0.0/16",
    ];
    let mut inside = vec!["/usr/local/bin/sluice"];
    inside.extend(plan_args);
    let in_image = checked(&runner, &inside, Some((&objects, "/objects")))?;
    let host_source = format!("dir:{}", objects.display());
    let mut host_args: Vec<&str> = plan_args.to_vec();
    host_args[2] = &host_source;
    let on_host = output(Command::new(binary).args(&host_args))?;
    ensure!(
        in_image.trim() == on_host.trim(),
        "sluice plan differs inside the image:\n{in_image}\n--- host ---\n{on_host}"
    );
    println!(
        "  sluice plan --source dir:/objects ...: {} lines, identical to the host binary's",
        in_image.lines().count()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Dockerfile and this builder install the same runtime packages.
    #[test]
    fn dockerfile_installs_the_same_runtime_packages() {
        let text = std::fs::read_to_string(workspace_root().join("Dockerfile")).unwrap();
        let runtime = text.split("\nFROM ").last().expect("a runtime stage");
        let line = runtime
            .lines()
            .find(|l| l.contains("apt-get install"))
            .expect("an apt-get install line");
        let mut listed: Vec<&str> = line
            .split_whitespace()
            .skip_while(|w| *w != "--no-install-recommends")
            .skip(1)
            .take_while(|w| *w != "\\" && *w != "&&")
            .collect();
        listed.sort_unstable();
        let mut ours = RUNTIME_PACKAGES.to_vec();
        ours.sort_unstable();
        assert_eq!(listed, ours);
        assert!(runtime.contains(r#"ENTRYPOINT ["/usr/local/bin/sluice"]"#));
        assert!(runtime.contains(r#"CMD ["agent"]"#));
    }
}
