//! The pin directory (`--bpffs-path`): making sure it is on a bpffs, which pin holds each
//! map, and removing everything sluice pinned.
//!
//! Map pins are versioned by layout (`_v1`) and by *generation*: the first generation of a
//! map is pinned under its plain name (`sl_svc_v1`), a map grown later under `sl_svc_v1_g2`,
//! `sl_svc_v1_g3`, ... (bpffs refuses dots in names). A new generation is filled under
//! `<name>_new` and renamed into place before the programs switch to it, so after a crash the
//! highest generation is always a complete map, and `_new` pins are leftovers to remove.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::abi::MapKind;
use crate::kernel::sys;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
pub const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// Suffix of a generation being filled.
const FILLING: &str = "_new";

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("{dir} is not on a bpf file system")]
    NotBpffs { dir: PathBuf },
    #[error("cannot mount a bpf file system on /sys/fs/bpf")]
    Mount {
        #[source]
        source: io::Error,
    },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BpffsError + 'a {
    move |source| BpffsError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Makes sure `dir` is on a bpffs (mounting one at /sys/fs/bpf if needed) and exists, with
/// its `links/` subdirectory.
pub fn ensure_bpffs(dir: &Path) -> Result<(), BpffsError> {
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if sys::fs_magic(&probe) != Some(BPF_FS_MAGIC) {
        let root = Path::new("/sys/fs/bpf");
        if !dir.starts_with(root) {
            return Err(BpffsError::NotBpffs {
                dir: dir.to_path_buf(),
            });
        }
        if sys::fs_magic(root) != Some(BPF_FS_MAGIC) {
            sys::mount_bpffs().map_err(|source| BpffsError::Mount { source })?;
        }
    }
    let links = dir.join("links");
    std::fs::create_dir_all(&links).map_err(io_err("create", &links))
}

/// The cgroup2 mount point, from /proc/self/mounts (hybrid hosts mount it at
/// /sys/fs/cgroup/unified).
pub fn find_cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, ty) = (f.next()?, f.next()?, f.next()?);
        (ty == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// A map's pin name in generation `generation`.
fn pin_name(map: MapKind, generation: u32) -> String {
    if generation <= 1 {
        map.name().to_owned()
    } else {
        format!("{}_g{generation}", map.name())
    }
}

/// The generation a file name is of `map`'s, if it is one (filling pins excluded).
fn generation_of(map: MapKind, file: &str) -> Option<u32> {
    let rest = file.strip_prefix(map.name())?;
    if rest.is_empty() {
        return Some(1);
    }
    rest.strip_prefix("_g")?.parse().ok().filter(|g| *g > 1)
}

/// Which pin each map lives in.
#[derive(Debug, Clone)]
pub struct Pins {
    dir: PathBuf,
    generation: BTreeMap<MapKind, u32>,
}

impl Pins {
    /// Finds the current generation of every map under `dir` (generation 1 for maps not
    /// pinned yet) and removes filling pins a crash left.
    pub fn scan(dir: &Path) -> Result<Pins, BpffsError> {
        let names = file_names(dir)?;
        for name in &names {
            if name.ends_with(FILLING) && name.starts_with("sl_") {
                let path = dir.join(name);
                std::fs::remove_file(&path).map_err(io_err("remove", &path))?;
            }
        }
        let mut generation = current_generations(&names);
        for map in MapKind::ALL {
            generation.entry(map).or_insert(1);
        }
        Ok(Pins {
            dir: dir.to_path_buf(),
            generation,
        })
    }

    /// The pins as they are, changing nothing (a running agent may be filling a `_new`
    /// generation right now): `None` when `dir` does not exist or holds no frontend map.
    /// Maps without a pin are at generation 1 (opening them then fails, naming the path).
    pub fn existing(dir: &Path) -> io::Result<Option<Pins>> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for entry in entries {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        let mut generation = current_generations(&names);
        if !generation.contains_key(&MapKind::Svc) {
            return Ok(None);
        }
        for map in MapKind::ALL {
            generation.entry(map).or_insert(1);
        }
        Ok(Some(Pins {
            dir: dir.to_path_buf(),
            generation,
        }))
    }

    pub fn path(&self, map: MapKind) -> PathBuf {
        self.dir.join(pin_name(map, self.generation[&map]))
    }

    /// Where the next generation of `map` is filled, and where it then goes.
    pub fn next(&self, map: MapKind) -> (PathBuf, PathBuf) {
        let next = pin_name(map, self.generation[&map] + 1);
        (
            self.dir.join(format!("{next}{FILLING}")),
            self.dir.join(next),
        )
    }

    /// Records that `map` moved to its next generation.
    pub fn advance(&mut self, map: MapKind) {
        if let Some(g) = self.generation.get_mut(&map) {
            *g += 1;
        }
    }

    /// Removes pins of older generations (left by a crash between switching the programs to
    /// a new generation and unpinning the old one).
    pub fn remove_older(&self) -> Result<(), BpffsError> {
        for name in file_names(&self.dir)? {
            for map in MapKind::ALL {
                if generation_of(map, &name).is_some_and(|g| g < self.generation[&map]) {
                    let path = self.dir.join(&name);
                    std::fs::remove_file(&path).map_err(io_err("remove", &path))?;
                }
            }
        }
        Ok(())
    }
}

/// The highest complete generation of each map pinned among `names` (filling pins excluded).
fn current_generations(names: &[String]) -> BTreeMap<MapKind, u32> {
    let mut generation: BTreeMap<MapKind, u32> = BTreeMap::new();
    for name in names {
        for map in MapKind::ALL {
            if let Some(g) = generation_of(map, name) {
                let current = generation.entry(map).or_insert(g);
                *current = (*current).max(g);
            }
        }
    }
    generation
}

fn file_names(dir: &Path) -> Result<Vec<String>, BpffsError> {
    let entries = std::fs::read_dir(dir).map_err(io_err("list", dir))?;
    Ok(entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

/// Unpins every link (detaching it) and removes every map pin and the directory.
pub fn remove_pins(dir: &Path) {
    let links = dir.join("links");
    if let Ok(entries) = std::fs::read_dir(&links) {
        for entry in entries.flatten() {
            // Removing the pin drops the last reference: the link detaches.
            let path = entry.path();
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot unpin link");
            }
        }
    }
    let _ = std::fs::remove_dir(&links);
    for name in file_names(dir).unwrap_or_default() {
        if name.starts_with("sl_") {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_are_recognised_by_name() {
        assert_eq!(generation_of(MapKind::Svc, "sl_svc_v1"), Some(1));
        assert_eq!(generation_of(MapKind::Svc, "sl_svc_v1_g3"), Some(3));
        assert_eq!(generation_of(MapKind::Svc, "sl_svc_v1_g3_new"), None);
        assert_eq!(generation_of(MapKind::Svc, "sl_svc_v2"), None);
        assert_eq!(generation_of(MapKind::Slot, "sl_svc_v1"), None);
        assert_eq!(pin_name(MapKind::Ct, 1), "sl_ct_v1");
        assert_eq!(pin_name(MapKind::Ct, 2), "sl_ct_v1_g2");
    }

    #[test]
    fn existing_pins_are_found_without_touching_a_generation_being_filled() {
        let dir = std::env::temp_dir().join(format!("sluice-pins-{}", std::process::id()));
        assert!(Pins::existing(&dir).unwrap().is_none(), "no directory");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("sl_ct_v1"), "").unwrap();
        assert!(Pins::existing(&dir).unwrap().is_none(), "no frontend map");
        for name in ["sl_svc_v1", "sl_svc_v1_g3", "sl_svc_v1_g4_new"] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let pins = Pins::existing(&dir).unwrap().expect("pinned");
        assert_eq!(pins.path(MapKind::Svc), dir.join("sl_svc_v1_g3"));
        assert_eq!(pins.path(MapKind::Ct), dir.join("sl_ct_v1"));
        assert_eq!(pins.path(MapKind::Slot), dir.join("sl_slot_v1"));
        assert!(dir.join("sl_svc_v1_g4_new").exists(), "left for its writer");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
