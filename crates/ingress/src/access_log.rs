//! The access log: one JSON object per request, written when its response body is done
//! (so that the bytes sent and the full duration are known). The request path only formats
//! the line and hands it to a [`AccessLogSink`]; the default sink writes to stdout on a thread
//! of its own through a bounded queue, dropping (and counting) lines rather than ever making a
//! request wait for the terminal.
//!
//! ```json
//! {"time":"2026-03-01T12:00:00.123Z","request_id":"4f1c…","client":"192.0.2.7",
//!  "method":"GET","host":"cafe.example.com","path":"/tea?x=1","protocol":"HTTP/1.1",
//!  "status":200,"bytes_sent":1234,"duration_ms":1.8,"ingress":"default/cafe",
//!  "service":"default/tea-svc:80","upstream":["10.244.1.2:8080"],"upstream_status":[200],
//!  "upstream_latency_ms":1.2,"user_agent":"curl/8.5.0"}
//! ```

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

/// Where access log lines go. Implementations must not block.
pub trait AccessLogSink: Send + Sync + std::fmt::Debug {
    /// One JSON line, without the newline.
    fn write(&self, line: String);
    /// Lines dropped so far because the sink could not keep up.
    fn dropped(&self) -> u64 {
        0
    }
}

/// Lines queued for the writer thread at most; beyond, lines are dropped.
const QUEUE: usize = 16 * 1024;

/// Writes lines to stdout from a thread of its own.
#[derive(Debug)]
pub struct StdoutAccessLog {
    queue: SyncSender<String>,
    dropped: AtomicU64,
}

impl StdoutAccessLog {
    /// Starts the writer thread (it ends when the sink is dropped).
    pub fn start() -> std::io::Result<Self> {
        let (queue, lines) = mpsc::sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("ingress-access-log".to_owned())
            .spawn(move || {
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                while let Ok(line) = lines.recv() {
                    let _ = writeln!(out, "{line}");
                    // Flush when the queue is empty: batches under load, prompt when idle.
                    let mut more = lines.try_iter().peekable();
                    while let Some(line) = more.next() {
                        let _ = writeln!(out, "{line}");
                        if more.peek().is_none() {
                            break;
                        }
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(Self {
            queue,
            dropped: AtomicU64::new(0),
        })
    }
}

impl AccessLogSink for StdoutAccessLog {
    fn write(&self, line: String) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(line)
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// What the upstream exchange of a request was, put on the response by the forwarding code.
#[derive(Debug, Clone, Default)]
pub(crate) struct UpstreamFacts {
    /// Every endpoint tried, in order, with its status (`None`: no response).
    pub(crate) tries: Vec<(SocketAddr, Option<u16>)>,
    /// From sending the (last) request to its response headers.
    pub(crate) latency: Option<Duration>,
}

/// Which route answered, put on the response by the routing code.
#[derive(Debug, Clone)]
pub(crate) struct RouteFacts {
    pub(crate) ingress: Arc<str>,
    pub(crate) service: Option<Arc<str>>,
}

/// One request's log line, completed when its response body is done.
#[derive(Debug)]
pub(crate) struct PendingLine {
    pub(crate) sink: Arc<dyn AccessLogSink>,
    pub(crate) started: Instant,
    pub(crate) time: SystemTime,
    pub(crate) record: Record,
    pub(crate) bytes_sent: u64,
}

/// The fields of a line.
#[derive(Debug, Serialize)]
pub(crate) struct Record {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) time: String,
    pub(crate) request_id: String,
    pub(crate) client: IpAddr,
    pub(crate) method: String,
    pub(crate) host: String,
    pub(crate) path: String,
    pub(crate) protocol: &'static str,
    pub(crate) status: u16,
    pub(crate) bytes_sent: u64,
    pub(crate) duration_ms: f64,
    pub(crate) ingress: Option<Arc<str>>,
    pub(crate) service: Option<Arc<str>>,
    pub(crate) upstream: Vec<String>,
    pub(crate) upstream_status: Vec<Option<u16>>,
    pub(crate) upstream_latency_ms: Option<f64>,
    pub(crate) user_agent: Option<String>,
}

impl PendingLine {
    pub(crate) fn sent(&mut self, bytes: usize) {
        self.bytes_sent += bytes as u64;
    }
}

impl Drop for PendingLine {
    fn drop(&mut self) {
        self.record.bytes_sent = self.bytes_sent;
        self.record.duration_ms = millis(self.started.elapsed());
        self.record.time = rfc3339(self.time);
        if let Ok(line) = serde_json::to_string(&self.record) {
            self.sink.write(line);
        }
    }
}

/// Milliseconds, to the microsecond.
pub(crate) fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// `2026-03-01T12:00:00.123Z`.
fn rfc3339(time: SystemTime) -> String {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_772_366_400_123);
        assert_eq!(rfc3339(t), "2026-03-01T12:00:00.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
