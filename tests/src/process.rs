//! Running programs inside a namespace (and a node's cgroup), with timeouts and log files.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// Where a process runs: a network namespace and optionally a cgroup v2 directory.
#[derive(Debug, Clone)]
pub(crate) struct Place {
    /// `/run/netns/NAME`.
    pub netns: PathBuf,
    /// A cgroup v2 directory the process joins before exec (the node's, for socket-LB).
    pub cgroup: Option<PathBuf>,
}

/// Environment variables that would send curl & co. to a proxy outside the namespaces.
const PROXY_VARS: [&str; 8] = [
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
];

/// Spawns `cmd` inside `place`: setns(2) into the network namespace (only the network
/// namespace: unlike `ip netns exec` this keeps the host's /sys and bpffs visible) and joins
/// the cgroup, both between fork and exec.
pub(crate) fn spawn_in(place: &Place, cmd: &mut Command) -> Result<Child> {
    let ns = File::open(&place.netns)
        .with_context(|| format!("opening network namespace {}", place.netns.display()))?;
    let cgroup = match &place.cgroup {
        Some(dir) => Some(
            OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
                .with_context(|| format!("opening {}/cgroup.procs", dir.display()))?,
        ),
        None => None,
    };
    let ns_fd = ns.as_raw_fd();
    let cgroup_fd = cgroup.as_ref().map(|f| f.as_raw_fd());
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    // Logs go to files: no colour escapes (tracing-subscriber honours NO_COLOR).
    cmd.env("NO_COLOR", "1");
    // SAFETY: the closure only makes async-signal-safe syscalls (setns, write) on fds that
    // stay open in the parent until spawn returns, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = cgroup_fd {
                // "0" moves the writing process itself.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("spawning {cmd:?} in {}", place.netns.display()))?;
    drop(ns);
    drop(cgroup);
    Ok(child)
}

/// Runs `cmd` in `place` to completion, with stdin from `input`; kills it after `timeout`.
pub(crate) fn output_in(
    place: &Place,
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = spawn_in(place, cmd)?;
    wait_output(child, input, timeout).with_context(|| format!("running {cmd:?}"))
}

/// Runs a host command (e.g. `ip`) and fails with its stderr if it fails.
pub(crate) fn run_host(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .with_context(|| format!("spawning {program} (is it installed?)"))?;
    let out = wait_output(child, input.map(str::as_bytes), Duration::from_secs(30))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            input.map(|i| format!("\ninput:\n{i}")).unwrap_or_default()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_output(mut child: Child, input: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        let data = data.to_vec();
        // A separate thread so a child that does not read cannot block us.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let out_reader = child.stdout.take().map(read_all_thread);
    let err_reader = child.stderr.take().map(read_all_thread);
    let status = wait_timeout(&mut child, timeout)?;
    let collect = |r: Option<std::thread::JoinHandle<Vec<u8>>>| {
        r.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    };
    match status {
        Some(status) => Ok(Output {
            status,
            stdout: collect(out_reader),
            stderr: collect(err_reader),
        }),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(anyhow!(
                "timed out after {timeout:?}; stdout: {}; stderr: {}",
                String::from_utf8_lossy(&collect(out_reader)),
                String::from_utf8_lossy(&collect(err_reader))
            ))
        }
    }
}

fn read_all_thread(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Waits for `child` up to `timeout`; `None` if it is still running.
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for child")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `signal` to a process by pid (ignores "no such process").
pub(crate) fn signal(pid: u32, signal: i32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// A long-running process (agent, echo pod) whose output goes to a log file. Killed on drop.
#[derive(Debug)]
pub(crate) struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Spawns with stdout and stderr appended to `log`.
    pub fn spawn(place: &Place, cmd: &mut Command, log: &Path) -> Result<Daemon> {
        let file = log_file(log)?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().context("dup log file")?)
            .stderr(file);
        let child = spawn_in(place, cmd)?;
        Ok(Daemon {
            child,
            log: log.to_owned(),
        })
    }

    /// Spawns, copies stdout lines to `log`, and waits until a stdout line equals `ready`.
    pub fn spawn_until_line(
        place: &Place,
        cmd: &mut Command,
        log: &Path,
        ready: &str,
        timeout: Duration,
    ) -> Result<Daemon> {
        let mut file = log_file(log)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file.try_clone().context("dup log file")?);
        let mut child = spawn_in(place, cmd)?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = mpsc::channel();
        let ready = ready.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == ready {
                    let _ = tx.send(());
                }
                let _ = writeln!(file, "{line}");
            }
        });
        let mut daemon = Daemon {
            child,
            log: log.to_owned(),
        };
        let deadline = Instant::now() + timeout;
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(()) => return Ok(daemon),
                Err(mpsc::RecvTimeoutError::Disconnected)
                | Err(mpsc::RecvTimeoutError::Timeout)
                    if daemon.exited() =>
                {
                    bail!("{cmd:?} exited before it was ready:\n{}", daemon.log_text())
                }
                Err(_) if Instant::now() >= deadline => {
                    bail!(
                        "{cmd:?} not ready after {timeout:?}:\n{}",
                        daemon.log_text()
                    )
                }
                Err(_) => {}
            }
        }
    }

    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn log_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening log {}", path.display()))
}
