//! `nftproxy`: render, trace, apply and clean up nftables rulesets for Kubernetes Services.

use std::process::ExitCode;

use std::net::IpAddr;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use nftproxy_core::snapshot::Protocol;
use nftproxy_core::trace;

mod input;

use nftproxy_bin::{apply, nft, probe};

use input::InputArgs;

/// A Kubernetes Service proxy for nftables.
#[derive(Debug, Parser)]
#[command(name = "nftproxy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the ruleset for a snapshot, as nft text or libnftables JSON.
    Render {
        #[command(flatten)]
        input: InputArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = RenderFormat::Nft)]
        format: RenderFormat,
    },
    /// Program the kernel (current network namespace) with the ruleset for a snapshot; a second
    /// run sends only the difference.
    Apply {
        #[command(flatten)]
        input: InputArgs,
        /// How to talk to nft (default: JSON if the installed nft accepts our ruleset, else text).
        #[arg(long, value_enum)]
        backend: Option<nft::Backend>,
        /// Print the transaction instead of sending it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove everything nftproxy created (its own tables only).
    Cleanup {
        /// Table name (as `nftproxy.tableName` in the config).
        #[arg(long, default_value = "nftproxy")]
        table: String,
        /// How to talk to nft.
        #[arg(long, value_enum)]
        backend: Option<nft::Backend>,
    },
    /// Explain where a packet goes: evaluate the ruleset for one new connection.
    Trace {
        #[command(flatten)]
        input: InputArgs,
        /// Source address.
        #[arg(long)]
        src: IpAddr,
        /// Destination address.
        #[arg(long)]
        dst: IpAddr,
        /// Destination port.
        #[arg(long)]
        dport: u16,
        /// Protocol.
        #[arg(long, value_enum, default_value_t = Proto::Tcp)]
        proto: Proto,
        /// The packet is sent by the node itself (output hook) instead of arriving on an interface.
        #[arg(long)]
        local: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TraceFormat::Text)]
        format: TraceFormat,
    },
    /// Show what the installed nft supports and which backend would be used.
    Probe,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TraceFormat {
    /// For people: the chains and rules hit, then a sentence.
    Text,
    /// One JSON object: verdict, endpoints, masquerade, path.
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RenderFormat {
    /// nft script (`nft -f`).
    Nft,
    /// libnftables JSON (`nft -j -f`).
    Json,
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Render { input, format } => {
            let (_, _, ruleset) = input.compile()?;
            let out = match format {
                RenderFormat::Nft => nftproxy_core::render::to_nft_text(&ruleset),
                RenderFormat::Json => nftproxy_core::render::to_json(&ruleset),
            };
            print!("{out}");
        }
        Command::Apply {
            input,
            backend,
            dry_run,
        } => {
            let (_, config, ruleset) = input.compile()?;
            apply::apply(
                &config.table_name,
                &ruleset,
                &apply::ApplyOptions { backend, dry_run },
            )?;
        }
        Command::Cleanup { table, backend } => {
            nftproxy_core::parse::validate_table_name(&table)?;
            apply::cleanup(&table, backend)?;
        }
        Command::Trace {
            input,
            src,
            dst,
            dport,
            proto,
            local,
            format,
        } => {
            let (snapshot, config, ruleset) = input.compile()?;
            let packet = trace::Packet {
                src,
                dst,
                dport,
                proto: match proto {
                    Proto::Tcp => Protocol::Tcp,
                    Proto::Udp => Protocol::Udp,
                    Proto::Sctp => Protocol::Sctp,
                },
                origin: if local {
                    trace::Origin::Local
                } else {
                    trace::Origin::Interface
                },
            };
            let local_addrs = nftproxy_core::compile::node_addresses(&snapshot, &config);
            let outcome = trace::trace(&ruleset, &packet, &trace::TraceEnv { local_addrs })?;
            match format {
                TraceFormat::Text => print!("{}", trace::format_text(&outcome, &packet)),
                TraceFormat::Json => println!("{}", trace::format_json(&outcome)),
            }
        }
        Command::Probe => {
            let caps = probe::probe(&nft::Nft::from_env())?;
            println!("nft {}", caps.version);
            for (name, r) in [("json", &caps.json), ("text", &caps.text)] {
                match r {
                    Ok(()) => println!("{name} backend: ok"),
                    Err(why) => println!("{name} backend: unavailable: {why}"),
                }
            }
            println!("default backend: {}", caps.choose(None)?.as_str());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NFTPROXY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
