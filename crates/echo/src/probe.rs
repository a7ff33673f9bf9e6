//! The probe client: independent attempts, one result line each.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use crate::sock;
use crate::wire::{Greeting, ProbeFailure};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeProto {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub proto: ProbeProto,
    pub target: SocketAddr,
    pub timeout: Duration,
    /// Bind this local port (SO_REUSEADDR) instead of an ephemeral one.
    pub source_port: Option<u16>,
}

/// One attempt: a new connection (or datagram) and its greeting.
pub async fn probe_once(cfg: &ProbeConfig) -> Result<Greeting, ProbeFailure> {
    let deadline = Instant::now() + cfg.timeout;
    match cfg.proto {
        ProbeProto::Tcp | ProbeProto::Sctp => {
            let mut stream = connect(cfg, deadline).await?;
            let line = read_line(&mut stream, deadline).await?;
            parse_greeting(&line)
        }
        ProbeProto::Udp => udp_once(cfg, deadline).await,
    }
}

fn parse_greeting(line: &str) -> Result<Greeting, ProbeFailure> {
    line.trim()
        .parse()
        .map_err(|_| ProbeFailure::Other(format!("garbage:{}", line.trim().replace(' ', "_"))))
}

async fn connect(cfg: &ProbeConfig, deadline: Instant) -> Result<TcpStream, ProbeFailure> {
    let socket = sock::client_stream(cfg.target, cfg.proto == ProbeProto::Sctp, cfg.source_port)
        .map_err(|e| ProbeFailure::from_io(&e))?;
    match timeout_at(deadline, socket.connect(cfg.target)).await {
        Err(_) => Err(ProbeFailure::Timeout),
        Ok(Err(e)) => Err(ProbeFailure::from_io(&e)),
        Ok(Ok(s)) => Ok(s),
    }
}

async fn read_line(stream: &mut TcpStream, deadline: Instant) -> Result<String, ProbeFailure> {
    let mut line = String::new();
    let mut reader = BufReader::new(stream);
    match timeout_at(deadline, reader.read_line(&mut line)).await {
        Err(_) => Err(ProbeFailure::Timeout),
        Ok(Err(e)) => Err(ProbeFailure::from_io(&e)),
        Ok(Ok(0)) => Err(ProbeFailure::Other("eof".into())),
        Ok(Ok(_)) => Ok(line),
    }
}

async fn udp_once(cfg: &ProbeConfig, deadline: Instant) -> Result<Greeting, ProbeFailure> {
    let io = |e: std::io::Error| ProbeFailure::from_io(&e);
    let socket =
        std::net::UdpSocket::bind(sock::unspecified(cfg.target, cfg.source_port.unwrap_or(0)))
            .map_err(io)?;
    socket.set_nonblocking(true).map_err(io)?;
    let socket = tokio::net::UdpSocket::from_std(socket).map_err(io)?;
    // Connected, so ICMP port-unreachable comes back as ECONNREFUSED on receive.
    socket.connect(cfg.target).await.map_err(io)?;
    socket.send(b"ping\n").await.map_err(io)?;
    let mut buf = vec![0u8; 2048];
    let n = match timeout_at(deadline, socket.recv(&mut buf)).await {
        Err(_) => return Err(ProbeFailure::Timeout),
        Ok(r) => r.map_err(io)?,
    };
    parse_greeting(&String::from_utf8_lossy(&buf[..n]))
}

/// Held connection for "established connections survive" tests: prints the greeting, then
/// for each stdin line sends it and prints the reply line. Each reply must arrive within the
/// timeout. Returns the failure that ended it, or `None` on stdin EOF.
pub async fn hold(cfg: &ProbeConfig) -> Result<Option<ProbeFailure>, crate::EchoError> {
    let deadline = Instant::now() + cfg.timeout;
    let stream = match connect(cfg, deadline).await {
        Ok(s) => s,
        Err(f) => {
            println!("{f}");
            return Ok(Some(f));
        }
    };
    let (r, mut w) = stream.into_split();
    let mut replies = BufReader::new(r);
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut first = true;
    loop {
        if !first {
            let Some(line) = stdin
                .next_line()
                .await
                .map_err(|source| crate::EchoError::Stdin { source })?
            else {
                return Ok(None);
            };
            if let Err(e) = w.write_all(format!("{line}\n").as_bytes()).await {
                let f = ProbeFailure::from_io(&e);
                println!("{f}");
                return Ok(Some(f));
            }
        }
        first = false;
        let mut reply = String::new();
        let deadline = Instant::now() + cfg.timeout;
        let res = match timeout_at(deadline, replies.read_line(&mut reply)).await {
            Err(_) => Err(ProbeFailure::Timeout),
            Ok(Err(e)) => Err(ProbeFailure::from_io(&e)),
            Ok(Ok(0)) => Err(ProbeFailure::Other("eof".into())),
            Ok(Ok(_)) => Ok(()),
        };
        match res {
            Ok(()) => println!("{}", reply.trim_end()),
            Err(f) => {
                println!("{f}");
                return Ok(Some(f));
            }
        }
    }
}
