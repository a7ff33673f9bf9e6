//! Oversized files are refused without being read. Alone in its own test binary so the peak
//! memory it measures is its own.

use sluice_source_file::{DEFAULT_MAX_FILE_SIZE, Problem, load_dir};

/// Peak resident memory of this process so far, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn a_512_mib_file_is_skipped_without_being_read() {
    let dir = std::env::temp_dir().join(format!("sluice-large-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let good =
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n";
    std::fs::write(dir.join("good.yaml"), good).unwrap();
    // Sparse: costs no disk, but reading it would cost 512 MiB of memory.
    let huge = std::fs::File::create(dir.join("huge.yaml")).unwrap();
    huge.set_len(512 << 20).unwrap();

    let before = peak_rss();
    let (snapshot, warnings) = load_dir(&dir).unwrap();
    let grown = peak_rss().saturating_sub(before);

    assert_eq!(snapshot.services.len(), 1);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].file, "huge.yaml");
    assert_eq!(
        warnings[0].problem,
        Problem::FileTooLarge {
            size: 512 << 20,
            limit: DEFAULT_MAX_FILE_SIZE
        }
    );
    assert_eq!(
        warnings[0].to_string(),
        "huge.yaml: file is 536870912 bytes, more than the limit of 8388608 bytes; skipped \
         without reading it"
    );
    assert!(grown < 64 << 20, "peak memory grew by {grown} bytes");

    std::fs::remove_dir_all(&dir).unwrap();
}
