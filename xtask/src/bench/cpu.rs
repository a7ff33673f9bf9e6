//! CPU time a process and its descendants have used (from `/proc`), so a proxy's cost per
//! request can be stated next to its request rate: on shared cores the rate moves with the
//! load generator and the pods, the CPU the proxy itself spent per request much less.

use std::collections::HashMap;

/// User + system CPU seconds used so far by `root` and every live process below it (nginx's
/// and HAProxy's workers are children of their master), threads included.
pub fn tree_seconds(root: u32) -> Option<f64> {
    let processes = all_processes();
    processes.get(&root)?;
    let ticks: u64 = descendants(&processes, root)
        .iter()
        .filter_map(|pid| processes.get(pid))
        .map(|(_, ticks)| ticks)
        .sum();
    Some(ticks as f64 / ticks_per_second())
}

/// Every live pid of the tree under `root` (itself included).
pub fn tree_pids(root: u32) -> Vec<u32> {
    descendants(&all_processes(), root)
}

/// `root` and every process below it in `processes`.
fn descendants(processes: &HashMap<u32, (u32, u64)>, root: u32) -> Vec<u32> {
    let mut pids = vec![root];
    let mut i = 0;
    while i < pids.len() {
        let parent = pids[i];
        pids.extend(
            processes
                .iter()
                .filter(|(_, (ppid, _))| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    pids
}

/// pid → (parent pid, utime + stime in clock ticks).
fn all_processes() -> HashMap<u32, (u32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parse_stat(&stat)?))
        })
        .collect()
}

/// (ppid, utime + stime) from a `/proc/PID/stat` line. The command name may hold spaces
/// and parentheses, so fields are counted from its last `)`.
fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) … utime(14) stime(15), numbered as in proc(5).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf takes a plain integer and has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let stat =
            "4242 (nginx: worker (x)) S 4200 4200 4200 0 -1 4194624 100 0 0 0 700 55 0 0 20 0 1 0";
        assert_eq!(parse_stat(stat), Some((4200, 755)));
    }

    #[test]
    fn a_tree_is_its_root_and_everything_below_it() {
        // pid → (ppid, ticks): 10 ← 11 ← 12, 10 ← 13; 20 is another tree.
        let processes = HashMap::from([
            (10, (1, 5)),
            (11, (10, 7)),
            (12, (11, 1)),
            (13, (10, 2)),
            (20, (1, 100)),
        ]);
        let mut tree = descendants(&processes, 10);
        tree.sort_unstable();
        assert_eq!(tree, [10, 11, 12, 13]);
        assert_eq!(descendants(&processes, 12), [12]);
    }

    #[test]
    fn busy_work_shows_up_in_this_process_tree() {
        let before = tree_seconds(std::process::id()).expect("our own /proc entry");
        let started = std::time::Instant::now();
        let mut x = 0u64;
        // Spin until at least two clock ticks' worth of CPU is counted (or give up).
        while tree_seconds(std::process::id()).unwrap_or(0.0) < before + 0.02
            && started.elapsed() < std::time::Duration::from_secs(10)
        {
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
        }
        std::hint::black_box(x);
        let after = tree_seconds(std::process::id()).expect("our own /proc entry");
        assert!(after >= before + 0.02, "{before} → {after}");
    }
}
