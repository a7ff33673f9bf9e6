//! Continuous traffic while something else happens (agent restarts, API server outages): each
//! stream runs on its own thread, owns what it needs (no borrow of the [`Cluster`], so the test
//! can kill and restart agents meanwhile) and counts what succeeded and what failed.
//!
//! ```no_run
//! # use sluice_tests::{At, Cluster, Proto, Traffic};
//! # fn main() -> anyhow::Result<()> {
//! # let mut c = Cluster::new(&["node-a"])?;
//! let mut traffic = Traffic::default();
//! traffic.new_connections(&c, "clusterip tcp", At::Pod("probe"), Proto::Tcp, "10.96.0.10:80")?;
//! // ... kill and restart the agent ...
//! let tallies = traffic.stop()?;
//! assert_eq!(tallies["clusterip tcp"].failed, 0);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt::Display;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::bins;
use crate::probe::{HeldConn, Proto, parse_probe_output};
use crate::process::output_in;
use crate::topology::{At, Cluster};

/// Failure times kept per stream.
pub const MAX_FAILURE_TIMES: usize = 1000;

/// What one stream saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Attempts (connections, datagrams, requests, messages) that got their answer.
    pub ok: u64,
    /// Attempts that did not.
    pub failed: u64,
    /// Failures by what went wrong (`refused`, `timeout`, `000`, `503`, ...).
    pub errors: BTreeMap<String, u64>,
    /// When failures were seen (an attempt's result is read after it ends), relative to the
    /// start of the traffic (at most [`MAX_FAILURE_TIMES`] kept).
    pub failure_times: Vec<Duration>,
}

impl Tally {
    fn add(&mut self, result: Result<(), String>, since: Instant) {
        match result {
            Ok(()) => self.ok += 1,
            Err(why) => {
                self.failed += 1;
                *self.errors.entry(why).or_insert(0) += 1;
                if self.failure_times.len() < MAX_FAILURE_TIMES {
                    self.failure_times.push(since.elapsed());
                }
            }
        }
    }
}

impl Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ok, {} failed", self.ok, self.failed)?;
        if !self.errors.is_empty() {
            write!(f, " {:?}", self.errors)?;
        }
        Ok(())
    }
}

/// Streams of traffic running on their own threads until [`Traffic::stop`].
#[derive(Default)]
pub struct Traffic {
    stop: Arc<AtomicBool>,
    started: Option<Instant>,
    streams: Vec<(String, JoinHandle<Result<Tally>>)>,
}

/// How long a stream waits between two attempts (keeps two cores usable for the agent).
const PAUSE: Duration = Duration::from_millis(20);

impl Traffic {
    fn start(&mut self) -> Instant {
        *self.started.get_or_insert_with(Instant::now)
    }

    /// Time since the first stream started (the clock of [`Tally::failure_times`]).
    pub fn elapsed(&self) -> Duration {
        self.started.map_or(Duration::ZERO, |s| s.elapsed())
    }

    fn spawn(&mut self, name: &str, run: impl FnOnce() -> Result<Tally> + Send + 'static) {
        self.streams
            .push((name.to_owned(), std::thread::spawn(run)));
    }

    /// New connections (TCP) or datagrams from new sockets (UDP) from `at` to `addr`, in
    /// batches of 10 per probe process; each attempt has 1 s.
    pub fn new_connections(
        &mut self,
        c: &Cluster,
        name: &str,
        at: At<'_>,
        proto: Proto,
        addr: impl Display,
    ) -> Result<()> {
        let place = c.place(at)?;
        let echo = bins::echo()?;
        let addr = addr.to_string();
        let (stop, since) = (Arc::clone(&self.stop), self.start());
        self.spawn(name, move || {
            let mut tally = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                let mut cmd = Command::new(&echo);
                cmd.args(["probe", proto.as_str(), &addr]).args([
                    "--count",
                    "10",
                    "--timeout-ms",
                    "1000",
                ]);
                let out = output_in(&place, &mut cmd, None, Duration::from_secs(30))?;
                for result in parse_probe_output(&out)? {
                    tally.add(result.map(drop).map_err(|e| e.to_string()), since);
                }
                std::thread::sleep(PAUSE);
            }
            Ok(tally)
        });
        Ok(())
    }

    /// Established connections (opened by the caller with [`Cluster::hold_tcp`]): every
    /// `interval` each sends a line and must get it echoed by the pod that greeted it. A
    /// connection that fails once counts as one failed connection and is not used again;
    /// `ok` counts the connections alive at the end.
    pub fn held_connections(&mut self, name: &str, conns: Vec<HeldConn>, interval: Duration) {
        let (stop, since) = (Arc::clone(&self.stop), self.start());
        self.spawn(name, move || {
            let mut alive: Vec<(HeldConn, u64)> = conns.into_iter().map(|c| (c, 0)).collect();
            let mut tally = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                let mut still = Vec::with_capacity(alive.len());
                for (mut conn, n) in alive {
                    let pod = conn.greeting().pod.clone();
                    match conn.send(&format!("ping-{n}")) {
                        Ok(Ok(reply)) if reply == format!("{pod}: ping-{n}") => {
                            still.push((conn, n + 1))
                        }
                        Ok(Ok(other)) => tally.add(Err(format!("wrong reply {other:?}")), since),
                        Ok(Err(e)) => tally.add(Err(e.to_string()), since),
                        Err(e) => tally.add(Err(format!("{e:#}")), since),
                    }
                }
                alive = still;
                std::thread::sleep(interval);
            }
            tally.ok = alive.len() as u64;
            Ok(tally)
        });
    }

    /// HTTP requests with curl from `at`, 10 per curl process (keep-alive between them),
    /// 1 s to connect and 2 s per request; a status other than 200 is a failure named by its
    /// code (`000`: no response).
    pub fn http(&mut self, c: &Cluster, name: &str, at: At<'_>, url: &str, curl_args: &[&str]) {
        let place = c.place(at);
        let mut args: Vec<String> = [
            "-sS",
            "--noproxy",
            "*",
            "--connect-timeout",
            "1",
            "--max-time",
            "2",
            "-w",
            "%{http_code}\\n",
        ]
        .iter()
        .chain(curl_args)
        .map(|s| s.to_string())
        .collect();
        for _ in 0..10 {
            args.extend(["-o".into(), "/dev/null".into(), url.to_owned()]);
        }
        let (stop, since) = (Arc::clone(&self.stop), self.start());
        self.spawn(name, move || {
            let place = place?;
            let mut tally = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                let mut cmd = Command::new("curl");
                cmd.args(&args);
                let out = output_in(&place, &mut cmd, None, Duration::from_secs(60))?;
                let codes = String::from_utf8_lossy(&out.stdout);
                let mut seen = 0;
                for code in codes.lines() {
                    seen += 1;
                    tally.add((code == "200").then_some(()).ok_or(code.to_owned()), since);
                }
                // curl stops early only on errors it cannot go on from: count the rest.
                for _ in seen..10 {
                    tally.add(Err("curl stopped".into()), since);
                }
                std::thread::sleep(PAUSE);
            }
            Ok(tally)
        });
    }

    /// Stops every stream and returns what each saw, by name.
    pub fn stop(mut self) -> Result<BTreeMap<String, Tally>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = BTreeMap::new();
        for (name, handle) in std::mem::take(&mut self.streams) {
            let tally = handle
                .join()
                .map_err(|_| anyhow!("traffic stream {name} panicked"))?
                .with_context(|| format!("traffic stream {name}"))?;
            out.insert(name, tally);
        }
        Ok(out)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
