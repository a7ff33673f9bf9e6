//! The connection-rate probe (`cargo xtask bench probe-connections ADDR THREADS SECONDS`),
//! run by the benchmark inside a pod's or the client's namespace: THREADS threads open new
//! TCP connections to an echo pod back to back for SECONDS (after a short warm-up), each
//! must greet with `pod=...`, and each is closed with a reset so neither side keeps
//! TIME_WAIT state that would exhaust ports. Prints one report line.

use std::io::Read as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use socket2::{Domain, Socket, Type};

use super::load::{Measured, percentiles};

pub const SUBCOMMAND: &str = "probe-connections";

const WARM_UP: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_secs(2);

/// Counts and connect() times (µs) of one thread.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    connect_us: Vec<f64>,
}

pub fn run(args: &[String]) -> Result<()> {
    let [target, threads, seconds] = args else {
        bail!("usage: cargo xtask bench {SUBCOMMAND} ADDR THREADS SECONDS");
    };
    let target: SocketAddr = target.parse().context("ADDR")?;
    let threads: usize = threads.parse().context("THREADS")?;
    let seconds: f64 = seconds.parse().context("SECONDS")?;
    let start = Instant::now() + WARM_UP;
    let end = start + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| std::thread::spawn(move || connect_loop(target, start, end)))
        .collect();
    let mut total = Tally::default();
    for w in workers {
        let t = w
            .join()
            .map_err(|_| anyhow::anyhow!("a probe thread panicked"))?;
        total.ok += t.ok;
        total.failed += t.failed;
        total.connect_us.extend(t.connect_us);
    }
    let (p50, p99) = percentiles(&mut total.connect_us);
    println!(
        "connections={} failed={} seconds={seconds} connect_p50_us={p50:.1} connect_p99_us={p99:.1}",
        total.ok, total.failed
    );
    Ok(())
}

fn connect_loop(target: SocketAddr, start: Instant, end: Instant) -> Tally {
    let mut tally = Tally::default();
    loop {
        let began = Instant::now();
        if began >= end {
            return tally;
        }
        let measured = began >= start;
        match one_connection(target) {
            Ok(connect) if measured => {
                tally.ok += 1;
                tally.connect_us.push(connect.as_secs_f64() * 1e6);
            }
            Err(_) if measured => tally.failed += 1,
            _ => {}
        }
    }
}

/// Opens one connection, reads the greeting, resets it; returns the connect() time.
fn one_connection(target: SocketAddr) -> Result<Duration> {
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
    // Close with RST: no TIME_WAIT on either side, however many connections a run makes.
    socket.set_linger(Some(Duration::ZERO))?;
    socket.set_read_timeout(Some(TIMEOUT))?;
    let began = Instant::now();
    socket.connect_timeout(&target.into(), TIMEOUT)?;
    let connect = began.elapsed();
    let mut stream: std::net::TcpStream = socket.into();
    let mut greeting = [0u8; 4];
    stream.read_exact(&mut greeting)?;
    if &greeting != b"pod=" {
        bail!("not an echo greeting: {greeting:?}");
    }
    Ok(connect)
}

/// Parses the probe's report line into connections/s and connect() percentiles (ms).
pub fn parse_report(text: &str) -> Result<Measured> {
    let line = text
        .lines()
        .find(|l| l.starts_with("connections="))
        .with_context(|| format!("no report line in {text:?}"))?;
    let field = |key: &str| -> Result<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .with_context(|| format!("{key} missing in {line:?}"))?
            .parse()
            .with_context(|| format!("{key} in {line:?}"))
    };
    let (ok, seconds) = (field("connections")?, field("seconds")?);
    Ok(Measured {
        rate: ok / seconds,
        p50_ms: field("connect_p50_us")? / 1000.0,
        p99_ms: field("connect_p99_us")? / 1000.0,
        completed: ok as u64,
        failed: field("failed")? as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_line_round_trips() {
        let m = parse_report(
            "connections=20000 failed=2 seconds=2 connect_p50_us=45.5 connect_p99_us=300.0\n",
        )
        .expect("parsed");
        assert_eq!(m.rate, 10000.0);
        assert_eq!((m.p50_ms, m.p99_ms), (0.0455, 0.3));
        assert_eq!((m.completed, m.failed), (20000, 2));
    }

    /// The probe against a local greeter: it counts the connections that greeted and fails
    /// those that did not.
    #[test]
    fn probe_counts_greeting_connections() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for (i, s) in listener.incoming().enumerate() {
                let Ok(mut s) = s else { continue };
                let greeting: &[u8] = if i % 2 == 0 { b"pod=a\n" } else { b"nope\n" };
                let _ = std::io::Write::write_all(&mut s, greeting);
            }
        });
        let t = connect_loop(
            addr,
            Instant::now(),
            Instant::now() + Duration::from_millis(300),
        );
        assert!(t.ok > 0 && t.failed > 0, "ok {} failed {}", t.ok, t.failed);
        assert!(
            t.ok.abs_diff(t.failed) <= 1,
            "ok {} failed {}",
            t.ok,
            t.failed
        );
        assert_eq!(t.connect_us.len() as u64, t.ok);
    }
}
