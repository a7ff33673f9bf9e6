//! The connection-rate probe (`cargo xtask bench probe-connections ADDR THREADS SECONDS
//! [http]`), run by the benchmark inside a pod's or the client's namespace: THREADS threads
//! open new TCP connections to an echo pod back to back for SECONDS (after a short warm-up).
//! Each must greet with `pod=...` (or, with `http`, answer one `GET /` with 200 and the
//! echo body), and each is closed with a reset, so neither side keeps TIME_WAIT state: the
//! same client ports come back within seconds at these rates, and a SYN meeting an old
//! flow's state would stall a connection for a retransmission. Prints one report line.

use std::io::{Read, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use socket2::{Domain, Socket, Type};

use super::load::{Measured, percentiles};

pub const SUBCOMMAND: &str = "probe-connections";

const WARM_UP: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_secs(2);

/// What each connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exchange {
    /// Read the TCP echo's greeting; the latency is connect()'s (the SYN's round trip).
    Greeting,
    /// One HTTP/1.1 request; the latency is the whole request's, connect included.
    Http,
}

/// Counts and latencies (µs) of one thread.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    latency_us: Vec<f64>,
}

pub fn run(args: &[String]) -> Result<()> {
    let (exchange, args) = match args {
        [rest @ .., mode] if mode == "http" => (Exchange::Http, rest),
        _ => (Exchange::Greeting, args),
    };
    let [target, threads, seconds] = args else {
        bail!("usage: cargo xtask bench {SUBCOMMAND} ADDR THREADS SECONDS [http]");
    };
    let target: SocketAddr = target.parse().context("ADDR")?;
    let threads: usize = threads.parse().context("THREADS")?;
    let seconds: f64 = seconds.parse().context("SECONDS")?;
    let start = Instant::now() + WARM_UP;
    let end = start + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| std::thread::spawn(move || connect_loop(target, exchange, start, end)))
        .collect();
    let mut total = Tally::default();
    for w in workers {
        let t = w
            .join()
            .map_err(|_| anyhow::anyhow!("a probe thread panicked"))?;
        total.ok += t.ok;
        total.failed += t.failed;
        total.latency_us.extend(t.latency_us);
    }
    let (p50, p99) = percentiles(&mut total.latency_us);
    let max = total.latency_us.last().copied().unwrap_or(0.0);
    println!(
        "connections={} failed={} seconds={seconds} latency_p50_us={p50:.1} \
         latency_p99_us={p99:.1} latency_max_us={max:.1}",
        total.ok, total.failed
    );
    Ok(())
}

fn connect_loop(target: SocketAddr, exchange: Exchange, start: Instant, end: Instant) -> Tally {
    let mut tally = Tally::default();
    loop {
        let began = Instant::now();
        if began >= end {
            return tally;
        }
        let measured = began >= start;
        match one_connection(target, exchange) {
            Ok(latency) if measured => {
                tally.ok += 1;
                tally.latency_us.push(latency.as_secs_f64() * 1e6);
            }
            Err(_) if measured => tally.failed += 1,
            _ => {}
        }
    }
}

/// Opens one connection, does `exchange`, resets it; returns the exchange's latency.
fn one_connection(target: SocketAddr, exchange: Exchange) -> Result<Duration> {
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
    // Close with RST: no TIME_WAIT on either side, however many connections a run makes.
    socket.set_linger(Some(Duration::ZERO))?;
    socket.set_read_timeout(Some(TIMEOUT))?;
    let began = Instant::now();
    socket.connect_timeout(&target.into(), TIMEOUT)?;
    let connect = began.elapsed();
    let mut stream: std::net::TcpStream = socket.into();
    match exchange {
        Exchange::Greeting => {
            let mut greeting = [0u8; 4];
            stream.read_exact(&mut greeting)?;
            if &greeting != b"pod=" {
                bail!("not an echo greeting: {greeting:?}");
            }
            Ok(connect)
        }
        Exchange::Http => {
            stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
            read_echo_response(&mut stream)?;
            Ok(began.elapsed())
        }
    }
}

/// Reads one HTTP/1.1 response with a `Content-Length` body; fails unless it is a 200 with
/// the echo's `pod=...` body.
fn read_echo_response(stream: &mut impl Read) -> Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 || buf.len() > 16_384 {
            bail!("connection closed before the response headers");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..header_end]).context("response headers")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("not a 200: {:?}", head.lines().next().unwrap_or(""));
    }
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .context("no Content-Length")?;
    while buf.len() < header_end + length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed inside the body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if !buf[header_end..].starts_with(b"pod=") {
        bail!("not the echo body");
    }
    Ok(())
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
        p50_ms: field("latency_p50_us")? / 1000.0,
        p99_ms: field("latency_p99_us")? / 1000.0,
        max_ms: field("latency_max_us")? / 1000.0,
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
            "connections=20000 failed=2 seconds=2 latency_p50_us=45.5 latency_p99_us=300.0 \
             latency_max_us=1003000.0\n",
        )
        .expect("parsed");
        assert_eq!(m.rate, 10000.0);
        assert_eq!((m.p50_ms, m.p99_ms, m.max_ms), (0.0455, 0.3, 1003.0));
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
            Exchange::Greeting,
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
        assert_eq!(t.latency_us.len() as u64, t.ok);
    }

    /// In HTTP mode a connection counts when it gets a 200 with the echo body, whether the
    /// response arrives in one piece or in several.
    #[test]
    fn http_mode_counts_echo_responses_only() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for (i, s) in listener.incoming().enumerate() {
                let Ok(mut s) = s else { continue };
                let mut request = [0u8; 256];
                let _ = s.read(&mut request);
                let reply: &[&[u8]] = match i % 3 {
                    0 => &[b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\npod=web\n\n"],
                    1 => &[
                        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n",
                        b"\r\npod=",
                        b"web\n\n",
                    ],
                    _ => &[b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"],
                };
                for part in reply {
                    let _ = s.write_all(part);
                    let _ = s.flush();
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        let t = connect_loop(
            addr,
            Exchange::Http,
            Instant::now(),
            Instant::now() + Duration::from_millis(300),
        );
        assert!(t.ok > 0 && t.failed > 0, "ok {} failed {}", t.ok, t.failed);
        assert!(
            t.ok.abs_diff(2 * t.failed) <= 2,
            "ok {} failed {}",
            t.ok,
            t.failed
        );
    }
}
