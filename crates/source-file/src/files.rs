//! Listing and reading the manifest files of a directory.
//!
//! Symlinks are followed, so a ConfigMap volume works: each key is a symlink
//! `name.yaml -> ..data/name.yaml` and `..data` is a symlink to a timestamped directory that
//! the kubelet swaps atomically. Dot-entries (`..data`, `..2026_05_01...`, editor temp files)
//! are never read themselves, so nothing is read twice. Subdirectories are not read (like
//! `kubectl apply -f DIR` without `-R`). A symlink cycle cannot hang the scan: the kernel
//! refuses to resolve it (ELOOP) and the file gets a warning.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::warning::Problem;

/// A manifest file found in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    /// The name in the directory (the symlink's, not its target's), exactly: what identifies
    /// the file.
    pub file: OsString,
    /// The same name as text, for warnings.
    pub name: String,
    pub stamp: Stamp,
}

/// What identifies a version of a file without reading it. Two equal stamps mean the file
/// need not be read again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stamp {
    File {
        len: u64,
        mtime_ns: i128,
        inode: u64,
        device: u64,
        /// Where a symlink resolves to: re-pointing `..data` changes it even when the new
        /// file has the same size and time as the old one.
        target: Option<PathBuf>,
    },
    /// Not readable as a manifest; reported once until the problem changes.
    Problem(Problem),
}

/// Lists `*.yaml`, `*.yml` and `*.json` entries, sorted by name, following symlinks. One
/// `stat` per file (and a path resolution per symlink): every poll pays this, so nothing else
/// happens per file here.
pub(crate) fn list(dir: &Path) -> std::io::Result<Vec<Listed>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file = entry.file_name();
        let is_manifest = Path::new(&file)
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json");
        // Editors, atomic writers and ConfigMap volumes keep their machinery in dot-entries.
        if !is_manifest || file.as_bytes().starts_with(b".") {
            continue;
        }
        let is_symlink = entry.file_type().is_ok_and(|t| t.is_symlink());
        if let Some(stamp) = stamp(&entry.path(), is_symlink) {
            let name = file.to_string_lossy().into_owned();
            files.push(Listed { file, name, stamp });
        }
    }
    files.sort_unstable_by(|a, b| a.file.cmp(&b.file));
    Ok(files)
}

/// `None` when the file vanished since the directory was listed (a rename in progress).
fn stamp(path: &Path, is_symlink: bool) -> Option<Stamp> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && is_symlink => {
            let target = std::fs::read_link(path).unwrap_or_default();
            let target = target.to_string_lossy().into_owned();
            return Some(Stamp::Problem(Problem::DanglingSymlink { target }));
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
        Err(err) if is_symlink => {
            let reason = err.to_string();
            return Some(Stamp::Problem(Problem::BrokenSymlink { reason }));
        }
        Err(err) => {
            let reason = err.to_string();
            return Some(Stamp::Problem(Problem::Unreadable { reason }));
        }
    };
    if !meta.is_file() {
        let what = describe(meta.file_type());
        return Some(Stamp::Problem(Problem::NotRegularFile { what }));
    }
    Some(Stamp::File {
        len: meta.len(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        inode: meta.ino(),
        device: meta.dev(),
        target: is_symlink
            .then(|| std::fs::canonicalize(path).ok())
            .flatten(),
    })
}

fn describe(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory; subdirectories are not read"
    } else if file_type.is_fifo() {
        "a named pipe"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() || file_type.is_block_device() {
        "a device"
    } else {
        "not a file"
    }
}

pub(crate) enum ReadError {
    /// Gone since it was listed: the next poll sees the directory as it is now.
    Vanished,
    Problem(Problem),
}

/// Reads a whole file of at most `max_size` bytes. A larger file is refused after reading at
/// most `max_size + 1` bytes, so an oversized (or growing) file never sits in memory.
pub(crate) fn read(path: &Path, max_size: u64) -> Result<Vec<u8>, ReadError> {
    let unreadable = |err: std::io::Error| match err.kind() {
        std::io::ErrorKind::NotFound => ReadError::Vanished,
        _ => ReadError::Problem(Problem::Unreadable {
            reason: err.to_string(),
        }),
    };
    // Non-blocking open: a file swapped for a named pipe after listing must not block us.
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        let what = describe(meta.file_type());
        return Err(ReadError::Problem(Problem::NotRegularFile { what }));
    }
    let too_large = |size: u64| {
        ReadError::Problem(Problem::FileTooLarge {
            size,
            limit: max_size,
        })
    };
    if meta.len() > max_size {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max_size.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > max_size {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_over_the_limit_is_refused_and_a_vanished_one_is_not_an_error() {
        let dir = std::env::temp_dir().join(format!("sluice-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.yaml");
        std::fs::write(&path, "x".repeat(100)).unwrap();
        assert_eq!(read(&path, 100).ok(), Some(vec![b'x'; 100]));
        match read(&path, 99) {
            Err(ReadError::Problem(Problem::FileTooLarge { size, limit })) => {
                assert_eq!((size, limit), (100, 99));
            }
            _ => panic!("100 bytes accepted with a limit of 99"),
        }
        assert!(matches!(
            read(&dir.join("gone.yaml"), 100),
            Err(ReadError::Vanished)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
