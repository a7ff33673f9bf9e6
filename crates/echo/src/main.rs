//! `sluice-echo serve ...` / `sluice-echo probe ...`; see the library docs.

#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use sluice_echo::probe::{self, ProbeConfig, ProbeProto};
use sluice_echo::serve::{self, ServeConfig};

#[derive(Parser)]
#[command(
    name = "sluice-echo",
    about = "Echo pod and probe client for sluice tests"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve TCP/UDP/SCTP/HTTP echo; prints `ready` on stdout once everything listens.
    Serve {
        /// Pod name reported in every answer.
        #[arg(long)]
        name: String,
        #[arg(long)]
        tcp: Vec<SocketAddr>,
        #[arg(long)]
        udp: Vec<SocketAddr>,
        /// HTTP/1.1 and h2c.
        #[arg(long)]
        http: Vec<SocketAddr>,
        #[arg(long)]
        sctp: Vec<SocketAddr>,
    },
    /// Independent attempts against ADDR, one result line each; exit 1 if any failed.
    Probe {
        proto: Proto,
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        #[arg(long)]
        source_port: Option<u16>,
        /// Stop early after this many timed-out attempts (a dead path would otherwise cost
        /// count x timeout).
        #[arg(long)]
        max_timeouts: Option<u32>,
        /// Keep one connection; send stdin lines and print the replies (tcp/sctp only).
        #[arg(long)]
        hold: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
    Sctp,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice-echo: cannot start runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli.cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice-echo: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Serve {
            name,
            tcp,
            udp,
            http,
            sctp,
        } => {
            let cfg = ServeConfig {
                name,
                tcp,
                udp,
                http,
                sctp,
            };
            let bound = serve::bind(&cfg)?;
            let mut out = std::io::stdout();
            writeln!(out, "ready")?;
            out.flush()?;
            tracing::info!(pod = %cfg.name, "serving");
            bound.run().await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Probe {
            proto,
            addr,
            count,
            timeout_ms,
            source_port,
            max_timeouts,
            hold,
        } => {
            let cfg = ProbeConfig {
                proto: match proto {
                    Proto::Tcp => ProbeProto::Tcp,
                    Proto::Udp => ProbeProto::Udp,
                    Proto::Sctp => ProbeProto::Sctp,
                },
                target: addr,
                timeout: Duration::from_millis(timeout_ms),
                source_port,
            };
            if hold {
                anyhow::ensure!(
                    cfg.proto != ProbeProto::Udp,
                    "--hold needs a connection: use tcp or sctp"
                );
                return Ok(match probe::hold(&cfg).await? {
                    None => ExitCode::SUCCESS,
                    Some(_) => ExitCode::FAILURE,
                });
            }
            let mut all_ok = true;
            let mut timeouts = 0;
            let mut out = std::io::stdout();
            for _ in 0..count {
                match probe::probe_once(&cfg).await {
                    Ok(g) => writeln!(out, "{g}")?,
                    Err(f) => {
                        all_ok = false;
                        if f == sluice_echo::wire::ProbeFailure::Timeout {
                            timeouts += 1;
                        }
                        writeln!(out, "{f}")?;
                    }
                }
                out.flush()?;
                if max_timeouts.is_some_and(|max| timeouts >= max) {
                    break;
                }
            }
            Ok(if all_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
