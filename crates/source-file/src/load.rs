//! Reading and parsing the files a poll found changed: in parallel when there is enough of
//! them to be worth threads (the first read of a large directory), on the calling thread
//! otherwise (one edited file).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::files::{self, Listed, ReadError, Stamp};
use crate::merge::FileObjects;
use crate::parse::{Limits, ParsedFile, parse_file};
use crate::warning::{LoadWarning, Problem};

/// A file read and parsed: its warnings, and its objects, compacted.
pub(crate) type Loaded = (Vec<LoadWarning>, FileObjects);

/// Below this many bytes to read, threads cost more than they save.
const PARALLEL_BYTES: u64 = 256 << 10;
/// More threads than this only fragment memory (each gets its own malloc arena).
const MAX_THREADS: usize = 4;

/// Reads and parses `files` (in `dir`); one result per file, in order: `None` when the file
/// vanished since it was listed.
pub(crate) fn load_all(dir: &Path, files: &[Listed], limits: &Limits) -> Vec<Option<Loaded>> {
    let bytes: u64 = files
        .iter()
        .map(|listed| match listed.stamp {
            Stamp::File { len, .. } => len,
            Stamp::Problem(_) => 0,
        })
        .sum();
    let one_by_one = |files: &[Listed]| files.iter().map(|f| load(dir, f, limits)).collect();
    if bytes < PARALLEL_BYTES {
        return one_by_one(files);
    }
    // Not asked for a small change: it reads cgroup files.
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_THREADS)
        .min(files.len());
    if threads < 2 {
        return one_by_one(files);
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let Some(listed) = files.get(index) else {
                return done;
            };
            done.push((index, load(dir, listed, limits)));
        }
    };
    let mut results: Vec<Option<Loaded>> = files.iter().map(|_| None).collect();
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut done = work();
        for helper in helpers {
            match helper.join() {
                Ok(theirs) => done.extend(theirs),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        for (index, loaded) in done {
            results[index] = loaded;
        }
    });
    results
}

/// Reads and parses one listed file; `None` when it vanished since the listing.
fn load(dir: &Path, listed: &Listed, limits: &Limits) -> Option<Loaded> {
    let name = &listed.name;
    let parsed = match &listed.stamp {
        Stamp::Problem(problem) => ParsedFile::failed(name, problem.clone()),
        Stamp::File { len, .. } if *len > limits.max_file_size => {
            let problem = Problem::FileTooLarge {
                size: *len,
                limit: limits.max_file_size,
            };
            ParsedFile::failed(name, problem)
        }
        Stamp::File { .. } => match files::read(&dir.join(&listed.file), limits.max_file_size) {
            Ok(bytes) => parse_file(name, &bytes, limits),
            Err(ReadError::Vanished) => return None,
            Err(ReadError::Problem(problem)) => ParsedFile::failed(name, problem),
        },
    };
    let mut parsed = parsed;
    let warnings = std::mem::take(&mut parsed.warnings);
    Some((warnings, FileObjects::new(name.clone(), parsed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(dir: &Path) -> Vec<Listed> {
        files::list(dir).unwrap()
    }

    /// Objects and warnings of each file, in a form that compares.
    fn summary(loaded: &[Option<Loaded>]) -> Vec<(Vec<String>, Vec<String>)> {
        loaded
            .iter()
            .map(|file| {
                let (warnings, objects) = file.as_ref().expect("every file is there");
                let warnings = warnings.iter().map(ToString::to_string).collect();
                let objects = objects
                    .objects
                    .iter()
                    .map(|((kind, key), (object, _))| format!("{kind:?} {key} {object:?}"))
                    .collect();
                (objects, warnings)
            })
            .collect()
    }

    #[test]
    fn many_files_are_read_in_parallel_with_the_same_result_as_one_by_one() {
        let dir = std::env::temp_dir().join(format!("sluice-load-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for file in 0..40 {
            let services: Vec<String> = (0..70)
                .map(|i| {
                    format!(
                        "apiVersion: v1\nkind: Service\nmetadata: {{name: s{}-{i}}}\n\
                         spec: {{clusterIP: 10.96.{file}.{i}, ports: [{{port: 80}}]}}\n",
                        file % 7
                    )
                })
                .collect();
            let mut text = services.join("---\n");
            if file == 13 {
                text.push_str("---\nkind: Service\nmetadata: {name: [\n");
            }
            std::fs::write(dir.join(format!("{file:02}.yaml")), text).unwrap();
        }
        let files = listed(&dir);
        let bytes: u64 = files
            .iter()
            .map(|f| match f.stamp {
                Stamp::File { len, .. } => len,
                Stamp::Problem(_) => 0,
            })
            .sum();
        assert!(
            bytes >= PARALLEL_BYTES,
            "{bytes} bytes: not enough for threads"
        );

        let parallel = load_all(&dir, &files, &Limits::default());
        let one_by_one: Vec<Option<Loaded>> = files
            .iter()
            .map(|f| load(&dir, f, &Limits::default()))
            .collect();
        assert_eq!(summary(&parallel), summary(&one_by_one));
        assert_eq!(summary(&parallel)[13].1.len(), 1, "the broken document");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
