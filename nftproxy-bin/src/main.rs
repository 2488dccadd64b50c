//! `nftproxy`: render, trace, apply and clean up nftables rulesets for Kubernetes Services.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

mod input;

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
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
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
