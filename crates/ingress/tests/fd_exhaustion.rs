//! Out of file descriptors: the accept loop backs off quietly and recovers. A test binary of
//! its own, because it lowers this process's RLIMIT_NOFILE (with `prlimit`, no unsafe code).

mod common;

use std::time::Duration;

use common::*;
use hyper::StatusCode;
use sluice_ingress::IngressConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

/// (soft, hard) RLIMIT_NOFILE of this process.
fn nofile() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut numbers = line.split_whitespace().filter_map(|w| w.parse().ok());
    (numbers.next().unwrap(), numbers.next().unwrap())
}

fn set_soft_nofile(soft: u64, hard: u64) {
    let status = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={soft}:{hard}"))
        .status()
        .expect("prlimit (util-linux) must be installed");
    assert!(status.success());
}

/// CPU time (user + system) this process has used, in clock ticks, read from the open
/// `/proc/self/stat` (no descriptor is needed while the process has none left).
fn cpu_ticks(file: &mut std::fs::File) -> u64 {
    use std::io::{Read, Seek};
    file.rewind().unwrap();
    let mut stat = String::new();
    file.read_to_string(&mut stat).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

// Current-thread runtime: the proxy's tasks log on this thread, where the capture is.
#[tokio::test]
async fn accept_backs_off_quietly_and_recovers_when_out_of_descriptors() {
    let logs = CapturedLogs::start();
    let good = echo("good").await;
    let other = echo("other").await;
    let mut objects = vec![
        ingress_class(),
        ingress(
            "g",
            vec![
                rule("h", vec![path("/", "Prefix", "good")]),
                rule("o", vec![path("/", "Prefix", "other")]),
            ],
        ),
    ];
    objects.extend(service("good", &[good.addr.port()]));
    objects.extend(service("other", &[other.addr.port()]));
    let p = start(IngressConfig::default(), &objects).await;
    assert_eq!(
        http_get(p.http, "h", "/").await.unwrap().status,
        StatusCode::OK
    );
    // A client connection opened beforehand, for a request while no descriptor is left.
    let mut early = TcpStream::connect(p.http).await.unwrap();

    let (soft, hard) = nofile();
    let mut stat = std::fs::File::open("/proc/self/stat").unwrap();
    set_soft_nofile(open_descriptors() + 32, hard);
    // Connect until the process has no descriptor left; the kernel completes the handshakes
    // of the last ones, which the proxy then cannot accept (EMFILE).
    let mut clients = Vec::new();
    for _ in 0..64 {
        match TcpStream::connect(p.http).await {
            Ok(s) => clients.push(s),
            Err(_) => break,
        }
        tokio::task::yield_now().await;
    }
    let ticks = cpu_ticks(&mut stat);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy_ticks = cpu_ticks(&mut stat) - ticks;
    let stats = p.proxy.stats();
    assert!(stats.accept_errors > 0, "never ran out: {stats:?}");
    // A busy loop would burn about 100 ticks (one core for 1 s).
    assert!(
        busy_ticks < 30,
        "{busy_ticks} ticks in 1 s while out of descriptors"
    );
    eprintln!("out of descriptors for 1 s: {busy_ticks} CPU ticks, {stats:?}");

    // A request that needs a new upstream connection: the proxy's own shortage, not the
    // backend's fault.
    early
        .write_all(b"GET / HTTP/1.1\r\nHost: o\r\n\r\n")
        .await
        .unwrap();
    let mut reply = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), early.read(&mut reply))
        .await
        .expect("no answer while out of descriptors")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply[..n]);
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains("no file descriptor left"), "{reply}");
    assert_eq!(p.proxy.stats().upstream_connect_failures, 0);

    drop(clients);
    set_soft_nofile(soft, hard);
    let r = tokio::time::timeout(Duration::from_secs(3), http_get(p.http, "h", "/"))
        .await
        .expect("proxy did not recover")
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let warnings = logs.warnings();
    let accept_warnings = warnings.iter().filter(|l| l.contains("accept")).count();
    assert_eq!(
        accept_warnings, 1,
        "one warning per episode, not one per failed accept: {warnings:#?}"
    );
}
