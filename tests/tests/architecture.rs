//! Architecture rules checked against `cargo metadata` (no root, no build needed):
//!
//! * the Plan, the dataplanes and the Ingress proxy know no Kubernetes: `sluice-plan`,
//!   `sluice-dataplane`, `sluice-dp-nft`, `sluice-dp-ebpf` and `sluice-ingress` must not
//!   depend, even transitively through normal dependencies, on `k8s-openapi`, `kube*` or
//!   `sluice-model` — the semantics live in `sluice-compute` and `sluice-routes` alone
//!   (docs/plan.md, docs/ingress.md);
//! * every crate under `crates/` declares `#![forbid(unsafe_code)]` in each library and binary
//!   root, unless it is listed below with the reason it needs `unsafe`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// Crates that must stay free of Kubernetes types (`sluice-ingress` executes the RoutePlan
/// that `sluice-routes` makes).
const KUBERNETES_FREE: &[&str] = &[
    "sluice-plan",
    "sluice-dataplane",
    "sluice-dp-nft",
    "sluice-dp-ebpf",
    "sluice-ingress",
];

/// Packages that bring Kubernetes types.
const KUBERNETES_PACKAGES: &[&str] = &[
    "k8s-openapi",
    "kube",
    "kube-client",
    "kube-core",
    "kube-runtime",
    "sluice-model",
];

/// Crates under `crates/` allowed to use `unsafe`, and why (an ABI needs it).
const UNSAFE_NEEDED: &[(&str, &str)] = &[
    (
        "sluice-dp-ebpf",
        "bpf(2) link syscalls aya lacks, and aya::Pod for the map layouts",
    ),
    (
        "sluice-l2announce",
        "AF_PACKET sockets for ARP/NDP (sockaddr_ll)",
    ),
    (
        "sluice-nftnl",
        "setsockopt(SO_SNDBUFFORCE) so a whole nf_tables batch fits one socket buffer",
    ),
    (
        "sluice-agent",
        "setsockopt(IPV6_V6ONLY) on the health listener; owning the descriptors SCM_RIGHTS \
         delivers (restart handover); malloc_trim after a full sync",
    ),
];

/// Crates that use no `unsafe` but do not declare the forbid yet (their owners add it; the
/// test fails once they do, so this list only shrinks).
const FORBID_PENDING: &[&str] = &[];

/// One package of the workspace's resolved graph.
struct Package {
    name: String,
    manifest_dir: PathBuf,
    /// Library, binary and proc-macro roots (not tests, examples, benches or build scripts).
    roots: Vec<PathBuf>,
    /// Package ids of normal (non-dev, non-build) dependencies.
    normal_deps: Vec<String>,
}

struct Metadata {
    workspace_root: PathBuf,
    packages: BTreeMap<String, Package>,
}

/// Runs `cargo metadata` and keeps what the rules need.
fn metadata() -> Result<Metadata> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(&cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .with_context(|| format!("running {cargo} metadata"))?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let json: Value = serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    parse_metadata(&json)
}

fn str_field<'a>(value: &'a Value, field: &str) -> Result<&'a str> {
    value[field]
        .as_str()
        .with_context(|| format!("cargo metadata: no string {field:?} in {value}"))
}

fn parse_metadata(json: &Value) -> Result<Metadata> {
    let mut packages = BTreeMap::new();
    for pkg in json["packages"].as_array().context("no packages")? {
        let manifest = PathBuf::from(str_field(pkg, "manifest_path")?);
        let roots = pkg["targets"]
            .as_array()
            .context("no targets")?
            .iter()
            .filter(|t| {
                t["kind"].as_array().is_some_and(|kinds| {
                    kinds
                        .iter()
                        .any(|k| matches!(k.as_str(), Some("lib" | "rlib" | "bin" | "proc-macro")))
                })
            })
            .map(|t| str_field(t, "src_path").map(PathBuf::from))
            .collect::<Result<_>>()?;
        packages.insert(
            str_field(pkg, "id")?.to_owned(),
            Package {
                name: str_field(pkg, "name")?.to_owned(),
                manifest_dir: manifest.parent().unwrap_or(Path::new("/")).to_path_buf(),
                roots,
                normal_deps: Vec::new(),
            },
        );
    }
    for node in json["resolve"]["nodes"]
        .as_array()
        .context("no resolve graph")?
    {
        let id = str_field(node, "id")?;
        let deps: Vec<String> = node["deps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|dep| is_normal(dep))
            .map(|dep| str_field(dep, "pkg").map(str::to_owned))
            .collect::<Result<_>>()?;
        if let Some(pkg) = packages.get_mut(id) {
            pkg.normal_deps = deps;
        }
    }
    Ok(Metadata {
        workspace_root: PathBuf::from(str_field(json, "workspace_root")?),
        packages,
    })
}

/// A dependency edge used by normal builds (`kind: null`) on some platform.
fn is_normal(dep: &Value) -> bool {
    dep["dep_kinds"]
        .as_array()
        .is_some_and(|kinds| kinds.iter().any(|k| k["kind"].is_null()))
}

impl Metadata {
    fn id_of(&self, name: &str) -> Result<&str> {
        let mut ids = self.packages.iter().filter(|(_, p)| p.name == name);
        match (ids.next(), ids.next()) {
            (Some((id, _)), None) => Ok(id),
            (None, _) => bail!("package {name} not in cargo metadata"),
            (Some(_), Some(_)) => bail!("package {name} found twice"),
        }
    }

    /// The shortest normal-dependency path from `from` to a package named in `targets`, as
    /// package names (`from` first).
    fn path_to(&self, from: &str, targets: &[&str]) -> Result<Option<Vec<String>>> {
        let start = self.id_of(from)?.to_owned();
        let mut parent: BTreeMap<String, String> = BTreeMap::new();
        let mut seen = BTreeSet::from([start.clone()]);
        let mut queue = VecDeque::from([start.clone()]);
        while let Some(id) = queue.pop_front() {
            let pkg = &self.packages[&id];
            if id != start && targets.contains(&pkg.name.as_str()) {
                let mut path = vec![pkg.name.clone()];
                let mut cursor = id;
                while let Some(up) = parent.get(&cursor) {
                    path.push(self.packages[up].name.clone());
                    cursor = up.clone();
                }
                path.reverse();
                return Ok(Some(path));
            }
            for dep in &pkg.normal_deps {
                if seen.insert(dep.clone()) {
                    parent.insert(dep.clone(), id.clone());
                    queue.push_back(dep.clone());
                }
            }
        }
        Ok(None)
    }

    /// Workspace packages whose manifest lives under `crates/`, by name.
    fn crates_dir_packages(&self) -> BTreeMap<&str, &Package> {
        let crates = self.workspace_root.join("crates");
        self.packages
            .values()
            .filter(|p| p.manifest_dir.starts_with(&crates))
            .map(|p| (p.name.as_str(), p))
            .collect()
    }
}

#[test]
fn plan_dataplanes_and_ingress_proxy_do_not_depend_on_kubernetes_types() -> Result<()> {
    let meta = metadata()?;
    let mut offending = Vec::new();
    for krate in KUBERNETES_FREE {
        if let Some(path) = meta.path_to(krate, KUBERNETES_PACKAGES)? {
            offending.push(path.join(" -> "));
        }
    }
    assert!(
        offending.is_empty(),
        "these crates must not see Kubernetes types (the plan is their only input):\n  {}",
        offending.join("\n  ")
    );
    Ok(())
}

/// The walk finds real paths: the agent does reach k8s-openapi (through compute or kube), and
/// a dev-dependency alone does not count.
#[test]
fn dependency_walk_finds_paths_and_ignores_dev_dependencies() -> Result<()> {
    let meta = metadata()?;
    let path = meta
        .path_to("sluice-agent", &["k8s-openapi"])?
        .context("sluice-agent must reach k8s-openapi")?;
    assert_eq!(path.first().map(String::as_str), Some("sluice-agent"));
    assert_eq!(path.last().map(String::as_str), Some("k8s-openapi"));
    assert!(path.len() >= 2, "{path:?}");
    // sluice-plan has serde_json as a dev-dependency only.
    assert_eq!(meta.path_to("sluice-plan", &["serde_json"])?, None);
    Ok(())
}

/// Whether a crate root declares `#![forbid(unsafe_code)]`.
fn forbids_unsafe(root: &Path) -> Result<bool> {
    let text =
        std::fs::read_to_string(root).with_context(|| format!("reading {}", root.display()))?;
    Ok(text.lines().any(|line| {
        let line = line.trim();
        line.starts_with("#![forbid(") && line.contains("unsafe_code")
    }))
}

/// Whether any Rust source of the crate's `src/` mentions `unsafe` outside comments.
fn uses_unsafe(manifest_dir: &Path) -> Result<bool> {
    let mut pending = vec![manifest_dir.join("src")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path)?;
                let code_mentions = text.lines().any(|l| {
                    let l = l.trim_start();
                    !l.starts_with("//") && l.contains("unsafe")
                });
                if code_mentions {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

#[test]
fn crates_forbid_unsafe_code_unless_an_abi_needs_it() -> Result<()> {
    let meta = metadata()?;
    let crates = meta.crates_dir_packages();
    assert!(crates.len() >= 10, "crates/ not found: {:?}", crates.keys());
    let mut problems = Vec::new();
    for (name, pkg) in &crates {
        let needed = UNSAFE_NEEDED.iter().any(|(n, _)| n == name);
        let pending = FORBID_PENDING.contains(name);
        let mut missing = Vec::new();
        for root in &pkg.roots {
            if !forbids_unsafe(root)? {
                missing.push(root.display().to_string());
            }
        }
        let problem = if missing.is_empty() {
            match (needed, pending) {
                (true, _) => Some(format!(
                    "{name} forbids unsafe code: remove it from UNSAFE_NEEDED"
                )),
                (_, true) => Some(format!(
                    "{name} forbids unsafe code: remove it from FORBID_PENDING"
                )),
                _ => None,
            }
        } else if needed {
            None
        } else if pending {
            uses_unsafe(&pkg.manifest_dir)?.then(|| {
                format!(
                    "{name} is listed in FORBID_PENDING but uses unsafe: list it in \
                     UNSAFE_NEEDED with the reason, or remove the unsafe"
                )
            })
        } else {
            Some(format!(
                "{name}: add #![forbid(unsafe_code)] to {} (or list it in UNSAFE_NEEDED with \
                 the ABI that needs unsafe)",
                missing.join(", ")
            ))
        };
        problems.extend(problem);
    }
    for (name, _) in UNSAFE_NEEDED {
        if !crates.contains_key(name) {
            problems.push(format!(
                "UNSAFE_NEEDED names {name}, which is not under crates/"
            ));
        }
    }
    assert!(problems.is_empty(), "\n  {}", problems.join("\n  "));
    Ok(())
}
