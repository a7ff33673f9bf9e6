//! The agent's Ingress proxy end to end: a client outside the cluster talks HTTP(S) to a
//! node (`curl --resolve host:443:<node ip>`) and reaches the echo pods. Needs root, the
//! binaries, `curl` and `openssl` (test certificates).
//!
//! * `cafe_example_over_https`: one cluster with the cafe example, a multi-host Ingress, a
//!   wildcard host, an Ingress of another class, HTTP/2 and a service without endpoints.
//! * `certificate_rotation_under_load_fails_no_request`: the Secret is rewritten while a
//!   request loop runs (new TLS connection per request).
//! * `route_change_under_load_fails_no_request_and_websocket_survives`: the Ingress is
//!   rewritten while a keep-alive request loop runs and a WebSocket is open.
//! * `ingress_nginx_migration_with_class_flags_and_annotations`: Ingresses written for
//!   ingress-nginx (`ingressClassName: nginx`, the legacy class annotation, no class at all)
//!   served with `--ingress-class nginx --watch-ingress-without-class`: the cafe over HTTPS
//!   with its 308 from HTTP, a multi-host Ingress, a fan-out with `rewrite-target: /`, regex
//!   capture groups, a canary by header, an H2C backend.
//! * `proxy_protocol_trusted_forwarded_for_and_the_json_access_log`: the listeners behind a
//!   "load balancer" (PROXY protocol v1, trusted `X-Forwarded-For`), and the request's JSON
//!   access log line naming the real client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use sluice_tests::manifests::{
    IngressPath, Port, Service, endpoint_slices, ingress, ingress_class, tls_secret, yaml_docs,
};
use sluice_tests::{
    At, CLIENT_V4, Cluster, ECHO_HTTP_PORT, HttpReply, Mode, Pod, require_root, wait_until,
};

fn path(host: &str, path: &str, path_type: &str, service: &str) -> IngressPath {
    IngressPath {
        host: Some(host.into()),
        path: path.into(),
        path_type: path_type.into(),
        service: service.into(),
        port: 80,
    }
}

/// Sets `nginx.ingress.kubernetes.io/<key>` annotations on an Ingress.
fn annotate(mut ingress: Value, pairs: &[(&str, &str)]) -> Value {
    for (k, v) in pairs {
        ingress["metadata"]["annotations"][format!("nginx.ingress.kubernetes.io/{k}")] =
            serde_json::json!(v);
    }
    ingress
}

/// Self-signed certificate for `host`: (cert PEM path, cert PEM, key PEM).
fn certificate(dir: &Path, host: &str) -> Result<(String, String, String)> {
    let cert = dir.join(format!("{host}.crt"));
    let key = dir.join(format!("{host}.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        ])
        .arg(format!("/CN={host}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{host}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((
        cert.display().to_string(),
        std::fs::read_to_string(&cert)?,
        std::fs::read_to_string(&key)?,
    ))
}

/// web-1 behind service `web-a` (a.example.test), web-2 behind `web-b` (b.example.test/api),
/// TLS for a.example.test; the agent runs on node-a.
fn cluster() -> Result<(Cluster, String)> {
    cluster_with(&[])
}

/// [`cluster`] with more agent flags.
fn cluster_with(agent_flags: &[&str]) -> Result<(Cluster, String)> {
    let mut c = Cluster::new(&["node-a", "node-b"])?;
    let w1 = c.add_pod("node-a", "web-1")?;
    let w2 = c.add_pod("node-b", "web-2")?;
    let (cert_path, cert, key) = certificate(c.workdir(), "a.example.test")?;
    let mut docs = vec![ingress_class("sluice", "sluice.dev/ingress", true)];
    for (name, ip, pod) in [("web-a", "10.96.0.20", &w1), ("web-b", "10.96.0.21", &w2)] {
        docs.push(
            Service::new("default", name)
                .cluster_ips(&[ip])
                .port(Port::tcp(80, ECHO_HTTP_PORT).named("http"))
                .to_json(),
        );
        docs.extend(endpoint_slices(
            "default",
            name,
            &[("http", "TCP", ECHO_HTTP_PORT)],
            &[pod],
        ));
    }
    docs.push(tls_secret("default", "a-tls", &cert, &key));
    // Plain HTTP to the TLS host is part of these tests: no redirect to HTTPS.
    docs.push(annotate(
        ingress(
            "default",
            "web",
            Some("sluice"),
            &[
                path("a.example.test", "/", "Prefix", "web-a"),
                path("b.example.test", "/api", "Prefix", "web-b"),
            ],
            &[(&["a.example.test"], "a-tls")],
            None,
        ),
        &[("ssl-redirect", "false")],
    ));
    c.write_manifest("ingress.yaml", &yaml_docs(&docs))?;
    c.start_agent("node-a", Mode::Nftables, agent_flags)?;
    Ok((c, cert_path))
}

#[test]
fn routes_by_host_and_path_with_forwarded_headers() -> Result<()> {
    if !require_root("routes_by_host_and_path_with_forwarded_headers") {
        return Ok(());
    }
    let (c, _) = cluster()?;
    let node = c.node("node-a")?.ipv4;
    let get = |host: &str, path: &str| {
        c.http(
            At::Client,
            &format!("http://{node}{path}"),
            &["-H", &format!("Host: {host}")],
        )
    };
    let a = get("a.example.test", "/hello?x=1")?;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-pod"), Some("web-1"));
    assert_eq!(a.field("path"), Some("/hello?x=1"));
    assert_eq!(a.field("host"), Some("a.example.test"));
    assert_eq!(
        a.field("x-forwarded-for"),
        Some(CLIENT_V4.to_string().as_str())
    );
    assert_eq!(a.field("x-forwarded-proto"), Some("http"));

    let b = get("b.example.test", "/api/items")?;
    assert_eq!(
        (b.status, b.header("x-pod")),
        (200, Some("web-2")),
        "{}",
        b.body
    );
    // Prefix matches whole path elements only.
    assert_eq!(get("b.example.test", "/apix")?.status, 404);
    assert_eq!(get("nobody.example.test", "/")?.status, 404);
    Ok(())
}

#[test]
fn proxy_protocol_trusted_forwarded_for_and_the_json_access_log() -> Result<()> {
    if !require_root("proxy_protocol_trusted_forwarded_for_and_the_json_access_log") {
        return Ok(());
    }
    let client = CLIENT_V4.to_string();
    let (c, _) = cluster_with(&[
        "--ingress-proxy-protocol",
        "--ingress-trusted-proxies",
        &format!("{client}/32"),
    ])?;
    let node = c.node("node-a")?.ipv4;
    let url = format!("http://{node}/hello");
    // The client stands in for a load balancer: a PROXY v1 header, then a request whose
    // X-Forwarded-For names the real client.
    let r = c.http(
        At::Client,
        &url,
        &[
            "--haproxy-protocol",
            "-H",
            "Host: a.example.test",
            "-H",
            "X-Forwarded-For: 203.0.113.50",
        ],
    )?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.field("x-forwarded-for"),
        Some(format!("203.0.113.50, {client}").as_str())
    );
    // Without the header the connection is closed unanswered.
    assert!(
        c.http(At::Client, &url, &["-H", "Host: a.example.test"])
            .is_err()
    );
    // One JSON line per request on the agent's stdout, naming the real client.
    let request_id = r.header("x-request-id").context("x-request-id")?.to_owned();
    let line = wait_for_line(&c, "node-a", &request_id)?;
    let line: Value = serde_json::from_str(&line)?;
    assert_eq!(line["client"], "203.0.113.50", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["ingress"], "default/web", "{line}");
    assert_eq!(line["service"], "default/web-a:80", "{line}");
    assert_eq!(line["path"], "/hello", "{line}");
    Ok(())
}

/// The agent log line holding `needle` (waits up to 5 s: lines are written when the response
/// body is done).
fn wait_for_line(c: &Cluster, node: &str, needle: &str) -> Result<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = c.agent_log(node);
        if let Some(line) = log
            .lines()
            .find(|l| l.contains(needle) && l.starts_with('{'))
        {
            return Ok(line.to_owned());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no access log line with {needle}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn terminates_tls_with_the_secrets_certificate() -> Result<()> {
    if !require_root("terminates_tls_with_the_secrets_certificate") {
        return Ok(());
    }
    let (c, cert) = cluster()?;
    let node = c.node("node-a")?.ipv4;
    let resolve = format!("a.example.test:443:{node}");
    let r = c.http(
        At::Client,
        "https://a.example.test/secure",
        &["--resolve", &resolve, "--cacert", &cert],
    )?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-pod"), Some("web-1"));
    assert_eq!(r.field("x-forwarded-proto"), Some("https"));
    Ok(())
}

#[test]
fn passes_websocket_upgrades_through() -> Result<()> {
    if !require_root("passes_websocket_upgrades_through") {
        return Ok(());
    }
    let (c, _) = cluster()?;
    let node = c.node("node-a")?.ipv4;
    // curl cannot speak WebSocket here; the 101 with the pod's accept key shows the upgrade
    // reached the pod and came back. curl then waits on the open connection until --max-time.
    let out = c.curl(
        At::Client,
        &[
            "-i",
            "-N",
            "--max-time",
            "2",
            "-H",
            "Host: a.example.test",
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            &format!("http://{node}/ws"),
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 101"), "{text}");
    assert!(
        text.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{text}"
    );
    assert!(text.contains("x-pod: web-1"), "{text}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Helpers of the tests below.

/// A test CA and leaf certificates signed by it (EC P-256), so the client can verify every
/// certificate with one `--cacert` and tell certificates apart by their subject's `O=`.
struct Pki {
    dir: PathBuf,
    ca: String,
}

impl Pki {
    fn new(dir: &Path) -> Result<Pki> {
        let ca = dir.join("ca.crt");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=sluice-test-ca",
            "-keyout",
            &dir.join("ca.key").display().to_string(),
            "-out",
            &ca.display().to_string(),
        ])?;
        Ok(Pki {
            dir: dir.to_owned(),
            ca: ca.display().to_string(),
        })
    }

    /// A leaf for `hosts` (the first is the CN) with subject `O=org`: (cert PEM, key PEM).
    fn leaf(&self, org: &str, hosts: &[&str]) -> Result<(String, String)> {
        let (cert, key) = (
            self.dir.join(format!("{org}.crt")),
            self.dir.join(format!("{org}.key")),
        );
        let sans: Vec<String> = hosts.iter().map(|h| format!("DNS:{h}")).collect();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/O={org}/CN={}", hosts[0]),
            "-addext",
            &format!("subjectAltName={}", sans.join(",")),
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-CA",
            &self.ca,
            "-CAkey",
            &self.dir.join("ca.key").display().to_string(),
            "-keyout",
            &key.display().to_string(),
            "-out",
            &cert.display().to_string(),
        ])?;
        Ok((
            std::fs::read_to_string(cert)?,
            std::fs::read_to_string(key)?,
        ))
    }
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Service `name` (port 80 "http" → the echo pods' HTTP port) with v4/v6 slices of `pods`
/// (none: the slices exist but have no endpoints).
fn backend(docs: &mut Vec<Value>, name: &str, cluster_ip: &str, pods: &[&Pod]) {
    docs.push(
        Service::new("default", name)
            .cluster_ips(&[cluster_ip])
            .port(Port::tcp(80, ECHO_HTTP_PORT).named("http"))
            .to_json(),
    );
    docs.extend(endpoint_slices(
        "default",
        name,
        &[("http", "TCP", ECHO_HTTP_PORT)],
        pods,
    ));
}

/// What curl saw: the reply, the negotiated HTTP version (`%{http_version}`) and the subject
/// of the server certificate (HTTPS).
#[derive(Debug)]
struct Fetched {
    reply: HttpReply,
    version: String,
    subject: Option<String>,
}

impl Fetched {
    fn pod(&self) -> &str {
        self.reply.header("x-pod").unwrap_or("-")
    }
}

const W_MARK: &str = "\n@@curl-w@@";

/// `curl -v -i` from the client; fails if curl fails (no response).
fn fetch(c: &Cluster, url: &str, extra: &[&str]) -> Result<Fetched> {
    let w = format!("{W_MARK}%{{http_version}}");
    let mut args = vec!["-v", "-i", "-w", &w];
    args.extend_from_slice(extra);
    args.push(url);
    let out = c.curl(At::Client, &args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("curl {url} {extra:?} failed ({}):\n{stderr}", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (raw, version) = stdout
        .rsplit_once(W_MARK)
        .with_context(|| format!("no write-out in {stdout:?}"))?;
    let subject = stderr
        .lines()
        .find_map(|l| l.strip_prefix("*  subject: "))
        .map(str::to_owned);
    Ok(Fetched {
        reply: HttpReply::parse(raw)?,
        version: version.trim().to_owned(),
        subject,
    })
}

/// `https://{host}{path}` resolved to `node` and verified against the test CA.
fn https(c: &Cluster, node: &str, pki: &Pki, host: &str, path: &str) -> Result<Fetched> {
    https_with(c, node, pki, host, path, &[])
}

fn https_with(
    c: &Cluster,
    node: &str,
    pki: &Pki,
    host: &str,
    path: &str,
    extra: &[&str],
) -> Result<Fetched> {
    let ip = c.node(node)?.ipv4;
    let resolve = format!("{host}:443:{ip}");
    let mut args = vec!["--resolve", &resolve, "--cacert", &pki.ca];
    args.extend_from_slice(extra);
    fetch(c, &format!("https://{host}{path}"), &args)
}

/// Plain HTTP to `node` with a `Host` header (for hosts without a matching certificate).
fn http(c: &Cluster, node: &str, host: &str, path: &str) -> Result<Fetched> {
    let ip = c.node(node)?.ipv4;
    fetch(
        c,
        &format!("http://{ip}{path}"),
        &["-H", &format!("Host: {host}")],
    )
}

/// Quotes `s` for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A request loop run by `sh` in the client namespace: each iteration runs `curl -sS ARGS`
/// and appends one line `N rc=EXIT <curl output, newlines as spaces>` to a log file, until the
/// stop file exists, `max_iterations` ran or `max_time` passed. Dropping the loop stops it.
struct Load<'a> {
    c: &'a Cluster,
    log: PathBuf,
    stop: PathBuf,
    script: String,
    max_time: Duration,
}

impl<'a> Load<'a> {
    fn new(
        c: &'a Cluster,
        name: &str,
        curl_args: &[&str],
        max_iterations: u32,
        max_time: Duration,
    ) -> Load<'a> {
        let log = c.workdir().join(format!("{name}.log"));
        let stop = c.workdir().join(format!("{name}.stop"));
        let args: Vec<String> = curl_args.iter().map(|a| sh_quote(a)).collect();
        let script = format!(
            "i=0; end=$(( $(date +%s) + {secs} ))
while [ $i -lt {max_iterations} ] && [ ! -e {stop} ] && [ $(date +%s) -lt $end ]; do
  i=$((i+1))
  out=$(curl -sS --noproxy '*' --max-time 5 {args} 2>&1); rc=$?
  echo \"$i rc=$rc $(printf '%s' \"$out\" | tr '\\n' ' ')\" >> {log}
done",
            secs = max_time.as_secs(),
            stop = sh_quote(&stop.display().to_string()),
            log = sh_quote(&log.display().to_string()),
            args = args.join(" "),
        );
        Load {
            c,
            log,
            stop,
            script,
            max_time,
        }
    }

    /// Lines logged so far.
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Runs the loop while `during` runs (given the loop, to watch its progress); stops it
    /// when `during` returns and gives back every line.
    fn run(self, during: impl FnOnce(&Load<'_>) -> Result<()>) -> Result<Vec<String>> {
        let result = std::thread::scope(|s| {
            let worker = s.spawn(|| {
                self.c.exec_timeout(
                    At::Client,
                    &["sh", "-c", &self.script],
                    self.max_time + Duration::from_secs(15),
                )
            });
            let during = during(&self);
            // Stop the loop in any case, then wait for it.
            std::fs::write(&self.stop, b"")?;
            let out = worker
                .join()
                .map_err(|_| anyhow::anyhow!("load loop thread panicked"))??;
            anyhow::ensure!(
                out.status.success(),
                "load loop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            during
        });
        result.map(|()| self.lines())
    }

    /// Waits until `n` more lines than now are logged.
    fn wait_more(&self, n: usize) -> Result<()> {
        let target = self.lines().len() + n;
        wait_until(Duration::from_secs(20), "more load-loop requests", || {
            Ok(self.lines().len() >= target)
        })
    }
}

/// A TCP connection from the client namespace: a thread joins the namespace (setns only
/// affects the calling thread) and connects; the socket stays in that namespace.
fn connect_from_client(c: &Cluster, addr: SocketAddr) -> Result<TcpStream> {
    let ns = PathBuf::from("/run/netns").join(format!("{}-client", c.prefix()));
    let file = std::fs::File::open(&ns).with_context(|| format!("opening {}", ns.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on an fd we own; it changes only this short-lived thread's
            // network namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .with_context(|| format!("connecting to {addr} from the client"))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("connect thread panicked"))?
    })
}

/// A WebSocket to the echo pod's `/ws` (the pod echoes raw bytes after the 101).
struct WebSocket {
    stream: TcpStream,
    /// `x-pod` of the 101 response.
    pod: String,
}

impl WebSocket {
    fn open(c: &Cluster, addr: SocketAddr, host: &str) -> Result<WebSocket> {
        let mut stream = connect_from_client(c, addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )?;
        // Byte by byte up to the end of the headers: nothing after them is consumed.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            anyhow::ensure!(head.len() < 8192, "response head too long");
            stream
                .read_exact(&mut byte)
                .with_context(|| format!("reading the 101 (so far {head:?})"))?;
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        anyhow::ensure!(head.starts_with("http/1.1 101"), "no upgrade: {head}");
        anyhow::ensure!(
            head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        let pod = head
            .lines()
            .find_map(|l| l.strip_prefix("x-pod: "))
            .context("no x-pod in the 101")?
            .trim()
            .to_owned();
        Ok(WebSocket { stream, pod })
    }

    /// Sends `msg` and reads back as many bytes.
    fn echo(&mut self, msg: &str) -> Result<String> {
        self.stream.write_all(msg.as_bytes())?;
        let mut buf = vec![0u8; msg.len()];
        self.stream
            .read_exact(&mut buf)
            .with_context(|| format!("reading the echo of {msg:?}"))?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

// ---------------------------------------------------------------------------------------------

/// The cafe example (coffee with two replicas, tea, a default backend, a service without
/// endpoints), a multi-host Ingress without class (default class), a wildcard host, and an
/// Ingress of another class that would win every conflict if it were not ignored.
#[test]
fn cafe_example_over_https() -> Result<()> {
    if !require_root("cafe_example_over_https") {
        return Ok(());
    }
    let mut c = Cluster::new(&["node-a", "node-b"])?;
    let pki = Pki::new(c.workdir())?;
    let coffee1 = c.add_pod("node-a", "coffee-1")?;
    let coffee2 = c.add_pod("node-b", "coffee-2")?;
    let tea = c.add_pod("node-b", "tea-1")?;
    let default = c.add_pod("node-a", "default-1")?;
    let shop = c.add_pod("node-b", "shop-1")?;
    let apps = c.add_pod("node-a", "apps-1")?;
    let other = c.add_pod("node-b", "other-1")?;

    let mut docs = vec![
        ingress_class("sluice", "sluice.dev/ingress", true),
        ingress_class("nginx", "k8s.io/ingress-nginx", false),
    ];
    backend(&mut docs, "coffee-svc", "10.96.0.30", &[&coffee1, &coffee2]);
    backend(&mut docs, "tea-svc", "10.96.0.31", &[&tea]);
    backend(&mut docs, "default-svc", "10.96.0.32", &[&default]);
    backend(&mut docs, "shop-svc", "10.96.0.33", &[&shop]);
    backend(&mut docs, "apps-svc", "10.96.0.34", &[&apps]);
    backend(&mut docs, "other-svc", "10.96.0.35", &[&other]);
    backend(&mut docs, "empty-svc", "10.96.0.36", &[]);
    let (cert, key) = pki.leaf("cafe", &["cafe.example.com"])?;
    docs.push(tls_secret("default", "cafe-secret", &cert, &key));
    let (cert, key) = pki.leaf("multi", &["shop.example.test", "tea.example.test"])?;
    docs.push(tls_secret("default", "multi-secret", &cert, &key));
    let (cert, key) = pki.leaf("apps", &["*.apps.example.test"])?;
    docs.push(tls_secret("default", "apps-secret", &cert, &key));
    docs.push(ingress(
        "default",
        "cafe-ingress",
        Some("sluice"),
        &[
            path("cafe.example.com", "/coffee", "Prefix", "coffee-svc"),
            path("cafe.example.com", "/tea", "Prefix", "tea-svc"),
            path("cafe.example.com", "/empty", "Prefix", "empty-svc"),
        ],
        &[(&["cafe.example.com"], "cafe-secret")],
        Some(("default-svc", 80)),
    ));
    docs.push(ingress(
        "default",
        "multi",
        None,
        &[
            path("shop.example.test", "/", "Prefix", "shop-svc"),
            path("tea.example.test", "/", "Prefix", "tea-svc"),
        ],
        &[(&["shop.example.test", "tea.example.test"], "multi-secret")],
        None,
    ));
    docs.push(ingress(
        "default",
        "apps",
        Some("sluice"),
        &[path("*.apps.example.test", "/", "Prefix", "apps-svc")],
        &[(&["*.apps.example.test"], "apps-secret")],
        None,
    ));
    // Another controller's Ingress: first in conflict order (name), Exact /coffee.
    docs.push(ingress(
        "default",
        "aaa-other",
        Some("nginx"),
        &[
            path("cafe.example.com", "/coffee", "Exact", "other-svc"),
            path("other.example.test", "/", "Prefix", "other-svc"),
        ],
        &[],
        Some(("other-svc", 80)),
    ));
    c.write_manifest("cafe.yaml", &yaml_docs(&docs))?;
    c.start_agent("node-a", Mode::Nftables, &[])?;

    // The cafe: SNI picks cafe-secret; /coffee reaches both replicas, /tea the tea pod.
    let mut coffee_pods = std::collections::BTreeSet::new();
    for _ in 0..16 {
        let r = https(&c, "node-a", &pki, "cafe.example.com", "/coffee")?;
        assert_eq!(r.reply.status, 200, "{}", r.reply.body);
        assert_eq!(
            r.subject.as_deref(),
            Some("O=cafe; CN=cafe.example.com"),
            "{r:?}"
        );
        assert_eq!(r.reply.field("x-forwarded-proto"), Some("https"));
        coffee_pods.insert(r.pod().to_owned());
    }
    assert_eq!(
        coffee_pods,
        ["coffee-1", "coffee-2"].map(String::from).into(),
        "both coffee replicas answer"
    );
    for (p, pod) in [
        ("/coffee/latte?size=l", "coffee-"),
        ("/tea", "tea-1"),
        ("/tea/green", "tea-1"),
        // Everything else: the cafe's default backend.
        ("/", "default-1"),
        ("/teapot", "default-1"),
        ("/milk/tea", "default-1"),
    ] {
        let r = https(&c, "node-a", &pki, "cafe.example.com", p)?;
        assert_eq!(r.reply.status, 200, "{p}: {}", r.reply.body);
        assert!(
            r.pod().starts_with(pod),
            "{p} reached {} not {pod}",
            r.pod()
        );
        assert_eq!(r.reply.field("path"), Some(p), "{p}");
    }

    // Multi-host Ingress without a class (our class is the default): one SAN certificate.
    for (host, pod) in [
        ("shop.example.test", "shop-1"),
        ("tea.example.test", "tea-1"),
    ] {
        let r = https(&c, "node-a", &pki, host, "/menu")?;
        assert_eq!((r.reply.status, r.pod()), (200, pod), "{host}: {r:?}");
        assert_eq!(r.subject.as_deref(), Some("O=multi; CN=shop.example.test"));
        assert_eq!(r.reply.field("host"), Some(host));
    }

    // Wildcard host: exactly one label.
    let r = https(&c, "node-a", &pki, "foo.apps.example.test", "/")?;
    assert_eq!((r.reply.status, r.pod()), (200, "apps-1"), "{r:?}");
    assert_eq!(r.subject.as_deref(), Some("O=apps; CN=*.apps.example.test"));
    for host in ["a.b.apps.example.test", "apps.example.test"] {
        let r = http(&c, "node-a", host, "/")?;
        assert_eq!((r.reply.status, r.pod()), (200, "default-1"), "{host}");
    }

    // The other class's Ingress is ignored: its host falls to our default backend, its
    // Exact /coffee does not take over the cafe's.
    let r = http(&c, "node-a", "other.example.test", "/")?;
    assert_eq!((r.reply.status, r.pod()), (200, "default-1"), "{r:?}");
    let r = https(&c, "node-a", &pki, "cafe.example.com", "/coffee")?;
    assert!(r.pod().starts_with("coffee-"), "{r:?}");

    // HTTP/2 over TLS (ALPN h2); the pod is spoken to in HTTP/1.1.
    let r = https_with(&c, "node-a", &pki, "cafe.example.com", "/tea", &["--http2"])?;
    assert_eq!((r.version.as_str(), r.reply.status), ("2", 200), "{r:?}");
    assert_eq!(r.pod(), "tea-1");
    assert_eq!(r.reply.field("version"), Some("HTTP/1.1"));
    let r = https_with(
        &c,
        "node-a",
        &pki,
        "cafe.example.com",
        "/tea",
        &["--http1.1"],
    )?;
    assert_eq!((r.version.as_str(), r.reply.status), ("1.1", 200), "{r:?}");

    // A backend service without endpoints: 503 with a clear body.
    let r = https(&c, "node-a", &pki, "cafe.example.com", "/empty")?;
    assert_eq!(r.reply.status, 503, "{r:?}");
    assert!(
        r.reply
            .body
            .contains("no ready endpoints for service default/empty-svc"),
        "{}",
        r.reply.body
    );
    Ok(())
}

/// Rewrites the cafe Secret (new key and certificate) while a loop makes one new HTTPS
/// connection per request: no request fails, and once the new certificate is served the old
/// one never comes back.
#[test]
fn certificate_rotation_under_load_fails_no_request() -> Result<()> {
    if !require_root("certificate_rotation_under_load_fails_no_request") {
        return Ok(());
    }
    let mut c = Cluster::new(&["node-a"])?;
    let pki = Pki::new(c.workdir())?;
    let coffee = c.add_pod("node-a", "coffee-1")?;
    let mut docs = vec![ingress_class("sluice", "sluice.dev/ingress", true)];
    backend(&mut docs, "coffee-svc", "10.96.0.30", &[&coffee]);
    docs.push(ingress(
        "default",
        "cafe-ingress",
        Some("sluice"),
        &[path("cafe.example.com", "/coffee", "Prefix", "coffee-svc")],
        &[(&["cafe.example.com"], "cafe-secret")],
        None,
    ));
    c.write_manifest("cafe.yaml", &yaml_docs(&docs))?;
    let (cert, key) = pki.leaf("gen1", &["cafe.example.com"])?;
    c.write_manifest(
        "cafe-secret.yaml",
        &yaml_docs(&[tls_secret("default", "cafe-secret", &cert, &key)]),
    )?;
    c.start_agent("node-a", Mode::Nftables, &[])?;
    let r = https(&c, "node-a", &pki, "cafe.example.com", "/coffee")?;
    assert_eq!(r.subject.as_deref(), Some("O=gen1; CN=cafe.example.com"));

    let resolve = format!("cafe.example.com:443:{}", c.node("node-a")?.ipv4);
    let load = Load::new(
        &c,
        "rotation",
        &[
            "-v",
            "--resolve",
            &resolve,
            "--cacert",
            &pki.ca,
            "-o",
            "/dev/null",
            "-w",
            "status=%{http_code}\n",
            "https://cafe.example.com/coffee",
        ],
        400,
        Duration::from_secs(30),
    );
    let mut rotated_at = None;
    let lines = load.run(|load| {
        load.wait_more(15)?;
        let (cert, key) = pki.leaf("gen2", &["cafe.example.com"])?;
        c.write_manifest(
            "cafe-secret.yaml",
            &yaml_docs(&[tls_secret("default", "cafe-secret", &cert, &key)]),
        )?;
        let t = Instant::now();
        wait_until(Duration::from_secs(10), "the new certificate", || {
            Ok(load.lines().iter().any(|l| l.contains("O=gen2")))
        })?;
        rotated_at = Some(t.elapsed());
        load.wait_more(15)
    })?;

    let generation = |l: &str| {
        if l.contains("subject: O=gen1;") {
            1
        } else if l.contains("subject: O=gen2;") {
            2
        } else {
            0
        }
    };
    let failed: Vec<&String> = lines
        .iter()
        .filter(|l| !l.contains(" rc=0 ") || !l.contains("status=200") || generation(l) == 0)
        .collect();
    assert!(failed.is_empty(), "failed requests: {failed:#?}");
    let gens: Vec<u8> = lines.iter().map(|l| generation(l)).collect();
    let first_new = gens
        .iter()
        .position(|g| *g == 2)
        .context("gen2 never seen")?;
    assert!(first_new >= 15, "{gens:?}");
    assert!(
        gens[first_new..].iter().all(|g| *g == 2),
        "old certificate after the new one: {gens:?}"
    );
    eprintln!(
        "rotation: {} requests, none failed; new certificate served {:?} after the rewrite",
        lines.len(),
        rotated_at.unwrap_or_default()
    );
    Ok(())
}

/// Re-points the cafe's `/` from coffee to tea while a loop sends requests on keep-alive
/// connections (three per curl) and a WebSocket is open: no request fails, requests move to
/// tea at once and for good, and the WebSocket keeps echoing with its coffee pod.
#[test]
fn route_change_under_load_fails_no_request_and_websocket_survives() -> Result<()> {
    if !require_root("route_change_under_load_fails_no_request_and_websocket_survives") {
        return Ok(());
    }
    let mut c = Cluster::new(&["node-a", "node-b"])?;
    let coffee = c.add_pod("node-a", "coffee-1")?;
    let tea = c.add_pod("node-b", "tea-1")?;
    let route = |c: &Cluster, svc: &str| -> Result<()> {
        c.write_manifest(
            "cafe-ingress.yaml",
            &yaml_docs(&[ingress(
                "default",
                "cafe-ingress",
                Some("sluice"),
                &[path("cafe.example.com", "/", "Prefix", svc)],
                &[],
                None,
            )]),
        )
    };
    let mut docs = vec![ingress_class("sluice", "sluice.dev/ingress", true)];
    backend(&mut docs, "coffee-svc", "10.96.0.30", &[&coffee]);
    backend(&mut docs, "tea-svc", "10.96.0.31", &[&tea]);
    c.write_manifest("services.yaml", &yaml_docs(&docs))?;
    route(&c, "coffee-svc")?;
    c.start_agent("node-a", Mode::Nftables, &[])?;
    let node = c.node("node-a")?.v4(80);

    let mut ws = WebSocket::open(&c, node, "cafe.example.com")?;
    assert_eq!(ws.pod, "coffee-1");
    assert_eq!(ws.echo("before the reload")?, "before the reload");

    let url = format!("http://{}/order", node.ip());
    let load = Load::new(
        &c,
        "reload",
        &[
            "-H",
            "Host: cafe.example.com",
            "-w",
            "status=%{http_code},pod=%header{x-pod},conns=%{num_connects}\n",
            "-o",
            "/dev/null",
            &url,
            "-o",
            "/dev/null",
            &url,
            "-o",
            "/dev/null",
            &url,
        ],
        300,
        Duration::from_secs(30),
    );
    let lines = load.run(|load| {
        load.wait_more(10)?;
        route(&c, "tea-svc")?;
        wait_until(Duration::from_secs(10), "requests reaching tea", || {
            Ok(load.lines().iter().any(|l| l.contains("pod=tea-1")))
        })?;
        // The open WebSocket is untouched by the reload (while requests go on).
        assert_eq!(ws.echo("during the load")?, "during the load");
        load.wait_more(10)
    })?;
    assert_eq!(ws.echo("after the reload")?, "after the reload");
    let ws2 = WebSocket::open(&c, node, "cafe.example.com")?;
    assert_eq!(ws2.pod, "tea-1", "a new WebSocket follows the new route");

    // Every request: curl succeeded, 3 responses, all 200.
    let mut pods = Vec::new();
    let mut reused = 0;
    for l in &lines {
        assert!(l.contains(" rc=0 "), "curl failed: {l}");
        let answers: Vec<&str> = l.split_whitespace().skip(2).collect();
        assert_eq!(answers.len(), 3, "{l}");
        for a in answers {
            assert!(a.starts_with("status=200,"), "failed request: {l}");
            pods.push(if a.contains("pod=coffee-1") {
                "coffee"
            } else if a.contains("pod=tea-1") {
                "tea"
            } else {
                bail!("unexpected pod: {l}")
            });
            reused += usize::from(a.ends_with("conns=0"));
        }
    }
    let first_tea = pods.iter().position(|p| *p == "tea").context("no tea")?;
    assert!(first_tea >= 30, "{pods:?}");
    assert!(
        pods[first_tea..].iter().all(|p| *p == "tea"),
        "coffee after the switch: {pods:?}"
    );
    assert!(
        reused > pods.len() / 2,
        "keep-alive was not used: {lines:#?}"
    );
    eprintln!(
        "route change: {} requests ({reused} on reused connections), none failed",
        pods.len()
    );
    Ok(())
}

/// Ingresses written for ingress-nginx, served by sluice with ingress-nginx's flags.
#[test]
fn ingress_nginx_migration_with_class_flags_and_annotations() -> Result<()> {
    if !require_root("ingress_nginx_migration_with_class_flags_and_annotations") {
        return Ok(());
    }
    let mut c = Cluster::new(&["node-a", "node-b"])?;
    let pki = Pki::new(c.workdir())?;
    let coffee1 = c.add_pod("node-a", "coffee-1")?;
    let coffee2 = c.add_pod("node-b", "coffee-2")?;
    let tea = c.add_pod("node-b", "tea-1")?;
    let shop = c.add_pod("node-a", "shop-1")?;
    let canary = c.add_pod("node-b", "canary-1")?;
    // The cluster as ingress-nginx left it: its IngressClass, no sluice class.
    let mut docs = vec![ingress_class("nginx", "k8s.io/ingress-nginx", false)];
    backend(&mut docs, "coffee-svc", "10.96.0.40", &[&coffee1, &coffee2]);
    backend(&mut docs, "tea-svc", "10.96.0.41", &[&tea]);
    backend(&mut docs, "shop-svc", "10.96.0.42", &[&shop]);
    backend(&mut docs, "canary-svc", "10.96.0.43", &[&canary]);
    let (cert, key) = pki.leaf("cafe", &["cafe.example.com"])?;
    docs.push(tls_secret("default", "cafe-secret", &cert, &key));
    docs.extend(migration_ingresses());
    // Still written for the API removed in Kubernetes 1.22: refused, saying how to convert.
    docs.push(serde_json::json!({
        "apiVersion": "extensions/v1beta1", "kind": "Ingress",
        "metadata": {"namespace": "default", "name": "legacy"},
        "spec": {"backend": {"serviceName": "tea-svc", "servicePort": 80}}
    }));
    c.write_manifest("migration.yaml", &yaml_docs(&docs))?;
    c.start_agent(
        "node-a",
        Mode::Nftables,
        &["--ingress-class", "nginx", "--watch-ingress-without-class"],
    )?;

    // The cafe (ingressClassName: nginx) over HTTPS; plain HTTP gets 308 to the same URL.
    let r = https(&c, "node-a", &pki, "cafe.example.com", "/tea")?;
    assert_eq!((r.reply.status, r.pod()), (200, "tea-1"), "{r:?}");
    assert_eq!(r.subject.as_deref(), Some("O=cafe; CN=cafe.example.com"));
    let r = https(&c, "node-a", &pki, "cafe.example.com", "/coffee")?;
    assert!(r.pod().starts_with("coffee-"), "{r:?}");
    let r = http(&c, "node-a", "cafe.example.com", "/coffee?size=l")?;
    assert_eq!(r.reply.status, 308, "{r:?}");
    assert_eq!(
        r.reply.header("location"),
        Some("https://cafe.example.com/coffee?size=l")
    );
    // The canary Ingress by header.
    let r = https_with(
        &c,
        "node-a",
        &pki,
        "cafe.example.com",
        "/coffee",
        &["-H", "X-Canary: always"],
    )?;
    assert_eq!(r.pod(), "canary-1", "{r:?}");

    // Multi-host (legacy class annotation) and an Ingress without any class.
    for (host, pod) in [
        ("shop.example.test", "shop-1"),
        ("tea.example.test", "tea-1"),
        ("plain.example.test", "shop-1"),
    ] {
        let r = http(&c, "node-a", host, "/menu")?;
        assert_eq!((r.reply.status, r.pod()), (200, pod), "{host}: {r:?}");
    }
    // Fan-out with rewrite-target: / — every path under the prefix reaches the pod as `/`.
    for (p, pod) in [("/coffee/latte", "coffee-"), ("/tea/green?x=1", "tea-1")] {
        let r = http(&c, "node-a", "fanout.example.test", p)?;
        assert!(r.pod().starts_with(pod), "{p}: {r:?}");
        let expected = if p.contains('?') { "/?x=1" } else { "/" };
        assert_eq!(r.reply.field("path"), Some(expected), "{p}");
    }
    // use-regex with capture groups.
    let r = http(&c, "node-a", "api.example.test", "/v1/items?page=2")?;
    assert_eq!(
        (r.pod(), r.reply.field("path")),
        ("tea-1", Some("/items?page=2")),
        "{r:?}"
    );
    // backend-protocol: H2C — the pod is spoken to in HTTP/2.
    let r = http(&c, "node-a", "h2c.example.test", "/")?;
    assert_eq!(r.reply.field("version"), Some("HTTP/2.0"), "{r:?}");
    // Another controller's class is still not ours.
    assert_eq!(
        http(&c, "node-a", "traefik.example.test", "/")?
            .reply
            .status,
        404
    );
    let log = c.agent_log("node-a");
    assert!(
        log.contains(
            "Ingress default/legacy: Ingress `apiVersion: extensions/v1beta1` is not read by sluice"
        ) && log
            .contains("`backend.serviceName`/`backend.servicePort` become `backend.service.name`"),
        "{log}"
    );
    Ok(())
}

/// The Ingresses of `ingress_nginx_migration_with_class_flags_and_annotations`.
fn migration_ingresses() -> Vec<Value> {
    let class = |mut v: Value, class: Option<&str>, legacy: Option<&str>| {
        v["spec"]
            .as_object_mut()
            .map(|s| s.remove("ingressClassName"));
        if let Some(c) = class {
            v["spec"]["ingressClassName"] = serde_json::json!(c);
        }
        if let Some(c) = legacy {
            v["metadata"]["annotations"]["kubernetes.io/ingress.class"] = serde_json::json!(c);
        }
        v
    };
    let cafe = ingress(
        "default",
        "cafe-ingress",
        Some("nginx"),
        &[
            path("cafe.example.com", "/coffee", "Prefix", "coffee-svc"),
            path("cafe.example.com", "/tea", "Prefix", "tea-svc"),
        ],
        &[(&["cafe.example.com"], "cafe-secret")],
        None,
    );
    let canary = annotate(
        ingress(
            "default",
            "coffee-canary",
            Some("nginx"),
            &[path("cafe.example.com", "/coffee", "Prefix", "canary-svc")],
            &[],
            None,
        ),
        &[("canary", "true"), ("canary-by-header", "X-Canary")],
    );
    let multi = ingress(
        "default",
        "multi",
        None,
        &[
            path("shop.example.test", "/", "Prefix", "shop-svc"),
            path("tea.example.test", "/", "Prefix", "tea-svc"),
        ],
        &[],
        None,
    );
    let fanout = annotate(
        ingress(
            "default",
            "fanout",
            Some("nginx"),
            &[
                path("fanout.example.test", "/coffee", "Prefix", "coffee-svc"),
                path("fanout.example.test", "/tea", "Prefix", "tea-svc"),
            ],
            &[],
            None,
        ),
        &[("rewrite-target", "/")],
    );
    let api = annotate(
        ingress(
            "default",
            "api",
            Some("nginx"),
            &[path(
                "api.example.test",
                "/v1(/|$)(.*)",
                "ImplementationSpecific",
                "tea-svc",
            )],
            &[],
            None,
        ),
        &[("use-regex", "true"), ("rewrite-target", "/$2")],
    );
    let h2c = annotate(
        ingress(
            "default",
            "h2c",
            Some("nginx"),
            &[path("h2c.example.test", "/", "Prefix", "tea-svc")],
            &[],
            None,
        ),
        &[("backend-protocol", "H2C")],
    );
    let plain = ingress(
        "default",
        "classless",
        None,
        &[path("plain.example.test", "/", "Prefix", "shop-svc")],
        &[],
        None,
    );
    let traefik = ingress(
        "default",
        "traefik",
        Some("traefik"),
        &[path("traefik.example.test", "/", "Prefix", "shop-svc")],
        &[],
        None,
    );
    vec![
        cafe,
        canary,
        class(multi, None, Some("nginx")),
        fanout,
        api,
        h2c,
        class(plain, None, None),
        traefik,
    ]
}
