//! The handover conversation over the Unix socket, line based:
//!
//! ```text
//! new → old   sluice-handover 1 pid=<new pid>
//! old → new   offer <N> pid=<old pid>      then N lines, one listening address each, in the
//!             <address>                    order of the N descriptors attached (SCM_RIGHTS,
//!             ...                          at most MAX_FDS_PER_MESSAGE per message)
//! new → old   ready                        (once it accepts on them; or the socket closes:
//!                                           the new agent went away)
//! ```

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader, Interest};
use tokio::sync::watch;

use super::fdpass::{FdPassing, MAX_FDS_PER_MESSAGE};
use super::{Listeners, Succession};

const REQUEST: &str = "sluice-handover 1";
const READY: &str = "ready";
/// Longest line either side accepts.
const MAX_LINE: usize = 256;

/// Why taking over from the running agent failed. It keeps serving in that case, so this
/// agent must not start (its binds would fail anyway): it exits and is restarted.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("cannot connect to the running agent's handover socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("handover with the running agent failed while {step}")]
    Io {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the running agent's offer is malformed: {reason}")]
    Malformed { reason: String },
    #[error(
        "the running agent closed the connection before its offer was complete (received \
         {received:?}); its log says why"
    )]
    Closed { received: String },
    #[error("the running agent announced {announced} listeners but {received} descriptors came")]
    Count { announced: usize, received: usize },
    #[error("descriptor {index} is not the listening socket on {announced}: {reason}")]
    NotTheListener {
        index: usize,
        announced: SocketAddr,
        reason: String,
    },
}

/// The agent this one took the listeners from; told when this one accepts on them.
#[derive(Debug)]
pub struct Predecessor {
    stream: UnixStream,
    pub pid: Option<u32>,
}

impl Predecessor {
    /// "I accept on the listeners now": the old agent stops accepting and retires. A
    /// predecessor already gone (SIGTERM came first) is fine.
    pub fn ready(mut self) {
        if let Err(err) = writeln!(self.stream, "{READY}") {
            tracing::debug!(error = %err, "the previous agent is gone already");
        }
    }
}

/// What a new agent got from the running one.
#[derive(Debug)]
pub struct TakenOver {
    pub predecessor: Predecessor,
    /// Verified: each is a listening socket on its address.
    pub listeners: Vec<(SocketAddr, std::net::TcpListener)>,
}

/// What the running agent offered: its pid and its listeners, in order.
struct Offer {
    pid: Option<u32>,
    listeners: Vec<(SocketAddr, OwnedFd)>,
}

/// Asks the agent serving on `path` for its listening sockets. `Ok(None)`: no agent runs
/// there (no socket, or a stale one from an agent that died).
pub fn take_over(
    path: &Path,
    transport: &dyn FdPassing,
    timeout: Duration,
) -> Result<Option<TakenOver>, HandoverError> {
    let stream = match UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(source) => {
            return Err(HandoverError::Connect {
                path: path.to_owned(),
                source,
            });
        }
    };
    let io = |step| move |source| HandoverError::Io { step, source };
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(io("setting timeouts"))?;
    writeln!(&stream, "{REQUEST} pid={}", std::process::id()).map_err(io("asking"))?;
    let offer = receive_offer(&stream, transport)?;
    let listeners = offer
        .listeners
        .into_iter()
        .enumerate()
        .map(|(index, (announced, fd))| verify(index, announced, fd))
        .collect::<Result<_, _>>()?;
    let predecessor = Predecessor {
        stream,
        pid: offer.pid,
    };
    Ok(Some(TakenOver {
        predecessor,
        listeners,
    }))
}

/// Reads `offer N` and N addresses with their descriptors (in order).
fn receive_offer(stream: &UnixStream, transport: &dyn FdPassing) -> Result<Offer, HandoverError> {
    let mut text = Vec::new();
    let mut fds = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let lines = complete_lines(&text)?;
        if let Some(header) = lines.first() {
            let (count, pid) = parse_offer(header)?;
            if lines.len() > count {
                let addresses = lines[1..=count]
                    .iter()
                    .map(|l| parse_address(l))
                    .collect::<Result<Vec<_>, _>>()?;
                if fds.len() != count {
                    return Err(HandoverError::Count {
                        announced: count,
                        received: fds.len(),
                    });
                }
                return Ok(Offer {
                    pid,
                    listeners: addresses.into_iter().zip(fds).collect(),
                });
            }
        }
        let (n, received) =
            transport
                .recv(stream.as_fd(), &mut buf)
                .map_err(|source| HandoverError::Io {
                    step: "receiving the listeners",
                    source,
                })?;
        fds.extend(received);
        if n == 0 {
            return Err(HandoverError::Closed {
                received: String::from_utf8_lossy(&text).into_owned(),
            });
        }
        text.extend_from_slice(&buf[..n]);
    }
}

fn complete_lines(text: &[u8]) -> Result<Vec<String>, HandoverError> {
    let Some(end) = text.iter().rposition(|b| *b == b'\n') else {
        if text.len() > MAX_LINE {
            return Err(malformed("a line is too long"));
        }
        return Ok(Vec::new());
    };
    let complete = std::str::from_utf8(&text[..end]).map_err(|_| malformed("not UTF-8"))?;
    Ok(complete.split('\n').map(str::to_owned).collect())
}

fn malformed(reason: &str) -> HandoverError {
    HandoverError::Malformed {
        reason: reason.to_owned(),
    }
}

/// `offer N pid=P` → (N, P).
fn parse_offer(line: &str) -> Result<(usize, Option<u32>), HandoverError> {
    let mut words = line.split_whitespace();
    let (Some("offer"), Some(count)) = (words.next(), words.next()) else {
        return Err(malformed(&format!("expected `offer N`, got {line:?}")));
    };
    let count = count
        .parse()
        .map_err(|_| malformed(&format!("bad count in {line:?}")))?;
    let pid = words
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok());
    Ok((count, pid))
}

fn parse_address(line: &str) -> Result<SocketAddr, HandoverError> {
    line.trim()
        .parse()
        .map_err(|_| malformed(&format!("bad listener address {line:?}")))
}

/// The descriptor must be a listening TCP socket on the announced address.
fn verify(
    index: usize,
    announced: SocketAddr,
    fd: OwnedFd,
) -> Result<(SocketAddr, std::net::TcpListener), HandoverError> {
    let not = |reason: String| HandoverError::NotTheListener {
        index,
        announced,
        reason,
    };
    let listening = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::AcceptConn)
        .map_err(|e| not(format!("not a socket ({e})")))?;
    if !listening {
        return Err(not("not listening".into()));
    }
    let listener = std::net::TcpListener::from(fd);
    match listener.local_addr() {
        Ok(addr) if addr == announced => Ok((addr, listener)),
        Ok(addr) => Err(not(format!("it is bound to {addr}"))),
        Err(e) => Err(not(format!("no local address ({e})"))),
    }
}

/// The old agent's side: answers successors on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::UnixListener,
    listeners: std::sync::Arc<Listeners>,
    transport: std::sync::Arc<dyn FdPassing>,
    succession: std::sync::Arc<watch::Sender<Succession>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "handover socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (listeners, transport, succession) = (
            std::sync::Arc::clone(&listeners),
            std::sync::Arc::clone(&transport),
            std::sync::Arc::clone(&succession),
        );
        tokio::spawn(async move {
            successor(stream, &listeners, transport.as_ref(), &succession).await;
        });
    }
}

/// One successor: hand the listeners over, then follow it until it is ready or gone.
async fn successor(
    stream: tokio::net::UnixStream,
    listeners: &Listeners,
    transport: &dyn FdPassing,
    succession: &watch::Sender<Succession>,
) {
    let mut reader = BufReader::new(stream);
    let request = match read_line(&mut reader, Some(Duration::from_secs(5))).await {
        Ok(Some(line)) if line.starts_with(REQUEST) => line,
        Ok(other) => {
            tracing::warn!(request = ?other, "handover socket: not a handover request; ignored");
            return;
        }
        Err(err) => {
            tracing::warn!(error = %err, "handover socket: reading the request failed");
            return;
        }
    };
    let pid = request
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid="));
    let pid = pid.unwrap_or("?").to_owned();
    let offered = match offer(reader.get_ref(), listeners, transport).await {
        Ok(n) => n,
        Err(err) => {
            tracing::warn!(new_agent_pid = %pid, "handing the listeners over failed, serving on: {}", sluice_dataplane::error_chain(&err));
            return;
        }
    };
    tracing::info!(new_agent_pid = %pid, listeners = offered, "handed the listening sockets over to a new agent; healthz and metrics are its own now, the Ingress stays ours until it has synced");
    succession.send_replace(Succession::Starting);
    match read_line(&mut reader, None).await {
        Ok(Some(line)) if line == READY => {
            tracing::info!(new_agent_pid = %pid, "the new agent accepts on the listeners: retiring");
            succession.send_replace(Succession::Ready);
        }
        other => {
            tracing::warn!(new_agent_pid = %pid, end = ?other.map_err(|e| e.to_string()), "the new agent went away before it was ready; serving on");
            succession.send_if_modified(|s| {
                let starting = *s == Succession::Starting;
                if starting {
                    *s = Succession::Alone;
                }
                starting
            });
        }
    }
}

/// Sends `offer N` and the listeners, [`MAX_FDS_PER_MESSAGE`] per message; returns N.
async fn offer(
    stream: &tokio::net::UnixStream,
    listeners: &Listeners,
    transport: &dyn FdPassing,
) -> io::Result<usize> {
    let offered = listeners.offer()?;
    let mut header = format!("offer {} pid={}\n", offered.len(), std::process::id());
    if offered.is_empty() {
        send_all(stream, transport, header.as_bytes(), &[]).await?;
    }
    for chunk in offered.chunks(MAX_FDS_PER_MESSAGE) {
        let mut text = std::mem::take(&mut header);
        for (addr, _) in chunk {
            text.push_str(&format!("{addr}\n"));
        }
        let fds: Vec<BorrowedFd<'_>> = chunk.iter().map(|(_, fd)| fd.as_fd()).collect();
        send_all(stream, transport, text.as_bytes(), &fds).await?;
    }
    Ok(offered.len())
}

async fn send_all(
    stream: &tokio::net::UnixStream,
    transport: &dyn FdPassing,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut sent = 0;
    let mut fds = fds;
    while sent < data.len() {
        let n = stream
            .async_io(Interest::WRITABLE, || {
                transport.send(stream.as_fd(), &data[sent..], fds)
            })
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        // The descriptors went with the first byte.
        fds = &[];
        sent += n;
    }
    Ok(())
}

/// One line without its newline; `None` at end of stream.
async fn read_line(
    reader: &mut BufReader<tokio::net::UnixStream>,
    timeout: Option<Duration>,
) -> io::Result<Option<String>> {
    let mut line = String::new();
    let read = async {
        let mut limited = tokio::io::AsyncReadExt::take(&mut *reader, MAX_LINE as u64);
        limited.read_line(&mut line).await
    };
    let n = match timeout {
        Some(t) => tokio::time::timeout(t, read)
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??,
        None => read.await?,
    };
    Ok((n > 0).then(|| line.trim_end().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_parse_and_bad_ones_are_named() {
        assert_eq!(parse_offer("offer 3 pid=42").unwrap(), (3, Some(42)));
        assert_eq!(parse_offer("offer 0").unwrap(), (0, None));
        let err = parse_offer("hello").unwrap_err().to_string();
        assert!(err.contains("expected `offer N`, got \"hello\""), "{err}");
        let err = parse_offer("offer many").unwrap_err().to_string();
        assert!(err.contains("bad count"), "{err}");
        let err = parse_address("nowhere").unwrap_err().to_string();
        assert!(err.contains("bad listener address \"nowhere\""), "{err}");
    }

    #[test]
    fn only_complete_lines_count() {
        assert!(complete_lines(b"offer 2").unwrap().is_empty());
        assert_eq!(
            complete_lines(b"offer 2\n127.0.0.1:80\n[::]:4").unwrap(),
            ["offer 2", "127.0.0.1:80"]
        );
        assert!(complete_lines(&[b'x'; MAX_LINE + 1]).is_err());
    }
}
