//! Load generators run inside the cluster's namespaces: `wrk` (HTTP/1.1), `h2load` (HTTP/2)
//! and the connection-rate probe (this binary's hidden `bench probe-connections`), with their
//! outputs parsed into [`Measured`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use sluice_tests::{At, Cluster};

/// What one load run measured. Latencies in milliseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measured {
    /// Completed requests (or connections) per second.
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The slowest request or connection (a retransmitted SYN shows as ≥ 1 s).
    pub max_ms: f64,
    pub completed: u64,
    /// Requests that got no 2xx/3xx answer, or connections that failed.
    pub failed: u64,
}

/// How long and how hard to load.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub threads: usize,
    pub connections: usize,
    pub duration: Duration,
}

/// Runs `argv` at `at` with `/etc/hosts` replaced (in a private mount namespace) by `hosts`,
/// so URLs can carry the real host name (TLS SNI, Host header) and still reach an address
/// inside the cluster.
fn exec_with_hosts(
    c: &Cluster,
    at: At<'_>,
    hosts: Option<&Path>,
    argv: &[String],
    timeout: Duration,
) -> Result<std::process::Output> {
    let mut full: Vec<String> = Vec::new();
    if let Some(hosts) = hosts {
        full.extend(
            [
                "unshare",
                "--mount",
                "--",
                "sh",
                "-c",
                r#"mount --bind "$0" /etc/hosts && exec "$@""#,
            ]
            .map(String::from),
        );
        full.push(hosts.display().to_string());
    }
    full.extend(argv.iter().cloned());
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    c.exec_timeout(at, &refs, timeout)
}

/// A hosts file naming `addr` `host`, in the cluster's work directory.
pub fn hosts_file(c: &Cluster, host: &str, addr: std::net::IpAddr) -> Result<PathBuf> {
    let path = c.workdir().join(format!("hosts-{host}"));
    std::fs::write(&path, format!("127.0.0.1 localhost\n{addr} {host}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `wrk` against `url` from `at`; `close` sends `Connection: close` (one request per
/// connection).
pub fn wrk(
    c: &Cluster,
    at: At<'_>,
    hosts: Option<&Path>,
    url: &str,
    load: Load,
    close: bool,
) -> Result<Measured> {
    let mut argv: Vec<String> = vec![
        "wrk".into(),
        "--latency".into(),
        format!("-t{}", load.threads),
        format!("-c{}", load.connections),
        format!("-d{}s", load.duration.as_secs().max(1)),
        "--timeout".into(),
        "2s".into(),
    ];
    if close {
        argv.extend(["-H".into(), "Connection: close".into()]);
    }
    argv.push(url.into());
    let out = exec_with_hosts(c, at, hosts, &argv, load.duration + Duration::from_secs(30))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk {url} failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let m = parse_wrk(&text).with_context(|| format!("wrk {url} output:\n{text}"))?;
    if m.completed == 0 {
        bail!("wrk {url}: no request completed:\n{text}");
    }
    Ok(m)
}

/// A wrk latency figure (`812.00us`, `1.23ms`, `2.00s`) in milliseconds.
fn wrk_duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        "m" => value * 60_000.0,
        _ => return None,
    })
}

/// Parses wrk's report: `Requests/sec`, the `--latency` distribution, the request count and
/// every kind of failure (non-2xx/3xx answers, socket errors).
pub fn parse_wrk(text: &str) -> Result<Measured> {
    let mut m = Measured::default();
    let mut rate = None;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => rate = v.parse().ok(),
            ["50%", v] => m.p50_ms = wrk_duration_ms(v).context("p50")?,
            ["99%", v] => m.p99_ms = wrk_duration_ms(v).context("p99")?,
            ["Latency", _avg, _stdev, max, _] => {
                m.max_ms = wrk_duration_ms(max).context("max")?;
            }
            [n, "requests", "in", ..] => m.completed = n.parse().context("request count")?,
            ["Non-2xx", "or", "3xx", "responses:", n] => m.failed += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 3, write 0, timeout 1"
                for pair in rest.chunks(2) {
                    if let [_, n] = pair {
                        m.failed += n.trim_end_matches(',').parse::<u64>()?;
                    }
                }
            }
            _ => {}
        }
    }
    m.rate = rate.context("no Requests/sec line")?;
    Ok(m)
}

/// `h2load` over TLS (ALPN h2) against `url` from `at`: `load.connections` clients on
/// `load.threads` threads, `streams` concurrent streams each; latencies from its per-request
/// log.
pub fn h2load(
    c: &Cluster,
    at: At<'_>,
    hosts: &Path,
    url: &str,
    load: Load,
    streams: usize,
) -> Result<Measured> {
    let log = c.workdir().join("h2load.log");
    let _ = std::fs::remove_file(&log);
    let argv: Vec<String> = vec![
        "h2load".into(),
        format!("--clients={}", load.connections),
        format!("--threads={}", load.threads),
        format!("--max-concurrent-streams={streams}"),
        format!("--duration={}", load.duration.as_secs().max(1)),
        "--warm-up-time=1".into(),
        format!("--log-file={}", log.display()),
        url.into(),
    ];
    let out = exec_with_hosts(
        c,
        at,
        Some(hosts),
        &argv,
        load.duration + Duration::from_secs(30),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("h2load {url} failed ({}): {text}", out.status);
    }
    let mut m = parse_h2load(&text).with_context(|| format!("h2load {url} output:\n{text}"))?;
    if m.completed == 0 {
        bail!("h2load {url}: no request succeeded:\n{text}");
    }
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut latencies = h2load_latencies_ms(&log_text);
    (m.p50_ms, m.p99_ms) = percentiles(&mut latencies);
    m.max_ms = latencies.iter().copied().fold(0.0, f64::max);
    Ok(m)
}

/// `finished in 5.00s, 12345.60 req/s, ...` and `requests: N total, N started, N done,
/// N succeeded, N failed, N errored, N timeout`.
pub fn parse_h2load(text: &str) -> Result<Measured> {
    let mut m = Measured::default();
    let mut rate = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            rate = rest
                .split(", ")
                .find_map(|part| part.strip_suffix(" req/s"))
                .and_then(|v| v.parse().ok());
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            for part in rest.split(", ") {
                let mut words = part.split_whitespace();
                let (Some(n), Some(what)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "succeeded" => m.completed = n,
                    "failed" => m.failed += n,
                    _ => {}
                }
            }
        }
    }
    m.rate = rate.context("no `finished in` line")?;
    Ok(m)
}

/// Request durations from h2load's `--log-file` (start µs, status, duration µs per line).
fn h2load_latencies_ms(log: &str) -> Vec<f64> {
    log.lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<f64>().ok())
        .map(|us| us / 1000.0)
        .collect()
}

/// (p50, p99) of `values` (sorted in place); zeros when empty.
pub fn percentiles(values: &mut [f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    values.sort_by(f64::total_cmp);
    let at = |p: f64| values[((values.len() as f64 * p) as usize).min(values.len() - 1)];
    (at(0.50), at(0.99))
}

/// New TCP connections per second from `at` to `target` with this binary's probe: each
/// connection is opened, must greet with `pod=` (or, with `http`, answer one request with
/// the echo body), and is reset (no TIME_WAIT pile-up). The latencies are the connect()
/// times (the first packet's round trip through the path), or with `http` each request's.
pub fn connection_rate(
    c: &Cluster,
    at: At<'_>,
    target: SocketAddr,
    load: Load,
    http: bool,
) -> Result<Measured> {
    let exe = std::env::current_exe().context("locating the xtask binary for the probe")?;
    let mut argv = vec![
        exe.display().to_string(),
        "bench".into(),
        super::probe::SUBCOMMAND.into(),
        target.to_string(),
        load.connections.to_string(),
        load.duration.as_secs_f64().to_string(),
    ];
    if http {
        argv.push("http".into());
    }
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = c.exec_timeout(at, &refs, load.duration + Duration::from_secs(30))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "connection probe to {target} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let m = super::probe::parse_report(&text)?;
    if m.completed == 0 {
        bail!(
            "connection probe to {target}: none succeeded ({} failed)",
            m.failed
        );
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 2s test @ http://10.96.0.10:81/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   812.35us  300.12us   8.00ms   90.00%
    Req/Sec     9.80k     1.20k   12.00k    70.00%
  Latency Distribution
     50%  750.00us
     75%    0.90ms
     90%    1.10ms
     99%    2.50ms
  39012 requests in 2.00s, 7.12MB read
  Socket errors: connect 0, read 3, write 1, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:  19506.00
Transfer/sec:      3.56MB
";

    #[test]
    fn wrk_report_is_parsed_with_every_failure_counted() {
        let m = parse_wrk(WRK).expect("parsed");
        assert_eq!(m.rate, 19506.0);
        assert_eq!(m.p50_ms, 0.75);
        assert_eq!(m.p99_ms, 2.5);
        assert_eq!(m.max_ms, 8.0);
        assert_eq!(m.completed, 39012);
        assert_eq!(m.failed, 3 + 1 + 2 + 4);
    }

    #[test]
    fn wrk_without_a_rate_is_an_error() {
        assert!(parse_wrk("unable to connect to 10.0.0.1:80 Connection refused").is_err());
    }

    #[test]
    fn h2load_report_and_log_are_parsed() {
        let text = "finished in 2.00s, 15000.50 req/s, 1.20MB/s
requests: 30001 total, 30001 started, 30001 done, 29990 succeeded, 11 failed, 0 errored, 0 timeout
status codes: 29990 2xx, 0 3xx, 0 4xx, 11 5xx";
        let m = parse_h2load(text).expect("parsed");
        assert_eq!(m.rate, 15000.5);
        assert_eq!(m.completed, 29990);
        assert_eq!(m.failed, 11);
        let mut lat =
            h2load_latencies_ms("1700000000000000\t200\t1500\n1700000000000100\t200\t500\n");
        assert_eq!(percentiles(&mut lat), (1.5, 1.5));
        assert_eq!(lat, vec![0.5, 1.5]);
    }
}
