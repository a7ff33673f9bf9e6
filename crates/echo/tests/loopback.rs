//! The echo binary against itself on loopback (no root needed). Each test uses its own ports.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_sluice-echo");

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` and waits for its `ready` line.
fn serve(args: &[&str]) -> Server {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sluice-echo serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read ready line");
    assert_eq!(line.trim(), "ready", "server did not become ready");
    Server(child)
}

fn probe(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("probe")
        .args(args)
        .output()
        .expect("run probe")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn tcp_and_udp_greet_with_pod_and_client_on_v4_and_v6() {
    let _s = serve(&[
        "--name",
        "pod-x",
        "--tcp",
        "127.0.0.1:18180",
        "--tcp",
        "[::1]:18180",
        "--udp",
        "127.0.0.1:18180",
        "--udp",
        "[::1]:18180",
    ]);
    for (proto, addr, client_prefix) in [
        ("tcp", "127.0.0.1:18180", "127.0.0.1:"),
        ("tcp", "[::1]:18180", "[::1]:"),
        ("udp", "127.0.0.1:18180", "127.0.0.1:"),
        ("udp", "[::1]:18180", "[::1]:"),
    ] {
        let out = probe(&[proto, addr, "--count", "3"]);
        assert!(out.status.success(), "{proto} {addr}: {}", stdout(&out));
        let lines: Vec<_> = stdout(&out).lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        for l in lines {
            let g: sluice_echo::wire::Greeting = l.parse().expect("greeting");
            assert_eq!(g.pod, "pod-x");
            assert!(g.client.to_string().starts_with(client_prefix), "{l}");
        }
    }
}

#[test]
fn udp_source_port_is_what_the_pod_sees() {
    let _s = serve(&["--name", "p", "--udp", "127.0.0.1:18181"]);
    let out = probe(&["udp", "127.0.0.1:18181", "--source-port", "18182"]);
    assert_eq!(stdout(&out).trim(), "pod=p client=127.0.0.1:18182");
}

#[test]
fn closed_ports_are_refused_and_exit_nonzero() {
    for proto in ["tcp", "udp"] {
        let out = probe(&[proto, "127.0.0.1:18183", "--count", "2"]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(stdout(&out), "error=refused\nerror=refused\n");
    }
}

#[test]
fn silent_server_times_out() {
    // A listener that never greets: the probe must give up after its timeout.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let out = probe(&["tcp", &addr, "--timeout-ms", "300"]);
    assert_eq!(stdout(&out).trim(), "error=timeout");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn max_timeouts_stops_early() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let out = probe(&[
        "tcp",
        &addr,
        "--count",
        "10",
        "--timeout-ms",
        "100",
        "--max-timeouts",
        "2",
    ]);
    assert_eq!(stdout(&out), "error=timeout\nerror=timeout\n");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn held_connection_echoes_lines() {
    let _s = serve(&["--name", "held", "--tcp", "127.0.0.1:18184"]);
    let mut child = Command::new(BIN)
        .args(["probe", "tcp", "127.0.0.1:18184", "--hold"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn hold");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("greeting");
    assert!(line.starts_with("pod=held client=127.0.0.1:"), "{line}");
    for word in ["one", "two"] {
        writeln!(stdin, "{word}").expect("send");
        line.clear();
        out.read_line(&mut line).expect("reply");
        assert_eq!(line, format!("held: {word}\n"));
    }
    drop(stdin);
    assert!(child.wait().expect("wait").success());
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn http_reports_request_and_status_over_http1_and_h2c() {
    let _s = serve(&["--name", "web", "--http", "127.0.0.1:18185"]);
    let resp = curl(&[
        "-i",
        "-H",
        "X-Forwarded-For: 203.0.113.9",
        "-H",
        "X-Request-Id: abc",
        "http://127.0.0.1:18185/status/503?q=1",
    ]);
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.contains("x-pod: web"), "{resp}");
    for line in [
        "pod=web",
        "method=GET",
        "host=127.0.0.1:18185",
        "path=/status/503?q=1",
        "x-forwarded-for=203.0.113.9",
        "x-request-id=abc",
    ] {
        assert!(resp.lines().any(|l| l == line), "missing {line} in {resp}");
    }
    assert!(resp.contains("\nclient=127.0.0.1:"), "{resp}");

    let h2 = curl(&["--http2-prior-knowledge", "http://127.0.0.1:18185/x"]);
    assert!(h2.contains("version=HTTP/2.0"), "{h2}");
    assert!(h2.contains("pod=web"), "{h2}");
}

#[test]
fn slow_waits_before_answering() {
    let _s = serve(&["--name", "web", "--http", "127.0.0.1:18186"]);
    let start = std::time::Instant::now();
    let body = curl(&["http://127.0.0.1:18186/slow?ms=400"]);
    assert!(start.elapsed() >= Duration::from_millis(400));
    assert!(body.contains("pod=web"), "{body}");
}

#[test]
fn websocket_upgrade_then_raw_echo() {
    let _s = serve(&["--name", "ws", "--http", "127.0.0.1:18187"]);
    let mut s = TcpStream::connect("127.0.0.1:18187").expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("read head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("x-pod: ws"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    s.write_all(b"raw bytes").expect("write raw");
    let mut echoed = [0u8; 9];
    s.read_exact(&mut echoed).expect("read echo");
    assert_eq!(&echoed, b"raw bytes");
}

#[test]
fn serve_fails_clearly_when_the_port_is_taken() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let out = Command::new(BIN)
        .args(["serve", "--name", "x", "--tcp", &addr])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on tcp {addr}")),
        "{err}"
    );
}
